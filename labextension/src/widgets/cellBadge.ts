/** The badge above a tagged cell: "remote → cleveland, hungary" (the notebook's targets). */
import { Widget } from '@lumino/widgets';

import { el } from './dom';

export class RemoteBadge extends Widget {
  constructor() {
    super();
    this.addClass('rk-CellBadge');
  }

  /** Each site's state is in the cell's status table (one row per site), not here. */
  render(targets: string[]): void {
    this.node.textContent = '';
    this.node.appendChild(
      el(
        'span',
        'rk-RemoteBadge',
        targets.length
          ? `remote → ${targets.join(', ')}`
          : 'remote → no datasite'
      )
    );
  }
}
