// Live changes over Server-Sent Events (GET /api/v1/events, shim/events.c)
// against a real shim and PostgreSQL: a tenant's stream learns of the changes
// a real ingest makes to its graph, another tenant's stream learns nothing,
// bursts are merged, credentials are required, the stream caps refuse with
// 503 / 429, a client that leaves frees its slot at once, heartbeats flow.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, request, psql, eventually, assertErrorShape } from './lib.mjs';
import { openStream, tenant, replay, metric, EVENTS_ENV } from './events_lib.mjs';

let shim;
let a;
let b;
const version = (t) => Number(psql(`SELECT COALESCE((SELECT version FROM lattice.graph_versions WHERE user_id = '${t.id}'), 0)`));
const bump = (t, n = 1) => psql(Array.from({ length: n }, () => `SELECT lattice.graph_bump('${t.id}');`).join('\n'));

before(async () => {
  shim = await startShim({ env: { ...EVENTS_ENV, LATTICE_SHIM_EVENTS_MERGE_MS: '200' } });
  a = await tenant(shim, 'a');
  b = await tenant(shim, 'b');
});
after(async () => { await shim?.stop(); });

test('no credential or a bad one: 401 JSON, no stream', async () => {
  const none = await openStream(shim);
  assertErrorShape(assert, none, 401, 'missing_credentials');
  assert.match(none.headers['content-type'], /application\/json/);
  const bad = await openStream(shim, { headers: { 'X-Lattice-API-Key': 'ltc_' + 'x'.repeat(40) } });
  assert.equal(bad.status, 401, bad.text);
  assert.equal(await metric(shim, 'lattice_events_streams'), 0);
});

test('a replayed ingest reaches its tenant\'s stream as a graph event; the other tenant hears nothing', async () => {
  const sa = await openStream(shim, { headers: { 'X-Lattice-API-Key': a.key } });
  // b asks for a's tenant in the query: the stream is b's all the same
  const sb = await openStream(shim, { headers: { Cookie: b.cookie }, path: `/api/v1/events?user_id=${a.id}` });
  assert.equal(sa.status, 200);
  assert.match(sa.headers['content-type'], /^text\/event-stream/);
  assert.equal(sa.headers['cache-control'], 'no-store');
  assert.equal(sa.headers['x-content-type-options'], 'nosniff');
  const ready = await sa.waitFor((e) => e.event === 'ready');
  assert.equal(ready.data.version, version(a));
  assert.equal(ready.retry, 3000);
  await sb.waitFor((e) => e.event === 'ready');
  assert.equal(await metric(shim, 'lattice_events_streams'), 2);

  const meta = await replay(shim, '001-POST-api_v1_ingest_metadata.json', a.key);
  assert.equal(meta.status, 200, meta.text);
  const traces = await replay(shim, '003-POST-api_v1_performance_traces_batch.json', a.key);
  assert.ok(traces.status < 300, traces.text);
  const now = version(a);
  assert.ok(now > ready.data.version, 'the ingest moved the graph version');
  const got = await sa.waitFor((e) => e.event === 'graph' && e.data.version === now);
  assert.deepEqual(Object.keys(got.data), ['version']);
  // versions only grow along the stream
  const seen = sa.graph().map((e) => e.data.version);
  assert.deepEqual(seen, [...seen].sort((x, y) => x - y));
  await sleep(500); // longer than the merge window
  assert.deepEqual(sb.graph(), [], 'b heard nothing of a');
  // and b's own change reaches b only
  const before = sa.graph().length;
  bump(b);
  await sb.waitFor((e) => e.event === 'graph' && e.data.version === version(b));
  await sleep(300);
  assert.equal(sa.graph().length, before);
  sa.close();
  sb.close();
});

test('a burst of bumps in separate transactions is one event with the last version', async () => {
  const s = await openStream(shim, { headers: { Cookie: a.cookie } });
  await s.waitFor((e) => e.event === 'ready');
  bump(a, 5);
  const last = version(a);
  await s.waitFor((e) => e.event === 'graph' && e.data.version === last);
  await sleep(500);
  assert.equal(s.graph().length, 1, JSON.stringify(s.events));
  s.close();
});

test('a client that leaves frees its slot at once (not at the next heartbeat)', async () => {
  const s = await openStream(shim, { headers: { Cookie: a.cookie, 'X-Request-Id': 'events-leave-1' } });
  await s.waitFor((e) => e.event === 'ready');
  assert.equal(await metric(shim, 'lattice_events_streams'), 1);
  s.close();
  // the heartbeat is 15 s here: only the socket's hang-up can free it this soon
  await eventually(async () => (await metric(shim, 'lattice_events_streams')) === 0, { timeout: 3000 });
  // one access-log line when the stream ends, with its tenant
  const log = await eventually(() => shim.accessLog().find((l) => l.request_id === 'events-leave-1'));
  assert.equal(log.route, '/api/v1/events');
  assert.equal(log.status, 200);
  assert.equal(log.tenant, a.id);
});

test('stream caps: 503 beyond events_max, 429 beyond events_per_address_max; heartbeats', async () => {
  const small = await startShim({ env: { ...EVENTS_ENV, LATTICE_SHIM_EVENTS_MAX: '1', LATTICE_SHIM_EVENTS_HEARTBEAT_MS: '200' } });
  const perAddr = await startShim({ env: { ...EVENTS_ENV, LATTICE_SHIM_EVENTS_MAX: '4', LATTICE_SHIM_EVENTS_PER_ADDRESS_MAX: '1' } });
  try {
    const first = await openStream(small, { headers: { Cookie: a.cookie } });
    assert.equal(first.status, 200);
    const second = await openStream(small, { headers: { Cookie: b.cookie } });
    assertErrorShape(assert, second, 503, 'too_many_streams');
    assert.ok(second.headers['retry-after']);
    // heartbeats are SSE comments
    await eventually(() => first.comments.length >= 2, { timeout: 3000 });
    assert.ok(first.comments.every((c) => c === ': heartbeat'));
    first.close();
    await eventually(async () => (await metric(small, 'lattice_events_streams')) === 0, { timeout: 3000 });
    const again = await openStream(small, { headers: { Cookie: b.cookie } });
    assert.equal(again.status, 200, 'the freed slot is reused');
    again.close();

    const one = await openStream(perAddr, { headers: { Cookie: a.cookie } });
    assert.equal(one.status, 200);
    const two = await openStream(perAddr, { headers: { Cookie: b.cookie } });
    assertErrorShape(assert, two, 429, 'too_many_streams');
    assert.ok(await metric(perAddr, 'lattice_events_refused_total') >= 1);
    one.close();
  } finally {
    await small.stop();
    await perAddr.stop();
  }
});

test('events_max must leave worker threads for requests', async () => {
  await assert.rejects(startShim({ env: { LATTICE_SHIM_THREADS: '8', LATTICE_SHIM_EVENTS_MAX: '8' } }), /events_max must be below threads/);
});

test('HEAD answers the stream\'s headers without holding the connection', async () => {
  const r = await request(shim, '/api/v1/events', { method: 'HEAD', headers: { Cookie: a.cookie } });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/event-stream/);
});
