/**
 * Client of the server extension (`/remote-kernel/...`). The browser only ever
 * talks to the Jupyter server; tokens stay there.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IRequestView, IReviewItem, JSONObject } from './model';

export interface IHealth {
  ok: boolean;
  message: string;
  latency_ms?: number;
  datasite?: string;
  version?: string;
}

export interface IConnection {
  name: string;
  url: string;
  user: string;
  role: string;
  health?: IHealth;
}

export interface IDatasetSummary {
  name: string;
  description: string;
  columns: { name: string; dtype: string }[];
}

export interface IMockPreview {
  columns: string[];
  dtypes: string[];
  rows: unknown[][];
  total_rows: number;
}

export interface ISiteError {
  site: string;
  message: string;
}

/** An error the server extension explained (its JSON `error.message`). */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

export class RemoteKernelApi {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  private async call<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'remote-kernel', path);
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
    let body: JSONObject = {};
    try {
      body = text ? JSON.parse(text) : {};
    } catch {
      body = {};
    }
    if (!response.ok) {
      const message =
        body?.error?.message ?? body?.message ?? `HTTP ${response.status}`;
      throw new ApiError(String(message), response.status);
    }
    return body as T;
  }

  private post<T>(path: string, body: JSONObject): Promise<T> {
    return this.call<T>(path, { method: 'POST', body: JSON.stringify(body) });
  }

  async connections(): Promise<IConnection[]> {
    return (await this.call<{ connections: IConnection[] }>('connections'))
      .connections;
  }

  connect(url: string, token: string, name: string): Promise<IConnection> {
    return this.post('connections', { url, token, name });
  }

  disconnect(name: string): Promise<void> {
    return this.call(`connections/${encodeURIComponent(name)}`, {
      method: 'DELETE'
    });
  }

  datasets(site: string): Promise<IDatasetSummary[]> {
    return this.call(`connections/${encodeURIComponent(site)}/datasets`);
  }

  mockPreview(site: string, dataset: string): Promise<IMockPreview> {
    const path = `connections/${encodeURIComponent(site)}/datasets/${encodeURIComponent(dataset)}/mock`;
    return this.call(path);
  }

  request(site: string, requestId: number): Promise<IRequestView> {
    return this.call(
      `connections/${encodeURIComponent(site)}/requests/${requestId}`
    );
  }

  requests(site: string): Promise<IRequestView[]> {
    return this.call(`connections/${encodeURIComponent(site)}/requests`);
  }

  reviewQueue(): Promise<{ items: IReviewItem[]; errors: ISiteError[] }> {
    return this.call('reviews');
  }

  reviewHistory(): Promise<{ items: IReviewItem[]; errors: ISiteError[] }> {
    return this.call('reviews/history');
  }

  review(
    site: string,
    outputId: number,
    decision: 'approve' | 'deny',
    comment: string
  ) {
    const path = `connections/${encodeURIComponent(site)}/outputs/${outputId}/review`;
    return this.post<JSONObject>(path, { decision, comment });
  }
}
