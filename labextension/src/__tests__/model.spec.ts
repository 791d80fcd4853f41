import {
  ageText,
  combineItems,
  matchesFilter,
  parseLocation,
  step,
  voteSummary,
  votedBy
} from '../reviews';
import { IReviewItem } from '../tokens';

describe('review queue', () => {
  const item = (
    site: string,
    id: number,
    user: string,
    state: string,
    created: string
  ): IReviewItem => ({
    id,
    request_id: 1,
    seq: 0,
    msg_type: 'stream',
    state,
    summary: '',
    decided_by: null,
    created_at: created,
    decided_at: created,
    site,
    reviewer: 'bob',
    request: { id: 1, user, code: '', status: 'completed', message: '' }
  });

  it('filters by site, researcher and status', () => {
    const a = item('cleveland', 1, 'alice', 'pending', '2026-01-01T00:00:00');
    const b = item('hungarian', 2, 'carol', 'denied', '2026-01-02T00:00:00');
    expect(
      matchesFilter(a, { site: '', researcher: '', status: 'pending' })
    ).toBe(true);
    expect(
      matchesFilter(b, { site: '', researcher: '', status: 'pending' })
    ).toBe(false);
    expect(
      matchesFilter(b, {
        site: 'hungarian',
        researcher: 'carol',
        status: 'decided'
      })
    ).toBe(true);
    expect(
      matchesFilter(b, { site: 'cleveland', researcher: '', status: 'all' })
    ).toBe(false);
    expect(combineItems([a], [b, a]).map(i => i.id)).toEqual([1, 2]);
  });

  it('says how long an output waited', () => {
    const now = Date.parse('2026-01-01T02:00:00Z');
    expect(ageText('2026-01-01T01:59:30Z', now)).toBe('30 s');
    expect(ageText('2026-01-01T01:00:00', now)).toBe('1 h');
    expect(ageText(null, now)).toBe('');
  });

  it('reads table locations from findings', () => {
    expect(parseLocation('row 3 (sex=1, num=2), column n')).toEqual({
      row: 3,
      column: 'n'
    });
    expect(parseLocation('row 0')).toEqual({ row: 0, column: null });
    expect(parseLocation('image/png')).toBeNull();
  });

  it('moves with j/k inside the list', () => {
    expect(step(-1, 3, 1)).toBe(0);
    expect(step(2, 3, 1)).toBe(2);
    expect(step(0, 3, -1)).toBe(0);
    expect(step(0, 0, 1)).toBe(-1);
  });

  it("shows a two-person review's votes on the card", () => {
    const pending = item('hungary-dave', 1, 'alice', 'pending', '');
    const first = {
      ...pending,
      reviewer: 'dave',
      required_reviews: 2,
      votes: [{ reviewer: 'bob', decision: 'approve' }]
    };
    expect(voteSummary(first)).toBe('1 of 2 approvals — bob approved');
    expect(voteSummary({ ...first, votes: [] })).toBe('0 of 2 approvals');
    const split = {
      ...first,
      votes: [
        { reviewer: 'bob', decision: 'approve' },
        { reviewer: 'erin', decision: 'deny', comment: 'too few' }
      ]
    };
    expect(voteSummary(split)).toBe(
      '1 of 2 approvals — bob approved, erin denied'
    );
    // One review decides: no vote line.
    expect(voteSummary({ ...pending, required_reviews: 1, votes: [] })).toBe(
      ''
    );
    expect(voteSummary(pending)).toBe('');
  });

  it("moves an output the reviewer voted on from 'pending' to 'decided'", () => {
    const waiting = {
      ...item('hungary-bob', 1, 'alice', 'pending', ''),
      required_reviews: 2,
      votes: [{ reviewer: 'bob', decision: 'approve' }]
    };
    expect(votedBy(waiting, 'bob')).toBe(true);
    expect(votedBy(waiting, 'dave')).toBe(false);
    const status = (s: string) => ({ site: '', researcher: '', status: s });
    expect(matchesFilter(waiting, status('pending'))).toBe(false);
    expect(matchesFilter(waiting, status('decided'))).toBe(true);
    expect(matchesFilter(waiting, status('all'))).toBe(true);
    const second = { ...waiting, site: 'hungary-dave', reviewer: 'dave' };
    expect(matchesFilter(second, status('pending'))).toBe(true);
    expect(matchesFilter(second, status('decided'))).toBe(false);
  });
});
