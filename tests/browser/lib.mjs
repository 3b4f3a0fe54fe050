// Browser-test harness: a real shim serving web/dist against the test
// cluster, and Debian's Chromium driven by playwright-core (never a
// downloaded browser).  Pages record console errors, page errors and CSP
// violations so tests can assert there are none.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import { chromium } from 'playwright-core';
import { capturedRequests } from '../fixtures/captured.mjs';

export const root = process.env.LATTICE_ROOT ?? new URL('../..', import.meta.url).pathname.replace(/\/$/, '');
export const artifacts = `${root}/tests/artifacts`;
const shimBin = process.env.LATTICE_SHIM_BIN ?? `${root}/shim/lattice-shim`;

export const sql = (q) => execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

export async function startShim() {
  if (!existsSync(shimBin)) throw new Error(`the shim is not built (${shimBin})`);
  if (!existsSync(`${root}/web/dist/index.html`)) throw new Error('web/dist is not built (make web)');
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = spawn(shimBin, [], {
    env: { ...process.env, LATTICE_SHIM_LISTEN: '127.0.0.1', LATTICE_SHIM_PORT: String(port),
      LATTICE_SHIM_WEB_ROOT: `${root}/web/dist`, LATTICE_SHIM_ACCESS_LOG: '/dev/null',
      LATTICE_SHIM_CONNINFO: `host=${process.env.PGHOST} port=${process.env.PGPORT} dbname=${process.env.PGDATABASE ?? 'lattice'} user=lattice_shim` },
    stdio: ['ignore', 'ignore', 'inherit'] });
  for (let i = 0; i < 100; i++) {
    try { if ((await fetch(`${base}/api/v1/health`)).status === 200) return { base, stop: () => proc.kill('SIGTERM') }; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  proc.kill('SIGKILL');
  throw new Error('the shim did not start');
}

// One Chromium with a fresh profile directory, removed at close.
export async function launchBrowser() {
  const profile = mkdtempSync(`${tmpdir()}/lattice-chromium-`);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
    viewport: { width: 1280, height: 800 },
  });
  mkdirSync(artifacts, { recursive: true });
  return {
    context,
    async close() { await context.close(); rmSync(profile, { recursive: true, force: true }); },
  };
}

// A page whose console errors, uncaught errors and CSP violations are kept
// in page.problems.  `allow` lists regexps of expected console errors (e.g.
// the 401 a logged-out fetch produces).
export async function openPage(context, { allow = [] } = {}) {
  const page = await context.newPage();
  page.problems = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (!allow.some((re) => re.test(text))) page.problems.push(`console: ${text}`);
  });
  page.on('pageerror', (err) => page.problems.push(`pageerror: ${err.message}`));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));
  });
  return page;
}

export async function shot(page, name) {
  await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: false });
}

// Replays a captured plugin request (tests/fixtures/captured) with our key;
// `service` renames the captured service (capture-demo) in the body.
export async function replay(base, file, key, service) {
  const c = capturedRequests().find((r) => r.file === file);
  const body = service ? c.body_raw.replaceAll('"capture-demo"', JSON.stringify(service)) : c.body_raw;
  const res = await fetch(base + c.path, { method: c.method,
    headers: { 'Content-Type': 'application/json', 'X-Lattice-API-Key': key, 'X-Lattice-Schema-Version': '1.0.0' }, body });
  return { status: res.status, headers: res.headers, body: await res.text() };
}

// Is this API route deployed on the shim?  (404 "no such endpoint" = not yet)
export async function routeExists(base, path) {
  const res = await fetch(base + path);
  if (res.status !== 404) return true;
  const body = await res.text();
  return !/no such endpoint/.test(body);
}
