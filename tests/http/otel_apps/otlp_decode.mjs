// Reads an OTLP/HTTP trace export request as the exporters send it (protobuf
// or JSON, gzip or not) into one plain shape, so a test or the receiver can
// say what an SDK really sent.  The protobuf side is a small wire-format
// reader for ExportTraceServiceRequest (opentelemetry/proto trace/v1); the
// JSON side is OTLP/JSON.  Both give:
//   { resourceSpans: [{ resource: {attrs}, spans: [{ traceId, spanId,
//     parentSpanId, name, kind, startNs, endNs, attrs, events: [{name, attrs}],
//     status: {code, message} }] }] }
// with ids as lower-case hex, times as BigInt nanoseconds, attrs as an object.
import { gunzipSync } from 'node:zlib';

// ---- protobuf wire format ----
function* fields(buf) {
  let i = 0;
  const varint = () => {
    let v = 0n, shift = 0n;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const b = buf[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (i < buf.length) {
    const tag = Number(varint());
    const no = tag >>> 3, wt = tag & 7;
    if (wt === 0) yield { no, wt, v: varint() };
    else if (wt === 1) { yield { no, wt, v: buf.readBigUInt64LE(i), raw: buf.subarray(i, i + 8) }; i += 8; }
    else if (wt === 5) { yield { no, wt, v: buf.readUInt32LE(i) }; i += 4; }
    else if (wt === 2) {
      const n = Number(varint());
      if (i + n > buf.length) throw new Error('truncated field');
      yield { no, wt, b: buf.subarray(i, i + n) };
      i += n;
    } else throw new Error(`wire type ${wt} at ${i}`);
  }
}

function anyValue(buf) {
  for (const f of fields(buf)) {
    switch (f.no) {
      case 1: return f.b.toString('utf8');
      case 2: return f.v !== 0n;
      case 3: return BigInt.asIntN(64, f.v);
      case 4: return f.raw.readDoubleLE(0);
      case 5: return [...fields(f.b)].filter((x) => x.no === 1).map((x) => anyValue(x.b));
      case 6: return attrsOf([...fields(f.b)].filter((x) => x.no === 1).map((x) => x.b));
      case 7: return Buffer.from(f.b);
      default: break;
    }
  }
  return null;
}

function attrsOf(kvs) {
  const out = {};
  for (const kv of kvs) {
    let key = '', value = null;
    for (const f of fields(kv)) {
      if (f.no === 1) key = f.b.toString('utf8');
      else if (f.no === 2) value = anyValue(f.b);
    }
    out[key] = value;
  }
  return out;
}

function spanOf(buf) {
  const s = { traceId: '', spanId: '', parentSpanId: '', name: '', kind: 0, startNs: 0n, endNs: 0n,
              attrs: {}, events: [], status: { code: 0, message: '' } };
  const attrs = [];
  for (const f of fields(buf)) {
    switch (f.no) {
      case 1: s.traceId = f.b.toString('hex'); break;
      case 2: s.spanId = f.b.toString('hex'); break;
      case 4: s.parentSpanId = f.b.toString('hex'); break;
      case 5: s.name = f.b.toString('utf8'); break;
      case 6: s.kind = Number(f.v); break;
      case 7: s.startNs = f.v; break;
      case 8: s.endNs = f.v; break;
      case 9: attrs.push(f.b); break;
      case 11: {
        const e = { name: '', timeNs: 0n, attrs: {} };
        const ea = [];
        for (const g of fields(f.b)) {
          if (g.no === 1) e.timeNs = g.v;
          else if (g.no === 2) e.name = g.b.toString('utf8');
          else if (g.no === 3) ea.push(g.b);
        }
        e.attrs = attrsOf(ea);
        s.events.push(e);
        break;
      }
      case 15:
        for (const g of fields(f.b)) {
          if (g.no === 2) s.status.message = g.b.toString('utf8');
          else if (g.no === 3) s.status.code = Number(g.v);
        }
        break;
      default: break;
    }
  }
  s.attrs = attrsOf(attrs);
  return s;
}

export function decodeProtobuf(buf) {
  const resourceSpans = [];
  for (const rs of fields(buf)) {
    if (rs.no !== 1) continue;
    const out = { resource: {}, spans: [] };
    for (const f of fields(rs.b)) {
      if (f.no === 1) out.resource = attrsOf([...fields(f.b)].filter((x) => x.no === 1).map((x) => x.b));
      else if (f.no === 2) {
        for (const g of fields(f.b)) if (g.no === 2) out.spans.push(spanOf(g.b));
      }
    }
    resourceSpans.push(out);
  }
  return { resourceSpans };
}

// ---- OTLP/JSON ----
function jsonValue(v) {
  if (v == null) return null;
  if ('stringValue' in v) return v.stringValue;
  if ('boolValue' in v) return v.boolValue;
  if ('intValue' in v) return BigInt(v.intValue);
  if ('doubleValue' in v) return Number(v.doubleValue);
  if ('arrayValue' in v) return (v.arrayValue.values ?? []).map(jsonValue);
  if ('kvlistValue' in v) return jsonAttrs(v.kvlistValue.values);
  if ('bytesValue' in v) return Buffer.from(v.bytesValue, 'base64');
  return null;
}
const jsonAttrs = (list) => Object.fromEntries((list ?? []).map((kv) => [kv.key, jsonValue(kv.value)]));
// OTLP/JSON ids are hex; some writers send base64 (the protobuf JSON mapping)
const jsonId = (s) => (!s ? '' : /^[0-9a-fA-F]+$/.test(s) && (s.length === 32 || s.length === 16)
  ? s.toLowerCase() : Buffer.from(s, 'base64').toString('hex'));

export function decodeJson(text) {
  const doc = JSON.parse(text);
  return {
    resourceSpans: (doc.resourceSpans ?? []).map((rs) => ({
      resource: jsonAttrs(rs.resource?.attributes),
      spans: (rs.scopeSpans ?? []).flatMap((ss) => (ss.spans ?? []).map((s) => ({
        traceId: jsonId(s.traceId), spanId: jsonId(s.spanId), parentSpanId: jsonId(s.parentSpanId),
        name: s.name, kind: Number(s.kind ?? 0),
        startNs: BigInt(s.startTimeUnixNano ?? 0), endNs: BigInt(s.endTimeUnixNano ?? 0),
        attrs: jsonAttrs(s.attributes),
        events: (s.events ?? []).map((e) => ({ name: e.name, timeNs: BigInt(e.timeUnixNano ?? 0), attrs: jsonAttrs(e.attributes) })),
        status: { code: Number(s.status?.code ?? 0), message: s.status?.message ?? '' },
      }))),
    })),
  };
}

// One request's body and headers (lower-case names) -> { format, gzip, bytes, wireBytes, decoded }.
export function decodeRequest(headers, body) {
  const gzip = /gzip/i.test(headers['content-encoding'] ?? '');
  const raw = gzip ? gunzipSync(body) : body;
  const ct = (headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  const format = ct === 'application/json' ? 'json' : ct === 'application/x-protobuf' ? 'protobuf' : ct;
  const decoded = format === 'json' ? decodeJson(raw.toString('utf8'))
    : format === 'protobuf' ? decodeProtobuf(raw) : null;
  return { format, contentType: headers['content-type'] ?? '', gzip, wireBytes: body.length, bytes: raw.length, decoded };
}

// Every span of a decoded request with its resource's service.name.
export const spansOf = (decoded) => (decoded?.resourceSpans ?? []).flatMap((rs) =>
  rs.spans.map((s) => ({ ...s, service: rs.resource['service.name'] })));

export const SPAN_KIND = { 0: 'UNSPECIFIED', 1: 'INTERNAL', 2: 'SERVER', 3: 'CLIENT', 4: 'PRODUCER', 5: 'CONSUMER' };
