// Access log lines, /metrics, and graceful shutdown.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim, request, assertErrorShape, eventually, crashReport } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

let shim;
before(async () => {
  createTestFunctions();
  shim = await startShim();
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

const TENANT = '0b0b0b0b-1111-4222-8333-444444444444';

test('one JSON access-log line per request, with the tenant and never a credential', async () => {
  await request(shim, `/api/v1/_test/echo/7/items/8?tenant=${TENANT}&secret=qs-secret`, {
    headers: { 'X-Request-Id': 'rid-log-1', 'X-Lattice-API-Key': 'ltc_supersecret', Authorization: 'Bearer jwt-secret',
               Cookie: 'lattice_session=cookie-secret' } });
  const line = await eventually(() => shim.accessLog().find((l) => l.request_id === 'rid-log-1'));
  assert.equal(line.method, 'GET');
  assert.equal(line.route, '/api/v1/_test/echo/{id}/items/{item}');
  assert.equal(line.path, '/api/v1/_test/echo/7/items/8');
  assert.equal(line.status, 200);
  assert.ok(line.bytes > 0);
  assert.equal(typeof line.duration_ms, 'number');
  assert.equal(line.client, '127.0.0.1');
  assert.equal(line.tenant, TENANT);
  assert.ok(!Number.isNaN(Date.parse(line.time)));
  const raw = shim.stdout.find((l) => l.includes('rid-log-1'));
  for (const secret of ['ltc_supersecret', 'jwt-secret', 'cookie-secret', 'qs-secret'])
    assert.ok(!raw.includes(secret), `log must not hold ${secret}`);
});

test('requests without a tenant log tenant null; unmatched ones log their kind', async () => {
  await request(shim, '/ready', { headers: { 'X-Request-Id': 'rid-log-2' } });
  await request(shim, '/api/v1/nowhere', { headers: { 'X-Request-Id': 'rid-log-3' } });
  const ready = await eventually(() => shim.accessLog().find((l) => l.request_id === 'rid-log-2'));
  assert.equal(ready.tenant, null);
  assert.equal(ready.route, '/ready');
  const nowhere = await eventually(() => shim.accessLog().find((l) => l.request_id === 'rid-log-3'));
  assert.equal(nowhere.route, 'unmatched');
  assert.equal(nowhere.status, 404);
});

test('/metrics: requests by route and status, latency histogram, pool and connections', async () => {
  await request(shim, '/ready');
  await request(shim, '/api/v1/_test/fail?sqlstate=23505');
  // a request is counted once its answer is written, so a scrape may come
  // just before the count: scrape again, briefly, as Prometheus would
  const failed = /^lattice_http_requests_total\{route="\/api\/v1\/_test\/fail",method="GET",status="409"\} 1$/m;
  let r = await request(shim, '/metrics');
  for (let i = 0; i < 20 && r.status === 200 && !failed.test(r.text); i++) {
    await new Promise((ok) => setTimeout(ok, 50));
    r = await request(shim, '/metrics');
  }
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  const m = r.text;
  assert.match(m, /^lattice_http_requests_total\{route="\/ready",method="GET",status="200"\} [1-9]\d*$/m);
  assert.match(m, failed);
  assert.match(m, /^# TYPE lattice_http_request_duration_seconds histogram$/m);
  assert.match(m, /^lattice_http_request_duration_seconds_bucket\{route="\/ready",method="GET",le="\+Inf"\} \d+$/m);
  assert.match(m, /^lattice_http_request_duration_seconds_count\{route="\/ready",method="GET"\} \d+$/m);
  for (const g of ['lattice_pool_size 4', 'lattice_pool_in_use ', 'lattice_pool_waiting ', 'lattice_pool_errors_total ',
                   'lattice_pool_timeouts_total ', 'lattice_http_connections_open '])
    assert.ok(m.includes(`\n${g}`), g);
  // buckets are cumulative
  const b = [...m.matchAll(/^lattice_http_request_duration_seconds_bucket\{route="\/ready",method="GET",le="[^"]+"\} (\d+)$/gm)].map((x) => Number(x[1]));
  assert.ok(b.length > 5);
  for (let i = 1; i < b.length; i++) assert.ok(b[i] >= b[i - 1]);
});

test('/metrics is refused to addresses off metrics_allow', async () => {
  const other = await startShim({ env: { LATTICE_SHIM_METRICS_ALLOW: '10.9.9.9' } });
  try {
    const r = await request(other, '/metrics');
    assertErrorShape(assert, r, 403, 'forbidden');
  } finally {
    await other.stop();
  }
});

test('SIGTERM: in-flight requests finish, then the shim exits 0', async () => {
  const s = await startShim();
  const slow = request(s, '/api/v1/_test/sleep?ms=600');
  await new Promise((res) => setTimeout(res, 150));
  s.proc.kill('SIGTERM');
  const r = await slow;
  assert.equal(r.status, 200);
  const { code } = await s.exited;
  assert.equal(code, 0);
  assert.ok(s.stderr.some((l) => l.includes('"stopped"')), s.stderr.join('\n'));
});

test('a fatal signal leaves its backtrace on stderr as JSON lines, then the shim dies of it', async () => {
  const s = await startShim();
  const { signal } = await s.stop('SIGSEGV');
  assert.equal(signal, 'SIGSEGV');
  const head = await eventually(() => s.stderr.map((l) => JSON.parse(l)).find((l) => l.level === 'fatal' && l.msg));
  assert.equal(head.msg, 'signal 11');
  const frames = await eventually(() => {
    const f = s.stderr.map((l) => JSON.parse(l)).filter((l) => l.level === 'fatal' && l.frame !== undefined);
    return f.length === head.frames && f;
  });
  assert.ok(frames.length >= 3, `${frames.length} frames`);
  frames.forEach((f, i) => {
    assert.equal(f.frame, i);
    assert.match(f.offset, /^0x[0-9a-f]+$/);
  });
  assert.ok(frames.some((f) => f.object.endsWith('/lattice-shim')), 'a frame in the shim itself');
  // object + offset is what addr2line needs: the innermost frame of the shim's own is the handler
  // (under make test-asan an interceptor of backtrace() comes first)
  assert.match(crashReport(s.port, 'SIGSEGV', s.stderr), /#[01] \S+lattice-shim \+0x[0-9a-f]+ .*on_fatal_signal \S*crash\.c:\d+/);
});
