// Shared helpers for the HTTP suite (node --test): start a real shim against
// the test cluster that tests/run.sh started, talk to it, stop it.
//
//   import { startShim, request, rawRequest, psql } from './lib.mjs';
//   const shim = await startShim();            // LATTICE_SHIM_* overrides: startShim({ env: {...} })
//   const r = await request(shim, '/api/v1/health');   // { status, headers, text, json }
//   await shim.stop();
//
// Environment (set by tests/run.sh): PGHOST, PGPORT, PGDATABASE, LATTICE_SHIM_BIN,
// LATTICE_ROOT, LATTICE_CLUSTER.  The shim logs in as lattice_shim.
import { spawn, execFileSync } from 'node:child_process';
import { appendFileSync, createWriteStream, mkdirSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';

export const ROOT = process.env.LATTICE_ROOT ?? new URL('../..', import.meta.url).pathname;
export const SHIM_BIN = process.env.LATTICE_SHIM_BIN ?? `${ROOT}/shim/lattice-shim`;

// Runs SQL as the cluster's superuser; returns psql's unaligned output.
export function psql(sql, { db = process.env.PGDATABASE ?? 'lattice' } = {}) {
  return execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', db, '-c', sql], {
    encoding: 'utf8',
    env: { ...process.env, PGUSER: process.env.PGUSER ?? 'postgres' },
  }).trim();
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// Starts lattice-shim on a free port with the test routes on; resolves once
// /api/v1/health answers.  opts.env: extra LATTICE_SHIM_* variables;
// opts.cwd: its working directory (web/dist or web is served from there).
// The returned handle collects stdout (access log) and stderr lines.
export async function startShim(opts = {}) {
  const port = await freePort();
  const env = {
    ...process.env,
    LATTICE_SHIM_PORT: String(port),
    LATTICE_SHIM_LISTEN: '127.0.0.1',
    LATTICE_SHIM_TEST_ROUTES: '1',
    LATTICE_SHIM_THREADS: '16',
    LATTICE_SHIM_POOL_SIZE: '4',
    ...(opts.env ?? {}),
  };
  const proc = spawn(SHIM_BIN, opts.args ?? [], { env, cwd: opts.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const out = [];
  const err = [];
  const collect = (arr) => {
    let rest = '';
    return (chunk) => {
      rest += chunk.toString('utf8');
      const lines = rest.split('\n');
      rest = lines.pop();
      arr.push(...lines.filter((l) => l.length));
    };
  };
  proc.stdout.on('data', collect(out));
  proc.stderr.on('data', collect(err));
  // kept for a post-mortem: $LATTICE_WORK/shims/<port>.stderr (tests/run.sh's LATTICE_KEEP keeps it)
  if (process.env.LATTICE_WORK) {
    mkdirSync(`${process.env.LATTICE_WORK}/shims`, { recursive: true });
    proc.stderr.pipe(createWriteStream(`${process.env.LATTICE_WORK}/shims/${port}.stderr`));
  }
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  let sent = null; // the signal stop() sent
  proc.on('close', (code, signal) => { if (signal && signal !== sent) reportCrash(port, signal, err); });
  const scheme = env.LATTICE_SHIM_TLS_CERT ? 'https' : 'http';
  const shim = {
    port,
    url: `${scheme}://127.0.0.1:${port}`,
    proc,
    exited,
    stdout: out,
    stderr: err,
    // access-log lines parsed as JSON
    accessLog: () => out.map((l) => { try { return JSON.parse(l); } catch { return null; } }).filter(Boolean),
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      sent = signal;
      proc.kill(signal);
      return exited;
    },
  };
  const deadline = Date.now() + 10000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`shim exited ${proc.exitCode}: ${err.join('\n')}`);
    try {
      const r = await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { timeout: 500 });
      if (r.status === 200) break;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) {
      await shim.stop('SIGKILL');
      throw new Error(`shim did not start: ${err.join('\n')}`);
    }
    await sleep(50);
  }
  return shim;
}

// A shim that died of a signal no test sent: its backtrace (crash.c's JSON
// lines, resolved by addr2line where it can) on stderr and in
// $LATTICE_WORK/shim-crashes.log, which tests/run.sh prints at its end.
const FATAL = new Set(['SIGSEGV', 'SIGBUS', 'SIGFPE', 'SIGILL', 'SIGABRT']);
export function crashReport(port, signal, stderrLines) {
  const lines = [`lattice-shim on port ${port} died of ${signal}`];
  for (const l of stderrLines) {
    let f;
    try { f = JSON.parse(l); } catch { continue; }
    if (f.level !== 'fatal' || f.frame === undefined) continue;
    let where = '';
    try {
      // a caller's frame holds its return address: the call is the byte before
      const at = `0x${(BigInt(f.offset) - (f.frame > 0 ? 1n : 0n)).toString(16)}`;
      where = execFileSync('addr2line', ['-f', '-C', '-i', '-e', f.object, at], { encoding: 'utf8', timeout: 5000 })
        .trim().split('\n').join(' ');
    } catch { /* no addr2line, or no symbols */ }
    lines.push(`  #${f.frame} ${f.object} +${f.offset} ${where}`);
  }
  return lines.join('\n') + '\n';
}

function reportCrash(port, signal, stderrLines) {
  if (!FATAL.has(signal)) return;
  const text = crashReport(port, signal, stderrLines);
  process.stderr.write(text);
  if (process.env.LATTICE_WORK) appendFileSync(`${process.env.LATTICE_WORK}/shim-crashes.log`, text);
}

// fetch() against the shim; never throws on HTTP status.
export async function request(shim, path, { method = 'GET', headers = {}, body, timeout = 10000 } = {}) {
  const res = await fetch(shim.url + path, { method, headers, body, signal: AbortSignal.timeout(timeout) });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

// Sends raw bytes on a fresh connection (plain or TLS) and resolves with the
// parsed answer once the connection ends or a full response arrived.
// { status, headers (lower-case names), body, raw, elapsed }.  opts.timeout
// bounds the wait; opts.onSocket(socket) lets a test drip bytes slowly;
// opts.untilClose waits for the server to close (several answers in raw);
// opts.localAddress connects from another loopback address (127.0.0.2, ...).
export function rawRequest(shim, data, { timeout = 5000, onSocket, tlsOptions, untilClose = false, localAddress } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const sock = shim.url.startsWith('https')
      ? tls.connect({ host: '127.0.0.1', port: shim.port, localAddress, rejectUnauthorized: false, ...(tlsOptions ?? {}) })
      : net.connect({ port: shim.port, host: '127.0.0.1', localAddress });
    const chunks = [];
    let done = false;
    const finish = (e) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (e) return reject(e);
      resolve(parseResponse(Buffer.concat(chunks), Date.now() - started));
    };
    const timer = setTimeout(() => finish(chunks.length ? null : new Error('timeout')), timeout);
    sock.on('connect', () => {
      if (data) sock.write(data);
      if (onSocket) onSocket(sock);
    });
    sock.on('secureConnect', () => {});
    sock.on('data', (c) => {
      chunks.push(c);
      const r = parseResponse(Buffer.concat(chunks), 0);
      if (r.complete && !untilClose) finish();
    });
    sock.on('error', (e) => (chunks.length ? finish() : finish(e)));
    sock.on('end', () => finish());
    sock.on('close', () => finish());
  });
}

export function parseResponse(buf, elapsed) {
  const raw = buf.toString('latin1');
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return { status: 0, headers: {}, body: '', raw, elapsed, complete: false };
  const lines = raw.slice(0, end).split('\r\n');
  const status = Number(lines[0].split(' ')[1]);
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    const k = l.slice(0, i).trim().toLowerCase();
    const v = l.slice(i + 1).trim();
    headers[k] = headers[k] ? `${headers[k]}, ${v}` : v;
  }
  const body = buf.subarray(Buffer.byteLength(raw.slice(0, end + 4), 'latin1'));
  const len = headers['content-length'] !== undefined ? Number(headers['content-length']) : null;
  const complete = len !== null ? body.length >= len : status === 204 || status === 304;
  let json;
  try { json = JSON.parse(body.toString('utf8')); } catch { json = undefined; }
  return { status, headers, body: body.toString('utf8'), json, raw, elapsed, complete };
}

// Polls until fn() is truthy (or throws after timeout ms).
export async function eventually(fn, { timeout = 5000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(interval);
  }
}

// The error shape every error answer has (docs/http-contract.md).
export function assertErrorShape(assert, r, status, code) {
  assert.equal(r.status, status, `status ${r.status} body ${r.text ?? r.body}`);
  const j = r.json;
  assert.ok(j && typeof j.error === 'object', 'error object');
  if (code) assert.equal(j.error.code, code);
  assert.equal(typeof j.error.message, 'string');
  assert.match(j.error.request_id, /^[A-Za-z0-9._-]{1,64}$/);
}

// Starts the SMTP receiver (tests/stripe_standin/smtp_sink.py, python3-aiosmtpd)
// on port, appending each message it accepts to the JSON-lines file out;
// resolves with the process once it listens.
export function startSmtpSink(port, out) {
  const proc = spawn('/usr/bin/python3', [`${ROOT}/tests/stripe_standin/smtp_sink.py`, String(port), out],
                     { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    proc.stdout.once('data', () => resolve(proc));
    proc.once('exit', (code) => reject(new Error(`smtp sink exited ${code}`)));
  });
}
