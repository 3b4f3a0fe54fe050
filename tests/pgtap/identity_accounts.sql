-- Accounts and passwords (src/auth_password.c, src/account.c): Argon2id parameters, length
-- limits, sign-up, login success and failure (same answer, audited), rehash
-- on login, brute-force counters, and who may create accounts.
BEGIN;
SELECT plan(30);

\ir helpers.psql

-- Login counters live in shared memory and survive ROLLBACK: fresh names per run.
SELECT 'carol-' || r || '@example.com' AS carol_email, 'erin-' || r || '@example.com' AS erin_email,
       format('{"client_addr": "10.%s.%s.%s", "request_id": "req-login-1", "method": "POST"}',
              (random() * 250)::int, (random() * 250)::int, (random() * 250)::int) AS req
  FROM (SELECT substr(md5(random()::text), 1, 10) AS r) x \gset

-- hashing
SELECT matches(lattice.password_hash('correct horse battery'), '^\$argon2id\$v=19\$m=19456,t=2,p=1\$',
               'passwords are Argon2id with 19 MiB and t=2');
SELECT isnt(lattice.password_hash('correct horse battery'), lattice.password_hash('correct horse battery'),
            'each hash has its own salt');
SELECT ok(lattice.password_verify(lattice.password_hash('correct horse battery'), 'correct horse battery'),
          'the right password verifies');
SELECT ok(NOT lattice.password_verify(lattice.password_hash('correct horse battery'), 'correct horse batterY'),
          'a wrong password does not');
SELECT ok(NOT lattice.password_verify(NULL, 'correct horse battery'),
          'no hash (unknown account) never verifies (checked against the dummy)');
SELECT is(pg_temp.err_code($$ SELECT lattice.password_hash('123456789') $$), 'PT400:invalid_password',
          '9 characters are too short');
SELECT is(pg_temp.err_code($$ SELECT lattice.password_hash(repeat('é', 1025)) $$), 'PT400:invalid_password',
          '1025 characters are too long');
SELECT is(pg_temp.err_code($$ SELECT lattice.password_hash(repeat('é', 10)) $$), 'ok',
          'length counts characters, not bytes');
SELECT ok(NOT lattice.password_needs_rehash(lattice.password_hash('correct horse battery')),
          'a hash with the current parameters needs no rehash');
SELECT ok(lattice.password_needs_rehash('$argon2id$v=19$m=8192,t=1,p=1$OXzkWiq1rzj8E4I2XbwZUQ$aIlv1Mcrw3Iv/xD80b/OEcu5/arEfdOsB5gF+2I9zDY'),
          'a weaker hash needs a rehash');

-- create_user (DBAs)
SELECT lattice.create_user('  ' || upper(:'carol_email') || ' ', 'carol password 1', 'Carol') AS carol \gset
SELECT is((SELECT email FROM lattice.users WHERE id = :'carol'), :'carol_email',
          'emails are trimmed and lower-cased');
SELECT is(pg_temp.err_code(format($$ SELECT lattice.create_user(%L, 'carol password 2', 'C2') $$, initcap(:'carol_email'))),
          'PT409:email_taken', 'an email is unique whatever its case');
SELECT is(pg_temp.err_code($$ SELECT lattice.create_user('not-an-email', 'carol password 2', 'C2') $$),
          'PT400:invalid_email', 'a malformed email is refused');
SELECT is(pg_temp.err_code($$ SELECT lattice.create_user('x@y.example', 'carol password 2', '  ') $$),
          'PT400:invalid_name', 'a blank name is refused');
SELECT ok((SELECT trial_ends_at - created_at = interval '7 days' FROM lattice.users WHERE id = :'carol'),
          'an account starts a 7-day trial');
SELECT is((SELECT count(*)::int FROM lattice.audit_log WHERE action = 'user.created' AND user_id = :'carol'), 1,
          'account creation is audited');

CREATE ROLE identity_test_app LOGIN IN ROLE lattice_app;
SET SESSION AUTHORIZATION identity_test_app;
SELECT is(pg_temp.err_code($$ SELECT lattice.create_user('d@example.com', 'dave password 1', 'D') $$),
          '42501:', 'lattice_app cannot use create_user');
RESET SESSION AUTHORIZATION;

-- login
SELECT lattice.test_set_tenant(NULL);
SELECT is(lattice.login(:'carol_email', 'carol password 1', :'req'), :'carol'::uuid,
          'the right password logs in');
SELECT is(lattice.current_user_id(), :'carol'::uuid, 'and makes the account the tenant');
SELECT is(lattice.current_auth_method(), 'password', 'authenticated by password');
SELECT lattice.test_set_tenant(NULL);
SELECT is(lattice.login(:'carol_email', 'carol password X', :'req'), NULL,
          'a wrong password answers NULL');
SELECT is(lattice.login('nobody-' || :'carol_email', 'carol password 1', :'req'), NULL,
          'an unknown email answers the same');
SELECT is(lattice.current_user_id(), NULL, 'a failed login sets no tenant');
SELECT is((SELECT array_agg(reason ORDER BY at) FROM (
              SELECT details ->> 'reason' AS reason, at FROM lattice.audit_log
               WHERE action = 'login.failure' AND target = :'carol_email'
              UNION ALL
              SELECT details ->> 'reason', at FROM lattice.audit_unattributed
               WHERE action = 'login.failure' AND target = 'nobody-' || :'carol_email') f),
          ARRAY['wrong_password', 'unknown_account'],
          'both failures are audited with their reason (an unknown account''s with no tenant)');
SELECT is((SELECT host(client_addr) || ' ' || request_id FROM lattice.audit_log
            WHERE action = 'login.success' AND user_id = :'carol'),
          (:'req'::jsonb ->> 'client_addr') || ' req-login-1', 'audit rows carry the address and the request id');

-- rehash on login
UPDATE lattice.users SET password_hash =
    '$argon2id$v=19$m=8192,t=1,p=1$OXzkWiq1rzj8E4I2XbwZUQ$aIlv1Mcrw3Iv/xD80b/OEcu5/arEfdOsB5gF+2I9zDY'
 WHERE id = :'carol';
SELECT is(lattice.login(:'carol_email', 'rehash-me-please', :'req'), :'carol'::uuid,
          'an old-parameter hash still logs in');
SELECT matches((SELECT password_hash FROM lattice.users WHERE id = :'carol'), '^\$argon2id\$v=19\$m=19456,t=2,p=1\$',
               'and is rehashed with the current parameters');

-- sign-up
SELECT lattice.test_set_tenant(NULL);
SELECT lattice.signup_user(:'erin_email', 'erin password 1', 'Erin', :'req') AS erin \gset
SELECT is(lattice.current_user_id(), :'erin'::uuid, 'sign-up makes the new account the tenant');
SELECT is((SELECT count(*)::int FROM lattice.audit_log WHERE action = 'user.signup' AND user_id = :'erin'), 1,
          'sign-up is audited');

-- brute force: 10 attempts per account per window, then 429 (counters in shared memory)
SELECT lattice.test_set_tenant(NULL);
SELECT count(lattice.login(:'erin_email', 'wrong password ' || i, :'req')) FROM generate_series(1, 10) i;
SELECT is(pg_temp.err_code(format($$ SELECT lattice.login(%L, 'erin password 1', %L) $$, :'erin_email', :'req')),
          'PT429:too_many_attempts', 'the 11th attempt on one account is refused, even with the right password');

SELECT * FROM finish();
ROLLBACK;
