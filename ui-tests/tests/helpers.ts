/**
 * What the specs share: the servers' state (servers.py), where screenshots go,
 * the notebook's cells, the sidebar panels, the datasites' own API, and the
 * reviewer's queue and reviews in the main area.
 */
import { expect } from '@jupyterlab/galata';
import { APIRequestContext, Page } from '@playwright/test';
import * as fs from 'fs';
import * as path from 'path';

export const STATE = path.resolve(__dirname, '..', '.servers');
// Screenshots go to docs/images/ only when asked (REMOTE_KERNEL_UI_SCREENSHOTS=docs),
// so that ordinary runs do not rewrite the documentation's images.
export const IMAGES =
  process.env.REMOTE_KERNEL_UI_SCREENSHOTS === 'docs'
    ? path.resolve(__dirname, '..', '..', 'docs', 'images')
    : path.resolve(__dirname, '..', 'test-results', 'screenshots');

/** The reviewer connection to cleveland that servers.py saves. */
export const REVIEWER = 'cleveland-bob';
export const DATASITES = 'remote-kernel-datasites';
export const REVIEWS = 'remote-kernel-reviews';

/** `{site: {url, alice, bob, …}}`: the datasites and their users' tokens (servers.py). */
export function tokens(): any {
  return JSON.parse(fs.readFileSync(path.join(STATE, 'tokens.json'), 'utf-8'));
}

export function cell(page: Page, index: number) {
  return page.locator('.jp-Notebook .jp-Cell').nth(index);
}

/** Runs a JupyterLab command (its result, a widget, cannot cross into the test). */
export async function command(
  page: Page,
  id: string,
  args: object = {}
): Promise<void> {
  await page.evaluate(
    async ({ id, args }) => {
      await (window as any).jupyterapp.commands.execute(id, args);
    },
    { id, args }
  );
}

export async function openPath(page: Page, file: string): Promise<void> {
  await command(page, 'docmanager:open', { path: file });
}

/** Shows a sidebar panel (a click on its tab, unless it is shown); its locator. */
export async function openPanel(page: Page, id: string) {
  const tab = page.locator(`.jp-SideBar [data-id="${id}"]`);
  if ((await tab.getAttribute('aria-selected')) !== 'true') {
    await tab.click();
  }
  const panel = page.locator(`#${id}`);
  await expect(panel).toBeVisible();
  return panel;
}

/** A wider left sidebar: the panels' screenshots in docs/ are readable. */
export async function widenSidebar(page: Page, x = 520): Promise<void> {
  const handle = page
    .locator('#jp-main-split-panel > .lm-SplitPanel-handle')
    .first();
  const box = await handle.boundingBox();
  if (box) {
    const y = box.y + box.height / 2;
    await page.mouse.move(box.x + box.width / 2, y);
    await page.mouse.down();
    await page.mouse.move(x, y, { steps: 5 });
    await page.mouse.up();
  }
}

/** Connects alice to a site in the Datasites panel's form, as a researcher does. */
export async function connectInPanel(page: Page, site: string) {
  const t = tokens()[site];
  const panel = await openPanel(page, DATASITES);
  await panel.locator('input[name=url]').fill(t.url);
  await panel.locator('input[name=token]').fill(t.alice);
  await panel.locator('input[name=name]').fill(site);
  await panel.locator('button.rk-Connect').click();
  await expect(panel.locator('.rk-Message')).toContainText(
    `Connected to ${site} as alice`
  );
  return panel;
}

/** Saves alice's connection to a site through the server extension's API. */
export async function connectResearcher(
  page: Page,
  site = 'cleveland'
): Promise<void> {
  const t = tokens()[site];
  const answer = await page.request.post('/remote-kernel/connections', {
    data: { url: t.url, token: t.alice, name: site }
  });
  expect(answer.ok(), await answer.text()).toBe(true);
}

/** The datasite's own API, as a reviewer or the researcher (not through JupyterLab). */
export async function siteApi(
  request: APIRequestContext,
  site: string,
  user: string,
  route: string,
  body?: object
): Promise<any> {
  const t = tokens()[site];
  const options = { headers: { Authorization: `Bearer ${t[user]}` } };
  const response = body
    ? await request.post(`${t.url}${route}`, { ...options, data: body })
    : await request.get(`${t.url}${route}`, options);
  expect(response.ok()).toBeTruthy();
  return response.json();
}

/** Adds a cell that runs `code` at `site` with `%%remote`, and runs it; its marker line. */
export async function addRemoteCell(
  page: Page,
  name: string,
  code: string,
  site = 'cleveland'
): Promise<string> {
  const marker = `# ${name} ${Date.now()}`;
  await page.notebook.addCell(
    'code',
    `%%remote --site ${site} --no-local\n${marker}\n${code}`
  );
  const last = (await page.notebook.getCellCount()) - 1;
  await page.notebook.runCell(last, true);
  return marker;
}

/**
 * A new notebook whose second cell runs `code` at `site` with `%%remote`, run;
 * the cell's code starts with a marker line naming the run.
 */
export async function remoteNotebook(
  page: Page,
  name: string,
  code: string,
  site = 'cleveland'
): Promise<string> {
  await page.notebook.createNew(name);
  await page.notebook.setCell(
    0,
    'code',
    '%load_ext remote_kernel\nimport remote_kernel as rk'
  );
  await page.notebook.runCell(0, true);
  return addRemoteCell(page, name, code, site);
}

/** The id of the output of the cell with `marker` that waits in `reviewer`'s queue. */
export async function waitPending(
  page: Page,
  marker: string,
  reviewer = REVIEWER
): Promise<number> {
  let id = -1;
  await expect
    .poll(
      async () => {
        const queue = await (
          await page.request.get('/remote-kernel/reviews')
        )
          .json()
          .catch(() => ({ items: [] }));
        const item = queue.items.find(
          (i: any) => i.site === reviewer && i.request.code.includes(marker)
        );
        id = item ? item.id : -1;
        return id;
      },
      { timeout: 60_000 }
    )
    .toBeGreaterThan(0);
  return id;
}

/** A new notebook that runs `code` at cleveland; the id of the output it leaves pending. */
export async function pendingOutput(
  page: Page,
  name: string,
  code: string
): Promise<number> {
  return waitPending(page, await remoteNotebook(page, name, code));
}

/** An output's state as cleveland's reviewer sees it now. */
export async function outputState(page: Page, id: number): Promise<string> {
  const answer = await page.request.get(
    `/remote-kernel/connections/${REVIEWER}/outputs/${id}`
  );
  return (await answer.json()).state;
}

/** The output's row in the Pending outputs queue (cleveland's reviewer unless named). */
export async function queueRow(page: Page, id: number, reviewer = REVIEWER) {
  const panel = await openPanel(page, REVIEWS);
  await panel.locator('.rk-Filter-site').selectOption(reviewer);
  const row = panel.locator(`.rk-ReviewRow[data-key="${reviewer}/${id}"]`);
  await expect(row).toBeVisible();
  return row;
}

/** The review of an output in the main area. */
export function review(page: Page, id: number, reviewer = REVIEWER) {
  return page.locator(`#rk-review-${reviewer}-${id}`);
}

/** The review's tab in the main area's tab bar. */
export function reviewTab(page: Page, id: number) {
  return page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', {
    hasText: `Review: ${REVIEWER} #${id}`
  });
}
