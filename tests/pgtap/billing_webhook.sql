-- Stripe webhooks end to end in SQL: signature, store-once, newest-wins,
-- unknown types, size, secret rotation, and what each event changes.
BEGIN;
SELECT plan(41);

CREATE TEMP TABLE ctx AS
SELECT gen_random_uuid() AS uid, gen_random_uuid() AS uid2, 'whsec_test_rotation_old_000000'::text AS old_secret,
       'whsec_test_rotation_new_111111'::text AS new_secret,
       floor(extract(epoch FROM now()))::bigint AS t0;
INSERT INTO lattice.users (id, email, name) SELECT uid, 'wh-' || uid || '@example.com', 'Ada' FROM ctx;
INSERT INTO lattice.users (id, email, name) SELECT uid2, 'wh2-' || uid2 || '@example.com', 'Bo' FROM ctx;
SELECT lattice.webhook_secret_add(new_secret) FROM ctx;
DELETE FROM lattice.outbox WHERE account_id = (SELECT uid FROM ctx);  -- the welcome mail

-- deliver(event, secret, signed_at): what the shim does with a Stripe request
CREATE FUNCTION pg_temp.deliver(ev jsonb, secret text DEFAULT NULL, at timestamptz DEFAULT now())
RETURNS lattice.http_response LANGUAGE sql AS $$
    SELECT lattice.stripe_webhook_receive(
        lattice.stripe_signature_header(ev::text, COALESCE(secret, (SELECT new_secret FROM ctx)), at),
        ev::text, '{"client_addr": "127.0.0.1"}')
$$;
CREATE FUNCTION pg_temp.sub_event(id text, type text, dt integer, status text, extra jsonb DEFAULT '{}')
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('id', id, 'object', 'event', 'type', type, 'created', t0 + dt, 'livemode', false,
        'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'sub_A', 'object', 'subscription', 'customer', 'cus_A', 'status', status,
            'cancel_at_period_end', false, 'current_period_start', t0, 'current_period_end', t0 + 365 * 86400,
            'trial_start', t0, 'trial_end', t0 + 7 * 86400,
            'items', jsonb_build_object('data', jsonb_build_array(jsonb_build_object('price', jsonb_build_object('id', 'price_std')))),
            'metadata', jsonb_build_object('user_id', uid)) || extra))
      FROM ctx
$$;
CREATE FUNCTION pg_temp.inv_event(id text, type text, dt integer, inv_status text)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('id', id, 'type', type, 'created', t0 + dt,
        'data', jsonb_build_object('object', jsonb_build_object(
            'id', 'in_1', 'object', 'invoice', 'customer', 'cus_A', 'subscription', 'sub_A', 'number', 'LAT-0001',
            'amount_due', 2500, 'amount_paid', CASE WHEN inv_status = 'paid' THEN 2500 ELSE 0 END,
            'currency', 'usd', 'status', inv_status, 'created', t0 + dt,
            'hosted_invoice_url', 'https://invoice.stripe.test/i/1', 'invoice_pdf', 'https://invoice.stripe.test/i/1.pdf')))
      FROM ctx
$$;
CREATE FUNCTION pg_temp.sub_status() RETURNS text LANGUAGE sql AS
$$ SELECT status FROM lattice.subscriptions WHERE user_id = (SELECT uid FROM ctx) $$;
CREATE FUNCTION pg_temp.mails(template text) RETURNS bigint LANGUAGE sql AS
$$ SELECT count(*) FROM lattice.outbox WHERE account_id = (SELECT uid FROM ctx) AND purpose = 'email.' || template $$;

-- signature failures change nothing
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_bad', 'customer.subscription.created', 0, 'trialing'),
                           'whsec_test_wrong_secret_99999')).status, 400, 'wrong secret: 400');
SELECT is((SELECT ((r).body::jsonb #>> '{error,details,reason}')
             FROM (SELECT pg_temp.deliver(pg_temp.sub_event('evt_old', 'customer.subscription.created', 0, 'trialing'),
                                          NULL, now() - interval '6 minutes') AS r) x),
          'timestamp_out_of_tolerance', 'old timestamp: refused with its reason');
SELECT is((lattice.stripe_webhook_receive(
              lattice.stripe_signature_header(pg_temp.sub_event('evt_t', 'customer.subscription.created', 0, 'trialing')::text,
                                              (SELECT new_secret FROM ctx), now()),
              replace(pg_temp.sub_event('evt_t', 'customer.subscription.created', 0, 'trialing')::text, 'trialing', 'active'),
              '{}')).status, 400, 'tampered body: 400');
SELECT is((lattice.stripe_webhook_receive(NULL, pg_temp.sub_event('evt_n', 'customer.subscription.created', 0, 'active')::text,
                                          '{}')).status, 400, 'no signature header: 400');
SELECT is((SELECT count(*) FROM lattice.stripe_events WHERE id IN ('evt_bad', 'evt_old', 'evt_t', 'evt_n')), 0::bigint,
          'unverified events are not stored');
SELECT is(pg_temp.sub_status(), NULL, 'unverified events change nothing');

-- a valid event is applied
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_1', 'customer.subscription.created', 0, 'trialing'))).body::jsonb,
          '{"received": true, "outcome": "applied"}', 'valid event: 200 applied');
SELECT is(pg_temp.sub_status(), 'trialing', 'the subscription is trialing');
SELECT is((SELECT stripe_customer_id FROM lattice.billing_customers WHERE user_id = (SELECT uid FROM ctx)), 'cus_A',
          'the customer is linked through metadata.user_id');
SELECT is((SELECT trial_end FROM lattice.subscriptions WHERE user_id = (SELECT uid FROM ctx)),
          (SELECT to_timestamp(t0 + 7 * 86400) FROM ctx), 'trial end kept');
SELECT is((SELECT count(*) FROM lattice.audit_log WHERE user_id = (SELECT uid FROM ctx)
            AND action = 'billing.subscription_changed'), 1::bigint, 'the change is audited');

-- replay
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_1', 'customer.subscription.created', 0, 'trialing'))).body::jsonb,
          '{"received": true, "duplicate": true}', 'replay: 200, a no-op');
SELECT is((SELECT count(*) FROM lattice.audit_log WHERE user_id = (SELECT uid FROM ctx)
            AND action = 'billing.subscription_changed'), 1::bigint, 'a replay writes nothing');

-- out of order: the newer state wins whatever the arrival order
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_3', 'customer.subscription.updated', 300, 'active'))).status, 200, 'newer event');
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_2', 'customer.subscription.updated', 200, 'past_due'))).body::jsonb ->> 'outcome',
          'stale', 'an older event arriving later is stored as stale');
SELECT is(pg_temp.sub_status(), 'active', 'the newest state wins');
SELECT is((SELECT count(*) FROM lattice.stripe_events WHERE id IN ('evt_1', 'evt_2', 'evt_3')), 3::bigint, 'all three are stored');

-- past_due and its grace start
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_4', 'customer.subscription.updated', 400, 'past_due'))).status, 200, 'past_due event');
SELECT is((SELECT past_due_since FROM lattice.subscriptions WHERE user_id = (SELECT uid FROM ctx)),
          (SELECT to_timestamp(t0 + 400) FROM ctx), 'past_due_since is the event time');
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_5', 'customer.subscription.updated', 450, 'past_due'))).status, 200, 'still past_due');
SELECT is((SELECT past_due_since FROM lattice.subscriptions WHERE user_id = (SELECT uid FROM ctx)),
          (SELECT to_timestamp(t0 + 400) FROM ctx), 'the grace period does not restart');

-- invoices
SELECT is((pg_temp.deliver(pg_temp.inv_event('evt_6', 'invoice.payment_failed', 460, 'open'))).status, 200, 'invoice.payment_failed');
SELECT is((SELECT payment_state FROM lattice.subscriptions WHERE user_id = (SELECT uid FROM ctx)), 'failed', 'payment state failed');
SELECT is(pg_temp.mails('payment_failed'), 1::bigint, 'a payment-failed mail is queued');
SELECT is((pg_temp.deliver(pg_temp.inv_event('evt_7', 'invoice.paid', 500, 'paid'))).status, 200, 'invoice.paid');
SELECT is((SELECT status || ' ' || amount_paid || ' ' || number FROM lattice.invoices WHERE user_id = (SELECT uid FROM ctx)),
          'paid 2500 LAT-0001', 'the invoice is recorded');
SELECT is(pg_temp.mails('receipt'), 1::bigint, 'a receipt is queued');
SELECT ok((SELECT mail_text LIKE '%25.00 USD%LAT-0001%' FROM lattice.outbox WHERE purpose = 'email.receipt'
            AND account_id = (SELECT uid FROM ctx)), 'the receipt names amount and number');

-- trial ending and cancellation
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_8', 'customer.subscription.trial_will_end', 600, 'active'))).status, 200, 'trial_will_end');
SELECT is(pg_temp.mails('trial_ending'), 1::bigint, 'a trial-ending mail is queued');
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_9', 'customer.subscription.deleted', 700, 'canceled'))).status, 200, 'deleted');
SELECT is(pg_temp.sub_status(), 'canceled', 'the subscription is canceled');
SELECT is(pg_temp.mails('subscription_canceled'), 1::bigint, 'a cancellation mail is queued');

-- unknown types, bad bodies, size
SELECT is((pg_temp.deliver('{"id": "evt_u", "type": "customer.tax_id.created", "created": 1, "data": {"object": {}}}')).body::jsonb,
          '{"received": true, "outcome": "ignored"}', 'unknown type: 200, stored as ignored');
SELECT is((lattice.stripe_webhook_receive(lattice.stripe_signature_header('not json', (SELECT new_secret FROM ctx), now()),
                                          'not json', '{}')).status, 400, 'signed but not JSON: 400');
SELECT is((SELECT (r).status FROM (SELECT pg_temp.deliver(jsonb_build_object('id', 'evt_big', 'type', 'x', 'created', 1,
                                   'pad', repeat('x', 300000))) AS r) x), 413, 'oversized body: 413');

-- an event for a customer we do not know yet waits, then applies
SELECT is((pg_temp.deliver(jsonb_build_object('id', 'evt_u1', 'type', 'invoice.paid', 'created', (SELECT t0 + 800 FROM ctx),
           'data', jsonb_build_object('object', jsonb_build_object('id', 'in_2', 'customer', 'cus_B', 'status', 'paid',
                                                                   'amount_paid', 2500, 'currency', 'usd'))))).body::jsonb ->> 'outcome',
          'unmatched', 'an unknown customer: stored as unmatched');
SELECT is((pg_temp.deliver(jsonb_build_object('id', 'evt_c1', 'type', 'checkout.session.completed', 'created', (SELECT t0 + 810 FROM ctx),
           'data', jsonb_build_object('object', jsonb_build_object('id', 'cs_1', 'customer', 'cus_B', 'subscription', 'sub_B',
                                                                   'client_reference_id', (SELECT uid2 FROM ctx)))))).status, 200,
          'checkout.session.completed links the customer');
SELECT is((SELECT outcome || ' ' || (account_id = (SELECT uid2 FROM ctx)) FROM lattice.stripe_events WHERE id = 'evt_u1'),
          'applied true', 'the waiting event is then applied to that account');

-- rotation: the old secret only while active
SELECT lattice.webhook_secret_add(old_secret) FROM ctx;
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_r1', 'customer.subscription.updated', 900, 'canceled'),
                           (SELECT old_secret FROM ctx))).status, 200, 'both secrets verify during a rotation');
SELECT lattice.webhook_secret_retire(id) FROM lattice.webhook_secrets WHERE secret = (SELECT old_secret FROM ctx);
SELECT is((pg_temp.deliver(pg_temp.sub_event('evt_r2', 'customer.subscription.updated', 910, 'canceled'),
                           (SELECT old_secret FROM ctx))).status, 400, 'a retired secret no longer verifies');

SELECT * FROM finish();
ROLLBACK;
