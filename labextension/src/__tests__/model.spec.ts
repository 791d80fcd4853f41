import {
  findRunRequest,
  mergeRequest,
  needsRefresh,
  outputLabel,
  remoteBody,
  remoteMagicCode,
  requestsFromOutputs,
  siteBadges,
  targetSites,
  toggledTags
} from '../cells';
import {
  ageText,
  combineItems,
  matchesFilter,
  parseLocation,
  step,
  voteSummary,
  votedBy
} from '../reviews';
import { INbOutput, IRequestView, IReviewItem } from '../tokens';

const placeholder = (outputId: number, state = 'pending'): INbOutput => ({
  output_type: 'display_data',
  data: { 'text/plain': `⏳ pending review (output ${outputId})` },
  metadata: {
    remote_kernel: {
      site: 'cleveland',
      request_id: 7,
      output_id: outputId,
      state,
      decided_by: null
    }
  }
});
const statusLine: INbOutput = {
  output_type: 'display_data',
  data: { 'text/plain': 'cleveland · request 7 · running' },
  metadata: { remote_kernel: { site: 'cleveland', request_id: 7 } }
};
const mockOutput: INbOutput = {
  output_type: 'stream',
  name: 'stdout',
  text: 'mock 1\n'
};

function request(
  outputs: IRequestView['outputs'],
  status = 'completed'
): IRequestView {
  return {
    id: 7,
    user: 'alice',
    code: 'print(1)',
    status,
    message: '',
    outputs
  };
}

describe('tags', () => {
  it('adds and removes remote, keeping other tags', () => {
    expect(toggledTags(['a'])).toEqual(['a', 'remote']);
    expect(toggledTags(['remote', 'a'])).toEqual(['a']);
    expect(toggledTags(undefined, true)).toEqual(['remote']);
    expect(toggledTags(['remote'], true)).toEqual(['remote']);
  });
});

describe('the %%remote command', () => {
  it('names every site and keeps the source', () => {
    expect(remoteMagicCode('x = 1\nx', ['a', 'b-2'])).toBe(
      '%%remote --site a --site b-2\nx = 1\nx'
    );
  });
  it('runs a cell with its own %%remote line as written', () => {
    const typed = '%%remote --all --timeout 30\nx = 1\nx';
    expect(remoteMagicCode(typed, ['a'])).toBe(typed);
    expect(remoteMagicCode('\n%%remote\nx', ['a'])).toBe('\n%%remote\nx');
    expect(remoteBody(typed)).toBe('x = 1\nx');
    // Not a remote line: a longer magic name, or %%remote further down.
    expect(remoteMagicCode('%%remotely\n1', ['a'])).toBe(
      '%%remote --site a\n%%remotely\n1'
    );
    expect(remoteBody('x = 1\n%%remote\n')).toBe('x = 1\n%%remote\n');
  });
  it('refuses names that could inject options', () => {
    expect(() => remoteMagicCode('1', ['a --all'])).toThrow(
      /invalid datasite name/
    );
  });
  it('targets the saved choice among connected sites, else all', () => {
    expect(targetSites(undefined, ['a', 'b'])).toEqual(['a', 'b']);
    expect(targetSites(['b', 'gone'], ['a', 'b'])).toEqual(['b']);
  });
});

describe('merging a request into the cell', () => {
  const outputs = [mockOutput, statusLine, placeholder(11), placeholder(12)];

  it('records the newest request per site', () => {
    expect(requestsFromOutputs(outputs)).toEqual({ cleveland: 7 });
    const fanout: INbOutput = {
      output_type: 'display_data',
      data: {},
      metadata: { remote_kernel: { requests: { cleveland: 3, hungary: 9 } } }
    };
    expect(requestsFromOutputs([fanout, ...outputs])).toEqual({
      cleveland: 7,
      hungary: 9
    });
  });

  it('replaces a released placeholder in place with the content and keeps the others', () => {
    const view = request([
      {
        id: 11,
        request_id: 7,
        seq: 0,
        msg_type: 'execute_result',
        state: 'released',
        summary: '',
        decided_by: 'bob',
        content: {
          data: { 'text/plain': '42', 'text/html': '<b>42</b>' },
          metadata: {}
        }
      },
      {
        id: 12,
        request_id: 7,
        seq: 1,
        msg_type: 'stream',
        state: 'pending',
        summary: 'held',
        decided_by: null
      }
    ]);
    const merged = mergeRequest(outputs, 'cleveland', view)!;
    expect(merged).toHaveLength(4);
    expect(merged[0]).toBe(mockOutput);
    expect(merged[2].data).toEqual({
      'text/plain': '42',
      'text/html': '<b>42</b>'
    });
    expect(merged[2].metadata!.remote_kernel).toMatchObject({
      output_id: 11,
      state: 'released',
      decided_by: 'bob',
      rendered: true
    });
    expect(merged[3]).toBe(outputs[3]);
    expect(merged[1].data!['text/plain']).toContain('1 released');
    expect(needsRefresh(merged, { cleveland: 7 })).toBe(true); // 12 still pending
  });

  it('shows denials with the comment and appends outputs the cell never saw', () => {
    const view = request([
      {
        id: 11,
        request_id: 7,
        seq: 0,
        msg_type: 'stream',
        state: 'denied',
        summary: '',
        decided_by: 'bob',
        comment: 'too small'
      },
      {
        id: 12,
        request_id: 7,
        seq: 1,
        msg_type: 'stream',
        state: 'blocked',
        summary: 'leak',
        decided_by: 'policy:rules'
      },
      {
        id: 13,
        request_id: 7,
        seq: 2,
        msg_type: 'stream',
        state: 'released',
        summary: '',
        decided_by: 'policy:rules',
        content: { name: 'stdout', text: 'done\n' }
      }
    ]);
    const merged = mergeRequest(
      [mockOutput, statusLine, placeholder(11)],
      'cleveland',
      view
    )!;
    expect(merged.map(o => o.metadata?.remote_kernel?.output_id)).toEqual([
      undefined,
      undefined,
      11,
      12,
      13
    ]);
    expect(merged[2].data!['text/plain']).toContain('denied by bob: too small');
    expect(merged[4].data!['application/vnd.jupyter.stdout']).toBe('done\n');
    expect(outputLabel(merged[4].metadata!.remote_kernel)).toBe(
      'cleveland · released automatically by policy rules'
    );
    expect(needsRefresh(merged, { cleveland: 7 })).toBe(false);
    expect(mergeRequest(merged, 'cleveland', view)).toBeNull();
  });

  it('builds per-site badges from what the cell shows', () => {
    expect(siteBadges(outputs, { cleveland: 7 })).toEqual([
      { site: 'cleveland', text: 'cleveland: 2 pending', kind: 'pending' }
    ]);
  });
});

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

describe('finding the request a run made', () => {
  const listed = [
    { id: 9, user: 'alice', code: 'x = 1\n', status: 'failed', message: '' },
    { id: 8, user: 'alice', code: 'other', status: 'completed', message: '' },
    { id: 5, user: 'alice', code: 'x = 1', status: 'completed', message: '' }
  ];
  it('takes the newest request with this code that the cell did not know', () => {
    expect(findRunRequest(listed, 'x = 1', 5)).toBe(9);
    expect(findRunRequest(listed, 'x = 1', 9)).toBeUndefined();
    expect(findRunRequest(listed, 'y', undefined)).toBeUndefined();
  });
});
