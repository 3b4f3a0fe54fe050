// Live changes in a real browser: the graph view, open on a tenant's graph,
// draws a new edge as soon as a plugin's traces create it, with no reload
// and no poll (the page's EventSource on /api/v1/events), under the strict CSP.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startShim, launchBrowser, openPage, shot, replay } from './lib.mjs';

let shim;
let browser;
before(async () => { shim = await startShim(); browser = await launchBrowser(); });
after(async () => { await browser?.close(); shim?.stop(); });

// An account signed up over HTTP, its session handed to the browser, and an API key.
async function account() {
  const r = await fetch(`${shim.base}/api/v1/auth/signup`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: `live-${randomUUID()}@example.com`, password: 'a live password', name: 'Live' }),
  });
  assert.equal(r.status, 201);
  const cookies = Object.fromEntries(r.headers.getSetCookie().map((c) => { const p = c.split(';')[0]; const i = p.indexOf('='); return [p.slice(0, i), p.slice(i + 1)]; }));
  await browser.context.addCookies(Object.entries(cookies).map(([name, value]) => ({ name, value, url: shim.base })));
  const k = await fetch(`${shim.base}/api/v1/keys`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': cookies.lattice_csrf,
      Cookie: Object.entries(cookies).map(([n, v]) => `${n}=${v}`).join('; ') },
    body: JSON.stringify({ name: 'live' }),
  });
  assert.equal(k.status, 201);
  return (await k.json()).key;
}

test('the graph draws a new edge without a reload when traces arrive', async () => {
  const key = await account();
  assert.equal((await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', key)).status, 200);
  const page = await openPage(browser.context);
  let requests = 0;
  page.on('request', (req) => { if (new URL(req.url()).pathname === '/api/v1/graph') requests++; });
  await page.goto(`${shim.base}/dashboard/graph`);
  await page.locator('.graph-box[data-ready=true]').waitFor();
  assert.match(await page.locator('.graph-stats').innerText(), /1 of 1 services · 0 connections/);
  // the page listens on the stream, not on a poll
  await page.waitForFunction(() => document.documentElement.dataset.live === 'stream');
  await page.evaluate(() => { window.__sameDocument = true; });
  const loads = requests;

  const t = await replay(shim.base, '003-POST-api_v1_performance_traces_batch.json', key);
  assert.ok(t.status < 300, t.body);
  await page.locator('.graph-stats', { hasText: '2 of 2 services · 1 connections' }).waitFor({ timeout: 10000 });
  assert.equal(await page.locator('.graph-box').getAttribute('data-nodes'), '2');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
  assert.ok(requests > loads, 'the graph was fetched again after the event');
  assert.equal(await page.evaluate(() => document.documentElement.dataset.live), 'stream');
  await shot(page, 'dashboard-graph-live');
  assert.deepEqual(page.problems, []);
  await page.close();
});
