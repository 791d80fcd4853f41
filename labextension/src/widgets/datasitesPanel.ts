/**
 * The researchers' "Datasites" sidebar: connect with URL + token (the token
 * goes to the server extension and is never kept in the page), connected sites
 * with health, their datasets with schema and a mock preview, and which sites
 * the current notebook targets. The connections come from the model's poll.
 */
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { siteBudgets } from '../budgets';
import { RemoteKernelModel } from '../model';
import { RemoteCellController } from '../remoteCells';
import { IBudgetsPage, IConnection } from '../tokens';
import { el, errorText } from './dom';

export class DatasitesPanel extends Widget {
  private renderedKey = '';
  private readonly form = el('form', 'rk-ConnectForm');
  private readonly messageNode = el('div', 'rk-Message');
  private readonly listNode = el('div', 'rk-Connections');
  private readonly targetsNode = el('div', 'rk-Targets');

  constructor(
    private readonly model: RemoteKernelModel,
    private readonly controller: RemoteCellController,
    private readonly tracker: INotebookTracker
  ) {
    super();
    this.id = 'remote-kernel-datasites';
    this.addClass('rk-Panel');
    this.addClass('rk-DatasitesPanel');
    this.title.caption = 'Datasites';
    this.node.appendChild(el('h2', '', 'Datasites'));
    this.buildForm();
    this.node.append(this.form, this.messageNode);
    this.node.appendChild(el('h3', '', 'This notebook runs remote cells at'));
    this.node.appendChild(this.targetsNode);
    this.node.appendChild(el('h3', '', 'Connected'));
    this.node.appendChild(this.listNode);
    tracker.currentChanged.connect(() => this.renderTargets());
    model.connectionsChanged.connect(this.onConnections, this);
    model.connectionsFailed.connect(this.onConnectionsFailed, this);
    model.budgetsChanged.connect(this.renderBudgets, this);
  }

  dispose(): void {
    this.model.budgetsChanged.disconnect(this.renderBudgets, this);
    this.model.connectionsChanged.disconnect(this.onConnections, this);
    this.model.connectionsFailed.disconnect(this.onConnectionsFailed, this);
    super.dispose();
  }

  private buildForm(): void {
    const field = (
      name: string,
      label: string,
      type = 'text',
      placeholder = ''
    ) => {
      const input = el('input', `rk-Input rk-Input-${name}`);
      input.name = name;
      input.type = type;
      input.placeholder = placeholder;
      input.setAttribute('aria-label', label);
      input.autocomplete = 'off';
      this.form.appendChild(input);
      return input;
    };
    const url = field(
      'url',
      'Datasite URL',
      'url',
      'https://datasite.example.org'
    );
    const token = field('token', 'Token', 'password', 'token (rk_…)');
    const name = field('name', 'Name', 'text', 'name (optional)');
    const submit = el(
      'button',
      'jp-Button jp-mod-accept rk-Connect',
      'Connect'
    );
    submit.type = 'submit';
    this.form.appendChild(submit);
    this.form.onsubmit = event => {
      event.preventDefault();
      submit.disabled = true;
      this.messageNode.classList.remove('rk-mod-ok');
      this.messageNode.textContent = 'Connecting…';
      this.model
        .connect(url.value.trim(), token.value, name.value.trim())
        .then(connection => {
          this.messageNode.classList.add('rk-mod-ok');
          this.messageNode.textContent = `Connected to ${connection.name} as ${connection.user} (${connection.role}).`;
          url.value = '';
          name.value = '';
        })
        .catch(error => {
          this.messageNode.textContent = errorText(error);
        })
        .finally(() => {
          // The token is never kept in the page, even after a failure.
          token.value = '';
          submit.disabled = false;
        });
    };
  }

  private onConnectionsFailed(_: RemoteKernelModel, message: string): void {
    this.messageNode.textContent = message;
  }

  private onConnections(
    _: RemoteKernelModel,
    connections: IConnection[]
  ): void {
    // Re-render only when the connections changed, so that open datasets and mock
    // previews stay open; otherwise just refresh the health dots.
    const key = JSON.stringify(
      connections.map(c => [c.name, c.url, c.user, c.role])
    );
    if (key !== this.renderedKey) {
      this.renderedKey = key;
      this.renderList(connections);
    } else {
      for (const connection of connections) {
        const item = this.listNode.querySelector<HTMLElement>(
          `.rk-Connection[data-site="${connection.name}"] .rk-Health`
        );
        if (item) {
          this.renderHealth(item, connection);
        }
      }
    }
    this.renderTargets();
  }

  private renderHealth(dot: HTMLElement, connection: IConnection): void {
    const health = connection.health;
    dot.className = `rk-Health ${health?.ok ? 'rk-mod-ok' : 'rk-mod-down'}`;
    dot.title = health?.ok
      ? `healthy (${health.latency_ms} ms, datasite ${health.datasite})`
      : `unreachable: ${health?.message ?? 'unknown'}`;
  }

  private renderTargets(): void {
    this.targetsNode.textContent = '';
    const panel: NotebookPanel | null = this.tracker.currentWidget;
    const sites = this.model.researcherSites;
    if (!panel) {
      this.targetsNode.appendChild(el('div', 'rk-Empty', 'No notebook open.'));
      return;
    }
    if (!sites.length) {
      this.targetsNode.appendChild(
        el(
          'div',
          'rk-Empty',
          'Connect to a datasite with a researcher token first.'
        )
      );
      return;
    }
    const chosen = new Set(this.controller.notebookTargets(panel));
    for (const site of sites) {
      const label = el('label', 'rk-Target');
      const box = el('input');
      box.type = 'checkbox';
      box.checked = chosen.has(site);
      box.dataset.site = site;
      box.onchange = () => {
        const picked = Array.from(
          this.targetsNode.querySelectorAll<HTMLInputElement>(
            'input[type=checkbox]'
          )
        )
          .filter(b => b.checked)
          .map(b => b.dataset.site as string);
        this.controller.setNotebookTargets(panel, picked);
      };
      label.append(box, document.createTextNode(` ${site}`));
      this.targetsNode.appendChild(label);
    }
  }

  private renderList(connections: IConnection[]): void {
    this.listNode.textContent = '';
    if (!connections.length) {
      this.listNode.appendChild(
        el('div', 'rk-Empty', 'No datasite connected yet.')
      );
    }
    for (const connection of connections) {
      const item = el('details', 'rk-Connection');
      item.dataset.site = connection.name;
      const summary = el('summary');
      const dot = el('span', 'rk-Health', '●');
      this.renderHealth(dot, connection);
      summary.append(
        dot,
        el('b', '', ` ${connection.name} `),
        el(
          'span',
          'rk-Muted',
          `${connection.user} (${connection.role}) · ${connection.url}`
        )
      );
      const remove = el(
        'button',
        'jp-Button rk-Small rk-Disconnect',
        'Disconnect'
      );
      remove.onclick = event => {
        event.preventDefault();
        void this.model.disconnect(connection.name);
      };
      summary.appendChild(remove);
      item.appendChild(summary);
      if (connection.role === 'researcher') {
        const budgets = el('div', 'rk-Budgets');
        budgets.dataset.site = connection.name;
        // Outside the <details> body: the budgets show while the site is closed.
        this.listNode.appendChild(item);
        this.listNode.appendChild(budgets);
      }
      const body = el('div', 'rk-Datasets');
      item.appendChild(body);
      item.ontoggle = () => {
        if (item.open && !body.childElementCount) {
          void this.renderDatasets(connection.name, body);
        }
      };
      if (!item.parentNode) {
        this.listNode.appendChild(item);
      }
    }
    this.renderBudgets(this.model, this.model.budgets);
  }

  /** Each researcher site's privacy budgets: "heart · ε 2.4 of 3 left" (DP tier). */
  private renderBudgets(_: RemoteKernelModel, page: IBudgetsPage): void {
    for (const node of this.listNode.querySelectorAll<HTMLElement>(
      '.rk-Budgets'
    )) {
      const { rows, error } = siteBudgets(page, node.dataset.site ?? '');
      node.textContent = '';
      for (const row of rows) {
        const line = el(
          'div',
          `rk-Budget${row.spent ? ' rk-mod-spent' : ''}`,
          row.text
        );
        line.dataset.dataset = row.dataset;
        line.title = row.title;
        node.appendChild(line);
      }
      if (error) {
        node.appendChild(el('div', 'rk-Budget rk-Message', error));
      }
    }
  }

  private async renderDatasets(site: string, body: HTMLElement): Promise<void> {
    body.textContent = 'Loading datasets…';
    try {
      const datasets = await this.model.datasets(site);
      body.textContent = '';
      for (const dataset of datasets) {
        const block = el('details', 'rk-Dataset');
        block.dataset.dataset = dataset.name;
        block.appendChild(
          el(
            'summary',
            '',
            `${dataset.name} — ${dataset.description || 'no description'}`
          )
        );
        const schema = el('table', 'rk-Table rk-Schema');
        const headRow = schema.createTHead().insertRow();
        headRow.append(el('th', '', 'column'), el('th', '', 'type'));
        const tbody = schema.createTBody();
        for (const column of dataset.columns) {
          const row = tbody.insertRow();
          row.append(el('td', '', column.name), el('td', '', column.dtype));
        }
        block.appendChild(schema);
        const preview = el(
          'button',
          'jp-Button rk-Small rk-Preview',
          'Preview mock'
        );
        const previewBody = el('div', 'rk-MockPreview');
        preview.onclick = () =>
          void this.renderPreview(site, dataset.name, previewBody);
        block.append(preview, previewBody);
        body.appendChild(block);
      }
      if (!datasets.length) {
        body.textContent = 'No datasets.';
      }
    } catch (error) {
      body.textContent = errorText(error);
    }
  }

  private async renderPreview(
    site: string,
    dataset: string,
    body: HTMLElement
  ): Promise<void> {
    body.textContent = 'Loading mock…';
    try {
      const mock = await this.model.mockPreview(site, dataset);
      body.textContent = '';
      body.appendChild(
        el(
          'div',
          'rk-Muted',
          `mock data (synthetic): first ${mock.rows.length} of ${mock.total_rows} rows`
        )
      );
      const table = el('table', 'rk-Table rk-Mock');
      const head = table.createTHead().insertRow();
      for (const column of mock.columns) {
        head.appendChild(el('th', '', column));
      }
      const tbody = table.createTBody();
      for (const values of mock.rows) {
        const row = tbody.insertRow();
        for (const value of values) {
          row.appendChild(el('td', '', value === null ? '' : String(value)));
        }
      }
      const scroller = el('div', 'rk-TableScroll');
      scroller.appendChild(table);
      body.appendChild(scroller);
    } catch (error) {
      body.textContent = errorText(error);
    }
  }
}
