// Billing's outbound side against real parts: the extension's outbox in a
// real PostgreSQL, shim/outbound.c (through tests/stripe_standin/outbound_probe.c
// until the shim's routes call it), the Stripe stand-in, and a real SMTP
// server (python3-aiosmtpd).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { startStripeStandin } from '../stripe_standin/server.mjs';
import { startSmtpSink } from './lib.mjs';

const root = process.env.LATTICE_ROOT ?? new URL('../..', import.meta.url).pathname;
const work = process.env.LATTICE_WORK ?? mkdtempSync(join(tmpdir(), 'billing-'));
const probe = join(work, 'outbound_probe');
const conninfo = `host=${process.env.PGHOST} port=${process.env.PGPORT} dbname=${process.env.PGDATABASE ?? 'lattice'} user=lattice_shim`;
let stripe;
let smtp;
const smtpOut = join(work, 'smtp.jsonl');
let smtpPort;

const sql = (q) => execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

const startSmtp = () => startSmtpSink(smtpPort, smtpOut);

const env = () => ({ ...process.env, LATTICE_DB: conninfo, LATTICE_STRIPE_API_BASE: stripe.url,
                     LATTICE_STRIPE_SECRET_KEY: stripe.secretKey, LATTICE_SMTP_URL: `smtp://127.0.0.1:${smtpPort}`,
                     LATTICE_SMTP_TLS: 'none', LATTICE_MAIL_FROM: 'Lattice <billing@lattice.test>',
                     LATTICE_STRIPE_TIMEOUT_MS: '3000', LATTICE_SMTP_TIMEOUT_MS: '3000', LATTICE_OUTBOX_POLL_MS: '100' });

// async: the stand-in lives in this process and must answer while the probe runs
async function runJob(job) {
  const { stdout: out } = await promisify(execFile)(probe, ['job', conninfo, String(job)], { encoding: 'utf8', env: env() });
  const [status, headers, ...body] = out.split('\n');
  return { status: Number(status), headers: JSON.parse(headers), body: body.join('\n').trim() ? JSON.parse(body.join('\n')) : null };
}
const drain = (ms = 1500) => execFileSync(probe, ['drain', String(ms)], { encoding: 'utf8', env: env(), stdio: ['ignore', 'pipe', 'ignore'] });

// an account as sign-up leaves it: the row, its address's look-up and the welcome mail
function newUser() {
  const id = randomUUID();
  sql(`INSERT INTO lattice.users (id, email, name, email_verified_at) VALUES ('${id}', 'bill-${id}@example.com', 'Billing ${id.slice(0, 4)}', now());
       INSERT INTO lattice.account_emails (email, user_id) VALUES ('bill-${id}@example.com', '${id}');
       SELECT lattice.billing_welcome(id, email, name, trial_ends_at) FROM lattice.users WHERE id = '${id}';`);
  return id;
}
// calls a billing action the way lattice_http does: as lattice_app, with the tenant set
function asTenant(user, call) {
  return sql(`BEGIN; SELECT lattice.test_set_tenant('${user}'); SET LOCAL ROLE lattice_app;
              SELECT (r).status || ' ' || coalesce((r).headers ->> 'Lattice-Outbox-Job', '') FROM (SELECT ${call} AS r) x; COMMIT;`);
}
const mails = () => (existsSync(smtpOut) ? readFileSync(smtpOut, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []);

before(async () => {
  execFileSync('cc', ['-std=c11', '-D_GNU_SOURCE', '-Wall', '-Wextra', '-Werror', `-I${execFileSync('pg_config', ['--includedir'], { encoding: 'utf8' }).trim()}`,
                      `-I${join(root, 'shim')}`, '-o', probe, join(root, 'tests/stripe_standin/outbound_probe.c'),
                      join(root, 'shim/outbound.c'), `-I${join(root, 'extension/src')}`, join(root, 'extension/src/outbound_address_core.c'), '-lpq', '-ljson-c', '-lcurl', '-lpthread']);
  stripe = await startStripeStandin();
  smtpPort = await freePort();
  smtp = await startSmtp();
  sql(`SELECT lattice.billing_set_price('standard', 'price_test_standard')`);
  // other suites' accounts have welcome mails queued too: send those out of the way first
  sql(`UPDATE lattice.outbox SET status = 'done' WHERE kind = 'email' AND status <> 'done'`);
});

after(async () => {
  smtp?.kill();
  await stripe?.close();
});

test('checkout: customer then Checkout Session, with key, idempotency and our parameters', async () => {
  const user = newUser();
  const [status, job] = asTenant(user, `lattice.billing_checkout('{}')`).split(' ');
  assert.equal(status, '202');
  const answer = await runJob(job);
  assert.equal(answer.status, 200);
  assert.match(answer.body.url, /^https:\/\/checkout\.stripe\.test\/c\/pay\/cs_test\w+$/);

  const [customer, session] = stripe.requests.slice(-2);
  assert.equal(customer.method, 'POST');
  assert.equal(customer.path, '/v1/customers');
  assert.equal(customer.headers.authorization, `Bearer ${stripe.secretKey}`);
  assert.equal(customer.headers['idempotency-key'], `lattice-customer-${user}`);
  assert.equal(customer.params['metadata[user_id]'], user);
  assert.equal(customer.params.email, `bill-${user}@example.com`);

  assert.equal(session.path, '/v1/checkout/sessions');
  assert.match(session.headers['idempotency-key'], /^lattice-checkout-[0-9a-f-]{36}$/);
  assert.equal(session.params.mode, 'subscription');
  assert.equal(session.params.customer, sql(`SELECT stripe_customer_id FROM lattice.billing_customers WHERE user_id = '${user}'`));
  assert.equal(session.params['line_items[0][price]'], 'price_test_standard');
  assert.equal(session.params['line_items[0][quantity]'], '1');
  // the rest of the sign-up trial, never a second one
  assert.equal(session.params['subscription_data[trial_end]'],
               sql(`SELECT floor(extract(epoch FROM trial_ends_at))::bigint FROM lattice.users WHERE id = '${user}'`));
  assert.equal(session.params['subscription_data[trial_period_days]'], undefined);
  assert.equal(session.params['subscription_data[metadata][user_id]'], user);
  assert.equal(session.params.client_reference_id, user);
  assert.match(session.params.success_url, /^http:\/\/localhost:8080\/dashboard\/billing\?checkout=success&session_id=\{CHECKOUT_SESSION_ID\}$/);
  assert.match(session.params.cancel_url, /\/dashboard\/billing\?checkout=canceled$/);

  // a second checkout reuses the customer: one request only
  const before = stripe.requests.length;
  const [, job2] = asTenant(user, `lattice.billing_checkout('{}')`).split(' ');
  assert.equal((await runJob(job2)).status, 200);
  assert.deepEqual(stripe.requests.slice(before).map((r) => r.path), ['/v1/checkout/sessions']);
});

test('Stripe failing: one bounded retry with the same Idempotency-Key, then 503', async () => {
  const user = newUser();
  sql(`INSERT INTO lattice.billing_customers (user_id, stripe_customer_id) VALUES ('${user}', 'cus_known_${user.slice(0, 8)}')`);
  const [, job] = asTenant(user, `lattice.billing_portal('{}')`).split(' ');
  const before = stripe.requests.length;
  stripe.failNext(500, 500);
  const answer = await runJob(job);
  assert.equal(answer.status, 503);
  assert.equal(answer.body.error.code, 'payment_provider_unavailable');
  const tries = stripe.requests.slice(before);
  assert.equal(tries.length, 2, 'exactly one retry');
  assert.equal(tries[0].headers['idempotency-key'], tries[1].headers['idempotency-key']);
  assert.equal(sql(`SELECT status FROM lattice.outbox WHERE id = ${job}`), 'failed');
});

test('portal and cancel answer from Stripe\'s reply', async () => {
  const user = newUser();
  sql(`INSERT INTO lattice.billing_customers (user_id, stripe_customer_id) VALUES ('${user}', 'cus_p_${user.slice(0, 8)}');
       INSERT INTO lattice.subscriptions (user_id, stripe_customer_id, stripe_subscription_id, status, state_at)
       VALUES ('${user}', 'cus_p_${user.slice(0, 8)}', 'sub_p_${user.slice(0, 8)}', 'active', now())`);
  const [, portalJob] = asTenant(user, `lattice.billing_portal('{}')`).split(' ');
  const portal = await runJob(portalJob);
  assert.equal(portal.status, 200);
  assert.match(portal.body.url, /^https:\/\/billing\.stripe\.test\/p\/session\//);
  assert.equal(stripe.requests.at(-1).params.return_url, 'http://localhost:8080/dashboard/billing');

  const [, cancelJob] = asTenant(user, `lattice.billing_set_cancel('{}', true)`).split(' ');
  const cancel = await runJob(cancelJob);
  assert.equal(cancel.status, 200);
  assert.equal(cancel.body.cancel_at_period_end, true);
  assert.equal(stripe.requests.at(-1).path, `/v1/subscriptions/sub_p_${user.slice(0, 8)}`);
  assert.equal(stripe.requests.at(-1).params.cancel_at_period_end, 'true');
  assert.equal(sql(`SELECT cancel_at_period_end FROM lattice.subscriptions WHERE user_id = '${user}'`), 't');
});

test('e-mail: sent over SMTP with text and HTML parts; SMTP down -> retried, nothing lost', async () => {
  const user = newUser(); // queues the welcome mail
  drain();
  let got = mails().filter((m) => m.rcpt_tos.includes(`bill-${user}@example.com`));
  assert.equal(got.length, 1);
  assert.equal(got[0].mail_from, 'billing@lattice.test');
  assert.match(got[0].data, /^Subject: Welcome to Lattice\r?$/m);
  assert.match(got[0].data, /^To: bill-.*@example\.com\r?$/m);
  assert.match(got[0].data, /multipart\/alternative/);
  assert.match(got[0].data, /Content-Type: text\/plain; charset=utf-8/);
  assert.match(got[0].data, /Content-Type: text\/html; charset=utf-8/);
  assert.match(got[0].data, /regardless of preferences/);
  assert.equal(sql(`SELECT status FROM lattice.outbox WHERE account_id = '${user}' AND purpose = 'email.welcome'`), 'done');

  // SMTP down: the mail stays queued with a backoff
  smtp.kill();
  await new Promise((r) => smtp.once('exit', r));
  const user2 = newUser();
  drain(800);
  assert.equal(sql(`SELECT status || ' ' || attempts FROM lattice.outbox WHERE account_id = '${user2}' AND purpose = 'email.welcome'`), 'pending 1');
  assert.equal(mails().filter((m) => m.rcpt_tos.includes(`bill-${user2}@example.com`)).length, 0);

  // back up, and due: delivered once
  smtp = await startSmtp();
  sql(`UPDATE lattice.outbox SET next_attempt_at = now() WHERE account_id = '${user2}'`);
  drain();
  got = mails().filter((m) => m.rcpt_tos.includes(`bill-${user2}@example.com`));
  assert.equal(got.length, 1);
  assert.equal(sql(`SELECT status || ' ' || attempts FROM lattice.outbox WHERE account_id = '${user2}' AND purpose = 'email.welcome'`), 'done 2');
});
