-- Credentials (src/auth_apikey.c, auth_jwt.c, auth_session.c, auth.c, auth_secret.c): API keys
-- with revocation, expiry and rotation windows; HS256 tokens and each of
-- their refusals; sessions with CSRF; the authenticate() entry point;
-- server secrets that only the owner reads, rotated without logging out.
-- Time moves with lattice.test_set_clock (superuser, this transaction only).
BEGIN;
SELECT plan(69);

\ir helpers.psql
CREATE FUNCTION pg_temp.b64url(t text) RETURNS text LANGUAGE sql AS $$
    SELECT rtrim(translate(replace(encode(convert_to(t, 'UTF8'), 'base64'), E'\n', ''), '+/', '-_'), '=')
$$;
CREATE FUNCTION pg_temp.b64url_decode(t text) RETURNS text LANGUAGE sql AS $$
    SELECT convert_from(decode(translate(t, '-_', '+/') || repeat('=', (4 - length(t) % 4) % 4), 'base64'), 'UTF8')
$$;

SELECT now() AS t0 \gset
SELECT lattice.test_set_clock(:'t0');
SELECT 'cred-' || r || '@example.com' AS a_email, 'cred2-' || r || '@example.com' AS b_email
  FROM (SELECT substr(md5(random()::text), 1, 10) AS r) x \gset
SELECT lattice.create_user(:'a_email', 'alice password', 'A') AS a \gset
SELECT lattice.create_user(:'b_email', 'bobby password', 'B') AS b \gset

-- ---- secrets ----
SELECT is((SELECT count(*)::int FROM lattice.secrets WHERE retired_at IS NULL AND length(secret) = 32), 2,
          'CREATE EXTENSION made a 256-bit pepper and JWT key');
CREATE ROLE identity_t_api LOGIN IN ROLE lattice_api;
CREATE ROLE identity_t_app LOGIN IN ROLE lattice_app;
CREATE ROLE identity_t_dba LOGIN IN ROLE lattice_admin;
SET SESSION AUTHORIZATION identity_t_api;
SELECT throws_ok('SELECT * FROM lattice.secrets', '42501', NULL, 'lattice_api cannot read the secrets');
SELECT throws_ok('SELECT lattice.api_key_verify(''x'')', '42501', NULL, 'lattice_api cannot call lattice C functions');
SET SESSION AUTHORIZATION identity_t_app;
SELECT throws_ok('SELECT * FROM lattice.secrets', '42501', NULL, 'lattice_app cannot read the secrets');
SELECT throws_ok('SELECT lattice.rotate_secret(''jwt'')', '42501', NULL, 'lattice_app cannot rotate secrets');
SELECT throws_ok('SELECT lattice.test_set_clock(now())', '42501', NULL, 'lattice_app cannot pin the clock');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_create(%L, ''x'')', :'a')), '42501:',
          'lattice_app cannot make keys for an account that is not its tenant');
SET SESSION AUTHORIZATION identity_t_dba;
SELECT throws_ok('SELECT * FROM lattice.secrets', '42501', NULL, 'lattice_admin cannot read the secrets');
RESET SESSION AUTHORIZATION;

-- ---- API keys ----
SELECT lattice.test_set_tenant(:'a');
SELECT k.id AS k1, k.key AS key1, k.prefix AS p1 FROM lattice.api_key_create(:'a', '  ci  ') k \gset
SELECT matches(:'key1'::text, '^ltc_[A-Za-z0-9_-]{43}$', 'a key is ltc_ + 32 random bytes in base64url');
SELECT is(:'p1'::text, left(:'key1', 12), 'its prefix is its first 12 characters');
SELECT is((SELECT name FROM lattice.api_keys WHERE id = :'k1'), 'ci', 'its name is trimmed');
SELECT ok((SELECT length(key_hash) = 32 AND position(convert_to(:'key1', 'UTF8') IN key_hash) = 0
             FROM lattice.api_keys WHERE id = :'k1'), 'only a 32-byte keyed hash is stored');
SELECT is(lattice.api_key_verify(:'key1'), :'a'::uuid, 'the key verifies to its account');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_verify(%L)', left(:'key1', 46) ||
              CASE WHEN right(:'key1', 1) = 'A' THEN 'B' ELSE 'A' END)),
          'PT401:invalid_api_key', 'one character off is refused');
SELECT is(pg_temp.err_code($$ SELECT lattice.api_key_verify('ltc_short') $$), 'PT401:invalid_api_key',
          'a malformed key is refused');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_verify(%L)', 'ltc_' || repeat('Z', 43))),
          'PT401:invalid_api_key', 'an unknown prefix is refused');
SELECT ok((SELECT last_used = :'t0'::timestamptz FROM lattice.api_keys WHERE id = :'k1'),
          'a verification in a writing transaction records last_used');

-- last_used to the minute: no write within the minute, none in read-only transactions
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '30 seconds');
SELECT lattice.api_key_verify(:'key1');
SELECT ok((SELECT last_used = :'t0'::timestamptz FROM lattice.api_keys WHERE id = :'k1'),
          'no write within the same minute');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '5 minutes');
SAVEPOINT ro;
SET LOCAL transaction_read_only = on;
SELECT is(lattice.api_key_verify(:'key1'), :'a'::uuid, 'a read-only transaction verifies without writing');
ROLLBACK TO SAVEPOINT ro;
SELECT ok((SELECT last_used = :'t0'::timestamptz FROM lattice.api_keys WHERE id = :'k1'),
          'last_used is not written read-only');
SELECT cmp_ok(lattice.flush_deferred(), '>=', 1, 'the touch waits for the next writing transaction');
SELECT ok((SELECT last_used = :'t0'::timestamptz + interval '5 minutes' FROM lattice.api_keys WHERE id = :'k1'),
          'which writes it');

-- revocation: at once, and its use is audited (deferred past the rollback of the refusal)
SELECT k.id AS k2, k.key AS key2 FROM lattice.api_key_create(:'a', 'to revoke') k \gset
UPDATE lattice.api_keys SET revoked_at = lattice.clock_now() WHERE id = :'k2';
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_verify(%L, ''{"client_addr": "192.0.2.9"}'')', :'key2')),
          'PT401:revoked_api_key', 'a revoked key is refused at once');
SELECT lattice.flush_deferred();
SELECT is((SELECT host(client_addr) FROM lattice.audit_log WHERE action = 'key.used_after_revocation' AND target = :'k2'),
          '192.0.2.9', 'using a revoked key is audited');

-- expiry
SELECT k.id AS k3, k.key AS key3 FROM lattice.api_key_create(:'a', 'short', :'t0'::timestamptz + interval '1 hour') k \gset
SELECT is(lattice.api_key_verify(:'key3'), :'a'::uuid, 'a key works before its expiry');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '2 hours');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_verify(%L)', :'key3')), 'PT401:expired_api_key',
          'and is refused after it');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_create(%L, ''x'', %L)', :'a', :'t0')),
          'PT400:invalid_expiry', 'an expiry in the past is refused');

-- rotation with a grace window
SELECT lattice.test_set_clock(:'t0');
SELECT r.id AS k1b, r.key AS key1b, r.old_key_expires_at AS old_exp, r.name AS rname
  FROM lattice.api_key_rotate(:'k1', 60) r \gset
SELECT is(:'rname'::text, 'ci'::text, 'the new key keeps the name');
SELECT is(:'old_exp'::timestamptz, :'t0'::timestamptz + interval '60 seconds', 'the old key expires after the grace');
SELECT is(lattice.api_key_verify(:'key1'), :'a'::uuid, 'the old key works during the grace');
SELECT is(lattice.api_key_verify(:'key1b'), :'a'::uuid, 'the new key works');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '61 seconds');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_verify(%L)', :'key1')), 'PT401:expired_api_key',
          'the old key is refused after the grace');
SELECT is(lattice.api_key_verify(:'key1b'), :'a'::uuid, 'the new key still works');
SELECT is((SELECT rotated_from FROM lattice.api_keys WHERE id = :'k1b'), :'k1'::uuid, 'the new key names its predecessor');
SELECT r.key AS key1c FROM lattice.api_key_rotate(:'k1b', 0) r \gset
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_verify(%L)', :'key1b')), 'PT401:expired_api_key',
          'a zero grace retires the old key at once');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_rotate(%L, 2592001)', :'k1')), 'PT400:invalid_grace',
          'the grace is at most 30 days');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_rotate(%L)', :'k2')), 'PT409:key_revoked',
          'a revoked key cannot be rotated');
SELECT lattice.test_set_tenant(:'b');
SELECT is(pg_temp.err_code(format('SELECT lattice.api_key_rotate(%L)', :'k1')), 'PT404:not_found',
          'another tenant cannot rotate the key');
SELECT is((SELECT count(*)::int FROM lattice.audit_log WHERE action IN ('key.created', 'key.rotated') AND user_id = :'a'), 5,
          'creations and rotations are audited');

-- ---- JWT ----
SELECT lattice.test_set_clock(:'t0');
SELECT lattice.test_set_tenant(:'a');
SELECT t.token AS tok, t.expires_at AS tok_exp FROM lattice.jwt_issue(NULL, NULL) t \gset
SELECT is(:'tok_exp'::timestamptz, date_trunc('second', :'t0'::timestamptz) + interval '1 hour',
          'a token lives one hour by default');
SELECT is(pg_temp.b64url_decode(split_part(:'tok', '.', 1))::jsonb ->> 'alg', 'HS256', 'tokens are HS256');
SELECT is(lattice.jwt_verify(:'tok'), :'a'::uuid, 'a token verifies to its account');
SELECT is(pg_temp.err_code($$ SELECT lattice.jwt_issue(3601, NULL) $$), 'PT400:invalid_ttl', 'at most one hour');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)',
              split_part(:'tok', '.', 1) || '.' ||
              pg_temp.b64url(replace(pg_temp.b64url_decode(split_part(:'tok', '.', 2)), :'a', :'b')) || '.' ||
              split_part(:'tok', '.', 3))),
          'PT401:invalid_token', 'a tampered payload is refused');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)',
              pg_temp.b64url('{"alg":"none","typ":"JWT"}') || '.' || split_part(:'tok', '.', 2) || '.')),
          'PT401:unsupported_alg', 'alg none is refused');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)',
              pg_temp.b64url(replace(pg_temp.b64url_decode(split_part(:'tok', '.', 1)), 'HS256', 'HS512')) || '.' ||
              split_part(:'tok', '.', 2) || '.' || split_part(:'tok', '.', 3))),
          'PT401:unsupported_alg', 'another alg is refused');
SELECT is(pg_temp.err_code($$ SELECT lattice.jwt_verify('abc.def') $$), 'PT401:invalid_token', 'two segments are refused');
SELECT is(pg_temp.err_code($$ SELECT lattice.jwt_verify('@@@.e30.') $$), 'PT401:invalid_token', 'bad base64url is refused');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', pg_temp.b64url('{"alg":"HS256"') || '.e30.x')),
          'PT401:invalid_token', 'bad JSON is refused');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '3631 seconds');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', :'tok')), 'PT401:token_expired',
          'an expired token is refused (after 30 s of skew)');
SELECT lattice.test_set_clock(:'t0'::timestamptz - interval '31 seconds');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', :'tok')), 'PT401:token_not_yet_valid',
          'a token from the future is refused');
SELECT lattice.test_set_clock(:'t0'::timestamptz - interval '20 seconds');
SELECT is(lattice.jwt_verify(:'tok'), :'a'::uuid, 'within the skew it is accepted');

-- key rotation: old tokens keep working until they could have expired
SELECT lattice.test_set_clock(:'t0');
SELECT lattice.rotate_secret('jwt');
SELECT is(lattice.jwt_verify(:'tok'), :'a'::uuid, 'a token of the retired key still verifies');
SELECT t.token AS tok2 FROM lattice.jwt_issue(60, NULL) t \gset
SELECT isnt(split_part(:'tok2', '.', 1), split_part(:'tok', '.', 1), 'new tokens name the new kid');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '3631 seconds');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', :'tok')), 'PT401:invalid_token',
          'the retired key stops verifying once its tokens are all expired');
SELECT is((SELECT count(*)::int FROM lattice.audit_unattributed WHERE action = 'secret.rotated' AND at >= now()), 1,
          'secret rotation is audited');

-- ---- sessions, CSRF and authenticate() ----
SELECT lattice.test_set_clock(:'t0');
SELECT lattice.test_set_tenant(:'a');
SELECT is(pg_temp.err_code('SELECT lattice.session_create(NULL)'), '42501:',
          'a session opens only after a password in the same transaction');
SELECT lattice.test_set_tenant(NULL);
SELECT lattice.login(:'a_email', 'alice password', NULL);
SELECT s.id AS sid, s.token AS stok, s.csrf AS csrf FROM lattice.session_create('{"client_addr": "192.0.2.1"}') s \gset
SELECT is(lattice.authenticate(jsonb_build_object('session', :'stok', 'method', 'GET'), 'session'), :'a'::uuid,
          'a session cookie authenticates a GET');
SELECT is(lattice.current_session_id(), :'sid'::uuid, 'and names its session');
SELECT is(pg_temp.err_code(format('SELECT lattice.authenticate(%L, ''session'')', jsonb_build_object('session', :'stok', 'method', 'POST'))),
          'PT403:csrf_failed', 'a POST without the CSRF token is refused');
SELECT is(pg_temp.err_code(format('SELECT lattice.authenticate(%L, ''session'')', jsonb_build_object(
              'session', :'stok', 'method', 'POST', 'csrf_cookie', 'forged', 'csrf_header', 'forged'))),
          'PT403:csrf_failed', 'a matching pair not bound to the session is refused');
SELECT is(lattice.authenticate(jsonb_build_object('session', :'stok', 'method', 'DELETE',
              'csrf_cookie', :'csrf', 'csrf_header', :'csrf'), 'session'), :'a'::uuid,
          'a DELETE with the CSRF cookie echoed in the header is accepted');
SELECT lattice.test_set_clock(:'t0'::timestamptz + interval '25 hours');
SELECT is(pg_temp.err_code(format('SELECT lattice.authenticate(%L, ''read'')', jsonb_build_object('session', :'stok', 'method', 'GET'))),
          'PT401:session_expired', 'an idle session expires');
UPDATE lattice.sessions SET revoked_at = now() WHERE id = :'sid';
SELECT is(pg_temp.err_code(format('SELECT lattice.authenticate(%L, ''read'')', jsonb_build_object('session', :'stok', 'method', 'GET'))),
          'PT401:invalid_session', 'a revoked session is refused');
SELECT is(pg_temp.err_code($$ SELECT lattice.authenticate('{"method": "GET"}', 'any') $$), 'PT401:missing_credentials',
          'no credential at all');
SELECT is(pg_temp.err_code(format('SELECT lattice.authenticate(%L, ''ingest'')',
              jsonb_build_object('bearer', :'tok2'))), 'PT401:credential_not_accepted',
          'ingest takes API keys only, never a bearer token');
SELECT lattice.test_set_clock(:'t0');
SELECT lattice.test_set_tenant(NULL);
SELECT is(lattice.authenticate(jsonb_build_object('api_key', :'key1c', 'bearer', 'junk'), 'any'), :'a'::uuid,
          'an API key authenticates (and comes first)');
SELECT is(lattice.current_user_id(), :'a'::uuid, 'authenticate sets the tenant');
SELECT is(lattice.current_auth_method(), 'api_key', 'and records how');

SELECT * FROM finish();
ROLLBACK;
