-- Per-address limits of unauthenticated routes, and who may use what.
BEGIN;
SELECT plan(14);

-- fresh addresses per run: counters survive the ROLLBACK
CREATE TEMP TABLE a AS
SELECT '10.' || (random() * 250)::int || '.' || (random() * 250)::int || '.' || (random() * 250)::int AS v4,
       '172.16.' || (random() * 250)::int || '.' || (random() * 250)::int AS v4b,
       '2001:db8:' || to_hex((random() * 65000)::int) || ':' || to_hex((random() * 65000)::int) AS v6,
       '2001:db9:' || to_hex((random() * 65000)::int) || ':' || to_hex((random() * 65000)::int) AS v6b;

SET LOCAL lattice.rate_signup_per_hour = 3;
SELECT is(ARRAY[lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v4 FROM a)), 'signup') ->> 'RateLimit-Remaining',
                lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v4 FROM a)), 'signup') ->> 'RateLimit-Remaining',
                lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v4 FROM a)), 'signup') ->> 'RateLimit-Remaining'],
          ARRAY['2', '1', '0'], '3 sign-ups from one address are allowed');
SELECT throws_ok($$SELECT lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v4 FROM a)), 'signup')$$,
                 'PT429', NULL, 'the 4th is refused');
SELECT is(lattice.rate_headers() ->> 'RateLimit-Remaining', '0', 'rate_headers() after the refusal');
SELECT is(lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v4b FROM a)), 'signup') ->> 'RateLimit-Remaining',
          '2', 'another address is independent');
SELECT is(lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v4 FROM a)), 'login') ->> 'RateLimit-Limit',
          '100', 'another route class of the same address is independent, with its own default');

-- IPv6: one /64 is one client
SELECT is(lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v6 FROM a) || ':1::1'), 'signup') ->> 'RateLimit-Remaining',
          '2', 'first sign-up from an IPv6 host');
SELECT is(lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v6 FROM a) || ':ffff::2'), 'signup') ->> 'RateLimit-Remaining',
          '1', 'another host of the same /64 shares its allowance');
SELECT is(lattice.rate_enforce_address(jsonb_build_object('client_addr', (SELECT v6b FROM a) || ':1::1'), 'signup') ->> 'RateLimit-Remaining',
          '2', 'another /64 is independent');

SELECT throws_ok($$SELECT lattice.rate_enforce_address('{"client_addr": "10.0.0.1"}', 'nope')$$,
                 '22023', NULL, 'an unknown route class is an error');
SELECT throws_ok($$SELECT lattice.rate_enforce_address('{"client_addr": "not an address"}', 'login')$$,
                 '22P02', NULL, 'an unparsable address is invalid input');

-- privileges
CREATE TEMP TABLE u AS SELECT gen_random_uuid() AS id;
GRANT SELECT ON u, a TO lattice_app, lattice_api, lattice_admin;
INSERT INTO lattice.users (id, email, name) SELECT id, id || '@rate.test', 'u' FROM u;
SET LOCAL ROLE lattice_app;
SELECT throws_ok($$SELECT lattice.rate_enforce_tenant((SELECT id FROM u))$$, '42501', NULL,
                 'lattice_app cannot spend a quota of a tenant it is not');
SELECT throws_ok($$SELECT * FROM lattice.rate_counters$$, '42501', NULL,
                 'lattice_app cannot read every counter');
RESET ROLE;
SET LOCAL ROLE lattice_admin;
SELECT ok((SELECT count(*) FROM lattice.rate_counters WHERE scope = 'addr_signup' AND key = (SELECT v4 FROM a)
                                                        AND refused_this_hour = 1) = 1,
          'lattice_admin reads every counter');
RESET ROLE;
SET LOCAL ROLE lattice_api;
SELECT throws_ok($$SELECT lattice.rate_check('s', 'k', 1, 1)$$, '42501', NULL,
                 'the shim''s role cannot call the counters directly');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
