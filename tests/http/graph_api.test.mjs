// The graph over HTTP against a real shim and PostgreSQL: every
// endpoint's answer, filters, bounds, errors, another tenant's ids (404),
// and the NOTIFY that tells listeners a tenant's graph changed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { startShim, request, psql, assertErrorShape } from './lib.mjs';

let shim;
const tenants = {};

async function signup(label) {
  const email = `graph-${label}-${randomUUID()}@example.com`;
  const r = await request(shim, '/api/v1/auth/signup', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'a fine long password', name: label }),
  });
  assert.equal(r.status, 201, r.text);
  const cookie = r.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
  const csrf = /lattice_csrf=([^;]+)/.exec(cookie)[1];
  return { id: r.json.user.id, cookie, csrf };
}

const get = (who, path) => request(shim, path, { headers: { Cookie: tenants[who].cookie } });
const sid = (who, name) => tenants[who].services[name];

before(async () => {
  shim = await startShim();
  tenants.a = await signup('a');
  tenants.b = await signup('b');
  // a -> b -> c -> a (a cycle), c -> d; d is external and in staging
  psql(`
    INSERT INTO lattice.services (user_id, name, environment, is_external, first_seen)
    VALUES ('${tenants.a.id}', 'a', 'production', false, now() - interval '2 days'),
           ('${tenants.a.id}', 'b', 'production', false, now() - interval '2 days'),
           ('${tenants.a.id}', 'c', 'production', false, now() - interval '2 days'),
           ('${tenants.a.id}', 'd', 'staging', true, now() - interval '2 days'),
           ('${tenants.b.id}', 'y', 'production', false, now() - interval '2 days');
    INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count, first_seen)
    SELECT s.user_id, s.id, t.id, v.calls, v.errors, now() - interval '1 day'
      FROM (VALUES ('a', 'b', 100, 5), ('b', 'c', 50, 0), ('c', 'a', 5, 0), ('c', 'd', 200, 20)) v(s, t, calls, errors)
      JOIN lattice.services s ON s.user_id = '${tenants.a.id}' AND s.name = v.s
      JOIN lattice.services t ON t.user_id = s.user_id AND t.name = v.t;
    -- what the ingest functions record when they add services and calls
    INSERT INTO lattice.graph_events (user_id, at, kind, service_id, name, environment)
    SELECT user_id, first_seen, 'service_added', id, name, environment FROM lattice.services
     WHERE user_id IN ('${tenants.a.id}', '${tenants.b.id}');
    INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
    SELECT user_id, first_seen, 'edge_added', source_service_id, target_service_id FROM lattice.connections
     WHERE user_id = '${tenants.a.id}';
    SELECT lattice.graph_bump('${tenants.a.id}'), lattice.graph_bump('${tenants.b.id}');`);
  for (const who of ['a', 'b']) {
    tenants[who].services = Object.fromEntries(psql(
      `SELECT name || '=' || id FROM lattice.services WHERE user_id = '${tenants[who].id}'`)
      .split('\n').map((l) => l.split('=')));
  }
});

after(async () => { await shim?.stop(); });

test('GET /graph: nodes, edges with error rates, the version', async () => {
  const r = await get('a', '/api/v1/graph');
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type'), /application\/json/);
  assert.deepEqual(r.json.nodes.map((n) => n.name).sort(), ['a', 'b', 'c', 'd']);
  assert.equal(r.json.edges.length, 4);
  const cd = r.json.edges.find((e) => e.source === sid('a', 'c') && e.target === sid('a', 'd'));
  assert.equal(cd.calls, 200);
  assert.equal(cd.error_rate, 0.1);
  const d = r.json.nodes.find((n) => n.name === 'd');
  assert.equal(d.is_external, true);
  assert.equal(d.dependents, 1);
  assert.equal(d.calls_in, 200);
  assert.equal(r.json.version, Number(psql(`SELECT version FROM lattice.graph_versions WHERE user_id = '${tenants.a.id}'`)));
  assert.equal(r.json.truncated, false);
});

test('GET /graph filters: environment, min_calls, since; bad values are 400', async () => {
  const prod = await get('a', '/api/v1/graph?environment=production');
  assert.deepEqual(prod.json.nodes.map((n) => n.name).sort(), ['a', 'b', 'c']);
  assert.equal(prod.json.edges.length, 3);
  const busy = await get('a', '/api/v1/graph?min_calls=60');
  assert.deepEqual(busy.json.edges.map((e) => e.calls).sort((x, y) => x - y), [100, 200]);
  const future = await get('a', `/api/v1/graph?since=${encodeURIComponent(new Date(Date.now() + 3600e3).toISOString())}`);
  assert.equal(future.json.nodes.length, 0);
  assertErrorShape(assert, await get('a', '/api/v1/graph?min_calls=lots'), 400, 'invalid_input');
  assertErrorShape(assert, await get('a', '/api/v1/graph?active=perhaps'), 400, 'invalid_input');
  assertErrorShape(assert, await get('a', '/api/v1/graph?since=yesterday-ish'), 400, 'invalid_input');
});

test('GET /graph/dependencies/{id}?depth= and /graph/dependents/{id}?depth=', async () => {
  const one = await get('a', `/api/v1/graph/dependencies/${sid('a', 'a')}`);
  assert.equal(one.status, 200, one.text);
  assert.equal(one.json.depth, 1);
  assert.deepEqual(one.json.services.map((s) => s.name), ['b']);
  assert.equal(one.json.more_beyond_depth, true);
  const three = await get('a', `/api/v1/graph/dependencies/${sid('a', 'a')}?depth=3`);
  assert.deepEqual(three.json.services.map((s) => [s.name, s.distance]), [['b', 1], ['c', 2], ['d', 3]]);
  const up = await get('a', `/api/v1/graph/dependents/${sid('a', 'd')}?depth=2`);
  assert.deepEqual(up.json.services.map((s) => [s.name, s.distance]), [['c', 1], ['b', 2]]);
  assert.equal(up.json.direction, 'dependents');
  assertErrorShape(assert, await get('a', `/api/v1/graph/dependents/${sid('a', 'd')}?depth=0`), 400, 'invalid_input');
});

test('GET /services/{id}/impact: the whole blast radius with distances', async () => {
  const r = await get('a', `/api/v1/services/${sid('a', 'd')}/impact`);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.services.map((s) => [s.name, s.distance, s.weakest_calls]),
    [['c', 1, 200], ['b', 2, 50], ['a', 3, 50]]);
  assert.equal(r.json.truncated, false);
});

test('GET /graph/path, /graph/cycles, /graph/order', async () => {
  const p = await get('a', `/api/v1/graph/path?from=${sid('a', 'a')}&to=${sid('a', 'd')}`);
  assert.equal(p.status, 200, p.text);
  assert.equal(p.json.distance, 3);
  assert.deepEqual(p.json.paths.map((path) => path.map((s) => s.name)), [['a', 'b', 'c', 'd']]);
  const none = await get('a', `/api/v1/graph/path?from=${sid('a', 'd')}&to=${sid('a', 'a')}`);
  assert.equal(none.json.distance, null);
  assert.deepEqual(none.json.paths, []);
  assertErrorShape(assert, await get('a', `/api/v1/graph/path?from=${sid('a', 'a')}`), 400, 'invalid_input');

  const c = await get('a', '/api/v1/graph/cycles');
  assert.equal(c.json.count, 1);
  assert.deepEqual(c.json.cycles[0].services.map((s) => s.name).sort(), ['a', 'b', 'c']);

  const o = await get('a', '/api/v1/graph/order');
  assert.equal(o.json.acyclic, false);
  assert.deepEqual(o.json.layers.map((l) => l.services.map((s) => s.name).sort()), [['d'], ['a', 'b', 'c']]);
});

test('GET /graph/diff and /graph?at=: the topology over time', async () => {
  const since = new Date(Date.now() - 36 * 3600e3).toISOString();
  const d = await get('a', `/api/v1/graph/diff?from=${encodeURIComponent(since)}`);
  assert.equal(d.status, 200, d.text);
  assert.equal(d.json.edges_added.length, 4);
  assert.deepEqual(d.json.services_added, []);
  const then = await get('a', `/api/v1/graph?at=${encodeURIComponent(since)}`);
  assert.equal(then.json.nodes.length, 4);
  assert.equal(then.json.edges.length, 0);
  assertErrorShape(assert, await get('a', '/api/v1/graph/diff'), 400, 'invalid_input');
});

test('another tenant\'s ids, malformed ids and no credential', async () => {
  for (const path of [`/api/v1/graph/dependents/${sid('a', 'a')}`, `/api/v1/services/${sid('a', 'd')}/impact`,
    `/api/v1/graph/dependencies/${sid('a', 'b')}?depth=3`, '/api/v1/graph/dependents/not-a-uuid']) {
    assertErrorShape(assert, await get('b', path), 404, 'not_found');
  }
  assertErrorShape(assert, await get('b', `/api/v1/graph/path?from=${sid('b', 'y')}&to=${sid('a', 'a')}`), 404, 'not_found');
  const g = await get('b', '/api/v1/graph');
  assert.deepEqual(g.json.nodes.map((n) => n.name), ['y']);
  const cycles = await get('b', '/api/v1/graph/cycles');
  assert.equal(cycles.json.count, 0);
  const anon = await request(shim, '/api/v1/graph');
  assert.equal(anon.status, 401);
});

test('an API key with the read scope works as well as a session; an ingest-only key may not read', async () => {
  const create = (body) => request(shim, '/api/v1/keys', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Cookie: tenants.a.cookie, 'X-CSRF-Token': tenants.a.csrf },
    body: JSON.stringify(body),
  });
  const k = await create({ name: 'graph', scopes: ['read'] });
  assert.equal(k.status, 201, k.text);
  assert.deepEqual(k.json.scopes, ['read']);
  const path = `/api/v1/services/${sid('a', 'b')}/impact`;
  const r = await request(shim, path, { headers: { 'X-Lattice-API-Key': k.json.key } });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.services.map((s) => s.name).sort(), ['a', 'c']);
  // a key created without scopes is the plugin's: ingest only
  const plugin = await create({ name: 'plugin' });
  assert.equal(plugin.status, 201, plugin.text);
  assert.deepEqual(plugin.json.scopes, ['ingest']);
  const refused = await request(shim, path, { headers: { 'X-Lattice-API-Key': plugin.json.key } });
  assertErrorShape(assert, refused, 403, 'insufficient_scope');
  assert.deepEqual(refused.json.error.details, { required_scope: 'read' });
});

test('a change is seen at once and NOTIFY lattice_graph says "<user_id>:<version>"', async () => {
  const listener = spawn('psql', ['-XAtq', '-c', 'LISTEN lattice_graph', '-c', 'SELECT pg_sleep(1.5)'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  listener.stdout.on('data', (c) => { out += c; });
  listener.stderr.on('data', (c) => { out += c; });
  const done = new Promise((resolve) => listener.on('exit', resolve));
  await new Promise((r) => setTimeout(r, 400));
  psql(`INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count)
        VALUES ('${tenants.a.id}', '${sid('a', 'd')}', '${sid('a', 'a')}', 1);
        SELECT lattice.graph_bump('${tenants.a.id}')`);
  const version = psql(`SELECT version FROM lattice.graph_versions WHERE user_id = '${tenants.a.id}'`);
  await done;
  assert.match(out, new RegExp(`lattice_graph.*${tenants.a.id}:${version}`));
  const c = await get('a', '/api/v1/graph/cycles');
  assert.deepEqual(c.json.cycles[0].services.map((s) => s.name).sort(), ['a', 'b', 'c', 'd']);
  const g = await get('a', '/api/v1/graph');
  assert.equal(g.json.version, Number(version));
});
