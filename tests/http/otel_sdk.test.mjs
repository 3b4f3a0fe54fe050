// OpenTelemetry ingest with the real SDK: two Express services
// (otel_apps/service_a.cjs -> service_b.cjs -> PostgreSQL through pg), each a
// node process running @opentelemetry/sdk-node with the http, express and pg
// instrumentations and an OTLP/HTTP exporter configured by the standard
// OTEL_EXPORTER_OTLP_* environment, export to the shim's POST
// /otlp/v1/traces.  Three runs, each with a fresh account and key:
// protobuf (x-lattice-api-key), JSON (Authorization: Bearer) and protobuf +
// gzip; then what the account sees through the read API: the graph (otel-a ->
// otel-b -> a database node named postgresql…), the routes with counts and
// latencies, the /boom exception as one error group.  And one run with a
// wrong key: the exporter gets 401 and nothing is recorded.
//
// Between the SDKs and the shim sits a tap that forwards every request
// unchanged and keeps what it carried (content type, encoding, size, the
// spans decoded, the shim's status), so a failure says whether the SDK sent
// the wrong thing or Lattice did the wrong thing with it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, psql } from './lib.mjs';
import { send } from './owasp_lib.mjs';
import { startPair } from './otel_apps/apps.mjs';
import { decodeRequest, spansOf } from './otel_apps/otlp_decode.mjs';

// sign-ups from a loopback address of this file's own, new each run (the
// per-address sign-up quota, 20 an hour, would stop a 6th run on one cluster)
const FROM = `127.95.${1 + Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`;
const ORDERS = [1, 2, 3];
const SERVER = 2, CLIENT = 3;
let shim;
let tap;
let endpointStatus = 0;
let endpointAnswer = '';

// ---- the tap: SDK -> tap -> shim, every byte forwarded as it came ----
function startTap(target) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const seen = { path: req.url, headers: req.headers, status: 0 };
      try { Object.assign(seen, decodeRequest(req.headers, body)); } catch (e) { seen.decodeError = String(e); seen.wireBytes = body.length; }
      requests.push(seen);
      const fwd = http.request({ host: '127.0.0.1', port: target.port, path: req.url, method: req.method, agent: false,
                                 headers: { ...req.headers, host: `127.0.0.1:${target.port}`, connection: 'close' } }, (up) => {
        const back = [];
        up.on('data', (c) => back.push(c));
        up.on('end', () => {
          seen.status = up.statusCode;
          seen.answer = Buffer.concat(back);
          const h = { ...up.headers };
          delete h.connection;
          delete h['keep-alive'];
          delete h['transfer-encoding'];
          h['content-length'] = seen.answer.length;
          res.writeHead(up.statusCode, h);
          res.end(seen.answer);
        });
      });
      fwd.on('error', (e) => { seen.status = 502; seen.forwardError = String(e); res.writeHead(502); res.end(); });
      fwd.end(body);
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    requests, url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  })));
}

// ---- accounts: sign up through the shim, an ingest key made from the session ----
async function signup(tag) {
  const email = `otel-${tag}-${randomUUID().slice(0, 8)}@example.com`;
  const r = await send(shim, 'POST', '/api/v1/auth/signup', { from: FROM, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'a fine long password', name: `OTel ${tag}` }) });
  assert.equal(r.status, 201, r.text);
  const cookies = Object.fromEntries([].concat(r.headers['set-cookie']).map((c) => c.split(';')[0].split('=')));
  const a = { id: r.json.user.id, email, csrf: cookies.lattice_csrf,
              cookie: `lattice_session=${cookies.lattice_session}; lattice_csrf=${cookies.lattice_csrf}` };
  const k = await send(shim, 'POST', '/api/v1/keys', { from: FROM, body: JSON.stringify({ name: 'otel', scopes: ['ingest'] }),
    headers: { 'Content-Type': 'application/json', Cookie: a.cookie, 'X-CSRF-Token': a.csrf } });
  assert.equal(k.status, 201, k.text);
  a.key = k.json.key;
  return a;
}

// The read API as the account's dashboard session.
async function read(a, path) {
  const r = await send(shim, 'GET', `/api/v1${path}`, { from: FROM, headers: { Accept: 'application/json', Cookie: a.cookie } });
  assert.equal(r.status, 200, `GET ${path}: ${r.status} ${r.text}`);
  return r.json;
}

// Retries fn until it stops throwing (the span matching may finish after the
// export's answer); rethrows its last failure after ms.
async function settle(fn, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    try { return await fn(); } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(200);
    }
  }
}

const jsonish = (v) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x));
const route = (list, method, path) => (list ?? []).find((r) => r.method === method && r.path === path);

// ---- one run: services up, traffic, flush, stop; what the SDK and the tap saw ----
async function runServices({ protocol, compression = 'none', headers, names }) {
  const from = tap.requests.length;
  const pair = await startPair({ endpoint: `${tap.url}/otlp`, protocol, compression, headers, names });
  let report;
  try {
    for (const id of ORDERS) {
      const r = await pair.a.get(`/orders/${id}`);
      assert.equal(r.status, 200, `GET /orders/${id} on otel-a: ${r.status} ${r.text}`);
    }
    const boom = await pair.a.get('/boom');
    assert.equal(boom.status, 500, `GET /boom on otel-a: ${boom.status} ${boom.text}`);
    report = await pair.flush();
  } finally {
    await pair.stop(); // sdk.shutdown(): anything left is exported before the process exits
  }
  return { report, sent: tap.requests.slice(from) };
}

// What the exporters and the tap must have seen for a run that should succeed.
function assertExported({ report, sent }, { format, gzip, auth, key }) {
  for (const side of ['a', 'b']) {
    const r = report[side];
    assert.ok(r.exports.length > 0, `${r.service}: the SDK exported nothing`);
    const failed = r.exports.filter((e) => !e.ok);
    assert.deepEqual(failed, [], `${r.service}: failed exports ${jsonish(failed)}`);
    assert.deepEqual(r.logged.error, [], `${r.service}: the SDK logged errors`);
    assert.equal(r.logged.flush, undefined, `${r.service}: forceFlush failed: ${r.logged.flush}`);
    // a partial success (rejected spans) is the only warning the exporter gives for a 2xx answer
    // (the spec lets a server send one with nothing rejected, as a warning message)
    const rejected = (w) => { try { return Number(JSON.parse(w.slice(w.indexOf('{'))).rejectedSpans ?? 0); } catch { return NaN; } };
    const warns = r.logged.warn.filter((w) => !/Partial Success/i.test(w) || !(rejected(w) === 0));
    assert.deepEqual(warns, [], `${r.service}: the SDK logged warnings`);
  }
  assert.ok(sent.length >= 2, `the tap saw ${sent.length} export requests`);
  for (const s of sent) {
    assert.equal(s.path, '/otlp/v1/traces');
    assert.equal(s.format, format, `content-type ${s.contentType}`);
    assert.equal(s.gzip, gzip, `content-encoding ${s.headers['content-encoding']}`);
    if (auth === 'bearer') {
      assert.equal(s.headers.authorization, `Bearer ${key}`);
      assert.equal(s.headers['x-lattice-api-key'], undefined);
    } else {
      assert.equal(s.headers['x-lattice-api-key'], key);
    }
    assert.equal(s.decodeError, undefined, s.decodeError);
    assert.ok(s.status >= 200 && s.status < 300, `the shim answered ${s.status}: ${s.answer?.toString('utf8').slice(0, 300)}`);
  }
  // the SDK did send what the read API is then asked about
  const spans = sent.flatMap((s) => spansOf(s.decoded));
  const servers = (svc, r) => spans.filter((s) => s.service === svc && s.kind === SERVER && s.attrs['http.route'] === r);
  assert.equal(servers('otel-a', '/orders/:id').length, ORDERS.length, 'SERVER spans of otel-a GET /orders/:id sent');
  assert.equal(servers('otel-b', '/stock/:sku').length, ORDERS.length, 'SERVER spans of otel-b GET /stock/:sku sent');
  const calls = spans.filter((s) => s.service === 'otel-a' && s.kind === CLIENT);
  for (const c of calls) {
    assert.ok(spans.some((s) => s.service === 'otel-b' && s.kind === SERVER && s.traceId === c.traceId && s.parentSpanId === c.spanId),
              'each CLIENT span of otel-a has its SERVER child in otel-b');
  }
  assert.ok(spans.some((s) => s.service === 'otel-b' && (s.attrs['db.system.name'] ?? s.attrs['db.system']) === 'postgresql'),
            'a db span of otel-b sent');
  const exceptions = spans.flatMap((s) => s.events.filter((e) => e.name === 'exception').map((e) => ({ s, e })));
  assert.equal(exceptions.length, 1, 'one exception event sent');
  assert.equal(exceptions[0].s.service, 'otel-a');
  assert.match(String(exceptions[0].e.attrs['exception.message']), /boom/);
  return spans;
}

// What the account sees: graph, routes, metrics, errors.
async function assertRecorded(a, t) {
  const g = await settle(async () => {
    const graph = await read(a, '/graph');
    const node = (name) => graph.nodes.find((n) => n.name === name);
    const A = node('otel-a'), B = node('otel-b');
    assert.ok(A && B, `services otel-a and otel-b in the graph: ${jsonish(graph.nodes.map((n) => n.name))}`);
    const dbs = graph.nodes.filter((n) => n.kind === 'database' && String(n.name).startsWith('postgresql'));
    assert.ok(dbs.length > 0, `a node of kind database named postgresql…: ${jsonish(graph.nodes.map((n) => [n.name, n.kind]))}`);
    const edge = (s, d) => graph.edges.find((e) => e.source === s && e.target === d);
    assert.ok(edge(A.id, B.id), `an edge otel-a -> otel-b: ${jsonish(graph.edges)}`);
    const toDb = dbs.filter((d) => edge(B.id, d.id));
    assert.ok(toDb.length > 0, `an edge otel-b -> ${dbs.map((d) => d.name).join(' | ')}: ${jsonish(graph.edges)}`);
    return { graph, A, B, dbs, toDb };
  });
  t.diagnostic(`graph: ${g.graph.nodes.map((n) => `${n.name}${n.kind ? ` (${n.kind})` : ''}`).join(', ')}; `
    + `edges ${g.graph.edges.length}; otel-a -> otel-b calls ${g.graph.edges.find((e) => e.source === g.A.id && e.target === g.B.id)?.calls}`);

  await settle(async () => {
    const sa = await read(a, `/services/${g.A.id}`);
    const orders = route(sa.routes, 'GET', '/orders/:id');
    assert.ok(orders, `route GET /orders/:id of otel-a: routes ${jsonish(sa.routes)} unmatched ${jsonish(sa.unmatchedTraffic)}`);
    assert.equal(orders.stats.requestCount, ORDERS.length, jsonish(orders));
    assert.equal(orders.stats.errorCount, 0, jsonish(orders));
    assert.ok(orders.stats.avgMs > 0 && orders.stats.p50Ms > 0 && orders.stats.p95Ms >= orders.stats.p50Ms, `latencies ${jsonish(orders.stats)}`);
    const boom = route(sa.routes, 'GET', '/boom');
    assert.ok(boom, `route GET /boom of otel-a: ${jsonish(sa.routes)}`);
    assert.equal(boom.stats.requestCount, 1, jsonish(boom));
    assert.equal(boom.stats.errorCount, 1, jsonish(boom));

    const sb = await read(a, `/services/${g.B.id}`);
    const stock = route(sb.routes, 'GET', '/stock/:sku');
    assert.ok(stock, `route GET /stock/:sku of otel-b: routes ${jsonish(sb.routes)} unmatched ${jsonish(sb.unmatchedTraffic)}`);
    assert.equal(stock.stats.requestCount, ORDERS.length, jsonish(stock));
    assert.ok(stock.stats.avgMs > 0 && stock.stats.p95Ms > 0, `latencies ${jsonish(stock.stats)}`);
    // the caller's request spans the callee's: both are real latencies
    assert.ok(orders.stats.avgMs >= stock.stats.avgMs, `otel-a ${orders.stats.avgMs} ms >= otel-b ${stock.stats.avgMs} ms`);

    const m = await read(a, `/performance/metrics?service_id=${g.A.id}`);
    assert.equal(m.totals.requestCount, ORDERS.length + 1, jsonish(m.totals));
    const slow = route(m.slowestRoutes, 'GET', '/orders/:id');
    assert.ok(slow && slow.requestCount === ORDERS.length && slow.p95Ms > 0, `slowestRoutes ${jsonish(m.slowestRoutes)}`);
    const mb = await read(a, `/performance/metrics?service_id=${g.B.id}`);
    assert.equal(mb.totals.requestCount, ORDERS.length, jsonish(mb.totals));
  });

  await settle(async () => {
    const e = await read(a, '/errors');
    assert.equal(e.total, 1, `one error group: ${jsonish(e.errors)}`);
    const [grp] = e.errors;
    assert.equal(grp.serviceName, 'otel-a', jsonish(grp));
    assert.equal(grp.serviceId, g.A.id);
    assert.ok(grp.occurrenceCount >= 1, jsonish(grp));
    assert.match(`${grp.errorType} ${grp.message}`, /boom/, jsonish(grp));
  });
}

before(async () => {
  shim = await startShim();
  tap = await startTap(shim);
  // the endpoint, unauthenticated: 401 once it is served (404 or 503 before)
  const r = await send(shim, 'POST', '/otlp/v1/traces', { from: FROM, body: '{}', headers: { 'Content-Type': 'application/json' } });
  endpointStatus = r.status;
  endpointAnswer = r.text;
});

after(async () => {
  await tap?.close();
  await shim?.stop();
});

const served = () => assert.ok(![404, 405, 501, 503].includes(endpointStatus),
  `POST /otlp/v1/traces is not served by this shim: ${endpointStatus} ${endpointAnswer}`);

test('POST /otlp/v1/traces without a key is 401', () => {
  assert.equal(endpointStatus, 401, endpointAnswer);
});

const RUNS = [
  { name: 'protobuf, x-lattice-api-key', protocol: 'http/protobuf', format: 'protobuf', gzip: false, auth: 'header' },
  { name: 'JSON, Authorization: Bearer', protocol: 'http/json', format: 'json', gzip: false, auth: 'bearer' },
  { name: 'protobuf + gzip, x-lattice-api-key', protocol: 'http/protobuf', format: 'protobuf', gzip: true, auth: 'header' },
];
for (const run of RUNS) {
  test(`SDK export, ${run.name}: graph, routes, latencies, the error group`, async (t) => {
    served();
    const a = await signup(run.format + (run.gzip ? '-gz' : ''));
    const headers = run.auth === 'bearer' ? `Authorization=Bearer%20${a.key}` : `x-lattice-api-key=${a.key}`;
    const out = await runServices({ protocol: run.protocol, compression: run.gzip ? 'gzip' : 'none', headers });
    const spans = assertExported(out, { ...run, key: a.key });
    t.diagnostic(`sent: ${out.sent.map((s) => `${s.contentType}${s.gzip ? '+gzip' : ''} ${s.wireBytes} B -> ${s.status}`).join(', ')}; ${spans.length} spans`);
    await assertRecorded(a, t);
  });
}

test('SDK export with a wrong key: the exporter gets 401, nothing is recorded', async () => {
  served();
  const a = await signup('wrongkey');
  const wrong = a.key.slice(0, -1) + (a.key.endsWith('0') ? '1' : '0'); // well-formed, unknown
  const tag = randomUUID().slice(0, 8);
  const names = { a: `otel-a-wrongkey-${tag}`, b: `otel-b-wrongkey-${tag}` };
  const pendingTable = psql("SELECT to_regclass('lattice.otlp_pending') IS NOT NULL") === 't';
  const pending = () => Number(psql('SELECT count(*) FROM lattice.otlp_pending'));
  const pendingBefore = pendingTable ? pending() : 0;
  const { report, sent } = await runServices({ protocol: 'http/protobuf', headers: `x-lattice-api-key=${wrong}`, names });
  assert.ok(sent.length >= 2, `the tap saw ${sent.length} export requests`);
  for (const s of sent) assert.equal(s.status, 401, `the shim answered ${s.status}: ${s.answer?.toString('utf8').slice(0, 200)}`);
  for (const side of ['a', 'b']) {
    const r = report[side];
    assert.ok(r.exports.length > 0, `${r.service}: no export`);
    for (const e of r.exports) {
      assert.equal(e.ok, false, `${r.service}: an export succeeded with a wrong key`);
      assert.equal(e.error?.code, 401, `${r.service}: ${jsonish(e)}`);
    }
  }
  // not in this account, nor in any other
  const graph = await read(a, '/graph');
  assert.deepEqual(graph.nodes, []);
  assert.equal((await read(a, '/services')).total, 0);
  assert.equal((await read(a, '/errors')).total, 0);
  assert.equal(psql(`SELECT count(*) FROM lattice.services WHERE name IN ('${names.a}', '${names.b}')`), '0');
  // nor any span kept to wait for its match
  if (pendingTable) assert.ok(pending() <= pendingBefore, `lattice.otlp_pending grew: ${pendingBefore} -> ${pending()}`);
});

test('an exhausted ingest quota: 429 with Retry-After (exporters retry it), per service', async () => {
  served();
  // an account on a plan of 2 ingest requests an hour per service, before its first request
  const plan = `otel-quota-${randomUUID().slice(0, 8)}`;
  psql(`INSERT INTO lattice.plans (id, name, price_cents, ingest_per_service_per_hour) VALUES ('${plan}', 'q', 0, 2)`);
  const id = psql(`SELECT lattice.create_user('${plan}@example.com', 'a fine long password', 'Quota')`);
  psql(`UPDATE lattice.users SET plan_id = '${plan}' WHERE id = '${id}'`);
  const key = psql(`SELECT key FROM lattice.api_key_create('${id}', 'otel-quota', NULL, NULL, '{read,ingest}')`);
  const now = BigInt(Date.now()) * 1000000n;
  const body = (service) => JSON.stringify({ resourceSpans: [{
    resource: { attributes: [{ key: 'service.name', value: { stringValue: service } }] },
    scopeSpans: [{ spans: [{ traceId: randomUUID().replaceAll('-', ''), spanId: randomUUID().slice(0, 8) + 'abcdef01',
      name: 'GET /q', kind: SERVER, startTimeUnixNano: String(now), endTimeUnixNano: String(now + 2000000n),
      attributes: [{ key: 'http.request.method', value: { stringValue: 'GET' } },
                   { key: 'http.route', value: { stringValue: '/q' } }] }] }] }] });
  const post = (service) => send(shim, 'POST', '/otlp/v1/traces', { from: FROM, body: body(service),
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${key}` } });
  const statuses = [];
  for (let i = 0; i < 3; i++) statuses.push(await post('quota-a'));
  assert.deepEqual(statuses.map((r) => r.status), [200, 200, 429], statuses.map((r) => r.text).join(' | '));
  const refused = statuses[2];
  assert.equal(refused.json.error.code, 'rate_limited');
  assert.ok(Number(refused.headers['retry-after']) > 0, 'Retry-After');
  assert.equal((await post('quota-b')).status, 200, 'another service has its own quota');
  const count = psql(`SELECT sum(st.request_count) FROM lattice.route_stats st
                       JOIN lattice.services s ON s.user_id = st.user_id AND s.id = st.service_id
                      WHERE st.user_id = '${id}' AND s.user_id = '${id}' AND s.name = 'quota-a' AND st.path = '/q'`);
  assert.equal(count, '2', 'the refused request recorded nothing');
});
