// Alert webhooks leaving the shim (docs/alerts.md, "Delivery" and "Outbound
// safety"): webhook jobs are put in the real outbox here, and the shim's
// webhook thread (shim/outbound.c) delivers them to real local receivers.
// Concurrency (a hanging receiver holds one slot only), the address check at
// connect time (loopback, private, metadata; by address and by name), no
// redirects, answers read up to 64 KiB, bytes that are not UTF-8 in an
// answer, the interactive path ("send test", through
// tests/stripe_standin/outbound_probe.c) and a prompt stop.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, request, psql, eventually, ROOT } from './lib.mjs';

const TIMEOUT_MS = 3000;   // LATTICE_WEBHOOK_TIMEOUT_MS of the shim under test
const user = randomUUID();
const channel = randomUUID();
let secret;                // the channel's signing secret
let shim;
let proxy;                 // what the environment names as a proxy: never used
let proxyEnv;
let loopbackBefore;        // {value, altered}: lattice.outbound_allow_loopback, and whether ALTER SYSTEM set it
const receivers = [];

const lit = (s) => `'${String(s).replace(/'/g, "''")}'`;

// A local HTTP receiver: answer(req, res, body) answers (nothing: it hangs).
// requests: {method, url, headers, body (Buffer)}; connections: TCP
// connections accepted, whether or not a request followed.
async function receiver(answer, host = '127.0.0.1') {
  const rx = { requests: [], connections: 0 };
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      rx.requests.push({ method: req.method, url: req.url, headers: req.headers, body });
      res.on('error', () => {});
      if (answer) answer(req, res, body);
    });
  });
  server.on('connection', (s) => { rx.connections++; s.on('error', () => {}); });
  server.on('clientError', (_e, s) => s.destroy());
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, host, resolve));
  rx.port = server.address().port;
  rx.base = host.includes(':') ? `http://[${host}]:${rx.port}` : `http://${host}:${rx.port}`;
  rx.close = () => { server.closeAllConnections(); return new Promise((r) => server.close(r)); };
  receivers.push(rx);
  return rx;
}
const answering = (status, body = '', headers = {}) => (_req, res) => {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(body);
};

// A webhook job as the extension queues one (background unless interactive).
function enqueue(url, { body = '{"x":1}', maxAttempts = 3, interactive = false } = {}) {
  return Number(psql(`INSERT INTO lattice.outbox (account_id, kind, purpose, interactive, url, body, context, max_attempts)
                      VALUES ('${user}', 'webhook', 'alert.test', ${interactive}, ${lit(url)}, ${lit(body)},
                              jsonb_build_object('channel', '${channel}'), ${maxAttempts})
                      RETURNING id`));
}
const job = (id) => JSON.parse(psql(`SELECT row_to_json(o) FROM (SELECT status, attempts, response_status, last_error, response
                                                                   FROM lattice.outbox WHERE id = ${id}) o`));
// Once the shim recorded the job's attempt: done, or pending again (a retry), or failed.
const settled = (id, timeout = 8000) =>
  eventually(() => { const j = job(id); return j.attempts > 0 && j.status !== 'running' ? j : null; },
             { timeout, interval: 50 });

// ALTER SYSTEM (RESET for reset), reloaded; returns once new sessions see
// want (the shim's own session applies a reload before its next statement).
async function setLoopback(want, reset = false) {
  psql(reset ? 'ALTER SYSTEM RESET lattice.outbound_allow_loopback'
             : `ALTER SYSTEM SET lattice.outbound_allow_loopback = ${want}`);
  psql('SELECT pg_reload_conf()');
  await eventually(() => psql('SHOW lattice.outbound_allow_loopback') === want, { timeout: 5000 });
  await sleep(200);
}

before(async () => {
  // what this file changes, to put it back afterwards
  loopbackBefore = {
    value: psql('SHOW lattice.outbound_allow_loopback'),
    altered: psql(`SELECT count(*) FROM pg_settings WHERE name = 'lattice.outbound_allow_loopback'
                     AND sourcefile LIKE '%/postgresql.auto.conf'`) === '1',
  };
  await setLoopback('on');   // the receivers are on loopback, over http

  psql(`INSERT INTO lattice.users (id, email, name, email_verified_at)
        VALUES ('${user}', 'hook-${user}@example.com', 'Webhook ${user.slice(0, 4)}', now())`);
  // a generic webhook channel with its signing secret, as saving one leaves it
  secret = psql(`WITH s AS (SELECT * FROM lattice.webhook_secret_new()),
                      c AS (INSERT INTO lattice.alert_channels (id, user_id, kind, name, target, secret_sealed)
                            SELECT '${channel}', '${user}', 'webhook', 'delivery test', 'http://127.0.0.1/hook', s.sealed FROM s)
                 SELECT secret FROM s`);
  // other files' webhook jobs would share the slots and skew the timings below
  psql(`UPDATE lattice.outbox SET status = 'failed', locked_until = NULL, last_error = 'set aside by alert_webhook_delivery'
         WHERE kind = 'webhook' AND status IN ('pending', 'running')`);
  proxy = await receiver(answering(200, '{}'));
  proxyEnv = { http_proxy: proxy.base, https_proxy: proxy.base, HTTPS_PROXY: proxy.base, ALL_PROXY: proxy.base,
               no_proxy: '', NO_PROXY: '' };
  shim = await startShim({ env: { ...proxyEnv, LATTICE_OUTBOX_POLL_MS: '100', LATTICE_WEBHOOK_TIMEOUT_MS: String(TIMEOUT_MS),
                                  LATTICE_WEBHOOK_CONCURRENCY: '16' } });
});

after(async () => {
  await shim?.stop();
  await Promise.all(receivers.map((rx) => rx.close()));
  psql(`DELETE FROM lattice.outbox WHERE account_id = '${user}'`);
  psql(`DELETE FROM lattice.users WHERE id = '${user}'`);
  if (loopbackBefore) await setLoopback(loopbackBefore.value, !loopbackBefore.altered);
});

test('a delivery is a POST of the body, byte for byte, with exactly the headers the extension computed', async () => {
  const rx = await receiver(answering(200, '{"ok":true}'));
  const body = JSON.stringify({ id: 'evt_1_test', type: 'test', created: 1796300000, note: 'caf\u00e9 \u2713' });
  const id = enqueue(`${rx.base}/hook?source=lattice`, { body });
  const j = await settled(id);
  assert.equal(j.status, 'done', JSON.stringify(j));
  assert.equal(j.response_status, 200);
  assert.equal(j.last_error, null);
  assert.equal(j.attempts, 1);

  assert.equal(rx.requests.length, 1);
  const [r] = rx.requests;
  assert.equal(r.method, 'POST');
  assert.equal(r.url, '/hook?source=lattice');
  assert.deepEqual(r.body, Buffer.from(body, 'utf8'));
  assert.equal(r.headers['content-type'], 'application/json');
  assert.equal(r.headers['user-agent'], 'Lattice-Alerts/1');
  assert.equal(r.headers['lattice-delivery'], String(id));
  assert.equal(r.headers['content-length'], String(Buffer.byteLength(body)));
  // nothing of curl's own (Accept, Expect) and nothing from a proxy: only these
  assert.deepEqual(Object.keys(r.headers).sort(),
                   ['content-length', 'content-type', 'host', 'lattice-delivery', 'lattice-signature', 'user-agent']);
  // Stripe's scheme over the body as it arrived
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(r.headers['lattice-signature']);
  assert.ok(m, r.headers['lattice-signature']);
  assert.equal(createHmac('sha256', secret).update(`${m[1]}.`).update(r.body).digest('hex'), m[2]);
  assert.equal(proxy.connections, 0, 'straight to the receiver, not through the environment\'s proxy');
});

test('a receiver that hangs holds one slot until its timeout; the others are delivered meanwhile', async () => {
  const hang = await receiver(null);
  const good = await Promise.all([1, 2, 3, 4, 5, 6].map(() => receiver((_req, res) => {
    setTimeout(() => { res.writeHead(204); res.end(); }, 100);
  })));
  // one statement: all due at once, the hanging one first in line
  const ids = psql(`INSERT INTO lattice.outbox (account_id, kind, purpose, url, body, context, max_attempts)
                    SELECT '${user}', 'webhook', 'alert.test', u.url, '{"x":1}', jsonb_build_object('channel', '${channel}'),
                           CASE WHEN u.n = 1 THEN 1 ELSE 3 END
                      FROM unnest(ARRAY[${[hang, ...good].map((rx) => lit(`${rx.base}/hook`)).join(', ')}]) WITH ORDINALITY u (url, n)
                     ORDER BY u.n
                    RETURNING id`).split('\n').map(Number);
  const hung = ids[0];
  const h = await settled(hung, TIMEOUT_MS + 5000);
  assert.equal(h.status, 'failed', JSON.stringify(h));   // its one attempt
  assert.equal(h.response_status, null);
  assert.match(h.last_error, /timed out/i);
  assert.equal(hang.requests.length, 1, 'the hanging receiver got its request');

  // by the database's clock: the others were done long before the hanging one gave up
  const times = psql(`SELECT id, status, response_status, round(extract(epoch FROM done_at - created_at) * 1000)
                        FROM lattice.outbox WHERE id IN (${ids.join(', ')}) ORDER BY id`)
    .split('\n').map((l) => l.split('|')).map(([id, status, rs, ms]) => ({ id: Number(id), status, rs, ms: Number(ms) }));
  const hungMs = times.find((t) => t.id === hung).ms;
  assert.ok(hungMs >= TIMEOUT_MS - 100, `the hanging one ended after ${hungMs} ms`);
  for (const t of times.filter((x) => x.id !== hung)) {
    assert.equal(t.status, 'done');
    assert.equal(t.rs, '204');
    assert.ok(t.ms < TIMEOUT_MS / 2, `a good receiver's delivery took ${t.ms} ms`);
  }
  for (const rx of good) assert.equal(rx.requests.length, 1);
});

test('refused at connect: loopback (by address and by name) once not allowed, private and metadata always', async () => {
  const rx4 = await receiver(answering(200, '{}'));
  const rx6 = await receiver(answering(200, '{}'), '::1');
  // allowed while loopback is on: the same receivers answer
  const ok = [enqueue(`${rx4.base}/hook`), enqueue(`${rx6.base}/hook`), enqueue(`http://localhost:${rx4.port}/hook`)];
  for (const id of ok) assert.equal((await settled(id)).status, 'done');
  const seen = rx4.connections + rx6.connections;
  assert.equal(seen, 3);

  await setLoopback('off');
  try {
    const cases = [
      [`https://127.0.0.1:${rx4.port}/hook`, /^refused: 127\.0\.0\.1 is loopback$/],
      [`https://[::1]:${rx6.port}/hook`, /^refused: ::1 is loopback$/],
      [`https://localhost:${rx4.port}/hook`, /^refused: (127\.0\.0\.1|::1) is loopback$/],
      [`https://127.1.2.3:${rx4.port}/hook`, /^refused: 127\.1\.2\.3 is loopback$/],
      [`https://[::ffff:127.0.0.1]:${rx4.port}/hook`, /^refused: ::ffff:127\.0\.0\.1 is loopback$/],
      [`http://127.0.0.1:${rx4.port}/hook`, /^refused: not an https URL$/],   // plain http: loopback only
      ['https://169.254.169.254/latest/meta-data/', /^refused: 169\.254\.169\.254 is metadata$/],
      ['https://10.20.30.40/hook', /^refused: 10\.20\.30\.40 is private$/],
      ['https://[fd00::1]/hook', /^refused: fd00::1 is private$/],
      ['https://0.0.0.0/hook', /^refused: 0\.0\.0\.0 is unspecified$/],
    ];
    const ids = cases.map(([url]) => enqueue(url));
    for (const [i, id] of ids.entries()) {
      const j = await settled(id);
      assert.equal(j.status, 'pending', `${cases[i][0]}: ${JSON.stringify(j)}`);
      assert.equal(j.response_status, null);
      assert.match(j.last_error, cases[i][1], cases[i][0]);
    }
    await sleep(200);
    assert.equal(rx4.connections + rx6.connections, seen, 'no connection reached a receiver');
  } finally {
    await setLoopback('on');
  }
});

test('redirects are not followed: a 302 is the answer', async () => {
  const target = await receiver(answering(200, '{}'));
  const redirecting = await receiver(answering(302, '', { Location: `${target.base}/elsewhere` }));
  const id = enqueue(`${redirecting.base}/hook`);
  const j = await settled(id);
  assert.equal(j.status, 'pending', JSON.stringify(j));   // not 2xx: retried
  assert.equal(j.response_status, 302);
  assert.doesNotMatch(j.last_error ?? '', /refused|timed out|redirect/i);
  await sleep(300);
  assert.equal(redirecting.requests.length, 1);
  assert.equal(target.connections, 0, 'the redirect target never heard of it');
});

test('an answer longer than 64 KiB is read that far: a 200 is delivered, a 500 is an answer too', async () => {
  const big = Buffer.alloc(300 * 1024, 'a');
  const ok = await receiver((_req, res) => { res.writeHead(200, { 'Content-Type': 'text/plain' }); res.end(big); });
  // and one that never ends its answer after the first 64 KiB and more
  const endless = await receiver((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.write(big);
  });
  const failing = await receiver((_req, res) => { res.writeHead(500, { 'Content-Type': 'text/plain' }); res.end(big); });
  const started = Date.now();
  const [a, b, c] = [enqueue(`${ok.base}/hook`), enqueue(`${endless.base}/hook`), enqueue(`${failing.base}/hook`)];
  const ja = await settled(a);
  assert.equal(ja.status, 'done', JSON.stringify(ja));
  assert.equal(ja.response_status, 200);
  assert.equal(ja.last_error, null);
  const jb = await settled(b);
  assert.equal(jb.status, 'done', JSON.stringify(jb));
  assert.equal(jb.response_status, 200);
  assert.ok(Date.now() - started < TIMEOUT_MS, 'stopped reading instead of waiting for the end');
  const jc = await settled(c);
  assert.equal(jc.status, 'pending');
  assert.equal(jc.response_status, 500);
  assert.doesNotMatch(jc.last_error, /writ|timed out/i, 'a status, not a transport error');
});

test('answer bytes that are not UTF-8 (and NUL) are recorded safely', async () => {
  const junk = Buffer.concat([Buffer.from('{"ok":"'), Buffer.from([0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80]), Buffer.from('"}')]);
  const ok = await receiver((_req, res) => { res.writeHead(200, { 'Content-Type': 'application/json' }); res.end(junk); });
  const bad = await receiver((_req, res) => { res.writeHead(400, { 'Content-Type': 'text/plain' }); res.end(junk); });
  const a = enqueue(`${ok.base}/hook`);
  const b = enqueue(`${bad.base}/hook`);
  const ja = await settled(a);
  assert.equal(ja.status, 'done', JSON.stringify(ja));
  assert.equal(ja.response_status, 200);
  // where the extension keeps the answer, each byte that is not printable ASCII became "?"
  if (ja.response !== null) assert.deepEqual(ja.response, { ok: '????(?' });
  const jb = await settled(b);
  assert.equal(jb.status, 'pending', JSON.stringify(jb));
  assert.equal(jb.response_status, 400);
});

test('interactive ("send test"): the same delivery rules on the request\'s own thread', async () => {
  const work = process.env.LATTICE_WORK ?? mkdtempSync(join(tmpdir(), 'webhook-'));
  const probe = join(work, 'webhook_probe');
  execFileSync('cc', ['-std=c11', '-D_GNU_SOURCE', '-Wall', '-Wextra', '-Werror',
                      `-I${execFileSync('pg_config', ['--includedir'], { encoding: 'utf8' }).trim()}`,
                      `-I${join(ROOT, 'shim')}`, `-I${join(ROOT, 'extension/src')}`, '-o', probe,
                      join(ROOT, 'tests/stripe_standin/outbound_probe.c'), join(ROOT, 'shim/outbound.c'),
                      join(ROOT, 'extension/src/outbound_address_core.c'), '-lpq', '-ljson-c', '-lcurl', '-lpthread']);
  const conninfo = `host=${process.env.PGHOST} port=${process.env.PGPORT} dbname=${process.env.PGDATABASE ?? 'lattice'} user=lattice_shim`;
  const run = (id) => promisify(execFile)(probe, ['job', conninfo, String(id)],
                                          { env: { ...process.env, ...proxyEnv, LATTICE_WEBHOOK_TIMEOUT_MS: String(TIMEOUT_MS) } });

  const rx = await receiver(answering(200, '{"received":true}'));
  const body = '{"id":"evt_test","type":"test"}';
  const id = enqueue(`${rx.base}/hook`, { body, interactive: true, maxAttempts: 1 });
  await run(id);   // exits 0: the database took the result
  assert.equal(rx.requests.length, 1);
  assert.equal(rx.requests[0].body.toString(), body);
  assert.equal(rx.requests[0].headers['lattice-delivery'], String(id));
  assert.match(rx.requests[0].headers['lattice-signature'], /^t=\d+,v1=[0-9a-f]{64}$/);
  const j = job(id);
  assert.equal(j.status, 'done', JSON.stringify(j));
  assert.equal(j.response_status, 200);

  const refused = enqueue('https://192.168.1.1/hook', { interactive: true, maxAttempts: 1 });
  await run(refused);
  const r = job(refused);
  assert.equal(r.status, 'failed');
  assert.equal(r.last_error, 'refused: 192.168.1.1 is private');
  assert.equal(proxy.connections, 0);
});

test('/metrics counts the attempts by outcome, and none is in flight now', async () => {
  const r = await request(shim, '/metrics');
  assert.equal(r.status, 200);
  const val = (name) => Number(new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(r.text)?.[1]);
  assert.equal(val('lattice_webhook_deliveries_in_flight'), 0);
  assert.ok(val('lattice_webhook_attempts_total{outcome="delivered"}') >= 10);
  assert.ok(val('lattice_webhook_attempts_total{outcome="not_2xx"}') >= 3);     // 302, 500, 400
  assert.ok(val('lattice_webhook_attempts_total{outcome="refused"}') >= 10);
  assert.ok(val('lattice_webhook_attempts_total{outcome="failed"}') >= 1);      // the timeout
});

test('stopping the shim ends deliveries in flight at once and records them for a retry', async () => {
  const hang = await receiver(null);
  const id = enqueue(`${hang.base}/hook`);
  await eventually(() => hang.requests.length === 1, { timeout: 5000 });
  const started = Date.now();
  const exit = await shim.stop();
  const took = Date.now() - started;
  assert.equal(exit.code, 0, JSON.stringify(exit));
  assert.ok(took < TIMEOUT_MS, `stopped in ${took} ms`);   // not after the receiver's timeout
  const j = job(id);
  assert.equal(j.status, 'pending', JSON.stringify(j));
  assert.match(j.last_error, /^interrupted/);
});
