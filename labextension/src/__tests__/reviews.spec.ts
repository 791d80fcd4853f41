import {
  DecisionQueue,
  IClock,
  IPendingDecision,
  columnIndex,
  decisionLabel,
  outputCounts,
  researcherHistory,
  reviewTitle,
  secondsLeft,
  undoText,
  variantAction,
  variantsOf
} from '../reviews';
import { IRequestView, IReviewItem } from '../tokens';

function item(overrides: Partial<IReviewItem> = {}): IReviewItem {
  return {
    id: 12,
    request_id: 7,
    seq: 0,
    msg_type: 'execute_result',
    state: 'pending',
    summary: '',
    decided_by: null,
    site: 'cleveland-bob',
    reviewer: 'bob',
    request: {
      id: 7,
      user: 'alice',
      code: 'x',
      status: 'completed',
      message: ''
    },
    ...overrides
  };
}

/** A clock the test moves by hand. */
class FakeClock implements IClock {
  time = 1000;
  private timers = new Map<number, { at: number; callback: () => void }>();
  private next = 1;
  now(): number {
    return this.time;
  }
  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.next++;
    this.timers.set(id, { at: this.time + ms, callback });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  advance(ms: number): void {
    this.time += ms;
    for (const [id, timer] of [...this.timers]) {
      if (timer.at <= this.time) {
        this.timers.delete(id);
        timer.callback();
      }
    }
  }
  get active(): number {
    return this.timers.size;
  }
}

describe('the review in the main area', () => {
  it('is titled by site and output id', () => {
    expect(reviewTitle(item())).toBe('Review: cleveland-bob #12');
  });

  it('finds the cell a finding names, past the index columns', () => {
    // pandas with a named index: header rows ['', 'n', 'mean'] and ['sex', '', ''];
    // body rows have one <th> (the index) and two <td>.
    expect(columnIndex(['', 'n', 'mean'], ['', 'n', 'mean'], 3, 'n')).toBe(1);
    expect(columnIndex(['sex', '', ''], ['', 'n', 'mean'], 3, 'mean')).toBe(2);
    // A two-level row index: the header has one more leading cell than some rows.
    expect(columnIndex(['', '', 'n'], ['', '', 'n'], 2, 'n')).toBe(1);
    expect(columnIndex(['', 'n'], ['', 'n'], 2, 'missing')).toBe(-1);
  });
});

describe("a researcher's history at a site", () => {
  const request = (id: number, user: string, code: string): IRequestView => ({
    id,
    user,
    code,
    status: 'completed',
    message: '',
    created_at: `2026-01-0${id}T10:00:00`
  });
  const requests = [
    request(3, 'alice', '%%remote --site cleveland\n\ndf.describe()'),
    request(5, 'carol', 'print(1)'),
    request(7, 'alice', 'x'),
    request(4, 'alice', 'df.head()\nmore')
  ];
  const decided = [
    item({ id: 30, request_id: 3, state: 'released' }),
    item({ id: 31, request_id: 3, state: 'denied' }),
    item({ id: 32, request_id: 3, state: 'released' }),
    item({ id: 40, request_id: 4, state: 'denied', site: 'hungary-bob' })
  ];

  it("lists the researcher's other requests, newest first, with their decisions", () => {
    const entries = researcherHistory(item(), requests, decided);
    expect(entries.map(e => e.requestId)).toEqual([4, 3]);
    expect(entries[0]).toMatchObject({
      firstLine: 'df.head()',
      outputs: {} // request 4's decision is at another site
    });
    expect(entries[1].firstLine).toBe('df.describe()');
    expect(outputCounts(entries[1].outputs)).toBe('1 denied, 2 released');
  });

  it('stops at the limit', () => {
    expect(researcherHistory(item(), requests, [], 1)).toHaveLength(1);
  });
});

describe('variants', () => {
  it('are absent unless the datasite sends them', () => {
    expect(variantsOf(item())).toEqual([]);
    const suppressed = { id: 13, kind: 'suppressed', summary: '2 cells' };
    expect(variantsOf(item({ variants: [suppressed] }))).toEqual([suppressed]);
    expect(variantAction(suppressed)).toBe('Approve with suppression');
    expect(variantAction({ id: 14, kind: 'rounded' })).toBe(
      'Approve the rounded version'
    );
  });
});

describe('the undo window', () => {
  function queue() {
    const clock = new FakeClock();
    const sent: IPendingDecision[] = [];
    return {
      clock,
      sent,
      decisions: new DecisionQueue(d => sent.push(d), clock)
    };
  }

  it('sends a decision only when its window closes', () => {
    const { clock, sent, decisions } = queue();
    const pending = decisions.add(item(), 'approve', '');
    expect(pending).not.toBeNull();
    expect(decisionLabel(pending!)).toBe('Approved');
    expect(undoText(pending!, clock.now())).toBe('Undo (5 s)');
    clock.advance(4200);
    expect(undoText(pending!, clock.now())).toBe('Undo (1 s)');
    expect(sent).toEqual([]);
    clock.advance(800);
    expect(sent.map(d => [d.outputId, d.decision])).toEqual([[12, 'approve']]);
    expect(decisions.all).toEqual([]);
  });

  it('sends nothing after Undo', () => {
    const { clock, sent, decisions } = queue();
    decisions.add(item(), 'deny', 'aggregate first');
    const undone = decisions.undo('cleveland-bob/12');
    expect(undone?.comment).toBe('aggregate first');
    clock.advance(10000);
    expect(sent).toEqual([]);
    expect(clock.active).toBe(0);
    expect(decisions.undo('cleveland-bob/12')).toBeUndefined();
  });

  it('sends at once when flushed (the review was closed), and only once', () => {
    const { clock, sent, decisions } = queue();
    decisions.add(item(), 'approve', '');
    decisions.add(item({ id: 13 }), 'deny', 'no');
    decisions.flush('cleveland-bob/13');
    expect(sent.map(d => d.item.id)).toEqual([13]);
    decisions.flush();
    expect(sent.map(d => d.item.id)).toEqual([13, 12]);
    clock.advance(10000);
    expect(sent).toHaveLength(2);
  });

  it('keeps one decision per output, and approves a variant by its own id', () => {
    const { decisions } = queue();
    const variant = { id: 99, kind: 'suppressed' };
    const pending = decisions.add(item(), 'approve', '', variant);
    expect(pending?.outputId).toBe(99);
    expect(decisionLabel(pending!)).toBe('Approved with suppression');
    expect(decisions.add(item(), 'deny', 'x')).toBeNull();
    expect(decisionLabel({ ...pending!, decision: 'deny' })).toBe('Denied');
  });

  it('counts whole seconds, never below zero', () => {
    expect(secondsLeft(6000, 1000)).toBe(5);
    expect(secondsLeft(6000, 1001)).toBe(5);
    expect(secondsLeft(6000, 5999)).toBe(1);
    expect(secondsLeft(6000, 7000)).toBe(0);
  });
});
