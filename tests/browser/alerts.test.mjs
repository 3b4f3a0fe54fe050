// Alerts (docs/alerts.md) end to end in a real browser, real shim, real
// database: the Alerts view from the navigation; a webhook channel to a
// local receiver (loopback allowed for the test) whose secret is shown once;
// "Send test" reaches the receiver, signed with that secret, and the page
// says delivered; a receiver answering 500 is "Not delivered"; a new secret,
// disable/enable, delete, the delivery log; e-mail channels (the account's
// own address verified at once, another one through /alerts/verify); the
// rules saved and still there after a reload, an invalid value refused with
// its field marked; an incident opened by the alert tick shows in the Alerts
// view, on the service page (and not on a quiet service's) and as a ring on
// its graph node, and is acknowledged and muted through the page.  Every
// change carries the CSRF header; no console error, no CSP violation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID, createHmac, timingSafeEqual } from 'node:crypto';
import { startShim, launchBrowser, openPage, shot, replay, sql } from './lib.mjs';

let shim;
let browser;
let page;
let receiver;
const received = [];               // every request the receiver got
const email = `alerts-${randomUUID()}@example.com`;
const other = `oncall-${randomUUID()}@example.com`;
let userId;
let secret;                        // the webhook's signing secret, as shown once
const changes = [];                // unsafe /api/v1/alerts requests the page made

const q = (s) => s.replace(/'/g, "''");
const until = async (what, fn, ms = 15000) => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};

// A call from the page itself (its cookies, its CSRF token): the API's answer.
function inPage(p, method, path, body) {
  return p.evaluate(async ([m, u, b]) => {
    const csrf = (document.cookie.match(/(?:^|;\s*)lattice_csrf=([^;]*)/) || [])[1];
    const res = await fetch(`/api/v1${u}`, { method: m, credentials: 'same-origin',
      headers: { Accept: 'application/json', ...(b ? { 'Content-Type': 'application/json' } : {}), ...(m !== 'GET' && csrf ? { 'X-CSRF-Token': decodeURIComponent(csrf) } : {}) },
      body: b ? JSON.stringify(b) : undefined });
    return { status: res.status, body: res.status === 204 ? null : await res.json() };
  }, [method, path, body ?? null]);
}

function verifySignature(req, key) {
  const header = req.headers['lattice-signature'] || '';
  const t = (header.match(/(?:^|,)t=(\d+)/) || [])[1];
  const v1 = (header.match(/(?:^|,)v1=([0-9a-f]{64})/) || [])[1];
  if (!t || !v1) return false;
  const want = createHmac('sha256', key).update(`${t}.${req.body}`).digest();
  return timingSafeEqual(want, Buffer.from(v1, 'hex')) && Math.abs(Date.now() / 1000 - Number(t)) < 300;
}

before(async () => {
  // the test cluster lets webhooks reach this machine's receiver over http
  sql('ALTER SYSTEM SET lattice.outbound_allow_loopback = on');
  sql('SELECT pg_reload_conf()');
  await until('the loopback setting', () => sql('SHOW lattice.outbound_allow_loopback') === 'on');
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      received.push({ method: req.method, path: req.url, headers: req.headers, body });
      res.writeHead(req.url === '/fail' ? 500 : 200, { 'Content-Type': 'text/plain' });
      res.end(req.url === '/fail' ? 'nope' : 'ok');
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
  shim = await startShim();
  browser = await launchBrowser();
  // the invalid rule (400) and the failing receiver (502) are expected console lines
  page = await openPage(browser.context, { allow: [/status of 400/, /status of 502/] });
  page.on('request', (r) => {
    if (r.method() !== 'GET' && /\/api\/v1\/alerts\//.test(r.url())) changes.push({ method: r.method(), url: r.url(), csrf: r.headers()['x-csrf-token'] });
  });
});
after(async () => {
  await browser?.close();
  shim?.stop();
  receiver?.close();
  try {
    sql('ALTER SYSTEM RESET lattice.outbound_allow_loopback');
    sql('SELECT pg_reload_conf()');
  } catch { /* the cluster is going away anyway */ }
});

const hookUrl = (path = '/hook') => `http://127.0.0.1:${receiver.address().port}${path}`;
const channel = (name) => page.locator('li.channel', { has: page.locator('.channel-name', { hasText: name }) });

async function alertsLoaded(p = page) {
  await p.goto(`${shim.base}/dashboard/alerts`);
  await p.locator('#rules-form').waitFor();
  await p.locator('#alert-channels > *').first().waitFor();
  await p.locator('#alert-incidents > *').first().waitFor();
}

test('/alerts/verify without a token: the page says so, no console error, no CSP violation', async () => {
  const p = await openPage(browser.context);
  const res = await p.goto(`${shim.base}/alerts/verify`, { waitUntil: 'networkidle' });
  assert.equal(res.status(), 200);
  assert.match(res.headers()['content-security-policy'], /script-src 'self'/);
  assert.match(await p.locator('h1').innerText(), /confirm an alert address/i);
  await p.locator('[data-verify=failed]').waitFor();
  assert.match(await p.locator('#verify-result').innerText(), /incomplete/i);
  assert.deepEqual(p.problems, []);
  await p.close();
});

test('sign-up, then Alerts from the navigation: incidents, channels and rules', async () => {
  await page.goto(`${shim.base}/signup`);
  await page.fill('#name', 'Alerts Test');
  await page.fill('#email', email);
  await page.fill('#password', 'an alerts browser password');
  await page.click('button[type=submit]');
  await page.waitForURL(/\/dashboard\/onboarding$/);
  userId = sql(`SELECT id FROM lattice.users WHERE email = '${q(email)}'`);
  assert.match(userId, /^[0-9a-f-]{36}$/);
  // as if the sign-up's link had been followed
  sql(`UPDATE lattice.users SET email_verified_at = now() WHERE id = '${userId}'`);

  await page.click('nav >> text=Alerts');
  await page.waitForURL(/\/dashboard\/alerts$/);
  await page.locator('#rules-form').waitFor();
  assert.equal(await page.locator('nav a[data-nav=alerts]').getAttribute('aria-current'), 'page');
  await page.locator('#no-open-incidents').waitFor();
  assert.match(await page.locator('#alert-channels').innerText(), /No channel yet/);
  // every rule, with its toggle on by default and its numbers
  for (const r of ['service_down', 'error_rate', 'latency', 'topology', 'ingest_refused']) {
    assert.equal(await page.locator(`#ar-rules-${r}-enabled`).isChecked(), true, r);
  }
  assert.equal(await page.locator('#ar-rules-error_rate-threshold_percent').inputValue(), '5');
  assert.equal(await page.locator('#ar-rules-latency-p95_ms').inputValue(), '1000');
  assert.equal(await page.locator('#ar-cooldown_minutes').inputValue(), '30');
  assert.equal(await page.locator('#ar-recover_after_minutes').inputValue(), '5');
  assert.equal(await page.locator('#ar-rules-topology-new_cycle').isChecked(), true);
  // a direct load of the URL works too (a real file, see web/README.md)
  await alertsLoaded();
  await shot(page, 'dashboard-alerts-empty');
});

test('a webhook channel: its secret is shown once, with a copy button', async () => {
  await page.selectOption('#ch-kind', 'webhook');
  assert.equal(await page.locator('#ch-address').isVisible(), false);
  await page.fill('#ch-name', 'receiver');
  await page.fill('#ch-url', hookUrl());
  const created = page.waitForResponse((r) => r.url().endsWith('/api/v1/alerts/channels') && r.request().method() === 'POST');
  await page.click('#channel-form button[type=submit]');
  const res = await created;
  assert.equal(res.status(), 201, await res.text());
  await page.locator('#channel-secret-box [data-secret]').waitFor();
  secret = (await page.locator('#channel-secret-box [data-secret]').innerText()).trim();
  assert.match(secret, /^whsec_[A-Za-z0-9_-]{40,}$/);
  assert.equal((await res.json()).secret, secret);
  assert.match(await page.locator('#channel-secret-box').innerText(), /will not be shown again/);
  assert.equal(await page.locator('#channel-secret-box button[data-copy]').getAttribute('data-copy-text'), secret);
  await channel('receiver').waitFor();
  const row = await channel('receiver').innerText();
  assert.match(row, /Webhook/);
  assert.match(row, /verified/);
  assert.match(row, /127\.0\.0\.1/);
  assert.ok(!row.includes(secret));
  await shot(page, 'dashboard-alerts-secret');
  // never again: not after a reload, not in the API
  await alertsLoaded();
  assert.ok(!(await page.locator('main').innerText()).includes(secret));
  assert.ok(!JSON.stringify((await inPage(page, 'GET', '/alerts/channels')).body).includes(secret));
});

test('"Send test" reaches the receiver, signed with that secret, and the page says delivered', async () => {
  const before = received.length;
  await channel('receiver').locator('button[data-action=test]').click();
  await channel('receiver').locator('[data-delivered=true]').waitFor();
  assert.match(await channel('receiver').locator('[data-test-result]').innerText(), /Delivered\. The receiver answered 200/);
  const got = received.slice(before).filter((r) => r.path === '/hook');
  assert.equal(got.length, 1);
  assert.equal(got[0].method, 'POST');
  assert.equal(JSON.parse(got[0].body).type, 'test');
  assert.equal(got[0].headers['user-agent'], 'Lattice-Alerts/1');
  assert.ok(verifySignature(got[0], secret), `signature ${got[0].headers['lattice-signature']}`);
  // the delivery log
  await channel('receiver').locator('details.deliveries summary').click();
  const log = channel('receiver').locator('table[aria-label=Deliveries] tbody tr');
  await log.first().waitFor();
  const line = await log.first().innerText();
  assert.match(line, /test/);
  assert.match(line, /done/);
  assert.match(line, /200/);
  // and the channel's "last delivery"
  await until('the last delivery', async () => /done/.test(await channel('receiver').locator('.channel-meta').innerText()));
  await shot(page, 'dashboard-alerts-test-sent');
});

test('a receiver that answers 500: "Not delivered" with the status', async () => {
  await page.selectOption('#ch-kind', 'webhook');
  await page.fill('#ch-name', 'failing');
  await page.fill('#ch-url', hookUrl('/fail'));
  await page.click('#channel-form button[type=submit]');
  await channel('failing').waitFor();
  await channel('failing').locator('button[data-action=test]').click();
  await channel('failing').locator('[data-delivered=false]').waitFor();
  assert.match(await channel('failing').locator('[data-test-result]').innerText(), /Not delivered.*500/s);
  assert.ok(received.some((r) => r.path === '/fail'));
  // delete it
  await channel('failing').locator('button[data-action=delete]').click();
  await page.click('dialog button:has-text("Delete channel")');
  await channel('failing').waitFor({ state: 'detached' });
  const list = (await inPage(page, 'GET', '/alerts/channels')).body.channels;
  assert.deepEqual(list.map((c) => c.name), ['receiver']);
});

test('a new secret is shown once and signs from then on; disable and enable', async () => {
  await channel('receiver').locator('button[data-action=secret]').click();
  await page.click('dialog button:has-text("Make a new secret")');
  await channel('receiver').locator('.channel-secret [data-secret]').waitFor();
  const fresh = (await channel('receiver').locator('.channel-secret [data-secret]').innerText()).trim();
  assert.match(fresh, /^whsec_/);
  assert.notEqual(fresh, secret);
  assert.match(await channel('receiver').locator('.channel-secret').innerText(), /will not be shown again/);
  secret = fresh;
  const before = received.length;
  await channel('receiver').locator('button[data-action=test]').click();
  await until('the second test', () => received.length > before);
  await channel('receiver').locator('[data-delivered=true]').waitFor();
  assert.ok(verifySignature(received.at(-1), secret));

  await channel('receiver').locator('button[data-action=disable]').click();
  await channel('receiver').locator('button[data-action=enable]').waitFor();
  assert.match(await channel('receiver').locator('.channel-head').innerText(), /disabled/);
  assert.equal((await inPage(page, 'GET', '/alerts/channels')).body.channels[0].enabled, false);
  await channel('receiver').locator('button[data-action=enable]').click();
  await channel('receiver').locator('button[data-action=disable]').waitFor();
  assert.equal((await inPage(page, 'GET', '/alerts/channels')).body.channels[0].enabled, true);
});

test('e-mail channels: the own address at once, another through the /alerts/verify link', async () => {
  await page.selectOption('#ch-kind', 'email');
  assert.equal(await page.locator('#ch-url').isVisible(), false);
  await page.fill('#ch-name', 'me');
  await page.fill('#ch-address', email);
  await page.click('#channel-form button[type=submit]');
  await channel('me').locator('[data-verified=true]').waitFor();

  await page.fill('#ch-name', 'on call');
  await page.fill('#ch-address', other);
  await page.click('#channel-form button[type=submit]');
  await channel('on call').locator('[data-verified=false]').waitFor();
  assert.match(await page.locator('#channel-secret-box').innerText(), /confirmation link/);
  assert.equal(await channel('on call').locator('button[data-action=test]').isDisabled(), true);

  const text = await until('the confirmation e-mail', () => sql(`SELECT mail_text FROM lattice.outbox WHERE mail_to = '${q(other)}' ORDER BY id DESC LIMIT 1`));
  const token = (text.match(/\/alerts\/verify\?token=([A-Za-z0-9_-]+)/) || [])[1];
  assert.ok(token, `no /alerts/verify link in:\n${text}`);
  // the recipient need not be signed in: a fresh context
  const p = await openPage(browser.context);
  await p.goto(`${shim.base}/alerts/verify?token=${token}`);
  await p.locator('[data-verify=verified]').waitFor();
  assert.match(await p.locator('#verify-result').innerText(), /alerts will now be sent to/i);
  assert.equal(await p.locator('#verified-address').innerText(), other);
  await shot(p, 'alerts-verify-done');
  assert.deepEqual(p.problems, []);
  await p.close();
  const again = await openPage(browser.context, { allow: [/status of 400/] });
  await again.goto(`${shim.base}/alerts/verify?token=${token}`);
  await again.locator('[data-verify=failed]').waitFor();
  assert.match(await again.locator('#verify-result').innerText(), /no longer works/i);
  assert.deepEqual(again.problems, []);
  await again.close();

  await alertsLoaded();
  await channel('on call').locator('[data-verified=true]').waitFor();
  assert.equal(await channel('on call').locator('button[data-action=test]').isDisabled(), false);
});

test('rules: a change is saved and still there after a reload', async () => {
  await page.fill('#ar-rules-error_rate-threshold_percent', '7.5');
  await page.uncheck('#ar-rules-latency-enabled');
  await page.fill('#ar-cooldown_minutes', '45');
  const put = page.waitForResponse((r) => r.url().endsWith('/api/v1/alerts/rules') && r.request().method() === 'PUT');
  await page.click('#rules-form button[type=submit]');
  assert.equal((await put).status(), 200);
  await page.locator('#rules-saved:visible').waitFor();
  await alertsLoaded();
  assert.equal(await page.locator('#ar-rules-error_rate-threshold_percent').inputValue(), '7.5');
  assert.equal(await page.locator('#ar-rules-latency-enabled').isChecked(), false);
  assert.equal(await page.locator('#ar-cooldown_minutes').inputValue(), '45');
  const api = (await inPage(page, 'GET', '/alerts/rules')).body;
  assert.equal(api.rules.error_rate.threshold_percent, 7.5);
  assert.equal(api.rules.latency.enabled, false);
  assert.equal(api.cooldown_minutes, 45);
  // latency back on for the rest
  await page.check('#ar-rules-latency-enabled');
  await page.click('#rules-form button[type=submit]');
  await page.locator('#rules-saved:visible').waitFor();
});

test('rules: an invalid value is refused with the API\'s message and its field marked', async () => {
  await page.fill('#ar-rules-error_rate-threshold_percent', '500');
  await page.click('#rules-form button[type=submit]');
  await page.locator('#rules-error:visible').waitFor();
  assert.match(await page.locator('#rules-error').innerText(), /threshold_percent must be a number from 0\.1 to 100/);
  const input = page.locator('#ar-rules-error_rate-threshold_percent');
  assert.equal(await input.getAttribute('aria-invalid'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'ar-rules-error_rate-threshold_percent');
  assert.match(await page.locator('#ar-rules-error_rate-threshold_percent-error').innerText(), /from 0\.1 to 100/);
  // only that field
  assert.equal(await page.locator('#rules-form [aria-invalid=true]').count(), 1);
  await shot(page, 'dashboard-alerts-rule-error');
  // a cross-field rule: clear above the threshold
  await page.fill('#ar-rules-error_rate-threshold_percent', '3');
  await page.fill('#ar-rules-error_rate-clear_percent', '4');
  await page.click('#rules-form button[type=submit]');
  await page.locator('#ar-rules-error_rate-clear_percent[aria-invalid=true]').waitFor();
  assert.equal(await input.getAttribute('aria-invalid'), null);
  assert.match(await page.locator('#rules-error').innerText(), /clear_percent must not be above threshold_percent/);
  // nothing was stored
  assert.equal((await inPage(page, 'GET', '/alerts/rules')).body.rules.error_rate.threshold_percent, 7.5);
});

let serviceId;
let quietId;
let incidentId;

test('an incident opened by the tick: in Alerts, on the service page, on the graph; the webhook got it', async () => {
  // a service and its caller from real plugin requests, with an ingest key made by this session
  const key = (await inPage(page, 'POST', '/keys', { name: 'alerts test', scopes: ['ingest'] })).body.key;
  assert.match(key, /^ltc_/);
  assert.equal((await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', key)).status, 200);
  assert.ok((await replay(shim.base, '003-POST-api_v1_performance_traces_batch.json', key)).status < 300);
  assert.equal((await replay(shim.base, '001-POST-api_v1_ingest_metadata.json', key, 'quiet-svc')).status, 200);
  serviceId = sql(`SELECT id FROM lattice.services WHERE user_id = '${userId}' AND name = 'capture-demo'`);
  quietId = sql(`SELECT id FROM lattice.services WHERE user_id = '${userId}' AND name = 'quiet-svc'`);
  assert.match(serviceId, /^[0-9a-f-]{36}$/);

  // it stopped reporting 20 minutes ago; one tick (from an hour back, whatever the worker did) opens the incident
  const before = received.length;
  sql(`UPDATE lattice.services SET last_seen = now() - interval '20 minutes' WHERE user_id = '${userId}' AND id = '${serviceId}'`);
  sql('BEGIN; UPDATE lattice.alert_state SET last_tick_at = NULL; SELECT lattice.alert_tick(); COMMIT;');
  incidentId = sql(`SELECT id FROM lattice.alert_incidents WHERE user_id = '${userId}' AND rule = 'service_down' AND status = 'open' AND service_id = '${serviceId}'`);
  assert.match(incidentId, /^\d+$/);

  await alertsLoaded();
  const item = page.locator(`#alert-incidents li[data-incident-id="${incidentId}"]`);
  await item.waitFor();
  const text = await item.innerText();
  assert.match(text, /Service down/);
  assert.match(text, /capture-demo \(development\) stopped reporting/);
  assert.match(text, /Opened/);
  assert.equal(await item.locator('[data-state=open]').count(), 1);
  assert.equal(await item.locator(`.incident-subject a[href="/dashboard/service?id=${serviceId}"]`).count(), 1);
  await shot(page, 'dashboard-alerts-incident');

  // the service page's strip; none on a quiet service
  await page.click(`#alert-incidents li[data-incident-id="${incidentId}"] .incident-subject a`);
  await page.waitForURL(/\/dashboard\/service\?id=/);
  await page.locator('#service-incidents').waitFor();
  assert.match(await page.locator('#service-incidents').innerText(), /1 open incident[\s\S]*stopped reporting/);
  await shot(page, 'dashboard-service-incident');
  const incidentsAnswer = page.waitForResponse((r) => r.url().includes('/api/v1/alerts/incidents?status=open') && r.url().includes(quietId));
  await page.goto(`${shim.base}/dashboard/service?id=${quietId}`);
  assert.equal((await incidentsAnswer).status(), 200);
  await page.locator('h1:has-text("quiet-svc")').waitFor();
  assert.equal(await page.locator('#service-incidents').count(), 0);

  // the graph: that node has the ring, the others not
  await page.goto(`${shim.base}/dashboard/graph`);
  await page.locator('.graph-box[data-ready=true]').waitFor();
  await page.locator(`.graph-box[data-incidents~="${serviceId}"]`).waitFor();
  assert.ok(!(await page.locator('.graph-box').getAttribute('data-incidents')).split(' ').includes(quietId));
  assert.match(await page.locator('.graph-legend').innerText(), /open incident/);
  await shot(page, 'dashboard-graph-incident');

  // the enabled webhook was sent the opening (the shim's outbox thread)
  const opened = await until('the incident.opened webhook', () => received.slice(before).find((r) => {
    const b = JSON.parse(r.body);
    return r.path === '/hook' && b.type === 'incident.opened' && String(b.incident.id) === incidentId;
  }));
  assert.equal(JSON.parse(opened.body).incident.rule, 'service_down');
  assert.ok(verifySignature(opened, secret));
});

test('acknowledge and mute through the page change the API state', async () => {
  await alertsLoaded();
  const item = () => page.locator(`#alert-incidents li[data-incident-id="${incidentId}"]`);
  await item().locator('button[data-action=acknowledge]').click();
  await item().locator('[data-state=acknowledged]').waitFor();
  assert.equal(await item().locator('button[data-action=acknowledge]').count(), 0);
  const ack = (await inPage(page, 'GET', '/alerts/incidents?status=open')).body.incidents.find((i) => String(i.id) === incidentId);
  assert.ok(ack.acknowledged_at, 'acknowledged_at is set');
  assert.equal(ack.muted_until, null);

  await item().locator('select[data-mute-minutes]').selectOption('1440');
  const mute = page.waitForResponse((r) => r.url().endsWith(`/api/v1/alerts/incidents/${incidentId}/mute`));
  await item().locator('button[data-action=mute]').click();
  assert.deepEqual((await mute).request().postDataJSON(), { minutes: 1440 });
  await item().locator('[data-state=muted]').waitFor();
  const muted = (await inPage(page, 'GET', '/alerts/incidents?status=open')).body.incidents.find((i) => String(i.id) === incidentId);
  const left = new Date(muted.muted_until).getTime() - Date.now();
  assert.ok(Math.abs(left - 86400000) < 120000, `muted for ${left} ms`);
  assert.match(await item().innerText(), /muted until/);
  await shot(page, 'dashboard-alerts-muted');
  // the service page's strip says so too
  await page.goto(`${shim.base}/dashboard/service?id=${serviceId}`);
  await page.locator('#service-incidents [data-state=muted]').waitFor();
});

test('every change sent the CSRF header; no console error, no CSP violation', async () => {
  const csrf = (await browser.context.cookies()).find((c) => c.name === 'lattice_csrf');
  assert.ok(csrf, 'a lattice_csrf cookie');
  const kinds = new Set(changes.map((c) => `${c.method} ${new URL(c.url).pathname.replace(/\/[0-9a-f-]{36}|\/\d+(?=\/)/g, '/{id}')}`));
  for (const k of ['POST /api/v1/alerts/channels', 'POST /api/v1/alerts/channels/{id}/test', 'POST /api/v1/alerts/channels/{id}/secret',
    'PATCH /api/v1/alerts/channels/{id}', 'DELETE /api/v1/alerts/channels/{id}', 'PUT /api/v1/alerts/rules',
    'POST /api/v1/alerts/incidents/{id}/acknowledge', 'POST /api/v1/alerts/incidents/{id}/mute']) {
    assert.ok(kinds.has(k), `${k} was not made (${[...kinds].join(', ')})`);
  }
  for (const c of changes) assert.equal(c.csrf, decodeURIComponent(csrf.value), `${c.method} ${c.url}`);
  assert.deepEqual(page.problems, []);
});
