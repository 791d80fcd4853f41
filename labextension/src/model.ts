/**
 * The extension's model: the one owner of everything that is polled from the
 * server extension, and of the state more than one view needs.
 *
 * - connections (and their health) every 15 s, and at once after a connect or
 *   a disconnect: `connectionsChanged`, `connectionsFailed`;
 * - the researcher connections' privacy budgets (DP tier) with the connections,
 *   and at once after a connect or a disconnect: `budgetsChanged`;
 * - the reviewers' queue (and the history when the panel's filter shows
 *   decided outputs) every 4 s: `reviewsChanged`;
 * - the requests that remote cells still wait for every 3 s: `requestChanged`.
 *   The cell controller says which ones (`watchRequests`): only it knows which
 *   cells are unsettled.
 * - reviewers' decisions in their undo window (`decide`, `undoDecision`,
 *   `commitDecisions`): `decisionsChanged` when one starts or ends,
 *   `decisionTick` every second while any waits, `decisionFailed`.
 *
 * Widgets and the cell controller subscribe to these signals; none of them runs
 * a timer or fetches connections itself. Nothing is fetched before `start()`.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { RemoteKernelApi } from './api';
import {
  DecisionQueue,
  IHistoryEntry,
  IPendingDecision,
  UNDO_WINDOW_MS,
  researcherHistory
} from './reviews';
import {
  IBudgetsPage,
  IConnection,
  IDatasetSummary,
  IMockPreview,
  IOutputVariant,
  IOutputView,
  IRequestView,
  IReviewItem,
  ISiteError,
  ReviewDecision
} from './tokens';

/** How often each thing is polled, in milliseconds. */
export interface IPollIntervals {
  connections: number;
  reviews: number;
  requests: number;
}

export const POLL_INTERVALS: IPollIntervals = {
  connections: 15000,
  reviews: 4000,
  requests: 3000
};

/** What the Pending outputs panel shows: every reviewer connection's items. */
export interface IReviewsState {
  /** Pending outputs (`GET reviews`). */
  queue: IReviewItem[];
  /** Decided outputs (`GET reviews/history`), as of the last time they were wanted. */
  history: IReviewItem[];
  /** Sites that did not answer (or the Jupyter server itself, as site "server"). */
  errors: ISiteError[];
}

/** A decision the datasite refused (or could not be reached for), by `reviewKey`. */
export interface IDecisionFailure {
  key: string;
  message: string;
}

/** A request at a datasite, by its id. */
export interface IRequestRef {
  site: string;
  requestId: number;
}

/** A request as the datasite showed it when it was polled. */
export interface IRequestUpdate {
  site: string;
  request: IRequestView;
}

function messageOf(error: unknown): string {
  return String((error as Error)?.message ?? error);
}

export class RemoteKernelModel {
  private _connections: IConnection[] = [];
  private _reviews: IReviewsState = { queue: [], history: [], errors: [] };
  private _includeHistory = false;
  private _reviewsBusy = false;
  private _requestsBusy = false;
  private readonly _requestSources = new Set<() => IRequestRef[]>();
  private readonly _timers: number[] = [];
  private _isDisposed = false;
  private readonly _connectionsChanged = new Signal<this, IConnection[]>(this);
  private readonly _connectionsFailed = new Signal<this, string>(this);
  private _budgets: IBudgetsPage = { budgets: [], errors: [] };
  private _budgetsBusy = false;
  private readonly _budgetsChanged = new Signal<this, IBudgetsPage>(this);
  private readonly _reviewsChanged = new Signal<this, IReviewsState>(this);
  private readonly _requestChanged = new Signal<this, IRequestUpdate>(this);
  private readonly _decisionsChanged = new Signal<this, IPendingDecision[]>(
    this
  );
  private readonly _decisionTick = new Signal<this, number>(this);
  private readonly _decisionFailed = new Signal<this, IDecisionFailure>(this);
  private _decisionTicker = 0;
  private readonly _decisions: DecisionQueue;

  constructor(
    readonly api: RemoteKernelApi,
    private readonly intervals: IPollIntervals = POLL_INTERVALS,
    undoWindowMs = UNDO_WINDOW_MS
  ) {
    this._decisions = new DecisionQueue(
      pending => void this.sendDecision(pending),
      {
        now: () => Date.now(),
        setTimeout: (callback, ms) => window.setTimeout(callback, ms),
        clearTimeout: handle => window.clearTimeout(handle as number)
      },
      undoWindowMs
    );
  }

  /** Fetches connections and reviews now, then polls everything at its interval. */
  start(): void {
    if (this._timers.length || this._isDisposed) {
      return;
    }
    const every = (ms: number, poll: () => Promise<void>) =>
      this._timers.push(window.setInterval(() => void poll(), ms));
    every(this.intervals.connections, async () => {
      await this.refreshConnections();
      await this.refreshBudgets();
    });
    every(this.intervals.reviews, () => this.refreshReviews());
    every(this.intervals.requests, () => this.refreshRequests());
    void this.refreshConnections().then(() => this.refreshBudgets());
    void this.refreshReviews();
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    // Decisions in their undo window were made: they are sent, not lost.
    this._decisions.flush();
    this._isDisposed = true;
    window.clearInterval(this._decisionTicker);
    for (const timer of this._timers) {
      window.clearInterval(timer);
    }
    this._timers.length = 0;
    this._requestSources.clear();
    Signal.clearData(this);
  }

  // --- connections ---------------------------------------------------------------------------

  /** The saved connections as last fetched (with their health). */
  get connections(): readonly IConnection[] {
    return this._connections;
  }

  /** Names of the researcher connections: the sites remote cells can run at. */
  get researcherSites(): string[] {
    return this._connections
      .filter(c => c.role === 'researcher')
      .map(c => c.name);
  }

  /** Emitted after every successful fetch of the connections (health included). */
  get connectionsChanged(): ISignal<this, IConnection[]> {
    return this._connectionsChanged;
  }

  /** Emitted with the error's message when the connections cannot be fetched. */
  get connectionsFailed(): ISignal<this, string> {
    return this._connectionsFailed;
  }

  /** Fetches the connections now (never throws: failures go to `connectionsFailed`). */
  async refreshConnections(): Promise<void> {
    let connections: IConnection[];
    try {
      connections = await this.api.connections();
    } catch (error) {
      if (!this._isDisposed) {
        this._connectionsFailed.emit(messageOf(error));
      }
      return;
    }
    if (this._isDisposed) {
      return;
    }
    this._connections = connections;
    this._connectionsChanged.emit(connections);
  }

  /** Saves a connection (the token goes to the server, never kept here), then refetches. */
  async connect(
    url: string,
    token: string,
    name: string
  ): Promise<IConnection> {
    const connection = await this.api.connect(url, token, name);
    void this.refreshConnections().then(() => this.refreshBudgets());
    return connection;
  }

  async disconnect(site: string): Promise<void> {
    await this.api.disconnect(site);
    await this.refreshConnections();
    await this.refreshBudgets();
  }

  // --- privacy budgets (DP tier) -------------------------------------------------------------

  /** The researcher connections' budgets as last fetched, and the sites that failed. */
  get budgets(): IBudgetsPage {
    return this._budgets;
  }

  /** Emitted after every fetch of the budgets (a failing site is in `errors`). */
  get budgetsChanged(): ISignal<this, IBudgetsPage> {
    return this._budgetsChanged;
  }

  /**
   * Fetches the budgets now (never throws: the Jupyter server's own failure is
   * reported as site "server"). Skipped while a fetch runs, and when no
   * researcher connection is saved.
   */
  async refreshBudgets(): Promise<void> {
    if (this._budgetsBusy || this._isDisposed) {
      return;
    }
    if (!this.researcherSites.length) {
      if (this._budgets.budgets.length || this._budgets.errors.length) {
        this._budgets = { budgets: [], errors: [] };
        this._budgetsChanged.emit(this._budgets);
      }
      return;
    }
    this._budgetsBusy = true;
    let page: IBudgetsPage;
    try {
      page = await this.api.budgets();
    } catch (error) {
      page = {
        budgets: this._budgets.budgets,
        errors: [{ site: 'server', message: messageOf(error) }]
      };
    } finally {
      this._budgetsBusy = false;
    }
    if (this._isDisposed) {
      return;
    }
    this._budgets = page;
    this._budgetsChanged.emit(page);
  }

  datasets(site: string): Promise<IDatasetSummary[]> {
    return this.api.datasets(site);
  }

  mockPreview(site: string, dataset: string): Promise<IMockPreview> {
    return this.api.mockPreview(site, dataset);
  }

  // --- reviews -------------------------------------------------------------------------------

  get reviews(): IReviewsState {
    return this._reviews;
  }

  /** Emitted after every poll of the reviews (errors included) and after a decision. */
  get reviewsChanged(): ISignal<this, IReviewsState> {
    return this._reviewsChanged;
  }

  /** Whether the polls also fetch the history (the panel shows decided outputs). */
  get includeHistory(): boolean {
    return this._includeHistory;
  }

  set includeHistory(value: boolean) {
    this._includeHistory = value;
  }

  /** Fetches the queue (and the history if wanted) now; skipped while a fetch runs. */
  async refreshReviews(): Promise<void> {
    if (this._reviewsBusy || this._isDisposed) {
      return;
    }
    this._reviewsBusy = true;
    const reviews = { ...this._reviews };
    try {
      const [queue, history] = await Promise.all([
        this.api.reviews(),
        this._includeHistory ? this.api.reviewHistory() : Promise.resolve(null)
      ]);
      reviews.queue = queue.items;
      reviews.errors = queue.errors;
      if (history) {
        reviews.history = history.items;
      }
    } catch (error) {
      reviews.errors = [{ site: 'server', message: messageOf(error) }];
    } finally {
      this._reviewsBusy = false;
    }
    if (this._isDisposed) {
      return;
    }
    this._reviews = reviews;
    this._reviewsChanged.emit(reviews);
  }

  /** Approves or denies at the item's datasite (throws the server's explanation). */
  async review(
    item: IReviewItem,
    decision: ReviewDecision,
    comment: string
  ): Promise<void> {
    await this.api.review(item.site, item.id, decision, comment);
  }

  /** Drops a decided item from the queue at once, then refetches the reviews. */
  markDecided(item: IReviewItem): void {
    const queue = this._reviews.queue.filter(
      i => !(i.site === item.site && i.id === item.id)
    );
    this._reviews = { ...this._reviews, queue };
    this._reviewsChanged.emit(this._reviews);
    void this.refreshReviews();
  }

  // --- decisions in their undo window ------------------------------------------------------

  /** Emitted when a decision starts its undo window, is undone, or is sent. */
  get decisionsChanged(): ISignal<this, IPendingDecision[]> {
    return this._decisionsChanged;
  }

  /** Emitted every second while a decision waits (with the time), for the countdowns. */
  get decisionTick(): ISignal<this, number> {
    return this._decisionTick;
  }

  /** Emitted when the datasite refused a decision, or could not be reached. */
  get decisionFailed(): ISignal<this, IDecisionFailure> {
    return this._decisionFailed;
  }

  /** The decisions waiting for their undo window to close. */
  get pendingDecisions(): IPendingDecision[] {
    return this._decisions.all;
  }

  /** The item's decision in its undo window, if any (by `reviewKey`). */
  pendingDecision(key: string): IPendingDecision | undefined {
    return this._decisions.get(key);
  }

  /**
   * Approves or denies (or approves a variant instead), sent when the undo
   * window closes. Null if the item already has a decision waiting.
   */
  decide(
    item: IReviewItem,
    decision: ReviewDecision,
    comment: string,
    variant: IOutputVariant | null = null
  ): IPendingDecision | null {
    const pending = this._decisions.add(item, decision, comment, variant);
    if (pending) {
      this.decisionsUpdated();
    }
    return pending;
  }

  /** Cancels a decision in its window: nothing is sent; the cancelled decision. */
  undoDecision(key: string): IPendingDecision | undefined {
    const undone = this._decisions.undo(key);
    if (undone) {
      this.decisionsUpdated();
    }
    return undone;
  }

  /** Sends one waiting decision now (all without a key): its review or panel was closed. */
  commitDecisions(key?: string): void {
    this._decisions.flush(key);
  }

  private decisionsUpdated(): void {
    const waiting = this._decisions.all.length > 0;
    if (waiting && !this._decisionTicker) {
      this._decisionTicker = window.setInterval(
        () => this._decisionTick.emit(Date.now()),
        1000
      );
    } else if (!waiting && this._decisionTicker) {
      window.clearInterval(this._decisionTicker);
      this._decisionTicker = 0;
    }
    this._decisionsChanged.emit(this._decisions.all);
  }

  private async sendDecision(pending: IPendingDecision): Promise<void> {
    this.decisionsUpdated();
    const { item, outputId, decision, comment } = pending;
    try {
      await this.api.review(item.site, outputId, decision, comment);
    } catch (error) {
      this._decisionFailed.emit({
        key: pending.key,
        message: messageOf(error)
      });
      void this.refreshReviews();
      return;
    }
    if (!this._isDisposed) {
      this.markDecided(item);
    }
  }

  /** An output as the datasite shows this connection's reviewer now. */
  output(site: string, outputId: number): Promise<IOutputView> {
    return this.api.output(site, outputId);
  }

  /** The item's researcher's other requests at its site, newest first, with their decisions. */
  async researcherHistory(item: IReviewItem): Promise<IHistoryEntry[]> {
    const [requests, decided] = await Promise.all([
      this.api.requests(item.site),
      this.api.reviewHistory().catch(() => null)
    ]);
    const items = (decided?.items ?? []).filter(i => i.site === item.site);
    return researcherHistory(item, requests, items);
  }

  // --- requests of remote cells --------------------------------------------------------------

  /** Emitted for every request a poll fetched (whether or not it changed). */
  get requestChanged(): ISignal<this, IRequestUpdate> {
    return this._requestChanged;
  }

  /**
   * Adds a source of the requests to poll: it is asked at every poll. Calling
   * the returned function removes it.
   */
  watchRequests(source: () => IRequestRef[]): () => void {
    this._requestSources.add(source);
    return () => {
      this._requestSources.delete(source);
    };
  }

  /** A researcher's request as the datasite shows it (released content only). */
  request(site: string, requestId: number): Promise<IRequestView> {
    return this.api.request(site, requestId);
  }

  /** The connection's user's requests, newest first (no outputs). */
  requests(site: string): Promise<IRequestView[]> {
    return this.api.requests(site);
  }

  /**
   * Fetches the watched requests one after the other and emits each; an
   * unreachable site is tried again at the next poll. Skipped while a poll runs.
   */
  async refreshRequests(): Promise<void> {
    if (this._requestsBusy || this._isDisposed) {
      return;
    }
    this._requestsBusy = true;
    try {
      const wanted = new Map<string, IRequestRef>();
      for (const source of this._requestSources) {
        for (const ref of source()) {
          wanted.set(`${ref.site}/${ref.requestId}`, ref);
        }
      }
      for (const { site, requestId } of wanted.values()) {
        let request: IRequestView;
        try {
          request = await this.api.request(site, requestId);
        } catch {
          continue;
        }
        if (this._isDisposed) {
          return;
        }
        this._requestChanged.emit({ site, request });
      }
    } finally {
      this._requestsBusy = false;
    }
  }
}
