-- The account lifecycle (docs/account.md): e-mail verification, password
-- reset and change, e-mail change, the account's own audit trail, two-factor
-- authentication, export, deletion and the retention of lapsed accounts.
-- Here: its state, the C entry points that check credentials and codes
-- (src/account_token.c, account_reauth.c, account_totp.c), the steps its
-- routes share, and the hourly lifecycle tick; the routes themselves are in
-- 87_http_account.sql.

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
-- lattice.billing_retained_invoice_years (10) after the deletion; nothing
-- else of the account is kept.  No user_id: not a tenant table, the owner's.
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
-- Run by the usage worker once an hour (src/worker.c) and by
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
    lattice.outbox_email(uuid, text, jsonb, text, text)
    TO lattice_app;
GRANT EXECUTE ON FUNCTION lattice.tenant_row_counts(uuid), lattice.lifecycle_tick() TO lattice_admin;
