-- lattice install script, assembled from extension/sql/*.sql in name order.
\echo Use "CREATE EXTENSION lattice" to load this file. \quit

-- Roles are cluster-wide, so they may already exist from another database.
--   lattice_api   what the shim logs in through: EXECUTE on lattice_http only
--   lattice_app   owns the lattice_http functions (SECURITY DEFINER); subject
--                 to row-level security, never BYPASSRLS, never a login
--   lattice_admin DBAs: read access, may act as a tenant through an audited call
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice_api') THEN
        CREATE ROLE lattice_api NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice_app') THEN
        CREATE ROLE lattice_app NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice_admin') THEN
        CREATE ROLE lattice_admin NOLOGIN NOBYPASSRLS;
    END IF;
END
$roles$;

-- The functions the shim calls, one per route (see docs/http-contract.md).
CREATE SCHEMA lattice_http;

GRANT USAGE ON SCHEMA lattice TO lattice_app, lattice_admin;
GRANT USAGE ON SCHEMA lattice_http TO lattice_api;
-- Tenancy: the transaction's tenant is held in C (src/tenant.c).

CREATE FUNCTION lattice.current_user_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_current_user_id'
    LANGUAGE C STABLE PARALLEL RESTRICTED LEAKPROOF;
COMMENT ON FUNCTION lattice.current_user_id() IS
    'the authenticated tenant of this transaction, NULL when none; set only by lattice''s C code';

CREATE FUNCTION lattice.test_set_tenant(user_id uuid) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_test_set_tenant'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.test_set_tenant(uuid) IS
    'tests only, superuser only: sets the tenant for the rest of the transaction';

CREATE FUNCTION lattice.act_as_tenant_c(user_id uuid) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_act_as_tenant_c'
    LANGUAGE C VOLATILE;
-- Accounts, plans, credentials and subscriptions.

CREATE TABLE lattice.plans (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    price_cents         integer NOT NULL CHECK (price_cents >= 0),
    currency            text NOT NULL DEFAULT 'usd',
    billing_interval    text NOT NULL DEFAULT 'year',
    trial_days          integer NOT NULL DEFAULT 7 CHECK (trial_days >= 0),
    stripe_price_id     text,
    rate_limit_per_hour integer NOT NULL DEFAULT 1000 CHECK (rate_limit_per_hour > 0),
    max_services        integer NOT NULL DEFAULT 100 CHECK (max_services > 0)
);
INSERT INTO lattice.plans (id, name, price_cents) VALUES ('standard', 'Lattice', 2500);

CREATE TABLE lattice.users (
    id              uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    email           text NOT NULL UNIQUE CHECK (email = pg_catalog.lower(email)),
    password_hash   text,
    name            text NOT NULL,
    plan_id         text NOT NULL DEFAULT 'standard' REFERENCES lattice.plans,
    trial_ends_at   timestamptz NOT NULL DEFAULT pg_catalog.now() + interval '7 days',
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE lattice.api_keys (
    id          uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    name        text NOT NULL,
    prefix      text NOT NULL UNIQUE,
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_used   timestamptz,
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX ON lattice.api_keys (user_id);

CREATE TABLE lattice.subscriptions (
    id                      uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id                 uuid NOT NULL UNIQUE REFERENCES lattice.users ON DELETE CASCADE,
    stripe_customer_id      text UNIQUE,
    stripe_subscription_id  text UNIQUE,
    status                  text NOT NULL,
    current_period_end      timestamptz,
    created_at              timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- Services, their routes and packages, and the observed calls between them.
-- Child rows carry user_id and reference (id, user_id) of their parent, so a
-- row can never point at another tenant's service.

CREATE TABLE lattice.services (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    name                text NOT NULL,
    environment         text NOT NULL DEFAULT 'production',
    version             text,
    language            text,
    framework           text,
    runtime             text,
    description         text,
    repository          text,
    health_check_url    text,
    deployment_type     text,
    status              text NOT NULL DEFAULT 'active',
    is_external         boolean NOT NULL DEFAULT false,
    discovered_by       jsonb,
    metadata            jsonb,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, name, environment),
    UNIQUE (id, user_id)
);

CREATE TABLE lattice.routes (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    middleware_chain    text[],
    handler_location    jsonb,
    path_parameters     jsonb,
    query_parameters    jsonb,
    request_schema      jsonb,
    response_schema     jsonb,
    description         text,
    tags                text[],
    metadata            jsonb,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    UNIQUE (service_id, method, path),
    FOREIGN KEY (service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.routes (user_id);

CREATE TABLE lattice.dependencies (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    package_name        text NOT NULL,
    version             text NOT NULL DEFAULT '',
    version_range       text,
    dependency_type     text NOT NULL,
    scope               text,
    metadata            jsonb,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    UNIQUE (service_id, package_name, dependency_type),
    FOREIGN KEY (service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.dependencies (user_id);

CREATE TABLE lattice.connections (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    source_service_id   uuid NOT NULL,
    target_service_id   uuid NOT NULL,
    declared            boolean NOT NULL DEFAULT false,
    call_count          bigint NOT NULL DEFAULT 0 CHECK (call_count >= 0),
    error_count         bigint NOT NULL DEFAULT 0 CHECK (error_count >= 0),
    client_error_count  bigint NOT NULL DEFAULT 0 CHECK (client_error_count >= 0),
    total_duration_ms   double precision NOT NULL DEFAULT 0,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (source_service_id, target_service_id),
    FOREIGN KEY (source_service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (target_service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.connections (user_id);
CREATE INDEX ON lattice.connections (target_service_id);
-- Append-only trail of security-relevant events, written by the extension.
-- user_id is NULL where no tenant is known (a login with an unknown email).

CREATE TABLE lattice.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    user_id     uuid,
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb
);
CREATE INDEX ON lattice.audit_log (user_id, at);

-- Writes one audit row; the only way lattice_app adds to the trail.
CREATE FUNCTION lattice.audit(action text, target text DEFAULT NULL,
                              details jsonb DEFAULT NULL, req jsonb DEFAULT NULL,
                              user_id uuid DEFAULT lattice.current_user_id())
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO lattice.audit_log (user_id, action, target, client_addr, request_id, details)
    VALUES (audit.user_id, audit.action, audit.target,
            CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
$$;

-- lattice_admin acts as one tenant for the rest of the transaction, audited.
CREATE FUNCTION lattice.act_as_tenant(user_id uuid, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF reason IS NULL OR pg_catalog.length(pg_catalog.btrim(reason)) = 0 THEN
        RAISE EXCEPTION 'lattice.act_as_tenant: a reason is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM lattice.act_as_tenant_c(act_as_tenant.user_id);
    INSERT INTO lattice.audit_log (user_id, action, target, details)
    VALUES (act_as_tenant.user_id, 'admin.act_as_tenant', act_as_tenant.user_id::text,
            pg_catalog.jsonb_build_object('reason', reason));
END
$$;
-- The HTTP contract (docs/http-contract.md): every route of the shim calls
--   lattice_http.<name>(req jsonb, body text) RETURNS lattice.http_response
-- and writes the answer out as it is.

CREATE TYPE lattice.http_response AS (
    status  integer,
    headers jsonb,
    body    text
);

-- A JSON answer with optional extra headers.
CREATE FUNCTION lattice.http_json(status integer, body jsonb, headers jsonb DEFAULT '{}')
RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT ROW(status, headers, body::text)::lattice.http_response $$;

-- An error answer: {"error": {"code", "message", "details"}}.  The shim adds
-- the request id.
CREATE FUNCTION lattice.http_error(status integer, code text, message text,
                                   details jsonb DEFAULT NULL, headers jsonb DEFAULT '{}')
RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT ROW(status, headers,
               jsonb_build_object('error',
                   jsonb_strip_nulls(jsonb_build_object('code', code, 'message', message,
                                                        'details', details)))::text
              )::lattice.http_response
$$;

-- Raises an error that the shim turns into an HTTP answer: SQLSTATE PTnnn
-- (PostgREST's convention) gives the status, the message stays the message,
-- and the detail carries {"code", "details", "headers"} as JSON.  Raising
-- rolls the whole request back, which is what refusals want.
CREATE FUNCTION lattice.raise_http(status integer, code text, message text,
                                   details jsonb DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF status < 400 OR status > 599 THEN
        RAISE EXCEPTION 'lattice.raise_http: status % is not an error', status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'PT' || status::text,
        MESSAGE = message,
        DETAIL = jsonb_strip_nulls(jsonb_build_object('code', code, 'details', details,
                                                      'headers', headers))::text;
END
$$;
-- Applied last, to every object the fragments above created, so that no new
-- table or function can be forgotten:
--  * every table of schema lattice with a user_id column is a tenant table:
--    RLS enabled and forced, one policy per command against current_user_id();
--  * lattice.users is the tenant itself: its policies compare id;
--  * lattice_http functions are SECURITY DEFINER, owned by lattice_app (which
--    RLS binds), with a pinned search_path, executable by lattice_api only;
--  * nothing in lattice is executable by PUBLIC unless granted below.
DO $security$
DECLARE
    t record;
    f record;
    col text;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel,
               CASE WHEN c.relname = 'users' THEN 'id' ELSE 'user_id' END AS col
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')
           AND (c.relname = 'users' OR EXISTS (
                SELECT FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped))
    LOOP
        col := t.col;
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_select ON %s FOR SELECT USING (%I = lattice.current_user_id())', t.rel, col);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (%I = lattice.current_user_id())', t.rel, col);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_update ON %s FOR UPDATE USING (%I = lattice.current_user_id()) WITH CHECK (%I = lattice.current_user_id())',
            t.rel, col, col);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_delete ON %s FOR DELETE USING (%I = lattice.current_user_id())', t.rel, col);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO lattice_app', t.rel);
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO lattice_admin', t.rel);
        PERFORM pg_catalog.pg_extension_config_dump(t.rel, '');
    END LOOP;

    FOR f IN
        SELECT p.oid::regprocedure AS fn
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'lattice_http'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER', f.fn);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.fn);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO lattice_app', f.fn);
    END LOOP;
END
$security$;

-- The audit trail is append-only for everyone but the owner: lattice_app
-- may add rows, never change them.  A tenant reads its own rows.
REVOKE UPDATE, DELETE ON lattice.audit_log FROM lattice_app;
DROP POLICY tenant_update ON lattice.audit_log;
DROP POLICY tenant_delete ON lattice.audit_log;
DROP POLICY tenant_insert ON lattice.audit_log;
CREATE POLICY audit_insert ON lattice.audit_log FOR INSERT
    WITH CHECK (user_id IS NULL OR user_id = lattice.current_user_id());

-- Reference data every role reads.
GRANT SELECT ON lattice.plans TO lattice_app, lattice_admin;
-- The seeded plan comes with CREATE EXTENSION; plans added later are data.
SELECT pg_catalog.pg_extension_config_dump('lattice.plans', $$WHERE id <> 'standard'$$);
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lattice.audit_log', 'id')::regclass, '');

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice_http FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice_http TO lattice_api;
GRANT EXECUTE ON FUNCTION lattice.current_user_id() TO PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.http_json(integer, jsonb, jsonb),
                          lattice.http_error(integer, text, text, jsonb, jsonb),
                          lattice.raise_http(integer, text, text, jsonb, jsonb),
                          lattice.audit(text, text, jsonb, jsonb, uuid)
    TO lattice_app;
GRANT EXECUTE ON FUNCTION lattice.act_as_tenant(uuid, text) TO lattice_admin;
