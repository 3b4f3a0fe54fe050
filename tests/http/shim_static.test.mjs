// Static web files: types, ETag/304, Cache-Control, gzip, page headers,
// no listing, no traversal (dot segments, encodings, symlinks, hidden files).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { startShim, request, rawRequest } from './lib.mjs';

let shim, root, outside;
const css = 'body { color: #123456; }\n'.repeat(40);
before(async () => {
  const base = fs.mkdtempSync(path.join(process.env.LATTICE_WORK ?? os.tmpdir(), 'shim-static-'));
  root = path.join(base, 'web');
  outside = path.join(base, 'secret.txt');
  fs.mkdirSync(path.join(root, 'assets'), { recursive: true });
  fs.mkdirSync(path.join(root, 'empty'));
  fs.mkdirSync(path.join(root, 'docs'));
  fs.writeFileSync(path.join(root, 'index.html'), '<!doctype html><title>Lattice</title>');
  fs.writeFileSync(path.join(root, 'dashboard.html'), '<!doctype html><title>Dashboard</title>');
  fs.writeFileSync(path.join(root, 'docs', 'index.html'), '<!doctype html><title>Docs</title>');
  fs.writeFileSync(path.join(root, 'style.css'), css);
  fs.writeFileSync(path.join(root, 'assets', 'app.3f2a1b.js'), 'console.log("lattice");\n');
  fs.writeFileSync(path.join(root, 'assets', 'big.js'), 'let x = 1;\n'.repeat(200));
  fs.writeFileSync(path.join(root, 'assets', 'big.js.gz'), zlib.gzipSync('let y = 2;\n'.repeat(200)));
  fs.writeFileSync(path.join(root, 'logo.png'), Buffer.from('89504e470d0a1a0a', 'hex'));
  fs.writeFileSync(path.join(root, '.env'), 'SECRET=1');
  fs.writeFileSync(outside, 'outside the root');
  fs.symlinkSync(outside, path.join(root, 'link.txt'));
  shim = await startShim({ env: { LATTICE_SHIM_WEB_ROOT: root } });
});
after(async () => {
  await shim?.stop();
  fs.rmSync(path.dirname(root), { recursive: true, force: true });
});

test('content types and page conventions', async () => {
  const cases = [
    ['/', 'text/html; charset=utf-8', 'Lattice'],
    ['/dashboard', 'text/html; charset=utf-8', 'Dashboard'],
    ['/docs/', 'text/html; charset=utf-8', 'Docs'],
    ['/style.css', 'text/css; charset=utf-8', 'color'],
    ['/assets/app.3f2a1b.js', 'text/javascript; charset=utf-8', 'lattice'],
    ['/logo.png', 'image/png', null],
  ];
  for (const [p, type, text] of cases) {
    const r = await request(shim, p, { headers: { 'Accept-Encoding': 'identity' } });
    assert.equal(r.status, 200, p);
    assert.equal(r.headers.get('content-type'), type, p);
    if (text) assert.ok(r.text.includes(text), p);
    assert.equal(r.headers.get('x-content-type-options'), 'nosniff');
  }
});

test('pages carry the strict CSP and frame-ancestors none', async () => {
  const r = await request(shim, '/');
  const csp = r.headers.get('content-security-policy');
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.match(csp, /object-src 'none'/);
  assert.equal(r.headers.get('x-frame-options'), 'DENY');
  assert.equal(r.headers.get('referrer-policy'), 'no-referrer');
});

test('ETag and 304; Cache-Control immutable for hashed assets, revalidate for pages', async () => {
  const r = await request(shim, '/index.html');
  const etag = r.headers.get('etag');
  assert.match(etag, /^"[0-9a-f]+-[0-9a-f]+"$/);
  assert.equal(r.headers.get('cache-control'), 'no-cache');
  const again = await rawRequest(shim, `GET /index.html HTTP/1.1\r\nHost: x\r\nIf-None-Match: ${etag}\r\nConnection: close\r\n\r\n`);
  assert.equal(again.status, 304);
  assert.equal(again.body, '');
  const asset = await request(shim, '/assets/app.3f2a1b.js');
  assert.equal(asset.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  const stale = await request(shim, '/index.html', { headers: { 'If-None-Match': '"0-0"' } });
  assert.equal(stale.status, 200);
});

test('gzip: a .gz sibling when present, compressed on the fly for text otherwise', async () => {
  const pre = await rawRequest(shim, 'GET /assets/big.js HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n');
  assert.equal(pre.headers['content-encoding'], 'gzip');
  const preBody = Buffer.from(pre.raw.slice(pre.raw.indexOf('\r\n\r\n') + 4), 'latin1');
  assert.equal(zlib.gunzipSync(preBody).toString(), 'let y = 2;\n'.repeat(200)); // the sibling's bytes
  const fly = await rawRequest(shim, 'GET /style.css HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip, deflate\r\nConnection: close\r\n\r\n');
  assert.equal(fly.headers['content-encoding'], 'gzip');
  assert.equal(fly.headers.vary, 'Accept-Encoding');
  const flyBody = Buffer.from(fly.raw.slice(fly.raw.indexOf('\r\n\r\n') + 4), 'latin1');
  assert.equal(zlib.gunzipSync(flyBody).toString(), css);
  const plain = await rawRequest(shim, 'GET /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(plain.headers['content-encoding'], undefined);
  assert.equal(plain.body, css);
  assert.notEqual(plain.headers.etag, fly.headers.etag);
});

test('HEAD sends the headers only', async () => {
  const r = await rawRequest(shim, 'HEAD /style.css HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(r.status, 200);
  assert.equal(Number(r.headers['content-length']), css.length);
  assert.equal(r.body, '');
});

test('no directory listing', async () => {
  for (const p of ['/empty', '/empty/', '/assets/']) {
    const r = await request(shim, p);
    assert.equal(r.status, 404, p);
    assert.equal(r.json.error.code, 'not_found');
  }
});

test('no traversal, no hidden files, no symlinks out of the root', async () => {
  const attempts = [
    '/../secret.txt', '/assets/../../secret.txt', '/%2e%2e/secret.txt', '/%2E%2E%2Fsecret.txt',
    '/assets/%2e%2e/%2e%2e/secret.txt', '/..%5csecret.txt', '/.env', '/%2eenv', '/link.txt',
    '/./index.html', '//etc/passwd', '/assets/..%2f..%2fsecret.txt',
  ];
  for (const p of attempts) {
    const r = await rawRequest(shim, `GET ${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    assert.ok([400, 404].includes(r.status), `${p}: ${r.status}`);
    assert.ok(!r.body.includes('outside the root') && !r.body.includes('SECRET'), p);
  }
});

test('without a web root nothing is served but the API', async () => {
  const bare = await startShim({ env: { LATTICE_SHIM_WEB_ROOT: '' }, cwd: '/' });
  try {
    const r = await request(bare, '/index.html');
    assert.equal(r.status, 404);
    assert.equal((await request(bare, '/api/v1/health')).status, 200);
  } finally {
    await bare.stop();
  }
});
