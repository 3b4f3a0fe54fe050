// TLS with a self-signed certificate (openssl): HTTPS answers, HSTS, req.tls.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startShim, rawRequest } from './lib.mjs';
import { createTestFunctions, dropTestFunctions } from './shim_fixtures.mjs';

let shim, dir;
before(async () => {
  createTestFunctions();
  dir = fs.mkdtempSync(path.join(process.env.LATTICE_WORK ?? os.tmpdir(), 'shim-tls-'));
  const key = path.join(dir, 'key.pem');
  const crt = path.join(dir, 'cert.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', key, '-out', crt, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'],
  { stdio: 'ignore' });
  // civetweb reads the key and the certificate from one PEM file
  fs.writeFileSync(path.join(dir, 'server.pem'), fs.readFileSync(key, 'utf8') + fs.readFileSync(crt, 'utf8'));
  shim = await startShim({ env: { LATTICE_SHIM_TLS_CERT: path.join(dir, 'server.pem') } });
  shim.ca = fs.readFileSync(crt);
});
after(async () => {
  await shim?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  dropTestFunctions();
});

test('HTTPS answers with the self-signed certificate, verified against it', async () => {
  const r = await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n',
    { tlsOptions: { rejectUnauthorized: true, ca: shim.ca, servername: undefined } });
  assert.equal(r.status, 200);
  assert.equal(r.json.status, 'ok');
});

test('HSTS is sent under TLS', async () => {
  const r = await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.match(r.headers['strict-transport-security'], /max-age=\d+/);
});

test('the function learns the request came over TLS', async () => {
  const r = await rawRequest(shim, 'GET /api/v1/_test/echo/1/items/2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 200);
  assert.equal(r.json.req.tls, true);
});

test('plain HTTP on the TLS port gets no answer in clear', async () => {
  const plain = { ...shim, url: `http://127.0.0.1:${shim.port}` };
  let r;
  try {
    r = await rawRequest(plain, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n', { timeout: 2000 });
  } catch {
    r = null;
  }
  assert.ok(!r || r.status !== 200);
});
