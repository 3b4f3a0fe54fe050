-- Entitlement transitions and the billing read API, as the tenant sees them
-- (lattice_app under row-level security).
BEGIN;
SELECT plan(22);

CREATE TEMP TABLE ctx AS SELECT gen_random_uuid() AS a, gen_random_uuid() AS b;
GRANT SELECT ON ctx TO PUBLIC;
INSERT INTO lattice.users (id, email, name) SELECT a, 'ent-a-' || a || '@example.com', 'A' FROM ctx;
INSERT INTO lattice.users (id, email, name) SELECT b, 'ent-b-' || b || '@example.com', 'B' FROM ctx;

-- set_sub(status, past_due_since): the state a webhook would have left
CREATE FUNCTION pg_temp.set_sub(st text, since timestamptz DEFAULT NULL) RETURNS void LANGUAGE sql AS $$
    INSERT INTO lattice.subscriptions (user_id, stripe_customer_id, stripe_subscription_id, status, past_due_since,
                                       trial_end, current_period_end, state_at)
    SELECT a, 'cus_ent', 'sub_ent', st, since, now() + interval '3 days', now() + interval '1 year', now() FROM ctx
    ON CONFLICT (user_id) DO UPDATE SET status = EXCLUDED.status, past_due_since = EXCLUDED.past_due_since
$$;
CREATE FUNCTION pg_temp.ent() RETURNS jsonb LANGUAGE sql AS $$ SELECT lattice.entitlement(a) FROM ctx $$;

SELECT lattice.test_set_tenant(a) FROM ctx;
SET LOCAL ROLE lattice_app;

SELECT is(pg_temp.ent() ->> 'state', 'trial', 'a new account is in its sign-up trial');
SELECT is((pg_temp.ent() ->> 'may_ingest')::boolean, true, 'and may ingest');
SELECT is(lattice.require_ingest_entitlement((SELECT a FROM ctx)), '{}'::jsonb, 'no warning during the trial');
SELECT is((SELECT lattice.billing_summary(a) ->> 'trial_days_left' FROM ctx), '7', 'seven trial days left');

RESET ROLE;
UPDATE lattice.users SET trial_ends_at = now() - interval '1 minute' WHERE id = (SELECT a FROM ctx);
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'read_only', 'an expired trial is read-only');
SELECT throws_ok($$ SELECT lattice.require_ingest_entitlement(a) FROM ctx $$, 'PT402', NULL,
                 'an expired trial: ingest refused with 402');
SELECT is(pg_temp.ent() ->> 'code', 'subscription_required', 'with code subscription_required');
SELECT ok(pg_temp.ent() ? 'data_kept_until', 'and says how long the data is kept');

RESET ROLE;
SELECT pg_temp.set_sub('trialing');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'full', 'trialing: full service');
RESET ROLE;
SELECT pg_temp.set_sub('active');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'full', 'active: full service');

RESET ROLE;
SELECT pg_temp.set_sub('past_due', now() - interval '2 days');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'grace', 'past_due within the grace period: grace');
SELECT is((pg_temp.ent() ->> 'may_ingest')::boolean, true, 'still ingesting');
SELECT ok(lattice.require_ingest_entitlement((SELECT a FROM ctx)) ->> 'Lattice-Billing-Warning' LIKE 'payment past due%',
          'with a warning header');
SELECT is(lattice.entitlement_headers((SELECT a FROM ctx)), lattice.require_ingest_entitlement((SELECT a FROM ctx)),
          'every API answer carries the same warning');

RESET ROLE;
SELECT pg_temp.set_sub('past_due', now() - interval '8 days');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'read_only', 'past_due beyond the 7-day grace: read-only');
SELECT throws_ok($$ SELECT lattice.require_ingest_entitlement(a) FROM ctx $$, 'PT402', NULL, '402 after the grace');

RESET ROLE;
SET LOCAL lattice.billing_past_due_grace_days = 10;
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'grace', 'the grace period is configurable');

RESET ROLE;
SELECT pg_temp.set_sub('canceled');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'read_only', 'canceled: read-only');
RESET ROLE;
SELECT pg_temp.set_sub('unpaid');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.ent() ->> 'state', 'read_only', 'unpaid: read-only');

-- the read API sees only the tenant's own invoices
RESET ROLE;
INSERT INTO lattice.invoices (user_id, stripe_invoice_id, number, amount_paid, currency, status, created, state_at)
SELECT a, 'in_ent_a', 'A-1', 2500, 'usd', 'paid', now(), now() FROM ctx
UNION ALL SELECT b, 'in_ent_b', 'B-1', 2500, 'usd', 'paid', now(), now() FROM ctx;
SET LOCAL ROLE lattice_app;
SELECT is((SELECT jsonb_path_query_array(lattice.billing_invoices(a), '$.invoices[*].number') FROM ctx),
          '["A-1"]', 'invoices: the tenant''s own');
SELECT is((SELECT lattice.billing_invoices(b) FROM ctx), '{"invoices": []}', 'another tenant''s invoices are invisible');
SELECT is((SELECT lattice.billing_summary(a) -> 'plan' ->> 'price_cents' FROM ctx), '2500', 'the summary names the plan');

SELECT * FROM finish();
ROLLBACK;
