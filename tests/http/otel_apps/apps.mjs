// Starts the two instrumented services (service_b.cjs, then service_a.cjs
// pointing at it) as node processes, talks to them, flushes their SDKs and
// stops them.  Used by tests/http/otel_sdk.test.mjs and receiver.mjs.
//
//   const pair = await startPair({ endpoint: 'http://127.0.0.1:P/otlp', protocol: 'http/protobuf',
//                                  headers: 'x-lattice-api-key=KEY', compression: 'gzip' });
//   await pair.a.get('/orders/1');  await pair.flush();  await pair.stop();
import { spawn } from 'node:child_process';
import http from 'node:http';

const DIR = new URL('.', import.meta.url).pathname;

// One service: resolves once it printed its port (or rejects if it exits first).
export function startApp(file, env, { timeout = 15000 } = {}) {
  const proc = spawn(process.execPath, [`${DIR}${file}`], {
    env: { ...process.env, PORT: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stderr = [];
  proc.stderr.on('data', (c) => stderr.push(c.toString('utf8')));
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const app = {
    proc, stderr, exited, port: 0, url: '',
    get: (path) => getText(`${app.url}${path}`),
    async flush() {
      const r = await getText(`${app.url}/__otel/flush`);
      if (r.status !== 200) throw new Error(`${file} flush: ${r.status} ${r.text}`);
      return JSON.parse(r.text);
    },
    // SIGTERM runs sdk.shutdown() (a last export) before the process exits;
    // SIGKILL after graceMs.
    async stop(graceMs = 5000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`${file} did not start: ${stderr.join('')}`)); }, timeout);
    proc.stdout.on('data', (c) => {
      out += c.toString('utf8');
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line && !app.port) {
        app.port = JSON.parse(line).port;
        app.url = `http://127.0.0.1:${app.port}`;
        clearTimeout(timer);
        resolve(app);
      }
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${file} exited (${code ?? signal}) before listening: ${stderr.join('')}`));
    });
  });
}

// A GET on a connection of its own: { status, text }.
export function getText(url, { timeout = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: GET ${url}`)));
    req.on('error', reject);
  });
}

// B, then A calling B.  opts: endpoint (OTEL_EXPORTER_OTLP_ENDPOINT),
// protocol ('http/protobuf' | 'http/json'), headers (OTEL_EXPORTER_OTLP_HEADERS),
// compression ('gzip' | 'none'), names ({ a, b }: OTEL_SERVICE_NAME of each),
// env (more for both).  Whatever fails, no process is left behind.
export async function startPair({ endpoint, protocol = 'http/protobuf', headers, compression = 'none', names = {}, env = {} }) {
  const common = {
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
    OTEL_EXPORTER_OTLP_HEADERS: headers ?? '',
    OTEL_EXPORTER_OTLP_COMPRESSION: compression,
    OTEL_EXPORTER_OTLP_TIMEOUT: '5000',
    ...env,
  };
  const pair = { a: null, b: null };
  pair.stop = async () => { await Promise.all([pair.a?.stop(), pair.b?.stop()]); };
  try {
    pair.b = await startApp('service_b.cjs', { ...common, ...(names.b ? { OTEL_SERVICE_NAME: names.b } : {}) });
    pair.a = await startApp('service_a.cjs', { ...common, OTEL_B_URL: pair.b.url, ...(names.a ? { OTEL_SERVICE_NAME: names.a } : {}) });
  } catch (e) {
    await pair.stop();
    throw e;
  }
  // B first: its SERVER and db spans end before A's CLIENT and SERVER spans do
  pair.flush = async () => {
    const b = await pair.b.flush();
    const a = await pair.a.flush();
    return { a, b };
  };
  return pair;
}
