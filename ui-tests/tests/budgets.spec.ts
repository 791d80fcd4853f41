/**
 * The DP tier in JupyterLab. Privacy budgets in the Datasites panel: alice's
 * budget on hungary's heart (ε 3, set by servers.py with `datasite budget`)
 * shows under the site as "heart · ε … of 3 left"; a DP answer released in a
 * notebook says what it cost, and the panel then shows what is left. The
 * reviewer of alice's next (exact) output sees that answer, its SQL and what
 * she spent.
 */
import { expect, test } from '@jupyterlab/galata';

import {
  DATASITES,
  addRemoteCell,
  cell,
  openPanel,
  queueRow,
  remoteNotebook,
  review,
  waitPending
} from './helpers';

const EPSILON = 0.5;
const QUERY = `rk.query("SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex", epsilon=${EPSILON})`;
// The panel polls the budgets with the connections, every 15 s (model.ts).
const POLL = { timeout: 45_000 };

test.use({ autoGoto: true });

test('the Datasites panel shows what is left of a budget after a DP answer', async ({
  page
}) => {
  const panel = await openPanel(page, DATASITES);
  const heart = panel.locator(
    '.rk-Budgets[data-site="hungary"] .rk-Budget[data-dataset="heart"]'
  );
  await expect(heart).toHaveText(/^heart · ε [0-9.]+ of 3 left$/);
  const left = Number((await heart.textContent())!.split(' ')[3]);
  expect(left).toBeGreaterThanOrEqual(EPSILON);
  // A reviewer connection has no budgets to show.
  await expect(
    panel.locator('.rk-Budgets[data-site="hungary-bob"]')
  ).toHaveCount(0);

  await remoteNotebook(page, 'dp-budget.ipynb', QUERY, 'hungary');
  const answer = cell(page, 1).locator(
    '.rk-RemoteOutput[data-rk-state="released"]'
  );
  // Released without a reviewer (hungary asks two for anything else), with its cost.
  await expect(answer).toHaveAttribute(
    'data-rk-label',
    /^hungary · released automatically by policy/,
    { timeout: 60_000 }
  );
  await expect(answer).toContainText(
    `differential privacy: ε=${EPSILON} spent on heart`
  );
  const after = Number((left - EPSILON).toPrecision(3));
  await expect(heart).toHaveText(`heart · ε ${after} of 3 left`, POLL);
  await expect(heart).toHaveAttribute(
    'title',
    /spent in [1-9][0-9]* charges? of 3/
  );

  // An exact table goes to hungary's reviewers; the review shows the DP answer she holds.
  const marker = await addRemoteCell(
    page,
    'dp-exact',
    'rk.data("heart").groupby("sex").size()',
    'hungary'
  );
  const id = await waitPending(page, marker, 'hungary-bob');
  await (await queueRow(page, id, 'hungary-bob')).click();
  const dp = review(page, id, 'hungary-bob').locator(
    '.rk-DpDataset[data-dataset="heart"]'
  );
  await expect(dp.locator('.rk-DpTitle')).toHaveText(
    /^DP answers alice already holds on heart \([1-9][0-9]*\)$/
  );
  await expect(dp.locator('.rk-DpSpending')).toContainText(
    `${after} left of 3`
  );
  await expect(dp.locator('.rk-DpSql').first()).toContainText(
    'SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex'
  );
});
