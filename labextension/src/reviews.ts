/**
 * The reviewers' rules, as pure functions over plain JSON (no JupyterLab
 * imports, unit-tested with jest): which items a filter shows and in what
 * order, votes under the two-person rule, ages, finding locations, j/k steps.
 */
import { IOutputView, IReviewItem, Open, OutputState } from './tokens';

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
