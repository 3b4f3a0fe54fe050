// Regenerates the landing page's dashboard screenshots (web/public/shots)
// from the demo account that `make run` seeds.  Not a test: run by hand
// against a cluster (PG* env), then `make web`.
//   node tests/browser/shots.mjs
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { startShim, launchBrowser, openPage, root } from './lib.mjs';

execFileSync('psql', ['-XAtq', '-f', `${root}/scripts/demo_seed.sql`], { stdio: 'ignore' });
const shim = await startShim();
const browser = await launchBrowser();
try {
  const page = await openPage(browser.context);
  await page.goto(`${shim.base}/login`);
  await page.fill('#email', 'demo@lattice.local');
  await page.fill('#password', 'lattice-demo-password');
  await page.click('button[type=submit]');
  await page.waitForURL(/\/dashboard/);
  mkdirSync(`${root}/web/public/shots`, { recursive: true });
  await page.goto(`${shim.base}/dashboard/graph?depth=0`);
  await page.locator('.graph-box[data-ready=true]').waitFor();
  await page.click('#impact-toggle');
  await page.fill('#g-search', 'payments');
  await page.press('#g-search', 'Enter');
  await page.locator('#impact-summary').waitFor();
  await page.fill('#g-search', '');
  await page.click('text=Fit');
  await page.waitForTimeout(400);
  await page.screenshot({ path: `${root}/web/public/shots/graph.png` });
  await page.goto(`${shim.base}/dashboard/services`);
  await page.locator('.svc-card').first().waitFor();
  await page.screenshot({ path: `${root}/web/public/shots/services.png` });
  if (page.problems.length) console.error(page.problems.join('\n'));
} finally {
  await browser.close();
  shim.stop();
}
