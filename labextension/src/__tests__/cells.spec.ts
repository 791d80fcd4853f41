/** Remote cells' pure rules (cells.ts): tags, preparing the kernel, the one view of a cell. */
import {
  findRunRequest,
  inViewOrder,
  ISiteRow,
  mergeRequest,
  needsRefresh,
  outputCaption,
  outputForView,
  outputLabel,
  prepareCode,
  remoteBody,
  remoteMeta,
  requestsFromOutputs,
  rowText,
  sameJSON,
  siteOrder,
  siteState,
  targetSites,
  toggledTags
} from '../cells';
import { INbOutput, IOutputView, IRequestView } from '../tokens';

const placeholder = (
  outputId: number,
  site = 'cleveland',
  requestId = 7,
  state = 'pending'
): INbOutput => ({
  output_type: 'display_data',
  data: { 'text/plain': `⏳ pending review at ${site} · output ${outputId}` },
  metadata: {
    remote_kernel: {
      site,
      request_id: requestId,
      output_id: outputId,
      state,
      decided_by: null
    }
  }
});
const mockOutput: INbOutput = {
  output_type: 'stream',
  name: 'stdout',
  text: 'mock 1\n'
};
const row = (site: string, request: number, state: string): ISiteRow => ({
  site,
  request,
  state,
  outputs: '',
  when: '0.5 s',
  detail: ''
});
/** The kernel's status table: a row per site, in the order the sites were chosen. */
const table = (rows: ISiteRow[]): INbOutput => ({
  output_type: 'display_data',
  data: { 'text/plain': rows.map(rowText).join('\n') },
  metadata: {
    remote_kernel: {
      requests: Object.fromEntries(rows.map(r => [r.site, r.request])),
      rows
    }
  }
});
const view = (
  id: number,
  seq: number,
  state: string,
  extra: Partial<IOutputView> = {}
): IOutputView => ({
  id,
  request_id: 7,
  seq,
  msg_type: 'stream',
  state,
  summary: 'text',
  decided_by: state === 'pending' ? null : 'bob',
  ...extra
});
function request(
  outputs: IOutputView[],
  status = 'completed',
  id = 7
): IRequestView {
  return {
    id,
    user: 'alice',
    code: 'print(1)',
    status,
    message: '',
    outputs: outputs.map(o => ({ ...o, request_id: id }))
  };
}

describe('tags and targets', () => {
  it('adds and removes remote, keeping other tags', () => {
    expect(toggledTags(['a'])).toEqual(['a', 'remote']);
    expect(toggledTags(['remote', 'a'])).toEqual(['a']);
    expect(toggledTags(undefined, true)).toEqual(['remote']);
    expect(toggledTags(['remote'], true)).toEqual(['remote']);
  });
  it('targets the saved choice among connected sites, else all', () => {
    expect(targetSites(undefined, ['a', 'b'])).toEqual(['a', 'b']);
    expect(targetSites(['b', 'gone'], ['a', 'b'])).toEqual(['b']);
  });
});

describe('preparing the kernel for a tagged cell', () => {
  it('loads remote_kernel and sets the targets, in one silent expression', () => {
    expect(prepareCode(['hungary', 'va-long-beach'])).toBe(
      '__import__("remote_kernel.researcher.magics", fromlist=["_"])' +
        ".prepare_tagged_cells(get_ipython(), ['hungary', 'va-long-beach'])"
    );
    expect(prepareCode(null)).toContain('(get_ipython(), None)');
    expect(prepareCode([])).toContain('(get_ipython(), [])');
  });
  it('refuses names that could inject code', () => {
    expect(() => prepareCode(["a'] + os.system('x') + ['"])).toThrow(
      /invalid datasite name/
    );
  });
  it('knows the code a site receives for a cell with its own %%remote line', () => {
    expect(remoteBody('%%remote --all --timeout 30\nx = 1\nx')).toBe(
      'x = 1\nx'
    );
    expect(remoteBody('x = 1\n%%remote\n')).toBe('x = 1\n%%remote\n');
  });
});

describe('the cell as one view', () => {
  const rows = [
    row('hungary', 3, 'running'),
    row('cleveland', 7, 'pending review')
  ];

  it('keeps the sites in the order they were chosen', () => {
    const outputs = [mockOutput, table(rows), placeholder(11)];
    expect(siteOrder(outputs)).toEqual(['hungary', 'cleveland']);
    expect(requestsFromOutputs(outputs)).toEqual({ hungary: 3, cleveland: 7 });
  });

  it('orders remote outputs by site, then by number, and leaves the rest in place', () => {
    const outputs = [
      mockOutput,
      table(rows),
      placeholder(12, 'cleveland'),
      placeholder(5, 'hungary', 3),
      placeholder(11, 'cleveland')
    ];
    const seq: Record<number, number> = { 12: 1, 11: 0, 5: 0 };
    const ordered = inViewOrder(
      outputs,
      ['hungary', 'cleveland'],
      meta => seq[meta.output_id!]
    );
    expect(ordered.slice(0, 2)).toEqual(outputs.slice(0, 2));
    expect(ordered.slice(2).map(o => remoteMeta(o)!.output_id)).toEqual([
      5, 11, 12
    ]);
  });

  it('replaces a released placeholder in place and updates its row only', () => {
    const outputs = [
      mockOutput,
      table(rows),
      placeholder(5, 'hungary', 3),
      placeholder(11),
      placeholder(12)
    ];
    const released = request([
      view(11, 0, 'released', {
        msg_type: 'execute_result',
        content: {
          data: { 'text/plain': '42', 'text/html': '<b>42</b>' },
          metadata: {}
        }
      }),
      view(12, 1, 'pending')
    ]);
    const merged = mergeRequest(outputs, 'cleveland', released)!;
    expect(merged).toHaveLength(5);
    expect(merged[0]).toBe(mockOutput);
    expect(merged[2]).toBe(outputs[2]); // hungary's, untouched
    expect(merged[3].data).toEqual({
      'text/plain': '42',
      'text/html': '<b>42</b>'
    });
    expect(merged[3].metadata!.remote_kernel).toMatchObject({
      output_id: 11,
      state: 'released',
      decided_by: 'bob',
      rendered: true
    });
    expect(merged[4]).toBe(outputs[4]);
    const newRows = merged[1].metadata!.remote_kernel.rows as ISiteRow[];
    expect(newRows.map(r => r.site)).toEqual(['hungary', 'cleveland']);
    expect(newRows[0]).toEqual(rows[0]);
    expect(newRows[1]).toMatchObject({
      state: 'pending review',
      outputs: '1 pending, 1 released'
    });
    expect(merged[1].data!['text/plain']).toBe(
      'hungary · running · request 3 · 0.5 s\n' +
        'cleveland · pending review · 1 pending, 1 released · request 7 · 0.5 s'
    );
    expect(merged[1].data!['text/html']).toContain(
      '<tr class="rk-SiteRow" data-site="cleveland" data-state="pending review">'
    );
    // One line per site: no status line of its own anywhere else.
    expect(
      merged.filter(o => {
        const meta = remoteMeta(o);
        return meta && meta.output_id === undefined;
      })
    ).toHaveLength(0);
    expect(needsRefresh(merged, { hungary: 3, cleveland: 7 })).toBe(true);
  });

  it('places outputs the cell never saw among their site, in order, and then settles', () => {
    const outputs = [
      mockOutput,
      table([row('hungary', 3, 'running'), row('cleveland', 7, 'running')]),
      placeholder(5, 'hungary', 3),
      placeholder(12)
    ];
    const decided = request([
      view(11, 0, 'denied', { comment: 'too small' }),
      view(12, 1, 'blocked', { summary: 'leak', decided_by: 'policy:rules' }),
      view(13, 2, 'released', {
        decided_by: 'policy:rules',
        content: { name: 'stdout', text: 'done\n' }
      })
    ]);
    const merged = mergeRequest(outputs, 'cleveland', decided)!;
    expect(merged.map(o => remoteMeta(o)?.output_id)).toEqual([
      undefined,
      undefined,
      5,
      11,
      12,
      13
    ]);
    expect(merged[3].data!['text/plain']).toContain('denied by bob: too small');
    expect(merged[5].data!['application/vnd.jupyter.stdout']).toBe('done\n');
    expect(outputLabel(merged[5].metadata!.remote_kernel)).toBe(
      'cleveland · released automatically by policy rules'
    );
    const cleveland = (merged[1].metadata!.remote_kernel.rows as ISiteRow[])[1];
    expect(cleveland.state).toBe('denied');
    expect(needsRefresh(merged, { cleveland: 7 })).toBe(false);
    // Nothing new: nothing to write (the notebook is not touched).
    expect(mergeRequest(merged, 'cleveland', decided)).toBeNull();
  });

  it('changes nothing when a reopened notebook already shows what the site says', () => {
    // A saved notebook's JSON has its keys sorted: the same content in another order.
    const pending = request([view(11, 0, 'pending')]);
    const first = mergeRequest(
      [table([row('cleveland', 7, 'running')]), placeholder(11)],
      'cleveland',
      pending
    )!;
    const sorted = JSON.parse(
      JSON.stringify(first, (_, value) =>
        value && typeof value === 'object' && !Array.isArray(value)
          ? Object.fromEntries(Object.entries(value).sort())
          : value
      )
    );
    expect(mergeRequest(sorted, 'cleveland', pending)).toBeNull();
    expect(
      sameJSON({ a: 1, b: [1, { c: 2 }] }, { b: [1, { c: 2 }], a: 1 })
    ).toBe(true);
    expect(sameJSON({ a: 1 }, { a: 2 })).toBe(false);
  });

  it('drops the per-request status lines of older versions', () => {
    const old: INbOutput = {
      output_type: 'display_data',
      data: { 'text/plain': 'cleveland · request 7 · completed' },
      metadata: { remote_kernel: { site: 'cleveland', request_id: 7 } }
    };
    const merged = mergeRequest(
      [old, placeholder(11)],
      'cleveland',
      request([view(11, 0, 'pending')])
    )!;
    expect(merged).toEqual([placeholder(11)]);
  });

  it("states a site's row as the kernel does", () => {
    expect(siteState(request([], 'running'))).toBe('running');
    expect(siteState(request([view(1, 0, 'pending')]))).toBe('pending review');
    expect(siteState(request([view(1, 0, 'released')]))).toBe('released');
    expect(siteState(request([view(1, 0, 'released')], 'error'))).toBe(
      'error (released)'
    );
    expect(
      siteState(request([view(1, 0, 'released'), view(2, 1, 'denied')]))
    ).toBe('denied');
    expect(siteState(request([], 'failed'))).toBe('failed');
    expect(siteState(request([]))).toBe('completed');
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

describe('one label per remote output, no emoji', () => {
  const released = (plain: string) => ({
    output_type: 'display_data',
    data: { 'text/plain': plain, 'text/html': '<div>x</div>' },
    metadata: {
      remote_kernel: {
        site: 'cleveland',
        request_id: 7,
        output_id: 3,
        state: 'released',
        decided_by: 'bob'
      }
    }
  });

  it("labels a released output once, hiding the kernel's own label", () => {
    // As %%remote (researcher/display.py) writes it: its label in the bundle too.
    const byKernel = outputCaption(
      released('[cleveland · released by bob]\nsex  n')
    )!;
    expect(byKernel).toEqual({
      label: 'cleveland · released by bob',
      note: false,
      kernelLabel: true
    });
    // As the extension writes it from the datasite's view: no label of its own.
    const byExtension = outputCaption(released('sex  n'))!;
    expect(byExtension.kernelLabel).toBe(false);
    expect(byExtension.label).toBe('cleveland · released by bob');
  });

  it("makes a note's own words its label, without the kernel's emoji", () => {
    expect(outputCaption(placeholder(11))).toEqual({
      label: 'pending review at cleveland · output 11',
      note: true,
      kernelLabel: false
    });
    expect(outputCaption(mockOutput)).toBeNull();
    for (const state of ['pending', 'denied', 'blocked', 'conflicted']) {
      const note = outputForView(
        'hungary',
        view(4, 0, state, { decided_by: 'dave', comment: 'no', summary: 's' })
      );
      const plain = String(note.data!['text/plain']);
      expect(plain).toMatch(/^[a-z]/);
      expect(plain).not.toMatch(/\p{Extended_Pictographic}/u);
      expect(outputCaption(note)!.label).toBe(plain);
    }
  });
});
