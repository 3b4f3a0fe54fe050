-- The account lifecycle (docs/account.md, extension/sql/86_account.sql and
-- 87_http_account.sql, src/account_token.c, src/account_reauth.c): e-mail
-- verification links, forgotten and changed passwords, the e-mail change,
-- the second factor and its gate in front of sessions, the account's audit
-- page, the export, the deletion, the lifecycle tick, and what billing asks
-- of an account.
--
-- Routes are called as the shim calls them: lattice_http.<route>(req, body),
-- each as a fresh request (no tenant yet).  An answered error keeps what the
-- route wrote (audit rows); a raised one (PTnnn) rolls its request back.
-- Time moves with lattice.test_set_clock; the throttles count in shared
-- memory in real time and survive ROLLBACK, so every run has its own
-- addresses (e-mail and client).
\set raw_meta `cat tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json`
\set raw_traces `cat tests/fixtures/captured/003-POST-api_v1_performance_traces_batch.json`
\set raw_errors `cat tests/fixtures/captured/004-POST-api_v1_errors_batch.json`
BEGIN;
SELECT plan(151);

-- ---- helpers ----

\ir helpers.psql

CREATE TEMP TABLE kv (k text PRIMARY KEY, v jsonb);
CREATE FUNCTION pg_temp.v(key text) RETURNS jsonb LANGUAGE sql AS $$ SELECT v FROM kv WHERE k = key $$;

-- E-mails queued in the outbox
CREATE FUNCTION pg_temp.mails(account uuid, template text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM lattice.outbox WHERE account_id = account AND purpose = 'email.' || template
$$;
CREATE FUNCTION pg_temp.mails_to(addr text, template text DEFAULT NULL) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM lattice.outbox WHERE mail_to = addr AND (template IS NULL OR purpose = 'email.' || template)
$$;
-- The link token of the newest e-mail of a template to an address
CREATE FUNCTION pg_temp.link(addr text, template text) RETURNS text LANGUAGE sql AS $$
    SELECT substring(mail_text FROM '\?token=([A-Za-z0-9_-]+)') FROM lattice.outbox
     WHERE mail_to = addr AND purpose = 'email.' || template ORDER BY id DESC LIMIT 1
$$;
CREATE FUNCTION pg_temp.b64url(b bytea) RETURNS text LANGUAGE sql AS $$
    SELECT rtrim(translate(replace(encode(b, 'base64'), E'\n', ''), '+/', '-_'), '=')
$$;
CREATE FUNCTION pg_temp.audits(account uuid, act text) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM lattice.audit_log WHERE user_id = account AND action = act
$$;
CREATE FUNCTION pg_temp.live_sessions(account uuid) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM lattice.sessions WHERE user_id = account AND revoked_at IS NULL
$$;
CREATE FUNCTION pg_temp.sessions(account uuid) RETURNS bigint LANGUAGE sql AS $$
    SELECT count(*) FROM lattice.sessions WHERE user_id = account
$$;
CREATE FUNCTION pg_temp.rows_of(account uuid) RETURNS bigint LANGUAGE sql AS $$
    SELECT COALESCE(sum(n), 0)::bigint FROM lattice.tenant_row_counts(account)
$$;

-- The code the app shows now (lattice.clock_now()), and one it does not show in the ±1 step window
CREATE FUNCTION pg_temp.totp(secret text, shift integer DEFAULT 0) RETURNS text LANGUAGE sql AS $$
    SELECT lattice.totp_code(pg_temp.base32_decode(secret),
                             floor(extract(epoch FROM lattice.clock_now()) / 30)::bigint + shift)
$$;
CREATE FUNCTION pg_temp.wrong_totp(secret text) RETURNS text LANGUAGE sql AS $$
    SELECT c FROM unnest(ARRAY['000000', '111111', '222222', '333333']) c
     WHERE c NOT IN (pg_temp.totp(secret, -1), pg_temp.totp(secret), pg_temp.totp(secret, 1)) LIMIT 1
$$;
-- Two-factor authentication turned on by the owner (no code verified in this transaction)
CREATE FUNCTION pg_temp.mfa_on(account uuid) RETURNS text LANGUAGE plpgsql AS $$
DECLARE g record;
BEGIN
    SELECT * INTO g FROM lattice.totp_generate();
    INSERT INTO lattice.account_mfa (user_id, sealed, created_at, enabled_at)
    VALUES (account, g.sealed, lattice.clock_now(), lattice.clock_now());
    RETURN g.secret;
END $$;
-- The lifecycle e-mails an account was sent, in order
CREATE FUNCTION pg_temp.notices(account uuid) RETURNS text[] LANGUAGE sql AS $$
    SELECT COALESCE(array_agg(substr(purpose, 7) ORDER BY id), '{}') FROM lattice.outbox
     WHERE account_id = account
       AND purpose IN ('email.trial_ending_soon', 'email.trial_ended', 'email.retention_warning', 'email.data_purged')
$$;
-- A tenant's service data, through the ingest functions as the API runs them
CREATE TEMP TABLE bodies (name text PRIMARY KEY, body text);
INSERT INTO bodies VALUES ('meta', (:'raw_meta')::jsonb ->> 'body_raw'), ('traces', (:'raw_traces')::jsonb ->> 'body_raw'),
                          ('errors', (:'raw_errors')::jsonb ->> 'body_raw');
GRANT SELECT ON bodies TO lattice_app;
CREATE FUNCTION pg_temp.ingest(account uuid) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lattice.test_set_tenant(account);
    SET LOCAL ROLE lattice_app;
    PERFORM lattice.ingest_metadata(body) FROM bodies WHERE name = 'meta';
    PERFORM lattice.ingest_traces(body) FROM bodies WHERE name = 'traces';
    PERFORM lattice.ingest_errors(body) FROM bodies WHERE name = 'errors';
    RESET ROLE;
    RETURN (SELECT count(*) FROM lattice.tenant_row_counts(account) WHERE n > 0);
END $$;
CREATE FUNCTION pg_temp.tick(at timestamptz) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lattice.test_set_clock(at);
    RETURN lattice.lifecycle_tick();
END $$;

-- this run's addresses
SELECT substr(md5(random()::text), 1, 10) AS r,
       '10.' || (random() * 250)::int || '.' || (random() * 250)::int || '.' AS net,
       now() AS t0 \gset
SELECT lattice.test_set_clock(:'t0');

-- ======================================================================
-- E-mail verification
-- ======================================================================
INSERT INTO kv SELECT 'v_signup', pg_temp.call('auth_signup', pg_temp.req(:'net' || '1', 'POST'),
    jsonb_build_object('email', 'acc-v-' || :'r' || '@example.com', 'password', 'verify password 1', 'name', 'Vera'));
SELECT 'acc-v-' || :'r' || '@example.com' AS v_email, pg_temp.v('v_signup') #>> '{body,user,id}' AS v \gset
INSERT INTO kv SELECT 'v_s', pg_temp.cookies(pg_temp.v('v_signup'));

SELECT is(pg_temp.code(pg_temp.v('v_signup')), '201:', 'sign-up answers 201 with a session');
SELECT is(pg_temp.mails_to(:'v_email', 'verify_email'), 1::bigint, 'sign-up queues a verify_email e-mail to the address');
SELECT ok((SELECT mail_text ~ '/verify-email\?token=[A-Za-z0-9_-]{64}([^A-Za-z0-9_-]|$)' FROM lattice.outbox
            WHERE mail_to = :'v_email' AND purpose = 'email.verify_email'),
          'with a verify-email link carrying a 64-character base64url token');
SELECT is((pg_temp.call('account_get', pg_temp.req(:'net' || '1', 'GET', pg_temp.v('v_s')))
           #> '{body,user,email_verified}'), 'false'::jsonb, 'a signed-up address starts unverified');
SELECT pg_temp.link(:'v_email', 'verify_email') AS v_tok \gset

SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'), '{"token": "not-a-token"}')),
          '400:invalid_token', 'a made-up token is refused');
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'), jsonb_build_object('token',
              pg_temp.b64url(uuid_send(:'v'::uuid) || decode(md5(random()::text) || md5(random()::text), 'hex'))))),
          '400:invalid_token', 'a well-formed token with the account''s id and a guessed secret is refused');
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'), jsonb_build_object('token',
              overlay(:'v_tok' PLACING CASE WHEN substr(:'v_tok', 40, 1) = 'A' THEN 'B' ELSE 'A' END FROM 40 FOR 1)))),
          '400:invalid_token', 'the token with one character flipped is refused');
SELECT pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '1', 'POST'), jsonb_build_object('email', :'v_email'));
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'),
              jsonb_build_object('token', pg_temp.link(:'v_email', 'password_reset')))),
          '400:invalid_token', 'a password-reset token of the account does not verify its address');
SELECT is(pg_temp.code(pg_temp.call('auth_password_reset', pg_temp.req(:'net' || '1', 'POST'),
              jsonb_build_object('token', :'v_tok', 'password', 'hijacked password 1'))),
          '400:invalid_token', 'nor does a verification token reset a password');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '49 hours');
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'), jsonb_build_object('token', :'v_tok'))),
          '400:token_expired', 'the link is refused 49 hours later: token_expired');
SELECT lattice.test_set_clock(:'t0');

INSERT INTO kv SELECT 'v_ok', pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'), jsonb_build_object('token', :'v_tok'));
SELECT is(pg_temp.v('v_ok') - 'headers', jsonb_build_object('status', 200, 'body', jsonb_build_object('email', :'v_email', 'verified', true)),
          'the link verifies the address: 200 {email, verified}');
SELECT is((SELECT email_verified_at FROM lattice.users WHERE id = :'v'), :'t0'::timestamptz, 'users.email_verified_at is set');
SELECT is(pg_temp.audits(:'v', 'email.verified'), 1::bigint, 'audited as email.verified');
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '1', 'POST'), jsonb_build_object('token', :'v_tok'))),
          '400:invalid_token', 'the link works once');
SELECT is(pg_temp.code(pg_temp.call('account_verification_resend', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('v_s')), '{}')),
          '409:already_verified', 're-sending for a verified address: 409 already_verified');

-- re-send, its throttle, and the superseded link
INSERT INTO kv SELECT 'v2_signup', pg_temp.call('auth_signup', pg_temp.req(:'net' || '2', 'POST'),
    jsonb_build_object('email', 'acc-v2-' || :'r' || '@example.com', 'password', 'verify password 2', 'name', 'Viktor'));
SELECT 'acc-v2-' || :'r' || '@example.com' AS v2_email, pg_temp.v('v2_signup') #>> '{body,user,id}' AS v2 \gset
INSERT INTO kv SELECT 'v2_s', pg_temp.cookies(pg_temp.v('v2_signup'));
SELECT pg_temp.link(:'v2_email', 'verify_email') AS v2_tok \gset
SELECT is(pg_temp.call('account_verification_resend', pg_temp.req(:'net' || '2', 'POST', pg_temp.v('v2_s')), '{}') - 'headers',
          '{"status": 202, "body": {"sent": true}}', 'the link can be sent again: 202');
SELECT is(pg_temp.mails_to(:'v2_email', 'verify_email'), 2::bigint, 'a second verify_email e-mail is queued');
SELECT is(pg_temp.code(pg_temp.call('account_verification_resend', pg_temp.req(:'net' || '2', 'POST', pg_temp.v('v2_s')), '{}')),
          '429:too_many_attempts', 'a second re-send within a minute: 429 too_many_attempts');
SELECT is(pg_temp.mails_to(:'v2_email', 'verify_email'), 2::bigint, 'and queues nothing');
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '2', 'POST'), jsonb_build_object('token', :'v2_tok'))),
          '400:invalid_token', 'the newer link supersedes the older one');

-- ======================================================================
-- Forgotten password
-- ======================================================================
SELECT 'acc-p-' || :'r' || '@example.com' AS p_email, 'acc-nobody-' || :'r' || '@example.com' AS nobody_email \gset
SELECT lattice.create_user(:'p_email', 'forgot password 1', 'Pat') AS p \gset
SELECT is((SELECT email_verified_at IS NOT NULL FROM lattice.users WHERE id = :'p'), true,
          'an account made by lattice.create_user counts as verified (docs/account.md)');
INSERT INTO kv SELECT 'p_s1', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '3', 'POST'),
    jsonb_build_object('email', :'p_email', 'password', 'forgot password 1')));
INSERT INTO kv SELECT 'p_s2', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '3', 'POST'),
    jsonb_build_object('email', :'p_email', 'password', 'forgot password 1')));

-- someone signed in as P asks to move the account to another address; P is told and resets the password
SELECT 'acc-p-new-' || :'r' || '@example.com' AS p_new_email \gset
SELECT is(pg_temp.code(pg_temp.call('account_email_change', pg_temp.req(:'net' || '3', 'POST', pg_temp.v('p_s1')),
                                    jsonb_build_object('email', :'p_new_email', 'password', 'forgot password 1'))),
          '202:', 'an e-mail change of the account is pending');
INSERT INTO kv SELECT 'p_f1', pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '3', 'POST'), jsonb_build_object('email', :'p_email'));
INSERT INTO kv SELECT 'p_fu', pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '3', 'POST'), jsonb_build_object('email', :'nobody_email'));
SELECT is(pg_temp.code(pg_temp.v('p_f1')) || ' ' || (pg_temp.v('p_f1') #>> '{body,accepted}'), '202: true',
          'forgot password: 202 {accepted} for a known address');
SELECT is(pg_temp.v('p_fu') - 'headers', pg_temp.v('p_f1') - 'headers', 'the same answer for an unknown address');
SELECT is(pg_temp.mails_to(:'p_email', 'password_reset'), 1::bigint, 'the known address is sent a password_reset e-mail');
SELECT is(pg_temp.mails_to(:'nobody_email'), 0::bigint, 'the unknown one nothing');

SELECT pg_temp.link(:'p_email', 'password_reset') AS p_tok1 \gset
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '61 minutes');
SELECT is(pg_temp.code(pg_temp.call('auth_password_reset', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('token', :'p_tok1', 'password', 'forgot password 2'))),
          '400:token_expired', 'a reset link older than an hour: token_expired');
SELECT lattice.test_set_clock(:'t0');

SELECT pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '3', 'POST'), jsonb_build_object('email', :'p_email'));
SELECT pg_temp.link(:'p_email', 'password_reset') AS p_tok2 \gset
SELECT pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '3', 'POST'), jsonb_build_object('email', :'p_email'));
SELECT pg_temp.link(:'p_email', 'password_reset') AS p_tok \gset
INSERT INTO kv SELECT 'p_f4', pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '3', 'POST'), jsonb_build_object('email', :'p_email'));
SELECT is(pg_temp.v('p_f4') - 'headers', pg_temp.v('p_f1') - 'headers', 'a 4th request for the address within the hour still answers 202');
SELECT is(pg_temp.mails_to(:'p_email', 'password_reset'), 3::bigint, 'but queues no 4th e-mail');
SELECT is((SELECT count(*) FROM lattice.audit_unattributed WHERE action = 'password.reset_requested' AND target = :'p_email'),
          4::bigint, 'every request is in the operator''s trail, the same row whether sent or not');
SELECT is(pg_temp.code(pg_temp.call('auth_password_forgot', pg_temp.req(:'net' || '3', 'POST'), '{"email": "not-an-email"}')),
          '400:invalid_email', 'an invalid address: 400 invalid_email');

SELECT password_hash AS p_hash FROM lattice.users WHERE id = :'p' \gset
SELECT is(pg_temp.code(pg_temp.call('auth_password_reset', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('token', :'p_tok', 'password', 'short'))),
          '400:invalid_password', 'resetting to a weak password: 400 invalid_password');
SELECT is((SELECT password_hash FROM lattice.users WHERE id = :'p'), :'p_hash', 'and the password is unchanged');
INSERT INTO kv SELECT 'p_reset', pg_temp.call('auth_password_reset', pg_temp.req(:'net' || '3', 'POST'),
    jsonb_build_object('token', :'p_tok', 'password', 'forgot password 2'));
SELECT is(pg_temp.v('p_reset') - 'headers', '{"status": 200, "body": {"reset": true}}',
          'the link still works afterwards: 200 {reset}');
SELECT is(pg_temp.live_sessions(:'p'), 0::bigint, 'every session of the account is revoked');
SELECT is(pg_temp.code(pg_temp.call('auth_me', pg_temp.req(:'net' || '3', 'GET', pg_temp.v('p_s1')))),
          '401:invalid_session', 'so its cookies no longer sign in');
SELECT is((SELECT count(*) FROM lattice.reset_links WHERE account_id = :'p' AND used_at IS NULL),
          0::bigint, 'no reset link of the account is left pending');
SELECT is(pg_temp.code(pg_temp.call('auth_password_reset', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('token', :'p_tok2', 'password', 'forgot password 3'))),
          '400:invalid_token', 'an earlier reset link is dead');
SELECT is(pg_temp.mails(:'p', 'password_changed'), 1::bigint, 'a password_changed e-mail is queued');
SELECT is(pg_temp.audits(:'p', 'password.reset'), 1::bigint, 'audited as password.reset');
SELECT is(pg_temp.code(pg_temp.call('auth_password_reset', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('token', :'p_tok', 'password', 'forgot password 3'))),
          '400:invalid_token', 'the link works once');
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('email', :'p_email', 'password', 'forgot password 2'))), '200:', 'the new password signs in');
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('email', :'p_email', 'password', 'forgot password 1'))),
          '401:invalid_credentials', 'the old one is refused');
SELECT is(pg_temp.code(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '3', 'POST'),
              jsonb_build_object('token', pg_temp.link(:'p_new_email', 'email_change_verify')))),
          '400:invalid_token',
          'the reset also kills a pending e-mail change link (the email_change_requested notice tells the owner to reset the password)');

-- ======================================================================
-- Changing the password
-- ======================================================================
SELECT 'acc-c-' || :'r' || '@example.com' AS c_email \gset
SELECT lattice.create_user(:'c_email', 'change password 1', 'Cleo') AS c \gset
INSERT INTO kv SELECT 'c_s1', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '4', 'POST'),
    jsonb_build_object('email', :'c_email', 'password', 'change password 1')));
INSERT INTO kv SELECT 'c_s2', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '4', 'POST'),
    jsonb_build_object('email', :'c_email', 'password', 'change password 1')));
SELECT password_hash AS c_hash FROM lattice.users WHERE id = :'c' \gset

SELECT is(pg_temp.code(pg_temp.call('account_password_change', pg_temp.req(:'net' || '4', 'POST', pg_temp.v('c_s1')),
              '{"current_password": "not my password", "new_password": "change password 2"}')),
          '403:wrong_password', 'a wrong current password: 403 wrong_password');
SELECT is(pg_temp.audits(:'c', 'reauth.failure'), 1::bigint, 'audited as reauth.failure');
SELECT ok((SELECT password_hash = :'c_hash' FROM lattice.users WHERE id = :'c') AND pg_temp.live_sessions(:'c') = 2,
          'and nothing changed (password, sessions)');
SELECT is(pg_temp.call('account_password_change', pg_temp.req(:'net' || '4', 'POST', pg_temp.v('c_s1')),
              '{"current_password": "change password 1", "new_password": "change password 2"}') - 'headers',
          '{"status": 200, "body": {"changed": true, "sessions_revoked": 1}}', 'the right one: 200, one other session revoked');
SELECT is(pg_temp.code(pg_temp.call('auth_me', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s2')))),
          '401:invalid_session', 'the other session no longer works');
SELECT is(pg_temp.code(pg_temp.call('auth_me', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1')))),
          '200:', 'the current one is kept');
SELECT is(lattice.login(:'c_email', 'change password 2', pg_temp.req(:'net' || '4', 'POST')), :'c'::uuid,
          'the new password signs in');

-- ======================================================================
-- Changing the e-mail address
-- ======================================================================
SELECT 'acc-e-' || :'r' || '@example.com' AS e_email, 'acc-e-new-' || :'r' || '@example.com' AS n_email \gset
SELECT lattice.create_user(:'e_email', 'email password 1', 'Emil') AS e \gset
INSERT INTO kv SELECT 'e_s', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '5', 'POST'),
    jsonb_build_object('email', :'e_email', 'password', 'email password 1')));

SELECT is(pg_temp.code(pg_temp.call('account_email_change', pg_temp.req(:'net' || '5', 'POST', pg_temp.v('e_s')),
              jsonb_build_object('email', :'n_email', 'password', 'not my password'))),
          '403:wrong_password', 'a wrong password: 403 wrong_password');
SELECT is(pg_temp.code(pg_temp.call('account_email_change', pg_temp.req(:'net' || '5', 'POST', pg_temp.v('e_s')),
              jsonb_build_object('email', :'c_email', 'password', 'email password 1'))),
          '409:email_taken', 'another account''s address: 409 email_taken');
SELECT is(pg_temp.code(pg_temp.call('account_email_change', pg_temp.req(:'net' || '5', 'POST', pg_temp.v('e_s')),
              jsonb_build_object('email', upper(:'e_email'), 'password', 'email password 1'))),
          '400:same_email', 'its own address (whatever the case): 400 same_email');
SELECT is(pg_temp.mails_to(:'n_email'), 0::bigint, 'none of these sends anything');
SELECT is(pg_temp.call('account_email_change', pg_temp.req(:'net' || '5', 'POST', pg_temp.v('e_s')),
              jsonb_build_object('email', :'n_email', 'password', 'email password 1')) - 'headers',
          jsonb_build_object('status', 202, 'body', jsonb_build_object('pending_email', :'n_email')),
          'a free address: 202 {pending_email}');
SELECT is(lattice.login(:'e_email', 'email password 1', pg_temp.req(:'net' || '5', 'POST')), :'e'::uuid,
          'the old address still signs in until the link is followed');
SELECT ok(pg_temp.mails_to(:'n_email', 'email_change_verify') = 1
          AND pg_temp.link(:'n_email', 'email_change_verify') ~ '^[A-Za-z0-9_-]{64}$',
          'the new address is sent an email_change_verify e-mail with a link');
SELECT is(pg_temp.mails_to(:'e_email', 'email_change_requested'), 1::bigint, 'the old one an email_change_requested notice');
SELECT is(pg_temp.call('account_get', pg_temp.req(:'net' || '5', 'GET', pg_temp.v('e_s'))) #>> '{body,user,pending_email}',
          :'n_email', 'GET /account shows the pending address');
SELECT is(pg_temp.call('auth_email_verify', pg_temp.req(:'net' || '5', 'POST'),
              jsonb_build_object('token', pg_temp.link(:'n_email', 'email_change_verify'))) - 'headers',
          jsonb_build_object('status', 200, 'body', jsonb_build_object('email', :'n_email', 'verified', true)),
          'following the link: 200 {email, verified}');
SELECT is(lattice.login(:'n_email', 'email password 1', pg_temp.req(:'net' || '5', 'POST')), :'e'::uuid,
          'the new address signs in');
SELECT is(lattice.login(:'e_email', 'email password 1', pg_temp.req(:'net' || '5', 'POST')), NULL,
          'the old one no longer');
SELECT is((SELECT array_agg(email) FROM lattice.account_emails WHERE user_id = :'e'), ARRAY[:'n_email'],
          'lattice.account_emails holds only the new address');
SELECT is((SELECT email FROM lattice.users WHERE id = :'e'), :'n_email', 'and so does the account');
SELECT is(pg_temp.mails_to(:'e_email', 'email_changed'), 1::bigint, 'the old address is sent an email_changed notice');

-- ======================================================================
-- Two-factor authentication
-- ======================================================================
SELECT 'acc-m-' || :'r' || '@example.com' AS m_email \gset
SELECT lattice.create_user(:'m_email', 'mfa password 1', 'Mina') AS m \gset
INSERT INTO kv SELECT 'm_s', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
    jsonb_build_object('email', :'m_email', 'password', 'mfa password 1')));

SELECT is(pg_temp.code(pg_temp.call('account_mfa_setup', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
              '{"password": "not my password"}')), '403:wrong_password', 'setting up 2FA needs the password');
INSERT INTO kv SELECT 'm_setup', pg_temp.call('account_mfa_setup', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
    '{"password": "mfa password 1"}');
SELECT pg_temp.v('m_setup') #>> '{body,secret}' AS m_secret \gset
SELECT ok(pg_temp.code(pg_temp.v('m_setup')) = '200:' AND :'m_secret' ~ '^[A-Z2-7]{32}$'
          AND pg_temp.v('m_setup') #>> '{body,otpauth_uri}' LIKE 'otpauth://totp/Lattice:%?secret=' || :'m_secret' || '&issuer=Lattice%',
          'with it: 200 {secret, otpauth_uri}');
SELECT is(pg_temp.code(pg_temp.call('account_mfa_enable', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
              jsonb_build_object('code', pg_temp.wrong_totp(:'m_secret')))),
          '401:invalid_code', 'enabling with a wrong code: 401 invalid_code');
INSERT INTO kv SELECT 'm_enable', pg_temp.call('account_mfa_enable', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
    jsonb_build_object('code', pg_temp.totp(:'m_secret')));
SELECT ok(pg_temp.code(pg_temp.v('m_enable')) = '200:'
          AND jsonb_array_length(pg_temp.v('m_enable') #> '{body,recovery_codes}') = 10
          AND (SELECT bool_and(c ~* '^[a-z2-7]{5}-[a-z2-7]{5}$')
                 FROM jsonb_array_elements_text(pg_temp.v('m_enable') #> '{body,recovery_codes}') c),
          'with the right code: 200 and 10 recovery codes');
SELECT is((SELECT jsonb_build_array(u -> 'mfa_enabled', u -> 'recovery_codes_left') FROM
              (SELECT pg_temp.call('account_get', pg_temp.req(:'net' || '6', 'GET', pg_temp.v('m_s'))) #> '{body,user}' AS u) x),
          '[true, 10]'::jsonb, 'GET /account: mfa_enabled, 10 recovery codes left');
SELECT is(pg_temp.mails(:'m', 'mfa_enabled'), 1::bigint, 'an mfa_enabled notice is queued');

SELECT pg_temp.sessions(:'m') AS m_n \gset
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
              jsonb_build_object('email', :'m_email', 'password', 'mfa password 1'))),
          '401:mfa_required', 'a login without the code: 401 mfa_required');
SELECT is(pg_temp.sessions(:'m'), :'m_n'::bigint, 'and no session is created');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '30 seconds');
SELECT pg_temp.totp(:'m_secret') AS m_code \gset
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
              jsonb_build_object('email', :'m_email', 'password', 'mfa password 1', 'code', :'m_code'))),
          '200:', 'with the code of the next step: 200');
SELECT is(pg_temp.sessions(:'m'), :'m_n'::bigint + 1, 'and a session');
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
              jsonb_build_object('email', :'m_email', 'password', 'mfa password 1', 'code', :'m_code'))),
          '401:invalid_code', 'the same code again: 401 invalid_code (no replay)');
SELECT pg_temp.v('m_enable') #>> '{body,recovery_codes,3}' AS m_rc \gset
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
              jsonb_build_object('email', :'m_email', 'password', 'mfa password 1', 'code', :'m_rc'))),
          '200:', 'a recovery code signs in');
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
              jsonb_build_object('email', :'m_email', 'password', 'mfa password 1', 'code', :'m_rc'))),
          '401:invalid_code', 'once');
SELECT is(pg_temp.call('account_get', pg_temp.req(:'net' || '6', 'GET', pg_temp.v('m_s'))) #> '{body,user,recovery_codes_left}',
          '9'::jsonb, 'nine recovery codes are left');

SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '60 seconds');
SELECT is(pg_temp.code(pg_temp.call('account_mfa_disable', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
              '{"password": "mfa password 1"}')), '401:invalid_code', 'turning 2FA off needs a code');
SELECT is(pg_temp.code(pg_temp.call('account_mfa_disable', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
              jsonb_build_object('password', 'not my password', 'code', pg_temp.totp(:'m_secret')))),
          '403:wrong_password', 'and the password');
SELECT is(pg_temp.call('account_mfa_disable', pg_temp.req(:'net' || '6', 'POST', pg_temp.v('m_s')),
              jsonb_build_object('password', 'mfa password 1', 'code', pg_temp.totp(:'m_secret'))) - 'headers',
          '{"status": 200, "body": {"mfa_enabled": false}}', 'with both: 200, off');
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '6', 'POST'),
              jsonb_build_object('email', :'m_email', 'password', 'mfa password 1'))),
          '200:', 'the password alone signs in again');
SELECT lattice.test_set_clock(:'t0');

-- the gate in front of sessions, for an account with no code verified in this transaction
SELECT 'acc-g-' || :'r' || '@example.com' AS g_email \gset
SELECT lattice.create_user(:'g_email', 'gate password 1', 'Gus') AS g \gset
SELECT pg_temp.mfa_on(:'g') AS g_secret \gset
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '7', 'POST'),
              jsonb_build_object('email', :'g_email', 'password', 'gate password 1', 'code', pg_temp.wrong_totp(:'g_secret')))),
          '401:invalid_code', 'a wrong code at login: 401 invalid_code');
SELECT is(pg_temp.sessions(:'g'), 0::bigint, 'no session for a refused second factor');
SELECT lattice.test_set_tenant(NULL);
SELECT is(lattice.login(:'g_email', 'gate password 1', pg_temp.req(:'net' || '7', 'POST')), :'g'::uuid,
          'lattice.login accepts the password alone');
SELECT is(pg_temp.err_code(format('SELECT lattice.session_create(%L)', pg_temp.req(:'net' || '7', 'POST'))),
          'PT401:mfa_required', 'but lattice.session_create cannot be reached around the gate: PT401 mfa_required');
SELECT is(pg_temp.sessions(:'g'), 0::bigint, 'still no session');

-- ======================================================================
-- The audit page
-- ======================================================================
INSERT INTO kv SELECT 'a1', pg_temp.call('account_audit', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1'), '{"limit": "2"}'));
INSERT INTO kv SELECT 'a2', pg_temp.call('account_audit', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1'),
    jsonb_build_object('limit', '2', 'before', pg_temp.v('a1') #>> '{body,next_before}')));
INSERT INTO kv SELECT 'all', pg_temp.call('account_audit', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1'), '{"limit": "100"}'));
CREATE FUNCTION pg_temp.ids(r jsonb) RETURNS bigint[] LANGUAGE sql AS $$
    SELECT array_agg((e ->> 'id')::bigint ORDER BY n) FROM jsonb_array_elements(r #> '{body,events}') WITH ORDINALITY x(e, n)
$$;
SELECT is(pg_temp.ids(pg_temp.v('all')), (SELECT array_agg(id ORDER BY id DESC) FROM lattice.audit_log WHERE user_id = :'c'),
          'GET /account/audit: every row of the tenant''s own, newest first');
SELECT ok(cardinality(pg_temp.ids(pg_temp.v('all'))) >= 6, 'there are enough of them to page');
SELECT is(pg_temp.ids(pg_temp.v('a1')), (pg_temp.ids(pg_temp.v('all')))[1:2], 'limit=2: the two newest');
SELECT is(pg_temp.v('a1') #>> '{body,next_before}', (pg_temp.ids(pg_temp.v('a1')))[2]::text, 'next_before names the last one');
SELECT is(pg_temp.ids(pg_temp.v('a2')), (pg_temp.ids(pg_temp.v('all')))[3:4], 'before=next_before: the next two');
SELECT is((SELECT array_agg(DISTINCT e ->> 'action' ORDER BY e ->> 'action')
             FROM jsonb_array_elements(pg_temp.v('all') #> '{body,events}') e
            WHERE e ->> 'action' IN ('reauth.failure', 'password.changed', 'login.success')),
          ARRAY['login.success', 'password.changed', 'reauth.failure'], 'with the actions of its account');
SELECT is(pg_temp.code(pg_temp.call('account_audit', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1'), '{"limit": "0"}'))),
          '400:invalid_limit', 'limit=0: 400 invalid_limit');
SELECT is(pg_temp.code(pg_temp.call('account_audit', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1'), '{"limit": "101"}'))),
          '400:invalid_limit', 'limit=101: 400 invalid_limit');
SELECT is(pg_temp.code(pg_temp.call('account_audit', pg_temp.req(:'net' || '4', 'GET', pg_temp.v('c_s1'), '{"before": "x"}'))),
          '400:invalid_cursor', 'a cursor that is no id: 400 invalid_cursor');

-- ======================================================================
-- Export
-- ======================================================================
INSERT INTO lattice.services (user_id, name) VALUES (:'v2', 'export-svc-' || :'r'), (:'v', 'other-svc-' || :'r');
SELECT pg_temp.ingest(:'v2'), pg_temp.ingest(:'v');
SELECT lattice.create_api_key(:'v2', 'export key') AS v2_key \gset
SELECT pg_temp.mfa_on(:'v2');
SELECT lattice.account_recovery_codes_renew(:'v2');
-- GET /account/export, read-only as the shim runs it: its rows in order
CREATE FUNCTION pg_temp.export(req jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE rows jsonb;
BEGIN
    PERFORM lattice.test_set_tenant(NULL);
    BEGIN
        PERFORM set_config('transaction_read_only', 'on', true);
        SELECT jsonb_agg(to_jsonb(x) ORDER BY x.n) INTO rows
          FROM lattice_http.account_export(req, NULL) WITH ORDINALITY AS x(status, headers, body, n);
        RAISE EXCEPTION 'the read-only request is over' USING ERRCODE = 'LTRO0';
    EXCEPTION WHEN SQLSTATE 'LTRO0' THEN
        NULL;
    END;
    RETURN rows;
END $$;
-- (counted before: the export's own audit row waits in the deferred queue, which a worker may write any time)
SELECT sum(n) AS v2_rows FROM lattice.tenant_row_counts(:'v2') WHERE rel <> 'lattice.users'::regclass \gset
CREATE TEMP TABLE exported AS
SELECT x.* FROM jsonb_to_recordset(pg_temp.export(pg_temp.req(:'net' || '2', 'GET', pg_temp.v('v2_s'))))
       AS x(status integer, headers jsonb, body text, n bigint);
CREATE FUNCTION pg_temp.try_json(t text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;
INSERT INTO kv SELECT 'doc', pg_temp.try_json(string_agg(body, '' ORDER BY n)) FROM exported;
SELECT (SELECT string_agg(body, '' ORDER BY n) FROM exported) AS doc_text \gset

SELECT is((SELECT status FROM exported WHERE n = 1), 200, 'the export''s first row: 200');
SELECT matches((SELECT headers ->> 'Content-Disposition' FROM exported WHERE n = 1),
               '^attachment; filename="lattice-export-\d{4}-\d{2}-\d{2}\.json"$', 'with Content-Disposition: attachment');
SELECT ok(pg_temp.v('doc') IS NOT NULL, 'the bodies together are one JSON document');
SELECT is(pg_temp.v('doc') #>> '{account,email}', :'v2_email', 'account.email is the account''s');
SELECT ok(pg_temp.v('doc') #> '{tables,services}' @> jsonb_build_array(jsonb_build_object('name', 'export-svc-' || :'r')),
          'tables.services holds its service');
SELECT ok(jsonb_array_length(pg_temp.v('doc') #> '{tables,api_keys}') = 1
          AND pg_temp.v('doc') #>> '{tables,api_keys,0,prefix}' = left(:'v2_key', 12)
          AND NOT pg_temp.v('doc') #> '{tables,api_keys,0}' ? 'key_hash',
          'tables.api_keys holds its key, without key_hash');
SELECT ok(jsonb_array_length(pg_temp.v('doc') #> '{tables,account_recovery_codes}') = 10
          AND jsonb_array_length(pg_temp.v('doc') #> '{tables,sessions}') >= 1
          AND jsonb_array_length(pg_temp.v('doc') #> '{tables,account_mfa}') = 1,
          'its sessions, second factor and recovery codes are listed');
SELECT is(substring(:'doc_text' FROM '(password_hash|token_hash|sealed|code_hash|key_hash)'), NULL,
          'no password_hash, token_hash, sealed, code_hash or key_hash anywhere in the document');
SELECT is((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(pg_temp.v('doc') -> 'tables') k),
          (SELECT array_agg(replace(rel::text, 'lattice.', '') ORDER BY replace(rel::text, 'lattice.', '')) FROM lattice.tenant_tables_delete_order('{users}')),
          'tables has every tenant table but users (from the catalog)');
SELECT is((SELECT sum(jsonb_array_length(t.value))::bigint FROM jsonb_each(pg_temp.v('doc') -> 'tables') t),
          :'v2_rows'::bigint, 'with every row of the account in them');
SELECT ok(position(:'v' IN :'doc_text') = 0 AND position(('other-svc-' || :'r') IN :'doc_text') = 0
          AND position(:'v_email' IN :'doc_text') = 0
          AND NOT EXISTS (SELECT FROM lattice.services WHERE user_id = :'v' AND position(id::text IN :'doc_text') > 0),
          'nothing of another tenant');

-- ======================================================================
-- Deletion
-- ======================================================================
SELECT 'acc-d-' || :'r' || '@example.com' AS d_email \gset
SELECT lattice.create_user(:'d_email', 'delete password 1', 'Dora') AS d \gset
INSERT INTO kv SELECT 'd_s', pg_temp.cookies(pg_temp.call('auth_login', pg_temp.req(:'net' || '8', 'POST'),
    jsonb_build_object('email', :'d_email', 'password', 'delete password 1')));
SELECT pg_temp.mfa_on(:'d') AS d_secret \gset
SELECT cmp_ok(pg_temp.ingest(:'d'), '>=', 12::bigint, 'the account to delete has service data in many tenant tables');
SELECT lattice.create_api_key(:'d', 'doomed key');
INSERT INTO lattice.billing_customers (user_id, stripe_customer_id) VALUES (:'d', 'cus_del_' || :'r');
INSERT INTO lattice.subscriptions (user_id, stripe_customer_id, stripe_subscription_id, status, state_at)
VALUES (:'d', 'cus_del_' || :'r', 'sub_del_' || :'r', 'active', now());
INSERT INTO lattice.invoices (user_id, stripe_invoice_id, stripe_subscription_id, number, amount_due, amount_paid,
                              currency, status, created, state_at)
VALUES (:'d', 'in_del1_' || :'r', 'sub_del_' || :'r', 'LAT-0901', 2500, 2500, 'usd', 'paid', now() - interval '1 month', now()),
       (:'d', 'in_del2_' || :'r', 'sub_del_' || :'r', 'LAT-0902', 2500, 2500, 'usd', 'paid', now(), now());
SELECT pg_temp.rows_of(:'v') AS v_rows, pg_temp.rows_of(:'d') AS d_rows,
       (SELECT count(*) FROM lattice.audit_log WHERE user_id = :'d') AS d_audits \gset

SELECT lattice.test_set_tenant(:'d');
SELECT is(lattice.account_deleting(), false, 'lattice.account_deleting() is false until a deletion is proved');
SET LOCAL ROLE lattice_app;
DELETE FROM lattice.audit_log WHERE user_id = lattice.current_user_id();
SELECT is(pg_temp.err_code(format('SELECT lattice.account_forget(%L, %L, NULL, NULL)', :'d_email', 'Dora')), '42501:',
          'nor can lattice_app forget the account without it');
RESET ROLE;
SELECT is((SELECT count(*) FROM lattice.audit_log WHERE user_id = :'d'), :'d_audits'::bigint,
          'lattice_app cannot delete the tenant''s audit rows without a proved deletion');

SELECT is(pg_temp.code(pg_temp.call('account_delete', pg_temp.req(:'net' || '8', 'DELETE', pg_temp.v('d_s')),
              '{"password": "not my password"}')), '403:wrong_password', 'deleting with a wrong password: 403');
SELECT is(pg_temp.rows_of(:'d'), :'d_rows'::bigint + 1, 'and nothing is deleted (one row more: the failure is audited)');
SELECT is(pg_temp.code(pg_temp.call('account_delete', pg_temp.req(:'net' || '8', 'DELETE', pg_temp.v('d_s')),
              '{"password": "delete password 1"}')), '401:mfa_required', 'with 2FA on and no code: 401 mfa_required');
SELECT is(pg_temp.rows_of(:'d'), :'d_rows'::bigint + 1, 'still nothing deleted');

INSERT INTO kv SELECT 'd_del', pg_temp.call('account_delete', pg_temp.req(:'net' || '8', 'DELETE', pg_temp.v('d_s')),
    jsonb_build_object('password', 'delete password 1', 'code', pg_temp.totp(:'d_secret')));
SELECT is(pg_temp.code(pg_temp.v('d_del')) || ' ' || (pg_temp.v('d_del') #>> '{body,deleted}'), '200: true',
          'password and code: 200 {deleted}');
SELECT ok(pg_temp.v('d_del') #>> '{headers,Set-Cookie,0}' LIKE 'lattice_session=;%Max-Age=0;%', 'and the cookies are cleared');
SELECT is(pg_temp.rows_of(:'d'), 0::bigint, 'no row of the account is left in any tenant table (tenant_row_counts)');
SELECT is((SELECT count(*) FROM lattice.account_emails WHERE user_id = :'d')
          + (SELECT count(*) FROM lattice.api_key_prefixes WHERE user_id = :'d')
          + (SELECT count(*) FROM lattice.session_tokens WHERE user_id = :'d')
          + (SELECT count(*) FROM lattice.billing_customers WHERE user_id = :'d'), 0::bigint,
          'nor in the look-ups (account_emails, api_key_prefixes, session_tokens, billing_customers)');
SELECT is((SELECT array_agg(number ORDER BY number) FROM lattice.retained_invoices
            WHERE account_id = :'d' AND stripe_customer_id = 'cus_del_' || :'r'
              AND keep_until BETWEEN lattice.clock_now() + interval '10 years' - interval '1 day'
                                 AND lattice.clock_now() + interval '10 years' + interval '1 day'),
          ARRAY['LAT-0901', 'LAT-0902'], 'its invoices are kept in lattice.retained_invoices for 10 years');
SELECT is(pg_temp.mails_to(:'d_email', 'account_deleted'), 1::bigint, 'an account_deleted e-mail is queued');
SELECT is((SELECT array_agg(method || ' ' || path) FROM lattice.outbox WHERE account_id = :'d' AND kind = 'stripe'),
          ARRAY['DELETE /v1/subscriptions/sub_del_' || :'r'], 'and the cancellation of its subscription for Stripe');
SELECT is((SELECT count(*) FROM lattice.audit_unattributed WHERE action = 'account.deleted' AND target = :'d'), 1::bigint,
          'the deletion is audited in audit_unattributed');
SELECT is(pg_temp.code(pg_temp.call('auth_login', pg_temp.req(:'net' || '8', 'POST'),
              jsonb_build_object('email', :'d_email', 'password', 'delete password 1', 'code', pg_temp.totp(:'d_secret', 1)))),
          '401:invalid_credentials', 'signing in is refused afterwards');
SELECT is(pg_temp.code(pg_temp.call('auth_me', pg_temp.req(:'net' || '8', 'GET', pg_temp.v('d_s')))),
          '401:invalid_session', 'and so is its old session');
SELECT is(pg_temp.rows_of(:'v'), :'v_rows'::bigint, 'another tenant''s rows are untouched');
SELECT lattice.test_set_tenant(:'v');
SELECT is(lattice.account_deleting(), false, 'lattice.account_deleting() is false for any other tenant');
-- the shim's worker runs the cancellation after the COMMIT; Stripe refuses its last attempt
SELECT id AS d_job FROM lattice.outbox WHERE account_id = :'d' AND kind = 'stripe' \gset
UPDATE lattice.outbox SET attempts = max_attempts - 1 WHERE id = :'d_job';
CREATE ROLE lattice_test_acc_shim LOGIN IN ROLE lattice_api;
SET LOCAL SESSION AUTHORIZATION lattice_test_acc_shim;
SELECT lattice_worker.outbox_claim(:'d_job');
SELECT lattice_worker.outbox_complete(:'d_job', 404, '{"error": {"type": "invalid_request_error"}}', NULL);
RESET SESSION AUTHORIZATION;
SELECT is((SELECT status FROM lattice.outbox WHERE id = :'d_job'), 'failed', 'a cancellation Stripe refuses for good fails');
SELECT is(pg_temp.rows_of(:'d'), 0::bigint,
          'and its failure is audited without leaving a row of the deleted account in a tenant table');

-- ======================================================================
-- The lifecycle tick
-- ======================================================================
SELECT lattice.create_user('acc-t-' || :'r' || '@example.com', 'trial password 1', 'Tia') AS t,
       lattice.create_user('acc-l-' || :'r' || '@example.com', 'lapse password 1', 'Lev') AS l,
       lattice.create_user('acc-s-' || :'r' || '@example.com', 'subscriber password 1', 'Sam') AS s \gset
UPDATE lattice.users SET trial_ends_at = :'t0'::timestamptz + interval '10 days' WHERE id = :'t';
SELECT pg_temp.ingest(:'l'), pg_temp.ingest(:'s');
-- the entitlement reads the real time: the lapsed trials ended in the real past
UPDATE lattice.users SET trial_ends_at = now() - interval '360 days' WHERE id IN (:'l', :'s');
INSERT INTO lattice.subscriptions (user_id, stripe_customer_id, stripe_subscription_id, status, state_at,
                                   current_period_start, current_period_end)
VALUES (:'s', 'cus_s_' || :'r', 'sub_s_' || :'r', 'active', now(), now(), now() + interval '1 year');
SELECT lattice.create_api_key(:'l', 'lapsed key');
SELECT (lattice.entitlement(:'l') ->> 'data_kept_until')::timestamptz AS l_kept \gset

SELECT pg_temp.tick(:'l_kept'::timestamptz - interval '8 days');
SELECT is(pg_temp.notices(:'l'), '{}'::text[], 'a lapsed account: nothing 8 days before data_kept_until');
SELECT pg_temp.tick(:'l_kept'::timestamptz - interval '7 days' + interval '1 hour');
SELECT is(pg_temp.notices(:'l'), ARRAY['retention_warning'], 'a retention_warning 7 days before');
SELECT pg_temp.tick(:'l_kept'::timestamptz - interval '1 minute');
SELECT ok(pg_temp.notices(:'l') = ARRAY['retention_warning']
          AND (SELECT count(*) FROM lattice.services WHERE user_id = :'l') = 2, 'once; the data is there until data_kept_until');
SELECT pg_temp.tick(:'l_kept'::timestamptz + interval '1 minute');
SELECT is((SELECT sum(n) FROM lattice.tenant_row_counts(:'l')
            WHERE NOT replace(rel::text, 'lattice.', '') = ANY (lattice.account_identity_tables())), 0::numeric,
          'at data_kept_until its service data is purged, every table of it');
SELECT ok(EXISTS (SELECT FROM lattice.users WHERE id = :'l')
          AND (SELECT count(*) FROM lattice.api_keys WHERE user_id = :'l') = 1
          AND pg_temp.audits(:'l', 'user.created') = 1,
          'the account, its API keys and its audit trail are kept');
SELECT is(pg_temp.notices(:'l'), ARRAY['retention_warning', 'data_purged'], 'and it is told');
SELECT pg_temp.tick(:'l_kept'::timestamptz + interval '2 hours');
SELECT ok(pg_temp.notices(:'l') = ARRAY['retention_warning', 'data_purged'] AND pg_temp.audits(:'l', 'account.data_purged') = 1,
          'the purge happens once');

SELECT pg_temp.tick(:'t0'::timestamptz + interval '6 days 23 hours');
SELECT is(pg_temp.notices(:'t'), '{}'::text[], 'a card-less trial: nothing more than 3 days before its end');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '7 days' + interval '1 hour');
SELECT is(pg_temp.notices(:'t'), ARRAY['trial_ending_soon'], 'trial_ending_soon 3 days before its end');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '8 days');
SELECT is(pg_temp.notices(:'t'), ARRAY['trial_ending_soon'], 'once');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '10 days' + interval '1 hour');
SELECT is(pg_temp.notices(:'t'), ARRAY['trial_ending_soon', 'trial_ended'], 'trial_ended after it');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '11 days');
SELECT is(pg_temp.notices(:'t'), ARRAY['trial_ending_soon', 'trial_ended'], 'once');
SELECT ok(pg_temp.notices(:'s') = '{}' AND NOT EXISTS (SELECT FROM lattice.account_notices WHERE user_id = :'s')
          AND (SELECT count(*) FROM lattice.services WHERE user_id = :'s') = 2,
          'an active subscriber gets nothing and keeps its data');
SELECT lattice.test_set_clock(:'t0');

-- ======================================================================
-- Billing
-- ======================================================================
SELECT lattice.billing_set_price('standard', 'price_test_account');
SELECT lattice.test_set_tenant(:'v2');
SET LOCAL ROLE lattice_app;
SELECT is(pg_temp.err_code($$ SELECT lattice.billing_checkout('{}') $$), 'PT403:email_unverified',
          'checkout for an unverified address: 403 email_unverified');
RESET ROLE;
SELECT lattice.test_set_tenant(:'v');
SET LOCAL ROLE lattice_app;
SELECT is((lattice.billing_checkout('{}')).status, 202, 'a verified one may check out');
RESET ROLE;

CREATE FUNCTION pg_temp.trial_params(account uuid) RETURNS jsonb LANGUAGE sql AS $$
    SELECT COALESCE(jsonb_agg(p), '[]') FROM jsonb_array_elements(lattice.billing_checkout_params(account, 'cus_params')) p
     WHERE p ->> 0 LIKE 'subscription_data[trial%'
$$;
SELECT is(pg_temp.trial_params(:'v'),
          jsonb_build_array(jsonb_build_array('subscription_data[trial_end]',
              (SELECT floor(extract(epoch FROM trial_ends_at))::bigint::text FROM lattice.users WHERE id = :'v'))),
          'a fresh account checks out with subscription_data[trial_end] = the end of its sign-up trial, no trial_period_days');
UPDATE lattice.users SET trial_ends_at = :'t0'::timestamptz + interval '47 hours' WHERE id = :'v';
SELECT is(pg_temp.trial_params(:'v'), '[]'::jsonb, 'a trial ending within 48 hours: no trial at all');
UPDATE lattice.users SET trial_ends_at = :'t0'::timestamptz - interval '1 day' WHERE id = :'v';
SELECT is(pg_temp.trial_params(:'v'), '[]'::jsonb, 'an ended trial: no trial at all');

SELECT lattice.webhook_secret_add('whsec_account_lifecycle_' || :'r');
SELECT is((lattice.stripe_webhook_receive(
              lattice.stripe_signature_header(ev::text, 'whsec_account_lifecycle_' || :'r', now()), ev::text,
              '{"client_addr": "127.0.0.1"}')).body::jsonb ->> 'outcome', 'applied', 'invoice.upcoming is applied')
  FROM (SELECT jsonb_build_object('id', 'evt_upcoming_' || :'r', 'object', 'event', 'type', 'invoice.upcoming',
                                  'created', floor(extract(epoch FROM now()))::bigint,
                                  'data', jsonb_build_object('object', jsonb_build_object(
                                      'object', 'invoice', 'customer', 'cus_up_' || :'r', 'amount_due', 2500, 'currency', 'usd',
                                      'next_payment_attempt', floor(extract(epoch FROM now() + interval '3 days'))::bigint,
                                      'subscription_details', jsonb_build_object('metadata', jsonb_build_object('user_id', :'v'))))) AS ev) x;
SELECT ok((SELECT mail_text LIKE '%renews on%25.00 USD%' FROM lattice.outbox
            WHERE account_id = :'v' AND purpose = 'email.renewal_reminder' AND mail_to = :'v_email'),
          'and queues a renewal_reminder e-mail with the amount');

SELECT * FROM finish();
ROLLBACK;
