/** The badge row above a tagged cell: "remote → cleveland, hungarian" and per-site status. */
import { Widget } from '@lumino/widgets';

import { ISiteBadge } from '../cells';
import { el } from './dom';

export class RemoteBadge extends Widget {
  constructor() {
    super();
    this.addClass('rk-CellBadge');
  }

  render(targets: string[], badges: ISiteBadge[]): void {
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
    for (const badge of badges) {
      const span = el('span', `rk-SiteStatus rk-mod-${badge.kind}`, badge.text);
      span.dataset.site = badge.site;
      this.node.appendChild(span);
    }
  }
}
