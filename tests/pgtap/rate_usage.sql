-- Hourly usage rolled into lattice.usage_hourly, one row per tenant-hour.
BEGIN;
SELECT plan(5);

CREATE TEMP TABLE t AS SELECT gen_random_uuid() AS id;
INSERT INTO lattice.users (id, email, name) SELECT id, id || '@rate.test', 'u' FROM t;
-- n checks in a row (a loop, so each one really runs); the number allowed
CREATE FUNCTION pg_temp.spend(u uuid, n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE k bigint := 0;
BEGIN
    FOR i IN 1..n LOOP
        IF (lattice.rate_enforce_tenant(u)).allowed THEN k := k + 1; END IF;
    END LOOP;
    RETURN k;
END $$;
SELECT lattice.test_set_tenant((SELECT id FROM t));
SELECT pg_temp.spend((SELECT id FROM t), 7);

SELECT ok(lattice.rate_flush_usage() >= 1, 'the roll-up writes the tenant''s row');
SET LOCAL ROLE lattice_app;
SELECT results_eq($$SELECT requests, refused, hour = date_trunc('hour', clock_timestamp()) FROM lattice.usage_hourly$$,
                  $$VALUES (7::bigint, 0::bigint, true)$$, 'one row for this hour with the 7 requests (seen by the tenant)');
RESET ROLE;
SELECT pg_temp.spend((SELECT id FROM t), 5);
SELECT lattice.rate_flush_usage();
SET LOCAL ROLE lattice_app;
SELECT results_eq($$SELECT requests FROM lattice.usage_hourly$$, $$VALUES (12::bigint)$$,
                  'a second roll-up adds only what is new to the same row');
RESET ROLE;
SELECT lattice.test_set_tenant(gen_random_uuid());
SET LOCAL ROLE lattice_app;
SELECT is((SELECT count(*) FROM lattice.usage_hourly), 0::bigint, 'another tenant sees no usage rows (RLS)');
SELECT is(lattice.rate_usage() IS NULL OR (lattice.rate_usage()).used_this_hour = 0, true,
          'nor the first tenant''s counts');

RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
