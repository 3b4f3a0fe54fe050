// Two tenants interleaved on ONE server connection behind PgBouncer in
// transaction mode (database lattice_one: pool_size = 1), through a shim with
// a pool of 4 and unnamed statements: every answer belongs to the caller, an
// unauthenticated request in between sees nothing, and the server
// connection carries no tenant into the next transaction.  TAP, numbered
// from $TAP_FROM; PGBOUNCER_PORT names the pooler.
import { execFileSync } from 'node:child_process';
import { startShim, request } from '../http/lib.mjs';
import { createTenants, psql } from '../load/loadgen.mjs';

const port = process.env.PGBOUNCER_PORT;
let n = Number(process.env.TAP_FROM ?? 0);
const ok = (cond, name, diag = []) => {
  n++;
  console.log(`${cond ? 'ok' : 'not ok'} ${n} - ${name}`);
  if (!cond) for (const d of [].concat(diag).slice(0, 10)) console.log(`#   ${d}`);
};
const viaBouncer = (db, user, sql) => execFileSync('psql', ['-XAtq', '-h', '127.0.0.1', '-p', port, '-U', user, '-d', db, ...sql.flatMap((q) => ['-c', q])],
  { encoding: 'utf8' }).trim().split('\n');

const [a, b] = createTenants(2, 'standard', 'bouncer');
// each tenant gets a service of its own name, so a leaked answer is visible
psql(`INSERT INTO lattice.services (user_id, name) VALUES ('${a.id}', 'only-a'), ('${b.id}', 'only-b')`);

const shim = await startShim({ env: {
  LATTICE_SHIM_CONNINFO: `host=127.0.0.1 port=${port} dbname=lattice_one user=lattice_shim`,
  LATTICE_SHIM_PREPARED_STATEMENTS: '0', LATTICE_SHIM_POOL_SIZE: '4', LATTICE_SHIM_ACCESS_LOG: 'off' } });

const wrong = [];
let served = 0;
for (let i = 0; i < 60; i++) {
  const calls = []; // a wave of five concurrent requests, all on the one server connection
  for (const [t, other] of [[a, b], [b, a]]) {
    calls.push(request(shim, '/api/v1/auth/me', { headers: { 'X-Lattice-API-Key': t.key } }).then((r) => {
      served++;
      if (r.status !== 200 || r.json.user.id !== t.id) wrong.push(`auth/me as ${t.id}: ${r.status} ${r.text.slice(0, 120)}`);
    }));
    calls.push(request(shim, '/api/v1/services', { headers: { 'X-Lattice-API-Key': t.readKey } }).then((r) => {
      served++;
      const text = r.text;
      const mine = t === a ? 'only-a' : 'only-b', theirs = t === a ? 'only-b' : 'only-a';
      if (r.status !== 200 || !text.includes(mine) || text.includes(theirs) || text.includes(other.id)) wrong.push(`services as ${t.id}: ${r.status} ${text.slice(0, 160)}`);
    }));
  }
  calls.push(request(shim, '/api/v1/services').then((r) => {
    served++;
    if (r.status !== 401 || /only-/.test(r.text)) wrong.push(`no credential: ${r.status} ${r.text.slice(0, 120)}`);
  }));
  await Promise.all(calls);
}
const servers = viaBouncer('pgbouncer', 'postgres', ['SHOW SERVERS']).filter((l) => l.includes('lattice_one'));
ok(servers.length === 1, `one server connection for lattice_one (${servers.length})`);
ok(served === 300 && wrong.length === 0, `${served} interleaved requests of two tenants and anonymous ones on it: every answer the caller's own`, wrong);

// the same at the SQL level: a tenant set in one transaction is gone in the next
const out = viaBouncer('lattice_one', 'lattice_shim', [
  `SELECT (lattice_http.auth_me('{"api_key": "${a.key}"}'::jsonb, NULL)).status`,
  'SELECT coalesce(lattice_http.tenant_id()::text, \'none\'), pg_catalog.pg_backend_pid()',
  `SELECT (lattice_http.auth_me('{"api_key": "${b.key}"}'::jsonb, NULL)).status`,
  'SELECT coalesce(lattice_http.tenant_id()::text, \'none\'), pg_catalog.pg_backend_pid()',
]);
const pids = new Set([out[1].split('|')[1], out[3].split('|')[1]]);
ok(out[0] === '200' && out[2] === '200' && out[1].startsWith('none|') && out[3].startsWith('none|') && pids.size === 1,
  `after a tenant's transaction the same server connection has no tenant (${out.join(' ; ')})`);
await shim.stop();
