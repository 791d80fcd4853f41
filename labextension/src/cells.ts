/**
 * Remote cells' rules, as pure functions over plain JSON (no JupyterLab
 * imports, unit-tested with jest): the `remote` tag, the code that prepares the
 * kernel for a tagged cell, which requests a cell waits for, and how a
 * datasite's view of a request becomes the cell's one view: one status row per
 * site (a table, in the sites' order), then each site's outputs by number.
 */
import {
  FINAL_STATES,
  FINISHED_STATUSES,
  INbOutput,
  IOutputView,
  IRemoteMeta,
  IRequestView
} from './tokens';

/** The cell tag that marks a cell as remote (the same one `%%remote` users type by hand). */
export const REMOTE_TAG = 'remote';

// --- tags ---------------------------------------------------------------------------------

export function hasRemoteTag(tags: unknown): boolean {
  return Array.isArray(tags) && tags.includes(REMOTE_TAG);
}

/** The cell's tags with `remote` added or removed (other tags kept in order). */
export function toggledTags(tags: unknown, on?: boolean): string[] {
  const current = Array.isArray(tags)
    ? tags.filter(t => typeof t === 'string')
    : [];
  const want = on === undefined ? !current.includes(REMOTE_TAG) : on;
  const without = current.filter(t => t !== REMOTE_TAG);
  return want ? [...without, REMOTE_TAG] : without;
}

// --- sites, and preparing the kernel for a tagged cell ---------------------------------------

/** The sites a notebook targets: its saved choice among the connected ones, else all of them. */
export function targetSites(saved: unknown, connected: string[]): string[] {
  if (!Array.isArray(saved)) {
    return [...connected];
  }
  return connected.filter(name => saved.includes(name));
}

const SITE_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;

const OWN_REMOTE_LINE = /^\s*%%remote(?:[ \t][^\n]*)?(?:\n|$)/;

/** Whether a cell starts with a `%%remote` line of its own (typed by the researcher). */
export function hasOwnRemoteLine(source: string): boolean {
  return OWN_REMOTE_LINE.test(source);
}

/** The code a datasite receives for a cell: its source without a `%%remote` line. */
export function remoteBody(source: string): string {
  return source.replace(OWN_REMOTE_LINE, '');
}

/**
 * The code run silently in the notebook's kernel right before a tagged cell: it
 * loads `remote_kernel` (whose input transformer runs cells tagged `remote` as
 * `%%remote`) and sets the notebook's target sites (`null`: every connected site).
 * Site names are checked, never quoted from user input.
 */
export function prepareCode(sites: string[] | null): string {
  let list = 'None';
  if (sites !== null) {
    for (const site of sites) {
      if (!SITE_NAME.test(site)) {
        throw new Error(`invalid datasite name ${JSON.stringify(site)}`);
      }
    }
    list = `[${sites.map(site => `'${site}'`).join(', ')}]`;
  }
  return (
    '__import__("remote_kernel.researcher.magics", fromlist=["_"])' +
    `.prepare_tagged_cells(get_ipython(), ${list})`
  );
}

/** Whether two JSON values are equal, whatever the order of their keys (saved notebooks sort them). */
export function sameJSON(a: unknown, b: unknown): boolean {
  if (a === b) {
    return true;
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => sameJSON(item, b[i]))
    );
  }
  if (a && b && typeof a === 'object' && typeof b === 'object') {
    const ka = Object.keys(a).filter(k => (a as any)[k] !== undefined);
    const kb = Object.keys(b).filter(k => (b as any)[k] !== undefined);
    return (
      ka.length === kb.length &&
      ka.every(k => sameJSON((a as any)[k], (b as any)[k]))
    );
  }
  return false;
}

// --- outputs of a remote cell ----------------------------------------------------------------

export function remoteMeta(output: INbOutput): IRemoteMeta | null {
  const meta = output.metadata?.remote_kernel;
  if (!meta || typeof meta !== 'object' || typeof meta.site !== 'string') {
    return null;
  }
  if (typeof meta.request_id !== 'number') {
    return null;
  }
  return meta as IRemoteMeta;
}

/** `{site: request_id}` of the requests whose outputs are in this cell (the newest per site). */
export function requestsFromOutputs(
  outputs: INbOutput[]
): Record<string, number> {
  const requests: Record<string, number> = {};
  for (const output of outputs) {
    // A fan-out summary may list every site's request: {"requests": {site: id}}.
    const listed = output.metadata?.remote_kernel?.requests;
    if (listed && typeof listed === 'object') {
      for (const [site, id] of Object.entries(listed)) {
        if (typeof id === 'number') {
          requests[site] = Math.max(requests[site] ?? 0, id);
        }
      }
    }
    const meta = remoteMeta(output);
    if (meta) {
      requests[meta.site] = Math.max(requests[meta.site] ?? 0, meta.request_id);
    }
  }
  return requests;
}

/**
 * The request a run made at a site when the cell's outputs do not name it: the
 * newest of the researcher's requests with exactly this code that the cell did
 * not know before the run.
 */
export function findRunRequest(
  listed: IRequestView[],
  source: string,
  before: number | undefined
): number | undefined {
  const candidates = listed
    .filter(
      r =>
        r.code.trim() === source.trim() &&
        (before === undefined || r.id > before)
    )
    .map(r => r.id);
  return candidates.length ? Math.max(...candidates) : undefined;
}

/** Row states after which a site's request can still change (and so is polled). */
const UNSETTLED_ROW = /^(queued|running|pending review|connection lost)/;

/** Whether the cell still waits for something from a datasite (and so must be polled). */
export function needsRefresh(
  outputs: INbOutput[],
  requests: Record<string, number>
): boolean {
  const withOutputs = new Set<string>();
  for (const output of outputs) {
    const meta = remoteMeta(output);
    if (
      !meta ||
      meta.output_id === undefined ||
      requests[meta.site] !== meta.request_id
    ) {
      continue;
    }
    withOutputs.add(meta.site);
    if (!meta.rendered || !FINAL_STATES.has(meta.state ?? '')) {
      return true;
    }
  }
  const rows = tableRows(outputs);
  return Object.keys(requests).some(site => {
    const row = rows.find(r => r.site === site);
    return row ? UNSETTLED_ROW.test(row.state) : !withOutputs.has(site);
  });
}

export function releasedBy(decidedBy: string | null | undefined): string {
  const who = decidedBy || 'unknown';
  if (who.startsWith('policy:')) {
    return `released automatically by policy ${who.slice('policy:'.length)}`;
  }
  return `released by ${who}`;
}

/** The label drawn above a remote output: site and who released (or what happened). */
export function outputLabel(meta: IRemoteMeta): string {
  if (meta.output_id === undefined) {
    return '';
  }
  switch (meta.state) {
    case 'released':
      return `${meta.site} · ${releasedBy(meta.decided_by)}`;
    case 'denied':
      return `${meta.site} · denied by ${meta.decided_by ?? 'a reviewer'}`;
    case 'conflicted':
      return `${meta.site} · reviewers disagreed`;
    case 'blocked':
      return `${meta.site} · blocked by policy`;
    default:
      return `${meta.site} · pending review`;
  }
}

/** A leading symbol or emoji (and its space): "⏳ pending review…" → "pending review…". */
const LEADING_SYMBOL = /^[^\p{L}\p{N}]+\s*/u;

/** How JupyterLab labels one remote output (see `outputCaption`). */
export interface IOutputCaption {
  /** The one label drawn above the output. */
  label: string;
  /** The output is only a note (pending, denied, blocked): the label says it all. */
  note: boolean;
  /** The bundle carries the kernel's own label (to be hidden). */
  kernelLabel: boolean;
}

/**
 * The one label JupyterLab shows on a remote output, and whether the output is
 * only a note (pending, denied, blocked: no content of its own).
 *
 * The kernel (`%%remote`, researcher/display.py) writes its own label into the
 * bundle for frontends without this extension; the extension hides that one
 * and shows this instead. A note's label is the note's own text (it says which
 * output and why), without the symbol the kernel puts first: emoji glyphs show
 * as boxes where no emoji font is installed; the state is drawn by CSS.
 */
export function outputCaption(output: INbOutput): IOutputCaption | null {
  const meta = remoteMeta(output);
  if (!meta || meta.output_id === undefined) {
    return null;
  }
  const plain = text(output.data?.['text/plain']);
  if (meta.state === 'released') {
    // A DP answer says what it cost in its own content (not repeated here).
    return {
      label: outputLabel(meta),
      note: false,
      // display.py's released bundles: "[cleveland · released by bob]\n…" (and the
      // same words in a box at the top of their HTML).
      kernelLabel: plain.startsWith(`[${meta.site} · `)
    };
  }
  const said = plain.split('\n')[0];
  const label = said.replace(LEADING_SYMBOL, '').trim() || outputLabel(meta);
  return { label, note: true, kernelLabel: false };
}

function text(value: unknown): string {
  return Array.isArray(value) ? value.join('') : String(value ?? '');
}

// eslint-disable-next-line no-control-regex -- ANSI colour codes in tracebacks
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;

/**
 * The nbformat output that shows one output view in the researcher's cell.
 *
 * Released content keeps its own mime bundle, so JupyterLab's renderers draw it
 * (tables, images, HTML); streams and errors become display_data with the
 * stdout/stderr mime types (same renderer as a stream) because nbformat streams
 * and errors have no metadata to carry the output id.
 */
export function outputForView(site: string, view: IOutputView): INbOutput {
  const meta: IRemoteMeta = {
    site,
    request_id: view.request_id,
    output_id: view.id,
    state: view.state,
    decided_by: view.decided_by,
    rendered: FINAL_STATES.has(view.state)
  };
  const metadata = { remote_kernel: meta };
  const number = view.seq + 1;
  if (view.state === 'released' && view.content) {
    const content = view.content;
    if (view.msg_type === 'stream') {
      const mime =
        content.name === 'stderr'
          ? 'application/vnd.jupyter.stderr'
          : 'application/vnd.jupyter.stdout';
      return {
        output_type: 'display_data',
        data: { [mime]: text(content.text), 'text/plain': text(content.text) },
        metadata
      };
    }
    if (view.msg_type === 'error') {
      const traceback = (content.traceback ?? []).join('\n');
      const plain = `${content.ename}: ${content.evalue}`;
      return {
        output_type: 'display_data',
        data: {
          'application/vnd.jupyter.stderr': traceback || plain,
          'text/plain': traceback.replace(ANSI, '') || plain
        },
        metadata
      };
    }
    return {
      output_type: 'display_data',
      data: { ...(content.data ?? {}) },
      metadata: { ...(content.metadata ?? {}), ...metadata }
    };
  }
  let note: string;
  if (view.state === 'denied') {
    note = `${site}: output ${number} denied by ${view.decided_by}: ${view.comment ?? ''}`;
  } else if (view.state === 'conflicted') {
    note = `${site}: output ${number} sent back: the reviewers disagreed. ${view.comment ?? ''}`;
  } else if (view.state === 'blocked') {
    note = `${site}: output ${number} blocked by the datasite's policy (${view.summary})`;
  } else {
    note = `pending review at ${site} · output ${number} (${view.summary})`;
  }
  return {
    output_type: 'display_data',
    data: { 'text/plain': note.trim() },
    metadata
  };
}

// --- the status table: one row per site ------------------------------------------------------

/** One site's row in a remote cell's status table (`display.site_rows` in the kernel). */
export interface ISiteRow {
  site: string;
  request: number | null;
  /** queued, running, pending review, released, denied, blocked, failed, not sent, ... */
  state: string;
  /** The request's outputs by state: "1 pending, 1 released". */
  outputs: string;
  when: string;
  detail: string;
}

/** "1 pending, 1 released": a request's outputs counted by state (as the kernel writes it). */
export function outputCounts(request: IRequestView): string {
  const counts: Record<string, number> = {};
  for (const output of request.outputs ?? []) {
    counts[output.state] = (counts[output.state] ?? 0) + 1;
  }
  return Object.keys(counts)
    .sort()
    .map(state => `${counts[state]} ${state}`)
    .join(', ');
}

/** A site's state from its request, the same rule as the kernel's `SiteRun.state`. */
export function siteState(request: IRequestView): string {
  const status = request.status;
  if (!FINISHED_STATUSES.has(status)) {
    return status;
  }
  if (status === 'failed' || status === 'interrupted') {
    return status;
  }
  const states = new Set((request.outputs ?? []).map(o => o.state as string));
  if (states.has('pending')) {
    return 'pending review';
  }
  if (states.size && [...states].every(s => s === 'released')) {
    return status === 'completed' ? 'released' : `${status} (released)`;
  }
  for (const state of ['denied', 'conflicted', 'blocked']) {
    if (states.has(state)) {
      return state;
    }
  }
  return status;
}

/** "cleveland · pending review · 2 pending · request 4 · 1.2 s": one site's line. */
export function rowText(row: ISiteRow): string {
  const request = row.request !== null ? `request ${row.request}` : '';
  return [row.site, row.state, row.outputs, request, row.when, row.detail]
    .filter(part => part)
    .join(' · ');
}

const STATE_COLORS: Record<string, string> = {
  queued: '#757575',
  running: '#1565c0',
  'pending review': '#f9a825',
  released: '#2e7d32',
  denied: '#c62828',
  conflicted: '#c62828',
  blocked: '#6a1b9a',
  failed: '#c62828',
  interrupted: '#c62828',
  'not sent': '#c62828',
  error: '#ef6c00'
};

function escape(value: string): string {
  return value
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#x27;');
}

/** The rows as the kernel draws them (`display.rows_html`): class `rk-SiteRow`, `data-site`. */
export function rowsHtml(rows: ISiteRow[]): string {
  const cells = rows.map(row => {
    const color = STATE_COLORS[row.state.split(' (')[0]] ?? '#1565c0';
    const request = row.request !== null ? `request ${row.request}` : '';
    const when = [request, row.when].filter(p => p).join(' · ');
    return (
      `<tr class="rk-SiteRow" data-site="${escape(row.site)}" data-state="${escape(row.state)}">` +
      `<td style="padding:1px 8px;font-weight:600">${escape(row.site)}</td>` +
      `<td style="padding:1px 8px;color:${color}">● ${escape(row.state)}</td>` +
      `<td style="padding:1px 8px">${escape(row.outputs)}</td>` +
      `<td style="padding:1px 8px;color:#555">${escape(when)}</td>` +
      `<td style="padding:1px 8px;color:#555">${escape(row.detail)}</td>` +
      '</tr>'
    );
  });
  return (
    '<table class="rk-fanout" style="border-collapse:collapse;font-size:12px;' +
    'font-family:var(--jp-ui-font-family,sans-serif)">' +
    cells.join('') +
    '</table>'
  );
}

function rowsOf(output: INbOutput): ISiteRow[] | null {
  const rows = output.metadata?.remote_kernel?.rows;
  return Array.isArray(rows) ? (rows as ISiteRow[]) : null;
}

/** The index of the cell's status table (the output whose metadata lists the rows), or -1. */
export function tableIndex(outputs: INbOutput[]): number {
  return outputs.findIndex(output => rowsOf(output) !== null);
}

/** The status table's rows, in the sites' order ([] without a table). */
export function tableRows(outputs: INbOutput[]): ISiteRow[] {
  const index = tableIndex(outputs);
  return index >= 0 ? (rowsOf(outputs[index]) ?? []) : [];
}

/** The status table with one site's row brought up to date from its request, or null if unchanged. */
export function updatedTable(
  table: INbOutput,
  site: string,
  request: IRequestView
): INbOutput | null {
  const rows = rowsOf(table);
  const at = rows ? rows.findIndex(row => row.site === site) : -1;
  if (!rows || at < 0) {
    return null;
  }
  const row = rows[at];
  const fresh: ISiteRow = {
    ...row,
    request: request.id,
    state: siteState(request),
    outputs: outputCounts(request),
    detail:
      row.detail ||
      (FINISHED_STATUSES.has(request.status) && request.status !== 'completed'
        ? (request.message ?? '')
        : '')
  };
  if (sameJSON(fresh, row)) {
    return null;
  }
  const next = rows.map((r, i) => (i === at ? fresh : r));
  const meta = { ...table.metadata?.remote_kernel, rows: next };
  return {
    output_type: 'display_data',
    data: {
      'text/plain': next.map(rowText).join('\n'),
      'text/html': rowsHtml(next)
    },
    metadata: { ...table.metadata, remote_kernel: meta }
  };
}

/** The sites of a cell in their order: the table's rows, then any other site with a request. */
export function siteOrder(
  outputs: INbOutput[],
  requests: Record<string, number> = {}
): string[] {
  const order = tableRows(outputs).map(row => row.site);
  for (const site of [
    ...Object.keys(requestsFromOutputs(outputs)),
    ...Object.keys(requests)
  ]) {
    if (!order.includes(site)) {
      order.push(site);
    }
  }
  return order;
}

/**
 * The outputs with the remote ones (those with an output id) in the cell's view
 * order, each kept in one of the places remote outputs held: by site (in the
 * table's order), then by number. Other outputs (the mock run, the table) stay.
 */
export function inViewOrder(
  outputs: INbOutput[],
  order: string[],
  seqOf: (meta: IRemoteMeta) => number
): INbOutput[] {
  const places: number[] = [];
  const remote: INbOutput[] = [];
  outputs.forEach((output, index) => {
    const meta = remoteMeta(output);
    if (meta && meta.output_id !== undefined) {
      places.push(index);
      remote.push(output);
    }
  });
  const rank = (output: INbOutput): [number, number] => {
    const meta = remoteMeta(output)!;
    const site = order.indexOf(meta.site);
    return [site < 0 ? order.length : site, seqOf(meta)];
  };
  const sorted = remote
    .map((output, i) => ({ output, i, key: rank(output) }))
    .sort((a, b) => a.key[0] - b.key[0] || a.key[1] - b.key[1] || a.i - b.i)
    .map(entry => entry.output);
  const result = [...outputs];
  places.forEach((place, i) => {
    result[place] = sorted[i];
  });
  return result;
}

/** Where a site's first output goes: after the outputs of the sites before it. */
function insertionPoint(
  outputs: INbOutput[],
  site: string,
  order: string[]
): number {
  const rank = order.indexOf(site);
  let at = -1;
  outputs.forEach((output, index) => {
    const meta = remoteMeta(output);
    if (meta && meta.output_id !== undefined) {
      const other = order.indexOf(meta.site);
      if (meta.site === site || (other >= 0 && other < rank)) {
        at = index + 1;
      }
    }
  });
  if (at >= 0) {
    return at;
  }
  const first = outputs.findIndex(output => {
    const meta = remoteMeta(output);
    return meta && meta.output_id !== undefined;
  });
  if (first >= 0) {
    return first;
  }
  const table = tableIndex(outputs);
  return table >= 0 ? table + 1 : outputs.length;
}

/**
 * The cell's outputs with one request brought up to date from the datasite's
 * view: its row in the status table, its placeholders replaced in place
 * (matched by output id), and outputs the cell never saw (decided while the
 * notebook was closed, or after the kernel stopped following) placed among the
 * site's own, in the sites' order and by number. Status lines of older versions
 * are dropped (the table's row says it). Returns null when nothing changed, so
 * that a refresh that brings nothing new never touches (or dirties) the notebook.
 */
export function mergeRequest(
  outputs: INbOutput[],
  site: string,
  request: IRequestView
): INbOutput[] | null {
  const views = new Map((request.outputs ?? []).map(v => [v.id, v]));
  const seen = new Set<number>();
  let changed = false;
  let result: INbOutput[] = [];
  for (const output of outputs) {
    const meta = remoteMeta(output);
    if (!meta || meta.site !== site || meta.request_id !== request.id) {
      result.push(output);
      continue;
    }
    if (meta.output_id === undefined) {
      changed = true; // an old per-request status line
      continue;
    }
    const view = views.get(meta.output_id);
    if (view) {
      seen.add(view.id);
      const settled =
        (meta.rendered && meta.state === view.state) ||
        (view.state === 'pending' && meta.state === 'pending');
      const fresh = settled ? output : outputForView(site, view);
      if (!sameJSON(fresh, output)) {
        changed = true;
        result.push(fresh);
        continue;
      }
    }
    result.push(output);
  }
  const table = tableIndex(result);
  const updated =
    table >= 0 ? updatedTable(result[table], site, request) : null;
  if (updated) {
    result[table] = updated;
    changed = true;
  }
  const order = siteOrder(result, { [site]: request.id });
  const missing = (request.outputs ?? [])
    .filter(v => !seen.has(v.id))
    .map(v => outputForView(site, v));
  if (missing.length) {
    changed = true;
    result.splice(insertionPoint(result, site, order), 0, ...missing);
  }
  const seqs = new Map((request.outputs ?? []).map(v => [v.id, v.seq]));
  const ordered = inViewOrder(result, order, meta =>
    meta.site === site && meta.request_id === request.id
      ? (seqs.get(meta.output_id!) ?? 0)
      : 0
  );
  if (!sameJSON(ordered, result)) {
    result = ordered;
    changed = true;
  }
  return changed ? result : null;
}
