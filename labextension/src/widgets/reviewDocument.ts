/**
 * One output's review in the main area ("Review: cleveland #12"), opened from
 * the Pending outputs queue: who asked and when, the cell's code with line
 * numbers, the whole withheld output with the findings placed on the cells
 * they concern, the evidence, the researcher's history at this site, the
 * variants the datasite offers (approve with suppression), and the decision
 * bar. Decisions wait out the model's undo window; closing the review sends a
 * decision still in its window.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';

import { epsilonText } from '../budgets';
import { reviewsIcon } from '../icons';
import { RemoteKernelModel } from '../model';
import {
  IHistoryEntry,
  ageText,
  combineItems,
  dpByDataset,
  outputCounts,
  reviewKey,
  reviewTitle,
  spendingText,
  variantsOf
} from '../reviews';
import { IDpContext, IReviewItem } from '../tokens';
import { el, errorText } from './dom';
import { DecisionBar, standingNodes } from './reviewDecision';
import { reviewOutput, withheldOutputArea } from './reviewOutput';

/** The cell's code: monospace, not wrapped, scrollable, with line numbers. */
export function codeView(code: string): HTMLElement {
  const view = el('div', 'rk-CodeView');
  const lines = code.replace(/\n$/, '').split('\n');
  const gutter = el('pre', 'rk-CodeGutter');
  gutter.setAttribute('aria-hidden', 'true');
  gutter.textContent = lines.map((_, i) => String(i + 1)).join('\n');
  const text = el('pre', 'rk-CodeText');
  text.textContent = lines.join('\n');
  view.append(gutter, text);
  return view;
}

/**
 * The researcher's DP spending and the DP answers they hold, per dataset
 * ("DP answers alice already holds on heart"): an exact table can be
 * differenced against them. Absent (not drawn) for datasites without the DP tier.
 */
export function dpView(dp: IDpContext, user: string): HTMLElement {
  const view = el('div', 'rk-DpContext');
  const datasets = dpByDataset(dp);
  if (!datasets.length) {
    view.appendChild(
      el(
        'div',
        'rk-Empty',
        `${user} has no DP budget and holds no DP answers at this site.`
      )
    );
    return view;
  }
  const now = Date.now();
  for (const entry of datasets) {
    const block = el('div', 'rk-DpDataset');
    block.dataset.dataset = entry.dataset;
    block.appendChild(
      el(
        'div',
        'rk-DpTitle',
        `DP answers ${user} already holds on ${entry.dataset} (${entry.answers.length})`
      )
    );
    block.appendChild(
      el('div', 'rk-DpSpending rk-Muted', spendingText(entry.spending))
    );
    if (entry.answers.length) {
      const list = el('ol', 'rk-DpAnswers');
      for (const answer of entry.answers) {
        const li = el('li', 'rk-DpAnswer');
        li.dataset.output = String(answer.output_id);
        const age = answer.created
          ? ` · ${ageText(answer.created, now)} ago`
          : '';
        li.appendChild(
          el(
            'div',
            'rk-Muted',
            `ε ${epsilonText(answer.epsilon)} · request ${answer.request_id}${age}`
          )
        );
        li.appendChild(el('pre', 'rk-DpSql', answer.sql));
        list.appendChild(li);
      }
      block.appendChild(list);
    }
    view.appendChild(block);
  }
  return view;
}

/** What a change of the item's standing re-renders (state, votes, decider). */
function standing(item: IReviewItem): string {
  return JSON.stringify([item.state, item.votes ?? [], item.decided_by]);
}

/** The content of a review: built once per item; the head and decision bar follow it. */
export class ReviewView extends Panel {
  private readonly head = el('div', 'rk-ReviewHead');
  private readonly bar: DecisionBar;
  private readonly historyNode = el('div', 'rk-History');
  private readonly placedNode = el('ol', 'rk-Findings rk-FindingsPlaced');
  private readonly otherNode = el('ol', 'rk-Findings rk-FindingsOther');
  private readonly placedLabel = el(
    'div',
    'rk-Muted',
    'On the table (the numbers are marked on the cells; hover one for its finding):'
  );
  private lastStanding: string;
  private fetching = false;

  constructor(
    private readonly model: RemoteKernelModel,
    private readonly rendermime: IRenderMimeRegistry,
    private _item: IReviewItem
  ) {
    super();
    this.addClass('rk-ReviewView');
    this.node.tabIndex = 0;
    this.lastStanding = standing(_item);
    this.bar = new DecisionBar(model, {
      className: 'rk-DecisionBar',
      variants: true,
      focus: () => this.node.focus()
    });
    this.build();
    this.node.addEventListener('keydown', event => this.bar.handleKey(event));
    model.reviewsChanged.connect(this.onReviews, this);
  }

  get item(): IReviewItem {
    return this._item;
  }

  get key(): string {
    return reviewKey(this._item);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.reviewsChanged.disconnect(this.onReviews, this);
    this.bar.dispose();
    super.dispose();
  }

  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    this.node.focus();
  }

  /** A titled section of the review, holding nodes or widgets. */
  private section(title: string, ...parts: (HTMLElement | Widget)[]): Panel {
    const section = new Panel();
    section.addClass('rk-ReviewSection');
    for (const part of [el('h3', '', title), ...parts]) {
      section.addWidget(
        part instanceof Widget ? part : new Widget({ node: part })
      );
    }
    this.addWidget(section);
    return section;
  }

  private build(): void {
    const item = this._item;
    this.addWidget(new Widget({ node: this.head }));
    this.renderHead();

    const request = el(
      'div',
      'rk-Muted',
      `request ${item.request_id} · ${item.request.status}` +
        (item.request.message ? ` · ${item.request.message}` : '')
    );
    this.section('Code', request, codeView(item.request.code));

    // The output, and beside it (or below, if narrow) each variant offered.
    const outputs = new Panel();
    outputs.addClass('rk-ReviewOutputs');
    this.section(
      `Withheld output (${item.msg_type})`,
      el('div', 'rk-Summary', item.summary),
      outputs
    );
    const findings = item.findings ?? [];
    const original = withheldOutputArea(
      reviewOutput(item),
      this.rendermime,
      findings,
      placed => this.renderFindings(placed)
    );
    original.addClass('rk-WithheldOutput');
    this.addOutput(outputs, original, 'Withheld', '');
    for (const variant of variantsOf(item)) {
      const area = withheldOutputArea(
        reviewOutput({ msg_type: item.msg_type, content: variant.content }),
        this.rendermime
      );
      area.addClass('rk-VariantOutput');
      area.node.dataset.variant = String(variant.id);
      this.addOutput(
        outputs,
        area,
        variant.kind === 'suppressed'
          ? 'Suppressed version'
          : `${variant.kind} version`,
        variant.summary ?? ''
      );
    }

    this.section(
      `Findings (${findings.length})`,
      this.placedLabel,
      this.placedNode,
      this.otherNode
    );
    this.renderFindings(null);

    const evidence = el('dl', 'rk-Evidence');
    const fact = (name: string, value: string, className = '') => {
      evidence.appendChild(el('dt', '', name));
      evidence.appendChild(el('dd', className, value));
    };
    fact(
      'Filter verdict',
      item.verdict ?? 'none',
      `rk-Verdict rk-verdict-${item.verdict ?? 'none'}`
    );
    fact('Summary', item.summary);
    const pushes = item.request.pushes ?? [];
    if (pushes.length) {
      fact('Objects pushed with the request', JSON.stringify(pushes, null, 1));
    }
    const hints = item.content?.metadata;
    if (hints && Object.keys(hints).length) {
      fact(
        "Kernel's own metadata (a hint, not evidence)",
        JSON.stringify(hints, null, 1)
      );
    }
    this.section('Evidence', evidence);

    if (item.dp) {
      this.section(
        `Differential privacy: what ${item.request.user} already holds`,
        dpView(item.dp, item.request.user)
      );
    }

    this.section(
      `${item.request.user}'s history at ${item.site}`,
      this.historyNode
    );
    void this.loadHistory();

    this.addWidget(new Widget({ node: this.bar.node }));
    this.bar.show(item);
  }

  private addOutput(
    parent: Panel,
    area: Widget,
    label: string,
    summary: string
  ): void {
    const box = new Panel();
    box.addClass('rk-OutputBox');
    const head = el('div', 'rk-OutputLabel', label);
    if (summary) {
      head.appendChild(el('div', 'rk-Muted', summary));
    }
    box.addWidget(new Widget({ node: head }));
    box.addWidget(area);
    parent.addWidget(box);
  }

  private renderHead(): void {
    const item = this._item;
    const now = Date.now();
    this.head.textContent = '';
    const title = el('div', 'rk-ReviewTitle');
    title.appendChild(el('span', 'rk-Researcher', item.request.user));
    title.appendChild(document.createTextNode(' at '));
    title.appendChild(el('span', 'rk-Site', item.site));
    title.appendChild(
      el(
        'span',
        'rk-Muted',
        ` · request ${item.request_id} · output ${item.seq + 1} (#${item.id}) · ` +
          `waiting ${ageText(item.created_at, now) || '?'}` +
          (item.request.created_at
            ? ` · asked ${ageText(item.request.created_at, now)} ago`
            : '')
      )
    );
    this.head.appendChild(title);
    const line = el('div', 'rk-ReviewState');
    line.appendChild(el('span', 'rk-State', item.state));
    line.append(...standingNodes(item, 'span'));
    this.head.appendChild(line);
  }

  /** Findings on the table (numbered as marked), then the others; null: not drawn yet. */
  private renderFindings(placed: number[] | null): void {
    const findings = this._item.findings ?? [];
    const on = new Set(placed ?? []);
    this.placedNode.textContent = '';
    this.otherNode.textContent = '';
    findings.forEach((finding, index) => {
      const li = el('li', `rk-finding-${finding.verdict}`);
      li.value = index + 1;
      li.appendChild(el('b', '', `${finding.check} (${finding.verdict}) `));
      li.appendChild(document.createTextNode(finding.message));
      if (finding.location) {
        li.appendChild(el('span', 'rk-Location', ` at ${finding.location}`));
      }
      (on.has(index) ? this.placedNode : this.otherNode).appendChild(li);
    });
    this.placedLabel.hidden = on.size === 0;
  }

  private async loadHistory(): Promise<void> {
    this.historyNode.textContent = 'Loading…';
    let entries: IHistoryEntry[];
    try {
      entries = await this.model.researcherHistory(this._item);
    } catch (error) {
      this.historyNode.textContent = `Not available: ${errorText(error)}`;
      return;
    }
    this.historyNode.textContent = '';
    if (!entries.length) {
      this.historyNode.appendChild(
        el('div', 'rk-Empty', 'No earlier requests at this site.')
      );
      return;
    }
    const table = el('table', 'rk-Table rk-HistoryTable');
    const head = table.createTHead().insertRow();
    for (const name of ['request', 'asked', 'status', 'code', 'outputs']) {
      head.appendChild(el('th', '', name));
    }
    const body = table.createTBody();
    const now = Date.now();
    for (const entry of entries) {
      const row = body.insertRow();
      row.dataset.request = String(entry.requestId);
      row.insertCell().textContent = String(entry.requestId);
      row.insertCell().textContent = entry.createdAt
        ? `${ageText(entry.createdAt, now)} ago`
        : '';
      row.insertCell().textContent = entry.status;
      const code = row.insertCell();
      code.className = 'rk-HistoryCode';
      code.textContent = entry.firstLine;
      code.title = entry.code;
      row.insertCell().textContent = outputCounts(entry.outputs);
    }
    this.historyNode.appendChild(table);
  }

  /** Follows the item in the polls; once it left the queue, asks its datasite how it ended. */
  private onReviews(): void {
    const { queue, history } = this.model.reviews;
    const found = combineItems(queue, history).find(
      i => reviewKey(i) === this.key
    );
    if (found) {
      this.follow(found);
    } else if (
      this._item.state === 'pending' &&
      !this.model.pendingDecision(this.key)
    ) {
      void this.fetchState();
    }
  }

  private async fetchState(): Promise<void> {
    if (this.fetching) {
      return;
    }
    this.fetching = true;
    try {
      const view = await this.model.output(this._item.site, this._item.id);
      this.follow({ ...this._item, ...view });
    } catch {
      // The next poll tries again.
    } finally {
      this.fetching = false;
    }
  }

  private follow(item: IReviewItem): void {
    if (this.isDisposed) {
      return;
    }
    this._item = { ...this._item, ...item, request: this._item.request };
    const now = standing(this._item);
    if (now !== this.lastStanding) {
      this.lastStanding = now;
      this.renderHead();
      this.bar.show(this._item);
    }
  }
}

/** The reviews open in the main area: one per output, reused when opened again. */
export class ReviewDocuments {
  private readonly open = new Map<string, MainAreaWidget<ReviewView>>();

  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly model: RemoteKernelModel,
    private readonly rendermime: IRenderMimeRegistry
  ) {
    // Leaving the page ends the undo windows too: send, and let the browser ask.
    window.addEventListener('beforeunload', event => {
      if (this.model.pendingDecisions.length) {
        this.model.commitDecisions();
        event.preventDefault();
      }
    });
  }

  /** Opens (or shows again) the review of `item`, and activates it. */
  show(item: IReviewItem): MainAreaWidget<ReviewView> {
    const key = reviewKey(item);
    let widget = this.open.get(key);
    if (!widget || widget.isDisposed) {
      const content = new ReviewView(this.model, this.rendermime, item);
      widget = new MainAreaWidget({ content });
      widget.id = `rk-review-${key.replace(/[^A-Za-z0-9_-]/g, '-')}`;
      widget.addClass('rk-Review');
      widget.title.label = reviewTitle(item);
      widget.title.caption = `${item.request.user} at ${item.site}: output ${item.id} of request ${item.request_id}`;
      widget.title.icon = reviewsIcon;
      widget.title.closable = true;
      // Closing the review ends its undo window: a decision in it is sent.
      widget.disposed.connect(() => {
        this.model.commitDecisions(key);
        this.open.delete(key);
      });
      this.app.shell.add(widget, 'main', this.placement());
      this.open.set(key, widget);
    }
    this.app.shell.activateById(widget.id);
    return widget;
  }

  /**
   * Where a new review goes: among the open reviews; else beside the notebook
   * being worked on (the cell's released output is then seen as it arrives);
   * else a tab of its own.
   */
  private placement(): DocumentRegistry.IOpenOptions {
    const other = [...this.open.values()].find(w => !w.isDisposed);
    if (other) {
      return { ref: other.id, mode: 'tab-after' };
    }
    const current = this.app.shell.currentWidget;
    if (current?.hasClass('jp-NotebookPanel')) {
      return { ref: current.id, mode: 'split-right' };
    }
    return {};
  }

  /** The review of an item of the queue or history, by site and output id. */
  showById(site: string, outputId: number): MainAreaWidget<ReviewView> | null {
    const { queue, history } = this.model.reviews;
    const item = combineItems(queue, history).find(
      i => i.site === site && i.id === outputId
    );
    return item ? this.show(item) : null;
  }
}
