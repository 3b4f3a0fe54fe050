#!/usr/bin/env bash
# Suite "fault": the disk of the database nearly full.
#
# A throwaway cluster whose lattice tables and indexes live in a tablespace on
# a small tmpfs; a filler file leaves it almost no room; simulated plugins
# (tests/load/loadgen.mjs) send until writes fail.  Expected: every failure a
# JSON 503 `unavailable` + Retry-After without internals (SQLSTATE 53100
# disk_full is class 53, docs/http-contract.md), no hang, no crash, reads
# still answer; once the filler is gone the same requests succeed without
# restarting anything, every acknowledged submission is stored and the failed
# ones left nothing; amcheck and pg_dump find no corruption.
#
# Why a tablespace and not the whole data directory on the tmpfs: with pg_wal
# on a full disk PostgreSQL PANICs as soon as it needs a new WAL segment, and
# its crash recovery then fails too ("could not write to file
# pg_wal/xlogtemp.N: No space left on device"), so the cluster stays down
# until space is freed by hand (tried on PostgreSQL 15).  That is the
# documented reason to keep WAL on its own volume; the failure Lattice must
# handle is its data volume filling up, with WAL and catalogs elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

if [ "$(id -u)" != 0 ]; then echo "1..0 # SKIP mounting a tmpfs needs root"; exit 0; fi

work=${LATTICE_WORK:-/tmp}
dir=$(mktemp -d "$work/diskfull.XXXXXX")
chmod 0755 "$dir"
small=$dir/small
cluster=$dir/pg

cleanup() {
    [ -s "$dir/shim.pid" ] && kill "$(cat "$dir/shim.pid")" 2>/dev/null
    scripts/cluster.sh stop "$cluster" >/dev/null 2>&1 ||
        runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$cluster/data" -m immediate -w stop >/dev/null 2>&1
    mountpoint -q "$small" && { umount "$small" 2>/dev/null || umount -l "$small"; }
    rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$small"
mount -t tmpfs -o size=32m,mode=0755 lattice-diskfull "$small"
mkdir "$small/ts"
chown postgres:postgres "$small/ts"
scripts/cluster.sh start "$cluster" >/dev/null
# shellcheck disable=SC1091
. "$cluster/env"
export PGHOST PGPORT PGUSER PGDATABASE
psql -XAtq -v ON_ERROR_STOP=1 <<SQL
CREATE EXTENSION amcheck;
CREATE TABLESPACE lattice_small LOCATION '$small/ts';
ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE lattice_small;
ALTER INDEX ALL IN TABLESPACE pg_default SET TABLESPACE lattice_small;
SQL

export LATTICE_ROOT=$root DISKFULL_DIR=$dir DISKFULL_SMALL=$small DISKFULL_CLUSTER=$cluster
export LATTICE_SHIM_BIN=${LATTICE_SHIM_BIN:-$root/shim/lattice-shim}
node --input-type=module <<'JS'
import { execFileSync } from 'node:child_process';
import { statfsSync, chownSync, unlinkSync, writeFileSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
const ROOT = process.env.LATTICE_ROOT;
const { startShim, request, psql } = await import(`${ROOT}/tests/http/lib.mjs`);
const { Load } = await import(`${ROOT}/tests/load/loadgen.mjs`);

let n = 0;
const ok = (cond, name, diag = []) => {
  n++;
  console.log(`${cond ? 'ok' : 'not ok'} ${n} - ${name}`);
  if (!cond) for (const d of [].concat(diag).slice(0, 15)) console.log(`#   ${d}`);
};
console.log('1..15');

const SMALL = process.env.DISKFULL_SMALL;
const FILLER = `${SMALL}/filler`;
const LEAVE = 1 << 20;          // what the filler leaves free
const HANG_MS = 5000;           // an answer slower than this counts as a hang
const PATHS = { metadata: '/api/v1/ingest/metadata', traces: '/api/v1/performance/traces/batch', errors: '/api/v1/errors/batch' };
const KINDS = Object.keys(PATHS);
const INTERNALS = /space|disk|device|extend|file|base\/|pg_tblspc|SQLSTATE|ERROR|53100|tablespace/i;

const moved = Number(psql(`SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
  JOIN pg_catalog.pg_tablespace t ON t.oid = c.reltablespace WHERE s.nspname = 'lattice' AND t.spcname = 'lattice_small'`));
const left = Number(psql(`SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
  WHERE s.nspname = 'lattice' AND c.relkind IN ('r', 'i', 'm', 'p') AND c.reltablespace = 0`));
ok(moved > 0 && left === 0, `every lattice table and index is on the small tmpfs (${moved} relations)`);
const postmasterStart = psql('SELECT pg_catalog.pg_postmaster_start_time()');

const shim = await startShim({ env: {
  LATTICE_SHIM_CONNINFO: `dbname=lattice user=lattice_shim host=${process.env.PGHOST} port=${process.env.PGPORT}`,
  LATTICE_SHIM_THREADS: '48', LATTICE_SHIM_POOL_SIZE: '4', LATTICE_SHIM_ACCESS_LOG: 'off' } });
writeFileSync(`${process.env.DISKFULL_DIR}/shim.pid`, String(shim.proc.pid));
// plan load-fast: the plugins send round after round until the disk is full
const load = new Load({ url: shim.url, plugins: 24, tenants: 4, greedy: 0, tag: 'diskfull', plan: 'load-fast' });
await load.setup();

// Sends one submission and books it on the plugin (what verify() checks);
// a refused one is booked nowhere: it must have written nothing.
const answers = [];
const partial = [];
async function send(p, kind, body) {
  const t = Date.now();
  const r = await p.send(PATHS[kind], body);
  r.ms = Date.now() - t;
  answers.push({ kind, status: r.status, ms: r.ms, json: r.json, retryAfter: r.headers?.['retry-after'], error: r.error });
  if (r.status >= 200 && r.status < 300) {
    if (kind === 'metadata') p.acked.metadata.push(body.service.version);
    else {
      p.acked[kind] += r.json?.processed ?? 0;
      if (r.json?.failed !== 0) partial.push(`${kind} ${JSON.stringify(r.json).slice(0, 200)}`);
    }
  }
  return r;
}
// Each trace batch names a caller never seen before, so it inserts rows (an
// external node, an edge) rather than only updating its route's bucket.
let callers = 0;
const word = (i) => { let s = ''; do { s += String.fromCharCode(97 + (i % 26)); i = Math.floor(i / 26); } while (i > 0); return s; };
function bodyOf(p, kind) {
  if (kind === 'metadata') return p.metadataBody();
  if (kind === 'errors') return p.errorsBody();
  const b = p.tracesBody();
  const caller = `caller-${word(callers++)}`;
  for (const t of b.traces) t.caller_service = caller;
  return b;
}
// One round: every plugin sends one submission of `kind` at once.
async function round(kind) {
  return Promise.all(load.plugins.map(async (p) => {
    const body = bodyOf(p, kind);
    return { p, kind, body, r: await send(p, kind, body) };
  }));
}
const is2xx = (s) => s >= 200 && s < 300;

// registration and a first batch of everything, with room to spare
for (const kind of KINDS) await round(kind);
const warm = answers.filter((a) => !is2xx(a.status));
if (warm.length) console.log(`# before filling: ${JSON.stringify(warm.slice(0, 3))}`);

// --- fill the filesystem, then send until writes fail ---
const { bavail, bsize } = statfsSync(SMALL);
const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }));
const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }));
execFileSync('fallocate', ['-l', String(bavail * bsize - LEAVE), FILLER]);
chownSync(FILLER, uid, gid);
const from = answers.length;
const fillStart = Date.now();
// until one whole round (every plugin, every kind) is refused: the last free
// bytes of a table's pages can take a few more rows after the first failure
const lastFailed = {};
for (let refusedRound = false; !refusedRound && Date.now() - fillStart < 20000;) {
  refusedRound = true;
  for (const kind of KINDS) {
    for (const x of await round(kind)) if (!is2xx(x.r.status)) lastFailed[kind] = x; else refusedRound = false;
  }
}
const full = answers.slice(from);
const firstFail = full.findIndex((a) => !is2xx(a.status));
const failures = full.filter((a) => !is2xx(a.status));
const tally = (as) => as.reduce((m, a) => { const k = `${a.kind} ${a.status || 'network'}`; m[k] = (m[k] ?? 0) + 1; return m; }, {});
console.log(`# nearly full (${LEAVE >> 10} KiB left): ${firstFail < 0 ? full.length : firstFail} submissions acknowledged before the first failure; ` +
  `then ${JSON.stringify(tally(full.slice(Math.max(firstFail, 0))))} in ${Date.now() - fillStart} ms; free now ${statfsSync(SMALL).bavail * bsize} bytes`);
ok(firstFail > 0, `submissions acknowledged while nearly full, until the disk filled (${firstFail} before the first failure)`);
// the shim logs each failure with its request id and SQLSTATE: all disk_full
const diskFull = new Set(shim.stderr.filter((l) => l.includes(' 53100 '))
  .map((l) => { try { return JSON.parse(l).request_id; } catch { return null; } }));
const otherCause = failures.filter((a) => !diskFull.has(a.json?.error?.request_id));
ok(failures.length > 0 && KINDS.every((k) => lastFailed[k]) && otherCause.length === 0,
  `writes of every kind failed once it was full, each with SQLSTATE 53100 disk_full (${failures.length} failures: ${Object.keys(lastFailed).join(', ')})`,
  [...otherCause.slice(0, 3).map((a) => JSON.stringify(a)), ...shim.stderr.slice(-5)]);
const unclean = failures.filter((a) => !(a.status === 503 && a.json?.error?.code === 'unavailable' && a.retryAfter
  && typeof a.json.error.message === 'string' && !INTERNALS.test(a.json.error.message)
  && /^[A-Za-z0-9._-]{1,64}$/.test(a.json.error.request_id ?? '')));
const messages = [...new Set(failures.map((a) => a.json?.error?.message))];
ok(failures.length > 0 && unclean.length === 0, `every failure is JSON 503 unavailable + Retry-After without internals (messages: ${JSON.stringify(messages)})`,
  unclean.slice(0, 5).map((a) => JSON.stringify(a)));
const slowest = Math.max(...full.map((a) => a.ms));
ok(slowest < HANG_MS, `no hang: the slowest answer while full took ${slowest} ms`);

// --- reads while full (with the tenant's read-only key) ---
const key = load.tenants[0].readKey;
const reads = {};
for (const path of ['/api/v1/usage', '/api/v1/services', '/api/v1/graph', '/api/v1/errors', '/ready']) {
  const r = await request(shim, path, { headers: { 'X-Lattice-API-Key': key } });
  reads[path] = r.status;
}
ok(Object.values(reads).every((s) => s === 200), `reads still answer while full ${JSON.stringify(reads)}`);
ok(shim.proc.exitCode === null && shim.proc.signalCode === null && answers.every((a) => a.status !== 0),
  'the shim never crashed nor dropped a connection', answers.filter((a) => a.status === 0).slice(0, 3).map((a) => a.error));

// --- free the space: the very requests that failed go through, nothing restarted ---
unlinkSync(FILLER);
const freed = Date.now();
const again = {};
let firstOkMs = null;
for (const kind of KINDS) {
  const x = lastFailed[kind];
  if (!x) continue;
  const r = await send(x.p, kind, x.body);
  again[kind] = r.status;
  if (is2xx(r.status) && firstOkMs === null) firstOkMs = Date.now() - freed;
}
console.log(`# space freed: first failed request acknowledged again ${firstOkMs} ms later`);
ok(KINDS.every((k) => is2xx(again[k])), `after freeing the space the same failed requests succeed at once (${JSON.stringify(again)}, ${firstOkMs} ms)`);
const after = answers.length;
for (const kind of KINDS) await round(kind);
const late = answers.slice(after);
ok(late.every((a) => is2xx(a.status)), `a full round of every kind is acknowledged afterwards ${JSON.stringify(tally(late))}`);
ok(psql('SELECT pg_catalog.pg_postmaster_start_time()') === postmasterStart && shim.proc.exitCode === null,
  'neither PostgreSQL nor the shim restarted');
await shim.stop();
unlinkSync(`${process.env.DISKFULL_DIR}/shim.pid`);

// --- nothing lost, nothing half-written, nothing corrupt ---
const v = load.verify();
ok(v.missing.length === 0 && v.phantom.length === 0,
  `every acknowledged submission is stored (${v.checked} checked) and the failed ones left nothing`, [...v.missing, ...v.phantom]);
ok(partial.length === 0, 'no batch was acknowledged with items dropped', partial);
const indexes = psql(`SELECT count(*) FROM (SELECT public.bt_index_check(c.oid, true)
  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace JOIN pg_catalog.pg_am a ON a.oid = c.relam
  WHERE s.nspname = 'lattice' AND a.amname = 'btree' AND i.indisvalid) x`);
ok(Number(indexes) > 0, `amcheck: bt_index_check (heapallindexed) passes on all ${indexes} btree indexes of schema lattice`);
const heap = psql(`SELECT c.relname || ' block ' || v.blkno || ': ' || v.msg
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace,
  LATERAL public.verify_heapam(c.oid) v WHERE s.nspname = 'lattice' AND c.relkind IN ('r', 'm')`);
ok(heap === '', 'amcheck: verify_heapam finds no corruption in any lattice table', heap.split('\n'));
let dumped = 0, dumpError = '';
try { dumped = execFileSync('pg_dump', ['-d', 'lattice'], { maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'pipe'] }).length; }
catch (e) { dumpError = String(e.stderr ?? e.message); }
const log = readFileSync(`${process.env.DISKFULL_CLUSTER}/postgres.log`, 'utf8');
ok(dumped > 0 && !/PANIC|terminated by signal/.test(log), `pg_dump of the database succeeds (${dumped} bytes) and the server log shows no PANIC`,
  [dumpError, ...log.split('\n').filter((l) => /PANIC|signal/.test(l))]);
JS
