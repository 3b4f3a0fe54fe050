// Alerts end to end (docs/alerts.md): a real shim delivers what the
// extension's tick decides to real receivers -- local HTTP servers for the
// webhook (its signature verified here, as a customer would) and Slack
// channels, and SMTP (tests/stripe_standin/smtp_sink.py, python3-aiosmtpd).
// A service stops: exactly one "down" per channel; it comes back: exactly one
// "recovered"; a receiver that hangs holds up none of the others; redirects
// are not followed; addresses that are not public are refused when saved.
// The tick is run here with an explicit time (the worker's own is off).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startShim, startSmtpSink, psql, freePort, eventually, ROOT } from './lib.mjs';
import { send } from './owasp_lib.mjs';

const FROM = '127.0.87.1';
const run = randomUUID().slice(0, 8);
const email = `alerts-${run}@example.com`;
const work = mkdtempSync(join(tmpdir(), 'alerts-'));
const smtpOut = join(work, 'smtp.jsonl');

let shim;
let smtp;
let receiver;
let account;
let session;
let secret;
let service;
const got = [];        // {path, headers, body} of every request the receiver answered
const hung = [];       // responses held open by /hang

// ---- receivers ---------------------------------------------------------------------

function startReceiver() {
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      if (req.url.startsWith('/hang')) { hung.push(res); return; }
      got.push({ path: req.url, headers: req.headers, body });
      if (req.url.startsWith('/redirect')) {
        res.writeHead(302, { Location: `http://127.0.0.1:${srv.address().port}/landing` });
        res.end();
        return;
      }
      res.writeHead(204);
      res.end();
    });
  });
  return new Promise((resolve) => srv.listen(0, '127.0.0.1', () => resolve(srv)));
}
const url = (path) => `http://127.0.0.1:${receiver.address().port}${path}`;
const at = (path) => got.filter((r) => r.path === path);

// The receiver's side of the signature: Stripe's scheme with the channel's secret.
function verify(r) {
  const sig = Object.fromEntries(String(r.headers['lattice-signature']).split(',').map((kv) => kv.split('=')));
  const want = createHmac('sha256', secret).update(`${sig.t}.${r.body}`).digest();
  const have = Buffer.from(sig.v1 ?? '', 'hex');
  return have.length === want.length && timingSafeEqual(have, want) && Math.abs(Date.now() / 1000 - Number(sig.t)) < 300;
}

// Subjects of the alert messages delivered to the account's address
function subjects() {
  if (!existsSync(smtpOut)) return [];
  return readFileSync(smtpOut, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
    .filter((m) => m.rcpt_tos.some((t) => t.toLowerCase() === email))
    .map((m) => /^Subject: (.*)$/mi.exec(m.data)?.[1]?.trim() ?? '')
    .filter((subject) => subject.startsWith('[Lattice]'));
}

// ---- HTTP -----------------------------------------------------------------------------

function call(method, path, body) {
  const headers = { Cookie: `lattice_session=${session.session}; lattice_csrf=${session.csrf}`, 'X-CSRF-Token': session.csrf };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return send(shim, method, path, { from: FROM, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}
const tick = (offset) => JSON.parse(psql(`SELECT lattice.alert_tick(now() + interval '${offset}')`));
// A server setting, then a wait until the postmaster has read it (a new
// session shows it): the pool's sessions, signalled by it, apply it at their
// next statement.  pg_reload_conf() itself returns before that.
const setting = (name, value) => {
  psql(`ALTER SYSTEM SET ${name} = ${value}`);
  psql('SELECT pg_reload_conf()');
  const pause = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  for (let i = 0; value !== 'DEFAULT' && i < 100 && psql(`SHOW ${name}`) !== value; i++) pause(20);
  pause(50);
};

before(async () => {
  setting('lattice.alert_interval', '0');
  setting('lattice.outbound_allow_loopback', 'on');
  receiver = await startReceiver();
  const smtpPort = await freePort();
  smtp = await startSmtpSink(smtpPort, smtpOut);
  shim = await startShim({ cwd: ROOT, env: {
    LATTICE_SMTP_URL: `smtp://127.0.0.1:${smtpPort}`, LATTICE_SMTP_TLS: 'none', LATTICE_SMTP_TIMEOUT_MS: '3000',
    LATTICE_OUTBOX_POLL_MS: '100', LATTICE_WEBHOOK_TIMEOUT_MS: '6000' } });
  const r = await send(shim, 'POST', '/api/v1/auth/signup', { from: FROM, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password: 'alerts password 1', name: 'Alerts' }) });
  assert.equal(r.status, 201, r.text);
  account = r.json.user.id;
  const c = Object.fromEntries([].concat(r.headers['set-cookie']).map((x) => x.split(';')[0].split('=')));
  session = { session: c.lattice_session, csrf: c.lattice_csrf };
  psql(`UPDATE lattice.users SET email_verified_at = now() WHERE id = '${account}'`);
  service = psql(`INSERT INTO lattice.services (user_id, name, first_seen, last_seen)
                  VALUES ('${account}', 'payments-${run}', now() - interval '2 days', now()) RETURNING id`);
  // start the tick's cursors at the present
  tick('0 minutes');
});

after(async () => {
  for (const res of hung) res.destroy();
  await shim?.stop();
  smtp?.kill();
  receiver?.close();
  setting('lattice.outbound_allow_loopback', 'DEFAULT');
  setting('lattice.alert_interval', 'DEFAULT');
});

const need = (...xs) => { if (xs.some((x) => x === undefined)) assert.fail('an earlier step of this file failed (see above)'); };

test('channels: a webhook gets a secret once, e-mail and Slack are added, a hanging receiver too', async () => {
  const hook = await call('POST', '/api/v1/alerts/channels', { kind: 'webhook', name: 'ops', url: url('/hook') });
  assert.equal(hook.status, 201, hook.text);
  assert.match(hook.json.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
  secret = hook.json.secret;
  for (const [kind, extra] of [['email', { address: email }], ['slack', { url: url('/slack') }],
                               ['webhook', { url: url('/hang') }]]) {
    const r = await call('POST', '/api/v1/alerts/channels', { kind, name: `${kind} channel`, ...extra });
    assert.equal(r.status, 201, r.text);
    assert.equal(r.json.channel.verified, true, 'the own address and webhooks are usable at once');
  }
  const list = await call('GET', '/api/v1/alerts/channels');
  assert.equal(list.json.channels.length, 4);
  assert.ok(!list.text.includes(secret), 'the list never shows the secret');
});

test('a service stops: exactly one "down" per channel, signed, and the hanging receiver holds up nobody', async () => {
  need(secret);
  // its last report falls out of the 15-minute liveness window between two ticks
  psql(`UPDATE lattice.services SET last_seen = now() - interval '14 minutes' WHERE id = '${service}'`);
  const started = Date.now();
  tick('2 minutes');
  // this account's (the database may hold other runs' accounts)
  const mine = (status) => psql(`SELECT count(*) FROM lattice.alert_incidents WHERE user_id = '${account}'
                                    AND rule = 'service_down' AND status = '${status}'`);
  assert.equal(mine('open'), '1');
  await eventually(() => at('/hook').length === 1 && at('/slack').length === 1 && subjects().length === 1,
                   { timeout: 5000, interval: 50 });
  assert.ok(Date.now() - started < 5000, 'delivered before the hanging receiver times out (6 s)');
  assert.equal(hung.length, 1, 'the hanging receiver got its request and holds it');
  const [h] = at('/hook');
  assert.ok(verify(h), 'the signature verifies with the secret shown at creation');
  const doc = JSON.parse(h.body);
  assert.equal(doc.type, 'incident.opened');
  assert.equal(doc.incident.subject.service_id, service);
  assert.equal(h.headers['lattice-delivery'], psql(`SELECT id FROM lattice.outbox WHERE account_id = '${account}'
      AND kind = 'webhook' AND url = '${url('/hook')}' AND purpose = 'alert.opened'`));
  const slack = JSON.parse(at('/slack')[0].body);
  assert.match(slack.text, /stopped reporting/);
  assert.equal(slack.blocks[0].type, 'section');
  assert.equal(at('/slack')[0].headers['lattice-signature'], undefined, 'Slack messages are not signed');
  assert.match(subjects()[0], /^\[Lattice\] payments-.* \(production\) stopped reporting$/);

  // more ticks while it stays down: nothing more
  tick('3 minutes');
  tick('6 minutes');
  await sleep(1000);
  assert.equal(at('/hook').length, 1);
  assert.equal(subjects().length, 1);
});

test('the hanging receiver times out and is retried later; the delivery log shows it', async () => {
  need(secret);
  const id = psql(`SELECT id FROM lattice.alert_channels WHERE user_id = '${account}' AND target = '${url('/hang')}'`);
  await eventually(() => psql(`SELECT count(*) FROM lattice.outbox WHERE context ->> 'channel' = '${id}'
                                  AND status = 'pending' AND attempts = 1 AND last_error IS NOT NULL`) === '1',
                   { timeout: 15000, interval: 200 });
  const log = await call('GET', `/api/v1/alerts/channels/${id}/deliveries`);
  assert.equal(log.status, 200, log.text);
  assert.equal(log.json.deliveries[0].status, 'pending');
  assert.match(log.json.deliveries[0].last_error, /time|Timeout/i);
  assert.ok(log.json.deliveries[0].next_attempt_at, 'with its next attempt');
});

test('it reports again: after recover_after_minutes, exactly one "recovered" per channel', async () => {
  need(secret);
  psql(`UPDATE lattice.services SET last_seen = now() + interval '7 minutes' WHERE id = '${service}'`);
  tick('8 minutes');
  tick('11 minutes');
  assert.equal(at('/hook').length, 1, 'not before the condition was clear for 5 minutes');
  tick('13 minutes');
  assert.equal(psql(`SELECT count(*) FROM lattice.alert_incidents WHERE user_id = '${account}'
                       AND rule = 'service_down' AND status = 'resolved'`), '1');
  await eventually(() => at('/hook').length === 2 && at('/slack').length === 2 && subjects().length === 2,
                   { timeout: 5000, interval: 50 });
  const doc = JSON.parse(at('/hook')[1].body);
  assert.equal(doc.type, 'incident.resolved');
  assert.ok(verify(at('/hook')[1]));
  assert.match(subjects()[1], /^\[Lattice\] Resolved: /);
  const inc = await call('GET', `/api/v1/alerts/incidents?service=${service}`);
  assert.equal(inc.json.incidents.length, 1);
  assert.equal(inc.json.incidents[0].status, 'resolved');
});

test('send test: a redirect is not followed, and the answer says so', async () => {
  need(secret);
  const ch = await call('POST', '/api/v1/alerts/channels', { kind: 'webhook', name: 'moved', url: url('/redirect') });
  assert.equal(ch.status, 201, ch.text);
  const r = await call('POST', `/api/v1/alerts/channels/${ch.json.channel.id}/test`);
  assert.equal(r.status, 502, r.text);
  assert.equal(r.json.error.code, 'delivery_failed');
  assert.equal(r.json.error.details.status, 302);
  await sleep(300);
  assert.equal(at('/landing').length, 0, 'the redirect target never hears from us');
  const ok = await call('POST', `/api/v1/alerts/channels/${psql(`SELECT id FROM lattice.alert_channels
      WHERE user_id = '${account}' AND target = '${url('/hook')}'`)}/test`);
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(ok.json, { delivered: true, status: 204 });
  assert.equal(JSON.parse(at('/hook').at(-1).body).type, 'test');
});

test('addresses that are not public are refused when saved', async () => {
  for (const u of ['https://169.254.169.254/latest/meta-data/', 'https://10.0.0.5/hook', 'https://[fd00::1]/hook',
                   'https://192.168.1.10/hook', 'ftp://example.com/hook', 'https://user:pw@example.com/']) {
    const r = await call('POST', '/api/v1/alerts/channels', { kind: 'webhook', name: 'bad', url: u });
    assert.equal(r.status, 400, `${u}: ${r.text}`);
    assert.equal(r.json.error.code, 'invalid_url');
    assert.equal(r.json.error.details.path, 'url');
  }
  setting('lattice.outbound_allow_loopback', 'off');
  try {
    for (const u of [url('/hook'), 'https://127.0.0.1/hook', 'https://localhost/hook', 'https://[::1]/hook']) {
      const r = await call('POST', '/api/v1/alerts/channels', { kind: 'webhook', name: 'loop', url: u });
      assert.equal(r.status, 400, `${u}: ${r.text}`);
    }
  } finally {
    setting('lattice.outbound_allow_loopback', 'on');
  }
});
