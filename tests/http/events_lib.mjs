// Helpers for the live-changes suites (events_*.test.mjs): a Server-Sent
// Events client on a raw socket (so a test sees exactly what the shim wrote
// and when the connection ends), tenants with a session and an API key, the
// captured plugin requests replayed, and the shim's event metrics.
import net from 'node:net';
import { capturedRequests } from '../fixtures/captured.mjs';
import { randomUUID } from 'node:crypto';
import { request, parseResponse, eventually } from './lib.mjs';

// The LISTEN connection goes to PostgreSQL itself, as docs/shim.md says it
// must behind a transaction pooler (tests/fault/pgbouncer.sh runs this suite
// with the shim's pool behind PgBouncer).
export const EVENTS_ENV = {
  LATTICE_SHIM_EVENTS_CONNINFO: `host=${process.env.PGHOST} port=${process.env.PGPORT} `
    + `dbname=${process.env.PGDATABASE ?? 'lattice'} user=lattice_shim`,
};

// GET /api/v1/events.  Resolves with the stream once its headers arrived
// (status 200), or with the parsed error answer { status, headers, json }.
// stream.events: [{ event, data, at }] in arrival order; stream.comments:
// heartbeat lines; stream.ended resolves when the server closes.
export function openStream(shim, { headers = {}, path = '/api/v1/events', timeout = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(shim.port, '127.0.0.1');
    const extra = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    let head = Buffer.alloc(0);
    let stream = null;
    let text = '';
    const timer = setTimeout(() => { sock.destroy(); reject(new Error('no answer from /api/v1/events')); }, timeout);
    let endedResolve;
    const ended = new Promise((r) => { endedResolve = r; });
    sock.on('close', () => { clearTimeout(timer); if (stream) stream.open = false; endedResolve(Date.now()); });
    sock.on('error', (e) => { if (!stream) reject(e); });
    sock.on('connect', () => sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n${extra}\r\n`));
    const feed = (s) => {
      text += s;
      let i;
      while ((i = text.indexOf('\n\n')) >= 0) {
        const block = text.slice(0, i);
        text = text.slice(i + 2);
        const lines = block.split('\n');
        if (lines.every((l) => l.startsWith(':'))) { stream.comments.push(...lines); continue; }
        const ev = { event: 'message', data: '', at: Date.now() };
        for (const l of lines) {
          const c = l.indexOf(':');
          const field = c < 0 ? l : l.slice(0, c);
          const value = c < 0 ? '' : l.slice(c + 1).replace(/^ /, '');
          if (field === 'event') ev.event = value;
          else if (field === 'data') ev.data = value;
          else if (field === 'retry') ev.retry = Number(value);
        }
        try { ev.data = JSON.parse(ev.data); } catch { /* left as text */ }
        stream.events.push(ev);
      }
    };
    sock.on('data', (chunk) => {
      if (stream) return feed(chunk.toString('utf8'));
      head = Buffer.concat([head, chunk]);
      const r = parseResponse(head, 0);
      if (!r.raw.includes('\r\n\r\n')) return;
      if (r.status !== 200) {
        if (!r.complete) return;
        clearTimeout(timer);
        sock.destroy();
        return resolve({ status: r.status, headers: r.headers, json: r.json, text: r.body });
      }
      clearTimeout(timer);
      stream = {
        status: 200, headers: r.headers, events: [], comments: [], open: true, ended, sock,
        graph: () => stream.events.filter((e) => e.event === 'graph'),
        waitFor: (pred, t = 5000) => eventually(() => stream.events.find(pred), { timeout: t, interval: 20 }),
        close: () => sock.destroy(),
      };
      resolve(stream);
      const bodyStart = head.indexOf('\r\n\r\n') + 4;
      if (head.length > bodyStart) feed(head.subarray(bodyStart).toString('utf8'));
    });
  });
}

// A new account: { id, cookie, csrf, key } (the key created through the API,
// with both scopes: the suites ingest with it and open streams with it).
export async function tenant(shim, label) {
  const email = `events-${label}-${randomUUID()}@example.com`;
  const r = await request(shim, '/api/v1/auth/signup', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'a fine long password', name: label }),
  });
  if (r.status !== 201) throw new Error(`signup: ${r.status} ${r.text}`);
  const cookie = r.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
  const csrf = /lattice_csrf=([^;]+)/.exec(cookie)[1];
  const k = await request(shim, '/api/v1/keys', {
    method: 'POST', headers: { 'Content-Type': 'application/json', Cookie: cookie, 'X-CSRF-Token': csrf },
    body: JSON.stringify({ name: 'events', scopes: ['ingest', 'read'] }),
  });
  if (k.status !== 201) throw new Error(`keys: ${k.status} ${k.text}`);
  return { id: r.json.user.id, cookie, csrf, key: k.json.key };
}

// Replays a captured plugin request (tests/fixtures/captured) with this key.
export async function replay(shim, file, key) {
  const c = capturedRequests().find((r) => r.file === file);
  return request(shim, c.path, {
    method: c.method, body: c.body_raw,
    headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': key, 'X-Lattice-Schema-Version': '1.0.0' },
  });
}

// One value of the shim's /metrics.
export async function metric(shim, name) {
  const m = (await request(shim, '/metrics')).text;
  const line = m.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : undefined;
}
