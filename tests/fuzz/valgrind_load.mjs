// The shim under valgrind (memcheck) with simulated plugins (tests/load/
// loadgen.mjs) for a short and a longer run, then streamed account exports
// (read whole, and left mid-stream): no invalid memory access, and
// no "definitely lost" memory that grows with the number of requests.  TAP.
//
//   node tests/fuzz/valgrind_load.mjs [short_seconds] [long_seconds]
//
// Needs the test cluster's environment (tests/run.sh exports it).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, rawRequest, ROOT } from '../http/lib.mjs';
import { Load } from '../load/loadgen.mjs';

const shortSeconds = Number(process.argv[2] ?? 5);
const longSeconds = Number(process.argv[3] ?? 20);
const shimBin = process.env.LATTICE_SHIM_BIN ?? `${ROOT}/shim/lattice-shim`;
const dir = mkdtempSync(join(tmpdir(), 'lattice-valgrind-'));
let n = 0;
const ok = (cond, name, diag = []) => {
  n++;
  console.log(`${cond ? 'ok' : 'not ok'} ${n} - ${name}`);
  if (!cond) for (const d of diag) console.log(`#   ${d}`);
};

// A streamed route (the account export), read whole and left mid-stream.
async function streamedExports(shim, label) {
  const signup = await fetch(`${shim.url}/api/v1/auth/signup`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: `vg-${label}-${process.pid}@example.com`, password: 'a valgrind password', name: 'vg' }) });
  if (signup.status !== 201) throw new Error(`sign-up under valgrind: ${signup.status}`);
  const cookie = signup.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
  for (let i = 0; i < 3; i++) {
    const r = await fetch(`${shim.url}/api/v1/account/export`, { headers: { cookie } });
    JSON.parse(await r.text());
  }
  const left = new AbortController();
  const r = await fetch(`${shim.url}/api/v1/account/export`, { headers: { cookie }, signal: left.signal });
  left.abort();
  await r.text().catch(() => {});
}

async function underValgrind(label, seconds) {
  const port = await freePort();
  const log = join(dir, `${label}.log`);
  const proc = spawn('valgrind', ['--tool=memcheck', '--leak-check=full', '--show-leak-kinds=definite',
    '--num-callers=20', `--log-file=${log}`, shimBin], {
    env: { ...process.env, LATTICE_SHIM_PORT: String(port), LATTICE_SHIM_LISTEN: '127.0.0.1',
      LATTICE_SHIM_THREADS: '24', LATTICE_SHIM_POOL_SIZE: '4', LATTICE_SHIM_ACCESS_LOG: 'off' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const t0 = Date.now();
  const phases = [];
  const phase = (what) => phases.push(`${what} ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  const shim = { url: `http://127.0.0.1:${port}`, port };
  const deadline = Date.now() + 60000;
  for (;;) {
    try {
      const r = await rawRequest(shim, 'GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { timeout: 2000 });
      if (r.status === 200) break;
    } catch { /* not up yet */ }
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`shim under valgrind did not start (${label})`);
    await sleep(200);
  }
  phase('started');
  const load = new Load({ url: shim.url, plugins: 12, tenants: 4, greedy: 1, tag: `vg-${label}-${process.pid}`, plan: 'load-fast',
    intervals: { metadata: 1000, traces: 300, errors: 1500 } });
  await load.setup();
  phase('tenants');
  load.start();
  await sleep(seconds * 1000);
  await load.stop();
  phase('load');
  await streamedExports(shim, label);
  phase('exports');
  proc.kill('SIGTERM');
  const exit = await Promise.race([exited, sleep(60000, null, { ref: false })]);
  if (!exit) { proc.kill('SIGKILL'); await exited; }
  phase('exited');
  const text = readFileSync(log, 'utf8');
  const num = (re) => { const m = text.match(re); return m ? Number(m[1].replace(/,/g, '')) : null; };
  return {
    phases,
    requests: load.requests,
    statuses: load.statuses,
    exit,
    definite: num(/definitely lost: ([\d,]+) bytes/) ?? 0,
    definiteBlocks: num(/definitely lost: [\d,]+ bytes in ([\d,]+) blocks/) ?? 0,
    invalid: (text.match(/Invalid (read|write|free)|uninitialised|Mismatched free/g) ?? []).length,
    summary: text.split('\n').filter((l) => /LEAK SUMMARY|definitely lost|indirectly lost|ERROR SUMMARY/.test(l))
      .map((l) => l.replace(/^==\d+== /, '')),
    firstErrors: text.split('\n').filter((l) => /Invalid|uninitialised|definitely lost in/.test(l)).slice(0, 10),
  };
}

console.log('1..4');
try {
  const a = await underValgrind('short', shortSeconds);
  const b = await underValgrind('long', longSeconds);
  for (const [label, r] of [['short', a], ['long', b]]) {
    console.log(`# ${label}: ${r.requests} requests ${JSON.stringify(r.statuses)}, exit ${JSON.stringify(r.exit)}; ${r.phases.join(', ')}`);
    for (const l of r.summary) console.log(`#   ${l}`);
  }
  ok(a.requests > 0 && b.requests > 2 * a.requests, `the longer run served more requests (${a.requests} then ${b.requests})`);
  ok(a.exit && a.exit.code === 0 && b.exit && b.exit.code === 0, 'the shim under valgrind drained and exited 0 on SIGTERM');
  ok(a.invalid === 0 && b.invalid === 0, 'no invalid read, write or free, no use of uninitialised memory',
    [...a.firstErrors, ...b.firstErrors]);
  ok(b.definite <= a.definite, `definitely lost does not grow with requests (${a.definite} B in ${a.definiteBlocks} blocks, then ${b.definite} B in ${b.definiteBlocks} blocks)`,
    b.firstErrors);
} catch (e) {
  while (n < 4) ok(false, `valgrind run: ${e.message}`);
}
rmSync(dir, { recursive: true, force: true });
process.exit(0); // the plugins' keep-alive agents would hold the event loop
