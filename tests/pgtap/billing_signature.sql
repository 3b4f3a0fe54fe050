-- The Stripe-Signature verifier (src/billing_signature.c), checked against
-- pgcrypto's HMAC as an independent implementation of Stripe's scheme:
-- v1 = hex(HMAC-SHA256(secret, "<t>.<payload>")).
BEGIN;
SELECT plan(18);
CREATE EXTENSION IF NOT EXISTS pgcrypto;

CREATE TEMP TABLE k AS
SELECT 'whsec_test_secret_one_0123456789'::text AS s1,
       'whsec_test_secret_two_9876543210'::text AS s2,
       '{"id":"evt_1","type":"invoice.paid","created":1700000000}'::text AS body,
       floor(extract(epoch FROM now()))::bigint AS t;

-- Stripe's scheme, written with pgcrypto
CREATE FUNCTION pg_temp.v1(secret text, t bigint, body text) RETURNS text LANGUAGE sql AS
$$ SELECT encode(hmac(t::text || '.' || body, secret, 'sha256'), 'hex') $$;

SELECT is(lattice.stripe_signature_header(body, s1, now()),
          't=' || t || ',v1=' || pg_temp.v1(s1, t, body),
          'the header builder signs like Stripe (checked against pgcrypto)') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s1, t, body), body,
                                           ARRAY[s1], 300, now()), 'valid', 'a valid signature verifies') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s1, t, body), body || ' ',
                                           ARRAY[s1], 300, now()), 'signature_mismatch', 'a tampered body is refused') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s1, t, body),
                                           replace(body, '1700000000', '1700000001'),
                                           ARRAY[s1], 300, now()), 'signature_mismatch', 'a changed field is refused') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || (t + 1) || ',v1=' || pg_temp.v1(s1, t, body), body,
                                           ARRAY[s1], 300, now()), 'signature_mismatch', 'a changed timestamp is refused') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s2, t, body), body,
                                           ARRAY[s1], 300, now()), 'signature_mismatch', 'a wrong secret is refused') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || (t - 301) || ',v1=' || pg_temp.v1(s1, t - 301, body), body,
                                           ARRAY[s1], 300, now()), 'timestamp_out_of_tolerance',
          'a timestamp older than the tolerance is refused, even correctly signed') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || (t + 301) || ',v1=' || pg_temp.v1(s1, t + 301, body), body,
                                           ARRAY[s1], 300, now()), 'timestamp_out_of_tolerance',
          'a timestamp too far in the future is refused') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || (t - 299) || ',v1=' || pg_temp.v1(s1, t - 299, body), body,
                                           ARRAY[s1], 300, now()), 'valid', 'a timestamp within the tolerance verifies') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s2, t, body) || ',v1='
                                           || pg_temp.v1(s1, t, body) || ',v0=' || repeat('0', 64), body,
                                           ARRAY[s1], 300, now()), 'valid', 'any of several v1 values may match') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s2, t, body), body,
                                           ARRAY[s1, s2], 300, now()), 'valid', 'any of several active secrets may match') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v0=' || pg_temp.v1(s1, t, body), body,
                                           ARRAY[s1], 300, now()), 'no_signature', 'only v1 counts (v0 is ignored)') FROM k;
SELECT is(lattice.stripe_signature_verdict(NULL, body, ARRAY[s1], 300, now()), 'no_signature',
          'a missing header is refused') FROM k;
SELECT is(lattice.stripe_signature_verdict('v1=' || pg_temp.v1(s1, t, body), body, ARRAY[s1], 300, now()),
          'malformed_header', 'a header without t is malformed') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=zz' || substr(pg_temp.v1(s1, t, body), 3), body,
                                           ARRAY[s1], 300, now()), 'malformed_header', 'a v1 that is not hex is malformed') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=12a,v1=' || pg_temp.v1(s1, t, body), body, ARRAY[s1], 300, now()),
          'malformed_header', 'a t that is not a number is malformed') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || ',v1=' || pg_temp.v1(s1, t, body), body,
                                           ARRAY[]::text[], 300, now()), 'no_secret', 'no active secret is its own verdict') FROM k;
SELECT is(lattice.stripe_signature_verdict('t=' || t || repeat(',v1=' || pg_temp.v1(s2, t, body), 9), body,
                                           ARRAY[s1], 300, now()), 'malformed_header', 'too many v1 values are refused') FROM k;

SELECT * FROM finish();
ROLLBACK;
