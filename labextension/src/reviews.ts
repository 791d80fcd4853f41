/**
 * The reviewers' rules, as pure functions over plain JSON (no JupyterLab
 * imports, unit-tested with jest): which items a filter shows and in what
 * order, votes under the two-person rule, ages, finding locations, j/k steps,
 * a researcher's history at a site, and the undo window of decisions
 * (`DecisionQueue`, with the clock handed in).
 */
import {
  IBudgetSpending,
  IDpAnswer,
  IDpContext,
  IOutputVariant,
  IOutputView,
  IRequestView,
  IReviewItem,
  Open,
  OutputState,
  ReviewDecision
} from './tokens';
import { epsilonText } from './budgets';

/** The Pending outputs panel's status filter: a state, or 'decided' (by this reviewer), or 'all'. */
export type ReviewStatusFilter = OutputState | 'decided' | 'all';

/** The status filter's choices, in the order the panel offers them. */
export const REVIEW_STATUSES: ReviewStatusFilter[] = [
  'pending',
  'conflicted',
  'decided',
  'released',
  'denied',
  'blocked',
  'all'
];

export interface IReviewFilter {
  site: string;
  researcher: string;
  status: Open<ReviewStatusFilter> | '';
}

export function reviewKey(item: IReviewItem): string {
  return `${item.site}/${item.id}`;
}

export function matchesFilter(
  item: IReviewItem,
  filter: IReviewFilter
): boolean {
  if (filter.site && item.site !== filter.site) {
    return false;
  }
  if (filter.researcher && item.request.user !== filter.researcher) {
    return false;
  }
  switch (filter.status) {
    case '':
    case 'all':
      return true;
    case 'pending':
      return item.state === 'pending' && !votedBy(item, item.reviewer);
    case 'decided':
      // Decided from this reviewer's side: their vote is in, even if the output waits.
      return item.state !== 'pending' || votedBy(item, item.reviewer);
    default:
      return item.state === filter.status;
  }
}

/** Queue items first (oldest first, the order to review in), then history (newest first). */
export function combineItems(
  queue: IReviewItem[],
  history: IReviewItem[]
): IReviewItem[] {
  const keys = new Set(queue.map(reviewKey));
  const pending = [...queue].sort((a, b) =>
    (a.created_at ?? '').localeCompare(b.created_at ?? '')
  );
  const decided = history
    .filter(item => !keys.has(reviewKey(item)))
    .sort((a, b) => (b.decided_at ?? '').localeCompare(a.decided_at ?? ''));
  return [...pending, ...decided];
}

/** "45 s", "12 min", "3 h", "2 d": how long an output has waited. */
export function ageText(
  createdAt: string | null | undefined,
  now: number
): string {
  if (!createdAt) {
    return '';
  }
  const stamp = Date.parse(
    createdAt.endsWith('Z') ? createdAt : `${createdAt}Z`
  );
  if (Number.isNaN(stamp)) {
    return '';
  }
  const seconds = Math.max(0, Math.round((now - stamp) / 1000));
  if (seconds < 60) {
    return `${seconds} s`;
  }
  if (seconds < 3600) {
    return `${Math.floor(seconds / 60)} min`;
  }
  if (seconds < 86400) {
    return `${Math.floor(seconds / 3600)} h`;
  }
  return `${Math.floor(seconds / 86400)} d`;
}

export interface ICellLocation {
  row: number;
  column: string | null;
}

/** Parses the filter's table locations: `row 3 (sex=1, num=2), column n` (rows from 0). */
export function parseLocation(
  location: string | null | undefined
): ICellLocation | null {
  if (!location) {
    return null;
  }
  const match = /^row (\d+)(?: \([^)]*\))?(?:, column (.+))?$/.exec(
    location.trim()
  );
  if (!match) {
    return null;
  }
  return { row: Number(match[1]), column: match[2] ?? null };
}

/** j/k navigation: the next index, staying inside the list. */
export function step(current: number, length: number, delta: number): number {
  if (length === 0) {
    return -1;
  }
  if (current < 0) {
    return delta > 0 ? 0 : length - 1;
  }
  return Math.min(length - 1, Math.max(0, current + delta));
}

/** Whether `reviewer` has voted on this output (then their Approve/Deny would be refused). */
export function votedBy(item: IOutputView, reviewer: string): boolean {
  return (item.votes ?? []).some(vote => vote.reviewer === reviewer);
}

const VOTED: Record<string, string> = { approve: 'approved', deny: 'denied' };

/**
 * How a review stands where more than one approval is needed, for a reviewer's
 * card and detail: "1 of 2 approvals — bob approved". Empty where one review decides.
 */
export function voteSummary(item: IOutputView): string {
  const votes = item.votes ?? [];
  const required = item.required_reviews ?? 1;
  if (required <= 1 && votes.length === 0) {
    return '';
  }
  const approvals = votes.filter(v => v.decision === 'approve').length;
  const who = votes
    .map(v => `${v.reviewer} ${VOTED[v.decision] ?? v.decision}`)
    .join(', ');
  return `${approvals} of ${required} approvals${who ? ` — ${who}` : ''}`;
}

/** The title of an output's review in the main area: "Review: cleveland #12". */
export function reviewTitle(item: IReviewItem): string {
  return `Review: ${item.site} #${item.id}`;
}

/**
 * Which body cell a finding's column names: its index among the row's cells, or
 * -1. `header` is the last header row's texts, `firstHeader` the first one's (a
 * pandas table with a named index has two); body rows can have fewer leading
 * index cells than the header has.
 */
export function columnIndex(
  header: string[],
  firstHeader: string[],
  rowLength: number,
  column: string
): number {
  let index = header.indexOf(column);
  if (index < 0) {
    index = firstHeader.indexOf(column);
  }
  if (index < 0) {
    return -1;
  }
  const cell = index - Math.max(0, header.length - rowLength);
  return cell >= 0 && cell < rowLength ? cell : -1;
}

// --- a researcher's history at a site ------------------------------------------------------

/** One earlier request of the researcher, as the review shows it. */
export interface IHistoryEntry {
  requestId: number;
  createdAt: string | null;
  status: string;
  /** The code's first non-empty line (the whole code is the entry's tooltip). */
  firstLine: string;
  code: string;
  /** How its outputs were decided, as far as this reviewer's history shows: state → count. */
  outputs: Record<string, number>;
}

/**
 * The researcher's other requests at the item's site, newest first: from the
 * site's requests (a reviewer sees every researcher's) and the decided outputs
 * of the review history (their states, counted per request).
 */
export function researcherHistory(
  item: IReviewItem,
  requests: IRequestView[],
  decided: IReviewItem[],
  limit = 20
): IHistoryEntry[] {
  const states = new Map<number, Record<string, number>>();
  for (const output of decided) {
    if (output.site !== item.site) {
      continue;
    }
    const counts = states.get(output.request_id) ?? {};
    counts[output.state] = (counts[output.state] ?? 0) + 1;
    states.set(output.request_id, counts);
  }
  return requests
    .filter(r => r.user === item.request.user && r.id !== item.request_id)
    .sort((a, b) => b.id - a.id)
    .slice(0, limit)
    .map(r => ({
      requestId: r.id,
      createdAt: r.created_at ?? null,
      status: r.status,
      firstLine:
        r.code
          .split('\n')
          .map(line => line.trim())
          .find(line => line && !line.startsWith('%%')) ?? '',
      code: r.code,
      outputs: states.get(r.id) ?? {}
    }));
}

/** "2 released, 1 denied" (or "" when nothing was decided). */
export function outputCounts(counts: Record<string, number>): string {
  return Object.entries(counts)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([state, n]) => `${n} ${state}`)
    .join(', ');
}

// --- variants (approve with suppression) ---------------------------------------------------

/** The button that approves a variant: "Approve with suppression" for a suppressed one. */
export function variantAction(variant: IOutputVariant): string {
  return variant.kind === 'suppressed'
    ? 'Approve with suppression'
    : `Approve the ${variant.kind} version`;
}

/** An output's variants the datasite offers (none from a datasite without them). */
export function variantsOf(item: IOutputView): IOutputVariant[] {
  return Array.isArray(item.variants)
    ? item.variants.filter(v => typeof v?.id === 'number')
    : [];
}

// --- the undo window of decisions ----------------------------------------------------------

/** How long a decision can be undone before it is sent to the datasite. */
export const UNDO_WINDOW_MS = 5000;

/** A decision made but not sent yet: it is sent when its window closes. */
export interface IPendingDecision {
  /** `reviewKey` of the item. */
  key: string;
  item: IReviewItem;
  decision: ReviewDecision;
  comment: string;
  /** The output that is reviewed: the item's own id, or a variant's. */
  outputId: number;
  /** The variant approved instead of the output, if any. */
  variant: IOutputVariant | null;
  /** When it is sent (ms, the queue's clock). */
  deadline: number;
}

/** What a pending decision is shown as: "Approved", "Denied", "Approved with suppression". */
export function decisionLabel(pending: IPendingDecision): string {
  if (pending.decision === 'deny') {
    return 'Denied';
  }
  if (pending.variant) {
    return pending.variant.kind === 'suppressed'
      ? 'Approved with suppression'
      : `Approved (${pending.variant.kind})`;
  }
  return 'Approved';
}

/** Whole seconds left in the window, never below 0: "Undo (5 s)". */
export function secondsLeft(deadline: number, now: number): number {
  return Math.max(0, Math.ceil((deadline - now) / 1000));
}

/** The undo button's text. */
export function undoText(pending: IPendingDecision, now: number): string {
  return `Undo (${secondsLeft(pending.deadline, now)} s)`;
}

/** The clock and timers a `DecisionQueue` uses (the window's, or a test's). */
export interface IClock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/**
 * Decisions waiting for their undo window to close. `send` is called once per
 * decision: when its window closes, or at once by `flush` (the review was
 * closed); never after `undo`. One decision per item at a time.
 */
export class DecisionQueue {
  private readonly pending = new Map<
    string,
    { decision: IPendingDecision; timer: unknown }
  >();

  constructor(
    private readonly send: (decision: IPendingDecision) => void,
    private readonly clock: IClock,
    readonly windowMs = UNDO_WINDOW_MS
  ) {}

  /** Starts a decision's window; null if the item already has one pending. */
  add(
    item: IReviewItem,
    decision: ReviewDecision,
    comment: string,
    variant: IOutputVariant | null = null
  ): IPendingDecision | null {
    const key = reviewKey(item);
    if (this.pending.has(key)) {
      return null;
    }
    const entry: IPendingDecision = {
      key,
      item,
      decision,
      comment,
      outputId: variant ? variant.id : item.id,
      variant,
      deadline: this.clock.now() + this.windowMs
    };
    const timer = this.clock.setTimeout(() => this.flush(key), this.windowMs);
    this.pending.set(key, { decision: entry, timer });
    return entry;
  }

  get(key: string): IPendingDecision | undefined {
    return this.pending.get(key)?.decision;
  }

  get all(): IPendingDecision[] {
    return [...this.pending.values()].map(p => p.decision);
  }

  /** Cancels a decision still in its window; the cancelled one, if there was one. */
  undo(key: string): IPendingDecision | undefined {
    const entry = this.pending.get(key);
    if (!entry) {
      return undefined;
    }
    this.clock.clearTimeout(entry.timer);
    this.pending.delete(key);
    return entry.decision;
  }

  /** Sends one decision now (or all of them without a key); returns what was sent. */
  flush(key?: string): IPendingDecision[] {
    const keys = key === undefined ? [...this.pending.keys()] : [key];
    const sent: IPendingDecision[] = [];
    for (const k of keys) {
      const entry = this.pending.get(k);
      if (!entry) {
        continue;
      }
      this.clock.clearTimeout(entry.timer);
      this.pending.delete(k);
      sent.push(entry.decision);
      this.send(entry.decision);
    }
    return sent;
  }
}

// --- differential privacy -------------------------------------------------------------------

/** A dataset's part of a researcher's DP context: what they spent and the answers they hold. */
export interface IDpDataset {
  dataset: string;
  spending: IBudgetSpending | null;
  answers: IDpAnswer[];
}

/**
 * The DP context by dataset (those with answers first, then by name), answers
 * newest first. An empty list when the researcher has neither budget nor answers.
 */
export function dpByDataset(dp: IDpContext): IDpDataset[] {
  const datasets = new Map<string, IDpDataset>();
  const of = (name: string) => {
    let entry = datasets.get(name);
    if (!entry) {
      entry = { dataset: name, spending: null, answers: [] };
      datasets.set(name, entry);
    }
    return entry;
  };
  for (const line of dp.spending ?? []) {
    of(line.dataset).spending = line;
  }
  for (const answer of dp.answers ?? []) {
    of(answer.dataset || '?').answers.push(answer);
  }
  const entries = [...datasets.values()];
  for (const entry of entries) {
    entry.answers.sort(
      (a, b) =>
        (b.created ?? '').localeCompare(a.created ?? '') ||
        b.output_id - a.output_id
    );
  }
  return entries.sort(
    (a, b) =>
      Number(b.answers.length > 0) - Number(a.answers.length > 0) ||
      a.dataset.localeCompare(b.dataset)
  );
}

/** "ε 0.6 spent, 2.4 left of 3 (4 charges)": a dataset's spending, for the reviewer. */
export function spendingText(line: IBudgetSpending | null): string {
  if (!line) {
    return 'no budget here';
  }
  const charges = `${line.charges} charge${line.charges === 1 ? '' : 's'}`;
  return (
    `ε ${epsilonText(line.epsilon_spent)} spent, ` +
    `${epsilonText(line.epsilon_left)} left of ${epsilonText(line.epsilon_total)} (${charges})`
  );
}
