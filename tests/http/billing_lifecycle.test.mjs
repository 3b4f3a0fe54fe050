// Billing end to end through the real shim: the entitlement an
// account's ingest sees as its trial ends and Stripe's signed webhooks move
// its subscription (200 -> 402 read-only -> 200, past_due with a warning),
// and checkout / cancel / resume as HTTP requests answered through the
// Stripe stand-in, asserting what Lattice sent it.  Webhooks are signed with
// node's own HMAC, per Stripe's documented scheme.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { capturedBody } from '../fixtures/captured.mjs';
import { startShim, psql, assertErrorShape } from './lib.mjs';
import { send } from './owasp_lib.mjs';
import { startStripeStandin } from '../stripe_standin/server.mjs';

const FROM = '127.0.72.1'; // this file's own address: sign-up and webhook quotas are per address
const secret = `whsec_life_${randomUUID().replaceAll('-', '')}`;
const json = { 'Content-Type': 'application/json' };
let shim;
let stripe;
let eventClock = Math.floor(Date.now() / 1000); // Stripe's `created`: newer wins

const captured = capturedBody;

async function signup(tag) {
  const r = await send(shim, 'POST', '/api/v1/auth/signup', { from: FROM, headers: json,
    body: JSON.stringify({ email: `life-${tag}-${randomUUID().slice(0, 8)}@example.com`, password: 'a fine long password', name: `Life ${tag}` }) });
  assert.equal(r.status, 201, r.text);
  // checkout needs a verified address (tests/http/account_lifecycle.test.mjs follows the link)
  psql(`UPDATE lattice.users SET email_verified_at = now() WHERE id = '${r.json.user.id}'`);
  const c = Object.fromEntries([].concat(r.headers['set-cookie']).map((s) => s.split(';')[0].split('=')));
  const a = { id: r.json.user.id, email: r.json.user.email, csrf: c.lattice_csrf,
              cookie: `lattice_session=${c.lattice_session}; lattice_csrf=${c.lattice_csrf}` };
  a.session = { Cookie: a.cookie, 'X-CSRF-Token': a.csrf };
  // the plugin's key; read too, since this file also reads with it
  const k = await send(shim, 'POST', '/api/v1/keys', { from: FROM, headers: { ...json, ...a.session },
    body: '{"name":"plugin","scopes":["ingest","read"]}' });
  assert.equal(k.status, 201, k.text);
  assert.deepEqual(k.json.scopes, ['ingest', 'read']);
  a.key = { 'X-Lattice-API-Key': k.json.key };
  a.customer = `cus_life_${a.id.slice(0, 8)}`;
  a.subscription = `sub_life_${a.id.slice(0, 8)}`;
  return a;
}

const call = (a, method, path, body) => send(shim, method, path, { from: FROM, body,
  headers: { ...(body !== undefined ? json : {}), ...a.session } });
const ingest = (a, path, body) => send(shim, 'POST', path, { from: FROM, body, headers: { ...json, ...a.key } });
const metadata = (a, version = '1.2.3') => {
  const doc = JSON.parse(captured('ingest_metadata'));
  doc.service.version = version;
  return ingest(a, '/api/v1/ingest/metadata', JSON.stringify(doc));
};

// A signed webhook, as Stripe sends it.
async function webhook(event) {
  const payload = JSON.stringify(event);
  const t = Math.floor(Date.now() / 1000);
  const sig = `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${payload}`).digest('hex')}`;
  const r = await send(shim, 'POST', '/api/v1/webhooks/stripe', { from: FROM, body: payload,
    headers: { ...json, 'Stripe-Signature': sig } });
  assert.equal(r.status, 200, r.text);
  return r.json;
}
const subscriptionEvent = (a, type, status, extra = {}) => ({
  id: `evt_life_${randomUUID()}`, object: 'event', type, created: ++eventClock,
  data: { object: { id: a.subscription, object: 'subscription', customer: a.customer, status,
                    cancel_at_period_end: false, current_period_start: eventClock,
                    current_period_end: eventClock + 365 * 86400, metadata: { user_id: a.id }, ...extra } } });

before(async () => {
  stripe = await startStripeStandin();
  psql(`SELECT lattice.webhook_secret_add('${secret}')`);
  psql(`SELECT lattice.billing_set_price('standard', 'price_test_standard')`);
  shim = await startShim({ env: { LATTICE_STRIPE_API_BASE: stripe.url, LATTICE_STRIPE_SECRET_KEY: stripe.secretKey,
                                  LATTICE_STRIPE_TIMEOUT_MS: '3000' } });
});
after(async () => {
  await shim?.stop();
  await stripe?.close();
});

test('entitlement end to end: trial 200, trial over 402 read-only, subscription back to 200, past_due warned, canceled 402', async () => {
  const a = await signup('ent');

  // 1. the sign-up trial: ingest works, no warning
  let r = await metadata(a);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['lattice-billing-warning'], undefined);
  const serviceId = r.json.serviceId;
  let billing = await call(a, 'GET', '/api/v1/billing');
  assert.equal(billing.json.entitlement.state, 'trial');

  // 2. the trial ends: every ingest route refuses with 402, nothing written
  psql(`UPDATE lattice.users SET trial_ends_at = now() - interval '1 second' WHERE id = '${a.id}'`);
  const before = psql(`SELECT version || ' ' || (SELECT count(*) FROM lattice.route_stats WHERE user_id = '${a.id}')
                         || ' ' || (SELECT count(*) FROM lattice.error_groups WHERE user_id = '${a.id}')
                         FROM lattice.services WHERE id = '${serviceId}'`);
  r = await metadata(a, '9.9.9');
  assertErrorShape(assert, r, 402, 'subscription_required');
  assert.equal(r.json.error.details.status, 'none');
  assert.match(r.json.error.details.billing_url, /\/dashboard\/billing$/);
  assert.ok(Date.parse(r.json.error.details.data_kept_until) > Date.now(), 'data kept');
  for (const [path, kind] of [['/api/v1/performance/traces/batch', 'traces_batch'], ['/api/v1/errors/batch', 'errors_batch']]) {
    assertErrorShape(assert, await ingest(a, path, captured(kind)), 402, 'subscription_required');
  }
  assert.equal(psql(`SELECT version || ' ' || (SELECT count(*) FROM lattice.route_stats WHERE user_id = '${a.id}')
                       || ' ' || (SELECT count(*) FROM lattice.error_groups WHERE user_id = '${a.id}')
                       FROM lattice.services WHERE id = '${serviceId}'`), before, 'a refused ingest writes nothing');

  // ...while reads still work, with the key and with the session
  r = await send(shim, 'GET', '/api/v1/services', { from: FROM, headers: a.key });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.services.map((s) => s.id), [serviceId]);
  assert.equal((await send(shim, 'GET', `/api/v1/services/${serviceId}`, { from: FROM, headers: a.key })).status, 200);
  assert.equal((await call(a, 'GET', '/api/v1/performance/metrics?interval=1h')).status, 200);
  billing = await call(a, 'GET', '/api/v1/billing');
  assert.equal(billing.status, 200, billing.text);
  assert.equal(billing.json.entitlement.state, 'read_only');
  assert.equal(billing.json.entitlement.may_ingest, false);

  // 3. a subscription (the customer unknown until now, matched by metadata.user_id)
  assert.equal((await webhook(subscriptionEvent(a, 'customer.subscription.updated', 'active'))).outcome, 'applied');
  r = await metadata(a, '2.0.0');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers['lattice-billing-warning'], undefined);
  assert.equal(psql(`SELECT version FROM lattice.services WHERE id = '${serviceId}'`), '2.0.0');
  assert.equal((await ingest(a, '/api/v1/performance/traces/batch', captured('traces_batch'))).status, 201);

  // 4. payment fails: past_due still ingests, with the warning on every answer
  assert.equal((await webhook(subscriptionEvent(a, 'customer.subscription.updated', 'past_due'))).outcome, 'applied');
  r = await metadata(a, '2.0.1');
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers['lattice-billing-warning'] ?? '', /^payment past due: update your payment method before \d{4}-\d\d-\d\dT/);
  r = await ingest(a, '/api/v1/performance/traces/batch', captured('traces_batch'));
  assert.equal(r.status, 201);
  assert.match(r.headers['lattice-billing-warning'] ?? '', /^payment past due/);
  billing = await call(a, 'GET', '/api/v1/billing');
  assert.equal(billing.json.entitlement.state, 'grace');
  assert.match(billing.headers['lattice-billing-warning'] ?? '', /^payment past due/);

  // ...until the grace period is over
  psql(`UPDATE lattice.subscriptions SET past_due_since = now() - interval '30 days' WHERE user_id = '${a.id}'`);
  assertErrorShape(assert, await metadata(a, '2.0.2'), 402, 'subscription_required');
  psql(`UPDATE lattice.subscriptions SET past_due_since = now() WHERE user_id = '${a.id}'`);

  // 5. paid again, then canceled: read-only again; a stale event changes nothing
  assert.equal((await webhook(subscriptionEvent(a, 'customer.subscription.updated', 'active'))).outcome, 'applied');
  assert.equal((await metadata(a, '2.1.0')).status, 200);
  const stale = subscriptionEvent(a, 'customer.subscription.updated', 'active');
  const deleted = subscriptionEvent(a, 'customer.subscription.deleted', 'canceled',
                                    { canceled_at: eventClock, ended_at: eventClock });
  assert.equal((await webhook(deleted)).outcome, 'applied');
  assert.equal((await webhook(stale)).outcome, 'stale', 'older than the cancellation');
  r = await metadata(a, '2.2.0');
  assertErrorShape(assert, r, 402, 'subscription_required');
  assert.equal(r.json.error.details.status, 'canceled');
  assert.equal(psql(`SELECT version FROM lattice.services WHERE id = '${serviceId}'`), '2.1.0');
  assert.equal((await send(shim, 'GET', '/api/v1/services', { from: FROM, headers: a.key })).status, 200);

  // every change audited
  assert.equal(psql(`SELECT string_agg(details ->> 'to', ',' ORDER BY id) FROM lattice.audit_log
                      WHERE user_id = '${a.id}' AND action = 'billing.subscription_changed'`),
               'active,past_due,active,canceled');
});

test('checkout through the shim: customer then Checkout Session, with our key, idempotency and parameters', async () => {
  const a = await signup('co');
  const n = stripe.requests.length;
  const r = await call(a, 'POST', '/api/v1/billing/checkout', '{}');
  assert.equal(r.status, 200, r.text);
  assert.match(r.json.url, /^https:\/\/checkout\.stripe\.test\/c\/pay\/cs_test\w+$/);
  assert.equal(r.headers['lattice-outbox-job'], undefined, 'the internal header stays inside');

  const [customer, session, ...more] = stripe.requests.slice(n);
  assert.equal(more.length, 0);
  for (const req of [customer, session]) {
    assert.equal(req.method, 'POST');
    assert.equal(req.headers.authorization, `Bearer ${stripe.secretKey}`);
    assert.equal(req.headers['content-type'], 'application/x-www-form-urlencoded');
  }
  assert.equal(customer.path, '/v1/customers');
  assert.equal(customer.headers['idempotency-key'], `lattice-customer-${a.id}`);
  assert.equal(customer.params.email, a.email);
  assert.equal(customer.params['metadata[user_id]'], a.id);

  const stripeCustomer = psql(`SELECT stripe_customer_id FROM lattice.billing_customers WHERE user_id = '${a.id}'`);
  assert.match(stripeCustomer, /^cus_test/);
  assert.equal(session.path, '/v1/checkout/sessions');
  assert.match(session.headers['idempotency-key'], /^lattice-checkout-[0-9a-f-]{36}$/);
  assert.equal(session.params.mode, 'subscription');
  assert.equal(session.params.customer, stripeCustomer);
  assert.equal(session.params.client_reference_id, a.id);
  assert.equal(session.params['line_items[0][price]'], 'price_test_standard');
  assert.equal(session.params['line_items[0][quantity]'], '1');
  assert.equal(session.params['subscription_data[trial_end]'],
               psql(`SELECT floor(extract(epoch FROM trial_ends_at))::bigint FROM lattice.users WHERE id = '${a.id}'`));
  assert.equal(session.params['subscription_data[trial_period_days]'], undefined);
  assert.equal(session.params['subscription_data[metadata][user_id]'], a.id);
  assert.match(session.params.success_url, /\/dashboard\/billing\?checkout=success&session_id=\{CHECKOUT_SESSION_ID\}$/);
  assert.match(session.params.cancel_url, /\/dashboard\/billing\?checkout=canceled$/);
  assert.equal(new URL(session.params.success_url).origin, new URL(session.params.cancel_url).origin, 'our own origin');

  // again: the customer is reused, a fresh session key
  const m = stripe.requests.length;
  const again = await call(a, 'POST', '/api/v1/billing/checkout', '{}');
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(stripe.requests.slice(m).map((x) => x.path), ['/v1/checkout/sessions']);
  assert.notEqual(stripe.requests.at(-1).headers['idempotency-key'], session.headers['idempotency-key']);

  // once subscribed, checkout is refused before any Stripe call
  a.customer = stripeCustomer;
  await webhook({ id: `evt_life_${randomUUID()}`, type: 'checkout.session.completed', created: ++eventClock,
                  data: { object: { id: 'cs_done', object: 'checkout.session', customer: stripeCustomer,
                                    client_reference_id: a.id, subscription: a.subscription } } });
  await webhook(subscriptionEvent(a, 'customer.subscription.created', 'trialing',
                                  { trial_start: eventClock, trial_end: eventClock + 7 * 86400 }));
  const k = stripe.requests.length;
  assertErrorShape(assert, await call(a, 'POST', '/api/v1/billing/checkout', '{}'), 409, 'already_subscribed');

  // canceled: a new checkout, without a second trial
  await webhook(subscriptionEvent(a, 'customer.subscription.deleted', 'canceled', { ended_at: eventClock }));
  const back = await call(a, 'POST', '/api/v1/billing/checkout', '{}');
  assert.equal(back.status, 200, back.text);
  assert.deepEqual(stripe.requests.slice(k).map((x) => x.path), ['/v1/checkout/sessions']);
  assert.equal(stripe.requests.at(-1).params['subscription_data[trial_period_days]'], undefined, 'the trial was used');
  assert.equal(stripe.requests.at(-1).params['subscription_data[trial_end]'], undefined, 'the trial was used');
});

test('cancel and resume through the shim: the subscription update Stripe receives, and the state kept', async () => {
  const a = await signup('cr');

  // no subscription yet: refused, nothing sent
  let n = stripe.requests.length;
  assertErrorShape(assert, await call(a, 'POST', '/api/v1/billing/cancel', '{}'), 409, 'no_subscription');
  assertErrorShape(assert, await call(a, 'POST', '/api/v1/billing/resume'), 409, 'no_subscription');
  assert.equal(stripe.requests.length, n);

  await webhook(subscriptionEvent(a, 'customer.subscription.created', 'active'));

  // a session without the CSRF header never reaches Stripe
  const noCsrf = await send(shim, 'POST', '/api/v1/billing/cancel', { from: FROM, body: '{}', headers: { ...json, Cookie: a.cookie } });
  assert.equal(noCsrf.status, 403, noCsrf.text);
  assert.equal(stripe.requests.length, n);

  const cancel = await call(a, 'POST', '/api/v1/billing/cancel', '{}');
  assert.equal(cancel.status, 200, cancel.text);
  assert.equal(cancel.json.cancel_at_period_end, true);
  assert.ok(Date.parse(cancel.json.current_period_end) > Date.now());
  let sent = stripe.requests.slice(n);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].method, 'POST');
  assert.equal(sent[0].path, `/v1/subscriptions/${a.subscription}`);
  assert.equal(sent[0].headers.authorization, `Bearer ${stripe.secretKey}`);
  assert.match(sent[0].headers['idempotency-key'], /^lattice-cancel-[0-9a-f-]{36}$/);
  assert.deepEqual(sent[0].params, { cancel_at_period_end: 'true' });
  assert.equal(psql(`SELECT cancel_at_period_end FROM lattice.subscriptions WHERE user_id = '${a.id}'`), 't');
  let billing = await call(a, 'GET', '/api/v1/billing');
  assert.equal(billing.json.cancel_at_period_end, true);
  assert.equal(billing.json.entitlement.state, 'full', 'canceling at period end keeps the service until then');

  // asking twice changes nothing at Stripe
  n = stripe.requests.length;
  const twice = await call(a, 'POST', '/api/v1/billing/cancel', '{}');
  assert.equal(twice.status, 200, twice.text);
  assert.equal(twice.json.cancel_at_period_end, true);
  assert.equal(stripe.requests.length, n);

  const resume = await call(a, 'POST', '/api/v1/billing/resume', '{}');
  assert.equal(resume.status, 200, resume.text);
  assert.equal(resume.json.cancel_at_period_end, false);
  sent = stripe.requests.slice(n);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].path, `/v1/subscriptions/${a.subscription}`);
  assert.match(sent[0].headers['idempotency-key'], /^lattice-resume-[0-9a-f-]{36}$/);
  assert.deepEqual(sent[0].params, { cancel_at_period_end: 'false' });
  assert.equal(psql(`SELECT cancel_at_period_end FROM lattice.subscriptions WHERE user_id = '${a.id}'`), 'f');
  billing = await call(a, 'GET', '/api/v1/billing');
  assert.equal(billing.json.cancel_at_period_end, false);

  assert.equal(psql(`SELECT string_agg(action, ',' ORDER BY id) FROM lattice.audit_log WHERE user_id = '${a.id}'
                      AND action IN ('billing.cancel_requested', 'billing.subscription_cancel',
                                     'billing.resume_requested', 'billing.subscription_resume')`),
               'billing.cancel_requested,billing.subscription_cancel,billing.resume_requested,billing.subscription_resume');
});

test('Stripe down: one retry with the same Idempotency-Key, then 503 with Retry-After through the shim', async () => {
  const a = await signup('down');
  await webhook(subscriptionEvent(a, 'customer.subscription.created', 'active'));
  const n = stripe.requests.length;
  stripe.failNext(500, 500);
  const r = await call(a, 'POST', '/api/v1/billing/cancel', '{}');
  assertErrorShape(assert, r, 503, 'payment_provider_unavailable');
  assert.equal(r.headers['retry-after'], '5');
  const tries = stripe.requests.slice(n);
  assert.equal(tries.length, 2, 'exactly one retry');
  assert.equal(tries[0].headers['idempotency-key'], tries[1].headers['idempotency-key']);
  assert.equal(psql(`SELECT cancel_at_period_end FROM lattice.subscriptions WHERE user_id = '${a.id}'`), 'f', 'state unchanged');
});
