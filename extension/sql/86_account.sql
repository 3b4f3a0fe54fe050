-- The account lifecycle (docs/account.md): e-mail verification, password
-- reset and change, e-mail change, the account's own audit trail, two-factor
-- authentication, export, deletion and the retention of lapsed accounts.
-- Credentials and codes are checked in C (src/account_token.c,
-- account_reauth.c, account_totp.c); the routes below are the rules.

-- State ---------------------------------------------------------------------

ALTER TABLE lattice.users ADD COLUMN email_verified_at timestamptz;

-- Single-use links (src/account_token.c): only the token's BLAKE2b-256 is
-- kept; email is the address the link is about.  Used, superseded and
-- expired rows are removed by the lifecycle tick after a week.
CREATE TABLE lattice.account_tokens (
    id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose IN ('verify_email', 'change_email', 'alert_recipient')),
    token_hash  bytea NOT NULL,
    email       text,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX ON lattice.account_tokens (user_id, purpose) WHERE used_at IS NULL;

-- Password reset links (src/account_token.c), apart from the other links:
-- asking for one must cost the same whether the address has an account or
-- not, so it writes here (the owner's; on Citus the coordinator's) and not
-- on the account's shard.  No user_id: not a tenant table.
CREATE TABLE lattice.reset_links (
    token_hash  bytea PRIMARY KEY,
    account_id  uuid NOT NULL,
    email       text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX ON lattice.reset_links (account_id) WHERE used_at IS NULL;
REVOKE ALL ON lattice.reset_links FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.reset_links', '');

-- The TOTP secret, sealed with a key derived from the server pepper
-- (src/account_totp.c): the API role reads only ciphertext.  enabled_at is
-- NULL while enrolling; last_step is the last time step accepted (no replay).
CREATE TABLE lattice.account_mfa (
    user_id     uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    sealed      bytea NOT NULL,
    last_step   bigint,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    enabled_at  timestamptz
);

CREATE TABLE lattice.account_recovery_codes (
    id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    code_hash   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    used_at     timestamptz,
    PRIMARY KEY (user_id, id)
);

-- Notices the lifecycle tick sent, once each: kind and the date it is about.
CREATE TABLE lattice.account_notices (
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    kind        text NOT NULL,
    about       timestamptz NOT NULL,
    sent_at     timestamptz NOT NULL,
    PRIMARY KEY (user_id, kind, about)
);

-- Invoices of deleted accounts, kept for accounting and tax law for
-- lattice.retained_invoice_years (10) after the deletion; nothing else of
-- the account is kept.  No user_id: not a tenant table, the owner's.
CREATE TABLE lattice.retained_invoices (
    account_id          uuid NOT NULL,
    stripe_customer_id  text,
    stripe_invoice_id   text NOT NULL,
    number              text,
    amount_due          bigint,
    amount_paid         bigint,
    currency            text,
    status              text,
    period_start        timestamptz,
    period_end          timestamptz,
    created             timestamptz,
    deleted_at          timestamptz NOT NULL,
    keep_until          timestamptz NOT NULL,
    PRIMARY KEY (account_id, stripe_invoice_id)
);
REVOKE ALL ON lattice.retained_invoices FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.retained_invoices', '');

-- C entry points --------------------------------------------------------------

CREATE FUNCTION lattice.account_token_issue(user_id uuid, purpose text, email text) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_account_token_issue' LANGUAGE C VOLATILE;
CREATE FUNCTION lattice.account_token_claim(token text, purposes text[], req jsonb,
    OUT user_id uuid, OUT purpose text, OUT email text)
    AS 'MODULE_PATHNAME', 'lattice_account_token_claim' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.password_forgot(email text, req jsonb) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_password_forgot' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.email_normalise(email text) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_email_normalise' LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION lattice.account_password_check(password text, req jsonb) RETURNS boolean
    AS 'MODULE_PATHNAME', 'lattice_account_password_check' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.account_password_set(password text) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_account_password_set' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.account_mfa_verify(code text, req jsonb) RETURNS boolean
    AS 'MODULE_PATHNAME', 'lattice_account_mfa_verify' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.account_delete_begin(password text, code text, req jsonb) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_account_delete_begin' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.account_deleting() RETURNS boolean
    AS 'MODULE_PATHNAME', 'lattice_account_deleting' LANGUAGE C STABLE;
CREATE FUNCTION lattice.audit_event(action text, target text, details jsonb, req jsonb) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_audit_event' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- the deleting request (as lattice_app) moves its own invoices here
ALTER TABLE lattice.retained_invoices ENABLE ROW LEVEL SECURITY;
CREATE POLICY retain_own ON lattice.retained_invoices FOR INSERT TO lattice_app
    WITH CHECK (account_id = lattice.current_user_id() AND lattice.account_deleting());
GRANT INSERT ON lattice.retained_invoices TO lattice_app;

-- Helpers -----------------------------------------------------------------------

-- RFC 3986 percent-encoding of everything but the unreserved characters.
CREATE FUNCTION lattice.uri_encode(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT COALESCE(pg_catalog.string_agg(
               CASE WHEN c ~ '^[A-Za-z0-9._~-]$' THEN c
                    ELSE pg_catalog.regexp_replace(pg_catalog.upper(pg_catalog.encode(pg_catalog.convert_to(c, 'UTF8'), 'hex')),
                                                   '(..)', '%\1', 'g') END, '' ORDER BY n), '')
      FROM pg_catalog.regexp_split_to_table(s, '') WITH ORDINALITY AS x(c, n)
$$;

-- A link of the dashboard's public origin with a token
CREATE FUNCTION lattice.account_link(page text, token text) RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT lattice.billing_public_origin() || '/' || page || '?token=' || token $$;

-- Counts one attempt of the account at scope; raises 429 too_many_attempts past lim per period.
CREATE FUNCTION lattice.account_throttle(scope text, account uuid, lim bigint, period_seconds bigint)
RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_account_throttle' LANGUAGE C VOLATILE STRICT;

-- Queues a lifecycle e-mail to the account's own address, read as the caller
-- (the request's role: on Citus a transaction reaches a shard as one role,
-- and lattice.outbox_email, the owner's, would read it as another).
CREATE FUNCTION lattice.account_email(account uuid, template text, data jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
BEGIN
    SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
    PERFORM lattice.outbox_email(account, template, data, u.email, u.name);
END
$$;

-- Sends the verification link of the account's current address (the tenant's own rows).
CREATE FUNCTION lattice.account_send_verification(account uuid, email text, name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lattice.outbox_email(account, 'verify_email',
        jsonb_build_object('link', lattice.account_link('verify-email',
                                        lattice.account_token_issue(account, 'verify_email', email))),
        email, name);
END
$$;

-- Moves the sign-in address of the current tenant (the look-up is the
-- owner's); 409 email_taken when another account has it.
CREATE FUNCTION lattice.account_email_move(old_email text, new_email text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    moved integer;
BEGIN
    IF account IS NULL THEN
        RAISE EXCEPTION 'lattice.account_email_move: no authenticated tenant'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO lattice.account_emails (email, user_id) VALUES (new_email, account)
    ON CONFLICT (email) DO NOTHING;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved = 0 THEN
        PERFORM lattice.raise_http(409, 'email_taken', 'an account with this email exists');
    END IF;
    DELETE FROM lattice.account_emails e WHERE e.email = old_email AND e.user_id = account;
END
$$;

-- Whether an address is free for the current tenant to move to.
CREATE FUNCTION lattice.account_email_free(email text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN lattice.current_user_id() IS NOT NULL
       AND NOT EXISTS (SELECT FROM lattice.account_emails e WHERE e.email = account_email_free.email);
END
$$;

-- Every tenant table and the column naming the tenant, children before
-- their parents (from the catalog, as the RLS rules are: a new table cannot
-- be forgotten), without the tables in keep.
CREATE FUNCTION lattice.tenant_tables_delete_order(keep text[] DEFAULT '{}',
    OUT rel regclass, OUT tenant_column text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH RECURSIVE t AS (
        SELECT c.rel, c.dist_column FROM lattice.cluster_tables() c
         WHERE c.kind = 'distributed'
           AND NOT (c.rel::text = ANY (SELECT 'lattice.' || k FROM unnest(keep) k))
    ), fk AS (
        SELECT DISTINCT con.conrelid AS child, con.confrelid AS parent
          FROM pg_constraint con
         WHERE con.contype = 'f' AND con.conrelid <> con.confrelid
           AND con.connamespace = 'lattice'::regnamespace
    ), height(r, h) AS (
        SELECT t.rel::oid, 0 FROM t
        UNION ALL
        SELECT fk.parent, height.h + 1 FROM height JOIN fk ON fk.child = height.r WHERE height.h < 32
    )
    SELECT t.rel, t.dist_column
      FROM t JOIN (SELECT height.r, max(height.h) AS h FROM height GROUP BY height.r) x ON x.r = t.rel::oid
     ORDER BY x.h, t.rel::text;
END
$$;

-- Deletes every row of the account in every tenant table but those in keep;
-- returns the rows deleted.  Runs as the caller: the deleting request (RLS,
-- its own tenant) or the lifecycle tick (the owner).
CREATE FUNCTION lattice.tenant_rows_delete(account uuid, keep text[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    n bigint;
    total bigint := 0;
BEGIN
    FOR t IN SELECT * FROM lattice.tenant_tables_delete_order(keep) LOOP
        EXECUTE format('DELETE FROM %s WHERE %I = $1', t.rel, t.tenant_column) USING account;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    END LOOP;
    RETURN total;
END
$$;

-- What stays of an account whose access lapsed once its data is purged: the
-- account itself, its credentials, its billing and its audit trail.
CREATE FUNCTION lattice.account_identity_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE
AS $$
    SELECT '{users,api_keys,sessions,audit_log,subscriptions,invoices,account_tokens,account_mfa,account_recovery_codes,account_notices}'::text[]
$$;

-- The rows an account has in every tenant table (for tests and operators).
CREATE FUNCTION lattice.tenant_row_counts(account uuid, OUT rel regclass, OUT n bigint)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM lattice.tenant_tables_delete_order() LOOP
        rel := t.rel;
        EXECUTE format('SELECT count(*) FROM %s WHERE %I = $1', t.rel, t.tenant_column) INTO n USING account;
        RETURN NEXT;
    END LOOP;
END
$$;

-- After the tenant's rows are gone: its look-ups across tenants, its
-- finished outbox rows and Stripe events (the owner's), then the Stripe
-- cancellation and the confirmation e-mail, sent after the COMMIT by the
-- shim's worker.  Only for the current tenant, in the transaction that
-- proved the deletion.
CREATE FUNCTION lattice.account_forget(email text, name text, stripe_subscription_id text, req jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    t record;
BEGIN
    IF account IS NULL OR NOT lattice.account_deleting() THEN
        RAISE EXCEPTION 'lattice.account_forget: the deletion was not proved in this transaction'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    FOR t IN SELECT c.rel FROM lattice.cluster_tables() c
              WHERE c.kind = 'reference' AND EXISTS (
                    SELECT FROM pg_attribute a WHERE a.attrelid = c.rel AND a.attname = 'user_id' AND NOT a.attisdropped)
    LOOP
        EXECUTE format('DELETE FROM %s WHERE user_id = $1', t.rel) USING account;
    END LOOP;
    DELETE FROM lattice.stripe_events e WHERE e.account_id = account;
    DELETE FROM lattice.reset_links r WHERE r.account_id = account;
    DELETE FROM lattice.outbox o WHERE o.account_id = account AND o.status IN ('done', 'failed');
    IF stripe_subscription_id IS NOT NULL THEN
        INSERT INTO lattice.outbox (account_id, kind, purpose, method, path, params, idempotency_key)
        VALUES (account, 'stripe', 'account.delete_subscription', 'DELETE',
                '/v1/subscriptions/' || stripe_subscription_id, '[]', 'lattice-delete-' || account::text);
    END IF;
    PERFORM lattice.outbox_email(account, 'account_deleted',
        jsonb_build_object('kept_years', lattice.billing_setting('retained_invoice_years')), email, name);
    INSERT INTO lattice.audit_unattributed (action, target, client_addr, request_id, details)
    VALUES ('account.deleted', account::text, CAST(req ->> 'client_addr' AS inet), req ->> 'request_id',
            jsonb_build_object('subscription', stripe_subscription_id));
END
$$;

-- The routes ----------------------------------------------------------------------

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

-- Ten new recovery codes for the current tenant, the old ones gone.
CREATE FUNCTION lattice.account_recovery_codes_renew(account uuid) RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM lattice.recovery_codes_new();
    DELETE FROM lattice.account_recovery_codes c WHERE c.user_id = account;
    INSERT INTO lattice.account_recovery_codes (user_id, code_hash, created_at)
    SELECT account, h, lattice.clock_now() FROM unnest(r.hashes) h
    ON CONFLICT DO NOTHING;
    RETURN r.codes;
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

-- Records that a notice of kind about a date went to the account; false when
-- it already had (each notice is sent once).
CREATE FUNCTION lattice.account_notice_once(account uuid, kind text, about timestamptz, at timestamptz)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO lattice.account_notices (user_id, kind, about, sent_at)
    VALUES (account, kind, about, at) ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$$;

-- The lifecycle tick --------------------------------------------------------------
-- Run by the usage worker once an hour (src/ratelimit_worker.c) and by
-- tests with a pinned clock (lattice.test_set_clock): card-less trial
-- notices, the retention warning and purge of lapsed accounts, old links
-- and finished outbox rows removed.  Each notice once, recorded in lattice.account_notices.
-- Runs as the owner: it looks at every account.
CREATE FUNCTION lattice.lifecycle_tick() RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := lattice.clock_now();
    u record;
    e jsonb;
    kept timestamptz;
    trial_soon integer := 0;
    trial_over integer := 0;
    warned integer := 0;
    purged integer := 0;
    links integer;
    n integer;
BEGIN
    -- trials without a card: three days before the end, and at the end
    FOR u IN SELECT x.id, x.email, x.name, x.trial_ends_at FROM lattice.users x
              WHERE x.trial_ends_at > at - interval '7 days' AND x.trial_ends_at <= at + interval '3 days'
                AND NOT EXISTS (SELECT FROM lattice.subscriptions s
                                 WHERE s.user_id = x.id AND s.status <> 'incomplete') LOOP
        IF u.trial_ends_at > at THEN
            IF lattice.account_notice_once(u.id, 'trial_ending_soon', u.trial_ends_at, at) THEN
                PERFORM lattice.outbox_email(u.id, 'trial_ending_soon', jsonb_build_object(
                    'trial_end', lattice.email_date(u.trial_ends_at)), u.email, u.name);
                trial_soon := trial_soon + 1;
            END IF;
        ELSE
            IF lattice.account_notice_once(u.id, 'trial_ended', u.trial_ends_at, at) THEN
                PERFORM lattice.outbox_email(u.id, 'trial_ended', jsonb_build_object(
                    'kept_until', lattice.email_date(u.trial_ends_at + make_interval(days => lattice.billing_setting('retention_days')))), u.email, u.name);
                trial_over := trial_over + 1;
            END IF;
        END IF;
    END LOOP;

    -- lapsed accounts: a warning seven days before their data goes, then the purge
    FOR u IN SELECT x.id, x.email, x.name FROM lattice.users x
              WHERE x.trial_ends_at <= at
                AND NOT EXISTS (SELECT FROM lattice.subscriptions s
                                 WHERE s.user_id = x.id AND s.status IN ('trialing', 'active')) LOOP
        e := lattice.entitlement(u.id);
        kept := (e ->> 'data_kept_until')::timestamptz;
        CONTINUE WHEN kept IS NULL OR kept > at + interval '7 days'
                   OR EXISTS (SELECT FROM lattice.account_notices n
                               WHERE n.user_id = u.id AND n.kind = 'data_purged' AND n.about = kept);
        IF kept > at THEN
            IF lattice.account_notice_once(u.id, 'retention_warning', kept, at) THEN
                PERFORM lattice.outbox_email(u.id, 'retention_warning', jsonb_build_object(
                    'kept_until', lattice.email_date(kept)), u.email, u.name);
                warned := warned + 1;
            END IF;
        ELSE
            PERFORM lattice.tenant_rows_delete(u.id, lattice.account_identity_tables());
            PERFORM lattice.account_notice_once(u.id, 'data_purged', kept, at);
            PERFORM lattice.outbox_email(u.id, 'data_purged', '{}', u.email, u.name);
            PERFORM lattice.audit('account.data_purged', NULL, jsonb_build_object('kept_until', kept), NULL, u.id);
            purged := purged + 1;
        END IF;
    END LOOP;

    DELETE FROM lattice.account_tokens t
     WHERE t.expires_at < at - interval '7 days' OR t.used_at < at - interval '7 days';
    GET DIAGNOSTICS links = ROW_COUNT;
    DELETE FROM lattice.reset_links r
     WHERE r.expires_at < at - interval '7 days' OR r.used_at < at - interval '7 days';
    GET DIAGNOSTICS n = ROW_COUNT;
    links := links + n;
    DELETE FROM lattice.retained_invoices r WHERE r.keep_until < at;
    -- sent e-mails and finished calls are kept a month for support, no longer
    DELETE FROM lattice.outbox o WHERE o.status IN ('done', 'failed') AND o.done_at < at - interval '30 days';
    RETURN jsonb_build_object('trial_ending_soon', trial_soon, 'trial_ended', trial_over,
                              'retention_warnings', warned, 'purged', purged, 'links_removed', links);
END
$$;

-- Grants --------------------------------------------------------------------------

GRANT EXECUTE ON FUNCTION
    lattice.account_token_issue(uuid, text, text),
    lattice.account_token_claim(text, text[], jsonb),
    lattice.password_forgot(text, jsonb),
    lattice.email_normalise(text),
    lattice.account_password_check(text, jsonb),
    lattice.account_password_set(text),
    lattice.account_mfa_verify(text, jsonb),
    lattice.account_delete_begin(text, text, jsonb),
    lattice.account_deleting(),
    lattice.audit_event(text, text, jsonb, jsonb),
    lattice.uri_encode(text),
    lattice.account_link(text, text),
    lattice.account_throttle(text, uuid, bigint, bigint),
    lattice.account_send_verification(uuid, text, text),
    lattice.account_email(uuid, text, jsonb),
    lattice.account_email_move(text, text),
    lattice.account_email_free(text),
    lattice.tenant_tables_delete_order(text[]),
    lattice.tenant_rows_delete(uuid, text[]),
    lattice.account_forget(text, text, text, jsonb),
    lattice.account_recovery_codes_renew(uuid),
    lattice.account_mfa_reauth(uuid, jsonb, jsonb),
    lattice.outbox_email(uuid, text, jsonb, text, text)
    TO lattice_app;
GRANT EXECUTE ON FUNCTION lattice.tenant_row_counts(uuid), lattice.lifecycle_tick() TO lattice_admin;
