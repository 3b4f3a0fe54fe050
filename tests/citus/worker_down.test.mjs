// A worker goes down: the tenants whose shards it holds get a JSON 503 with
// Retry-After (the plugin sends again), the other tenants go on, nothing
// answered 2xx is lost, and the same request succeeds once the worker is
// back.  Run by tests/citus/http.test.sh against tests/citus/cluster.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { startShim, request, psql, assertErrorShape } from '../http/lib.mjs';
import { capturedBody } from '../fixtures/captured.mjs';

const CITUS = process.env.LATTICE_CITUS_DIR;
const cluster = (...args) => execFileSync(`${process.env.LATTICE_ROOT}/tests/citus/cluster.sh`, [...args], { stdio: 'ignore' });
let shim;

async function tenant() {
  const r = await request(shim, '/api/v1/auth/signup', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: `down-${randomUUID()}@example.com`, password: 'a fine long password', name: 'Down' }),
  });
  assert.equal(r.status, 201, r.text);
  const cookie = r.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
  const csrf = /lattice_csrf=([^;]+)/.exec(cookie)[1];
  const k = await request(shim, '/api/v1/keys', {
    method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: cookie, 'X-CSRF-Token': csrf },
    body: '{"name":"plugin","scopes":["ingest","read"]}',
  });
  assert.equal(k.status, 201, k.text);
  // the worker that holds this tenant's shard group
  const port = psql(`SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                      WHERE p.shardid = get_shard_id_for_distribution_column('lattice.users', '${r.json.user.id}')`);
  return { id: r.json.user.id, key: k.json.key, port };
}

const metadata = (name) => {
  const doc = JSON.parse(capturedBody('ingest_metadata'));
  doc.service.name = name;
  return JSON.stringify(doc);
};
const ingest = (t, name) => request(shim, '/api/v1/ingest/metadata', {
  method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': t.key }, body: metadata(name),
});
// a captured request as the plugin sent it, with this tenant's key
const replay = (t, kind, path) => request(shim, path, {
  method: 'POST', headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': t.key }, body: capturedBody(kind),
});
const services = (t) => psql(`SELECT string_agg(name, ',' ORDER BY name) FROM lattice.services WHERE user_id = '${t.id}'`);

let onW1, onW2;
before(async () => {
  shim = await startShim();
  const w2port = /W2_PORT=(\d+)/.exec(execFileSync('cat', [`${CITUS}/env`]).toString())[1];
  for (let i = 0; i < 40 && !(onW1 && onW2); i++) {
    const t = await tenant();
    if (t.port === w2port) onW2 ??= t; else onW1 ??= t;
  }
  assert.ok(onW1 && onW2, 'tenants on both workers');
});

after(async () => {
  cluster('start-node', CITUS, 'w2');
  await shim?.stop();
});

test('worker 2 down: its tenants get 503 with Retry-After, the others are served, and it all lands once it is back', async () => {
  assert.equal((await ingest(onW2, 'before-down')).status, 200);
  cluster('stop-node', CITUS, 'w2');
  try {
    const refused = await ingest(onW2, 'while-down');
    assertErrorShape(assert, refused, 503, 'unavailable');
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    assert.doesNotMatch(refused.text, /127\.0\.0\.1|remote node/, 'no internals in the answer');
    const served = await ingest(onW1, 'while-down');
    assert.equal(served.status, 200, served.text);
    // the plugin's whole cadence for a tenant on the worker that is up
    for (const [kind, path] of [['ingest_metadata', '/api/v1/ingest/metadata'],
      ['traces_batch', '/api/v1/performance/traces/batch'], ['errors_batch', '/api/v1/errors/batch']]) {
      const r = await replay(onW1, kind, path);
      assert.ok(r.status >= 200 && r.status < 300, `${kind}: ${r.status} ${r.text}`);
    }
    const read = await request(shim, '/api/v1/services', { headers: { 'X-Lattice-API-Key': onW1.key } });
    assert.equal(read.status, 200, read.text);
  } finally {
    cluster('start-node', CITUS, 'w2');
  }
  // the plugin's retry, once the worker is back (pooled connections may need a moment)
  let again;
  for (let i = 0; i < 20; i++) {
    again = await ingest(onW2, 'while-down');
    if (again.status === 200) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(again.status, 200, again.text);
  assert.equal(services(onW2), 'before-down,while-down', 'nothing answered 200 is lost, the refused one arrived on retry');
  assert.equal(services(onW1).split(',').includes('while-down'), true);
});
