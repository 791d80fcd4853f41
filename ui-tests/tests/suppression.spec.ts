/**
 * Approve with suppression: a remote cell prints a crosstab with a count of 1
 * and a zero; the reviewer's review in the main area marks those cells (hints),
 * shows the datasite's suppressed version beside the table, and approving that
 * version releases it: the researcher's cell shows the table with those cells
 * blank, never the small count.
 */
import { expect, test } from '@jupyterlab/galata';
import * as path from 'path';

import {
  IMAGES,
  cell,
  connectResearcher,
  openPath,
  outputState,
  pendingOutput,
  queueRow,
  review,
  reviewTab
} from './helpers';

// The oldest patients are few (usually one), and of one sex: a 1 and a 0 in the True column.
const CROSSTAB =
  'import pandas as pd\nh = rk.data("heart")\n' +
  'pd.crosstab(h["sex"], h["age"] == h["age"].max())';

// Tall enough for the whole review in the screenshot docs/jupyterlab.md shows.
test.use({ autoGoto: true, viewport: { width: 1400, height: 1000 } });

/**
 * A table's body cells as text, row by row; with `marked`, cells with a finding
 * on them as null. Runs in the page (self-contained: Playwright sends its source).
 */
const GRID = (table: Element, marked: boolean): (string | null)[][] =>
  Array.from(table.querySelectorAll('tbody tr')).map(row =>
    Array.from(row.querySelectorAll('td')).map(td =>
      marked && (td as HTMLElement).dataset.rkFinding
        ? null
        : (td.textContent ?? '').trim()
    )
  );

test('approve with suppression: the researcher gets the table without its small cells', async ({
  page,
  tmpPath
}) => {
  await connectResearcher(page);
  const id = await pendingOutput(page, 'suppress.ipynb', CROSSTAB);
  await expect(cell(page, 1)).toContainText('pending review');
  // The data owner's view: the review alone, as wide as the main area.
  await page.notebook.save();
  await page.notebook.close(true);

  await (await queueRow(page, id)).click();
  const widget = review(page, id);
  await expect(widget).toBeVisible();

  // The hints: the small cell and the zero are marked on the table, and listed once.
  const withheld = widget.locator('.rk-WithheldOutput table');
  await expect(withheld.locator('td[data-rk-finding]')).toHaveCount(2);
  const placed = widget.locator('.rk-FindingsPlaced');
  await expect(placed).toContainText('small-cells-hint');
  await expect(placed).toContainText('zeros-hint');
  await expect(widget.getByText('small-cells-hint (review)')).toHaveCount(1);
  await expect(widget.locator('.rk-Evidence')).not.toContainText('hint');

  // The suppressed version, beside it, blanks exactly the marked cells.
  const variant = widget.locator('.rk-VariantOutput');
  await expect(variant).toContainText(
    'suppressed by the datasite: 2 cell(s) under 10 blanked'
  );
  const original = await withheld.evaluate(GRID, true);
  const blanked = original.map(row => row.map(v => (v === null ? '' : v)));
  const offered = await variant.locator('table').evaluate(GRID, false);
  expect(offered).toEqual(blanked);
  const small = await withheld
    .locator('td[data-rk-finding]')
    .evaluateAll(tds => tds.map(td => (td.textContent ?? '').trim()));
  expect(small.map(Number).every(n => n < 10)).toBe(true);

  // What alice holds from the DP tier here: her budget on heart, no answer yet.
  const dp = widget.locator('.rk-DpDataset[data-dataset="heart"]');
  await expect(dp.locator('.rk-DpTitle')).toHaveText(
    'DP answers alice already holds on heart (0)'
  );
  await expect(dp.locator('.rk-DpSpending')).toHaveText(
    'ε 0 spent, 1 left of 1 (0 charges)'
  );
  await widget.screenshot({ path: path.join(IMAGES, 'review-widget.png') });

  await widget.locator('button.rk-ApproveVariant').click();
  await expect(widget.locator('.rk-PendingDecision')).toContainText(
    'Approved with suppression'
  );
  // The original is closed (the suppressed version was released in its place).
  await expect.poll(() => outputState(page, id)).not.toBe('pending');

  // The researcher's cell: the suppressed table, under one label.
  await reviewTab(page, id).locator('.lm-TabBar-tabCloseIcon').click();
  await openPath(page, `${tmpPath}/suppress.ipynb`);
  const released = cell(page, 1).locator(
    '.rk-RemoteOutput[data-rk-state="released"]'
  );
  await expect(released).toContainText('suppressed by the datasite', {
    timeout: 30_000
  });
  await expect(released).toHaveAttribute(
    'data-rk-label',
    /^cleveland · released by bob/
  );
  await expect(released.getByText(/^cleveland · released/)).toBeHidden();
  const shown = await released.locator('table').evaluate(GRID, false);
  expect(shown).toEqual(blanked);
});
