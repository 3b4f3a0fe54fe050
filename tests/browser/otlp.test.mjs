// OpenTelemetry in the dashboard, in a real browser, real shim, real
// database: the onboarding page's OpenTelemetry snippets (Node.js, Python,
// Go, Java, Next.js, Collector) carry this server's origin + /otlp and the
// ingest key the page just created, and every Copy button copies its
// snippet; a trace sent to the endpoint with the headers exactly as the
// snippet writes them turns onboarding green; the graph draws a database
// node as a barrel and a queue node as a tag, with their legend entries, a
// detail panel that names the kind with a badge and no "Open service" link,
// and keeps both under an environment filter like external nodes; the
// services list leaves them out.
//
// The graph's nodes are seeded in SQL (as biggraph.mjs does), for a second
// account.  Their kind is written to lattice.services.kind when that column
// exists; while GET /api/v1/graph sends no `kind` at all (a server before
// it), the test adds it to the page's copy of the answer for the two seeded
// nodes, and says so in a diagnostic line.  The trace is skipped where the
// shim has no /otlp/v1/traces yet.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID, randomBytes } from 'node:crypto';
import { startShim, launchBrowser, openPage, shot, sql } from './lib.mjs';

let shim;
let browser;
let page;
let userId;
let key;

const DB = 'postgresql/orders';
const QUEUE = 'kafka orders';
// name -> [environment, is_external, kind]
const NODES = {
  checkout: ['production', false, 'service'],
  billing: ['staging', false, 'service'],
  'partner-api': ['production', true, 'external'],
  [DB]: ['production', true, 'database'],
  [QUEUE]: ['production', true, 'queue'],
};
const EDGES = [['partner-api', 'checkout'], ['checkout', DB], ['checkout', QUEUE], ['billing', QUEUE]];
const q = (s) => `'${String(s).replace(/'/g, "''")}'`;

before(async () => {
  shim = await startShim();
  browser = await launchBrowser();
  await browser.context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: shim.base });
  page = await openPage(browser.context);
});
after(async () => { await browser?.close(); shim?.stop(); });

// An account signed up over HTTP, its session handed to the browser (it
// replaces the one before); its id.
async function signup() {
  const email = `otlp-${randomUUID()}@example.com`;
  const r = await fetch(`${shim.base}/api/v1/auth/signup`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'an otlp password', name: 'OTLP' }),
  });
  assert.equal(r.status, 201);
  const cookies = r.headers.getSetCookie().map((c) => { const p = c.split(';')[0]; const i = p.indexOf('='); return { name: p.slice(0, i), value: p.slice(i + 1), url: shim.base }; });
  await browser.context.addCookies(cookies);
  return sql(`SELECT id FROM lattice.users WHERE email = ${q(email)}`);
}

const TABS = ['otel-node', 'otel-python', 'otel-go', 'otel-java', 'otel-next', 'otel-collector'];
const panelText = (id) => page.locator(`#panel-${id}`).evaluate((el) => [...el.querySelectorAll('pre')].map((p) => p.textContent).join('\n'));

test('onboarding: the OpenTelemetry snippets carry this origin + /otlp, then the key', async () => {
  userId = await signup();
  await page.goto(`${shim.base}/dashboard/onboarding`);
  await page.locator('#tab-otel-node').waitFor();
  const endpoint = `${shim.base}/otlp`;
  assert.equal(await page.locator('#otlp-endpoint').innerText(), endpoint);
  // no key yet: a placeholder where it goes
  assert.match(await panelText('otel-node'), /x-lattice-api-key=<an ingest key/);

  await page.fill('#key-name', 'otel key');
  await page.click('button:has-text("Create ingest key")');
  key = (await page.locator('#new-key').innerText()).trim();
  assert.match(key, /^ltc_[A-Za-z0-9_-]{20,}$/);

  const texts = {};
  for (const id of TABS) texts[id] = await panelText(id);
  for (const id of TABS) {
    assert.ok(texts[id].includes(key), `${id}: the key is filled in`);
    assert.ok(!texts[id].includes('<an ingest key'), `${id}: no placeholder left`);
    assert.ok(!/PROTOCOL="?grpc/i.test(texts[id]), `${id}: never gRPC`);
  }
  for (const id of ['otel-node', 'otel-python', 'otel-go', 'otel-java', 'otel-next']) {
    assert.ok(texts[id].includes(`OTEL_EXPORTER_OTLP_ENDPOINT="${endpoint}"`) || texts[id].includes(`OTEL_EXPORTER_OTLP_ENDPOINT=${endpoint}\n`),
      `${id}: OTEL_EXPORTER_OTLP_ENDPOINT is ${endpoint}\n${texts[id]}`);
    assert.match(texts[id], /OTEL_EXPORTER_OTLP_PROTOCOL="?http\/protobuf/, id);
    assert.ok(texts[id].includes(`OTEL_EXPORTER_OTLP_HEADERS="x-lattice-api-key=${key}"`) || texts[id].includes(`OTEL_EXPORTER_OTLP_HEADERS=x-lattice-api-key=${key}\n`), id);
    assert.match(texts[id], /deployment\.environment\.name=production/, id);
  }
  assert.ok(texts['otel-node'].includes('export NODE_OPTIONS="--require @opentelemetry/auto-instrumentations-node/register"'));
  assert.match(texts['otel-node'], /OTEL_SERVICE_NAME="my-service"/);
  assert.match(texts['otel-node'], /OTEL_METRICS_EXPORTER="none"[\s\S]*OTEL_LOGS_EXPORTER="none"/);
  assert.match(texts['otel-python'], /^opentelemetry-instrument python app\.py$/m);
  assert.match(texts['otel-go'], /otlptracehttp\.New\(ctx\)/);
  assert.match(texts['otel-java'], /^java -javaagent:\.\/opentelemetry-javaagent\.jar -jar app\.jar$/m);
  assert.match(texts['otel-next'], /import \{ registerOTel \} from '@vercel\/otel'/);
  assert.match(texts['otel-next'], /instrumentation\.ts/);
  assert.match(texts['otel-next'], /^next start$/m);
  assert.ok(texts['otel-collector'].includes(`otlphttp/lattice:\n    endpoint: ${endpoint}\n`));
  assert.ok(texts['otel-collector'].includes(`x-lattice-api-key: "${key}"`));
  // the plugin path is still there, with its own endpoint
  assert.ok((await page.locator('#panel-express pre').innerText()).includes(`apiEndpoint: '${shim.base}/api/v1'`));
  await page.click('#tab-otel-node');
  await shot(page, 'dashboard-onboarding-otel');
});

test('onboarding: every OpenTelemetry snippet is copied by its Copy button', async () => {
  let copied = 0;
  for (const id of TABS) {
    await page.click(`#tab-${id}`);
    const panel = page.locator(`#panel-${id}`);
    await panel.waitFor({ state: 'visible' });
    const blocks = panel.locator('.code');
    const n = await blocks.count();
    assert.ok(n >= 1, `${id} has a snippet`);
    for (let i = 0; i < n; i++) {
      const want = await blocks.nth(i).locator('pre').evaluate((el) => el.textContent);
      const button = blocks.nth(i).locator('button[data-copy]');
      await button.click();
      await blocks.nth(i).locator('button[data-copy]:has-text("Copied")').waitFor();
      assert.equal(await page.evaluate(() => navigator.clipboard.readText()), want, `${id}, snippet ${i + 1}`);
      copied++;
    }
  }
  assert.ok(copied >= TABS.length + 3, `copied ${copied} snippets`);   // Go and Next.js have several
  assert.deepEqual(page.problems, []);
});

// One OTLP/JSON server span of service `name` (production).
function otlpTrace(name) {
  const now = BigInt(Date.now()) * 1000000n;
  const str = (key, v) => ({ key, value: { stringValue: v } });
  return JSON.stringify({ resourceSpans: [{
    resource: { attributes: [str('service.name', name), str('deployment.environment.name', 'production')] },
    scopeSpans: [{ scope: { name: 'lattice-browser-test' }, spans: [{
      traceId: randomBytes(16).toString('hex'), spanId: randomBytes(8).toString('hex'), name: 'GET /orders', kind: 2,
      startTimeUnixNano: String(now - 5000000n), endTimeUnixNano: String(now),
      attributes: [str('http.request.method', 'GET'), str('http.route', '/orders'), { key: 'http.response.status_code', value: { intValue: '200' } }],
      status: {} }] }] }] });
}

// OTEL_EXPORTER_OTLP_HEADERS as SDKs read it: name=value pairs, values percent-decoded
const otlpHeaders = (v) => Object.fromEntries(v.split(',').map((p) => { const i = p.indexOf('='); return [p.slice(0, i).trim(), decodeURIComponent(p.slice(i + 1).trim())]; }));

test('a trace sent as the snippet says turns onboarding green', async (t) => {
  const probe = await fetch(`${shim.base}/otlp/v1/traces`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
  if (probe.status === 404 && /no such endpoint/.test(await probe.text())) return t.skip('POST /otlp/v1/traces is not routed by the shim yet');
  // the endpoint and headers exactly as the Node.js snippet sets them
  const env = Object.fromEntries([...(await panelText('otel-node')).matchAll(/^export (\w+)="(.*)"$/gm)].map((m) => [m[1], m[2]]));
  assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, `${shim.base}/otlp`);
  const sent = await fetch(`${env.OTEL_EXPORTER_OTLP_ENDPOINT}/v1/traces`, { method: 'POST',
    headers: { 'Content-Type': 'application/json', ...otlpHeaders(env.OTEL_EXPORTER_OTLP_HEADERS) }, body: otlpTrace('otel-checkout') });
  assert.equal(sent.status, 200, await sent.text());
  await page.locator('.waiting.arrived').waitFor({ timeout: 10000 });
  assert.match(await page.locator('.waiting').innerText(), /otel-checkout has arrived/);
  // the other form the docs give: Authorization=Bearer%20<key>
  const again = await fetch(`${shim.base}/otlp/v1/traces`, { method: 'POST',
    headers: { 'Content-Type': 'application/json', ...otlpHeaders(`Authorization=Bearer%20${key}`) }, body: otlpTrace('otel-checkout') });
  assert.equal(again.status, 200, await again.text());
  await shot(page, 'dashboard-onboarding-otel-arrived');
  assert.deepEqual(page.problems, []);
});

// Is the `kind` column there yet (the extension adding it)?
const hasKindColumn = () => sql(`SELECT count(*) FROM pg_catalog.pg_attribute
  WHERE attrelid = 'lattice.services'::regclass AND attname = 'kind' AND NOT attisdropped`) === '1';

function seedGraph() {
  const withKind = hasKindColumn();
  const rows = Object.entries(NODES).map(([name, [env, ext, kind]]) =>
    `(${q(userId)}, ${q(name)}, ${q(env)}, ${ext}, ${ext ? "'external'" : "'active'"}${withKind ? `, ${q(kind)}` : ''})`);
  sql(`INSERT INTO lattice.services (user_id, name, environment, is_external, status${withKind ? ', kind' : ''})
       VALUES ${rows.join(', ')}`);
  sql(`INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count, total_duration_ms)
       SELECT ${q(userId)}, a.id, b.id, 100, 1, 1000
         FROM (VALUES ${EDGES.map(([s, t]) => `(${q(s)}, ${q(t)})`).join(', ')}) e(s, t)
         JOIN lattice.services a ON a.user_id = ${q(userId)} AND a.name = e.s
         JOIN lattice.services b ON b.user_id = ${q(userId)} AND b.name = e.t`);
  sql(`SELECT lattice.graph_bump(${q(userId)})`);
  return withKind;
}

// The drawn nodes as cytoscape has them (the instance cytoscape keeps on its container).
const drawn = () => page.evaluate(() => {
  const cy = document.querySelector('.graph-canvas')._cyreg.cy;
  return Object.fromEntries(cy.nodes().map((n) => [n.data('name'),
    { kind: n.data('kind'), shape: n.style('shape'), colour: n.style('background-color').replace(/\s/g, '') }]));
});

test('the graph draws a database as a barrel and a queue as a tag, with their legend', async (t) => {
  userId = await signup();   // a second account: the graph holds the seeded nodes alone
  const withKind = seedGraph();
  const api = await page.evaluate(async () => (await fetch('/api/v1/graph', { credentials: 'same-origin' })).json());
  assert.equal(api.nodes.length, Object.keys(NODES).length, JSON.stringify(api));
  const sendsKind = api.nodes.some((n) => 'kind' in n);
  if (sendsKind) {
    // the API's own kinds: the seeded ones, is_external true for database and queue
    for (const n of api.nodes) {
      assert.equal(n.kind, NODES[n.name][2], `${n.name}: kind from GET /api/v1/graph`);
      assert.equal(n.is_external, NODES[n.name][1], `${n.name}: is_external`);
    }
  } else {
    // a server before `kind`: the page's copy of the answer gets the two kinds
    t.diagnostic(`GET /api/v1/graph sends no kind yet (services.kind column ${withKind ? 'exists' : 'absent'}): kind added in the browser for ${DB} and ${QUEUE}`);
    await page.route('**/api/v1/graph', async (route) => {
      const res = await route.fetch();
      const body = await res.json();
      for (const n of body.nodes) if (n.name === DB || n.name === QUEUE) n.kind = NODES[n.name][2];
      await route.fulfill({ response: res, json: body });
    });
  }

  await page.goto(`${shim.base}/dashboard/graph`);
  await page.locator('.graph-box[data-ready=true]').waitFor();
  assert.equal(await page.locator('.graph-box').getAttribute('data-nodes'), '5');
  const nodes = await drawn();
  assert.deepEqual(Object.fromEntries(Object.entries(nodes).map(([k, v]) => [k, [v.kind, v.shape]])), {
    checkout: ['service', 'ellipse'],
    billing: ['service', 'ellipse'],
    'partner-api': ['external', 'round-diamond'],
    [DB]: ['database', 'barrel'],
    [QUEUE]: ['queue', 'tag'],
  });
  // the legend names both, in the nodes' colours
  for (const [cls, name, label] of [['lg-database', DB, 'database'], ['lg-queue', QUEUE, 'queue']]) {
    const entry = page.locator(`.graph-legend .${cls}`);
    assert.equal((await entry.innerText()).trim(), label);
    const colour = await entry.evaluate((el) => getComputedStyle(el, '::before').backgroundColor.replace(/\s/g, ''));
    assert.equal(colour, nodes[name].colour, `${label}: legend colour = node colour`);
  }
  assert.notEqual(await page.locator('.graph-legend .lg-queue').evaluate((el) => getComputedStyle(el, '::before').clipPath), 'none');
  await shot(page, 'dashboard-graph-kinds');
});

test('the detail panel says database / queue with a badge and no "Open service" link', async () => {
  for (const [name, label] of [[DB, 'database'], [QUEUE, 'queue']]) {
    await page.fill('#g-search', name);
    await page.press('#g-search', 'Enter');
    await page.locator(`#graph-detail h2:has-text("${name}")`).waitFor();
    assert.equal((await page.locator(`#graph-detail .badge[data-kind="${label}"]`).innerText()).trim(), label);
    assert.equal(await page.locator('#graph-detail a:has-text("Open service")').count(), 0, `${name}: no service page`);
    assert.ok(await page.locator('#graph-detail button:has-text("Show impact")').count() === 1);
  }
  assert.match(await page.locator('#graph-detail').innerText(), /Called by \(2\)[\s\S]*checkout[\s\S]*billing|Called by \(2\)[\s\S]*billing[\s\S]*checkout/);
  // a registered service keeps its link
  await page.fill('#g-search', 'checkout');
  await page.press('#g-search', 'Enter');
  await page.locator('#graph-detail h2:has-text("checkout")').waitFor();
  assert.equal(await page.locator('#graph-detail a:has-text("Open service")').count(), 1);
  await page.fill('#g-search', '');
});

test('an environment filter keeps database and queue nodes, like external ones', async () => {
  await page.selectOption('#g-env', 'staging');
  await page.locator('.graph-box[data-nodes="4"]').waitFor();
  assert.deepEqual(Object.keys(await drawn()).sort(), ['billing', QUEUE, 'partner-api', DB].sort());
  await page.selectOption('#g-env', 'production');
  await page.locator('.graph-stats', { hasText: '4 of 5 services' }).waitFor();
  assert.deepEqual(Object.keys(await drawn()).sort(), ['checkout', QUEUE, 'partner-api', DB].sort());
  assert.deepEqual(page.problems, []);
});

test('the services list shows the registered services only', async () => {
  await page.unroute('**/api/v1/graph');
  await page.goto(`${shim.base}/dashboard/services`);
  await page.locator('[data-service="checkout"]').waitFor();
  assert.equal(await page.locator('[data-service="billing"]').count(), 1);
  for (const name of [DB, QUEUE, 'partner-api']) assert.equal(await page.locator(`[data-service="${name}"]`).count(), 0, name);
  assert.match(await page.locator('.tiles').innerText(), /Services\s*2/i);
  assert.deepEqual(page.problems, []);
});
