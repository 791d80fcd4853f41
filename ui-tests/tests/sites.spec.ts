/**
 * A datasite that dies while the lab runs: JupyterLab stays up, the Datasites
 * panel shows that site unreachable (a red dot, with the reason), and healthy
 * again once it is back. servers.py kills the site's server with SIGKILL (a
 * crash) and starts it again on the same port, as the demo's supervisor does.
 */
import { expect, test } from '@jupyterlab/galata';
import { Page } from '@playwright/test';
import * as fs from 'fs';
import * as path from 'path';

import { DATASITES, connectResearcher, openPanel } from './helpers';

const CONTROL = path.resolve(__dirname, '..', '.servers', 'control');
// The panel checks its connections' health every 15 s (model.ts POLL_INTERVALS).
const POLL = { timeout: 45_000 };

test.use({ autoGoto: true });

/** Ask servers.py to kill a site or start it again; resolves once it is done. */
async function control(site: string, action: 'kill' | 'start'): Promise<void> {
  fs.mkdirSync(CONTROL, { recursive: true });
  const done = path.join(CONTROL, `${site}.${action}.done`);
  fs.rmSync(done, { force: true });
  fs.writeFileSync(path.join(CONTROL, `${site}.${action}`), '');
  await expect
    .poll(() => fs.existsSync(done), { timeout: 60_000, intervals: [200] })
    .toBe(true);
  const answer = JSON.parse(fs.readFileSync(done, 'utf-8'));
  expect(answer.ok, answer.message).toBe(true);
}

function health(page: Page, connection: string) {
  return page.locator(
    `#remote-kernel-datasites .rk-Connection[data-site="${connection}"] .rk-Health`
  );
}

test('a site killed while the lab runs shows as down, then up after its restart', async ({
  page
}) => {
  // cleveland-bob and hungary are saved by servers.py before the lab starts; alice
  // connects to cleveland too (the budgets are asked of researcher connections).
  await connectResearcher(page);
  await openPanel(page, DATASITES);
  await expect(health(page, 'cleveland-bob')).toHaveClass(/rk-mod-ok/);
  await expect(health(page, 'hungary')).toHaveClass(/rk-mod-ok/);

  let killed = false;
  try {
    await control('cleveland', 'kill');
    killed = true;
    await expect(health(page, 'cleveland-bob')).toHaveClass(
      /rk-mod-down/,
      POLL
    );
    await expect(health(page, 'cleveland-bob')).toHaveAttribute(
      'title',
      /unreachable/
    );
    // A researcher connection to it: its budgets cannot be fetched, and the panel says so.
    await expect(
      page.locator(
        '#remote-kernel-datasites .rk-Budgets[data-site="cleveland"]'
      )
    ).toContainText('budgets not available: cleveland: cannot reach', POLL);
    // Nothing else went down with it: the other site, and JupyterLab itself.
    await expect(health(page, 'hungary')).toHaveClass(/rk-mod-ok/);
    expect((await page.request.get('/api/status')).ok()).toBe(true);
    await expect(page.locator('#remote-kernel-datasites')).toBeVisible();

    await control('cleveland', 'start');
    killed = false;
    await expect(health(page, 'cleveland-bob')).toHaveClass(/rk-mod-ok/, POLL);
    await expect(health(page, 'cleveland-bob')).toHaveAttribute(
      'title',
      /healthy .*datasite cleveland/
    );
  } finally {
    if (killed) {
      await control('cleveland', 'start'); // the specs after this one need it
    }
  }
});
