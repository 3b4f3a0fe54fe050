-- Quota classes (src/ratelimit_enforce.c, src/auth.c): ingest per service
-- sized from the Express plugin's published cadence, the account's ingest
-- ceiling, the api class per account, the dashboard apart, and no class
-- ever refusing for another.  Time moves with lattice.rate_test_clock_offset
-- (seconds, superuser only), never with sleeps.  Counters live in shared
-- memory and survive the ROLLBACK: every run uses fresh users.
--
-- The plugin's defaults (captured in tests/fixtures/captured): metadata every
-- 300 s; traces and errors each flushed every 5 s while there is traffic.
-- One busy service therefore sends 12 + 720 + 720 = 1,452 requests an hour.
BEGIN;
SELECT plan(17);

CREATE TEMP TABLE t (name text PRIMARY KEY, id uuid NOT NULL DEFAULT gen_random_uuid());
INSERT INTO t (name) VALUES ('steady'), ('noisy'), ('flood'), ('api'), ('ceiling');
INSERT INTO lattice.users (id, email, name)
     SELECT id, name || '-' || id || '@classes.test', name FROM t;
INSERT INTO lattice.plans (id, name, price_cents, max_services, ingest_per_service_per_hour)
     VALUES ('classes_small', 'small', 0, 2, 10);
UPDATE lattice.users SET plan_id = 'classes_small' WHERE id = (SELECT id FROM t WHERE name = 'ceiling');
CREATE FUNCTION pg_temp.uid(n text) RETURNS uuid LANGUAGE sql AS $$ SELECT id FROM t WHERE name = n $$;

CREATE TEMP TABLE svc AS SELECT 'svc-' || lpad(i::text, 3, '0') AS name FROM generate_series(1, 100) i;

-- The clock: seconds since the start of the simulation
CREATE FUNCTION pg_temp.at(seconds integer) RETURNS void LANGUAGE sql AS $$
    SELECT set_config('lattice.rate_test_clock_offset', seconds::text, true)::void
$$;

-- One 5-second tick of the plugin's cadence for every service but `skip`:
-- a trace batch and an error batch each, and the metadata when it is due.
-- Any refusal raises (and fails the caller's test).
CREATE FUNCTION pg_temp.tick(second integer, skip text DEFAULT '') RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    PERFORM pg_temp.at(second);
    SELECT count(lattice.rate_enforce_ingest(s.name)) INTO n
      FROM svc s, generate_series(1, CASE WHEN second % 300 = 0 THEN 3 ELSE 2 END) r
     WHERE s.name <> skip;
    RETURN n;
END $$;

-- n requests of one service; how many were refused (each caught)
CREATE FUNCTION pg_temp.send(service text, n integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE refused integer := 0;
BEGIN
    FOR i IN 1..n LOOP
        BEGIN
            PERFORM lattice.rate_enforce_ingest(service);
        EXCEPTION WHEN SQLSTATE 'PT429' THEN
            refused := refused + 1;
        END;
    END LOOP;
    RETURN refused;
END $$;

-- the detail of the refusal a statement raises
CREATE FUNCTION pg_temp.refusal(q text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE d text; s text;
BEGIN
    EXECUTE q;
    RETURN jsonb_build_object('sqlstate', 'none');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, s = RETURNED_SQLSTATE;
    RETURN jsonb_build_object('sqlstate', s, 'detail', CASE WHEN s LIKE 'PT%' THEN d::jsonb END);
END $$;

-- ---- 100 services at the plugin's cadence for a simulated 24 hours ----
SELECT lattice.test_set_tenant(pg_temp.uid('steady'));
CREATE FUNCTION pg_temp.day() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE total bigint := 0;
BEGIN
    FOR tick IN 0 .. 24 * 720 - 1 LOOP
        total := total + pg_temp.tick(tick * 5);
    END LOOP;
    RETURN total;
END $$;
SELECT is(pg_temp.day(), (100 * (24 * 720 * 2 + 24 * 12))::bigint,
          '100 services at the default cadence for 24 simulated hours: all 3,484,800 requests accepted, none refused');
SELECT is((lattice.rate_usage_classes() -> 'ingest' ->> 'refused_this_hour')::int, 0,
          'the usage shows no ingest refusal');

-- ---- one service at 10x its cadence for an hour, beside 99 at the cadence ----
SELECT lattice.test_set_tenant(pg_temp.uid('noisy'));
CREATE FUNCTION pg_temp.noisy_hour(OUT noisy_refused integer, OUT noisy_sent integer, OUT others bigint)
LANGUAGE plpgsql AS $$
BEGIN
    noisy_refused := 0; noisy_sent := 0; others := 0;
    FOR tick IN 0 .. 719 LOOP
        others := others + pg_temp.tick(tick * 5, 'svc-001');
        noisy_refused := noisy_refused + pg_temp.send('svc-001', CASE WHEN tick % 60 = 0 THEN 30 ELSE 20 END);
        noisy_sent := noisy_sent + CASE WHEN tick % 60 = 0 THEN 30 ELSE 20 END;
    END LOOP;
END $$;
SELECT * FROM pg_temp.noisy_hour() \gset
SELECT diag(format('one service at 10x for an hour: %s sent, %s accepted, %s refused',
                   :noisy_sent, :noisy_sent - :noisy_refused, :noisy_refused));
SELECT is(:others::bigint, (99 * (720 * 2 + 12))::bigint,
          'the 99 other services at the cadence are never refused while one floods');
SELECT cmp_ok(:noisy_refused, '>', 0, 'the service at 10x its cadence is slowed with 429s');
SELECT cmp_ok(:noisy_sent - :noisy_refused, '<=', 3600 + 120,
              'and gets no more than its hourly budget plus its burst');
SELECT cmp_ok(:noisy_sent - :noisy_refused, '>=', 3600 - 10,
              'and no less than its budget: a flood is slowed, not shut out');
SELECT is((SELECT (s ->> 'refused_this_hour')::int > 0
             FROM jsonb_array_elements(lattice.rate_usage_classes() -> 'ingest' -> 'services') s
            WHERE s ->> 'service' = 'svc-001'), true,
          'the usage names the slowed service');
SELECT is((SELECT count(*)::int
             FROM jsonb_array_elements(lattice.rate_usage_classes() -> 'ingest' -> 'services') s
            WHERE (s ->> 'refused_this_hour')::int > 0), 1,
          'and only that one');
SELECT pg_temp.at(3700);
SELECT is(pg_temp.refusal($$SELECT lattice.rate_enforce_ingest('svc-001') FROM generate_series(1, 200)$$)
          -> 'detail' ->> 'code', 'rate_limited', 'an ingest refusal is PT429 rate_limited');
SELECT is(pg_temp.refusal($$SELECT lattice.rate_enforce_ingest('svc-001') FROM generate_series(1, 200)$$)
          -> 'detail' -> 'details' ->> 'scope', 'ingest', '...naming the ingest class');
SELECT cmp_ok((pg_temp.refusal($$SELECT lattice.rate_enforce_ingest('svc-001')$$)
               -> 'detail' -> 'headers' ->> 'Retry-After')::int, '>=', 1, '...with Retry-After');
SELECT is(lattice.rate_enforce_ingest('svc-002')::text, '', 'another service of the tenant still sends');

-- ---- the account's ingest ceiling: new names buy no budget ----
-- plan: 2 services x 10 per hour: a ceiling of 20 requests
SELECT lattice.test_set_tenant(pg_temp.uid('ceiling'));
SELECT pg_temp.at(0);
SELECT is((SELECT sum(pg_temp.send('flood-' || i, 1)) FROM generate_series(1, 20) i)::int, 0,
          '20 requests from 20 new services fill the ceiling of a 2 x 10 plan');
SELECT is(pg_temp.refusal($$SELECT lattice.rate_enforce_ingest('flood-21')$$) -> 'detail' -> 'details' ->> 'scope',
          'ingest_account', 'the 21st, from yet another name, meets the account ceiling');

-- ---- the api class: 1,000 an hour; the other classes apart ----
SELECT lattice.test_set_tenant(NULL);
SELECT lattice.create_api_key(pg_temp.uid('api'), 'reader', ARRAY['read']) AS read_key \gset
SELECT lattice.create_api_key(pg_temp.uid('api'), 'plugin', ARRAY['ingest']) AS ingest_key \gset
CREATE FUNCTION pg_temp.api_calls(key text, n integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE refused integer := 0;
BEGIN
    FOR i IN 1..n LOOP
        BEGIN
            PERFORM lattice.authenticate(jsonb_build_object('api_key', key, 'method', 'GET'), 'read');
        EXCEPTION WHEN SQLSTATE 'PT429' THEN
            refused := refused + 1;
        END;
    END LOOP;
    RETURN refused;
END $$;
SELECT is(pg_temp.api_calls(:'read_key', 1000), 0, '1,000 API requests in an hour are accepted');
SELECT is(pg_temp.refusal(format($$SELECT lattice.authenticate(%L, 'read')$$,
                                 jsonb_build_object('api_key', :'read_key', 'method', 'GET'))) -> 'detail' ->> 'code',
          'rate_limited', 'the 1,001st is refused with 429');
SELECT is(pg_temp.refusal(format($$SELECT lattice.authenticate(%L, 'ingest'), lattice.rate_enforce_ingest('api-svc')$$,
                                 jsonb_build_object('api_key', :'ingest_key', 'method', 'POST'))) ->> 'sqlstate',
          'none', 'with the api class spent, ingest still flows');

SELECT * FROM finish();
ROLLBACK;
