// Streamed routes (R_STREAM, docs/http-contract.md "Streamed routes"): a
// SETOF lattice.http_response read one row at a time and written as chunks,
// so a large document never sits whole in the shim; errors before the first
// row are the usual JSON answers, errors after it cut the answer.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { startShim, rawRequest, request, psql, eventually, assertErrorShape } from './lib.mjs';

// _test_stream is inlined by the planner (LANGUAGE sql, STABLE, neither
// SECURITY DEFINER nor SET): a SETOF function that is not inlined is
// materialized whole before its first row, and an error in a later row would
// then come before anything was sent.  Each row comes from _test_stream_row,
// secured like the other test functions.  Query:
//   rows=N&size=B   '[' then N strings of B bytes, comma separated, then ']'
//   raise=S         lattice.raise_http(S, 'forbidden_test', 'x') before row 0
//   status=S        row 0 is lattice.http_error(S, 'not_found_test', …), the
//                   other rows follow as usual
//   fail_after=K    the row after K items raises
//   sleep_ms=M      each row after the first sleeps M ms
//   count=1         row 0 counts the address (rate headers)
const FUNCTIONS = `
CREATE OR REPLACE FUNCTION lattice_http._test_stream_row(req jsonb, i bigint, n bigint)
RETURNS lattice.http_response LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE q jsonb := req->'query';
        size int := COALESCE((q->>'size')::int, 1024);
BEGIN
    IF q ? 'sleep_ms' AND i > 0 THEN
        PERFORM pg_sleep((q->>'sleep_ms')::int / 1000.0);
    END IF;
    IF i = 0 AND q ? 'raise' THEN
        PERFORM lattice.raise_http((q->>'raise')::int, 'forbidden_test', 'x');
    ELSIF i = 0 AND q ? 'status' THEN
        RETURN lattice.http_error((q->>'status')::int, 'not_found_test', 'nothing to export');
    ELSIF i = 0 THEN
        IF q ? 'count' THEN
            PERFORM lattice.rate_enforce_address(req, 'health');
        END IF;
        RETURN ROW(200, jsonb_build_object('Content-Type', 'application/json',
                                           'Content-Disposition', 'attachment; filename="test.json"'),
                   '[')::lattice.http_response;
    ELSIF q ? 'fail_after' AND i > (q->>'fail_after')::bigint THEN
        RAISE EXCEPTION 'stream failed on purpose';
    ELSIF i > n THEN
        RETURN ROW(NULL, NULL, ']')::lattice.http_response;
    END IF;
    RETURN ROW(NULL, NULL, CASE WHEN i > 1 THEN ',' ELSE '' END || '"' || lpad(i::text, 8, '0')
                           || repeat('x', size - 10) || '"')::lattice.http_response;
END $$;

CREATE OR REPLACE FUNCTION lattice_http._test_stream(req jsonb, body text)
RETURNS SETOF lattice.http_response LANGUAGE sql STABLE AS $$
    SELECT r.status, r.headers, r.body
      FROM pg_catalog.generate_series(0, COALESCE((req->'query'->>'rows')::bigint, 3) + 1) AS g(i),
           LATERAL lattice_http._test_stream_row(req, g.i, COALESCE((req->'query'->>'rows')::bigint, 3)) AS r
$$;

GRANT EXECUTE ON FUNCTION lattice_http._test_stream(jsonb, text),
    lattice_http._test_stream_row(jsonb, bigint, bigint) TO lattice_api;
`;

const PATH = '/api/v1/_test/stream';
// the document of rows=n&size=b
const docLength = (n, b) => 1 + n * b + (n - 1) + 1;
const item = (i, b) => `"${String(i).padStart(8, '0')}${'x'.repeat(b - 10)}"`;
const doc = (n, b) => `[${Array.from({ length: n }, (_, i) => item(i + 1, b)).join(',')}]`;

let shim, slow;
before(async () => {
  psql(FUNCTIONS);
  // one pooled connection: every request after a failed stream runs on the
  // connection that stream used
  shim = await startShim({ env: { LATTICE_SHIM_POOL_SIZE: '1' } });
  // a short statement timeout for T_SLOW, and unnamed statements
  slow = await startShim({
    env: { LATTICE_SHIM_POOL_SIZE: '1', LATTICE_SHIM_STATEMENT_TIMEOUT_SLOW_MS: '1000', LATTICE_SHIM_PREPARED_STATEMENTS: '0' },
  });
});
after(async () => {
  await shim?.stop();
  await slow?.stop();
  psql(`DROP FUNCTION IF EXISTS lattice_http._test_stream(jsonb, text),
        lattice_http._test_stream_row(jsonb, bigint, bigint)`);
});

// GET (or HEAD) with node's http client, which checks the chunked framing:
// 'end' only after the last chunk.  Keeps the first and last 64 bytes (and
// the whole body with keep); leaveAfter: destroy the socket after that many
// bytes.  Resolves once the response is closed.
function get(s, path, { method = 'GET', agent = false, keep = false, leaveAfter = 0, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: s.port, path, method, agent, headers }, (res) => {
      const out = { status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, bytes: 0, head: '',
        tail: '', chunks: [], ended: false, aborted: false, error: null, reused: req.reusedSocket, left: false };
      let tail = Buffer.alloc(0);
      res.on('data', (c) => {
        if (out.bytes < 64) out.head += c.subarray(0, 64 - out.bytes).toString('latin1');
        out.bytes += c.length;
        tail = c.length >= 64 ? c.subarray(c.length - 64) : Buffer.concat([tail, c]).subarray(-64);
        if (keep) out.chunks.push(c);
        if (leaveAfter && out.bytes >= leaveAfter && !out.left) {
          out.left = true;
          req.destroy();
        }
      });
      res.on('end', () => { out.ended = true; });
      res.on('aborted', () => { out.aborted = true; });
      res.on('error', (e) => { out.error = e; });
      res.on('close', () => {
        out.tail = tail.toString('latin1');
        out.body = keep ? Buffer.concat(out.chunks).toString('utf8') : undefined;
        resolve(out);
      });
    });
    req.on('error', (e) => { if (!req.res) reject(e); });
    req.end();
  });
}

const vmHWM = (pid) => Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const poolConnects = async (s) => {
  const m = await request(s, '/metrics');
  return Number(/^lattice_pool_connects_total (\d+)$/m.exec(m.text)[1]);
};
// the shim's queries of the streamed route still running
const activeStreams = () => Number(psql(`SELECT count(*) FROM pg_stat_activity
  WHERE usename = 'lattice_shim' AND state = 'active' AND query LIKE '%_test_stream(%'`));

// the payload of a raw chunked body, and whether it ended with the last chunk
function dechunk(raw) {
  let rest = Buffer.from(raw, 'latin1');
  const parts = [];
  for (;;) {
    const eol = rest.indexOf('\r\n');
    if (eol < 0) return { body: Buffer.concat(parts).toString('utf8'), last: false };
    const len = parseInt(rest.subarray(0, eol).toString('latin1'), 16);
    if (len === 0) return { body: Buffer.concat(parts).toString('utf8'), last: rest.subarray(eol).toString() === '\r\n\r\n' };
    if (rest.length < eol + 2 + len + 2) return { body: Buffer.concat(parts).toString('utf8'), last: false };
    parts.push(rest.subarray(eol + 2, eol + 2 + len));
    rest = rest.subarray(eol + 2 + len + 2);
  }
}

test('a 200 is streamed: chunked, no Content-Length, the function\'s headers and every answer\'s', async () => {
  const r = await rawRequest(shim, `GET ${PATH}?rows=3&size=20&count=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: stream-1\r\nConnection: close\r\n\r\n`,
    { untilClose: true, localAddress: '127.0.0.7' });
  assert.equal(r.status, 200);
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.equal(r.headers['content-length'], undefined);
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers['content-disposition'], 'attachment; filename="test.json"');
  assert.equal(r.headers['x-request-id'], 'stream-1');
  assert.equal(r.headers['x-content-type-options'], 'nosniff');
  assert.equal(r.headers['cache-control'], 'no-store');
  assert.match(r.headers['content-security-policy'], /frame-ancestors 'none'/);
  assert.equal(r.headers['ratelimit-class'], 'address');
  assert.match(r.headers['ratelimit-remaining'], /^\d+$/);
  const { body, last } = dechunk(r.raw.slice(r.raw.indexOf('\r\n\r\n') + 4));
  assert.ok(last, 'the answer ends with the last chunk');
  assert.equal(body, doc(3, 20));
  assert.deepEqual(JSON.parse(body).length, 3);
  // counted like any request
  const line = await eventually(() => shim.accessLog().find((l) => l.request_id === 'stream-1'));
  assert.equal(line.status, 200);
  assert.equal(line.route, PATH);
  assert.equal(line.bytes, body.length);
  const m = await request(shim, '/metrics');
  assert.match(m.text, /lattice_http_requests_total\{route="\/api\/v1\/_test\/stream",method="GET",status="200"\} [1-9]/);
});

test('a streamed answer keeps the connection alive for the next request', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  try {
    const a = await get(shim, `${PATH}?rows=100&size=100`, { agent, keep: true });
    assert.equal(a.status, 200);
    assert.ok(a.ended);
    assert.equal(a.body, doc(100, 100));
    const b = await get(shim, `${PATH}?rows=2&size=50`, { agent, keep: true });
    assert.ok(b.reused, 'the same connection');
    assert.equal(b.body, doc(2, 50));
  } finally {
    agent.destroy();
  }
});

test('200,000 rows of 1 KiB arrive whole while the shim\'s peak memory stays flat', async (t) => {
  await get(shim, `${PATH}?rows=1000`); // warm: statement prepared, buffers allocated once
  const before = vmHWM(shim.proc.pid);
  const n = 200000;
  const r = await get(shim, `${PATH}?rows=${n}&size=1024`);
  const growth = vmHWM(shim.proc.pid) - before;
  assert.equal(r.status, 200);
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.ok(r.ended, 'complete, last chunk included');
  assert.equal(r.bytes, docLength(n, 1024));
  assert.equal(r.head.slice(0, 10), '["00000001');
  assert.ok(r.tail.endsWith(`${'x'.repeat(20)}"]`));
  t.diagnostic(`${r.bytes} bytes streamed; shim peak RSS ${(before / 1048576).toFixed(1)} MiB -> +${(growth / 1048576).toFixed(2)} MiB`);
  if (process.env.ASAN_OPTIONS) {
    t.diagnostic('AddressSanitizer build: its quarantine holds freed rows, the memory bound is not checked');
    return;
  }
  assert.ok(growth < 64 * 1048576, `peak RSS grew by ${growth} bytes for a ${r.bytes}-byte document`);
});

test('an error before the first row is the usual JSON error', async () => {
  const r = await request(shim, `${PATH}?raise=403`);
  assertErrorShape(assert, r, 403, 'forbidden_test');
  assert.equal(r.json.error.message, 'x');
  assert.equal(r.headers.get('transfer-encoding'), null);
  assert.equal(Number(r.headers.get('content-length')), Buffer.byteLength(r.text));
});

test('a first row that is not 200 is answered like any route\'s, the rows after it are dropped', async () => {
  const r = await request(shim, `${PATH}?status=404&rows=50`, { headers: { 'X-Request-Id': 'stream-404' } });
  assertErrorShape(assert, r, 404, 'not_found_test');
  assert.equal(r.json.error.request_id, 'stream-404');
  assert.equal(r.headers.get('transfer-encoding'), null);
  assert.equal(Number(r.headers.get('content-length')), Buffer.byteLength(r.text));
  const next = await get(shim, `${PATH}?rows=2&size=16`, { keep: true });
  assert.equal(next.body, doc(2, 16));
});

test('an error after the first rows cuts the answer: no last chunk, the connection closed', async () => {
  const connects = await poolConnects(shim);
  const r = await get(shim, `${PATH}?rows=5000&fail_after=3000`, { headers: { 'X-Request-Id': 'stream-cut' } });
  assert.equal(r.status, 200, 'the status was sent before the error');
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.ok(!r.ended, 'never complete');
  assert.ok(r.aborted || r.error, 'the client sees the answer aborted');
  assert.ok(r.bytes > 0 && r.bytes < docLength(3000, 1024), `${r.bytes} bytes before the cut`);
  // on the wire: the bytes stop without "0\r\n\r\n" and the connection closes
  const raw = await rawRequest(shim, `GET ${PATH}?rows=50&size=100&fail_after=20 HTTP/1.1\r\nHost: x\r\n\r\n`,
    { untilClose: true, timeout: 5000 });
  assert.equal(raw.status, 200);
  assert.ok(!dechunk(raw.raw.slice(raw.raw.indexOf('\r\n\r\n') + 4)).last, 'no last chunk');
  assert.ok(raw.elapsed < 4000, 'closed by the shim, not by a timeout');
  const logged = await eventually(() => shim.stderr.find((l) => l.includes('stream-cut')));
  assert.match(logged, /answer cut: P0001 stream failed on purpose/);
  // the one pooled connection came back clean: the next stream runs on it
  const next = await get(shim, `${PATH}?rows=3&size=16`, { keep: true });
  assert.equal(next.body, doc(3, 16));
  assert.equal(await poolConnects(shim), connects, 'no connection was dropped');
});

test('the statement timeout after the first rows cuts the answer the same way (unnamed statements)', async () => {
  const r = await get(slow, `${PATH}?rows=1000&size=1000&sleep_ms=20`, { headers: { 'X-Request-Id': 'stream-timeout' } });
  assert.equal(r.status, 200);
  assert.ok(!r.ended && (r.aborted || r.error), 'cut');
  assert.ok(r.bytes > 0, 'rows were sent before the timeout');
  const logged = await eventually(() => slow.stderr.find((l) => l.includes('stream-timeout')));
  assert.match(logged, /answer cut: 57014/);
  const next = await get(slow, `${PATH}?rows=3&size=16`, { keep: true });
  assert.equal(next.body, doc(3, 16));
  const refused = await request(slow, `${PATH}?raise=403`);
  assertErrorShape(assert, refused, 403, 'forbidden_test');
});

test('a client that leaves mid-stream: the query is cancelled, the shim carries on', async () => {
  const connects = await poolConnects(shim);
  // 100,000 rows of 5 ms: over 8 minutes unless cancelled
  const r = await get(shim, `${PATH}?rows=100000&size=1024&sleep_ms=5`,
    { leaveAfter: 20000, headers: { 'X-Request-Id': 'stream-left' } });
  assert.equal(r.status, 200);
  assert.ok(r.left && !r.ended);
  await eventually(() => activeStreams() === 0, { timeout: 5000 });
  const logged = await eventually(() => shim.stderr.find((l) => l.includes('stream-left')));
  assert.match(logged, /the client left after \d+ bytes/);
  const next = await get(shim, `${PATH}?rows=3&size=16`, { keep: true });
  assert.equal(next.body, doc(3, 16));
  assert.equal(await poolConnects(shim), connects, 'no connection was dropped');
  assert.equal(activeStreams(), 0);
});

test('HEAD answers the head a GET gets and stops the query', async () => {
  const t0 = Date.now();
  const r = await get(shim, `${PATH}?rows=100000&sleep_ms=5`, { method: 'HEAD' });
  assert.equal(r.status, 200);
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.equal(r.headers['content-disposition'], 'attachment; filename="test.json"');
  assert.equal(r.bytes, 0);
  assert.ok(Date.now() - t0 < 3000, 'cancelled, not run to its end');
  await eventually(() => activeStreams() === 0, { timeout: 2000 });
});

test('HTTP/1.0 cannot tell a cut answer from a whole one: 426', async () => {
  const r = await rawRequest(shim, `GET ${PATH}?rows=3 HTTP/1.0\r\nHost: x\r\n\r\n`);
  assertErrorShape(assert, r, 426, 'upgrade_required');
  assert.equal(r.headers.upgrade, 'HTTP/1.1');
});

test('GET /api/v1/account/export is routed: a JSON error without a session', async () => {
  // 503 while lattice_http.account_export is not installed, 401 once it is
  const r = await request(shim, '/api/v1/account/export');
  assert.ok([401, 503].includes(r.status), `status ${r.status}`);
  assertErrorShape(assert, r, r.status);
});
