// Scoped keys and the three quota classes in a real browser, real shim, real
// database: a key created with only `read` shows its badge and comes back
// from GET /keys with its scopes; after real traffic (captured plugin
// requests with an ingest key, API calls with a read key) the Usage page
// shows api, ingest and dashboard with exactly the figures GET /usage gave
// it, ingest per service; a service that floods its budget is slowed, listed
// first, and the others keep theirs; the last 24 hours are shown by class.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { startShim, launchBrowser, openPage, shot, replay, sql } from './lib.mjs';

let shim;
let browser;
let page;
let ingestKey;
let readKey;
const FIELDS = { limit: 'limit', burst: 'burst', used: 'used', remaining: 'remaining', reset: 'reset_seconds',
  refused_this_hour: 'refused_this_hour', refused_24h: 'refused_24h', account_limit: 'account_limit',
  account_remaining: 'account_remaining' };

before(async () => {
  shim = await startShim();
  browser = await launchBrowser();
  page = await openPage(browser.context, { allow: [/status of 429/] });
  await page.goto(`${shim.base}/signup`);
  await page.fill('#name', 'Usage Test');
  await page.fill('#email', `usage-${randomUUID()}@example.com`);
  await page.fill('#password', 'a usage password');
  await page.click('button[type=submit]');
  await page.waitForURL(/\/dashboard\/onboarding$/);
});
after(async () => { await browser?.close(); shim?.stop(); });

const apiGet = (path, key) => fetch(`${shim.base}/api/v1${path}`, { headers: { 'X-Lattice-API-Key': key } });
// The dashboard's own session, from inside the page.
const sessionGet = (path) => page.evaluate(async (p) => { const r = await fetch(`/api/v1${p}`); return { status: r.status, body: await r.json() }; }, path);

async function createKey(name, scopes) {
  await page.fill('#new-key-name', name);
  await page.setChecked('#scope-ingest', scopes.includes('ingest'));
  await page.setChecked('#scope-read', scopes.includes('read'));
  const created = page.waitForResponse((r) => r.url().endsWith('/api/v1/keys') && r.request().method() === 'POST');
  await page.click('button:has-text("Create key")');
  assert.equal((await created).status(), 201);
  await page.locator('[data-secret]', { hasText: /ltc_/ }).waitFor();
  const secret = (await page.locator('[data-secret]').innerText()).trim();
  await page.locator(`tr:has-text("${name}") [data-scopes]`).waitFor();
  return secret;
}

test('keys: the form defaults to ingest; a read-only key shows its badge and GET /keys returns its scopes', async () => {
  await page.goto(`${shim.base}/dashboard/keys`);
  await page.locator('#scope-ingest').waitFor();
  assert.equal(await page.isChecked('#scope-ingest'), true, 'ingest is checked by default');
  assert.equal(await page.isChecked('#scope-read'), false, 'read is not');
  // each scope explains itself, tied to its checkbox
  assert.match(await page.locator('#scope-ingest-hint').innerText(), /plugins/i);
  assert.match(await page.locator('#scope-read-hint').innerText(), /read/i);
  assert.equal(await page.locator('#scope-read').getAttribute('aria-describedby'), 'scope-read-hint');

  // no scope at all: refused in the form, nothing sent
  let posted = 0;
  const count = (r) => { if (r.url().endsWith('/api/v1/keys') && r.method() === 'POST') posted++; };
  page.on('request', count);
  await page.fill('#new-key-name', 'nothing');
  await page.uncheck('#scope-ingest');
  await page.click('button:has-text("Create key")');
  await page.locator('#key-form-error').waitFor({ state: 'visible' });
  assert.match(await page.locator('#key-form-error').innerText(), /at least one scope/);
  page.off('request', count);
  assert.equal(posted, 0);

  readKey = await createKey('reader', ['read']);
  assert.match(readKey, /^ltc_/);
  assert.equal(await page.locator('tr:has-text("reader") [data-scopes]').getAttribute('data-scopes'), 'read');
  assert.equal(await page.locator('tr:has-text("reader") [data-scopes] .badge').innerText(), 'read');
  assert.match(await page.locator('[role=status]:has([data-secret])').innerText(), /plugins cannot send data with it/);
  ingestKey = await createKey('plugin', ['ingest']);
  assert.equal(await page.locator('tr:has-text("plugin") [data-scopes]').getAttribute('data-scopes'), 'ingest');
  assert.match(await page.locator('[role=status]:has([data-secret])').innerText(), /LATTICE_API_KEY/);
  const both = await createKey('both', ['ingest', 'read']);
  assert.match(both, /^ltc_/);
  assert.equal(await page.locator('tr:has-text("both") [data-scopes]').getAttribute('data-scopes'), 'ingest read');
  await shot(page, 'dashboard-keys-scopes');

  const keys = await sessionGet('/keys');
  assert.equal(keys.status, 200);
  const byName = Object.fromEntries(keys.body.keys.map((k) => [k.name, k]));
  assert.deepEqual(byName.reader.scopes, ['read']);
  assert.deepEqual(byName.plugin.scopes, ['ingest']);
  assert.deepEqual([...byName.both.scopes].sort(), ['ingest', 'read']);
  // every key comes back with its scopes
  for (const k of keys.body.keys) assert.ok(Array.isArray(k.scopes) && k.scopes.length > 0, `${k.name} has scopes`);

  // and they are what the server enforces
  assert.equal((await apiGet('/services', readKey)).status, 200);
  assert.equal((await apiGet('/services', ingestKey)).status, 403);
  assert.equal((await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', readKey)).status, 403);
  assert.deepEqual(page.problems, []);
});

// The figures drawn by the Usage page, read in one go from the DOM.
async function drawn() {
  return page.evaluate(() => {
    const figures = (el) => Object.fromEntries([...el.querySelectorAll('[data-field]')].map((d) => [d.dataset.field, d.dataset.value]));
    return {
      loads: document.querySelector('[data-usage]')?.dataset.loaded,
      classes: Object.fromEntries([...document.querySelectorAll('.usage-class')].map((c) => [c.dataset.class, { text: c.innerText, figures: figures(c) }])),
      services: [...document.querySelectorAll('table[aria-label="Ingest by service"] tbody tr')].map((r) => ({ service: r.dataset.service, text: r.innerText, figures: figures(r) })),
    };
  });
}

// Opens the Usage page and returns the GET /usage answer it drew, with what it drew.
async function openUsage() {
  const answer = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/v1/usage' && r.request().method() === 'GET');
  await page.goto(`${shim.base}/dashboard/usage`);
  const body = await (await answer).json();
  await page.locator('[data-usage][data-loaded]').waitFor();
  const d = await drawn();
  assert.equal(d.loads, '1', 'the page drew the answer we read (no poll in between)');
  return { body, d };
}

function sameFigures(d, body) {
  for (const cls of ['api', 'ingest', 'dashboard']) {
    const c = body.classes[cls];
    assert.ok(c, `GET /usage has class ${cls}`);
    const shown = d.classes[cls];
    assert.ok(shown, `the page shows class ${cls}`);
    assert.ok(Object.keys(shown.figures).length >= 5, `${cls} shows its figures`);
    for (const [field, value] of Object.entries(shown.figures)) {
      const v = c[FIELDS[field]];
      assert.equal(value, v == null ? '' : String(v), `${cls}.${FIELDS[field]}`);
    }
    for (const field of ['limit', 'used', 'refused_this_hour', 'refused_24h']) assert.ok(field in shown.figures, `${cls} shows ${field}`);
  }
  for (const field of ['remaining', 'reset', 'burst']) {
    assert.ok(field in d.classes.api.figures, `api shows ${field}`);
    assert.ok(field in d.classes.dashboard.figures, `dashboard shows ${field}`);
  }
  assert.match(d.classes.api.text, /resets in \d+ (min|s)|resets now/);
  // ingest: one row per service, the same figures
  const services = body.classes.ingest.services;
  assert.equal(d.services.length, services.length);
  for (const s of services) {
    const row = d.services.find((r) => r.service === s.service);
    assert.ok(row, `a row for ${s.service}`);
    for (const field of ['used', 'remaining', 'reset', 'refused_this_hour', 'refused_24h']) {
      assert.equal(row.figures[field], String(s[FIELDS[field]]), `${s.service}.${FIELDS[field]}`);
    }
  }
}

const svc = (body, name) => body.classes.ingest.services.find((s) => s.service === name);

test('usage: after real traffic the three classes and each service match GET /usage', async () => {
  // plugin traffic with the ingest key: 3 requests from capture-demo, 1 from billing-demo
  for (const f of ['001-POST-api_v1_ingest_metadata.json', '003-POST-api_v1_performance_traces_batch.json', '004-POST-api_v1_errors_batch.json']) {
    const r = await replay(shim.base, f, ingestKey);
    assert.ok(r.status < 300, `${f}: ${r.status} ${r.body}`);
  }
  assert.equal((await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', ingestKey, 'billing-demo')).status, 200);
  // a script's API calls with the read key
  for (let i = 0; i < 5; i++) assert.equal((await apiGet('/services', readKey)).status, 200);
  const viaKey = await apiGet('/usage', readKey);
  assert.equal(viaKey.status, 200);
  const k = await viaKey.json();
  assert.equal(k.classes.api.limit, 1000);
  assert.equal(k.classes.dashboard.limit, 7200);
  assert.equal(k.classes.ingest.limit, 3600);
  assert.equal(k.classes.ingest.account_limit, 360000);
  assert.ok(k.classes.api.used >= 7, `api used ${k.classes.api.used}`);   // 1 + 5 + this one
  assert.ok(svc(k, 'capture-demo').used >= 3);
  assert.equal(svc(k, 'billing-demo').used, 1);

  const { body, d } = await openUsage();
  sameFigures(d, body);
  // the page's own request is the dashboard's, not the API's
  if (body.this_hour?.start === k.this_hour?.start) {
    assert.equal(body.classes.api.used, k.classes.api.used, 'the dashboard did not spend the API class');
    assert.deepEqual(body.classes.ingest.services.map((s) => [s.service, s.used]).sort(),
      k.classes.ingest.services.map((s) => [s.service, s.used]).sort(), 'nor the ingest class');
    assert.ok(body.classes.dashboard.used > k.classes.dashboard.used);
  }
  // busiest first when nothing was refused
  assert.deepEqual(d.services.map((r) => r.service), ['capture-demo', 'billing-demo']);
  assert.match(d.classes.ingest.text, /3,600 \/ hour per service/);
  assert.match(d.classes.ingest.text, /360,000 \/ hour/);
  assert.match(d.classes.api.text, /1,000 \/ hour/);
  assert.match(d.classes.dashboard.text, /7,200 \/ hour/);
  // a meter per class, labelled
  assert.equal(await page.locator('.usage-class [role=meter][aria-label]').count(), 3);
  await shot(page, 'dashboard-usage');
  assert.deepEqual(page.problems, []);
});

test('usage: a service flooding its budget is slowed and listed first; the others keep theirs', async () => {
  // burst 120 per service: 160 at once cannot all pass
  const statuses = [];
  for (let i = 0; i < 16; i++) {
    const batch = await Promise.all(Array.from({ length: 10 }, () => replay(shim.base, '001-POST-api_v1_ingest_metadata.json', ingestKey, 'noisy-demo')));
    statuses.push(...batch);
  }
  const refused = statuses.filter((r) => r.status === 429);
  assert.deepEqual(statuses.filter((r) => r.status !== 200 && r.status !== 429).map((r) => `${r.status} ${r.body}`), []);
  assert.ok(refused.length > 0, 'some were refused');
  assert.ok(Number(refused[0].headers.get('retry-after')) > 0, 'with Retry-After');
  // the other services were not touched
  assert.equal((await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', ingestKey)).status, 200);
  assert.equal((await apiGet('/services', readKey)).status, 200);

  sql('SELECT lattice.rate_flush_usage()');   // the last 24 h are read from the rolled-up hours
  const { body, d } = await openUsage();
  sameFigures(d, body);
  const noisy = svc(body, 'noisy-demo');
  assert.equal(noisy.refused_this_hour, refused.length);
  assert.ok(noisy.refused_24h >= refused.length);
  assert.equal(svc(body, 'capture-demo').refused_this_hour, 0);
  assert.ok(body.classes.ingest.refused_this_hour >= refused.length);
  assert.equal(body.classes.api.refused_this_hour, 0);
  assert.equal(body.classes.dashboard.refused_this_hour, 0);
  assert.equal(d.services[0].service, 'noisy-demo', 'refused first');
  assert.match(d.services[0].text, /slowed/);
  assert.equal(await page.locator('table[aria-label="Ingest by service"] tr.refused').count(), 1);
  await shot(page, 'dashboard-usage-refused');
  assert.deepEqual(page.problems, []);
});

test('usage: the last 24 hours by class, once the hour is rolled up', async () => {
  sql('SELECT lattice.rate_flush_usage()');
  const { body } = await openUsage();
  assert.ok(Array.isArray(body.history) && body.history.length > 0, 'history has the current hour');
  const now = body.history[0];
  assert.ok(now.classes, 'each hour is split by class');
  await page.locator('.usage-hours summary').click();
  const hour = new Date(Math.floor(Date.parse(now.hour) / 3600000) * 3600000).toISOString();
  const row = page.locator(`table[aria-label="Requests per hour by class"] tr[data-hour="${hour}"]`);
  await row.waitFor();
  const cells = (await row.locator('td').allInnerTexts()).map((t) => Number(t.replace(/,/g, '')));
  const cls = (c, f = 'requests') => Number(now.classes[c]?.[f] ?? 0);
  const refused = cls('api', 'refused') + cls('ingest', 'refused') + cls('dashboard', 'refused');
  assert.deepEqual(cells, [cls('api'), cls('ingest'), cls('dashboard'), refused]);
  assert.ok(cls('api') >= 7 && cls('ingest') >= 5 && cls('dashboard') >= 1, JSON.stringify(now));
  assert.ok(cls('ingest', 'refused') > 0, JSON.stringify(now));
  // the chart draws a stack per class
  for (const c of ['api', 'ingest', 'dashboard']) assert.ok(await page.locator(`svg.chart rect.c-${c}`).count() > 0, `bars of ${c}`);
  await shot(page, 'dashboard-usage-history');
  assert.deepEqual(page.problems, []);
});
