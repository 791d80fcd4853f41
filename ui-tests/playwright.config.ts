/**
 * Galata in Debian's Chromium (no browser downloads on these machines), one
 * worker (2 cores), against the servers started by servers.py.
 */
import { defineConfig } from '@playwright/test';
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

const port = process.env.REMOTE_KERNEL_UI_PORT ?? '8891';
const python = process.env.PYTHON ?? 'python';

export default defineConfig({
  ...baseConfig,
  testDir: './tests',
  workers: 1,
  // No retries. The one failure seen mid-suite (a full CI run: the first datasite stopped
  // answering) was a server process that had gone away; the servers are started once per
  // run, so a retry would have met the same dead server. servers.py now records how any
  // server ended, and tests/test_ui.py prints it (see servers.py's docstring).
  retries: 0,
  timeout: 120_000,
  expect: { timeout: 30_000 },
  reporter: [['list']],
  use: {
    ...baseConfig.use,
    baseURL: `http://127.0.0.1:${port}`,
    extraHTTPHeaders: { Authorization: 'token rk-ui-test-token' },
    video: 'off',
    trace: 'off',
    screenshot: 'only-on-failure',
    viewport: { width: 1400, height: 900 },
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync'
      ]
    }
  },
  webServer: {
    command: `${python} servers.py`,
    url: `http://127.0.0.1:${port}/api/status?token=rk-ui-test-token`,
    // servers.py waits for another UI run in this checkout to finish (they share .servers)
    timeout: 600_000,
    reuseExistingServer: false,
    stdout: 'pipe',
    stderr: 'pipe',
    gracefulShutdown: { signal: 'SIGTERM', timeout: 30_000 }
  }
});
