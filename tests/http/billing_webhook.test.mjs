// Billing through the real shim: Stripe webhooks signed with node's own
// HMAC (an implementation independent of ours), the billing read API, and
// checkout through an R_OUTBOUND route against the Stripe stand-in.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startShim } from './lib.mjs';
import { execFileSync } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { startStripeStandin } from '../stripe_standin/server.mjs';

const sql = (q) => execFileSync('psql', ['-XAtq', '-v', 'ON_ERROR_STOP=1', '-c', q], { encoding: 'utf8' }).trim();
const secret = `whsec_http_${randomUUID().replaceAll('-', '')}`;
let shim;
let base;
let stripe;
let user;
let session;
let csrf;


// Stripe's documented scheme: v1 = hex HMAC-SHA256(secret, "<t>.<payload>")
const sign = (payload, key = secret, t = Math.floor(Date.now() / 1000)) =>
  `t=${t},v1=${createHmac('sha256', key).update(`${t}.${payload}`).digest('hex')}`;

async function webhook(payload, signature) {
  const res = await fetch(`${base}/api/v1/webhooks/stripe`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', 'Stripe-Signature': signature }, body: payload });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}
async function api(method, path) {
  const headers = { Cookie: `lattice_session=${session}; lattice_csrf=${csrf}`, 'X-CSRF-Token': csrf };
  if (method === 'POST') headers['Content-Type'] = 'application/json';
  const res = await fetch(base + path, { method, headers, body: method === 'POST' ? '{}' : undefined });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
}
const subEvent = (id, dt, status, type = 'customer.subscription.updated') => JSON.stringify({
  id, object: 'event', type, created: Math.floor(Date.now() / 1000) + dt,
  data: { object: { id: `sub_h_${user.slice(0, 8)}`, object: 'subscription', customer: `cus_h_${user.slice(0, 8)}`, status,
                    cancel_at_period_end: false, current_period_end: Math.floor(Date.now() / 1000) + 365 * 86400,
                    trial_end: Math.floor(Date.now() / 1000) + 7 * 86400, metadata: { user_id: user } } } });

before(async () => {
  stripe = await startStripeStandin();
  sql(`SELECT lattice.webhook_secret_add('${secret}')`);
  sql(`SELECT lattice.billing_set_price('standard', 'price_test_standard')`);
  shim = await startShim({ env: { LATTICE_STRIPE_API_BASE: stripe.url, LATTICE_STRIPE_SECRET_KEY: stripe.secretKey } });
  base = shim.url;
  const res = await fetch(`${base}/api/v1/auth/signup`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email: `billing-${randomUUID()}@example.com`, password: 'a fine long password', name: 'Bill' }) });
  assert.equal(res.status, 201);
  user = (await res.json()).user.id;
  for (const c of res.headers.getSetCookie()) {
    const [name, value] = c.split(';')[0].split('=');
    if (name === 'lattice_session') session = value;
    if (name === 'lattice_csrf') csrf = value;
  }
});

after(async () => {
  await shim?.stop();
  await stripe?.close();
});

test('webhook signatures: valid, tampered, wrong secret, old timestamp, several v1', async () => {
  const payload = subEvent(`evt_h1_${user}`, 0, 'trialing', 'customer.subscription.created');
  assert.equal((await webhook(payload.replace('trialing', 'active'), sign(payload))).status, 400, 'tampered');
  assert.equal((await webhook(payload, sign(payload, 'whsec_not_the_secret_0000'))).json.error.details.reason,
               'signature_mismatch', 'wrong secret');
  assert.equal((await webhook(payload, sign(payload, secret, Math.floor(Date.now() / 1000) - 600))).json.error.details.reason,
               'timestamp_out_of_tolerance', 'old timestamp');
  const t = Math.floor(Date.now() / 1000);
  const several = `t=${t},v1=${'0'.repeat(64)},${sign(payload, secret, t).split(',')[1]}`;
  const ok = await webhook(payload, several);
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.json, { received: true, outcome: 'applied' });
  assert.deepEqual((await webhook(payload, sign(payload))).json, { received: true, duplicate: true }, 'replay');
});

test('out of order, unknown types and oversized bodies', async () => {
  const newer = subEvent(`evt_h3_${user}`, 200, 'active');
  const older = subEvent(`evt_h2_${user}`, 100, 'past_due');
  assert.equal((await webhook(newer, sign(newer))).json.outcome, 'applied');
  assert.equal((await webhook(older, sign(older))).json.outcome, 'stale');
  const unknown = JSON.stringify({ id: `evt_hu_${user}`, type: 'radar.early_fraud_warning.created', created: 1, data: { object: {} } });
  assert.deepEqual((await webhook(unknown, sign(unknown))).json, { received: true, outcome: 'ignored' });
  const big = JSON.stringify({ id: `evt_hb_${user}`, type: 'x', created: 1, pad: 'x'.repeat(300_000) });
  assert.equal((await webhook(big, sign(big))).status, 413);
});

test('the billing read API reflects the webhooks, with no Stripe call', async () => {
  const before = stripe.requests.length;
  const r = await api('GET', '/api/v1/billing');
  assert.equal(r.status, 200);
  assert.equal(r.json.status, 'active');
  assert.equal(r.json.plan.price_cents, 2500);
  assert.equal(r.json.cancel_at_period_end, false);
  const inv = await api('GET', '/api/v1/billing/invoices');
  assert.deepEqual(inv.json, { invoices: [] });
  assert.equal(stripe.requests.length, before);
});

test('past_due: a warning header on API answers', async () => {
  const due = subEvent(`evt_h4_${user}`, 300, 'past_due');
  assert.equal((await webhook(due, sign(due))).json.outcome, 'applied');
  const r = await api('GET', '/api/v1/billing');
  assert.match(r.headers.get('lattice-billing-warning') ?? '', /^payment past due/);
  assert.equal(r.json.entitlement.state, 'grace');
});

test('portal through the shim: the outbound route answers {url} from Stripe', async () => {
  const r = await api('POST', '/api/v1/billing/portal');
  assert.equal(r.status, 200, JSON.stringify(r.json));
  assert.match(r.json.url, /^https:\/\/billing\.stripe\.test\/p\/session\//);
  assert.equal(r.headers.get('lattice-outbox-job'), null, 'the internal header is not forwarded');
  const call = stripe.requests.at(-1);
  assert.equal(call.path, '/v1/billing_portal/sessions');
  assert.equal(call.params.customer, `cus_h_${user.slice(0, 8)}`);
  assert.equal(call.headers.authorization, `Bearer ${stripe.secretKey}`);
});
