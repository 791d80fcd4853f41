/**
 * Remote cells in notebooks: the `remote` tag and its badge, "Run remotely",
 * per-site status badges, and released outputs brought into the cell.
 *
 * A cell runs remotely through the notebook's own kernel and the same
 * `%%remote` magic a researcher can type (so the mock run, the submission and
 * the live placeholders are the magic's). Decisions that arrive after the cell
 * finished are not reliably routed to it by JupyterLab (late
 * `update_display_data`), so the requests recorded in the cell's metadata are
 * fetched from the server extension and this controller replaces placeholders
 * in the output model itself, live and when a notebook is reopened. It runs no
 * timer: the model polls the requests that unsettled cells wait for (it asks
 * `unsettledRequests`) and emits each one; a notebook's own refresh (on open,
 * after a run, the refresh command) fetches through the model at once.
 */
import { Cell, CodeCell, ICodeCellModel } from '@jupyterlab/cells';
import { NotebookPanel, INotebookTracker } from '@jupyterlab/notebook';
import { OutputArea } from '@jupyterlab/outputarea';
import { showErrorMessage } from '@jupyterlab/apputils';
import { PanelLayout } from '@lumino/widgets';

import {
  hasRemoteTag,
  mergeRequest,
  findRunRequest,
  needsRefresh,
  outputLabel,
  remoteBody,
  remoteMagicCode,
  remoteMeta,
  requestsFromOutputs,
  siteBadges,
  targetSites,
  toggledTags
} from './cells';
import { IRequestRef, IRequestUpdate, RemoteKernelModel } from './model';
import { INbOutput, IRequestView } from './tokens';
import { RemoteBadge } from './widgets/cellBadge';

export const METADATA_KEY = 'remote_kernel';

export class RemoteCellController {
  private readonly badges = new WeakMap<Cell, RemoteBadge>();
  private readonly watched = new WeakSet<Cell>();
  private readonly refreshing = new WeakSet<Cell>();
  private readonly unwatch: () => void;

  constructor(
    private readonly tracker: INotebookTracker,
    private readonly model: RemoteKernelModel
  ) {
    tracker.widgetAdded.connect((_, panel) => this.watchNotebook(panel));
    tracker.forEach(panel => this.watchNotebook(panel));
    // Sites may have come or gone: every tagged cell's "remote → ..." badge follows.
    model.connectionsChanged.connect(this.decorateEverything, this);
    model.requestChanged.connect(this.onRequest, this);
    this.unwatch = model.watchRequests(() => this.unsettledRequests());
  }

  dispose(): void {
    this.unwatch();
    this.model.connectionsChanged.disconnect(this.decorateEverything, this);
    this.model.requestChanged.disconnect(this.onRequest, this);
  }

  /** The sites a notebook targets (its saved choice, else every researcher connection). */
  notebookTargets(panel: NotebookPanel): string[] {
    const saved = (panel.model?.getMetadata(METADATA_KEY) as any)?.sites;
    return targetSites(saved, this.model.researcherSites);
  }

  setNotebookTargets(panel: NotebookPanel, sites: string[]): void {
    const current = (panel.model?.getMetadata(METADATA_KEY) as any) ?? {};
    panel.model?.setMetadata(METADATA_KEY, { ...current, sites });
    this.decorateAll(panel);
  }

  private watchNotebook(panel: NotebookPanel): void {
    const connect = () => {
      const model = panel.content.model;
      if (!model) {
        return;
      }
      model.cells.changed.connect(() => this.decorateAll(panel));
      this.decorateAll(panel);
      void this.refreshNotebook(panel);
    };
    void panel.context.ready.then(connect);
    panel.content.modelChanged.connect(connect);
  }

  private decorateEverything(): void {
    this.tracker.forEach(panel => this.decorateAll(panel));
  }

  decorateAll(panel: NotebookPanel): void {
    for (const cell of panel.content.widgets) {
      this.decorate(panel, cell);
    }
  }

  /** Tagged cells get a class (coloured border) and a badge row; untagged ones lose both. */
  decorate(panel: NotebookPanel, cell: Cell): void {
    if (!this.watched.has(cell)) {
      this.watched.add(cell);
      cell.model.metadataChanged.connect(() => this.decorate(panel, cell));
      if (cell.model.type === 'code') {
        (cell.model as ICodeCellModel).outputs.changed.connect(() =>
          requestAnimationFrame(() => this.decorate(panel, cell))
        );
      }
    }
    const tagged = hasRemoteTag(cell.model.getMetadata('tags'));
    cell.toggleClass('rk-mod-remote', tagged);
    let badge = this.badges.get(cell);
    if (!tagged) {
      if (badge) {
        badge.dispose();
        this.badges.delete(cell);
      }
      return;
    }
    if (!badge || badge.isDisposed) {
      badge = new RemoteBadge();
      (cell.layout as PanelLayout).insertWidget(0, badge);
      this.badges.set(cell, badge);
    }
    const outputs = this.outputsOf(cell);
    badge.render(
      this.notebookTargets(panel),
      siteBadges(outputs, this.requestsOf(cell))
    );
    this.labelOutputs(cell);
  }

  /** Draws "cleveland · released by bob" on each remote output (the output's own widget). */
  private labelOutputs(cell: Cell): void {
    if (!(cell instanceof CodeCell)) {
      return;
    }
    const model = cell.model.outputs;
    cell.outputArea.widgets.forEach((child, index) => {
      if (index >= model.length) {
        return;
      }
      const output = model.get(index).toJSON() as unknown as INbOutput;
      const meta = remoteMeta(output);
      const label = meta ? outputLabel(meta) : '';
      child.toggleClass('rk-RemoteOutput', !!label);
      if (label && meta) {
        child.node.dataset.rkLabel = label;
        child.node.dataset.rkState = meta.state ?? '';
        child.node.dataset.rkSite = meta.site;
      } else {
        delete child.node.dataset.rkLabel;
      }
    });
  }

  private outputsOf(cell: Cell): INbOutput[] {
    if (cell.model.type !== 'code') {
      return [];
    }
    return (
      cell.model as ICodeCellModel
    ).outputs.toJSON() as unknown as INbOutput[];
  }

  private requestsOf(cell: Cell): Record<string, number> {
    const meta = cell.model.getMetadata(METADATA_KEY) as any;
    return meta && typeof meta.requests === 'object'
      ? { ...meta.requests }
      : {};
  }

  toggleTag(panel: NotebookPanel, cells: Cell[]): void {
    const on = !cells.every(cell =>
      hasRemoteTag(cell.model.getMetadata('tags'))
    );
    for (const cell of cells) {
      const tags = toggledTags(cell.model.getMetadata('tags'), on);
      if (tags.length) {
        cell.model.setMetadata('tags', tags);
      } else {
        cell.model.deleteMetadata('tags');
      }
      this.decorate(panel, cell);
    }
  }

  /** Runs one cell through `%%remote` in the notebook's kernel and records its requests. */
  async runRemotely(panel: NotebookPanel, cell: Cell): Promise<boolean> {
    if (!(cell instanceof CodeCell)) {
      return false;
    }
    if (!this.model.researcherSites.length) {
      await this.model.refreshConnections();
    }
    const sites = this.notebookTargets(panel);
    if (!sites.length) {
      await showErrorMessage(
        'No datasite to run at',
        'Connect to a datasite in the Datasites panel (left sidebar), or choose one for this notebook there.'
      );
      return false;
    }
    if (!hasRemoteTag(cell.model.getMetadata('tags'))) {
      this.toggleTag(panel, [cell]);
    }
    const context = panel.sessionContext;
    await context.ready;
    const kernel = context.session?.kernel;
    if (!kernel) {
      await showErrorMessage(
        'No kernel',
        'Start a kernel for this notebook first.'
      );
      return false;
    }
    await kernel.requestExecute({
      code: '%load_ext remote_kernel',
      silent: true,
      store_history: false
    }).done;
    const source = cell.model.sharedModel.getSource();
    const code = remoteMagicCode(source, sites);
    const previous = this.requestsOf(cell);
    cell.model.setMetadata(METADATA_KEY, {
      ...this.cellMeta(cell),
      requests: {}
    });
    cell.setPrompt('*');
    let ok = false;
    try {
      const reply = await OutputArea.execute(code, cell.outputArea, context);
      if (reply) {
        cell.model.executionCount = reply.content.execution_count;
        ok = reply.content.status === 'ok';
      }
    } catch (error) {
      cell.setPrompt('');
      throw error;
    }
    const requests = requestsFromOutputs(this.outputsOf(cell));
    for (const site of sites.filter(s => requests[s] === undefined)) {
      // Nothing in the outputs names this site's request (it failed to start, or
      // printed nothing): find it among the researcher's own requests there.
      try {
        const listed = await this.model.requests(site);
        const found = findRunRequest(
          listed,
          remoteBody(source),
          previous[site]
        );
        if (found !== undefined) {
          requests[site] = found;
        }
      } catch {
        // The site is unreachable: nothing was sent there.
      }
    }
    cell.model.setMetadata(METADATA_KEY, { ...this.cellMeta(cell), requests });
    this.decorate(panel, cell);
    await this.refreshCell(panel, cell);
    return ok && Object.keys(requests).length > 0;
  }

  async runAllRemote(panel: NotebookPanel): Promise<number> {
    let count = 0;
    for (const cell of [...panel.content.widgets]) {
      if (
        cell.model.type === 'code' &&
        hasRemoteTag(cell.model.getMetadata('tags'))
      ) {
        await this.runRemotely(panel, cell);
        count += 1;
      }
    }
    return count;
  }

  private cellMeta(cell: Cell): Record<string, unknown> {
    return { ...((cell.model.getMetadata(METADATA_KEY) as any) ?? {}) };
  }

  private panels(): NotebookPanel[] {
    const panels: NotebookPanel[] = [];
    this.tracker.forEach(panel => panels.push(panel));
    return panels;
  }

  /** Whether the cell is running: the magic is showing live updates itself. */
  private isRunning(cell: Cell): boolean {
    return !!cell.promptNode?.textContent?.includes('*');
  }

  /** The requests of every open cell that still waits for a datasite (asked at each poll). */
  private unsettledRequests(): IRequestRef[] {
    const refs: IRequestRef[] = [];
    for (const panel of this.panels()) {
      if (!panel.content.model) {
        continue;
      }
      for (const cell of panel.content.widgets) {
        if (
          !(cell instanceof CodeCell) ||
          this.refreshing.has(cell) ||
          this.isRunning(cell)
        ) {
          continue;
        }
        const requests = this.requestsOf(cell);
        if (
          Object.keys(requests).length &&
          needsRefresh(this.outputsOf(cell), requests)
        ) {
          for (const [site, requestId] of Object.entries(requests)) {
            refs.push({ site, requestId });
          }
        }
      }
    }
    return refs;
  }

  /** A polled request: merged into every open cell that shows it. */
  private onRequest(_: RemoteKernelModel, update: IRequestUpdate): void {
    const { site, request } = update;
    for (const panel of this.panels()) {
      if (!panel.content.model) {
        continue;
      }
      for (const cell of panel.content.widgets) {
        if (
          cell instanceof CodeCell &&
          !cell.isDisposed &&
          !this.refreshing.has(cell) &&
          !this.isRunning(cell) &&
          this.requestsOf(cell)[site] === request.id &&
          this.merge(cell, site, request)
        ) {
          this.decorate(panel, cell);
        }
      }
    }
  }

  /** Brings one request's outputs in the cell up to date; whether anything changed. */
  private merge(cell: CodeCell, site: string, request: IRequestView): boolean {
    const merged = mergeRequest(this.outputsOf(cell), site, request);
    if (!merged) {
      return false;
    }
    const outputs = cell.model.outputs;
    outputs.clear();
    for (const output of merged) {
      outputs.add(output as any);
    }
    return true;
  }

  /** Fetches every cell's requests now (the notebook was opened, or the user asked). */
  async refreshNotebook(panel: NotebookPanel): Promise<void> {
    if (!panel.content.model) {
      return;
    }
    for (const cell of [...panel.content.widgets]) {
      await this.refreshCell(panel, cell);
    }
  }

  /** Fetches the cell's requests from its datasites and merges what changed into its outputs. */
  async refreshCell(panel: NotebookPanel, cell: Cell): Promise<void> {
    if (!(cell instanceof CodeCell) || this.refreshing.has(cell)) {
      return;
    }
    const requests = this.requestsOf(cell);
    if (!Object.keys(requests).length || this.isRunning(cell)) {
      return;
    }
    this.refreshing.add(cell);
    try {
      for (const [site, requestId] of Object.entries(requests)) {
        let view;
        try {
          view = await this.model.request(site, requestId);
        } catch {
          continue; // unreachable now: the badge keeps its last state, the poll tries again
        }
        if (cell.isDisposed) {
          return;
        }
        this.merge(cell, site, view);
      }
    } finally {
      this.refreshing.delete(cell);
    }
    this.decorate(panel, cell);
  }
}
