-- The outbox: what checkout, portal and cancel queue for Stripe, how the
-- shim claims and completes jobs (as lattice_api), chaining, retries with
-- backoff for e-mail, and that nobody but the worker functions reaches it.
BEGIN;
SELECT plan(26);

CREATE TEMP TABLE ctx AS
SELECT lattice.create_user('ob-' || gen_random_uuid() || '@example.com', 'grace password 1', 'Grace') AS a;
GRANT SELECT ON ctx TO PUBLIC;
CREATE TEMP TABLE seen (k text PRIMARY KEY, v text);
GRANT ALL ON seen TO PUBLIC;
CREATE ROLE lattice_test_shim LOGIN IN ROLE lattice_api;

SELECT is((SELECT count(*) FROM lattice.outbox, ctx WHERE account_id = a AND purpose = 'email.welcome'
             AND mail_to LIKE 'ob-%'), 1::bigint, 'sign-up queues a welcome mail');

SELECT lattice.test_set_tenant(a) FROM ctx;
SET LOCAL ROLE lattice_app;
SELECT throws_ok($$ SELECT lattice.billing_checkout('{}') $$, 'PT503', NULL, 'checkout without a configured price: 503');
RESET ROLE;
SELECT lattice.billing_set_price('standard', 'price_test_standard');
SET LOCAL ROLE lattice_app;

-- checkout: customer first
INSERT INTO seen SELECT 'r1', row_to_json(r)::text FROM lattice.billing_checkout('{"request_id": "t1"}') r;
SELECT is((SELECT (v::jsonb ->> 'status')::int FROM seen WHERE k = 'r1'), 202, 'checkout answers 202 to the shim');
INSERT INTO seen SELECT 'job1', v::jsonb #>> '{headers,Lattice-Outbox-Job}' FROM seen WHERE k = 'r1';
SELECT throws_ok($$ SELECT * FROM lattice.outbox $$, '42501', NULL, 'the API cannot read the outbox table');
RESET ROLE;

SET LOCAL SESSION AUTHORIZATION lattice_test_shim;
SELECT is((SELECT method || ' ' || path || ' ' || idempotency_key FROM lattice_worker.outbox_claim((SELECT v::bigint FROM seen WHERE k = 'job1'))),
          'POST /v1/customers lattice-customer-' || (SELECT a FROM ctx), 'the shim claims the customer job');
SELECT is((SELECT count(*) FROM lattice_worker.outbox_claim((SELECT v::bigint FROM seen WHERE k = 'job1'))), 0::bigint,
          'a claimed job cannot be claimed twice');
INSERT INTO seen SELECT 'c1', row_to_json(c)::text
  FROM lattice_worker.outbox_complete((SELECT v::bigint FROM seen WHERE k = 'job1'), 200,
                                      '{"id": "cus_test_1", "object": "customer"}', NULL) c;
SELECT ok((SELECT (v::jsonb ->> 'next_job') IS NOT NULL FROM seen WHERE k = 'c1'), 'the customer chains the session job');
INSERT INTO seen SELECT 'job2', v::jsonb ->> 'next_job' FROM seen WHERE k = 'c1';
RESET SESSION AUTHORIZATION;

SELECT is((SELECT stripe_customer_id FROM lattice.billing_customers WHERE user_id = (SELECT a FROM ctx)), 'cus_test_1',
          'the customer is recorded');
SELECT is((SELECT params FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job2'))
            @> jsonb_build_array(jsonb_build_array('mode', 'subscription'), jsonb_build_array('customer', 'cus_test_1'),
                                 jsonb_build_array('line_items[0][price]', 'price_test_standard'),
                                 jsonb_build_array('subscription_data[trial_end]',
                                                   (SELECT floor(extract(epoch FROM u.trial_ends_at))::bigint::text
                                                      FROM lattice.users u, ctx WHERE u.id = a)),
                                 jsonb_build_array('metadata[user_id]', (SELECT a::text FROM ctx))),
          true, 'the session has mode, customer, price, the rest of the sign-up trial (trial_end) and our user id');
SELECT is((SELECT count(*) FROM lattice.outbox, jsonb_array_elements(params) p
            WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job2') AND p ->> 0 = 'subscription_data[trial_period_days]'),
          0::bigint, 'never a trial of its own (trial_period_days)');

SET LOCAL SESSION AUTHORIZATION lattice_test_shim;
SELECT is((SELECT path FROM lattice_worker.outbox_claim((SELECT v::bigint FROM seen WHERE k = 'job2'))), '/v1/checkout/sessions',
          'the shim claims the session job');
SELECT is((SELECT row(status, body::jsonb)::text FROM lattice_worker.outbox_complete((SELECT v::bigint FROM seen WHERE k = 'job2'), 200,
             '{"id": "cs_test_1", "url": "https://checkout.stripe.test/c/cs_test_1"}', NULL)),
          row(200, '{"id": "cs_test_1", "url": "https://checkout.stripe.test/c/cs_test_1"}'::jsonb)::text,
          'and the client gets {url}');
RESET SESSION AUTHORIZATION;

-- a second checkout reuses the customer; after a used trial, no new trial
INSERT INTO lattice.subscriptions (user_id, stripe_customer_id, stripe_subscription_id, status, trial_start, state_at)
SELECT a, 'cus_test_1', 'sub_old', 'canceled', now() - interval '1 year', now() FROM ctx;
SET LOCAL ROLE lattice_app;
INSERT INTO seen SELECT 'job3', (c).headers ->> 'Lattice-Outbox-Job' FROM (SELECT lattice.billing_checkout('{}') AS c) x;
RESET ROLE;
SELECT is((SELECT path FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job3')), '/v1/checkout/sessions',
          'a known customer is reused');
SELECT is((SELECT count(*) FROM lattice.outbox, jsonb_array_elements(params) p
            WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job3') AND p ->> 0 LIKE 'subscription_data[trial%'),
          0::bigint, 'no second trial');

-- failure: Stripe down -> 503 to the client, the job failed, audited
SET LOCAL SESSION AUTHORIZATION lattice_test_shim;
SELECT lattice_worker.outbox_claim((SELECT v::bigint FROM seen WHERE k = 'job3'));
SELECT is((SELECT status FROM lattice_worker.outbox_complete((SELECT v::bigint FROM seen WHERE k = 'job3'), NULL, NULL,
                                                             'Could not connect to server')), 503,
          'Stripe unreachable: 503 for the client');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT status FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job3')), 'failed',
          'an interactive job is not retried behind the user''s back');

-- portal and cancel
UPDATE lattice.subscriptions SET status = 'active', stripe_subscription_id = 'sub_new' WHERE user_id = (SELECT a FROM ctx);
SET LOCAL ROLE lattice_app;
INSERT INTO seen SELECT 'job4', (c).headers ->> 'Lattice-Outbox-Job' FROM (SELECT lattice.billing_portal('{}') AS c) x;
INSERT INTO seen SELECT 'job5', (c).headers ->> 'Lattice-Outbox-Job' FROM (SELECT lattice.billing_set_cancel('{}', true) AS c) x;
RESET ROLE;
SELECT is((SELECT method || ' ' || path FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job4')),
          'POST /v1/billing_portal/sessions', 'portal: a billing-portal session');
SELECT is((SELECT method || ' ' || path || ' ' || (params -> 0)::text FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'job5')),
          'POST /v1/subscriptions/sub_new ["cancel_at_period_end", "true"]', 'cancel: at period end');
SET LOCAL SESSION AUTHORIZATION lattice_test_shim;
SELECT lattice_worker.outbox_claim((SELECT v::bigint FROM seen WHERE k = 'job5'));
SELECT is((SELECT status FROM lattice_worker.outbox_complete((SELECT v::bigint FROM seen WHERE k = 'job5'), 200,
             '{"id": "sub_new", "status": "active", "cancel_at_period_end": true}', NULL)), 200, 'cancel answered');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT cancel_at_period_end FROM lattice.subscriptions WHERE user_id = (SELECT a FROM ctx)), true,
          'cancel_at_period_end recorded');

-- e-mail: background, retried with backoff, never lost
SET LOCAL SESSION AUTHORIZATION lattice_test_shim;
INSERT INTO seen SELECT 'mail', id::text FROM lattice_worker.outbox_claim_due(100, '{stripe,email}') WHERE mail_to LIKE 'ob-%';
SELECT is((SELECT count(*) FROM seen WHERE k = 'mail'), 1::bigint, 'the worker claims the welcome mail');
SELECT is((SELECT count(*) FROM lattice_worker.outbox_claim_due(100, '{stripe,email}') WHERE mail_to LIKE 'ob-%'), 0::bigint,
          'a running job is not handed out twice');
SELECT lattice_worker.outbox_complete((SELECT v::bigint FROM seen WHERE k = 'mail'), NULL, NULL, 'Failed to connect to SMTP');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT status || ' ' || attempts FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'mail')),
          'pending 1', 'SMTP down: the mail goes back to pending');
SELECT ok((SELECT next_attempt_at > now() + interval '20 seconds' FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'mail')),
          'with a backoff');
UPDATE lattice.outbox SET next_attempt_at = now() - interval '1 second' WHERE id = (SELECT v::bigint FROM seen WHERE k = 'mail');
SET LOCAL SESSION AUTHORIZATION lattice_test_shim;
SELECT is((SELECT count(*) FROM lattice_worker.outbox_claim_due(100, '{stripe,email}') WHERE mail_to LIKE 'ob-%'), 1::bigint, 'and is retried when due');
SELECT lattice_worker.outbox_complete((SELECT v::bigint FROM seen WHERE k = 'mail'), 250, NULL, NULL);
RESET SESSION AUTHORIZATION;
SELECT is((SELECT status FROM lattice.outbox WHERE id = (SELECT v::bigint FROM seen WHERE k = 'mail')), 'done', 'sent at last');

SELECT * FROM finish();
ROLLBACK;
