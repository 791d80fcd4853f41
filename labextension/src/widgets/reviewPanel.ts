/**
 * The reviewers' "Pending outputs" sidebar: the queue of every reviewer
 * connection (polled by the model), a preview of the selected output with the
 * filter's findings marked on it, and Approve / Deny with a fast keyboard loop
 * (j/k, a, d; Enter or a click opens the full review in the main area).
 * Decisions wait out the model's undo window ("Approved — Undo (5 s)").
 */
import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { Message } from '@lumino/messaging';
import { Panel, Widget } from '@lumino/widgets';

import {
  IReviewFilter,
  REVIEW_STATUSES,
  ageText,
  combineItems,
  matchesFilter,
  reviewKey,
  step,
  voteSummary
} from '../reviews';
import { IDecisionFailure, RemoteKernelModel } from '../model';
import { IReviewItem, ReviewDecision } from '../tokens';
import { el } from './dom';
import {
  DecisionBar,
  pendingDecisionNode,
  standingNodes,
  updateCountdowns
} from './reviewDecision';
import { reviewOutput, withheldOutputArea } from './reviewOutput';

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
  private readonly bar: DecisionBar;

  constructor(
    private readonly model: RemoteKernelModel,
    private readonly rendermime: IRenderMimeRegistry,
    /** Opens an item's review in the main area (a click, or Enter). */
    private readonly openReview: (item: IReviewItem) => void = () => undefined
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
    this.bar = new DecisionBar(model, {
      className: 'rk-Actions',
      decided: item => this.moveOn(item),
      focus: () => this.node.focus()
    });
    this.node.addEventListener('keydown', event => this.onKey(event));
    this.model.includeHistory = this.filter.status !== 'pending';
    model.reviewsChanged.connect(this.onReviews, this);
    model.decisionsChanged.connect(this.onDecisions, this);
    model.decisionTick.connect(this.onTick, this);
    model.decisionFailed.connect(this.onDecisionFailed, this);
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this.model.reviewsChanged.disconnect(this.onReviews, this);
    this.model.decisionsChanged.disconnect(this.onDecisions, this);
    this.model.decisionTick.disconnect(this.onTick, this);
    this.model.decisionFailed.disconnect(this.onDecisionFailed, this);
    this.bar.dispose();
    super.dispose();
  }

  /** Closing (collapsing) the panel ends the undo windows: the decisions are sent. */
  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.commitDecisions();
  }

  private onDecisions(): void {
    this.render();
  }

  private onTick(_: RemoteKernelModel, now: number): void {
    updateCountdowns(this.listNode, this.model, now);
  }

  private onDecisionFailed(
    _: RemoteKernelModel,
    failure: IDecisionFailure
  ): void {
    this.messageNode.textContent = `Decision on ${failure.key} not sent: ${failure.message}`;
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
      const pending = this.model.pendingDecision(reviewKey(item));
      if (pending) {
        row.classList.add('rk-mod-deciding');
        row.appendChild(
          pendingDecisionNode(pending, () => {
            this.select(pending.key);
            this.bar.undo();
          })
        );
      }
      row.onclick = () => {
        this.select(reviewKey(item));
        this.openReview(item);
      };
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
    head.appendChild(el('div', 'rk-Summary', item.summary));
    head.append(...standingNodes(item, 'div'));
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

    const open = el(
      'button',
      'jp-Button rk-Small rk-OpenReview',
      'Open review'
    );
    open.title = 'The whole review in the main area (Enter)';
    open.onclick = () => this.openReview(item);
    add(open);

    add(el('h3', '', 'Withheld output'));
    const findings = item.findings ?? [];
    const area = withheldOutputArea(
      reviewOutput(item),
      this.rendermime,
      findings
    );
    area.addClass('rk-WithheldOutput');
    this.detail.addWidget(area);

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

    add(this.bar.node);
    this.bar.show(item);
  }

  /** Approves or denies the selected output (after the undo window). */
  decide(decision: ReviewDecision): void {
    this.bar.decide(decision);
  }

  /** After a decision: on to the next output that waits for one. */
  private moveOn(item: IReviewItem): void {
    const items = this.visibleItems;
    const index = items.findIndex(i => reviewKey(i) === reviewKey(item));
    const next = [...items.slice(index + 1), ...items.slice(0, index)].find(i =>
      this.bar.canDecide(i)
    );
    if (next) {
      this.select(reviewKey(next));
    }
  }

  private onKey(event: KeyboardEvent): void {
    if (this.bar.handleKey(event)) {
      return;
    }
    const target = event.target as HTMLElement;
    if (['INPUT', 'SELECT', 'TEXTAREA'].includes(target.tagName)) {
      return;
    }
    const items = this.visibleItems;
    const index = items.findIndex(i => reviewKey(i) === this.selected);
    if (event.key === 'j' || event.key === 'k') {
      const next = step(index, items.length, event.key === 'j' ? 1 : -1);
      if (next >= 0) {
        this.select(reviewKey(items[next]));
      }
    } else if (event.key === 'Enter' && this.selectedItem) {
      this.openReview(this.selectedItem);
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
  }
}
