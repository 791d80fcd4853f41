/**
 * Remote cells' rules, as pure functions over plain JSON (no JupyterLab
 * imports, unit-tested with jest): the `remote` tag, the `%%remote` code a cell
 * runs, which requests a cell waits for, how a datasite's view of a request
 * becomes the cell's outputs, and the per-site badges.
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

// --- sites and the %%remote command ----------------------------------------------------------

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
 * The code that runs a cell through `%%remote` (site names are checked, never quoted).
 * A cell with its own `%%remote` line runs as written: its options are the researcher's.
 */
export function remoteMagicCode(source: string, sites: string[]): string {
  if (hasOwnRemoteLine(source)) {
    return source;
  }
  for (const site of sites) {
    if (!SITE_NAME.test(site)) {
      throw new Error(`invalid datasite name ${JSON.stringify(site)}`);
    }
  }
  const options = sites.map(site => `--site ${site}`).join(' ');
  return `%%remote ${options}\n${source}`;
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

/** Whether the cell still waits for something from a datasite (and so must be polled). */
export function needsRefresh(
  outputs: INbOutput[],
  requests: Record<string, number>
): boolean {
  const statusSeen = new Set<string>();
  for (const output of outputs) {
    const meta = remoteMeta(output);
    if (!meta || requests[meta.site] !== meta.request_id) {
      continue;
    }
    if (meta.output_id === undefined) {
      if (!meta.rendered || !FINISHED_STATUSES.has(meta.status ?? '')) {
        return true;
      }
      statusSeen.add(meta.site);
    } else if (!meta.rendered || !FINAL_STATES.has(meta.state ?? '')) {
      return true;
    }
  }
  return Object.keys(requests).some(site => !statusSeen.has(site));
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
    note = `✖ ${site}: output ${number} denied by ${view.decided_by}: ${view.comment ?? ''}`;
  } else if (view.state === 'conflicted') {
    note = `⚖ ${site}: output ${number} sent back: the reviewers disagreed. ${view.comment ?? ''}`;
  } else if (view.state === 'blocked') {
    note = `⛔ ${site}: output ${number} blocked by the datasite's policy (${view.summary})`;
  } else {
    note = `⏳ pending review at ${site}: output ${number} of request ${view.request_id} (${view.summary})`;
  }
  return {
    output_type: 'display_data',
    data: { 'text/plain': note.trim() },
    metadata
  };
}

export function requestCounts(request: IRequestView): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const output of request.outputs ?? []) {
    counts[output.state] = (counts[output.state] ?? 0) + 1;
  }
  return counts;
}

export function statusText(site: string, request: IRequestView): string {
  const counts = requestCounts(request);
  const parts = [site, `request ${request.id}`, request.status];
  const summary = Object.keys(counts)
    .sort()
    .map(state => `${counts[state]} ${state}`)
    .join(', ');
  if (summary) {
    parts.push(summary);
  }
  if (request.message && request.status !== 'completed') {
    parts.push(request.message);
  }
  return parts.join(' · ');
}

export function statusOutput(site: string, request: IRequestView): INbOutput {
  const meta: IRemoteMeta = {
    site,
    request_id: request.id,
    status: request.status,
    rendered: true
  };
  return {
    output_type: 'display_data',
    data: { 'text/plain': statusText(site, request) },
    metadata: { remote_kernel: meta }
  };
}

/**
 * The cell's outputs with one request's outputs brought up to date from the
 * datasite's view: placeholders replaced in place (matched by output id), the
 * status line rewritten, and outputs the cell never saw (decided while the
 * notebook was closed, or after the cell's own run stopped following) appended
 * after the request's last output. Returns null when nothing changed.
 */
export function mergeRequest(
  outputs: INbOutput[],
  site: string,
  request: IRequestView
): INbOutput[] | null {
  const views = new Map((request.outputs ?? []).map(v => [v.id, v]));
  const seen = new Set<number>();
  let changed = false;
  let lastIndex = -1;
  const result: INbOutput[] = outputs.map((output, index) => {
    const meta = remoteMeta(output);
    if (!meta || meta.site !== site || meta.request_id !== request.id) {
      return output;
    }
    lastIndex = index;
    if (meta.output_id === undefined) {
      const fresh = statusOutput(site, request);
      if (JSON.stringify(fresh) !== JSON.stringify(output)) {
        changed = true;
        return fresh;
      }
      return output;
    }
    const view = views.get(meta.output_id);
    if (!view) {
      return output;
    }
    seen.add(view.id);
    const alreadyFinal = meta.rendered && meta.state === view.state;
    if (
      alreadyFinal ||
      (view.state === 'pending' && meta.state === 'pending')
    ) {
      return output;
    }
    changed = true;
    return outputForView(site, view);
  });
  const missing = (request.outputs ?? [])
    .filter(v => !seen.has(v.id))
    .sort((a, b) => a.seq - b.seq)
    .map(v => outputForView(site, v));
  const hasStatus = result.some(o => {
    const m = remoteMeta(o);
    return (
      m &&
      m.site === site &&
      m.request_id === request.id &&
      m.output_id === undefined
    );
  });
  const additions = hasStatus
    ? missing
    : [statusOutput(site, request), ...missing];
  if (additions.length) {
    changed = true;
    const at = lastIndex >= 0 ? lastIndex + 1 : result.length;
    result.splice(at, 0, ...additions);
  }
  return changed ? result : null;
}

export interface ISiteBadge {
  site: string;
  text: string;
  /** One of running, pending, released, denied, blocked, failed: picks the colour. */
  kind: string;
}

/** One badge per site a cell was sent to, from the outputs the cell shows. */
export function siteBadges(
  outputs: INbOutput[],
  requests: Record<string, number>
): ISiteBadge[] {
  const badges: ISiteBadge[] = [];
  for (const site of Object.keys(requests).sort()) {
    const counts: Record<string, number> = {};
    let status = '';
    for (const output of outputs) {
      const meta = remoteMeta(output);
      if (!meta || meta.site !== site || meta.request_id !== requests[site]) {
        continue;
      }
      if (meta.output_id === undefined) {
        status = meta.status ?? status;
      } else {
        const state = meta.state ?? 'pending';
        counts[state] = (counts[state] ?? 0) + 1;
      }
    }
    let kind = 'released';
    if (status && !FINISHED_STATUSES.has(status)) {
      kind = 'running';
    } else if (status === 'failed' || status === 'interrupted') {
      kind = 'failed';
    } else if (counts.pending) {
      kind = 'pending';
    } else if (counts.denied || counts.conflicted) {
      kind = 'denied';
    } else if (counts.blocked) {
      kind = 'blocked';
    }
    const summary = Object.keys(counts)
      .sort()
      .map(state => `${counts[state]} ${state}`)
      .join(', ');
    const label = kind === 'running' ? status : summary || status || 'sent';
    badges.push({ site, text: `${site}: ${label}`, kind });
  }
  return badges;
}
