/**
 * The extension's vocabulary: the JSON the server extension (`/remote-kernel/...`,
 * remote_kernel/labapp/handlers.py) sends and the words of the Python side
 * (remote_kernel/protocol/models.py: Role, RequestStatus, OutputState, Verdict).
 *
 * Types only, no JupyterLab imports: the pure modules (cells.ts, reviews.ts) and
 * their jest tests use them. The plugin provides no Lumino token (nothing
 * outside this extension consumes its model).
 */

/** Any JSON object, loosely typed (mime bundles, metadata, request bodies). */
export type JSONObject = { [key: string]: any };

/**
 * A string field whose known values are `T`. A newer datasite may send a value
 * this extension does not know yet, so any string is accepted (and shown as is).
 */
export type Open<T extends string> = T | (string & Record<never, never>);

// --- the Python vocabulary (same values as remote_kernel.protocol.models) ----------------------

/** What a token may do at a datasite (`Role`). */
export type Role = 'researcher' | 'reviewer' | 'admin';

/** Where a submitted cell is in its life at the datasite (`RequestStatus`). */
export type RequestStatus =
  'queued' | 'running' | 'completed' | 'error' | 'failed' | 'interrupted';

/** Whether an output's content may travel to the researcher (`OutputState`). */
export type OutputState =
  'pending' | 'released' | 'denied' | 'blocked' | 'conflicted';

/** A filter's opinion of one output item (`Verdict`). */
export type Verdict = 'release' | 'review' | 'block';

/** A reviewer's vote (the `decision` of a review, handlers.ReviewHandler). */
export type ReviewDecision = 'approve' | 'deny';

/** Request statuses after which no new outputs can appear (`RequestStatus.finished`). */
export const FINISHED_STATUSES: ReadonlySet<string> = new Set<RequestStatus>([
  'completed',
  'error',
  'failed',
  'interrupted'
]);

/** Output states that will not change any more (`OutputState.decided`). */
export const FINAL_STATES: ReadonlySet<string> = new Set<OutputState>([
  'released',
  'denied',
  'blocked',
  'conflicted'
]);

// --- connections (ConnectionsHandler, ConnectionHandler) ----------------------------------------

/** A connection's health as `GET connections` checks it. */
export interface IHealth {
  ok: boolean;
  message: string;
  latency_ms?: number;
  datasite?: string;
  version?: string;
}

/** A saved connection (`Connection.public()`, plus `health` in `GET connections`). */
export interface IConnection {
  name: string;
  url: string;
  user: string;
  role: Open<Role>;
  health?: IHealth;
  /** `POST connections` only: the datasite's own name. */
  datasite?: string;
}

// --- datasets (DatasetsHandler, DatasetHandler, MockPreviewHandler) -----------------------------

export interface IColumn {
  name: string;
  dtype: string;
}

export interface IDatasetSummary {
  name: string;
  description: string;
  columns: IColumn[];
}

/** One dataset (`GET .../datasets/<dataset>`): its summary and the mock's non-disclosive summary. */
export interface IDataset extends IDatasetSummary {
  mock_summary?: JSONObject | null;
}

/** The first rows of a dataset's mock (`mock_preview` in handlers.py). */
export interface IMockPreview {
  columns: string[];
  dtypes: string[];
  rows: unknown[][];
  total_rows: number;
}

// --- requests and outputs (RequestsHandler, RequestHandler, OutputHandler) ----------------------

/** One check's finding on an output (`Finding`). */
export interface IFinding {
  check: string;
  verdict: Open<Verdict>;
  message: string;
  location: string | null;
}

/** One reviewer's vote on an output (`votes` in a reviewer's view of it). */
export interface IVote {
  reviewer: string;
  decision: Open<ReviewDecision>;
  comment?: string;
}

/**
 * Reviewers only: another version of an output the datasite offers to release
 * instead (kind "suppressed": a table with its disclosive cells blanked). It is
 * an output of its own: approving its id releases it in place of the original.
 */
export interface IOutputVariant {
  id: number;
  kind: Open<'suppressed'>;
  /** Like an output's content (a mime bundle under `data`). */
  content?: JSONObject;
  /** What was blanked, in words. */
  summary?: string;
}

// --- differential privacy (DP tier) -------------------------------------------------------------

/** One privacy budget line (`budget_view` in datasite/views.py; `dp.spending` has its ε part). */
export interface IBudgetSpending {
  dataset: string;
  epsilon_total: number;
  epsilon_spent: number;
  epsilon_left: number;
  charges: number;
}

/** A researcher's budget at one site (`GET budgets`: `/api/budgets` plus the connection). */
export interface IBudgetLine extends IBudgetSpending {
  site: string;
  user?: string;
  delta_total?: number;
  delta_spent?: number;
  delta_left?: number;
  updated_at?: string | null;
}

/** `GET budgets`: every researcher connection's budgets; sites that failed. */
export interface IBudgetsPage {
  budgets: IBudgetLine[];
  errors: ISiteError[];
}

/** A DP answer a researcher already holds (`dp_answer_facts` in datasite/views.py). */
export interface IDpAnswer {
  output_id: number;
  request_id: number;
  dataset: string;
  sql: string;
  epsilon: number;
  created: string | null;
}

/**
 * Reviewers only: the output's researcher's DP spending and the DP answers they
 * hold (`dp_view`); absent from datasites older than the DP tier.
 */
export interface IDpContext {
  spending: IBudgetSpending[];
  answers: IDpAnswer[];
}

/** An output as a datasite shows it (researchers: content only when released). */
export interface IOutputView {
  id: number;
  request_id: number;
  seq: number;
  msg_type: string;
  state: Open<OutputState>;
  summary: string;
  decided_by: string | null;
  decided_at?: string | null;
  created_at?: string | null;
  comment?: string;
  content?: JSONObject;
  verdict?: Open<Verdict> | null;
  findings?: IFinding[];
  /** Reviewers and admins only: the votes so far and how many approvals release it. */
  votes?: IVote[];
  required_reviews?: number;
  /** Reviewers only, where the datasite offers them: versions to release instead. */
  variants?: IOutputVariant[];
  /** Reviewers only: the researcher's DP spending and answers (newer datasites). */
  dp?: IDpContext;
}

/** A request as the datasite shows the connection's user. */
export interface IRequestView {
  id: number;
  user: string;
  code: string;
  status: Open<RequestStatus>;
  message: string;
  created_at?: string | null;
  outputs?: IOutputView[];
  pushes?: JSONObject[];
}

// --- reviewers (ReviewQueueHandler, ReviewHistoryHandler, ReviewHandler) ------------------------

/** A pending (or decided) output with its request, from one reviewer connection. */
export interface IReviewItem extends IOutputView {
  site: string;
  reviewer: string;
  request: IRequestView;
}

/** A reviewer connection whose datasite did not answer (reported, not fatal). */
export interface ISiteError {
  site: string;
  message: string;
}

/** `GET reviews` and `GET reviews/history`: every reviewer connection's items. */
export interface IReviewPage {
  items: IReviewItem[];
  errors: ISiteError[];
}

// --- what `%%remote` writes into a notebook ------------------------------------------------------

/** What `%%remote` puts in `metadata.remote_kernel` of every output it displays. */
export interface IRemoteMeta {
  site: string;
  request_id: number;
  output_id?: number;
  state?: Open<OutputState>;
  decided_by?: string | null;
  /** Set by this extension once the output shows the datasite's final answer. */
  rendered?: boolean;
  /** On status lines written by this extension: the request's status. */
  status?: Open<RequestStatus>;
}

/** A notebook output (nbformat), loosely typed. */
export interface INbOutput {
  output_type: string;
  data?: JSONObject;
  metadata?: JSONObject;
  text?: string | string[];
  name?: string;
  execution_count?: number | null;
  ename?: string;
  evalue?: string;
  traceback?: string[];
}
