-- Rate counters: exact counts, refill over time, burst, plan limits, headers.
-- Counters live in shared memory and survive the ROLLBACK, so every test
-- uses fresh random users and addresses.
BEGIN;
SELECT plan(24);

CREATE TEMP TABLE t (name text PRIMARY KEY, id uuid NOT NULL DEFAULT gen_random_uuid());
INSERT INTO t (name) VALUES ('a'), ('b'), ('c'), ('d');
INSERT INTO lattice.users (id, email, name)
     SELECT id, name || '-' || id || '@rate.test', name FROM t;
INSERT INTO lattice.plans (id, name, price_cents, rate_limit_per_hour)
     VALUES ('rate_tiny', 'tiny', 0, 3);
UPDATE lattice.users SET plan_id = 'rate_tiny' WHERE id = (SELECT id FROM t WHERE name = 'c');

-- n checks in a row (a loop, so each one really runs); the number allowed
CREATE FUNCTION pg_temp.spend(u uuid, n int) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE k bigint := 0;
BEGIN
    FOR i IN 1..n LOOP
        IF (lattice.rate_enforce_tenant(u)).allowed THEN k := k + 1; END IF;
    END LOOP;
    RETURN k;
END $$;

-- 429 with its detail: returns the DETAIL json of the raised error
CREATE FUNCTION pg_temp.refusal(u uuid) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE d text; s text;
BEGIN
    PERFORM lattice.rate_enforce_tenant(u);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL, s = RETURNED_SQLSTATE;
    RETURN jsonb_build_object('sqlstate', s, 'detail', d::jsonb);
END $$;

SELECT lattice.test_set_tenant((SELECT id FROM t WHERE name = 'a'));

-- exact counts: the standard plan allows 1000 an hour, all at once
SELECT is(pg_temp.spend((SELECT id FROM t WHERE name = 'a'), 999), 999::bigint,
          '999 requests in a row are allowed');
SELECT results_eq($$SELECT allowed, "limit", remaining FROM lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'a'))$$,
                  $$VALUES (true, 1000::bigint, 0::bigint)$$, 'the 1000th is allowed with 0 remaining');
SELECT throws_ok($$SELECT lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'a'))$$,
                 'PT429', NULL, 'the 1001st is refused with PT429');
SELECT is(pg_temp.refusal((SELECT id FROM t WHERE name = 'a')) -> 'detail' ->> 'code',
          'rate_limited', 'the refusal carries code rate_limited');
SELECT is(pg_temp.refusal((SELECT id FROM t WHERE name = 'a')) -> 'detail' -> 'headers' ->> 'Retry-After',
          '4', 'Retry-After is the 3.6 s until one request is free again, rounded up');
SELECT is(pg_temp.refusal((SELECT id FROM t WHERE name = 'a')) -> 'detail' -> 'headers' ->> 'RateLimit-Remaining',
          '0', 'refused: RateLimit-Remaining 0');
SELECT is((lattice.rate_headers() ->> 'Retry-After'), '4', 'rate_headers() reflects the last (refused) check');

-- refill: one request every 3.6 s
SET LOCAL lattice.rate_test_clock_offset = '4s';
SELECT is((lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'a'))).allowed, true,
          '4 s later one request is allowed again');
SELECT throws_ok($$SELECT lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'a'))$$,
                 'PT429', NULL, '...and only one');
SET LOCAL lattice.rate_test_clock_offset = '2h';
SELECT results_eq($$SELECT allowed, remaining FROM lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'a'))$$,
                  $$VALUES (true, 999::bigint)$$, 'after an idle hour the allowance is whole again');
RESET lattice.rate_test_clock_offset;

-- headers of an allowed request
SELECT lattice.test_set_tenant((SELECT id FROM t WHERE name = 'b'));
SELECT results_eq($$SELECT allowed, remaining, reset_seconds FROM lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'b'))$$,
                  $$VALUES (true, 999::bigint, 4::bigint)$$, 'tenants are independent: b starts with its whole allowance');
SELECT is(lattice.rate_headers() - 'X-RateLimit-Reset',
          '{"RateLimit-Limit": "1000", "RateLimit-Remaining": "999", "RateLimit-Reset": "4",
            "RateLimit-Policy": "1000;w=3600", "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "999", "RateLimit-Class": "api"}'::jsonb,
          'rate_headers() of an allowed request, with its class');
SELECT ok(abs((lattice.rate_headers() ->> 'X-RateLimit-Reset')::bigint
              - (extract(epoch FROM clock_timestamp())::bigint + 4)) <= 1,
          'X-RateLimit-Reset is the Unix time of the reset');

-- the tenant's usage, without counting
SELECT results_eq($$SELECT "limit", remaining, used_this_hour, refused_this_hour FROM lattice.rate_usage()$$,
                  $$VALUES (1000::bigint, 999::bigint, 1::bigint, 0::bigint)$$, 'rate_usage() of b');
SELECT lattice.test_set_tenant((SELECT id FROM t WHERE name = 'a'));
SELECT results_eq($$SELECT used_this_hour, refused_this_hour FROM lattice.rate_usage()$$,
                  $$VALUES (1002::bigint, 5::bigint)$$, 'rate_usage() counts allowed and refused requests of a');

-- the plan's column is the limit
SELECT lattice.test_set_tenant((SELECT id FROM t WHERE name = 'c'));
SELECT is(pg_temp.spend((SELECT id FROM t WHERE name = 'c'), 3), 3::bigint,
          'a plan of 3 an hour allows 3');
SELECT throws_ok($$SELECT lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'c'))$$,
                 'PT429', NULL, '...and refuses the 4th');
SET LOCAL lattice.rate_plan_cache_ms = 0;
UPDATE lattice.plans SET rate_limit_per_hour = 5 WHERE id = 'rate_tiny';
SELECT results_eq($$SELECT allowed, "limit", remaining FROM lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'c'))$$,
                  $$VALUES (true, 5::bigint, 1::bigint)$$, 'a changed plan applies (after the plan cache) and keeps the 3 used');

-- burst: fewer at once, same hourly rate
SET LOCAL lattice.rate_tenant_burst = 10;
SELECT lattice.test_set_tenant((SELECT id FROM t WHERE name = 'd'));
SELECT is(pg_temp.spend((SELECT id FROM t WHERE name = 'd'), 10), 10::bigint,
          'a burst of 10 is allowed at once');
SELECT throws_ok($$SELECT lattice.rate_enforce_tenant((SELECT id FROM t WHERE name = 'd'))$$,
                 'PT429', NULL, '...the 11th is refused');
SELECT is((pg_temp.refusal((SELECT id FROM t WHERE name = 'd')) -> 'detail' -> 'headers' ->> 'RateLimit-Limit'),
          '1000', 'the limit stays the hourly one');
RESET lattice.rate_tenant_burst;

-- generic scoped checks never raise
SELECT results_eq($$SELECT allowed, remaining FROM lattice.rate_check('login_email', 'x-' || (SELECT id FROM t WHERE name = 'a'), 2, 60)
                    UNION ALL SELECT allowed, remaining FROM lattice.rate_check('login_email', 'x-' || (SELECT id FROM t WHERE name = 'a'), 2, 60)
                    UNION ALL SELECT allowed, remaining FROM lattice.rate_check('login_email', 'x-' || (SELECT id FROM t WHERE name = 'a'), 2, 60)$$,
                  $$VALUES (true, 1::bigint), (true, 0::bigint), (false, 0::bigint)$$,
                  'rate_check counts and refuses without raising');
SELECT throws_ok($$SELECT lattice.rate_check('tenant', 'x', 1, 60)$$, '22023', NULL,
                 'rate_check cannot reach the tenant scope');
SELECT throws_ok($$SELECT lattice.rate_check('s', 'x', 0, 60)$$, '22023', NULL,
                 'rate_check refuses a zero limit');

SELECT * FROM finish();
ROLLBACK;
