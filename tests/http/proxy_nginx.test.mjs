// The shim behind a real reverse proxy: Debian's nginx terminates TLS on a
// loopback port (a self-signed certificate made here) and proxies to the
// shim from 127.0.0.9 (proxy_bind), the shim's only trusted proxy.  Clients
// reach nginx from other loopback addresses (127.0.0.2, 127.0.0.3, ...);
// direct clients of the shim (127.0.0.1) stay untrusted.  nginx runs as a child of this file with its
// prefix, pid and logs in a temporary directory, never as the system service.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import https from 'node:https';
import { spawn, execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, rawRequest, psql, freePort, eventually } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';
import { capturedBody } from '../fixtures/captured.mjs';

const PROXY_ADDR = '127.0.0.9';
const A = '127.0.0.2';
const B = '127.0.0.3';
let shim, dir, nginx, nginxPort, ca;

// nginx is a test dependency (scripts/deps.sh): missing, the file fails.
function nginxBinary() {
  for (const p of ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx'])
    if (fs.existsSync(p)) return p;
  throw new Error('nginx is not installed (scripts/deps.sh installs it)');
}

function nginxConf() {
  return `
user root;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 256; }
http {
    access_log ${dir}/access.log;
    client_body_temp_path ${dir}/client_body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;
    server {
        listen 127.0.0.1:${nginxPort} ssl;
        server_name localhost;
        ssl_certificate ${dir}/cert.pem;
        ssl_certificate_key ${dir}/key.pem;
        client_max_body_size 1m;
        location / {
            proxy_pass http://127.0.0.1:${shim.port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_bind ${PROXY_ADDR};
        }
    }
}
`;
}

// One HTTPS request to nginx from a loopback address, verified against the
// test certificate.  { status, headers, text, json }.
function viaNginx(from, method, urlPath, { body, headers = {} } = {}) {
  const data = body === undefined ? null : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: nginxPort, servername: 'localhost', ca, localAddress: from,
      method, path: urlPath, agent: false, timeout: 10000,
      headers: { ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}), ...headers } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(data ?? undefined);
  });
}

const cookieOf = (r, name) => [].concat(r.headers['set-cookie'] ?? []).find((c) => c.startsWith(`${name}=`));

before(async () => {
  const bin = nginxBinary();
  createTestFunctions();
  dir = fs.mkdtempSync(path.join(process.env.LATTICE_WORK ?? os.tmpdir(), 'nginx-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', `${dir}/key.pem`, '-out', `${dir}/cert.pem`, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost'], { stdio: 'ignore' });
  ca = fs.readFileSync(`${dir}/cert.pem`);
  shim = await startShim({ env: { LATTICE_SHIM_TRUSTED_PROXIES: `${PROXY_ADDR}/32` } });
  nginxPort = await freePort();
  fs.writeFileSync(`${dir}/nginx.conf`, nginxConf());
  nginx = spawn(bin, ['-p', dir, '-e', `${dir}/error.log`, '-c', `${dir}/nginx.conf`, '-g', 'daemon off;'],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  nginx.stdout.on('data', (c) => { out += c; });
  nginx.stderr.on('data', (c) => { out += c; });
  nginx.exited = new Promise((resolve) => nginx.on('exit', resolve));
  const deadline = Date.now() + 10000;
  for (;;) {
    if (nginx.exitCode !== null) throw new Error(`nginx exited ${nginx.exitCode}: ${out}`);
    try {
      if ((await viaNginx(A, 'GET', '/api/v1/health')).status === 200) break;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`nginx did not start: ${out}`);
    await sleep(100);
  }
});

after(async () => {
  if (nginx && nginx.exitCode === null) {
    nginx.kill('SIGQUIT');
    await nginx.exited;
  }
  await shim?.stop();
  dropTestFunctions();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test('through nginx the function sees the client behind it and https', async () => {
  const r = await viaNginx(A, 'GET', '/api/v1/_test/echo/1/items/2', { headers: { 'X-Request-Id': 'nginx-echo-1' } });
  assert.equal(r.status, 200);
  assert.equal(r.json.req.client_addr, A);
  assert.equal(r.json.req.tls, true);
  assert.match(r.headers['strict-transport-security'], /max-age=\d+/);
  const line = await eventually(() => shim.accessLog().find((l) => l.request_id === 'nginx-echo-1'));
  assert.equal(line.client, A);
  assert.equal(line.peer, PROXY_ADDR);
});

test('a client cannot forge its address through nginx: nginx appends the real one', async () => {
  const r = await viaNginx(B, 'GET', '/api/v1/_test/echo/1/items/2', { headers: { 'X-Forwarded-For': '203.0.113.66' } });
  assert.equal(r.status, 200);
  assert.equal(r.json.req.client_addr, B, 'the right-most untrusted hop is the one nginx saw');
});

test("a client's own Forwarded header, passed on by nginx, is refused rather than believed", async () => {
  // this nginx sets X-Forwarded-For but leaves Forwarded alone (docs/shim.md strips it)
  const r = await viaNginx(B, 'GET', '/api/v1/_test/echo/1/items/2', { headers: { Forwarded: 'for=203.0.113.67;proto=https' } });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.code, 'bad_forwarding_header');
  assert.match(r.json.error.message, /different clients/);
});

test('direct clients of the shim stay untrusted: spoofed headers change nothing', async () => {
  const r = await rawRequest(shim, 'GET /api/v1/_test/echo/1/items/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n' +
    'X-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\nForwarded: for=203.0.113.6;proto=https\r\n\r\n');
  assert.equal(r.status, 200);
  assert.equal(r.json.req.client_addr, '127.0.0.1');
  assert.equal(r.json.req.tls, false);
  assert.equal(r.headers['strict-transport-security'], undefined);
});

test('sign-up and login through nginx: Secure cookies, HSTS, the session keyed on the client', async () => {
  const email = `nginx-${randomUUID()}@example.com`;
  const password = 'a fine long password';
  const signup = await viaNginx(A, 'POST', '/api/v1/auth/signup', { body: { email, password, name: 'Nginx' } });
  assert.equal(signup.status, 201, signup.text);
  for (const name of ['lattice_session', 'lattice_csrf'])
    assert.match(cookieOf(signup, name), /;\s*Secure/, `${name} is Secure`);
  assert.match(signup.headers['strict-transport-security'], /max-age=\d+/);

  const login = await viaNginx(A, 'POST', '/api/v1/auth/login', { body: { email, password } });
  assert.equal(login.status, 200, login.text);
  const session = cookieOf(login, 'lattice_session');
  assert.match(session, /;\s*Secure/);
  assert.match(login.headers['strict-transport-security'], /max-age=\d+/);
  assert.equal(login.headers['ratelimit-class'], 'address', 'the shim wrote the rate headers of the login count');

  const me = await viaNginx(A, 'GET', '/api/v1/auth/me', { headers: { Cookie: session.split(';')[0] } });
  assert.equal(me.status, 200);
  assert.equal(me.json.email ?? me.json.user?.email, email);
  const addrs = psql(`SELECT string_agg(DISTINCT host(s.client_addr), ',') FROM lattice.sessions s
                      JOIN lattice.users u ON u.id = s.user_id WHERE u.email = '${email}'`);
  assert.equal(addrs, A, 'sessions record the client, not nginx');
});

test('ingest of a captured plugin request through nginx', async () => {
  const id = psql(`SELECT lattice.create_user('nginx-ingest-${randomUUID()}@example.com', 'correct horse battery staple', 'Ingest')`);
  const key = psql(`SELECT lattice.create_api_key('${id}', 'plugin')`);
  const r = await viaNginx(A, 'POST', '/api/v1/ingest/metadata', { body: capturedBody('ingest_metadata'),
    headers: { 'X-Lattice-API-Key': key, 'X-Lattice-Schema-Version': '1.0.0' } });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.success, true);
  assert.match(r.json.serviceId, /^[0-9a-f-]{36}$/);
  // rate headers, when the count wrote them, come once each (node joins repeats with ", ")
  for (const name of ['ratelimit-limit', 'ratelimit-policy', 'ratelimit-class', 'x-ratelimit-reset'])
    assert.ok(!String(r.headers[name] ?? '').includes(','), `${name}: ${r.headers[name]}`);
  assert.equal(psql(`SELECT count(*) FROM lattice.services WHERE user_id = '${id}' AND NOT is_external`), '1');
});

test('per-address limits count each client behind nginx on its own', async () => {
  // two clients of this run's own (counters live as long as the cluster)
  const [A, B] = [`127.0.76.${(process.pid % 250) + 1}`, `127.0.77.${(process.pid % 250) + 1}`];
  psql('ALTER SYSTEM SET lattice.rate_signup_per_hour = 3');
  psql('SELECT pg_reload_conf()');
  try {
    await sleep(500); // the shim's backends read the new setting at their next command
    const signup = (from) => viaNginx(from, 'POST', '/api/v1/auth/signup', { body: '{}' });
    // A until refused: counted even though the body is refused (400)
    let allowed = 0;
    let r = await signup(A);
    while (r.status === 400 && allowed < 6) { allowed++; r = await signup(A); }
    assert.ok(allowed <= 3, `${allowed} sign-ups allowed from ${A} (limit 3)`);
    assert.equal(r.status, 429, r.text);
    assert.equal(r.json.error.code, 'rate_limited');
    assert.equal(r.json.error.details.scope, 'addr_signup');
    assert.equal(r.headers['ratelimit-limit'], '3');
    assert.ok(Number(r.headers['retry-after']) > 0);
    // B behind the same nginx (the same TCP peer) still has its own allowance
    const other = await signup(B);
    assert.equal(other.status, 400, `${B} is not limited by ${A}: ${other.text}`);
    let bAllowed = 1;
    r = await signup(B);
    while (r.status === 400 && bAllowed < 6) { bAllowed++; r = await signup(B); }
    assert.equal(r.status, 429);
    assert.ok(bAllowed <= 3);
    // and A is still refused
    assert.equal((await signup(A)).status, 429);
  } finally {
    psql('ALTER SYSTEM RESET lattice.rate_signup_per_hour');
    psql('SELECT pg_reload_conf()');
  }
});
