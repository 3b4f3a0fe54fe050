// A small OTLP/HTTP receiver: POST /otlp/v1/traces (or any path) is kept with
// its content type, encoding, sizes, headers and decoded spans, and answered
// as a collector would (200, an empty ExportTraceServiceResponse) or with a
// fixed status.  It shows what the SDK really sends, without Lattice.
//
//   node tests/http/otel_apps/receiver.mjs [PORT]      listen and print each request
//   node tests/http/otel_apps/receiver.mjs --drive     run otel-a and otel-b against it
//        in every exporter set-up of otel_sdk.test.mjs (+ a 401 answer) and print
//        what arrived (needs PG* for otel-b's database)
import http from 'node:http';
import { decodeRequest, spansOf, SPAN_KIND } from './otlp_decode.mjs';
import { startPair } from './apps.mjs';

export function startReceiver({ port = 0, status = () => 200 } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const r = { method: req.method, path: req.url, headers: req.headers, at: Date.now() };
      try { Object.assign(r, decodeRequest(req.headers, body)); } catch (e) { r.error = String(e); r.wireBytes = body.length; }
      r.status = status(r);
      requests.push(r);
      server.emit('otlp', r);
      if (r.status === 200) {
        const json = r.format === 'json';
        res.writeHead(200, { 'Content-Type': json ? 'application/json' : 'application/x-protobuf' });
        res.end(json ? '{}' : Buffer.alloc(0));
      } else {
        res.writeHead(r.status, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'test', message: `status ${r.status}` } }));
      }
    });
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => {
    const p = server.address().port;
    resolve({ server, requests, port: p, url: `http://127.0.0.1:${p}`, close: () => new Promise((r) => server.close(r)) });
  }));
}

const auth = (h) => (h['x-lattice-api-key'] ? `x-lattice-api-key=${h['x-lattice-api-key'].slice(0, 12)}…`
  : h.authorization ? `authorization=${h.authorization.slice(0, 19)}…` : 'no key');

export function describe(r) {
  const spans = spansOf(r.decoded);
  const lines = [`${r.method} ${r.path} -> ${r.status}  content-type=${r.contentType} content-encoding=${r.headers['content-encoding'] ?? '-'}`
    + `  ${r.wireBytes} bytes on the wire${r.gzip ? ` (${r.bytes} unzipped)` : ''}  ${auth(r.headers)}  ${spans.length} spans`];
  if (r.error) lines.push(`  undecodable: ${r.error}`);
  for (const s of spans) {
    const a = s.attrs;
    const bits = [a['http.route'] && `route=${a['http.route']}`, (a['http.method'] ?? a['http.request.method']) && `method=${a['http.method'] ?? a['http.request.method']}`,
      (a['http.status_code'] ?? a['http.response.status_code']) !== undefined && `status=${a['http.status_code'] ?? a['http.response.status_code']}`,
      a['db.system'] && `db.system=${a['db.system']}`, a['db.name'] && `db.name=${a['db.name']}`,
      s.events.length && `events=${s.events.map((e) => `${e.name}(${e.attrs['exception.type'] ?? ''}: ${e.attrs['exception.message'] ?? ''})`).join(',')}`]
      .filter(Boolean).join(' ');
    lines.push(`  ${s.service} ${SPAN_KIND[s.kind]} "${s.name}" trace=${s.traceId.slice(0, 8)} span=${s.spanId.slice(0, 8)} parent=${s.parentSpanId.slice(0, 8) || '-'} ${bits}`);
  }
  return lines.join('\n');
}

async function drive() {
  const rx = await startReceiver({ status: (r) => (r.headers['x-lattice-api-key'] === 'wrong' ? 401 : 200) });
  const runs = [
    { label: 'protobuf', protocol: 'http/protobuf', headers: 'x-lattice-api-key=ltc_receiver' },
    { label: 'json, Authorization: Bearer', protocol: 'http/json', headers: 'Authorization=Bearer%20ltc_receiver' },
    { label: 'protobuf + gzip', protocol: 'http/protobuf', headers: 'x-lattice-api-key=ltc_receiver', compression: 'gzip' },
    { label: 'json + gzip', protocol: 'http/json', headers: 'x-lattice-api-key=ltc_receiver', compression: 'gzip' },
    { label: 'wrong key, answered 401', protocol: 'http/protobuf', headers: 'x-lattice-api-key=wrong' },
  ];
  for (const run of runs) {
    const from = rx.requests.length;
    const pair = await startPair({ endpoint: `${rx.url}/otlp`, ...run });
    try {
      for (const id of [1, 2, 3]) await pair.a.get(`/orders/${id}`);
      await pair.a.get('/boom');
      const rep = await pair.flush();
      console.log(`== ${run.label}`);
      for (const r of rx.requests.slice(from)) console.log(describe(r));
      for (const v of Object.values(rep)) {
        console.log(`  SDK of ${v.service}: exports ${JSON.stringify(v.exports)}; diag errors ${JSON.stringify(v.logged.error)}; warnings ${JSON.stringify(v.logged.warn)}`);
      }
    } finally {
      await pair.stop();
    }
  }
  await rx.close();
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (process.argv[2] === '--drive') {
    await drive();
  } else {
    const rx = await startReceiver({ port: Number(process.argv[2] ?? 4318) });
    rx.server.on('otlp', (r) => console.log(describe(r)));
    console.log(`listening on ${rx.url}`);
  }
}
