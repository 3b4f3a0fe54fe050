-- lattice 0.3.0 -> 0.4.0: the account lifecycle (docs/account.md): e-mail
-- verification, password reset and change, e-mail change, two-factor
-- authentication, export, deletion, retention of lapsed accounts
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.4.0'" to load this file. \quit

ALTER TABLE lattice.users ADD COLUMN email_verified_at timestamptz;

-- Single-use links (src/account_token.c): only the token's BLAKE2b-256 is
-- kept; email is the address the link is about.  Used, superseded and
-- expired rows are removed by the lifecycle tick after a week.
CREATE TABLE lattice.account_tokens (
    id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose IN ('verify_email', 'change_email')),
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

-- As 90_security.sql leaves every table with a user_id column: RLS enabled
-- and forced, the four tenant policies, the grants.
DO $security$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY['lattice.account_tokens', 'lattice.account_mfa',
                             'lattice.account_recovery_codes', 'lattice.account_notices']::regclass[] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_select ON %s FOR SELECT USING (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_update ON %s FOR UPDATE USING (user_id = lattice.current_user_id()) WITH CHECK (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_delete ON %s FOR DELETE USING (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO lattice_app', t);
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO lattice_admin', t);
        PERFORM pg_catalog.pg_extension_config_dump(t, '');
    END LOOP;
END
$security$;

-- Accounts that existed before verification count as verified: their
-- owners were never asked.
UPDATE lattice.users SET email_verified_at = created_at WHERE email_verified_at IS NULL;

-- Functions first (the policies below call lattice.account_deleting()).
-- Functions: dropped, then every new or changed definition.

CREATE OR REPLACE FUNCTION lattice.account_delete_begin(password text, code text, req jsonb)
 RETURNS text
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_account_delete_begin$function$;

CREATE OR REPLACE FUNCTION lattice.account_deleting()
 RETURNS boolean
 LANGUAGE c
 STABLE
AS '$libdir/lattice', $function$lattice_account_deleting$function$;

CREATE OR REPLACE FUNCTION lattice.account_email(account uuid, template text, data jsonb DEFAULT '{}'::jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    u record;
BEGIN
    SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
    PERFORM lattice.outbox_email(account, template, data, u.email, u.name);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.account_email_free(email text)
 RETURNS boolean
 LANGUAGE plpgsql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    RETURN lattice.current_user_id() IS NOT NULL
       AND NOT EXISTS (SELECT FROM lattice.account_emails e WHERE e.email = account_email_free.email);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.account_email_move(old_email text, new_email text)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.account_forget(email text, name text, stripe_subscription_id text, req jsonb)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.account_identity_tables()
 RETURNS text[]
 LANGUAGE sql
 IMMUTABLE
AS $function$
    SELECT '{users,api_keys,sessions,audit_log,subscriptions,invoices,account_tokens,account_mfa,account_recovery_codes,account_notices}'::text[]
$function$;

CREATE OR REPLACE FUNCTION lattice.account_link(page text, token text)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$ SELECT lattice.billing_public_origin() || '/' || page || '?token=' || token $function$;

CREATE OR REPLACE FUNCTION lattice.account_mfa_reauth(account uuid, b jsonb, req jsonb)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.account_mfa_verify(code text, req jsonb)
 RETURNS boolean
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_account_mfa_verify$function$;

CREATE OR REPLACE FUNCTION lattice.account_notice_once(account uuid, kind text, about timestamp with time zone, at timestamp with time zone)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    INSERT INTO lattice.account_notices (user_id, kind, about, sent_at)
    VALUES (account, kind, about, at) ON CONFLICT DO NOTHING;
    RETURN FOUND;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.account_password_check(password text, req jsonb)
 RETURNS boolean
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_account_password_check$function$;

CREATE OR REPLACE FUNCTION lattice.account_password_set(password text)
 RETURNS void
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_account_password_set$function$;

CREATE OR REPLACE FUNCTION lattice.account_recovery_codes_renew(account uuid)
 RETURNS text[]
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.account_send_verification(account uuid, email text, name text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.outbox_email(account, 'verify_email',
        jsonb_build_object('link', lattice.account_link('verify-email',
                                        lattice.account_token_issue(account, 'verify_email', email))),
        email, name);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.account_throttle(scope text, account uuid, lim bigint, period_seconds bigint)
 RETURNS void
 LANGUAGE c
 STRICT
AS '$libdir/lattice', $function$lattice_account_throttle$function$;

CREATE OR REPLACE FUNCTION lattice.account_token_claim(token text, purposes text[], req jsonb, OUT user_id uuid, OUT purpose text, OUT email text)
 RETURNS record
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_account_token_claim$function$;

CREATE OR REPLACE FUNCTION lattice.account_token_issue(user_id uuid, purpose text, email text)
 RETURNS text
 LANGUAGE c
AS '$libdir/lattice', $function$lattice_account_token_issue$function$;

CREATE OR REPLACE FUNCTION lattice.audit_event(action text, target text, details jsonb, req jsonb)
 RETURNS void
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_audit_event$function$;

CREATE OR REPLACE FUNCTION lattice.base32_encode(data bytea)
 RETURNS text
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE STRICT
AS '$libdir/lattice', $function$lattice_base32_encode$function$;

CREATE OR REPLACE FUNCTION lattice.email_date(t timestamp with time zone)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT to_char(t AT TIME ZONE 'UTC', 'FMMonth FMDD, YYYY')
$function$;

CREATE OR REPLACE FUNCTION lattice.email_normalise(email text)
 RETURNS text
 LANGUAGE c
 IMMUTABLE STRICT
AS '$libdir/lattice', $function$lattice_email_normalise$function$;

CREATE OR REPLACE FUNCTION lattice.lifecycle_tick()
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.password_forgot(email text, req jsonb)
 RETURNS void
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_password_forgot$function$;

CREATE OR REPLACE FUNCTION lattice.recovery_code_match(code text, hashes bytea[])
 RETURNS integer
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE
AS '$libdir/lattice', $function$lattice_recovery_code_match$function$;

CREATE OR REPLACE FUNCTION lattice.recovery_codes_new(OUT codes text[], OUT hashes bytea[])
 RETURNS record
 LANGUAGE c
AS '$libdir/lattice', $function$lattice_recovery_codes_new$function$;

CREATE OR REPLACE FUNCTION lattice.tenant_row_counts(account uuid, OUT rel regclass, OUT n bigint)
 RETURNS SETOF record
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM lattice.tenant_tables_delete_order() LOOP
        rel := t.rel;
        EXECUTE format('SELECT count(*) FROM %s WHERE %I = $1', t.rel, t.tenant_column) INTO n USING account;
        RETURN NEXT;
    END LOOP;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.tenant_rows_delete(account uuid, keep text[] DEFAULT '{}'::text[])
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.tenant_tables_delete_order(keep text[] DEFAULT '{}'::text[], OUT rel regclass, OUT tenant_column text)
 RETURNS SETOF record
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.totp_check(sealed bytea, code text, last_step bigint, at timestamp with time zone)
 RETURNS bigint
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_totp_check$function$;

CREATE OR REPLACE FUNCTION lattice.totp_code(secret bytea, step bigint, digits integer DEFAULT 6)
 RETURNS text
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE STRICT
AS '$libdir/lattice', $function$lattice_totp_code$function$;

CREATE OR REPLACE FUNCTION lattice.totp_generate(OUT secret text, OUT sealed bytea)
 RETURNS record
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_totp_generate$function$;

CREATE OR REPLACE FUNCTION lattice.uri_encode(s text)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE STRICT
AS $function$
    SELECT COALESCE(pg_catalog.string_agg(
               CASE WHEN c ~ '^[A-Za-z0-9._~-]$' THEN c
                    ELSE pg_catalog.regexp_replace(pg_catalog.upper(pg_catalog.encode(pg_catalog.convert_to(c, 'UTF8'), 'hex')),
                                                   '(..)', '%\1', 'g') END, '' ORDER BY n), '')
      FROM pg_catalog.regexp_split_to_table(s, '') WITH ORDINALITY AS x(c, n)
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_audit(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_delete(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_email_change(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_export(req jsonb, body text)
 RETURNS SETOF lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_get(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_mfa_disable(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_mfa_enable(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_mfa_setup(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_password_change(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_recovery_codes(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.account_verification_resend(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_email_verify(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_password_forgot(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b jsonb := lattice.auth_body(body);
BEGIN
    PERFORM lattice.password_forgot(lattice.auth_field(b, 'email'), req);
    RETURN lattice.http_json(202, jsonb_build_object('accepted', true,
        'message', 'if an account has this address, a link to reset its password is on its way'));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_password_reset(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_checkout(req jsonb)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.current_user_id();
    u record;
    customer text;
    job bigint;
BEGIN
    SELECT x.id, x.email, x.name, x.email_verified_at, pl.stripe_price_id INTO u
      FROM lattice.users x JOIN lattice.plans pl ON pl.id = x.plan_id WHERE x.id = account;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(401, 'unauthorized', 'no authenticated account');
    END IF;
    IF u.email_verified_at IS NULL THEN
        PERFORM lattice.raise_http(403, 'email_unverified',
            'confirm your e-mail address first: receipts and notices go there');
    END IF;
    IF u.stripe_price_id IS NULL THEN
        PERFORM lattice.raise_http(503, 'billing_not_configured', 'the plan has no Stripe price yet');
    END IF;
    IF EXISTS (SELECT FROM lattice.subscriptions s WHERE s.user_id = account
                AND s.status IN ('trialing', 'active', 'past_due', 'unpaid', 'paused')) THEN
        PERFORM lattice.raise_http(409, 'already_subscribed',
            'the account already has a subscription; manage it in the billing portal');
    END IF;
    SELECT bc.stripe_customer_id INTO customer FROM lattice.billing_customers bc WHERE bc.user_id = account;
    IF customer IS NULL THEN
        job := lattice.outbox_enqueue_stripe('checkout.customer', 'POST', '/v1/customers',
            pg_catalog.jsonb_build_array(
                pg_catalog.jsonb_build_array('email', u.email),
                pg_catalog.jsonb_build_array('name', u.name),
                pg_catalog.jsonb_build_array('metadata[user_id]', account::text)),
            -- one customer per account, even when two checkouts race
            'lattice-customer-' || account::text);
    ELSE
        job := lattice.outbox_enqueue_stripe('checkout.session', 'POST', '/v1/checkout/sessions',
            lattice.billing_checkout_params(account, customer),
            'lattice-checkout-' || pg_catalog.gen_random_uuid()::text);
    END IF;
    PERFORM lattice.audit('billing.checkout_started', NULL, pg_catalog.jsonb_build_object('job', job), req, account);
    RETURN lattice.outbound_answer(job);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_checkout_params(account uuid, customer text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    p record;
    trial_used boolean;
    origin text := lattice.billing_public_origin();
    params jsonb;
BEGIN
    SELECT pl.*, u.trial_ends_at INTO p FROM lattice.users u JOIN lattice.plans pl ON pl.id = u.plan_id
     WHERE u.id = account;
    trial_used := EXISTS (SELECT FROM lattice.subscriptions s WHERE s.user_id = account
                           AND (s.trial_start IS NOT NULL OR s.status NOT IN ('incomplete', 'incomplete_expired')));
    params := pg_catalog.jsonb_build_array(
        pg_catalog.jsonb_build_array('mode', 'subscription'),
        pg_catalog.jsonb_build_array('customer', customer),
        pg_catalog.jsonb_build_array('client_reference_id', account::text),
        pg_catalog.jsonb_build_array('line_items[0][price]', p.stripe_price_id),
        pg_catalog.jsonb_build_array('line_items[0][quantity]', '1'),
        pg_catalog.jsonb_build_array('success_url', origin || '/dashboard/billing?checkout=success&session_id={CHECKOUT_SESSION_ID}'),
        pg_catalog.jsonb_build_array('cancel_url', origin || '/dashboard/billing?checkout=canceled'),
        pg_catalog.jsonb_build_array('metadata[user_id]', account::text),
        pg_catalog.jsonb_build_array('subscription_data[metadata][user_id]', account::text));
    -- The trial is the sign-up's: what is left of it carries over (Stripe
    -- wants a trial end at least 48 hours ahead), never a second one.
    IF NOT trial_used AND p.trial_ends_at > lattice.clock_now() + interval '48 hours' THEN
        params := params || pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_array('subscription_data[trial_end]',
                                         floor(extract(epoch FROM p.trial_ends_at))::bigint::text));
    END IF;
    RETURN params;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_email_content(template text, name text, data jsonb, OUT subject text, OUT text_body text, OUT html_body text)
 RETURNS record
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    lines text[];
    footer text := 'You receive this message because you have a Lattice account; it is about '
                   'your account and billing, so it is sent regardless of preferences.';
    origin text := COALESCE(data ->> 'origin', '');
BEGIN
    CASE template
    WHEN 'welcome' THEN
        subject := 'Welcome to Lattice';
        lines := ARRAY['Your Lattice account is ready.',
                       'Your free trial runs until ' || COALESCE(data ->> 'trial_ends', 'the end of the trial') || '.',
                       'Create an API key in the dashboard and point your plugins at Lattice: ' || origin || '/dashboard'];
    WHEN 'trial_ending' THEN
        subject := 'Your Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon');
        lines := ARRAY['Your Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon') || '.',
                       'Your subscription then continues at ' || COALESCE(data ->> 'price', 'the plan price')
                       || ' a year. Manage it at ' || origin || '/dashboard/billing'];
    WHEN 'payment_failed' THEN
        subject := 'Your Lattice payment failed';
        lines := ARRAY['We could not collect ' || COALESCE(data ->> 'amount', 'your payment')
                       || ' for invoice ' || COALESCE(data ->> 'number', '') || '.',
                       'Ingest keeps working for a grace period. Update your card at ' || origin || '/dashboard/billing'];
    WHEN 'subscription_canceled' THEN
        subject := 'Your Lattice subscription has been canceled';
        lines := ARRAY['Your Lattice subscription has ended. Your data is kept read-only until '
                       || COALESCE(data ->> 'kept_until', 'the retention period ends') || '.',
                       'You can subscribe again at any time: ' || origin || '/dashboard/billing'];
    WHEN 'receipt' THEN
        subject := 'Your Lattice receipt ' || COALESCE(data ->> 'number', '');
        lines := ARRAY['Thank you. We received ' || COALESCE(data ->> 'amount', 'your payment')
                       || ' for invoice ' || COALESCE(data ->> 'number', '') || '.',
                       'Invoice: ' || COALESCE(data ->> 'hosted_invoice_url', origin || '/dashboard/billing')];
    WHEN 'trial_ending_soon' THEN
        subject := 'Your Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon');
        lines := ARRAY['Your free Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon') || '.',
                       'Subscribe before then to keep your services reporting: ' || origin || '/dashboard/billing'];
    WHEN 'trial_ended' THEN
        subject := 'Your Lattice trial has ended';
        lines := ARRAY['Your free Lattice trial has ended, so Lattice no longer accepts data from your services.',
                       'Your data is kept read-only until ' || COALESCE(data ->> 'kept_until', 'the retention period ends')
                       || '. Subscribe to continue: ' || origin || '/dashboard/billing'];
    WHEN 'renewal_reminder' THEN
        subject := 'Your Lattice subscription renews on ' || COALESCE(data ->> 'renews_on', 'soon');
        lines := ARRAY['Your Lattice subscription renews on ' || COALESCE(data ->> 'renews_on', 'soon')
                       || ' for ' || COALESCE(data ->> 'amount', 'the plan price') || '.',
                       'Nothing to do if you want to continue. To change or cancel it: ' || origin || '/dashboard/billing'];
    WHEN 'retention_warning' THEN
        subject := 'Your Lattice data will be removed on ' || COALESCE(data ->> 'kept_until', 'soon');
        lines := ARRAY['Your Lattice account has no active subscription. Its service data will be removed on '
                       || COALESCE(data ->> 'kept_until', 'soon') || '.',
                       'Subscribe before then to keep it, or download a copy: ' || origin || '/dashboard/account'];
    WHEN 'data_purged' THEN
        subject := 'Your Lattice service data has been removed';
        lines := ARRAY['As announced, the service data of your Lattice account has been removed.',
                       'Your account and invoices remain; you can subscribe again at any time: ' || origin || '/dashboard/billing'];
    WHEN 'verify_email' THEN
        subject := 'Confirm your e-mail address for Lattice';
        lines := ARRAY['Please confirm that this is your address by opening this link (it works for 48 hours):',
                       COALESCE(data ->> 'link', ''),
                       'If you did not sign up for Lattice, you can ignore this message.'];
    WHEN 'email_change_verify' THEN
        subject := 'Confirm your new e-mail address for Lattice';
        lines := ARRAY['Open this link to make ' || COALESCE(data ->> 'new_email', 'this address')
                       || ' the address of your Lattice account (it works for 24 hours):',
                       COALESCE(data ->> 'link', ''),
                       'If you did not ask for this, ignore this message: nothing changes.'];
    WHEN 'email_change_requested' THEN
        subject := 'A change of your Lattice e-mail address was requested';
        lines := ARRAY['Someone signed in to your Lattice account asked to change its address to '
                       || COALESCE(data ->> 'new_email', 'another address') || '.',
                       'This address stays in use until the new one is confirmed. If it was not you, change your password: '
                       || origin || '/forgot-password'];
    WHEN 'email_changed' THEN
        subject := 'The e-mail address of your Lattice account was changed';
        lines := ARRAY['The address of your Lattice account is now ' || COALESCE(data ->> 'new_email', 'a new one') || '.',
                       'If it was not you, contact us by replying to this message.'];
    WHEN 'password_reset' THEN
        subject := 'Reset your Lattice password';
        lines := ARRAY['Open this link to choose a new password (it works for one hour, once):',
                       COALESCE(data ->> 'link', ''),
                       'If you did not ask for this, ignore this message: your password stays as it is.'];
    WHEN 'password_changed' THEN
        subject := 'Your Lattice password was changed';
        lines := ARRAY['The password of your Lattice account was just changed, and your other sessions were signed out.',
                       'If it was not you, reset it now: ' || origin || '/forgot-password'];
    WHEN 'mfa_enabled' THEN
        subject := 'Two-factor authentication is on for your Lattice account';
        lines := ARRAY['Signing in to your Lattice account now needs a code from your authenticator app.',
                       'Keep your recovery codes somewhere safe. If it was not you, reset your password: '
                       || origin || '/forgot-password'];
    WHEN 'mfa_disabled' THEN
        subject := 'Two-factor authentication is off for your Lattice account';
        lines := ARRAY['Signing in to your Lattice account no longer needs a code.',
                       'If it was not you, reset your password now: ' || origin || '/forgot-password'];
    WHEN 'account_deleted' THEN
        subject := 'Your Lattice account has been deleted';
        lines := ARRAY['Your Lattice account and all of its data have been deleted, and any subscription cancelled.',
                       'Only the invoices are kept, for ' || COALESCE(data ->> 'kept_years', '10')
                       || ' years, as accounting and tax law require.'];
    ELSE
        RAISE EXCEPTION 'lattice.billing_email_content: unknown template "%"', template
            USING ERRCODE = 'invalid_parameter_value';
    END CASE;
    text_body := 'Hello' || COALESCE(' ' || name, '') || E',\r\n\r\n'
                 || array_to_string(lines, E'\r\n\r\n') || E'\r\n\r\n-- \r\nLattice\r\n' || footer || E'\r\n';
    html_body := '<!doctype html><html><body><p>Hello' || COALESCE(' ' || lattice.html_escape(name), '') || ',</p>'
                 || (SELECT string_agg('<p>' || lattice.html_escape(l) || '</p>', '') FROM unnest(lines) AS l)
                 || '<hr><p style="color:#666;font-size:12px">Lattice. ' || lattice.html_escape(footer)
                 || '</p></body></html>';
END
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_welcome(account uuid, email text, name text, trial_ends timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.outbox_email(account, 'welcome',
        pg_catalog.jsonb_build_object('trial_ends', lattice.email_date(trial_ends)),
        email, name);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.entitlement(user_id uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    u record;
    s record;
    grace interval := pg_catalog.make_interval(days => lattice.billing_setting('past_due_grace_days'));
    kept interval := pg_catalog.make_interval(days => lattice.billing_setting('retention_days'));
    state text;
    warning text;
    grace_ends timestamptz;
    lapsed_at timestamptz;
    now timestamptz := lattice.clock_now();
BEGIN
    SELECT x.trial_ends_at INTO u FROM lattice.users x WHERE x.id = entitlement.user_id;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('state', 'unknown', 'may_ingest', false, 'read_only', true,
                                             'status', 'none', 'code', 'subscription_required');
    END IF;
    SELECT x.* INTO s FROM lattice.subscriptions x WHERE x.user_id = entitlement.user_id;

    IF s IS NULL OR s.status IN ('incomplete') THEN
        IF u.trial_ends_at > now THEN
            state := 'trial';
        ELSE
            state := 'read_only';
            lapsed_at := u.trial_ends_at;
        END IF;
    ELSIF s.status IN ('trialing', 'active') THEN
        state := 'full';
    ELSIF s.status = 'past_due' THEN
        grace_ends := COALESCE(s.past_due_since, s.state_at, now) + grace;
        IF grace_ends > now THEN
            state := 'grace';
            warning := 'payment past due: update your payment method before '
                       || to_char(grace_ends AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                       || ' to keep ingesting';
        ELSE
            state := 'read_only';
            lapsed_at := grace_ends;
        END IF;
    ELSE
        state := 'read_only';
        lapsed_at := COALESCE(s.ended_at, s.canceled_at, s.state_at);
    END IF;

    RETURN pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'state', state,
        'may_ingest', state IN ('trial', 'full', 'grace'),
        'read_only', state = 'read_only',
        'status', COALESCE(s.status, CASE WHEN state = 'trial' THEN 'trial' ELSE 'none' END),
        'trial_ends_at', CASE WHEN s IS NULL OR s.status = 'incomplete' THEN u.trial_ends_at ELSE s.trial_end END,
        'grace_ends_at', grace_ends,
        'warning', warning,
        'code', CASE WHEN state = 'read_only' THEN 'subscription_required' END,
        'data_kept_until', lapsed_at + kept));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.stripe_apply_event(event_id text)
 RETURNS text
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    ev record;
    obj jsonb;
    cust text;
    account uuid;
    applied boolean := false;
    result text;
    trial_end timestamptz;
BEGIN
    SELECT e.* INTO ev FROM lattice.stripe_events e WHERE e.id = event_id FOR UPDATE;
    IF ev.outcome NOT IN ('received', 'unmatched') THEN
        RETURN ev.outcome;      -- applied once, whichever path reached it first
    END IF;
    obj := ev.payload #> '{data,object}';
    IF ev.type NOT IN ('checkout.session.completed', 'customer.subscription.created',
                       'customer.subscription.updated', 'customer.subscription.deleted',
                       'customer.subscription.trial_will_end', 'customer.subscription.paused',
                       'customer.subscription.resumed', 'invoice.paid', 'invoice.payment_succeeded',
                       'invoice.payment_failed', 'invoice.finalized', 'invoice.updated', 'invoice.voided',
                       'invoice.marked_uncollectible', 'invoice.upcoming')
       OR pg_catalog.jsonb_typeof(obj) IS DISTINCT FROM 'object' THEN
        UPDATE lattice.stripe_events SET outcome = 'ignored', applied_at = pg_catalog.now() WHERE id = event_id;
        RETURN 'ignored';
    END IF;

    cust := CASE pg_catalog.jsonb_typeof(obj -> 'customer')
                    WHEN 'string' THEN obj ->> 'customer'
                    WHEN 'object' THEN obj #>> '{customer,id}' END;
    account := lattice.stripe_resolve_account(cust,
                   ARRAY[obj #>> '{metadata,user_id}', obj ->> 'client_reference_id',
                         obj #>> '{subscription_details,metadata,user_id}']);
    IF account IS NULL THEN
        UPDATE lattice.stripe_events SET outcome = 'unmatched', customer = cust
         WHERE id = event_id;
        RETURN 'unmatched';
    END IF;

    IF ev.type = 'checkout.session.completed' THEN
        -- the customer is now linked (resolve_account did it); the
        -- subscription's state comes with its own events
        applied := true;
        PERFORM lattice.audit('billing.checkout_completed', obj ->> 'id',
                              pg_catalog.jsonb_build_object('subscription', obj -> 'subscription', 'event', event_id),
                              NULL, account);
    ELSIF ev.type LIKE 'customer.subscription.%' THEN
        applied := lattice.stripe_apply_subscription(account, obj, ev.created, event_id);
        IF applied AND ev.type = 'customer.subscription.deleted' THEN
            PERFORM lattice.outbox_email(account, 'subscription_canceled', pg_catalog.jsonb_build_object(
                'kept_until', lattice.email_date(ev.created + pg_catalog.make_interval(days => lattice.billing_setting('retention_days')))));
        ELSIF applied AND ev.type = 'customer.subscription.trial_will_end' THEN
            trial_end := lattice.stripe_time(obj -> 'trial_end');
            PERFORM lattice.outbox_email(account, 'trial_ending', pg_catalog.jsonb_build_object(
                'trial_end', lattice.email_date(trial_end),
                'price', (SELECT lattice.billing_money(p.price_cents, p.currency)
                            FROM lattice.users u JOIN lattice.plans p ON p.id = u.plan_id WHERE u.id = account)));
        END IF;
    ELSIF ev.type = 'invoice.upcoming' THEN
        -- a preview (no id, nothing to store): the reminder before a renewal charge
        applied := true;
        PERFORM lattice.outbox_email(account, 'renewal_reminder', pg_catalog.jsonb_build_object(
            'renews_on', lattice.email_date(COALESCE(lattice.stripe_time(obj -> 'next_payment_attempt'),
                                                 lattice.stripe_time(obj -> 'period_end'))),
            'amount', lattice.billing_money((obj ->> 'amount_due')::bigint, obj ->> 'currency')));
    ELSE
        applied := lattice.stripe_apply_invoice(account, obj, ev.created, ev.type, event_id);
        IF ev.type IN ('invoice.paid', 'invoice.payment_failed') THEN
            -- a receipt or a failure notice belongs to its event, even when a
            -- newer invoice state arrived first
            applied := true;
            PERFORM lattice.outbox_email(account,
                CASE ev.type WHEN 'invoice.paid' THEN 'receipt' ELSE 'payment_failed' END,
                pg_catalog.jsonb_build_object('number', obj ->> 'number',
                    'amount', lattice.billing_money(COALESCE((obj ->> 'amount_paid')::bigint, 0)
                                                    + CASE WHEN ev.type = 'invoice.payment_failed'
                                                           THEN (obj ->> 'amount_due')::bigint ELSE 0 END,
                                                    obj ->> 'currency'),
                    'hosted_invoice_url', obj ->> 'hosted_invoice_url'));
        END IF;
    END IF;

    result := CASE WHEN applied THEN 'applied' ELSE 'stale' END;
    UPDATE lattice.stripe_events
       SET outcome = result, account_id = account,
           customer = cust, applied_at = pg_catalog.now()
     WHERE id = event_id;

    -- events that came before we knew this customer
    IF cust IS NOT NULL THEN
        PERFORM lattice.stripe_reapply_unmatched(cust);
    END IF;
    RETURN result;
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_login(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b jsonb;
    account uuid;
    s record;
    code text;
BEGIN
    PERFORM lattice.rate_enforce_address(req, 'login');
    b := lattice.auth_body(body);
    code := lattice.auth_field(b, 'code');
    account := lattice.login(lattice.auth_field(b, 'email'), lattice.auth_field(b, 'password'), req);
    IF account IS NULL THEN
        RETURN lattice.http_error(401, 'invalid_credentials', 'the email or the password is wrong');
    END IF;
    IF EXISTS (SELECT FROM lattice.account_mfa m WHERE m.user_id = account AND m.enabled_at IS NOT NULL) THEN
        IF code IS NULL THEN
            RETURN lattice.http_error(401, 'mfa_required', 'enter the code of your authenticator app');
        END IF;
        IF NOT lattice.account_mfa_verify(code, req) THEN
            RETURN lattice.http_error(401, 'invalid_code', 'the code is wrong or was already used');
        END IF;
    END IF;
    SELECT * INTO s FROM lattice.session_create(req);
    RETURN lattice.http_json(200, jsonb_build_object('user', lattice.user_json(account)),
        lattice.session_cookies(s.token, s.csrf,
                    extract(epoch FROM s.expires_at - lattice.clock_now())::integer, req));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_signup(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b jsonb;
    account uuid;
    s record;
    u record;
BEGIN
    PERFORM lattice.rate_enforce_address(req, 'signup');
    b := lattice.auth_body(body);
    account := lattice.signup_user(lattice.auth_field(b, 'email'), lattice.auth_field(b, 'password'),
                                   lattice.auth_field(b, 'name'), req);
    -- read first: a statement that reads a tenant table runs where its row
    -- lives on Citus, and the link is written on the coordinator's side
    SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
    PERFORM lattice.account_send_verification(account, u.email, u.name);
    SELECT * INTO s FROM lattice.session_create(req);
    RETURN lattice.http_json(201, jsonb_build_object('user', lattice.user_json(account)),
        lattice.session_cookies(s.token, s.csrf,
                    extract(epoch FROM s.expires_at - lattice.clock_now())::integer, req));
END
$function$;
REVOKE ALL ON FUNCTION lattice.account_delete_begin(text,text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_delete_begin(text,text,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_deleting() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_deleting() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_email(uuid,text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_email(uuid,text,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_email_free(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_email_free(text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_email_move(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_email_move(text,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_forget(text,text,text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_forget(text,text,text,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_identity_tables() FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.account_link(text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_link(text,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_mfa_reauth(uuid,jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_mfa_reauth(uuid,jsonb,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_mfa_verify(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_mfa_verify(text,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_notice_once(uuid,text,timestamp with time zone,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.account_password_check(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_password_check(text,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_password_set(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_password_set(text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_recovery_codes_renew(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_recovery_codes_renew(uuid) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_send_verification(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_send_verification(uuid,text,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_throttle(text,uuid,bigint,bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_throttle(text,uuid,bigint,bigint) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_token_claim(text,text[],jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_token_claim(text,text[],jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.account_token_issue(uuid,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.account_token_issue(uuid,text,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.audit_event(text,text,jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.audit_event(text,text,jsonb,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.base32_encode(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.base32_encode(bytea) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.email_date(timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.email_date(timestamp with time zone) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.email_normalise(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.email_normalise(text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.lifecycle_tick() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.lifecycle_tick() TO lattice_admin;
REVOKE ALL ON FUNCTION lattice.password_forgot(text,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.password_forgot(text,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.recovery_code_match(text,bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.recovery_code_match(text,bytea[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.recovery_codes_new() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.recovery_codes_new() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.tenant_row_counts(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.tenant_row_counts(uuid) TO lattice_admin;
REVOKE ALL ON FUNCTION lattice.tenant_rows_delete(uuid,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.tenant_rows_delete(uuid,text[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.tenant_tables_delete_order(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.tenant_tables_delete_order(text[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.totp_check(bytea,text,bigint,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.totp_check(bytea,text,bigint,timestamp with time zone) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.totp_code(bytea,bigint,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.totp_code(bytea,bigint,integer) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.totp_generate() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.totp_generate() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.uri_encode(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.uri_encode(text) TO lattice_app;
ALTER FUNCTION lattice_http.account_audit(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_audit(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_audit(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_delete(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_delete(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_delete(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_email_change(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_email_change(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_email_change(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_export(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_export(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_export(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_get(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_get(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_get(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_mfa_disable(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_mfa_disable(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_mfa_disable(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_mfa_enable(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_mfa_enable(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_mfa_enable(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_mfa_setup(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_mfa_setup(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_mfa_setup(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_password_change(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_password_change(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_password_change(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_recovery_codes(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_recovery_codes(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_recovery_codes(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.account_verification_resend(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.account_verification_resend(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.account_verification_resend(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.auth_email_verify(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.auth_email_verify(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.auth_email_verify(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.auth_password_forgot(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.auth_password_forgot(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.auth_password_forgot(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.auth_password_reset(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.auth_password_reset(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.auth_password_reset(jsonb,text) TO lattice_api;

-- the deleting request (as lattice_app) moves its own invoices here
ALTER TABLE lattice.retained_invoices ENABLE ROW LEVEL SECURITY;
CREATE POLICY retain_own ON lattice.retained_invoices FOR INSERT TO lattice_app
    WITH CHECK (account_id = lattice.current_user_id() AND lattice.account_deleting());
GRANT INSERT ON lattice.retained_invoices TO lattice_app;

CREATE POLICY audit_account_deleted ON lattice.audit_log FOR DELETE TO lattice_app
    USING (user_id = lattice.current_user_id() AND lattice.account_deleting());
GRANT DELETE ON lattice.audit_log TO lattice_app;

-- the routes of the lifecycle call these as lattice_app
GRANT EXECUTE ON FUNCTION lattice.outbox_email(uuid, text, jsonb, text, text),
                          lattice.cluster_tables() TO lattice_app;
