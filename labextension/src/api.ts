/**
 * The one client of the server extension (`/remote-kernel/...`, see
 * `route_table()` in remote_kernel/labapp/handlers.py). The browser only ever
 * talks to the Jupyter server; tokens stay there. Method names follow the
 * handlers; every call goes through `requestAPI`.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  IBudgetsPage,
  IConnection,
  IDataset,
  IDatasetSummary,
  IMockPreview,
  IOutputView,
  IRequestView,
  IReviewPage,
  JSONObject,
  ReviewDecision
} from './tokens';

/** An error the server extension explained (its JSON `error.message`). */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

type Method = 'GET' | 'POST' | 'DELETE';

export class RemoteKernelApi {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /**
   * Calls `/remote-kernel/<path>` (each path segment URL-encoded) and returns its
   * JSON (undefined for 204). Throws `ApiError` with the server's message.
   */
  async requestAPI<T>(
    path: (string | number)[],
    method: Method = 'GET',
    body?: JSONObject
  ): Promise<T> {
    const url = URLExt.join(
      this.settings.baseUrl,
      'remote-kernel',
      ...path.map(part => encodeURIComponent(String(part)))
    );
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new ApiError(
        `cannot reach the Jupyter server: ${String(error)}`,
        0
      );
    }
    if (response.status === 204) {
      return undefined as T;
    }
    const text = await response.text();
    let json: JSONObject = {};
    try {
      json = text ? JSON.parse(text) : {};
    } catch {
      json = {};
    }
    if (!response.ok) {
      const message =
        json?.error?.message ?? json?.message ?? `HTTP ${response.status}`;
      throw new ApiError(String(message), response.status);
    }
    return json as T;
  }

  // --- connections ---------------------------------------------------------------------------

  /** `GET connections`: saved connections with their health. */
  async connections(): Promise<IConnection[]> {
    const page = await this.requestAPI<{ connections: IConnection[] }>([
      'connections'
    ]);
    return page.connections;
  }

  /** `POST connections`: checks the token with the datasite, then saves it. */
  connect(url: string, token: string, name: string): Promise<IConnection> {
    return this.requestAPI(['connections'], 'POST', { url, token, name });
  }

  /** `DELETE connections/<name>`. */
  disconnect(site: string): Promise<void> {
    return this.requestAPI(['connections', site], 'DELETE');
  }

  // --- datasets ------------------------------------------------------------------------------

  datasets(site: string): Promise<IDatasetSummary[]> {
    return this.requestAPI(['connections', site, 'datasets']);
  }

  dataset(site: string, dataset: string): Promise<IDataset> {
    return this.requestAPI(['connections', site, 'datasets', dataset]);
  }

  mockPreview(site: string, dataset: string): Promise<IMockPreview> {
    return this.requestAPI(['connections', site, 'datasets', dataset, 'mock']);
  }

  // --- privacy budgets (DP tier) -------------------------------------------------------------

  /** `GET budgets`: every researcher connection's budgets; sites that failed are listed. */
  budgets(): Promise<IBudgetsPage> {
    return this.requestAPI(['budgets']);
  }

  // --- researchers' requests -----------------------------------------------------------------

  /** The connection's user's requests, newest first (no outputs). */
  requests(site: string): Promise<IRequestView[]> {
    return this.requestAPI(['connections', site, 'requests']);
  }

  request(site: string, requestId: number): Promise<IRequestView> {
    return this.requestAPI(['connections', site, 'requests', requestId]);
  }

  // --- reviewers -----------------------------------------------------------------------------

  /** Pending outputs of every reviewer connection. */
  reviews(): Promise<IReviewPage> {
    return this.requestAPI(['reviews']);
  }

  /** Decided outputs (newest first) of every reviewer connection. */
  reviewHistory(): Promise<IReviewPage> {
    return this.requestAPI(['reviews', 'history']);
  }

  output(site: string, outputId: number): Promise<IOutputView> {
    return this.requestAPI(['connections', site, 'outputs', outputId]);
  }

  /** Approve or deny at the datasite, as this connection's reviewer. */
  review(
    site: string,
    outputId: number,
    decision: ReviewDecision,
    comment: string
  ): Promise<IOutputView> {
    return this.requestAPI(
      ['connections', site, 'outputs', outputId, 'review'],
      'POST',
      { decision, comment }
    );
  }
}
