/**
 * The decision controls of one output, shared by the Pending outputs sidebar
 * and the review in the main area: the comment, Approve / Deny (and "Approve
 * with suppression" where the datasite offers a variant), the keys a, d, u,
 * Ctrl+Enter, and a decision in its undo window shown as "Approved — Undo (5 s)".
 * The model holds the decisions and their timers; this only shows and asks.
 */
import { IDecisionFailure, RemoteKernelModel } from '../model';
import {
  IPendingDecision,
  decisionLabel,
  reviewKey,
  undoText,
  variantAction,
  variantsOf,
  voteSummary,
  votedBy
} from '../reviews';
import { IOutputVariant, IReviewItem, ReviewDecision } from '../tokens';
import { el } from './dom';

/**
 * "Approved — Undo (5 s)": a decision in its undo window, with its Undo button
 * (`data-rk-undo` names the item; `updateCountdowns` refreshes the seconds).
 */
export function pendingDecisionNode(
  pending: IPendingDecision,
  undo: () => void
): HTMLElement {
  const node = el('div', 'rk-PendingDecision');
  node.dataset.decision = pending.decision;
  node.appendChild(el('span', '', `${decisionLabel(pending)} — `));
  const button = el(
    'button',
    'jp-Button rk-Small rk-Undo',
    undoText(pending, Date.now())
  );
  button.dataset.rkUndo = pending.key;
  button.onclick = event => {
    event.stopPropagation();
    undo();
  };
  node.appendChild(button);
  return node;
}

/**
 * How an output stands, as `tag` elements: the filter's verdict, the votes so
 * far ("1 of 2 approvals — bob approved"), and the decision ("released by bob")
 * or that this reviewer has voted.
 */
export function standingNodes(
  item: IReviewItem,
  tag: 'div' | 'span'
): HTMLElement[] {
  const verdict = item.verdict ?? 'none';
  const nodes = [
    el(tag, `rk-Verdict rk-verdict-${verdict}`, `filter: ${verdict}`)
  ];
  const votes = voteSummary(item);
  if (votes) {
    nodes.push(el(tag, 'rk-Votes', votes));
  }
  if (item.state !== 'pending') {
    const comment = item.comment ? `: ${item.comment}` : '';
    nodes.push(
      el(
        tag,
        'rk-Decision',
        `${item.state} by ${item.decided_by ?? '?'}${comment}`
      )
    );
  } else if (votedBy(item, item.reviewer)) {
    nodes.push(
      el(
        tag,
        'rk-Decision',
        `${item.reviewer} has voted; another reviewer decides`
      )
    );
  }
  return nodes;
}

/** Refreshes the seconds of every Undo button under `root`. */
export function updateCountdowns(
  root: HTMLElement,
  model: RemoteKernelModel,
  now: number
): void {
  for (const button of Array.from(
    root.querySelectorAll<HTMLElement>('[data-rk-undo]')
  )) {
    const pending = model.pendingDecision(button.dataset.rkUndo ?? '');
    if (pending) {
      button.textContent = undoText(pending, now);
    }
  }
}

export interface IDecisionBarOptions {
  /** The bar's class: its place decides its look. */
  className: string;
  /** Offer the datasite's variants ("Approve with suppression"). */
  variants?: boolean;
  /** Called after a decision started its window (the queue moves on). */
  decided?: (item: IReviewItem) => void;
  /** Where the keyboard goes back to after a decision or Escape. */
  focus: () => void;
}

/** The decision controls of the item it is given (`show`). */
export class DecisionBar {
  readonly node: HTMLElement;
  readonly comment = el('textarea', 'rk-Comment');
  private readonly message = el('div', 'rk-Message');
  private item: IReviewItem | null = null;

  constructor(
    private readonly model: RemoteKernelModel,
    private readonly options: IDecisionBarOptions
  ) {
    this.node = el('div', options.className);
    this.comment.placeholder =
      'Comment (required to deny; the researcher reads it). Ctrl+Enter denies.';
    model.decisionsChanged.connect(this.render, this);
    model.decisionTick.connect(this.onTick, this);
    model.decisionFailed.connect(this.onFailed, this);
  }

  dispose(): void {
    this.model.decisionsChanged.disconnect(this.render, this);
    this.model.decisionTick.disconnect(this.onTick, this);
    this.model.decisionFailed.disconnect(this.onFailed, this);
  }

  /** Shows the controls of `item` (nothing for null). */
  show(item: IReviewItem | null): void {
    if (item?.id !== this.item?.id || item?.site !== this.item?.site) {
      this.message.textContent = '';
    }
    this.item = item;
    this.render();
  }

  /** Pending, this reviewer has not voted, and no decision of theirs is in its window. */
  canDecide(item: IReviewItem): boolean {
    return (
      item.state === 'pending' &&
      !votedBy(item, item.reviewer) &&
      !this.model.pendingDecision(reviewKey(item))
    );
  }

  render(): void {
    this.node.textContent = '';
    const item = this.item;
    if (!item) {
      return;
    }
    this.node.appendChild(this.message);
    const pending = this.model.pendingDecision(reviewKey(item));
    if (pending) {
      this.node.appendChild(pendingDecisionNode(pending, () => this.undo()));
      return;
    }
    if (!this.canDecide(item)) {
      return;
    }
    this.node.appendChild(this.comment);
    const buttons = el('div', 'rk-DecisionButtons');
    const button = (text: string, className: string, onclick: () => void) => {
      const node = el('button', `jp-Button ${className}`, text);
      node.onclick = onclick;
      buttons.appendChild(node);
      return node;
    };
    button('Approve (a)', 'jp-mod-accept rk-Approve', () =>
      this.decide('approve')
    );
    for (const variant of this.options.variants ? variantsOf(item) : []) {
      const node = button(
        variantAction(variant),
        'jp-mod-accept rk-ApproveVariant',
        () => this.decide('approve', variant)
      );
      node.dataset.variant = String(variant.id);
      node.title = variant.summary ?? '';
    }
    button('Deny (d)', 'jp-mod-warn rk-Deny', () => this.decide('deny'));
    this.node.appendChild(buttons);
  }

  /** Starts the decision's undo window (a denial needs a comment). */
  decide(
    decision: ReviewDecision,
    variant: IOutputVariant | null = null
  ): void {
    const item = this.item;
    if (!item || !this.canDecide(item)) {
      return;
    }
    const comment = this.comment.value.trim();
    if (decision === 'deny' && !comment) {
      this.message.textContent =
        'A denial needs a comment: type it, then press Ctrl+Enter.';
      this.comment.focus();
      return;
    }
    this.message.textContent = '';
    this.comment.value = '';
    this.model.decide(item, decision, comment, variant);
    this.options.decided?.(item);
    this.options.focus();
  }

  /** Cancels the item's decision in its window; a denial's comment comes back. */
  undo(): void {
    const undone = this.item
      ? this.model.undoDecision(reviewKey(this.item))
      : undefined;
    if (undone?.comment && !this.comment.value) {
      this.comment.value = undone.comment;
    }
    this.options.focus();
  }

  /** The keys of a review: a, d (or the comment box), u; true if the key was one. */
  handleKey(event: KeyboardEvent): boolean {
    const target = event.target as HTMLElement;
    if (target === this.comment) {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        this.decide('deny');
      } else if (event.key === 'Escape') {
        this.options.focus();
      } else {
        return false;
      }
      event.preventDefault();
      return true;
    }
    if (['INPUT', 'SELECT', 'TEXTAREA'].includes(target.tagName)) {
      return false;
    }
    if (event.key === 'a') {
      this.decide('approve');
    } else if (event.key === 'd') {
      if (this.comment.value.trim()) {
        this.decide('deny');
      } else {
        this.comment.focus();
      }
    } else if (event.key === 'u') {
      this.undo();
    } else {
      return false;
    }
    event.preventDefault();
    event.stopPropagation();
    return true;
  }

  private onTick(_: RemoteKernelModel, now: number): void {
    updateCountdowns(this.node, this.model, now);
  }

  private onFailed(_: RemoteKernelModel, failure: IDecisionFailure): void {
    if (this.item && failure.key === reviewKey(this.item)) {
      this.message.textContent = `Not sent: ${failure.message}`;
      this.render();
    }
  }
}
