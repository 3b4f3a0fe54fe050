-- lattice_http.metrics_db() (extension/sql/62_http_metrics.sql): the
-- database figures of the shim's /metrics move with the outbox, Stripe's
-- events and the rate counters; the shim's role may call it and nothing
-- else of it; it never names a tenant, an e-mail or an address.
-- Rate counters live in shared memory and survive the ROLLBACK: every check
-- of them is a difference, with a fresh address.
BEGIN;
SELECT plan(17);

CREATE TEMP TABLE ctx AS
SELECT gen_random_uuid() AS a,
       '10.' || (random() * 250)::int || '.' || (random() * 250)::int || '.' || (random() * 250)::int AS addr;
CREATE TEMP TABLE m (k text PRIMARY KEY, v jsonb);
GRANT SELECT ON ctx TO PUBLIC;
GRANT ALL ON m TO PUBLIC;

SELECT has_function('lattice_http', 'metrics_db', ARRAY[]::text[], 'lattice_http.metrics_db() exists');
SELECT function_returns('lattice_http', 'metrics_db', ARRAY[]::text[], 'jsonb', 'it returns jsonb');

-- the shim's role reads it; the helpers behind it stay closed
SET LOCAL ROLE lattice_api;
INSERT INTO m SELECT 'before', lattice_http.metrics_db();
SELECT throws_ok($$ SELECT lattice.metrics_figures() $$, '42501', NULL, 'lattice_api cannot call the helper directly');
SELECT throws_ok($$ SELECT * FROM lattice.rate_class_totals() $$, '42501', NULL, 'nor the rate class totals');
RESET ROLE;
SELECT is((SELECT array_agg(x ORDER BY x) FROM m, jsonb_object_keys(v) x WHERE m.k = 'before'),
          ARRAY['outbox', 'outbox_oldest_pending_seconds', 'rate_classes', 'rate_table', 'stripe_events'],
          'the figures: outbox, oldest pending, Stripe events, rate classes, rate table');

-- a tenant, its welcome mail and one more job ten minutes old
UPDATE ctx SET a = lattice.create_user('metrics-' || a || '@example.com', 'ada password 12', 'Ada');
INSERT INTO lattice.outbox (account_id, kind, purpose, mail_to, mail_subject, mail_text, mail_html, created_at)
SELECT a, 'email', 'test.metrics', 'metrics-' || a || '@example.com', 's', 't', 'h', now() - interval '10 minutes'
  FROM ctx;
INSERT INTO lattice.stripe_events (id, type, created, payload, outcome)
SELECT 'evt_metrics_' || a, 'customer.updated', now(), '{}', 'unmatched' FROM ctx;

-- an address refused once: one allowed sign-up, one refused
SET LOCAL lattice.rate_signup_per_hour = 1;
SELECT is((SELECT lattice.rate_enforce_address(jsonb_build_object('client_addr', addr), 'signup') ->> 'RateLimit-Remaining' FROM ctx),
          '0', 'the first sign-up of the address is allowed');
SELECT throws_ok($$ SELECT lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT addr FROM ctx)), 'signup') $$,
                 'PT429', NULL, 'the second sign-up of the address is refused');

SET LOCAL ROLE lattice_api;
INSERT INTO m SELECT 'after', lattice_http.metrics_db();
RESET ROLE;
CREATE FUNCTION pg_temp.d(path text[]) RETURNS numeric LANGUAGE sql AS $$
    SELECT (SELECT (v #>> path)::numeric FROM m WHERE k = 'after') - (SELECT (v #>> path)::numeric FROM m WHERE k = 'before')
$$;
CREATE FUNCTION pg_temp.a(path text[]) RETURNS numeric LANGUAGE sql AS $$
    SELECT (v #>> path)::numeric FROM m WHERE k = 'after'
$$;

SELECT is(pg_temp.d('{outbox,email,pending}'), 2::numeric, 'two more pending e-mail jobs (the welcome mail and ours)');
SELECT is(pg_temp.d('{outbox,stripe,pending}'), 0::numeric, 'no more Stripe jobs');
SELECT ok(pg_temp.a('{outbox_oldest_pending_seconds}') >= 600, 'the oldest pending job is at least ten minutes old');
SELECT is(pg_temp.d('{stripe_events,unmatched}'), 1::numeric, 'one more unmatched Stripe event');
SELECT is(pg_temp.d('{rate_classes,address,refused}'), 1::numeric, 'one more refusal of the address class');
SELECT is(pg_temp.d('{rate_classes,address,used}'), 1::numeric, 'one more allowed request of the address class');
SELECT ok(pg_temp.a('{rate_table,entries}') >= 1
          AND pg_temp.a('{rate_table,size}') = current_setting('lattice.rate_table_size')::numeric,
          'the rate table: entries in use and its size');

-- aggregates only: no tenant id, e-mail, address or event id anywhere
SELECT ok((SELECT v::text FROM m WHERE k = 'after') !~ '[0-9a-f]{8}-[0-9a-f]{4}-', 'no uuid in the figures');
SELECT ok((SELECT position('@' IN v::text) = 0 AND position((SELECT addr FROM ctx) IN v::text) = 0
             AND position('evt_' IN v::text) = 0 FROM m WHERE k = 'after'),
          'no e-mail, address or event id in the figures');
SELECT is((SELECT count(*) FROM m, jsonb_path_query(v, 'strict $.**') x
            WHERE k = 'after' AND jsonb_typeof(x) NOT IN ('object', 'number')), 0::bigint,
          'every leaf is a number');

SELECT * FROM finish();
ROLLBACK;
