/**
 * The review in the main area: opened from the Pending outputs queue, it shows
 * the code and the whole withheld table; Approve waits out the undo window,
 * then reaches the researcher's notebook; Undo within the window leaves the
 * output pending; closing the review sends a decision still in its window.
 * The Pending outputs tab, active, keeps a small count badge.
 */
import { expect, test } from '@jupyterlab/galata';

import {
  REVIEWS,
  REVIEWER,
  cell,
  connectResearcher,
  openPath,
  outputState,
  pendingOutput,
  queueRow,
  review,
  reviewTab
} from './helpers';

test.use({ autoGoto: true });
test.describe.configure({ mode: 'serial' });

test('the review opens in the main area; Approve reaches the notebook after the undo window', async ({
  page,
  tmpPath
}) => {
  await connectResearcher(page);
  const id = await pendingOutput(
    page,
    'review-approve.ipynb',
    'df = rk.data("heart")\ndf.groupby("sex").mean().round(1)'
  );
  await expect(cell(page, 1)).toContainText('pending review');
  // A data owner without a notebook open: the review gets the main area's width
  // (beside an open notebook it would open on the right, as in the next test).
  await page.notebook.save();
  await page.notebook.close(true);

  const row = await queueRow(page, id);
  await row.click();
  const widget = review(page, id);
  await expect(widget).toBeVisible();
  await expect(reviewTab(page, id)).toHaveCount(1);

  // Who, the code with line numbers, the whole table (every row and column in view).
  await expect(widget.locator('.rk-ReviewHead')).toContainText(
    `alice at ${REVIEWER}`
  );
  await expect(widget.locator('.rk-CodeText')).toContainText(
    'df.groupby("sex").mean().round(1)'
  );
  await expect(widget.locator('.rk-CodeGutter')).toHaveText(/^1\n2\n3$/);
  const table = widget.locator('.rk-WithheldOutput table');
  await expect(table.locator('tbody tr')).toHaveCount(2);
  const lastColumn = table.locator('thead tr').first().locator('th').last();
  await expect(lastColumn).toHaveText('num');
  await expect(lastColumn).toBeInViewport();
  await expect(widget.locator('.rk-History')).not.toContainText('Loading');
  await expect(widget.locator('.rk-Evidence')).toContainText('Filter verdict');

  // The active Pending outputs tab keeps a small badge (it used to fill the tab).
  const tab = page.locator(`.jp-SideBar [data-id="${REVIEWS}"]`);
  await expect(tab).toHaveAttribute('data-rk-count', /[1-9]/);
  const badge = await tab.evaluate(node => {
    const style = getComputedStyle(node, '::before');
    const border = getComputedStyle(node, '::after');
    return {
      width: parseFloat(style.width),
      height: parseFloat(style.height),
      activeBorder: border.backgroundColor
    };
  });
  expect(badge.width).toBeLessThan(30);
  expect(badge.activeBorder).not.toBe('rgb(198, 40, 40)');
  expect(badge.height).toBeLessThan(20);

  await widget.locator('button.rk-Approve').click();
  const pending = widget.locator('.rk-PendingDecision');
  await expect(pending).toContainText(/Approved — Undo \([1-5] s\)/);
  await expect(row.locator('.rk-PendingDecision')).toContainText('Approved');
  // Not sent yet: the datasite still has it pending.
  expect(await outputState(page, id)).toBe('pending');

  await expect.poll(() => outputState(page, id)).toBe('released');
  await expect(widget.locator('.rk-Decision')).toContainText('released by bob');
  await expect(row).toHaveCount(0);
  // The decision reaches the researcher's notebook.
  await openPath(page, `${tmpPath}/review-approve.ipynb`);
  await expect(cell(page, 1).locator('.jp-OutputArea')).toContainText(
    'thalach',
    { timeout: 30_000 }
  );
  await expect(cell(page, 1)).toContainText('released');
});

test('Undo within the window leaves the output pending; closing the review sends a decision', async ({
  page
}) => {
  await connectResearcher(page);
  const id = await pendingOutput(
    page,
    'review-undo.ipynb',
    'print("patients", len(rk.data("heart")) > 0)'
  );
  const row = await queueRow(page, id);
  // Enter on the selected row opens the review; opening it again reuses it.
  await row.click();
  await page.locator(`#${REVIEWS}`).focus();
  await page.keyboard.press('Enter');
  const widget = review(page, id);
  await expect(widget).toBeVisible();
  await expect(reviewTab(page, id)).toHaveCount(1);

  await widget.locator('.rk-ReviewView').focus();
  await page.keyboard.press('a'); // approve, as in the queue
  await expect(widget.locator('.rk-PendingDecision')).toContainText(
    'Approved — Undo'
  );
  await widget.locator('button.rk-Undo').click();
  await expect(widget.locator('button.rk-Approve')).toBeVisible();
  await page.waitForTimeout(7000); // past the window: nothing was sent
  expect(await outputState(page, id)).toBe('pending');
  await expect(row).toBeVisible();
  await expect(row.locator('.rk-PendingDecision')).toHaveCount(0);
  await expect(cell(page, 1)).toContainText('pending review');

  // Deny with a comment, and close the review at once: the denial is sent now.
  await widget.locator('.rk-Comment').fill('print an aggregate instead');
  await widget.locator('button.rk-Deny').click();
  await expect(widget.locator('.rk-PendingDecision')).toContainText(
    'Denied — Undo'
  );
  await reviewTab(page, id).locator('.lm-TabBar-tabCloseIcon').click();
  await expect(widget).toHaveCount(0);
  await expect
    .poll(() => outputState(page, id), { timeout: 3000 })
    .toBe('denied');
  await expect(cell(page, 1)).toContainText(
    'denied by bob: print an aggregate instead',
    { timeout: 30_000 }
  );
});
