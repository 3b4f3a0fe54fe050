// A graph of 1,000 services and 5,000 edges: the page opens on a focal view
// (never all nodes by default), is interactive, and the depth control widens
// it.  The time it takes is measured by bench/60_web.sh, not asserted here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim, launchBrowser, openPage, shot } from './lib.mjs';
import { seedBigGraph, timeGraph } from './biggraph.mjs';

let shim;
let browser;
before(async () => { shim = await startShim(); browser = await launchBrowser(); });
after(async () => { await browser?.close(); shim?.stop(); });

test('1,000 services / 5,000 edges: focal view, interactive, depth widens it', async () => {
  const account = seedBigGraph(1000, 5000);
  assert.ok(account.edges > 4500, `seeded ${account.edges} edges`);
  const page = await openPage(browser.context);
  const ms = await timeGraph(page, shim.base, account);
  const shown = Number(await page.locator('.graph-box').getAttribute('data-nodes'));
  assert.ok(shown > 0 && shown < 1000, `focal view draws ${shown} of 1000 nodes`);
  assert.match(await page.locator('.graph-stats').innerText(), /of 1,000 services .* focal view/);
  await shot(page, 'dashboard-graph-1000');
  await page.selectOption('#g-depth', '1');
  const one = Number(await page.locator('.graph-box').getAttribute('data-nodes'));
  assert.ok(one < shown, `depth 1 (${one}) draws fewer than depth 2 (${shown})`);
  assert.deepEqual(page.problems, []);
  test.diagnostic?.(`interactive after ${ms} ms`);
  console.log(`# graph of 1000/5000 interactive after ${ms} ms`);
});
