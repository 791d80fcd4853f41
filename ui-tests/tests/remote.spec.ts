/**
 * The main flows, in a real JupyterLab against real datasites (see servers.py):
 * a researcher tags a cell and runs it remotely, a reviewer approves or denies
 * in the Pending outputs panel, released outputs appear in the researcher's
 * cell (also after the notebook was closed), and a two-reviewer release
 * ("1 of 2 approvals — bob approved" for the second reviewer).
 */
import { expect, galata, test } from '@jupyterlab/galata';
import { Page } from '@playwright/test';
import * as path from 'path';

import {
  DATASITES,
  IMAGES,
  REVIEWS,
  cell,
  command,
  connectInPanel,
  openPanel,
  tokens,
  widenSidebar
} from './helpers';

test.use({ autoGoto: true });
test.describe.configure({ mode: 'serial' });

/** A notebook whose first cell imports rk (run locally) and second cell is `source`. */
async function notebookWith(
  page: Page,
  name: string,
  source: string,
  sites: string[]
) {
  await page.notebook.createNew(name);
  await page.notebook.setCell(0, 'code', 'import remote_kernel as rk');
  await page.notebook.runCell(0, true);
  await page.notebook.addCell('code', source);
  await openPanel(page, DATASITES);
  const targets = page.locator(
    '#remote-kernel-datasites .rk-Targets input[type=checkbox]'
  );
  await expect(targets.first()).toBeVisible();
  for (const box of await targets.all()) {
    const site = await box.getAttribute('data-site');
    await box.setChecked(sites.includes(site ?? ''));
  }
}

async function runRemotely(page: Page, index: number): Promise<void> {
  await page.notebook.selectCells(index);
  await cell(page, index).click();
  await page.keyboard.press('Escape');
  await cell(page, index)
    .locator('.jp-cell-toolbar [data-command="remote-kernel:run-remotely"]')
    .click();
}

async function reviewRow(page: Page, site: string, text: string) {
  const panel = await openPanel(page, REVIEWS);
  await panel.locator('.rk-Filter-site').selectOption(site);
  const row = panel.locator('.rk-ReviewRow', { hasText: text }).first();
  await expect(row).toBeVisible();
  await row.click();
  return panel;
}

test('tag a cell, run it remotely, approve it, see the released output', async ({
  page
}) => {
  await openPanel(page, DATASITES);
  await widenSidebar(page);
  const panel = await connectInPanel(page, 'cleveland');
  // The token never stays in the page.
  await expect(panel.locator('input[name=token]')).toHaveValue('');
  expect(await page.content()).not.toContain(tokens().cleveland.alice);

  const site = panel.locator('.rk-Connection[data-site="cleveland"]');
  await site.locator('summary').first().click();
  await site.locator('.rk-Dataset summary').first().click();
  await site.locator('button.rk-Preview').click();
  await expect(site.locator('.rk-Mock tbody tr')).toHaveCount(20);
  await expect(site.locator('.rk-Health.rk-mod-ok')).toBeVisible();

  await notebookWith(
    page,
    'approve.ipynb',
    'df = rk.data("heart")\nprint("rows", len(df) > 0)\ndf.groupby("sex").size()',
    ['cleveland']
  );
  // alice's privacy budgets (servers.py), under each site; the site folded for the picture.
  await expect(
    panel.locator('.rk-Budgets[data-site="hungary"] .rk-Budget')
  ).toHaveText(/^heart · ε [0-9.]+ of 3 left$/);
  await expect(
    panel.locator('.rk-Budgets[data-site="cleveland"] .rk-Budget')
  ).toHaveText('heart · ε 1 of 1 left');
  await site.locator('summary').first().click();
  await panel.screenshot({ path: path.join(IMAGES, 'datasites-panel.png') });

  // Tag with the keyboard shortcut (command mode).
  await page.notebook.selectCells(1);
  await page.keyboard.press('Escape');
  await page.keyboard.press('Alt+r');
  await expect(cell(page, 1)).toHaveClass(/rk-mod-remote/);
  await expect(cell(page, 1).locator('.rk-RemoteBadge')).toHaveText(
    'remote → cleveland'
  );
  const tags = await page.evaluate(() =>
    (
      window as any
    ).jupyterapp.shell.currentWidget.content.activeCell.model.getMetadata(
      'tags'
    )
  );
  expect(tags).toEqual(['remote']);

  await runRemotely(page, 1);
  const badge = cell(page, 1).locator('.rk-SiteRow[data-site="cleveland"]');
  await expect(badge).toContainText('pending');
  await expect(
    cell(page, 1).locator('.jp-OutputArea-output').first()
  ).toContainText('mock');
  await cell(page, 1).screenshot({
    path: path.join(IMAGES, 'remote-cell-pending.png')
  });

  const reviews = await reviewRow(page, 'cleveland-bob', 'alice');
  await expect(reviews.locator('.rk-WithheldOutput')).toBeVisible();
  await expect(reviews.locator('.rk-Code')).toContainText('groupby');
  await expect(
    page.locator('.jp-SideBar [data-id="remote-kernel-reviews"]')
  ).toHaveAttribute('data-rk-count', /[1-9]/);
  await reviews.screenshot({ path: path.join(IMAGES, 'pending-outputs.png') });
  // Keyboard review loop: a approves and moves on to the next output.
  await reviews.focus();
  await page.keyboard.press('a');
  await expect(reviews.locator('.rk-ReviewRow')).toHaveCount(1);
  await page.keyboard.press('a');
  await expect(reviews.locator('.rk-Empty')).toBeVisible();

  const released = cell(page, 1).locator(
    '.rk-RemoteOutput[data-rk-state="released"]'
  );
  await expect(released).toHaveCount(2, { timeout: 30_000 });
  await expect(released.first()).toHaveAttribute(
    'data-rk-label',
    'cleveland · released by bob'
  );
  await expect(released.first()).toContainText('rows True');
  // One label: the kernel's own (in its HTML, for frontends without the extension) is hidden.
  await expect(
    released.first().getByText('cleveland · released by bob')
  ).toBeHidden();
  await expect(badge).toContainText('2 released');
  await cell(page, 1).screenshot({
    path: path.join(IMAGES, 'remote-cell-released.png')
  });
});

test('released outputs that arrive while the notebook is closed appear when reopened', async ({
  page,
  tmpPath
}) => {
  await notebookWith(
    page,
    'reopen.ipynb',
    'print("heart columns", rk.data("heart").shape[1])',
    ['cleveland']
  );
  await command(page, 'remote-kernel:toggle-remote-tag');
  await command(page, 'remote-kernel:run-all-remote'); // the tagged cell 1 only
  await expect(cell(page, 1).locator('.rk-SiteRow')).toContainText('pending');
  await page.notebook.save();
  await page.notebook.close(true);

  const reviews = await reviewRow(page, 'cleveland-bob', 'alice');
  await expect(reviews.locator('.rk-Code')).toContainText('heart columns');
  await reviews.locator('button.rk-Approve').click();
  await expect(reviews.locator('.rk-Empty')).toBeVisible();

  await command(page, 'docmanager:open', { path: `${tmpPath}/reopen.ipynb` });
  await expect(cell(page, 1)).toHaveClass(/rk-mod-remote/);
  const released = cell(page, 1).locator(
    '.rk-RemoteOutput[data-rk-state="released"]'
  );
  await expect(released).toContainText('heart columns', { timeout: 30_000 });
});

test('deny with a comment', async ({ page }) => {
  await notebookWith(
    page,
    'deny.ipynb',
    'print("sexes", rk.data("heart").sex.nunique())',
    ['cleveland']
  );
  await runRemotely(page, 1); // Run remotely tags the cell too
  await expect(cell(page, 1)).toHaveClass(/rk-mod-remote/);
  await expect(cell(page, 1).locator('.rk-SiteRow')).toContainText('pending');

  const reviews = await reviewRow(page, 'cleveland-bob', 'alice');
  await reviews.focus();
  await page.keyboard.press('d'); // without a comment: focus the comment box
  await expect(reviews.locator('.rk-Comment')).toBeFocused();
  await page.keyboard.type('raw rows: aggregate first');
  await page.keyboard.press('Control+Enter');
  await expect(reviews.locator('.rk-Empty')).toBeVisible();

  const denied = cell(page, 1).locator(
    '.rk-RemoteOutput[data-rk-state="denied"]'
  );
  await expect(denied).toContainText(
    'denied by bob: raw rows: aggregate first',
    {
      timeout: 30_000
    }
  );
  await expect(cell(page, 1).locator('.rk-SiteRow')).toContainText('1 denied');
  // The decision is in the history (status filter).
  await reviews.locator('.rk-Filter-status').selectOption('denied');
  const history = reviews.locator('.rk-ReviewRow[data-state="denied"]').first();
  await expect(history).toBeVisible();
  await history.click();
  await expect(reviews.locator('.rk-Decision')).toContainText(
    'denied by bob: raw rows: aggregate first'
  );
});

test('two reviewers release at a two-person site', async ({ page }) => {
  await notebookWith(
    page,
    'two.ipynb',
    'print("mean age", round(rk.data("heart").age.mean(), -1))',
    ['hungary']
  );
  await widenSidebar(page);
  await runRemotely(page, 1);
  await expect(
    cell(page, 1).locator('.rk-SiteRow[data-site="hungary"]')
  ).toContainText('pending');

  let reviews = await reviewRow(page, 'hungary-bob', 'alice');
  await expect(reviews.locator('.rk-Votes')).toHaveText('0 of 2 approvals');
  await reviews.locator('button.rk-Approve').click();
  // Bob has voted: his queue no longer has the output (a second vote would be refused).
  await expect(reviews.locator('.rk-Empty')).toBeVisible();
  // One approval of two: still pending for the researcher; the second reviewer
  // sees how the review stands, on the card and in the detail.
  reviews = await reviewRow(page, 'hungary-dave', 'alice');
  await expect(
    reviews.locator('.rk-ReviewRow.rk-mod-selected .rk-RowVotes')
  ).toHaveText('1 of 2 approvals — bob approved');
  await expect(reviews.locator('.rk-DetailHead .rk-Votes')).toHaveText(
    '1 of 2 approvals — bob approved'
  );
  await expect(cell(page, 1).locator('.rk-SiteRow')).toContainText('pending');
  await reviews.screenshot({ path: path.join(IMAGES, 'second-review.png') });
  await reviews.locator('button.rk-Approve').click();

  const released = cell(page, 1).locator(
    '.rk-RemoteOutput[data-rk-state="released"]'
  );
  await expect(released).toHaveAttribute(
    'data-rk-label',
    'hungary · released by bob, dave',
    {
      timeout: 30_000
    }
  );
  await expect(released).toContainText('mean age');
});

void galata;
