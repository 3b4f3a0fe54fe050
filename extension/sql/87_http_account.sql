-- The account lifecycle's routes (docs/account.md): password reset, e-mail
-- verification and change, the account page and its audit trail,
-- two-factor authentication, export and deletion.  Each is one lattice_http
-- function; the state and the rules they share are in 86_account.sql, and
-- credentials and codes are checked in C (src/account_token.c,
-- account_reauth.c, account_totp.c).

-- POST /api/v1/auth/password/forgot {email} -> 202, the same for every address
CREATE FUNCTION lattice_http.auth_password_forgot(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
BEGIN
    PERFORM lattice.password_forgot(lattice.auth_field(b, 'email'), req);
    RETURN lattice.http_json(202, jsonb_build_object('accepted', true,
        'message', 'if an account has this address, a link to reset its password is on its way'));
END
$$;

-- POST /api/v1/auth/password/reset {token, password} -> 200; every session
-- and pending reset link revoked, a notice e-mailed
CREATE FUNCTION lattice_http.auth_password_reset(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    c record;
    at timestamptz := lattice.clock_now();
    revoked integer;
BEGIN
    SELECT * INTO c FROM lattice.account_token_claim(lattice.auth_field(b, 'token'), '{reset_password}', req);
    PERFORM lattice.account_password_set(lattice.auth_field(b, 'password'));
    UPDATE lattice.sessions SET revoked_at = at WHERE user_id = c.user_id AND revoked_at IS NULL;
    GET DIAGNOSTICS revoked = ROW_COUNT;
    -- a pending e-mail change may be the intruder's: it ends with the reset
    UPDATE lattice.account_tokens SET used_at = at
     WHERE user_id = c.user_id AND purpose = 'change_email' AND used_at IS NULL;
    -- the link reached the account's address: it is verified
    UPDATE lattice.users SET email_verified_at = at
     WHERE id = c.user_id AND email_verified_at IS NULL AND email = c.email;
    PERFORM lattice.account_email(c.user_id, 'password_changed');
    PERFORM lattice.audit('password.reset', NULL, jsonb_build_object('sessions_revoked', revoked), req, c.user_id);
    RETURN lattice.http_json(200, jsonb_build_object('reset', true));
END
$$;

-- POST /api/v1/auth/email/verify {token} -> 200 {email, verified}: a
-- verification link, or the link of an e-mail change to the new address
CREATE FUNCTION lattice_http.auth_email_verify(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    c record;
    u record;
    at timestamptz := lattice.clock_now();
BEGIN
    SELECT * INTO c FROM lattice.account_token_claim(lattice.auth_field(b, 'token'),
                                                     '{verify_email,change_email}', req);
    SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = c.user_id;
    IF c.purpose = 'verify_email' THEN
        IF c.email IS DISTINCT FROM u.email THEN
            PERFORM lattice.raise_http(400, 'invalid_token', 'the link is for an address the account no longer has');
        END IF;
        UPDATE lattice.users SET email_verified_at = COALESCE(email_verified_at, at) WHERE id = c.user_id;
        PERFORM lattice.audit('email.verified', c.email, NULL, req, c.user_id);
    ELSE
        PERFORM lattice.account_email_move(u.email, c.email);
        UPDATE lattice.users SET email = c.email, email_verified_at = at, updated_at = at WHERE id = c.user_id;
        UPDATE lattice.account_tokens SET used_at = at
         WHERE user_id = c.user_id AND purpose IN ('verify_email', 'change_email') AND used_at IS NULL;
        PERFORM lattice.outbox_email(c.user_id, 'email_changed', jsonb_build_object('new_email', c.email),
                                     u.email, u.name);
        PERFORM lattice.audit('email.changed', c.email, jsonb_build_object('from', u.email), req, c.user_id);
    END IF;
    RETURN lattice.http_json(200, jsonb_build_object('email', c.email, 'verified', true));
END
$$;

-- GET /api/v1/account -> {user}
CREATE FUNCTION lattice_http.account_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('user', (
        SELECT jsonb_build_object(
                   'id', u.id, 'email', u.email, 'name', u.name, 'created_at', u.created_at,
                   'email_verified', u.email_verified_at IS NOT NULL,
                   'email_verified_at', u.email_verified_at,
                   'pending_email', (SELECT t.email FROM lattice.account_tokens t
                                      WHERE t.user_id = account AND t.purpose = 'change_email'
                                        AND t.used_at IS NULL AND t.expires_at > now
                                      ORDER BY t.created_at DESC LIMIT 1),
                   'mfa_enabled', EXISTS (SELECT FROM lattice.account_mfa m
                                           WHERE m.user_id = account AND m.enabled_at IS NOT NULL),
                   'recovery_codes_left', (SELECT count(*) FROM lattice.account_recovery_codes r
                                            WHERE r.user_id = account AND r.used_at IS NULL))
          FROM lattice.users u WHERE u.id = account)));
END
$$;

-- POST /api/v1/account/email/verify -> 202: the verification link again
CREATE FUNCTION lattice_http.account_verification_resend(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    u record;
BEGIN
    SELECT x.email, x.name, x.email_verified_at INTO u FROM lattice.users x WHERE x.id = account;
    IF u.email_verified_at IS NOT NULL THEN
        PERFORM lattice.raise_http(409, 'already_verified', 'the address is already verified');
    END IF;
    PERFORM lattice.account_throttle('verify_resend_minute', account, 1, 60);
    PERFORM lattice.account_throttle('verify_resend_day', account, 5, 86400);
    PERFORM lattice.account_send_verification(account, u.email, u.name);
    PERFORM lattice.audit('email.verification_sent', u.email, NULL, req, account);
    RETURN lattice.auth_answer(202, jsonb_build_object('sent', true));
END
$$;

-- POST /api/v1/account/password {current_password, new_password} -> 200;
-- every other session revoked
CREATE FUNCTION lattice_http.account_password_change(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    mine uuid := lattice.current_session_id();
    b jsonb := lattice.auth_body(body);
    at timestamptz := lattice.clock_now();
    revoked integer;
BEGIN
    IF NOT lattice.account_password_check(lattice.auth_field(b, 'current_password'), req) THEN
        RETURN lattice.http_error(403, 'wrong_password', 'the current password is wrong');
    END IF;
    PERFORM lattice.account_password_set(lattice.auth_field(b, 'new_password'));
    UPDATE lattice.sessions SET revoked_at = at
     WHERE user_id = account AND revoked_at IS NULL AND id IS DISTINCT FROM mine;
    GET DIAGNOSTICS revoked = ROW_COUNT;
    UPDATE lattice.account_tokens SET used_at = at
     WHERE user_id = account AND purpose = 'change_email' AND used_at IS NULL;
    PERFORM lattice.account_email(account, 'password_changed');
    PERFORM lattice.audit('password.changed', NULL, jsonb_build_object('sessions_revoked', revoked), req, account);
    RETURN lattice.auth_answer(200, jsonb_build_object('changed', true, 'sessions_revoked', revoked));
END
$$;

-- POST /api/v1/account/email {email, password} -> 202 {pending_email}: a
-- link to the new address, a notice to the old, which stays until then
CREATE FUNCTION lattice_http.account_email_change(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    new_email text;
    u record;
BEGIN
    new_email := lattice.email_normalise(COALESCE(lattice.auth_field(b, 'email'), ''));
    IF new_email IS NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_email', 'email is not a valid address',
                                   jsonb_build_object('path', '$.email'));
    END IF;
    IF NOT lattice.account_password_check(lattice.auth_field(b, 'password'), req) THEN
        RETURN lattice.http_error(403, 'wrong_password', 'the password is wrong');
    END IF;
    SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
    IF new_email = u.email THEN
        PERFORM lattice.raise_http(400, 'same_email', 'that is already the account''s address');
    END IF;
    IF NOT lattice.account_email_free(new_email) THEN
        PERFORM lattice.raise_http(409, 'email_taken', 'an account with this email exists');
    END IF;
    PERFORM lattice.account_throttle('email_change_day', account, 5, 86400);
    PERFORM lattice.outbox_email(account, 'email_change_verify',
        jsonb_build_object('link', lattice.account_link('verify-email',
                                        lattice.account_token_issue(account, 'change_email', new_email)),
                           'new_email', new_email),
        new_email, u.name);
    PERFORM lattice.outbox_email(account, 'email_change_requested', jsonb_build_object('new_email', new_email),
                                 u.email, u.name);
    PERFORM lattice.audit('email.change_requested', new_email, NULL, req, account);
    RETURN lattice.auth_answer(202, jsonb_build_object('pending_email', new_email));
END
$$;

-- GET /api/v1/account/audit?before=<id>&limit=<1..100> -> {events, next_before}
CREATE FUNCTION lattice_http.account_audit(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    lim integer := 50;
    before bigint;
    events jsonb;
BEGIN
    IF req #>> '{query,limit}' IS NOT NULL THEN
        IF req #>> '{query,limit}' !~ '^[0-9]{1,3}$' OR (req #>> '{query,limit}')::integer NOT BETWEEN 1 AND 100 THEN
            PERFORM lattice.raise_http(400, 'invalid_limit', 'limit must be 1 to 100',
                                       jsonb_build_object('path', 'query.limit'));
        END IF;
        lim := (req #>> '{query,limit}')::integer;
    END IF;
    IF req #>> '{query,before}' IS NOT NULL THEN
        IF req #>> '{query,before}' !~ '^[0-9]{1,18}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_cursor', 'before must be an event id',
                                       jsonb_build_object('path', 'query.before'));
        END IF;
        before := (req #>> '{query,before}')::bigint;
    END IF;
    SELECT COALESCE(jsonb_agg(jsonb_build_object('id', a.id, 'at', a.at, 'action', a.action,
                                                 'target', a.target, 'client_addr', host(a.client_addr),
                                                 'details', a.details) ORDER BY a.id DESC), '[]')
      INTO events
      FROM (SELECT * FROM lattice.audit_log x
             WHERE x.user_id = account AND (before IS NULL OR x.id < before)
             ORDER BY x.id DESC LIMIT lim) a;
    RETURN lattice.auth_answer(200, jsonb_build_object('events', events,
        'next_before', CASE WHEN jsonb_array_length(events) = lim THEN events -> (lim - 1) -> 'id' END));
END
$$;

-- POST /api/v1/account/2fa/setup {password} -> {secret, otpauth_uri}
CREATE FUNCTION lattice_http.account_mfa_setup(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    g record;
    email text;
BEGIN
    IF EXISTS (SELECT FROM lattice.account_mfa m WHERE m.user_id = account AND m.enabled_at IS NOT NULL) THEN
        PERFORM lattice.raise_http(409, 'mfa_already_enabled', 'two-factor authentication is already on');
    END IF;
    IF NOT lattice.account_password_check(lattice.auth_field(b, 'password'), req) THEN
        RETURN lattice.http_error(403, 'wrong_password', 'the password is wrong');
    END IF;
    SELECT * INTO g FROM lattice.totp_generate();
    INSERT INTO lattice.account_mfa (user_id, sealed, last_step, created_at, enabled_at)
    VALUES (account, g.sealed, NULL, lattice.clock_now(), NULL)
    ON CONFLICT (user_id) DO UPDATE SET sealed = EXCLUDED.sealed, last_step = NULL,
                                        created_at = EXCLUDED.created_at;
    SELECT u.email INTO email FROM lattice.users u WHERE u.id = account;
    PERFORM lattice.audit('mfa.setup_started', NULL, NULL, req, account);
    RETURN lattice.auth_answer(200, jsonb_build_object(
        'secret', g.secret,
        'otpauth_uri', 'otpauth://totp/Lattice:' || lattice.uri_encode(email) || '?secret=' || g.secret
                       || '&issuer=Lattice&algorithm=SHA1&digits=6&period=30'));
END
$$;

-- POST /api/v1/account/2fa/enable {code} -> {recovery_codes}
CREATE FUNCTION lattice_http.account_mfa_enable(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    m record;
    codes text[];
    at timestamptz := lattice.clock_now();
BEGIN
    SELECT x.enabled_at INTO m FROM lattice.account_mfa x WHERE x.user_id = account;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(409, 'mfa_not_set_up', 'start the set-up first');
    ELSIF m.enabled_at IS NOT NULL THEN
        PERFORM lattice.raise_http(409, 'mfa_already_enabled', 'two-factor authentication is already on');
    END IF;
    IF NOT lattice.account_mfa_verify(lattice.auth_field(b, 'code'), req) THEN
        RETURN lattice.http_error(401, 'invalid_code', 'the code is wrong or was already used');
    END IF;
    UPDATE lattice.account_mfa SET enabled_at = at WHERE user_id = account;
    codes := lattice.account_recovery_codes_renew(account);
    PERFORM lattice.account_email(account, 'mfa_enabled');
    PERFORM lattice.audit('mfa.enabled', NULL, NULL, req, account);
    RETURN lattice.auth_answer(200, jsonb_build_object('mfa_enabled', true, 'recovery_codes', to_jsonb(codes)));
END
$$;

-- Password and code, for turning 2FA off and for new recovery codes; NULL
-- when both are right, else the error answer.
CREATE FUNCTION lattice.account_mfa_reauth(account uuid, b jsonb, req jsonb) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM lattice.account_mfa m WHERE m.user_id = account AND m.enabled_at IS NOT NULL) THEN
        PERFORM lattice.raise_http(409, 'mfa_not_enabled', 'two-factor authentication is off');
    END IF;
    IF NOT lattice.account_password_check(lattice.auth_field(b, 'password'), req) THEN
        RETURN lattice.http_error(403, 'wrong_password', 'the password is wrong');
    END IF;
    IF NOT lattice.account_mfa_verify(lattice.auth_field(b, 'code'), req) THEN
        RETURN lattice.http_error(401, 'invalid_code', 'the code is wrong or was already used');
    END IF;
    RETURN NULL;
END
$$;

-- POST /api/v1/account/2fa/disable {password, code}
CREATE FUNCTION lattice_http.account_mfa_disable(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    refused lattice.http_response := lattice.account_mfa_reauth(account, lattice.auth_body(body), req);
BEGIN
    IF refused IS NOT NULL THEN
        RETURN refused;
    END IF;
    DELETE FROM lattice.account_recovery_codes WHERE user_id = account;
    DELETE FROM lattice.account_mfa WHERE user_id = account;
    PERFORM lattice.account_email(account, 'mfa_disabled');
    PERFORM lattice.audit('mfa.disabled', NULL, NULL, req, account);
    RETURN lattice.auth_answer(200, jsonb_build_object('mfa_enabled', false));
END
$$;

-- POST /api/v1/account/2fa/recovery-codes {password, code} -> {recovery_codes}
CREATE FUNCTION lattice_http.account_recovery_codes(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    refused lattice.http_response := lattice.account_mfa_reauth(account, lattice.auth_body(body), req);
    codes text[];
BEGIN
    IF refused IS NOT NULL THEN
        RETURN refused;
    END IF;
    codes := lattice.account_recovery_codes_renew(account);
    PERFORM lattice.audit('mfa.recovery_codes_renewed', NULL, NULL, req, account);
    RETURN lattice.auth_answer(200, jsonb_build_object('recovery_codes', to_jsonb(codes)));
END
$$;

-- GET /api/v1/account/export: everything the account owns, one JSON
-- document streamed row by row (the shim's R_STREAM): the account, then
-- each tenant table (from the catalog, so a new table is exported too)
-- without the columns that hold secrets or their hashes (bytea, passwords).
CREATE FUNCTION lattice_http.account_export(req jsonb, body text)
RETURNS SETOF lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    at timestamptz := lattice.clock_now();
    t record;
    hidden text[];
BEGIN
    PERFORM lattice.audit_event('account.exported', NULL, NULL, req);
    RETURN NEXT (200, jsonb_build_object(
        'Content-Type', 'application/json; charset=utf-8',
        'Content-Disposition', 'attachment; filename="lattice-export-' || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD') || '.json"',
        'Cache-Control', 'no-store'),
        '{"format":"lattice-export-1","exported_at":' || to_jsonb(at)::text
        || ',"account":' || (SELECT jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name,
                                                       'plan', u.plan_id, 'created_at', u.created_at,
                                                       'trial_ends_at', u.trial_ends_at,
                                                       'email_verified_at', u.email_verified_at)::text
                               FROM lattice.users u WHERE u.id = account)
        || ',"tables":{')::lattice.http_response;
    FOR t IN SELECT o.rel, o.tenant_column, row_number() OVER (ORDER BY o.rel::text) AS n
               FROM lattice.tenant_tables_delete_order('{users}') o
              ORDER BY o.rel::text LOOP
        SELECT array_agg(a.attname) INTO hidden FROM pg_attribute a
         WHERE a.attrelid = t.rel AND a.attnum > 0 AND NOT a.attisdropped
           AND (a.atttypid = 'bytea'::regtype OR a.attname IN ('password_hash', 'sealed'));
        RETURN NEXT (NULL, NULL, CASE WHEN t.n > 1 THEN ',' ELSE '' END
                                 || to_jsonb(replace(t.rel::text, 'lattice.', ''))::text || ':[')::lattice.http_response;
        RETURN QUERY EXECUTE format(
            'SELECT NULL::integer, NULL::jsonb,'
            '       CASE WHEN row_number() OVER () > 1 THEN '','' ELSE '''' END || (to_jsonb(x) - $2)::text'
            '  FROM %s x WHERE x.%I = $1', t.rel, t.tenant_column)
            USING account, COALESCE(hidden, '{}');
        RETURN NEXT (NULL, NULL, ']')::lattice.http_response;
    END LOOP;
    RETURN NEXT (NULL, NULL, '}}')::lattice.http_response;
END
$$;

-- DELETE /api/v1/account {password, code?} -> 200 {deleted}: every row of
-- the account in every tenant table is deleted now (invoices moved to
-- lattice.retained_invoices), its look-ups with them, so no credential
-- works from the COMMIT on; the subscription is cancelled and the
-- confirmation sent through the outbox.
CREATE FUNCTION lattice_http.account_delete(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    refusal text;
    u record;
    sub text;
    at timestamptz := lattice.clock_now();
    n bigint;
BEGIN
    refusal := lattice.account_delete_begin(lattice.auth_field(b, 'password'), lattice.auth_field(b, 'code'), req);
    IF refusal = 'wrong_password' THEN
        RETURN lattice.http_error(403, 'wrong_password', 'the password is wrong');
    ELSIF refusal = 'mfa_required' THEN
        RETURN lattice.http_error(401, 'mfa_required', 'this account needs its two-factor code');
    ELSIF refusal IS NOT NULL THEN
        RETURN lattice.http_error(401, 'invalid_code', 'the code is wrong or was already used');
    END IF;
    SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
    SELECT s.stripe_subscription_id INTO sub FROM lattice.subscriptions s
     WHERE s.user_id = account AND s.status IN ('trialing', 'active', 'past_due', 'unpaid', 'paused', 'incomplete');
    INSERT INTO lattice.retained_invoices (account_id, stripe_customer_id, stripe_invoice_id, number, amount_due,
                                           amount_paid, currency, status, period_start, period_end, created,
                                           deleted_at, keep_until)
    SELECT i.user_id, (SELECT bc.stripe_customer_id FROM lattice.subscriptions bc WHERE bc.user_id = account),
           i.stripe_invoice_id, i.number, i.amount_due, i.amount_paid, i.currency, i.status,
           i.period_start, i.period_end, i.created, at,
           at + make_interval(years => lattice.billing_setting('retained_invoice_years'))
      FROM lattice.invoices i WHERE i.user_id = account;
    n := lattice.tenant_rows_delete(account);
    PERFORM lattice.account_forget(u.email, u.name, sub, req);
    RETURN lattice.http_json(200, jsonb_build_object('deleted', true, 'rows_deleted', n),
                             lattice.session_cookies(NULL, NULL, 0, req));
END
$$;

GRANT EXECUTE ON FUNCTION lattice.account_mfa_reauth(uuid, jsonb, jsonb) TO lattice_app;
