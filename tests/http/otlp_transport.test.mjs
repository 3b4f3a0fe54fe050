// The shim's OTLP/HTTP transport (shim/otlp.c, docs/shim.md "OTLP traces")
// end to end, on the test route POST /api/v1/_test/otlp (R_TEST | R_OTLP),
// whose function _test_otlp (created here) records the req.otlp and the body
// it got and answers {} or a partialSuccess.  The SDK's real exports of the
// same spans (tests/fixtures/otlp: protobuf, JSON, protobuf + gzip) are the
// inputs; protobufjs reads and writes the protobuf side from shim/otlp/proto.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import zlib from 'node:zlib';
import protobuf from 'protobufjs';
import { ROOT, startShim, rawRequest, psql, assertErrorShape } from './lib.mjs';

const FIXTURES = path.join(ROOT, 'tests/fixtures/otlp');
const PROTO_DIR = path.join(ROOT, 'shim/otlp/proto');
const ROUTE = '/api/v1/_test/otlp';
const PB = 'application/x-protobuf';

const sdkPb = fs.readFileSync(path.join(FIXTURES, 'sdk_traces.pb'));
const sdkJson = fs.readFileSync(path.join(FIXTURES, 'sdk_traces.json'));
const sdkPbGz = fs.readFileSync(path.join(FIXTURES, 'sdk_traces.pb.gz'));

const protos = new protobuf.Root();
protos.resolvePath = (origin, target) => (path.isAbsolute(target) ? target : path.join(PROTO_DIR, target));
protos.loadSync(['opentelemetry/proto/collector/trace/v1/trace_service.proto', 'google/rpc/status.proto']);
const ExportRequest = protos.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest');
const ExportResponse = protos.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse');
const Status = protos.lookupType('google.rpc.Status');

const FUNCTIONS = `
CREATE TABLE IF NOT EXISTS public.shim_test_otlp (request_id text, otlp jsonb, body text);

-- Records what the shim passed; a span named "partial:<n>" asks for a partial
-- success of n, spans the shim dropped are answered as the real function
-- would; ?fail=<status> returns an error answer, ?raise=<status> raises one.
CREATE OR REPLACE FUNCTION lattice_http._test_otlp(req jsonb, body text)
RETURNS lattice.http_response LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q jsonb := req->'query';
    asked text;
BEGIN
    IF q ? 'raise' THEN
        PERFORM lattice.raise_http((q->>'raise')::int, 'raised_test', 'raised on purpose', NULL,
                                   '{"Retry-After": "7"}'::jsonb);
    ELSIF q ? 'fail' THEN
        RETURN lattice.http_error((q->>'fail')::int, 'failed_test', 'failed on purpose', NULL, '{"X-Test": "kept"}'::jsonb);
    END IF;
    INSERT INTO public.shim_test_otlp VALUES (req->>'request_id', req->'otlp', body);
    SELECT substr(s->>'name', 9) INTO asked
      FROM jsonb_path_query(body::jsonb, '$.resourceSpans[*].scopeSpans[*].spans[*]') s
     WHERE s->>'name' LIKE 'partial:%' LIMIT 1;
    IF asked IS NOT NULL THEN
        RETURN ROW(200, '{}'::jsonb, jsonb_build_object('partialSuccess', jsonb_build_object(
            'rejectedSpans', asked, 'errorMessage', 'asked for by the test'))::text)::lattice.http_response;
    ELSIF (req->'otlp'->>'rejectedSpans')::int > 0 THEN
        RETURN ROW(200, '{}'::jsonb, jsonb_build_object('partialSuccess', jsonb_build_object(
            'rejectedSpans', req->'otlp'->>'rejectedSpans', 'errorMessage', req->'otlp'->>'rejectedMessage'))::text)::lattice.http_response;
    END IF;
    RETURN ROW(200, '{}'::jsonb, '{}')::lattice.http_response;
END $$;
GRANT EXECUTE ON FUNCTION lattice_http._test_otlp(jsonb, text) TO lattice_api;
`;

let shim;
before(async () => {
  psql(FUNCTIONS);
  shim = await startShim();
});
after(async () => {
  await shim?.stop();
  psql('DROP FUNCTION IF EXISTS lattice_http._test_otlp(jsonb, text); DROP TABLE IF EXISTS public.shim_test_otlp;');
});

let seq = 0;
// POST body; resolves with { status, headers, bytes, rid, got } where got is
// what the function recorded ({ otlp, body }) or undefined.
async function post(body, { type = PB, encoding, query = '', path: p = ROUTE } = {}) {
  const rid = `otlp-${process.pid}-${++seq}`;
  const headers = { 'X-Request-Id': rid };
  if (type) headers['Content-Type'] = type;
  if (encoding) headers['Content-Encoding'] = encoding;
  const res = await fetch(shim.url + p + query, { method: 'POST', headers, body, signal: AbortSignal.timeout(20000) });
  const bytes = Buffer.from(await res.arrayBuffer());
  const row = psql(`SELECT json_build_object('otlp', otlp, 'body', body) FROM public.shim_test_otlp WHERE request_id = '${rid}'`);
  return { status: res.status, headers: res.headers, bytes, rid, got: row ? JSON.parse(row) : undefined };
}

// A protobuf error answer: a google.rpc.Status with the JSON answer's headers.
function assertStatus(r, status, grpcCode, code) {
  assert.equal(r.status, status, `status ${r.status}: ${r.bytes.toString('latin1').slice(0, 200)}`);
  assert.equal(r.headers.get('content-type'), PB);
  assert.equal(r.headers.get('x-request-id'), r.rid);
  const st = Status.decode(r.bytes);
  assert.equal(st.code, grpcCode, `grpc code of ${status}`);
  assert.ok(code === '' || st.message.startsWith(`${code}: `), st.message);
  return st;
}

// the body of a rawRequest answer, as bytes
const rawBody = (r) => Buffer.from(r.raw.slice(r.raw.indexOf('\r\n\r\n') + 4), 'latin1');

// ---- normalising both encodings: one entry per span, sorted by span id
const hexOrEmpty = (v) => (v ? String(v).toLowerCase() : '');
function value(v) {
  if (!v) return null;
  if ('stringValue' in v) return ['s', v.stringValue];
  if ('boolValue' in v) return ['b', v.boolValue];
  if ('intValue' in v) return ['i', String(v.intValue)];
  if ('doubleValue' in v) return ['d', Number(v.doubleValue)];
  if ('arrayValue' in v) return ['a', (v.arrayValue.values ?? []).map(value)];
  if ('kvlistValue' in v) return ['m', attrs(v.kvlistValue.values)];
  if ('bytesValue' in v) return ['y', v.bytesValue];
  return null;
}
const attrs = (kvs) => Object.fromEntries((kvs ?? []).map((kv) => [kv.key, value(kv.value)]));
function spansOf(doc) {
  const out = [];
  for (const rs of doc.resourceSpans ?? []) {
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        out.push({
          resource: attrs(rs.resource?.attributes),
          scope: { name: ss.scope?.name ?? '', version: ss.scope?.version ?? '' },
          traceId: hexOrEmpty(s.traceId), spanId: hexOrEmpty(s.spanId), parentSpanId: hexOrEmpty(s.parentSpanId),
          traceState: s.traceState ?? '', name: s.name, kind: s.kind ?? 0,
          start: String(s.startTimeUnixNano), end: String(s.endTimeUnixNano),
          attributes: attrs(s.attributes), droppedAttributesCount: s.droppedAttributesCount ?? 0,
          events: (s.events ?? []).map((e) => ({ time: String(e.timeUnixNano), name: e.name, attributes: attrs(e.attributes) })),
          links: (s.links ?? []).map((l) => ({ traceId: hexOrEmpty(l.traceId), spanId: hexOrEmpty(l.spanId),
                                               traceState: l.traceState ?? '', attributes: attrs(l.attributes) })),
          status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
        });
      }
    }
  }
  return out.sort((a, b) => a.spanId.localeCompare(b.spanId));
}

// The SDK's protobuf export with one span changed by fn(span, request).
function sdkWith(fn) {
  const req = ExportRequest.decode(sdkPb);
  fn(req.resourceSpans[0].scopeSpans[0].spans, req);
  return Buffer.from(ExportRequest.encode(req).finish());
}

// Replaces the ASCII placeholder (same length) in an encoded message.
function patch(buf, placeholder, bytes) {
  const at = buf.indexOf(placeholder);
  assert.ok(at >= 0 && bytes.length === placeholder.length);
  Buffer.from(bytes).copy(buf, at);
  return buf;
}
const INVALID_UTF8 = [0x66, 0x6f, 0xff, 0xfe, 0x80, 0x6f, 0xc3, 0x28]; // "fo", stray bytes, a cut sequence

function nested(depth) { // an AnyValue of arrays, depth levels in all
  let v = { stringValue: 'leaf' };
  for (let i = 1; i < depth; i++) v = { arrayValue: { values: [v] } };
  return v;
}

// The wire format by hand, for what protobufjs refuses to encode (nesting
// past its own limit): a length-delimited field.
function varint(n) {
  const out = [];
  for (; n > 0x7f; n = Math.floor(n / 128)) out.push((n & 0x7f) | 0x80);
  out.push(n);
  return Buffer.from(out);
}
const field = (num, payload) => Buffer.concat([varint((num << 3) | 2), varint(payload.length), payload]);

// One more ResourceSpans after the SDK's (protobuf concatenation appends to
// a repeated field) with a span whose attribute nests depth AnyValues.
function withDeepSpan(depth) {
  const leaf = field(1, Buffer.from('leaf'));
  const heads = [];
  let size = leaf.length;
  for (let i = 1; i < depth; i++) { // AnyValue{array_value(5): ArrayValue{values(1): ...}}
    const inner = Buffer.concat([varint((1 << 3) | 2), varint(size)]);
    size += inner.length;
    const outer = Buffer.concat([varint((5 << 3) | 2), varint(size)]);
    size += outer.length;
    heads.push(inner, outer);
  }
  const any = Buffer.concat([...heads.reverse(), leaf]);
  const span = Buffer.concat([field(5, Buffer.from('deep')), field(9, Buffer.concat([field(1, Buffer.from('k')), field(2, any)]))]);
  return Buffer.concat([sdkPb, field(1, field(2, field(2, span)))]);
}

// ---- (a) protobuf decodes to what the SDK's JSON says

test('the SDK protobuf export reaches SQL as OTLP/JSON equal to the SDK JSON export of the same spans', async () => {
  const r = await post(sdkPb);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), PB);
  const resp = ExportResponse.decode(r.bytes);
  assert.equal(resp.partialSuccess, null, 'no partial success');
  assert.deepEqual(r.got.otlp, { encoding: 'protobuf', rejectedSpans: 0 });

  const ours = JSON.parse(r.got.body);
  const theirs = JSON.parse(sdkJson);
  const a = spansOf(ours);
  const b = spansOf(theirs);
  assert.equal(a.length, 5);
  assert.deepEqual(a, b);

  // the OTLP/JSON conventions themselves: hex ids, decimal strings, integer enums
  const span = ours.resourceSpans[0].scopeSpans[0].spans.find((s) => s.name === 'every value type');
  assert.match(span.traceId, /^[0-9a-f]{32}$/);
  assert.match(span.spanId, /^[0-9a-f]{16}$/);
  assert.match(span.startTimeUnixNano, /^\d+$/);
  assert.equal(span.kind, 1);
  const int = span.attributes.find((kv) => kv.key === 'v.int');
  assert.deepEqual(int.value, { intValue: '42' });
  const bytes = span.attributes.find((kv) => kv.key === 'v.bytes');
  assert.deepEqual(bytes.value, { bytesValue: Buffer.from([0, 1, 2, 250, 255]).toString('base64') });
  const root = ours.resourceSpans[0].scopeSpans[0].spans.find((s) => s.name === 'POST /orders');
  assert.equal(root.parentSpanId, undefined, 'an empty parent id is left out');
  assert.equal(root.events[0].name, 'exception');
  assert.deepEqual(root.status, { code: 2, message: 'payment refused' });
});

test('a JSON export passes through as it is', async () => {
  const r = await post(sdkJson, { type: 'application/json' });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^application\/json/);
  assert.deepEqual(JSON.parse(r.bytes), {});
  assert.deepEqual(r.got.otlp, { encoding: 'json', rejectedSpans: 0 });
  assert.equal(r.got.body, sdkJson.toString('utf8'));
});

test('a JSON export that is not UTF-8 once inflated: 400 invalid_utf8 (JSON)', async () => {
  const bad = Buffer.concat([Buffer.from('{"resourceSpans":[],"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]);
  for (const [body, encoding] of [[bad, undefined], [zlib.gzipSync(bad), 'gzip']]) {
    const r = await post(body, { type: 'application/json', encoding });
    assertErrorShape(assert, { status: r.status, json: JSON.parse(r.bytes) }, 400, 'invalid_utf8');
    assert.equal(r.got, undefined);
  }
});

test('the deprecated instrumentation_library_spans become scopeSpans', async () => {
  const req = ExportRequest.decode(sdkPb);
  const rs = req.resourceSpans[0];
  const Library = protos.lookupType('opentelemetry.proto.trace.v1.InstrumentationLibrarySpans');
  rs.instrumentationLibrarySpans = [Library.create({ instrumentationLibrary: { name: 'old-lib', version: '0.9' },
                                                     spans: rs.scopeSpans[0].spans.slice(0, 2) })];
  rs.scopeSpans[0].spans = rs.scopeSpans[0].spans.slice(2);
  const r = await post(Buffer.from(ExportRequest.encode(req).finish()));
  assert.equal(r.status, 200);
  const scopes = JSON.parse(r.got.body).resourceSpans[0].scopeSpans;
  assert.equal(scopes.length, 2);
  assert.deepEqual(scopes[1].scope, { name: 'old-lib', version: '0.9' });
  assert.equal(scopes[0].spans.length + scopes[1].spans.length, 5);
  assert.deepEqual(spansOf(JSON.parse(r.got.body)).map((s) => s.spanId), spansOf(JSON.parse(sdkJson)).map((s) => s.spanId));
});

test('scope attributes are carried', async () => {
  const body = sdkWith((spans, req) => {
    req.resourceSpans[0].scopeSpans[0].scope.attributes = [{ key: 'scope.kind', value: { stringValue: 'test' } }];
  });
  const r = await post(body);
  assert.equal(r.status, 200);
  assert.deepEqual(JSON.parse(r.got.body).resourceSpans[0].scopeSpans[0].scope.attributes,
                   [{ key: 'scope.kind', value: { stringValue: 'test' } }]);
});

test('an empty body is an empty export: "{}" to SQL, an empty response', async () => {
  let r = await post(Buffer.alloc(0));
  assert.equal(r.status, 200);
  assert.equal(r.bytes.length, 0);
  assert.deepEqual(r.got, { otlp: { encoding: 'protobuf', rejectedSpans: 0 }, body: '{}' });
  r = await post(undefined, { type: null });
  assert.equal(r.status, 200);
  assert.deepEqual(r.got, { otlp: { encoding: 'json', rejectedSpans: 0 }, body: '{}' });
  r = await post(zlib.gzipSync(Buffer.alloc(0)), { encoding: 'gzip' });
  assert.equal(r.status, 200);
  assert.equal(r.got.body, '{}');
});

// ---- (b) gzip

test('gzip: the SDK gzip protobuf export and a gzip JSON export inflate to the same', async () => {
  const plain = await post(sdkPb);
  const r = await post(sdkPbGz, { encoding: 'gzip' });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), PB);
  assert.equal(r.got.body, plain.got.body);
  assert.deepEqual(r.got.otlp, { encoding: 'protobuf', rejectedSpans: 0 });

  const j = await post(zlib.gzipSync(sdkJson), { type: 'application/json', encoding: 'gzip' });
  assert.equal(j.status, 200);
  assert.equal(j.got.body, sdkJson.toString('utf8'));
  assert.deepEqual(j.got.otlp, { encoding: 'json', rejectedSpans: 0 });
});

test('gzip: several members, x-gzip, identity, any case', async () => {
  const half = Math.floor(sdkPb.length / 2);
  const members = Buffer.concat([zlib.gzipSync(sdkPb.subarray(0, half)), zlib.gzipSync(sdkPb.subarray(half))]);
  const plain = await post(sdkPb);
  for (const [body, encoding] of [[members, 'gzip'], [sdkPbGz, 'x-gzip'], [sdkPbGz, ' GZip '], [sdkPb, 'identity']]) {
    const r = await post(body, { encoding });
    assert.equal(r.status, 200, encoding);
    assert.equal(r.got.body, plain.got.body, encoding);
  }
});

// ---- (c) errors: protobuf requests get a google.rpc.Status

test('a malformed protobuf body: 400 invalid_protobuf as a google.rpc.Status', async () => {
  for (const body of [Buffer.from([0xff, 0xff, 0xff]), sdkPb.subarray(0, sdkPb.length - 7), Buffer.from('{"resourceSpans": []}')]) {
    const r = await post(body);
    assertStatus(r, 400, 3, 'invalid_protobuf');
    assert.equal(r.got, undefined, 'nothing reached SQL');
  }
});

test('messages nested past the wire bound: 400 invalid_protobuf, the shim still up', async () => {
  // 100,000 nested arrays: protobuf-c alone would recurse that deep
  const body = withDeepSpan(100000);
  assert.ok(body.length < 1 << 20);
  const r = await post(body);
  const st = assertStatus(r, 400, 3, 'invalid_protobuf');
  assert.match(st.message, /nests messages too deeply/);
  assert.equal((await post(sdkPb)).status, 200);
  // 20 levels: within the wire bound, past the AnyValue one: only that span goes
  const r20 = await post(withDeepSpan(20));
  assert.equal(r20.status, 200);
  assert.equal(r20.got.otlp.rejectedSpans, 1);
  assert.equal(spansOf(JSON.parse(r20.got.body)).length, 5);
});

test('a corrupt gzip body: 400 invalid_gzip (protobuf: a Status, JSON: the JSON error)', async () => {
  const flipped = Buffer.from(sdkPbGz);
  for (let i = 20; i < 60; i++) flipped[i] ^= 0x5a;
  for (const body of [flipped, sdkPbGz.subarray(0, sdkPbGz.length - 20), Buffer.from('not gzip at all'),
                      Buffer.concat([sdkPbGz, Buffer.from('trailing')])]) {
    const r = await post(body, { encoding: 'gzip' });
    assertStatus(r, 400, 3, 'invalid_gzip');
  }
  const j = await post(Buffer.from('not gzip'), { type: 'application/json', encoding: 'gzip' });
  assert.equal(j.status, 400);
  assert.match(j.headers.get('content-type'), /^application\/json/);
  assertErrorShape(assert, { status: j.status, json: JSON.parse(j.bytes) }, 400, 'invalid_gzip');
});

function peakRssKiB(pid) {
  return Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

test('a gzip bomb: 413 too_large, the inflated buffer never past otlp_inflated_max', async () => {
  // 512 MiB of zeros in about 0.5 MiB (under body_max): inflating it whole would show in the peak RSS
  const gz = zlib.createGzip({ level: 9 });
  const parts = [];
  gz.on('data', (c) => parts.push(c));
  const done = new Promise((resolve) => gz.on('end', resolve));
  const zeros = Buffer.alloc(1 << 20);
  for (let i = 0; i < 512; i++) gz.write(zeros);
  gz.end();
  await done;
  const bomb = Buffer.concat(parts);
  assert.ok(bomb.length < 1 << 20, `bomb of ${bomb.length} bytes fits body_max`);

  const before = peakRssKiB(shim.proc.pid);
  for (const type of [PB, 'application/json']) {
    const r = await post(bomb, { encoding: 'gzip', type });
    if (type === PB) assertStatus(r, 413, 8, 'too_large');
    else assertErrorShape(assert, { status: r.status, json: JSON.parse(r.bytes) }, 413, 'too_large');
  }
  const grown = peakRssKiB(shim.proc.pid) - before;
  assert.ok(grown < 64 * 1024, `peak RSS grew by ${grown} KiB`);
});

test('an inflated body just under otlp_inflated_max passes, one byte over is refused', async () => {
  const small = await startShim({ env: { LATTICE_SHIM_OTLP_INFLATED_MAX: String(sdkJson.length) } });
  try {
    const ask = (body, encoding) => fetch(`${small.url}${ROUTE}`, {
      method: 'POST', body, headers: { 'Content-Type': 'application/json', ...(encoding ? { 'Content-Encoding': encoding } : {}) },
    });
    assert.equal((await ask(zlib.gzipSync(sdkJson), 'gzip')).status, 200);
    const over = Buffer.concat([sdkJson, Buffer.from(' ')]);
    assert.equal((await ask(zlib.gzipSync(over), 'gzip')).status, 413);
    assert.equal((await ask(over)).status, 413, 'an identity body is held to it too');
  } finally {
    await small.stop();
  }
});

test('an unknown Content-Encoding: 415 unsupported_encoding', async () => {
  for (const encoding of ['br', 'deflate', 'gzip, gzip', 'compress']) {
    const r = await post(sdkPb, { encoding });
    assertStatus(r, 415, 3, 'unsupported_encoding');
  }
});

test('a Content-Type neither protobuf nor JSON: 415 unsupported_media_type (as JSON)', async () => {
  for (const type of ['text/plain', 'application/octet-stream', null]) {
    const r = await post(sdkPb, { type });
    assert.match(r.headers.get('content-type'), /^application\/json/);
    assertErrorShape(assert, { status: r.status, json: JSON.parse(r.bytes) }, 415, 'unsupported_media_type');
  }
  // both protobuf names are accepted, with parameters
  for (const type of ['application/protobuf', 'Application/X-Protobuf; charset=binary']) {
    assert.equal((await post(sdkPb, { type })).status, 200, type);
  }
});

test('a body over body_max: 413 as a Status, before the body is read', async () => {
  const r = await rawRequest(shim, `POST ${ROUTE} HTTP/1.1\r\nHost: x\r\nX-Request-Id: rid-big\r\n` +
                                   `Content-Type: ${PB}\r\nContent-Length: 5000000\r\n\r\n`);
  assert.equal(r.status, 413);
  assert.equal(r.headers['content-type'], PB);
  const st = Status.decode(rawBody(r));
  assert.equal(st.code, 8);
  assert.match(st.message, /^too_large: /);
});

test('a refusal before routing (429 per address) is a Status too, with its Retry-After', async () => {
  const one = await startShim({ env: { LATTICE_SHIM_PER_ADDRESS_MAX: '1' } });
  // an address of its own: startShim's readiness probe from 127.0.0.1 may
  // still hold that address's slot for a moment after it has its answer
  const from = '127.0.93.1';
  const held = net.connect({ port: one.port, host: '127.0.0.1', localAddress: from });
  try {
    // the held connection is counted once its first request is served
    await new Promise((resolve, reject) => {
      held.once('error', reject);
      held.once('data', resolve);
      held.write('GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n');
    });
    const head = `POST ${ROUTE} HTTP/1.1\r\nHost: x\r\nContent-Type: ${PB}\r\nContent-Length: ${sdkPb.length}\r\n\r\n`;
    const r = await rawRequest(one, Buffer.concat([Buffer.from(head), sdkPb]), { localAddress: from });
    assert.equal(r.status, 429);
    assert.equal(r.headers['content-type'], PB);
    assert.equal(r.headers['retry-after'], '1');
    const st = Status.decode(rawBody(r));
    assert.equal(st.code, 8);
    assert.match(st.message, /^too_many_connections: /);
  } finally {
    held.destroy();
    await one.stop();
  }
});

test("the function's error answers and raised errors: a Status with the JSON answer's headers", async () => {
  const table = [[400, 3], [401, 16], [402, 7], [403, 7], [404, 5], [409, 10], [413, 8], [422, 3], [429, 8],
                 [500, 13], [502, 14], [503, 14], [504, 4]];
  for (const [status, grpc] of table) {
    const r = await post(sdkPb, { query: `?fail=${status}` });
    const st = assertStatus(r, status, grpc, 'failed_test');
    assert.equal(st.message, 'failed_test: failed on purpose');
    assert.equal(r.headers.get('x-test'), 'kept');
  }
  const raised = await post(sdkPb, { query: '?raise=429' });
  assertStatus(raised, 429, 8, 'raised_test');
  assert.equal(raised.headers.get('retry-after'), '7');
  // a JSON request keeps the JSON error
  const j = await post(sdkJson, { type: 'application/json', query: '?raise=429' });
  assertErrorShape(assert, { status: j.status, json: JSON.parse(j.bytes) }, 429, 'raised_test');
  assert.equal(j.headers.get('retry-after'), '7');
});

test('POST /otlp/v1/traces is routed (the real function, or 503 while it is not installed)', async () => {
  const r = await post(sdkPb, { path: '/otlp/v1/traces' });
  assert.ok([401, 503].includes(r.status), `status ${r.status}`);
  const st = assertStatus(r, r.status, r.status === 401 ? 16 : 14, '');
  assert.match(st.message, /^[a-z_]+: ./);
  if (r.status === 503) assert.ok(r.headers.get('retry-after'));
});

// ---- (d) strings that are not UTF-8: the span holding one is dropped

test('invalid UTF-8 in one span attribute: that span dropped, rejectedSpans 1, the rest passed', async () => {
  let dropped;
  const body = patch(sdkWith((spans) => {
    dropped = Buffer.from(spans[1].spanId).toString('hex');
    spans[1].attributes.push({ key: 'bad', value: { stringValue: 'PLACEHLD' } });
  }), 'PLACEHLD', INVALID_UTF8);
  const r = await post(body);
  assert.equal(r.status, 200);
  assert.equal(r.got.otlp.encoding, 'protobuf');
  assert.equal(r.got.otlp.rejectedSpans, 1);
  assert.match(r.got.otlp.rejectedMessage, /1 span dropped.*not valid UTF-8/);
  const ids = spansOf(JSON.parse(r.got.body)).map((s) => s.spanId);
  assert.equal(ids.length, 4);
  assert.ok(!ids.includes(dropped));
  assert.deepEqual(ids, spansOf(JSON.parse(sdkJson)).map((s) => s.spanId).filter((id) => id !== dropped));
  // the function answered the count back: a partial success on the wire
  const resp = ExportResponse.decode(r.bytes);
  assert.equal(Number(resp.partialSuccess.rejectedSpans), 1);
  assert.match(resp.partialSuccess.errorMessage, /UTF-8/);
});

test('invalid UTF-8 anywhere in a span (name, event, link, status) drops it; in a resource or scope, all its spans', async () => {
  const cases = [
    [(spans) => { spans[0].name = 'PLACEHLD'; }, 1],
    [(spans) => { spans.find((s) => s.events.length).events[0].name = 'PLACEHLD'; }, 1],
    [(spans) => { spans.find((s) => s.links.length).links[0].traceState = 'PLACEHLD'; }, 1],
    [(spans) => { spans[0].status = { code: 2, message: 'PLACEHLD' }; }, 1],
    [(spans) => { spans[0].attributes.push({ key: 'PLACEHLD', value: { boolValue: true } }); }, 1],
    [(spans) => { spans[0].attributes.push({ key: 'm', value: { kvlistValue: { values: [{ key: 'k', value: { arrayValue: { values: [{ stringValue: 'PLACEHLD' }] } } }] } } }); }, 1],
    [(spans, req) => { req.resourceSpans[0].resource.attributes.push({ key: 'r', value: { stringValue: 'PLACEHLD' } }); }, 5],
    [(spans, req) => { req.resourceSpans[0].scopeSpans[0].scope.name = 'PLACEHLD'; }, 5],
    [(spans, req) => { req.resourceSpans[0].scopeSpans[0].schemaUrl = 'PLACEHLD'; }, 5],
  ];
  for (const [fn, n] of cases) {
    const r = await post(patch(sdkWith(fn), 'PLACEHLD', INVALID_UTF8));
    assert.equal(r.status, 200, fn.toString());
    assert.equal(r.got.otlp.rejectedSpans, n, fn.toString());
    assert.equal(spansOf(JSON.parse(r.got.body)).length, 5 - n, fn.toString());
  }
});

test('attribute values nested 8 deep pass, 9 deep drop the span', async () => {
  let r = await post(sdkWith((spans) => { spans[0].attributes.push({ key: 'deep', value: nested(8) }); }));
  assert.equal(r.got.otlp.rejectedSpans, 0);
  assert.equal(spansOf(JSON.parse(r.got.body)).length, 5);
  r = await post(sdkWith((spans) => { spans[0].attributes.push({ key: 'deep', value: nested(9) }); }));
  assert.equal(r.got.otlp.rejectedSpans, 1);
  assert.match(r.got.otlp.rejectedMessage, /nested deeper than 8/);
  assert.equal(spansOf(JSON.parse(r.got.body)).length, 4);
});

// ---- (e) partial success

test("the function's partialSuccess: an ExportTraceServiceResponse for protobuf, the JSON as it is for JSON", async () => {
  const r = await post(sdkWith((spans) => { spans[0].name = 'partial:3'; }));
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), PB);
  const resp = ExportResponse.decode(r.bytes);
  assert.equal(Number(resp.partialSuccess.rejectedSpans), 3);
  assert.equal(resp.partialSuccess.errorMessage, 'asked for by the test');

  const doc = JSON.parse(sdkJson);
  doc.resourceSpans[0].scopeSpans[0].spans[0].name = 'partial:2';
  const j = await post(JSON.stringify(doc), { type: 'application/json' });
  assert.equal(j.status, 200);
  assert.deepEqual(JSON.parse(j.bytes), { partialSuccess: { rejectedSpans: '2', errorMessage: 'asked for by the test' } });
});
