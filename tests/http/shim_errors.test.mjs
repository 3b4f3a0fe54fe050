// Every error path of the shim: raised and returned errors, the SQLSTATE
// table, refusals before the database, timeouts, missing functions, and
// the READ ONLY transaction of GET.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim, request, rawRequest, psql, assertErrorShape, eventually } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

let shim;
before(async () => {
  createTestFunctions();
  shim = await startShim({ env: { LATTICE_SHIM_STATEMENT_TIMEOUT_FAST_MS: '300' } });
});
after(async () => {
  await shim?.stop();
  dropTestFunctions();
});

test('lattice.raise_http: status, code, message, details and headers from the extension', async () => {
  const r = await request(shim, '/api/v1/_test/fail?pt=409&code=name_taken', { headers: { 'X-Request-Id': 'rid-raise' } });
  assertErrorShape(assert, r, 409, 'name_taken');
  assert.equal(r.json.error.message, 'raised on purpose');
  assert.deepEqual(r.json.error.details, { field: 'name' });
  assert.equal(r.json.error.request_id, 'rid-raise');
  assert.equal(r.headers.get('retry-after'), '7');
});

test('an error answer returned by the function gets the request id', async () => {
  const r = await request(shim, '/api/v1/_test/fail?answer=1', { headers: { 'X-Request-Id': 'rid-answer' } });
  assertErrorShape(assert, r, 422, 'answered_error');
  assert.deepEqual(r.json.error.details, { n: 1 });
  assert.equal(r.json.error.request_id, 'rid-answer');
  assert.equal(r.headers.get('x-extra'), '1');
});

const table = [
  ['23505', 409, 'already_exists'],
  ['23503', 409, 'conflict'],
  ['22P02', 400, 'invalid_input'],
  ['22023', 400, 'invalid_input'],
  ['23502', 400, 'invalid_input'],
  ['23514', 400, 'invalid_input'],
  ['P0001', 400, 'invalid_input'],
  ['28000', 401, 'unauthorized'],
  ['28P01', 401, 'unauthorized'],
  ['42501', 403, 'forbidden'],
  ['P0002', 404, 'not_found'],
  ['54000', 413, 'too_large'],
  ['40001', 503, 'unavailable'],
  ['40P01', 503, 'unavailable'],
  ['53300', 503, 'unavailable'],
  ['XX000', 500, 'internal'],
  ['42P01', 500, 'internal'],
];
for (const [state, status, code] of table) {
  test(`SQLSTATE ${state} -> ${status} ${code}`, async () => {
    const r = await request(shim, `/api/v1/_test/fail?sqlstate=${state}`);
    assertErrorShape(assert, r, status, code);
    if (status === 503) assert.equal(r.headers.get('retry-after'), '1');
    if (status >= 500) assert.doesNotMatch(r.json.error.message, /failing with/, 'internal messages stay inside');
    else assert.equal(r.json.error.message, `failing with ${state}`);
  });
}

test('a 500 is logged with its request id and SQLSTATE', async () => {
  await request(shim, '/api/v1/_test/fail?sqlstate=XX000', { headers: { 'X-Request-Id': 'rid-internal' } });
  const line = await eventually(() => shim.stderr.find((l) => l.includes('rid-internal')));
  const j = JSON.parse(line);
  assert.equal(j.level, 'error');
  assert.match(j.message, /XX000/);
});

test('a raised error rolls the whole request back', async () => {
  const r = await request(shim, '/api/v1/_test/fail?sqlstate=23505', { method: 'POST', headers: { 'X-Request-Id': 'rid-rollback' } });
  assert.equal(r.status, 409);
  assert.equal(psql("SELECT count(*) FROM public.shim_test_writes WHERE request_id = 'rid-rollback'"), '0');
});

test('GET runs READ ONLY; POST writes and commits', async () => {
  const g = await request(shim, '/api/v1/_test/write', { headers: { 'X-Request-Id': 'rid-get-write' } });
  assertErrorShape(assert, g, 500, 'internal');
  assert.equal(psql("SELECT count(*) FROM public.shim_test_writes WHERE request_id = 'rid-get-write'"), '0');
  const p = await request(shim, '/api/v1/_test/write', { method: 'POST', headers: { 'X-Request-Id': 'rid-post-write' } });
  assert.equal(p.status, 201);
  assert.equal(psql("SELECT count(*) FROM public.shim_test_writes WHERE request_id = 'rid-post-write'"), '1');
});

test('statement_timeout per class: a slow call answers 504 and the connection is reusable', async () => {
  const r = await request(shim, '/api/v1/_test/sleep?ms=2000');
  assertErrorShape(assert, r, 504, 'timeout');
  const ok = await request(shim, '/api/v1/_test/sleep?ms=10');
  assert.equal(ok.status, 200);
});

test('a function that is not installed: JSON 503, logged, the shim keeps serving', async () => {
  for (let i = 0; i < 3; i++) {
    const r = await request(shim, '/api/v1/_test/missing');
    assertErrorShape(assert, r, 503, 'unavailable');
    assert.ok(r.headers.get('retry-after'));
  }
  assert.ok(shim.stderr.some((l) => l.includes('lattice_http._test_missing is not installed')));
  assert.equal((await request(shim, '/ready')).status, 200);
});

test('415 for a non-JSON body on a JSON route; other routes take any type', async () => {
  const r = await request(shim, '/api/v1/_test/echo', { method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: 'hi' });
  assertErrorShape(assert, r, 415, 'unsupported_media_type');
  const none = await rawRequest(shim, 'POST /api/v1/_test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}');
  assert.equal(none.status, 415);
  const plus = await request(shim, '/api/v1/_test/echo', { method: 'POST', headers: { 'Content-Type': 'application/merge-patch+json' }, body: '{}' });
  assert.equal(plus.status, 200);
  const put = await request(shim, '/api/v1/_test/echo', { method: 'PUT', headers: { 'Content-Type': 'text/plain' }, body: 'hi' });
  assert.equal(put.status, 200);
  assert.equal(put.json.body, 'hi');
});

test('400 invalid_utf8 for a body that is not UTF-8 (or holds NUL)', async () => {
  for (const bytes of [Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), Buffer.from('{"a":"\u0000"}'), Buffer.from([0xc3])]) {
    const r = await request(shim, '/api/v1/_test/echo', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: bytes });
    assertErrorShape(assert, r, 400, 'invalid_utf8');
  }
});

test('JSON syntax is the extension\'s to judge: a bad body reaches the function', async () => {
  const r = await request(shim, '/api/v1/_test/echo', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{nope' });
  assert.equal(r.status, 200);
  assert.equal(r.json.body, '{nope');
});

test('malformed HTTP: JSON 400 from the server itself', async () => {
  const r = await rawRequest(shim, 'GARBAGE\r\n\r\n');
  assertErrorShape(assert, r, 400, 'bad_request');
});

test('a method outside the table on a static path: 405', async () => {
  const r = await request(shim, '/index.html', { method: 'POST', body: 'x' });
  assertErrorShape(assert, r, 405, 'method_not_allowed');
  assert.equal(r.headers.get('allow'), 'GET, HEAD');
});

test('an outbox claim of another shape (an extension older than the shim) is a database error, never a job', async () => {
  const db = `lattice_oldclaim_${process.pid}`;
  psql(`CREATE DATABASE ${db}`, { db: 'postgres' });
  let old;
  try {
    // two columns where lattice_worker.job has ten or more
    psql(`CREATE SCHEMA lattice_worker;
          CREATE FUNCTION lattice_worker.outbox_claim_due(integer, text[]) RETURNS TABLE (id bigint, kind text)
            LANGUAGE sql AS $$ SELECT 1::bigint, 'email'::text $$;
          GRANT USAGE ON SCHEMA lattice_worker TO lattice_shim`, { db });
    old = await startShim({ env: {
      LATTICE_SHIM_CONNINFO: `host=${process.env.PGHOST} port=${process.env.PGPORT} dbname=${db} user=lattice_shim`,
      LATTICE_OUTBOX_POLL_MS: '100' } });
    await eventually(() => old.stderr.some((l) => l.includes('a claimed job has 2 columns, not 10 or more')), { timeout: 5000 });
    assert.equal((await request(old, '/api/v1/health')).status, 200, 'the shim runs on');
    // after a failed statement a worker starts again on a fresh connection:
    // sessions keep being opened (this test's own psql opens one of them)
    const sessions = () => Number(psql(`SELECT sessions FROM pg_stat_database WHERE datname = '${db}'`, { db }));
    const before = sessions();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const opened = sessions() - before - 1;
    assert.ok(opened >= 5, `${opened} new sessions in 2 s`);
    assert.ok(!old.stderr.some((l) => l.includes('"outbox job"')), 'no job was attempted');
  } finally {
    await old?.stop();
    psql(`DROP DATABASE ${db} WITH (FORCE)`, { db: 'postgres' });
  }
});
