/**
 * A researcher's remote cells, in a real JupyterLab against real datasites: a cell
 * tagged `remote` runs at the notebook's sites with Shift-Enter (no special command),
 * shows one view (a status row per site, then each site's outputs, in the sites'
 * order), and a notebook with remote cells opens unmodified.
 */
import { expect, galata, test } from '@jupyterlab/galata';
import { APIRequestContext, Page } from '@playwright/test';
import * as path from 'path';

import { IMAGES, cell, connectInPanel, openPath, siteApi } from './helpers';

const SOURCE = 'print("columns here:", rk.data("heart").shape[1])';

test.use({ autoGoto: true });
test.describe.configure({ mode: 'serial' });

/** Every reviewer approves every output of alice's request with this code (queues end empty). */
async function approveAll(
  request: APIRequestContext,
  site: string,
  reviewers: string[]
): Promise<void> {
  for (const reviewer of reviewers) {
    const queue: any[] = await siteApi(request, site, reviewer, '/api/reviews');
    const items = Array.isArray(queue) ? queue : ((queue as any).items ?? []);
    for (const item of items) {
      await siteApi(request, site, reviewer, `/api/outputs/${item.id}/review`, {
        decision: 'approve',
        comment: 'fine'
      });
    }
  }
}

async function isDirty(page: Page): Promise<boolean> {
  return page.evaluate(
    () => (window as any).jupyterapp.shell.currentWidget.context.model.dirty
  );
}

test('a tagged cell runs at its sites with Shift-Enter, one view in site order', async ({
  page,
  request,
  tmpPath
}) => {
  // hungary is connected in advance; cleveland now.
  const panel = await connectInPanel(page, 'cleveland');

  await page.notebook.createNew('shift.ipynb');
  await page.notebook.setCell(0, 'code', 'import remote_kernel as rk');
  await page.notebook.runCell(0, true);
  await page.notebook.addCell('code', SOURCE);
  const targets = panel.locator('.rk-Targets input[type=checkbox]');
  await expect(targets.first()).toBeVisible();
  for (const box of await targets.all()) {
    await box.setChecked(true);
  }
  const order = await targets.evaluateAll(boxes =>
    boxes.map(box => box.getAttribute('data-site'))
  );
  // The notebook's targets, in the panel's order: the cell's view follows it.
  expect([...order].sort()).toEqual(['cleveland', 'hungary']);

  const before: any[] = await siteApi(
    request,
    'cleveland',
    'alice',
    '/api/requests'
  );

  // Tag it (command mode, Alt+R), then the ordinary Shift-Enter.
  await page.notebook.selectCells(1);
  await page.keyboard.press('Escape');
  await page.keyboard.press('Alt+r');
  await expect(cell(page, 1)).toHaveClass(/rk-mod-remote/);
  await expect(cell(page, 1).locator('.rk-RemoteBadge')).toHaveText(
    `remote → ${order.join(', ')}`
  );
  await page.keyboard.press('Shift+Enter');

  // The mock run here, then one row per site and each site's placeholder, in order.
  const view = cell(page, 1);
  await expect(view.locator('.jp-OutputArea-output').first()).toContainText(
    'mock'
  );
  const rows = view.locator('.rk-SiteRow');
  await expect(rows).toHaveCount(2);
  await expect(rows.nth(0)).toHaveAttribute('data-site', order[0]!);
  await expect(rows.nth(1)).toHaveAttribute('data-site', order[1]!);
  await expect(
    view.locator('.rk-SiteRow[data-site="cleveland"]')
  ).toContainText('pending review');
  const outputs = view.locator('.rk-RemoteOutput');
  await expect(outputs).toHaveCount(2);
  expect(
    await outputs.evaluateAll(nodes =>
      nodes.map(node => (node as HTMLElement).dataset.rkSite)
    )
  ).toEqual(order);
  await expect(outputs.nth(order.indexOf('cleveland'))).toContainText(
    'pending review at cleveland'
  );
  await view.screenshot({ path: path.join(IMAGES, 'remote-cell-view.png') });

  // The source is untouched, and the request reached the datasite as written.
  expect(await page.notebook.getCellTextInput(1)).toBe(SOURCE);
  const after: any[] = await siteApi(
    request,
    'cleveland',
    'alice',
    '/api/requests'
  );
  const sent = after.filter(
    r => r.code.trim() === SOURCE && !before.some(b => b.id === r.id)
  );
  expect(sent).toHaveLength(1);

  // Released at both sites: the outputs replace their placeholders, still in order.
  await approveAll(request, 'cleveland', ['bob']);
  await approveAll(request, 'hungary', ['bob', 'dave']);
  const released = view.locator('.rk-RemoteOutput[data-rk-state="released"]');
  await expect(released).toHaveCount(2, { timeout: 30_000 });
  expect(
    await released.evaluateAll(nodes =>
      nodes.map(node => (node as HTMLElement).dataset.rkSite)
    )
  ).toEqual(order);
  await expect(released.nth(0)).toContainText('columns here: 14');
  await expect(rows.nth(0)).toContainText('1 released');
  await expect(rows.nth(1)).toContainText('1 released');
  // Once every site has finished, the table is plain HTML (no widget to lose on reopen).
  await expect(view.locator('.jupyter-widgets')).toHaveCount(0);
  await view.screenshot({
    path: path.join(IMAGES, 'remote-cell-view-released.png')
  });
  await page.waitForTimeout(4000); // the kernel's and the poll's last updates are in
  await page.notebook.save();
  await page.waitForTimeout(4000);
  expect(await isDirty(page)).toBe(false); // settled: nothing rewrites the cell

  // Reopened: the extension fetches both requests; nothing changed, nothing written.
  await page.notebook.close(true);
  await openPath(page, `${tmpPath}/shift.ipynb`);
  await expect(cell(page, 1)).toHaveClass(/rk-mod-remote/);
  await expect(
    cell(page, 1).locator('.rk-RemoteOutput[data-rk-state="released"]')
  ).toHaveCount(2);
  await page.waitForTimeout(4000); // a refresh and a poll have run
  expect(await isDirty(page)).toBe(false);
});

test('opening a notebook does not mark it modified', async ({
  page,
  tmpPath
}) => {
  // Run once first: JupyterLab itself writes the kernel's full language_info into a
  // notebook that lacks it when it opens (and so marks it modified); this one has it.
  await page.notebook.createNew('plain.ipynb');
  await page.notebook.setCell(0, 'code', 'x = 1');
  await page.notebook.runCell(0, true);
  await page.notebook.save();
  await page.notebook.close(true);
  await openPath(page, `${tmpPath}/plain.ipynb`);
  await expect(cell(page, 0)).toBeVisible();
  await page.waitForTimeout(4000);
  expect(await isDirty(page)).toBe(false);
  await expect(page.locator('.lm-TabBar-tab.jp-mod-dirty')).toHaveCount(0);
});

void galata;
