/**
 * The reviewers' "Pending outputs" sidebar: the queue of every reviewer
 * connection (polled by the model), each output rendered with the filter's
 * findings marked on it, and Approve / Deny with a fast keyboard loop (j/k, a, d).
 */
import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { OutputAreaModel, SimplifiedOutputArea } from '@jupyterlab/outputarea';
import { Panel, Widget } from '@lumino/widgets';

import { RemoteKernelModel } from '../model';
import {
  IReviewFilter,
  REVIEW_STATUSES,
  ageText,
  combineItems,
  matchesFilter,
  parseLocation,
  reviewKey,
  step,
  voteSummary,
  votedBy
} from '../reviews';
import { IFinding, INbOutput, IReviewItem, ReviewDecision } from '../tokens';
import { el, errorText } from './dom';

/** An output item as nbformat, so JupyterLab's own renderers draw it for the reviewer. */
export function reviewOutput(item: IReviewItem): INbOutput {
  const content = item.content ?? {};
  if (item.msg_type === 'stream') {
    return {
      output_type: 'stream',
      name: content.name ?? 'stdout',
      text: content.text ?? ''
    };
  }
  if (item.msg_type === 'error') {
    return {
      output_type: 'error',
      ename: content.ename ?? '',
      evalue: content.evalue ?? '',
      traceback: content.traceback ?? []
    };
  }
  return {
    output_type: 'display_data',
    data: content.data ?? {},
    metadata: {}
  };
}

/** Marks failing table cells (or rows) named by the findings' locations. */
export function markFindings(root: HTMLElement, findings: IFinding[]): number {
  let marked = 0;
  const table = root.querySelector('table');
  if (!table) {
    return 0;
  }
  const headerRows = table.querySelectorAll('thead tr');
  const header = headerRows.length ? headerRows[headerRows.length - 1] : null;
  const headerCells = header ? Array.from(header.children) : [];
  const firstHeader = headerRows.length
    ? Array.from(headerRows[0].children)
    : [];
  const bodyRows = Array.from(table.querySelectorAll('tbody tr'));
  for (const finding of findings) {
    const where = parseLocation(finding.location);
    if (!where || where.row >= bodyRows.length) {
      continue;
    }
    const row = bodyRows[where.row] as HTMLElement;
    let target: HTMLElement = row;
    if (where.column !== null) {
      let index = headerCells.findIndex(
        c => c.textContent?.trim() === where.column
      );
      if (index < 0) {
        index = firstHeader.findIndex(
          c => c.textContent?.trim() === where.column
        );
      }
      // Body rows can have fewer leading index cells than the header has.
      const offset = headerCells.length - row.children.length;
      const cell =
        index >= 0 ? row.children[index - Math.max(0, offset)] : undefined;
      if (cell) {
        target = cell as HTMLElement;
      }
    }
    target.classList.add(
      finding.verdict === 'block' ? 'rk-finding-block' : 'rk-finding'
    );
    target.title = `${finding.check}: ${finding.message}`;
    marked += 1;
  }
  return marked;
}

export class ReviewPanel extends Panel {
  private filter: IReviewFilter = {
    site: '',
    researcher: '',
    status: 'pending'
  };
  private selected = '';
  private filtersKey = '';
  private readonly listNode = el('div', 'rk-ReviewList');
  private readonly filtersNode = el('div', 'rk-Filters');
  private readonly messageNode = el('div', 'rk-Message');
  private readonly detail = new Panel();
  private readonly comment = el('textarea', 'rk-Comment');
  private readonly outputModel = new OutputAreaModel({ trusted: false });

  constructor(
    private readonly model: RemoteKernelModel,
    private readonly rendermime: IRenderMimeRegistry
  ) {
    super();
    this.id = 'remote-kernel-reviews';
    this.addClass('rk-Panel');
    this.addClass('rk-ReviewPanel');
    this.title.caption = 'Pending outputs';
    this.node.tabIndex = 0;
    const top = new Widget();
    top.addClass('rk-ReviewTop');
    const header = el('div', 'rk-Header');
    header.appendChild(el('h2', '', 'Pending outputs'));
    const refresh = el('button', 'jp-Button rk-Small', 'Refresh');
    refresh.onclick = () => void this.model.refreshReviews();
    header.appendChild(refresh);
    top.node.append(header, this.filtersNode, this.messageNode, this.listNode);
    this.addWidget(top);
    this.detail.addClass('rk-ReviewDetail');
    this.addWidget(this.detail);
    this.comment.placeholder =
      'Comment (required to deny; the researcher reads it)';
    this.node.addEventListener('keydown', event => this.onKey(event));
    this.model.includeHistory = this.filter.status !== 'pending';
    model.reviewsChanged.connect(this.onReviews, this);
  }

  dispose(): void {
    this.model.reviewsChanged.disconnect(this.onReviews, this);
    super.dispose();
  }

  get visibleItems(): IReviewItem[] {
    const { queue, history } = this.model.reviews;
    return combineItems(queue, history).filter(item =>
      matchesFilter(item, this.filter)
    );
  }

  get pendingCount(): number {
    return this.model.reviews.queue.filter(item => item.state === 'pending')
      .length;
  }

  private onReviews(): void {
    this.updateBadge();
    this.render();
  }

  private updateBadge(): void {
    const count = this.pendingCount;
    // Keep JupyterLab's own data attributes (data-id identifies the sidebar tab);
    // Lumino writes keys verbatim as data-<key>, hence the kebab-case key.
    const others = { ...this.title.dataset };
    delete others['rk-count'];
    this.title.dataset = count
      ? { ...others, 'rk-count': String(count) }
      : others;
    this.title.caption = `Pending outputs (${count})`;
  }

  private render(): void {
    this.renderFilters();
    this.messageNode.textContent = this.model.reviews.errors
      .map(e => `${e.site}: ${e.message}`)
      .join('\n');
    const items = this.visibleItems;
    if (!items.some(item => reviewKey(item) === this.selected)) {
      this.selected = items.length ? reviewKey(items[0]) : '';
      this.renderDetail();
    }
    this.listNode.textContent = '';
    if (!items.length) {
      this.listNode.appendChild(el('div', 'rk-Empty', 'Nothing to review.'));
    }
    const now = Date.now();
    for (const item of items) {
      const row = el('div', 'rk-ReviewRow');
      row.dataset.key = reviewKey(item);
      row.dataset.state = item.state;
      row.classList.toggle(
        'rk-mod-selected',
        reviewKey(item) === this.selected
      );
      const top = el('div', 'rk-RowTop');
      top.appendChild(el('span', 'rk-Site', item.site));
      top.appendChild(el('span', 'rk-Researcher', item.request.user));
      top.appendChild(
        el(
          'span',
          'rk-RequestRef',
          `request ${item.request_id} · output ${item.seq + 1}`
        )
      );
      const bottom = el('div', 'rk-RowBottom');
      bottom.appendChild(
        el(
          'span',
          `rk-Verdict rk-verdict-${item.verdict ?? 'none'}`,
          item.verdict ?? ''
        )
      );
      bottom.appendChild(el('span', 'rk-State', item.state));
      bottom.appendChild(
        el(
          'span',
          'rk-Age',
          ageText(
            item.state === 'pending' ? item.created_at : item.decided_at,
            now
          )
        )
      );
      bottom.appendChild(el('span', 'rk-Summary', item.summary));
      row.appendChild(top);
      row.appendChild(bottom);
      const votes = voteSummary(item);
      if (votes) {
        // Two-person rule: "1 of 2 approvals — bob approved".
        row.appendChild(el('div', 'rk-RowVotes', votes));
      }
      row.onclick = () => this.select(reviewKey(item));
      this.listNode.appendChild(row);
    }
  }

  private renderFilters(): void {
    const { queue, history } = this.model.reviews;
    const all = [...queue, ...history];
    const options = {
      site: [...new Set(all.map(i => i.site))].sort(),
      researcher: [...new Set(all.map(i => i.request.user))].sort()
    };
    // Rebuilding the selects on every poll would close one the reviewer has open.
    const key = JSON.stringify([options, this.filter]);
    if (key === this.filtersKey) {
      return;
    }
    this.filtersKey = key;
    this.filtersNode.textContent = '';
    const make = (
      name: keyof IReviewFilter,
      values: string[],
      anyLabel: string | null
    ) => {
      const select = el('select', `rk-Filter rk-Filter-${name}`);
      select.title = `Filter by ${name}`;
      if (anyLabel !== null) {
        select.appendChild(new Option(anyLabel, ''));
      }
      const current = this.filter[name];
      for (const value of new Set([...values, ...(current ? [current] : [])])) {
        select.appendChild(new Option(value, value));
      }
      select.value = current;
      select.onchange = () => {
        this.filter = { ...this.filter, [name]: select.value };
        this.model.includeHistory = this.filter.status !== 'pending';
        this.render();
        if (name === 'status') {
          void this.model.refreshReviews();
        }
      };
      this.filtersNode.appendChild(select);
    };
    make('site', options.site, 'all sites');
    make('researcher', options.researcher, 'all researchers');
    make('status', REVIEW_STATUSES, null);
  }

  get selectedItem(): IReviewItem | undefined {
    return this.visibleItems.find(item => reviewKey(item) === this.selected);
  }

  select(key: string): void {
    this.selected = key;
    for (const row of Array.from(
      this.listNode.querySelectorAll<HTMLElement>('.rk-ReviewRow')
    )) {
      row.classList.toggle('rk-mod-selected', row.dataset.key === key);
      if (row.dataset.key === key) {
        row.scrollIntoView({ block: 'nearest' });
      }
    }
    this.renderDetail();
  }

  private renderDetail(): void {
    for (const widget of [...this.detail.widgets]) {
      widget.dispose();
    }
    this.detail.node.textContent = '';
    const item = this.selectedItem;
    if (!item) {
      return;
    }
    const add = (node: HTMLElement) => {
      const widget = new Widget({ node });
      this.detail.addWidget(widget);
      return widget;
    };
    const head = el('div', 'rk-DetailHead');
    head.appendChild(
      el(
        'div',
        '',
        `${item.site} · ${item.request.user} · request ${item.request_id} · output ${item.seq + 1} (${item.msg_type})`
      )
    );
    head.appendChild(
      el(
        'div',
        `rk-Verdict rk-verdict-${item.verdict}`,
        `filter: ${item.verdict}`
      )
    );
    head.appendChild(el('div', 'rk-Summary', item.summary));
    const votes = voteSummary(item);
    if (votes) {
      head.appendChild(el('div', 'rk-Votes', votes));
    }
    if (item.state !== 'pending') {
      head.appendChild(
        el(
          'div',
          'rk-Decision',
          `${item.state} by ${item.decided_by ?? '?'}${item.comment ? `: ${item.comment}` : ''}`
        )
      );
    } else if (votedBy(item, item.reviewer)) {
      head.appendChild(
        el(
          'div',
          'rk-Decision',
          `${item.reviewer} has voted; another reviewer decides`
        )
      );
    }
    add(head);

    add(el('h3', '', 'Code'));
    const code = this.rendermime.createRenderer('text/markdown');
    code.addClass('rk-Code');
    void code.renderModel(
      new MimeModel({
        data: { 'text/markdown': '```python\n' + item.request.code + '\n```' },
        trusted: false
      })
    );
    this.detail.addWidget(code);

    add(el('h3', '', 'Withheld output'));
    this.outputModel.clear();
    this.outputModel.fromJSON([reviewOutput(item) as any]);
    const area = new SimplifiedOutputArea({
      model: this.outputModel,
      rendermime: this.rendermime
    });
    area.addClass('rk-WithheldOutput');
    this.detail.addWidget(area);
    const findings = item.findings ?? [];
    // Renderers finish asynchronously; mark the table once it is in the DOM.
    const mark = (tries: number) => {
      if (markFindings(area.node, findings) === 0 && tries > 0) {
        window.setTimeout(() => mark(tries - 1), 100);
      }
    };
    window.setTimeout(() => mark(20), 50);

    add(el('h3', '', `Findings (${findings.length})`));
    const list = el('ul', 'rk-Findings');
    for (const finding of findings) {
      const li = el('li', `rk-finding-${finding.verdict}`);
      li.appendChild(el('b', '', `${finding.check} (${finding.verdict}) `));
      li.appendChild(document.createTextNode(finding.message));
      if (finding.location) {
        li.appendChild(el('span', 'rk-Location', ` at ${finding.location}`));
      }
      list.appendChild(li);
    }
    add(list);

    const pushes = item.request.pushes ?? [];
    if (pushes.length) {
      add(el('h3', '', 'Objects pushed with the request'));
      add(el('pre', 'rk-Pushes', JSON.stringify(pushes, null, 1)));
    }
    const hints = item.content?.metadata;
    if (hints && Object.keys(hints).length) {
      add(el('h3', '', "Kernel's own metadata (a hint, not evidence)"));
      add(el('pre', 'rk-Hints', JSON.stringify(hints, null, 1)));
    }

    if (this.canDecide(item)) {
      const actions = el('div', 'rk-Actions');
      actions.appendChild(this.comment);
      const approve = el(
        'button',
        'jp-Button jp-mod-accept rk-Approve',
        'Approve (a)'
      );
      approve.onclick = () => void this.decide('approve');
      const deny = el('button', 'jp-Button jp-mod-warn rk-Deny', 'Deny (d)');
      deny.onclick = () => void this.decide('deny');
      actions.appendChild(approve);
      actions.appendChild(deny);
      actions.appendChild(
        el(
          'div',
          'rk-Note',
          'Approve with suppression: this datasite’s filter does not offer a suppressed version of outputs yet.'
        )
      );
      add(actions);
    }
  }

  /** Pending, and this connection's reviewer has not voted on it yet. */
  private canDecide(item: IReviewItem): boolean {
    return item.state === 'pending' && !votedBy(item, item.reviewer);
  }

  async decide(decision: ReviewDecision): Promise<void> {
    const item = this.selectedItem;
    if (!item || !this.canDecide(item)) {
      return;
    }
    const comment = this.comment.value.trim();
    if (decision === 'deny' && !comment) {
      this.messageNode.textContent =
        'A denial needs a comment: type it, then press Ctrl+Enter.';
      this.comment.focus();
      return;
    }
    const items = this.visibleItems;
    const index = items.findIndex(i => reviewKey(i) === this.selected);
    try {
      await this.model.review(item, decision, comment);
    } catch (error) {
      this.messageNode.textContent = errorText(error);
      return;
    }
    this.comment.value = '';
    const rest = items.filter(i => reviewKey(i) !== reviewKey(item));
    this.selected = rest.length
      ? reviewKey(rest[Math.min(index, rest.length - 1)])
      : '';
    // Drops the item from the queue (badge and list re-render at once) and refetches.
    this.model.markDecided(item);
    this.renderDetail();
    this.node.focus();
  }

  private onKey(event: KeyboardEvent): void {
    const target = event.target as HTMLElement;
    if (target === this.comment) {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        void this.decide('deny');
      } else if (event.key === 'Escape') {
        this.node.focus();
      }
      return;
    }
    if (
      target.tagName === 'INPUT' ||
      target.tagName === 'SELECT' ||
      target.tagName === 'TEXTAREA'
    ) {
      return;
    }
    const items = this.visibleItems;
    const index = items.findIndex(i => reviewKey(i) === this.selected);
    if (event.key === 'j' || event.key === 'k') {
      const next = step(index, items.length, event.key === 'j' ? 1 : -1);
      if (next >= 0) {
        this.select(reviewKey(items[next]));
      }
    } else if (event.key === 'a') {
      void this.decide('approve');
    } else if (event.key === 'd') {
      if (this.comment.value.trim()) {
        void this.decide('deny');
      } else {
        this.comment.focus();
      }
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
  }
}
