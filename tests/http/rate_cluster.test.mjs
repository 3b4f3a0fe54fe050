// Rate counters across sessions and server lifetimes: concurrency on one key,
// a full table (LRU eviction), restart behaviour, the roll-up worker, and a
// server without shared_preload_libraries.  The last four need a cluster of
// their own (a small table, restarts), started here with scripts/cluster.sh.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { appendFileSync, readFileSync, rmSync } from 'node:fs';
import { randomUUID } from 'node:crypto';

const root = process.env.LATTICE_ROOT ?? new URL('../..', import.meta.url).pathname;
const work = process.env.LATTICE_WORK ?? '/tmp';
const cluster = `${work}/rate-pg-${process.pid}`;

function envOf(dir) {
  const text = readFileSync(`${dir}/env`, 'utf8');
  const env = { ...process.env };
  for (const [, k, v] of text.matchAll(/(PG\w+)='?([^' \n]+)'?/g)) env[k] = v;
  return env;
}

// one psql call; returns trimmed unaligned output
function psql(env, sql, db) {
  const args = ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', sql];
  if (db) args.push('-d', db);
  return execFileSync('psql', args, { env, encoding: 'utf8' }).trim();
}

// the error text of a failing statement (verbose, so it shows the SQLSTATE)
function psqlError(env, sql, db) {
  try {
    execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-v', 'VERBOSITY=verbose', '-c', sql, '-d', db],
      { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    return String(e.stderr);
  }
  return null;
}

const cl = (cmd, ...rest) =>
  execFileSync(`${root}/scripts/cluster.sh`, [cmd, cluster, ...rest], { encoding: 'utf8' });
const conf = (line) => appendFileSync(`${cluster}/data/postgresql.conf`, `${line}\n`);
let env;

before(() => {
  cl('start');
  conf('lattice.rate_table_size = 64');
  conf('lattice.rate_usage_interval = 1');
  cl('restart');
  env = envOf(cluster);
});

after(() => {
  try { cl('stop'); } catch { /* already stopped */ }
  rmSync(cluster, { recursive: true, force: true });
});

test('several sessions hammering one key never get more than the limit', async () => {
  const mainEnv = process.env.PGHOST ? process.env : env;
  const key = randomUUID();
  // limit 300 over a year: no refill during the test; 4 x 120 attempts
  const line = `SELECT allowed FROM lattice.rate_check('conc', '${key}', 300, 31536000);\n`;
  const script = line.repeat(120);
  const results = await Promise.all([1, 2, 3, 4].map(() => new Promise((resolve, reject) => {
    const p = execFile('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1'], { env: mainEnv, maxBuffer: 1 << 20 },
      (err, stdout) => (err ? reject(err) : resolve(stdout)));
    p.stdin.end(script);
  })));
  const allowed = results.join('').split('\n').filter((l) => l === 't').length;
  const refused = results.join('').split('\n').filter((l) => l === 'f').length;
  assert.equal(allowed + refused, 480);
  assert.equal(allowed, 300, 'exactly the limit is allowed across sessions');
});

test('a full table evicts the least recently used key and refuses no one', () => {
  const info = psql(env, 'SELECT table_size FROM lattice.rate_memory()');
  assert.equal(info, '64');
  // cold: exhausted, then pushed out by 200 new keys
  assert.equal(psql(env, `SELECT string_agg(allowed::text, ',') FROM (
      SELECT (lattice.rate_check('ev', 'cold', 1, 3600)).allowed FROM generate_series(1, 2)) s`), 'true,false');
  // hot: exhausted too, but used every 10 new keys, so it stays
  assert.equal(psql(env, `SELECT string_agg(allowed::text, ',') FROM (
      SELECT (lattice.rate_check('ev', 'hot', 1, 3600)).allowed FROM generate_series(1, 2)) s`), 'true,false');
  const out = psql(env, `
    CREATE TEMP TABLE r (i int, allowed boolean, hot boolean);
    DO $$ BEGIN
      FOR i IN 1..200 LOOP
        INSERT INTO r VALUES (i, (lattice.rate_check('ev', 'new' || i, 1, 3600)).allowed, NULL);
        IF i % 10 = 0 THEN
          INSERT INTO r VALUES (i, NULL, (lattice.rate_check('ev', 'hot', 1, 3600)).allowed);
        END IF;
      END LOOP;
    END $$;
    SELECT count(*) FILTER (WHERE allowed) || '/' || count(allowed) || ' hot:' ||
           coalesce(string_agg(DISTINCT hot::text, ','), '') FROM r;`);
  assert.equal(out, '200/200 hot:false', 'every new key is served; the hot key keeps its state');
  const [entries, evictions] = psql(env, 'SELECT entries, evictions FROM lattice.rate_memory()').split('|');
  assert.equal(entries, '64', 'the table stays at its size');
  assert.ok(Number(evictions) >= 200 - 64, `evictions counted (${evictions})`);
  assert.equal(psql(env, "SELECT (lattice.rate_check('ev', 'cold', 1, 3600)).allowed"), 't',
    'the evicted cold key starts again with a full allowance (fail-open)');
});

test('the worker rolls hourly usage into lattice.usage_hourly, by class and service', async () => {
  const id = randomUUID();
  psql(env, `INSERT INTO lattice.users (id, email, name) VALUES ('${id}', '${id}@rate.test', 'w')`);
  psql(env, `BEGIN; SELECT lattice.test_set_tenant('${id}');
             SELECT (lattice.rate_enforce_tenant('${id}')).allowed FROM generate_series(1, 3);
             SELECT lattice.rate_enforce_ingest('svc-a') FROM generate_series(1, 2);
             SELECT lattice.rate_enforce_ingest('svc-b'); COMMIT;`);
  const want = 'api::3/0,ingest:svc-a:2/0,ingest:svc-b:1/0';
  let got = '';
  for (let i = 0; i < 40 && got !== want; i++) {
    await new Promise((r) => setTimeout(r, 250));
    got = psql(env, `SELECT string_agg(class || ':' || subject || ':' || requests || '/' || refused, ',' ORDER BY class, subject)
                       FROM lattice.usage_hourly WHERE user_id = '${id}'`);
  }
  assert.equal(got, want, 'the worker wrote the api requests and each service\'s ingest without being asked');
});

test('the worker also writes the identity writes a read-only transaction deferred', async () => {
  const id = psql(env, `SELECT lattice.create_user('${randomUUID()}@rate.test', 'a fine long password', 'w')`);
  const key = psql(env, `SELECT lattice.create_api_key('${id}', 'reader')`);
  psql(env, `BEGIN READ ONLY; SELECT lattice.api_key_verify('${key}'); COMMIT;`);
  let got = '';
  for (let i = 0; i < 40 && got !== 't'; i++) {
    await new Promise((r) => setTimeout(r, 250));
    got = psql(env, `SELECT last_used IS NOT NULL FROM lattice.api_keys WHERE user_id = '${id}'`);
  }
  assert.equal(got, 't', 'the key shows its use without any writing request');
});

test('counters start again after a restart', () => {
  assert.equal(psql(env, "SELECT (lattice.rate_check('ev', 'cold', 1, 3600)).allowed"), 'f');
  cl('restart');
  assert.equal(psql(env, 'SELECT entries FROM lattice.rate_memory()'), '0');
  assert.equal(psql(env, "SELECT (lattice.rate_check('ev', 'cold', 1, 3600)).allowed"), 't',
    'after a restart every key has its whole allowance');
});

test('without shared_preload_libraries: CREATE EXTENSION works, counters say what is missing', () => {
  conf("shared_preload_libraries = ''");
  cl('restart');
  psql(env, 'CREATE DATABASE nopreload', 'postgres');
  psql(env, 'CREATE EXTENSION lattice', 'nopreload');
  const current = readFileSync(`${root}/extension/lattice.control`, 'utf8').match(/^default_version = '(.*)'/m)[1];
  assert.equal(psql(env, "SELECT extversion FROM pg_extension WHERE extname = 'lattice'", 'nopreload'), current);
  for (const sql of [
    "SELECT lattice.rate_check('s', 'k', 1, 60)",
    `SELECT lattice.rate_enforce_address('{"client_addr":"10.0.0.1"}', 'login')`,
    `SELECT lattice.rate_enforce_tenant('${randomUUID()}')`,
    `BEGIN; SELECT lattice.test_set_tenant('${randomUUID()}'); SELECT lattice.rate_enforce_ingest('svc'); COMMIT`,
    `BEGIN; SELECT lattice.test_set_tenant('${randomUUID()}'); SELECT lattice.rate_usage_classes(); COMMIT`,
  ]) {
    const err = psqlError(env, sql, 'nopreload');
    assert.match(err ?? '', /55000/, `${sql} fails with object_not_in_prerequisite_state`);
    assert.match(err, /need lattice in shared_preload_libraries/);
  }
  assert.equal(psql(env, 'SELECT lattice.rate_headers()', 'nopreload'), '{}',
    'rate_headers() degrades to no headers');
});
