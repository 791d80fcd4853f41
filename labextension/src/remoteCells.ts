/**
 * Remote cells in notebooks: the `remote` tag and its badge, running tagged
 * cells remotely, and released outputs brought into the cell.
 *
 * A tagged cell runs remotely with every ordinary run command (Shift-Enter,
 * Ctrl-Enter, Run All, the toolbar): when JupyterLab schedules a tagged cell
 * (`NotebookActions.executionScheduled`, emitted right before the cell's own
 * `execute_request` is sent), this controller sends a silent request first that
 * loads `remote_kernel` in the notebook's kernel and sets the notebook's target
 * sites. The cell's own request carries its metadata, tags included, and the
 * kernel's input transformer runs a tagged cell as `%%remote` (mock run here,
 * then the sites). The cell's source is never changed. After the run
 * (`NotebookActions.executed`) the requests named in the cell's outputs are
 * kept in its metadata.
 *
 * Decisions that arrive after the cell finished are not reliably routed to it
 * by JupyterLab (late `update_display_data`), so those requests are fetched
 * from the server extension and this controller brings the cell's view (status
 * table and outputs) up to date itself, live and when a notebook is reopened,
 * writing only when something changed. It runs no timer: the model polls the
 * requests that unsettled cells wait for (it asks `unsettledRequests`) and
 * emits each one; a notebook's own refresh (on open, after a run, the refresh
 * command) fetches through the model at once.
 */
import { Cell, CodeCell, ICodeCellModel } from '@jupyterlab/cells';
import {
  Notebook,
  NotebookActions,
  NotebookPanel,
  INotebookTracker
} from '@jupyterlab/notebook';
import { showErrorMessage } from '@jupyterlab/apputils';
import { PanelLayout } from '@lumino/widgets';

import {
  hasRemoteTag,
  mergeRequest,
  findRunRequest,
  needsRefresh,
  outputCaption,
  prepareCode,
  remoteBody,
  remoteMeta,
  requestsFromOutputs,
  sameJSON,
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
  /** Tagged cells sent to the kernel as remote, with the requests they had before. */
  private readonly prepared = new WeakMap<Cell, Record<string, number>>();
  /** Recording a run's requests (what "Run Remotely" waits for). */
  private readonly recording = new WeakMap<Cell, Promise<void>>();
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
    NotebookActions.executionScheduled.connect(this.onScheduled, this);
    NotebookActions.executed.connect(this.onExecuted, this);
  }

  dispose(): void {
    this.unwatch();
    NotebookActions.executionScheduled.disconnect(this.onScheduled, this);
    NotebookActions.executed.disconnect(this.onExecuted, this);
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
    // Tagged or not: a cell with %%remote typed by hand has remote outputs too.
    this.labelOutputs(cell);
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
    badge.render(this.notebookTargets(panel));
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
      const caption = outputCaption(output);
      child.toggleClass('rk-RemoteOutput', !!caption);
      child.toggleClass('rk-mod-note', !!caption?.note);
      child.toggleClass('rk-mod-kernelLabel', !!caption?.kernelLabel);
      if (caption && meta) {
        child.node.dataset.rkLabel = caption.label;
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

  /** The notebook panel that shows `notebook`. */
  private panelOf(notebook: Notebook): NotebookPanel | undefined {
    return this.tracker.find(panel => panel.content === notebook);
  }

  /**
   * A cell is about to be sent to the kernel (any run command). If it is tagged
   * `remote`, a silent request goes first: it loads `remote_kernel` and sets the
   * notebook's targets. This runs synchronously before JupyterLab sends the
   * cell's own request, so the kernel handles the two in this order.
   */
  private onScheduled(
    _: unknown,
    args: { notebook: Notebook; cell: Cell }
  ): void {
    const { notebook, cell } = args;
    const panel = this.panelOf(notebook);
    const kernel = panel?.sessionContext.session?.kernel;
    if (
      !panel ||
      !kernel ||
      cell.model.type !== 'code' ||
      !hasRemoteTag(cell.model.getMetadata('tags')) ||
      kernel.name.startsWith('remote-') // the proxy kernel runs every cell remotely
    ) {
      this.prepared.delete(cell);
      return;
    }
    // Before the connections are known, the kernel runs at every connected site.
    const sites = this.model.connections.length
      ? this.notebookTargets(panel)
      : null;
    let code: string;
    try {
      code = prepareCode(sites);
    } catch (error) {
      console.error('remote_kernel:', error);
      return;
    }
    const future = kernel.requestExecute({
      code,
      silent: true,
      store_history: false,
      stop_on_error: false
    });
    future.done.catch(error => console.error('remote_kernel:', error));
    this.prepared.set(cell, this.requestsOf(cell));
  }

  /** A cell ran: the requests its outputs name are kept in its metadata, then followed. */
  private onExecuted(
    _: unknown,
    args: { notebook: Notebook; cell: Cell }
  ): void {
    const { notebook, cell } = args;
    const panel = this.panelOf(notebook);
    if (!panel || !(cell instanceof CodeCell)) {
      return;
    }
    const recording = this.recordRequests(panel, cell);
    this.recording.set(cell, recording);
    void recording.finally(() => {
      if (this.recording.get(cell) === recording) {
        this.recording.delete(cell);
      }
    });
  }

  private async recordRequests(
    panel: NotebookPanel,
    cell: CodeCell
  ): Promise<void> {
    const before = this.prepared.get(cell);
    this.prepared.delete(cell);
    const previous = this.requestsOf(cell);
    const requests = requestsFromOutputs(this.outputsOf(cell));
    if (before) {
      const source = cell.model.sharedModel.getSource();
      for (const site of this.notebookTargets(panel)) {
        if (requests[site] !== undefined) {
          continue;
        }
        // Nothing in the outputs names this site's request (it failed to start, or
        // printed nothing): find it among the researcher's own requests there.
        try {
          const listed = await this.model.requests(site);
          const found = findRunRequest(
            listed,
            remoteBody(source),
            before[site]
          );
          if (found !== undefined) {
            requests[site] = found;
          }
        } catch {
          // The site is unreachable: nothing was sent there.
        }
      }
    }
    if (cell.isDisposed) {
      return;
    }
    if (!sameJSON(requests, previous)) {
      const meta = this.cellMeta(cell);
      if (Object.keys(requests).length) {
        cell.model.setMetadata(METADATA_KEY, { ...meta, requests });
      } else if (meta.requests !== undefined) {
        delete meta.requests;
        if (Object.keys(meta).length) {
          cell.model.setMetadata(METADATA_KEY, meta);
        } else {
          cell.model.deleteMetadata(METADATA_KEY);
        }
      }
    }
    this.decorate(panel, cell);
    await this.refreshCell(panel, cell);
  }

  /**
   * "Run Remotely": tags the cell if needed and runs it as any run command does
   * (so it runs on the mock here, then at the notebook's targets); whether any
   * site got it.
   */
  async runRemotely(panel: NotebookPanel, cell: Cell): Promise<boolean> {
    if (!(cell instanceof CodeCell)) {
      return false;
    }
    if (!(await this.checkTargets(panel))) {
      return false;
    }
    if (!hasRemoteTag(cell.model.getMetadata('tags'))) {
      this.toggleTag(panel, [cell]);
    }
    await NotebookActions.runCells(panel.content, [cell], panel.sessionContext);
    await this.recording.get(cell);
    return Object.keys(this.requestsOf(cell)).length > 0;
  }

  /** Runs every tagged cell, top to bottom; how many. */
  async runAllRemote(panel: NotebookPanel): Promise<number> {
    const cells = panel.content.widgets.filter(
      cell =>
        cell.model.type === 'code' &&
        hasRemoteTag(cell.model.getMetadata('tags'))
    );
    if (!cells.length || !(await this.checkTargets(panel))) {
      return 0;
    }
    await NotebookActions.runCells(panel.content, cells, panel.sessionContext);
    await Promise.all(cells.map(cell => this.recording.get(cell)));
    return cells.length;
  }

  /** Whether the notebook has a site to run at; says what to do if not. */
  private async checkTargets(panel: NotebookPanel): Promise<boolean> {
    if (!this.model.researcherSites.length) {
      await this.model.refreshConnections();
    }
    if (this.notebookTargets(panel).length) {
      return true;
    }
    await showErrorMessage(
      'No datasite to run at',
      'Connect to a datasite in the Datasites panel (left sidebar), or choose one for this notebook there.'
    );
    return false;
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
    const state = (cell.model as ICodeCellModel).executionState;
    return state === 'running' || !!cell.promptNode?.textContent?.includes('*');
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
    const current = this.outputsOf(cell);
    if (merged.length === current.length) {
      // Replace only what changed: the rest of the output area is left alone.
      merged.forEach((output, index) => {
        if (!sameJSON(output, current[index])) {
          outputs.set(index, output as any);
        }
      });
      return true;
    }
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
