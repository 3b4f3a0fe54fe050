-- The second factor's primitives (src/account_totp.c): HOTP and TOTP against
-- the RFC test vectors, the check window and its replay protection, sealed
-- secrets (round trip, pepper rotation, tampering), recovery codes, base32,
-- and who may call them.
BEGIN;
SELECT plan(66);

-- The SQLSTATE a statement raises, or 'ok'.
CREATE FUNCTION pg_temp.err_state(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE;
END $$;

\ir helpers.psql

-- RFC 6238 Appendix B, SHA-1 (the seed is the ASCII of '12345678901234567890')
SELECT is(array_agg(lattice.totp_code(convert_to('12345678901234567890', 'UTF8'), t / 30, 8) ORDER BY t),
          ARRAY['94287082', '07081804', '14050471', '89005924', '69279037', '65353130'],
          'RFC 6238 SHA-1 vectors, 8 digits')
  FROM unnest(ARRAY[59, 1111111109, 1111111111, 1234567890, 2000000000, 20000000000]::bigint[]) t;
SELECT is(array_agg(lattice.totp_code(convert_to('12345678901234567890', 'UTF8'), t / 30) ORDER BY t),
          ARRAY['287082', '081804', '050471', '005924', '279037', '353130'],
          'the same in 6 digits (the default): their last six, zero-padded')
  FROM unnest(ARRAY[59, 1111111109, 1111111111, 1234567890, 2000000000, 20000000000]::bigint[]) t;

-- RFC 4226 Appendix D
SELECT is(array_agg(lattice.totp_code(convert_to('12345678901234567890', 'UTF8'), c, 6) ORDER BY c),
          ARRAY['755224', '287082', '359152', '969429', '338314', '254676', '287922', '162583', '399871', '520489'],
          'RFC 4226 HOTP vectors, counters 0 to 9')
  FROM generate_series(0, 9) c;
SELECT is(lattice.totp_code(convert_to('12345678901234567890', 'UTF8'), 0, 7), '4755224',
          '7 digits');
SELECT is(pg_temp.err_state($$ SELECT lattice.totp_code('\x00'::bytea, 0, 5) $$), '22023',
          'fewer than 6 digits are refused');
SELECT is(pg_temp.err_state($$ SELECT lattice.totp_code('\x00'::bytea, 0, 9) $$), '22023',
          'more than 8 digits are refused');
SELECT is(pg_temp.err_state($$ SELECT lattice.totp_code('\x00'::bytea, -1) $$), '22023',
          'a negative step is refused');
SELECT is(pg_temp.err_state($$ SELECT lattice.totp_code(''::bytea, 0) $$), '22023',
          'an empty secret is refused');
SELECT is(lattice.totp_code(NULL, 0), NULL, 'totp_code is strict');

-- base32, RFC 4648 section 10
SELECT is(array_agg(lattice.base32_encode(convert_to(v, 'UTF8')) ORDER BY length(v)),
          ARRAY['', 'MY', 'MZXQ', 'MZXW6', 'MZXW6YQ', 'MZXW6YTB', 'MZXW6YTBOI'],
          'RFC 4648 base32 vectors, without padding')
  FROM unnest(ARRAY['', 'f', 'fo', 'foo', 'foob', 'fooba', 'foobar']) v;
SELECT is(lattice.base32_encode('\x00ff10'::bytea), 'AD7RA', 'base32 of arbitrary bytes');
SELECT is(pg_temp.base32_decode(lattice.base32_encode(convert_to('12345678901234567890', 'UTF8'))),
          convert_to('12345678901234567890', 'UTF8'), 'and the test''s decoder inverts it');

-- generate: a base32 secret for the app, the same sealed under the active pepper
SELECT g.secret, g.sealed FROM lattice.totp_generate() g \gset gen_
SELECT matches(:'gen_secret'::text, '^[A-Z2-7]{32}$', 'the secret is 20 bytes in base32 (32 characters)');
SELECT is(get_byte(:'gen_sealed'::bytea, 0), 1, 'a sealed secret starts with version 1');
SELECT is(convert_from(substring(:'gen_sealed'::bytea FROM 3 FOR get_byte(:'gen_sealed'::bytea, 1)), 'UTF8'),
          (SELECT kid FROM lattice.secrets WHERE kind = 'pepper' AND retired_at IS NULL),
          'and names the active pepper''s kid');
SELECT is(length(:'gen_sealed'::bytea), 2 + get_byte(:'gen_sealed'::bytea, 1) + 24 + 16 + 20,
          'then a 24-byte nonce and the 20 bytes with their 16-byte tag');
SELECT is(position(pg_temp.base32_decode(:'gen_secret') IN :'gen_sealed'::bytea), 0,
          'the sealed value does not hold the secret in the clear');
SELECT isnt(g.secret, :'gen_secret', 'each enrolment has its own secret') FROM lattice.totp_generate() g;

-- A secret whose codes around the test's moment all differ (a random
-- secret's codes coincide with a chance of about 1 in 100,000), and that moment.
SELECT e.secret AS secret, e.sealed AS sealed, 56666667 AS t,
       to_timestamp(56666667 * 30 + 17) AS at
  FROM generate_series(1, 20) n, LATERAL lattice.totp_generate() e
 WHERE (SELECT count(DISTINCT lattice.totp_code(pg_temp.base32_decode(e.secret), s))
          FROM generate_series(56666667 - 2, 56666667 + 2) s) = 5
 LIMIT 1 \gset
SELECT pg_temp.base32_decode(:'secret') AS key \gset

-- the window: the current step and one either side
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t), NULL, :'at'), :t::bigint,
          'the current step''s code is accepted and its step returned (seal round trip)');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t - 1), NULL, :'at'), :t - 1::bigint,
          'the previous step''s code is accepted');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t + 1), NULL, :'at'), :t + 1::bigint,
          'the next step''s code is accepted');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t - 2), NULL, :'at'), NULL,
          'two steps back is refused');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t + 2), NULL, :'at'), NULL,
          'two steps ahead is refused');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t - 1), NULL, :'at'::timestamptz + interval '12.999 seconds'),
          :t - 1::bigint, 'in the last moment of a step the previous step''s code still counts');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t - 1), NULL, :'at'::timestamptz + interval '13 seconds'),
          NULL, 'and no longer when the next step starts');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(convert_to('12345678901234567890', 'UTF8'), :t), NULL, :'at'),
          NULL, 'another secret''s code is refused');

-- replay: only steps after the last one used
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t), :t, :'at'), NULL,
          'a code of the step last used is refused (replay)');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t - 1), :t, :'at'), NULL,
          'so is one of an earlier step');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t + 1), :t, :'at'), :t + 1::bigint,
          'a later step''s code still works');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t), :t - 1, :'at'), :t::bigint,
          'last_step only excludes itself and earlier steps');

-- the code's form
SELECT is(lattice.totp_check(:'sealed', '  ' || lattice.totp_code(:'key', :t) || ' ', NULL, :'at'), :t::bigint,
          'spaces around the code are ignored');
SELECT is(lattice.totp_check(:'sealed', '12345', NULL, :'at'), NULL, 'five digits answer NULL');
SELECT is(lattice.totp_check(:'sealed', '1234567', NULL, :'at'), NULL, 'seven digits answer NULL');
SELECT is(lattice.totp_check(:'sealed', 'abcdef', NULL, :'at'), NULL, 'letters answer NULL');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t, 8), NULL, :'at'), NULL,
          'an 8-digit code answers NULL (logins use 6)');
SELECT is(lattice.totp_check(:'sealed', NULL, NULL, :'at'), NULL, 'no code answers NULL');
SELECT is(lattice.totp_check(NULL, lattice.totp_code(:'key', :t), NULL, :'at'), NULL, 'no secret answers NULL');

-- at NULL is the identity clock
SELECT lattice.test_set_clock(:'at');
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t), NULL, NULL), :t::bigint,
          'without a time, lattice.clock_now() is the moment');
SELECT lattice.test_set_clock(NULL);

-- tampering is corruption, not a wrong code
SELECT is(pg_temp.err_state(format($$ SELECT lattice.totp_check(%L::bytea, %L, NULL, %L) $$,
              set_byte(:'sealed'::bytea, length(:'sealed'::bytea) - 1, get_byte(:'sealed'::bytea, length(:'sealed'::bytea) - 1) # 1),
              lattice.totp_code(:'key', :t), :'at')),
          'XX001', 'a changed ciphertext raises data_corrupted');
SELECT is(pg_temp.err_state(format($$ SELECT lattice.totp_check(%L::bytea, '000000', NULL, %L) $$,
              set_byte(:'sealed'::bytea, 0, 2), :'at')),
          'XX001', 'an unknown version raises');
SELECT is(pg_temp.err_state(format($$ SELECT lattice.totp_check(%L::bytea, '000000', NULL, %L) $$,
              substring(:'sealed'::bytea FROM 1 FOR 40), :'at')),
          'XX001', 'a truncated value raises');
SELECT is(pg_temp.err_state(format($$ SELECT lattice.totp_check(%L::bytea, '000000', NULL, %L) $$,
              set_byte(:'sealed'::bytea, 2, get_byte(:'sealed'::bytea, 2) # 1), :'at')),
          'XX001', 'a value naming another pepper raises');
SELECT is(pg_temp.err_state($$ SELECT lattice.totp_check(''::bytea, '000000', NULL, NULL) $$),
          'XX001', 'an empty value raises');

-- pepper rotation: what was sealed under the old pepper still opens
SELECT lattice.rotate_secret('pepper') AS new_kid \gset
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t), NULL, :'at'), :t::bigint,
          'a secret sealed before a pepper rotation still checks');
SELECT is(convert_from(substring(g.sealed FROM 3 FOR get_byte(g.sealed, 1)), 'UTF8'), :'new_kid',
          'new enrolments are sealed under the new pepper')
  FROM lattice.totp_generate() g;

-- recovery codes
SELECT r.codes, r.hashes FROM lattice.recovery_codes_new() r \gset rc_
SELECT is(cardinality(:'rc_codes'::text[]), 10, 'ten recovery codes');
SELECT is(cardinality(:'rc_hashes'::bytea[]), 10, 'and ten hashes');
SELECT is((SELECT count(DISTINCT c)::int FROM unnest(:'rc_codes'::text[]) c), 10, 'all distinct');
SELECT ok((SELECT bool_and(c ~ '^[a-z2-7]{5}-[a-z2-7]{5}$') FROM unnest(:'rc_codes'::text[]) c),
          'each is xxxxx-xxxxx in lowercase base32');
SELECT ok((SELECT bool_and(length(h) = 32) FROM unnest(:'rc_hashes'::bytea[]) h), 'each hash is 32 bytes');
SELECT is((SELECT array_agg(lattice.recovery_code_match(c, :'rc_hashes') ORDER BY i)
             FROM unnest(:'rc_codes'::text[]) WITH ORDINALITY u(c, i)),
          ARRAY[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'each code matches its own position');
SELECT is(lattice.recovery_code_match(upper((:'rc_codes'::text[])[3]), :'rc_hashes'), 3,
          'upper case is the same code');
SELECT is(lattice.recovery_code_match(' ' || replace((:'rc_codes'::text[])[4], '-', ' ') || ' ', :'rc_hashes'), 4,
          'spaces are ignored');
SELECT is(lattice.recovery_code_match(replace((:'rc_codes'::text[])[5], '-', ''), :'rc_hashes'), 5,
          'so is a missing dash');
SELECT is(lattice.recovery_code_match('aaaaa-aaaaa', :'rc_hashes'), 0, 'a wrong code matches nothing');
SELECT is(lattice.recovery_code_match((:'rc_codes'::text[])[6] || 'a', :'rc_hashes'), 0,
          'nor does a code with a character more');
SELECT is(lattice.recovery_code_match('00000-11111', :'rc_hashes'), 0, 'nor one outside base32');
SELECT is(lattice.recovery_code_match(NULL, :'rc_hashes'), 0, 'no code answers 0, not NULL');
SELECT is(lattice.recovery_code_match((:'rc_codes'::text[])[1], NULL), 0, 'no hashes answer 0');
SELECT is(lattice.recovery_code_match((:'rc_codes'::text[])[1], ARRAY[NULL::bytea] || (:'rc_hashes'::bytea[])[2:10]), 0,
          'a used code (its hash NULL) matches nothing');
SELECT is(lattice.recovery_code_match((:'rc_codes'::text[])[2], ARRAY[NULL::bytea] || (:'rc_hashes'::bytea[])[2:10]), 2,
          'and the others keep their positions');
SELECT is(lattice.recovery_code_match((:'rc_codes'::text[])[1], r.hashes), 0,
          'a new set replaces the old one') FROM lattice.recovery_codes_new() r;

-- who may call them
SELECT ok(bool_and(has_function_privilege('lattice_app', f, 'EXECUTE')), 'lattice_app may execute all six')
  FROM unnest(ARRAY['lattice.totp_code(bytea, bigint, integer)', 'lattice.totp_generate()',
                    'lattice.totp_check(bytea, text, bigint, timestamptz)', 'lattice.recovery_codes_new()',
                    'lattice.recovery_code_match(text, bytea[])', 'lattice.base32_encode(bytea)']) f;
SELECT ok(NOT bool_or(has_function_privilege('public', f, 'EXECUTE')), 'PUBLIC may execute none of them')
  FROM unnest(ARRAY['lattice.totp_code(bytea, bigint, integer)', 'lattice.totp_generate()',
                    'lattice.totp_check(bytea, text, bigint, timestamptz)', 'lattice.recovery_codes_new()',
                    'lattice.recovery_code_match(text, bytea[])', 'lattice.base32_encode(bytea)']) f;

CREATE ROLE totp_test_app LOGIN IN ROLE lattice_app;
SET SESSION AUTHORIZATION totp_test_app;
SELECT is(lattice.totp_check(:'sealed', lattice.totp_code(:'key', :t), NULL, :'at'), :t::bigint,
          'lattice_app checks a code through the pepper it cannot read');
SELECT is(pg_temp.err_state($$ SELECT count(*) FROM lattice.secrets $$), '42501',
          'lattice.secrets stays closed to it');
RESET SESSION AUTHORIZATION;

SELECT * FROM finish();
ROLLBACK;
