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
-- Rate counters in shared memory (src/ratelimit*.c).  They need lattice in
-- shared_preload_libraries; without it these functions raise an error that
-- names the setting.  See docs/http-contract.md "Rate limits".

CREATE TYPE lattice.rate_result AS (
    allowed             boolean,
    "limit"             bigint,
    remaining           bigint,
    reset_seconds       bigint,
    retry_after_seconds bigint
);

CREATE TYPE lattice.rate_usage AS (
    "limit"             bigint,
    remaining           bigint,
    reset_seconds       bigint,
    period_seconds      bigint,
    used_this_hour      bigint,
    refused_this_hour   bigint,
    hour_start          timestamptz
);

-- Counts one event for (scope, key): lim events per period_seconds.  Never
-- raises a refusal; the caller decides (e.g. login attempts per account).
CREATE FUNCTION lattice.rate_check(scope text, key text, lim bigint, period_seconds bigint)
RETURNS lattice.rate_result
    AS 'MODULE_PATHNAME', 'lattice_rate_check_sql'
    LANGUAGE C VOLATILE STRICT;

-- Counts one request of the tenant against its plan; PT429 when refused.
-- Only the authenticated tenant itself (or a superuser) may call it.
CREATE FUNCTION lattice.rate_enforce_tenant(user_id uuid)
RETURNS lattice.rate_result
    AS 'MODULE_PATHNAME', 'lattice_rate_enforce_tenant_sql'
    LANGUAGE C VOLATILE;

-- Counts one ingest request of the current tenant's service (quota class
-- ingest): the service's budget and the account's ceiling together; PT429
-- when either refuses.
CREATE FUNCTION lattice.rate_enforce_ingest(service text)
RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_rate_enforce_ingest'
    LANGUAGE C VOLATILE;

-- Counts one request of req->>'client_addr' (IPv6 by /64) for an
-- unauthenticated route class (signup, login, webhook, health); PT429 when
-- refused, else returns the rate headers.
CREATE FUNCTION lattice.rate_enforce_address(req jsonb, route_class text)
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_rate_enforce_address'
    LANGUAGE C VOLATILE;

-- The RateLimit-* / X-RateLimit-* headers of this transaction's last
-- enforce call ({} when none): lattice_http functions merge them into their
-- answer's headers.
CREATE FUNCTION lattice.rate_headers() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_rate_headers'
    LANGUAGE C VOLATILE;

-- The current tenant's api class and this hour's counts (counts nothing).
CREATE FUNCTION lattice.rate_usage() RETURNS lattice.rate_usage
    AS 'MODULE_PATHNAME', 'lattice_rate_usage'
    LANGUAGE C VOLATILE;

-- The current tenant's three quota classes as they stand now, ingest per
-- service (counts nothing).
CREATE FUNCTION lattice.rate_usage_classes() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_rate_usage_classes'
    LANGUAGE C VOLATILE;

-- Every counter, for DBAs (lattice_admin) through lattice.rate_counters.
CREATE FUNCTION lattice.rate_counters_all(
    OUT scope text, OUT key text, OUT "limit" bigint, OUT period_seconds bigint,
    OUT burst bigint, OUT remaining bigint, OUT reset_seconds bigint,
    OUT allowed_this_hour bigint, OUT refused_this_hour bigint,
    OUT hour_start timestamptz, OUT last_used timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'lattice_rate_counters_all'
    LANGUAGE C VOLATILE;

CREATE VIEW lattice.rate_counters AS
    SELECT * FROM lattice.rate_counters_all();
COMMENT ON VIEW lattice.rate_counters IS
    'every rate counter in shared memory (tenants by user id, addresses by scope); lattice_admin only';

-- Shared memory of the table: size, keys in use, evictions, bytes.
CREATE FUNCTION lattice.rate_memory(
    OUT table_size integer, OUT entries bigint, OUT evictions bigint,
    OUT entry_bytes integer, OUT table_bytes bigint, OUT bytes_for_100k_keys bigint)
RETURNS record
    AS 'MODULE_PATHNAME', 'lattice_rate_memory'
    LANGUAGE C VOLATILE;

-- Superuser only: checks/s of the C check in a loop inside C.
CREATE FUNCTION lattice.rate_bench(iterations bigint, keys integer DEFAULT 1000)
RETURNS double precision
    AS 'MODULE_PATHNAME', 'lattice_rate_bench'
    LANGUAGE C VOLATILE;

-- Rolls unwritten hourly usage into lattice.usage_hourly now (the worker
-- does it every lattice.rate_usage_interval seconds).
CREATE FUNCTION lattice.rate_flush_usage() RETURNS bigint
    AS 'MODULE_PATHNAME', 'lattice_rate_flush_usage'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON lattice.rate_counters FROM PUBLIC;
GRANT SELECT ON lattice.rate_counters TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.rate_counters_all(), lattice.rate_memory(),
                          lattice.rate_flush_usage()
    TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.rate_check(text, text, bigint, bigint),
                          lattice.rate_enforce_tenant(uuid),
                          lattice.rate_enforce_address(jsonb, text),
                          lattice.rate_enforce_ingest(text),
                          lattice.rate_headers(),
                          lattice.rate_usage(),
                          lattice.rate_usage_classes()
    TO lattice_app;
-- Accounts, plans, credentials and subscriptions.

CREATE TABLE lattice.plans (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    price_cents         integer NOT NULL CHECK (price_cents >= 0),
    currency            text NOT NULL DEFAULT 'usd',
    billing_interval    text NOT NULL DEFAULT 'year',
    trial_days          integer NOT NULL DEFAULT 7 CHECK (trial_days >= 0),
    stripe_price_id     text,
    -- quota classes (src/ratelimit_enforce.c): api requests per account,
    -- ingest requests per service (the account's ceiling is that times
    -- max_services), dashboard requests per account
    rate_limit_per_hour integer NOT NULL DEFAULT 1000 CHECK (rate_limit_per_hour > 0),
    max_services        integer NOT NULL DEFAULT 100 CHECK (max_services > 0),
    ingest_per_service_per_hour integer NOT NULL DEFAULT 3600 CHECK (ingest_per_service_per_hour > 0),
    dashboard_per_hour  integer NOT NULL DEFAULT 7200 CHECK (dashboard_per_hour > 0)
);
-- Not on a Citus worker, where the coordinator runs this script over its own
-- connections (named citus_internal): a worker holds shards only, and the
-- plans are the coordinator's reference table (92_cluster.sql).
INSERT INTO lattice.plans (id, name, price_cents)
SELECT 'standard', 'Lattice', 2500
 WHERE pg_catalog.current_setting('application_name') NOT LIKE 'citus\_internal%';

CREATE TABLE lattice.users (
    id              uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    email           text NOT NULL
                    CHECK (email = pg_catalog.lower(email) AND pg_catalog.length(email) <= 254),
    password_hash   text,
    name            text NOT NULL,
    plan_id         text NOT NULL DEFAULT 'standard' REFERENCES lattice.plans,
    trial_ends_at   timestamptz NOT NULL DEFAULT pg_catalog.now() + interval '7 days',
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- API keys (src/auth_apikey.c): the plaintext is shown once and never stored.
-- prefix: the key's first 12 characters, for lookup and display; key_hash:
-- BLAKE2b-256 of the key keyed with the server pepper named by pepper_kid.
-- A rotated key points at its predecessor, whose expires_at the rotation
-- moved to the end of the grace period.  scopes: ingest (the plugin
-- endpoints) and/or read (the read API); a rotated key keeps its scopes.
CREATE TABLE lattice.api_keys (
    id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    name        text NOT NULL CHECK (pg_catalog.length(name) BETWEEN 1 AND 100),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL,
    pepper_kid  text NOT NULL,
    rotated_from uuid,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_used   timestamptz,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    scopes      text[] NOT NULL DEFAULT '{ingest}'
                CHECK (pg_catalog.cardinality(scopes) >= 1 AND scopes <@ '{ingest,read}'::text[]),
    PRIMARY KEY (user_id, id),
    -- keys are revoked, never deleted one by one (only with their account)
    FOREIGN KEY (user_id, rotated_from) REFERENCES lattice.api_keys (user_id, id)
);

-- Look-ups across tenants, one key each: the address an account signs in
-- with, and the prefix an API key is found by.  Every other tenant table is
-- keyed by user_id first; these say which tenant a credential belongs to,
-- so that the check reads one small row and then only that tenant's rows
-- (on Citus: reference tables, read on the coordinator; docs/scaling.md).
-- Their primary keys keep e-mail addresses and key prefixes unique.
CREATE TABLE lattice.account_emails (
    email       text PRIMARY KEY,
    user_id     uuid NOT NULL
);
CREATE TABLE lattice.api_key_prefixes (
    prefix      text PRIMARY KEY,
    user_id     uuid NOT NULL,
    key_id      uuid NOT NULL
);

CREATE TABLE lattice.subscriptions (
    id                      uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id                 uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    stripe_customer_id      text,
    stripe_subscription_id  text,
    status                  text NOT NULL,
    current_period_end      timestamptz,
    created_at              timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- Authentication: sessions, server secrets, and the C functions that hash
-- passwords, create accounts, sign in, issue and check every credential
-- (src/auth*.c, src/account.c).  The routes are in 65_http_auth.sql.
--
-- Functions that read secrets or look across tenants are SECURITY DEFINER
-- (owned by the installing superuser) with a pinned search_path; each does
-- one thing and filters by exactly one key.  Grants at the end: lattice_app
-- gets what the lattice_http functions call, lattice_admin what DBAs use.

-- Dashboard sessions: only the token's BLAKE2b-256 is stored.  idle_expires_at
-- slides with use (at most once a minute), never past expires_at (the cap).
CREATE TABLE lattice.sessions (
    id              uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    -- the default (a hash of nothing anyone holds) only matters for rows
    -- not made by session_create: they can never be presented
    token_hash      bytea NOT NULL
                    DEFAULT pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.gen_random_uuid()::text, 'UTF8')),
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    idle_expires_at timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    client_addr     inet,
    user_agent      text,
    PRIMARY KEY (user_id, id)
);

-- Which tenant a session token belongs to (a look-up across tenants, as
-- lattice.api_key_prefixes is for keys); the hash is unique here.
CREATE TABLE lattice.session_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL,
    session_id  uuid NOT NULL
);

-- Server secrets: API-key pepper and JWT signing keys, 256 bits each from
-- libsodium.  No role but the owner may read this table (nothing is granted,
-- and it has no user_id, so 90_security.sql grants nothing either).
CREATE TABLE lattice.secrets (
    kind        text NOT NULL CHECK (kind IN ('pepper', 'jwt')),
    kid         text NOT NULL,
    secret      bytea NOT NULL CHECK (pg_catalog.length(secret) = 32),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    retired_at  timestamptz,
    PRIMARY KEY (kind, kid)
);
CREATE UNIQUE INDEX secrets_one_active ON lattice.secrets (kind) WHERE retired_at IS NULL;
REVOKE ALL ON lattice.secrets FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.secrets', '');

-- pg_restore runs CREATE EXTENSION (which generates fresh secrets) and then
-- loads the dumped ones, all older than the fresh ones.  A secret older than
-- one already stored can only come from such a restore, so it replaces the
-- freshly generated secrets of its kind: keys and tokens keep verifying.
-- In normal operation a new secret is always the newest and this deletes
-- nothing.  ENABLE ALWAYS: it must also fire when the restore runs with
-- session_replication_role = replica (see docs/operations.md).
CREATE FUNCTION lattice.secrets_restored() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM lattice.secrets s WHERE s.kind = NEW.kind AND s.created_at > NEW.created_at;
    RETURN NEW;
END
$$;
CREATE TRIGGER secrets_restored BEFORE INSERT ON lattice.secrets
    FOR EACH ROW EXECUTE FUNCTION lattice.secrets_restored();
ALTER TABLE lattice.secrets ENABLE ALWAYS TRIGGER secrets_restored;

-- The clock of every validity check; superusers may pin it per transaction.
CREATE FUNCTION lattice.clock_now() RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'lattice_clock_now_sql' LANGUAGE C VOLATILE;
CREATE FUNCTION lattice.test_set_clock(at timestamptz) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_test_set_clock' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.test_set_clock(timestamptz) IS
    'tests only, superuser only: pins lattice.clock_now() for the rest of the transaction';

CREATE FUNCTION lattice.rotate_secret(kind text) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_rotate_secret' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.rotate_secret(text) IS
    'superusers and lattice_admin: a new pepper or JWT key (returns its kid); the old one keeps verifying what it signed';

-- Passwords (Argon2id, 19 MiB, t=2)
CREATE FUNCTION lattice.password_hash(password text) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_password_hash' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION lattice.password_verify(hash text, password text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'lattice_password_verify' LANGUAGE C VOLATILE;
CREATE FUNCTION lattice.password_needs_rehash(hash text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'lattice_password_needs_rehash' LANGUAGE C IMMUTABLE STRICT;

-- Accounts
CREATE FUNCTION lattice.create_user(email text, password text, name text) RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_create_user' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.create_user(text, text, text) IS
    'superusers and lattice_admin: creates an account (audited), for DBAs, tests and the demo seed';
CREATE FUNCTION lattice.signup_user(email text, password text, name text, req jsonb) RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_signup_user' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.login(email text, password text, req jsonb) RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_login' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Sessions
CREATE FUNCTION lattice.session_create(req jsonb,
    OUT id uuid, OUT token text, OUT csrf text, OUT expires_at timestamptz)
    AS 'MODULE_PATHNAME', 'lattice_session_create' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- JWT
CREATE FUNCTION lattice.jwt_issue(ttl_seconds integer, req jsonb,
    OUT token text, OUT expires_at timestamptz)
    AS 'MODULE_PATHNAME', 'lattice_jwt_issue' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.jwt_verify(token text) RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_jwt_verify' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- API keys
CREATE FUNCTION lattice.api_key_create(user_id uuid, name text, expires_at timestamptz DEFAULT NULL,
    req jsonb DEFAULT NULL, scopes text[] DEFAULT '{ingest}',
    OUT id uuid, OUT key text, OUT prefix text, OUT created_at timestamptz)
    AS 'MODULE_PATHNAME', 'lattice_api_key_create' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.api_key_rotate(key_id uuid, grace_seconds integer DEFAULT NULL,
    req jsonb DEFAULT NULL,
    OUT id uuid, OUT name text, OUT key text, OUT prefix text, OUT created_at timestamptz,
    OUT old_key_expires_at timestamptz)
    AS 'MODULE_PATHNAME', 'lattice_api_key_rotate' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION lattice.api_key_verify(key text, req jsonb DEFAULT NULL) RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_api_key_verify' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- For DBAs, tests and the demo seed: the plaintext key, once.  Both scopes
-- unless told (a DBA's key for scripts); plugins' keys are ingest only.
CREATE FUNCTION lattice.create_api_key(user_id uuid, name text, scopes text[] DEFAULT '{ingest,read}')
RETURNS text
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.key FROM lattice.api_key_create(create_api_key.user_id, create_api_key.name, NULL, NULL,
                                             create_api_key.scopes) k
$$;

-- The entry point (src/auth.c)
CREATE FUNCTION lattice.authenticate(req jsonb, need text) RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_authenticate' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.authenticate(jsonb, text) IS
    'verifies the credential of req (api_key, bearer, session + CSRF), sets the tenant, checks it may do what need says (ingest, read, session, any), counts its quota class, returns the account; PT401/PT403 otherwise';
CREATE FUNCTION lattice.current_scopes() RETURNS text[]
    AS 'MODULE_PATHNAME', 'lattice_current_scopes' LANGUAGE C STABLE;
CREATE FUNCTION lattice.current_auth_method() RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_current_auth_method' LANGUAGE C STABLE;
CREATE FUNCTION lattice.current_session_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_current_session_id' LANGUAGE C STABLE;
CREATE FUNCTION lattice.flush_deferred() RETURNS integer
    AS 'MODULE_PATHNAME', 'lattice_flush_deferred' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- The first secrets, from libsodium's randomness, at CREATE EXTENSION.
-- (none on a Citus worker: see the standard plan in 20_accounts.sql)
SELECT lattice.rotate_secret('pepper'), lattice.rotate_secret('jwt')
 WHERE pg_catalog.current_setting('application_name') NOT LIKE 'citus\_internal%';

-- lattice_app runs the lattice_http functions; nothing here hands it a secret.
-- (90_security.sql revokes PUBLIC's EXECUTE from every function.)
GRANT EXECUTE ON FUNCTION
    lattice.authenticate(jsonb, text),
    lattice.current_scopes(),
    lattice.current_auth_method(),
    lattice.current_session_id(),
    lattice.clock_now(),
    lattice.signup_user(text, text, text, jsonb),
    lattice.login(text, text, jsonb),
    lattice.session_create(jsonb),
    lattice.jwt_issue(integer, jsonb),
    lattice.api_key_create(uuid, text, timestamptz, jsonb, text[]),
    lattice.api_key_rotate(uuid, integer, jsonb)
    TO lattice_app;
GRANT EXECUTE ON FUNCTION
    lattice.create_user(text, text, text),
    lattice.create_api_key(uuid, text, text[]),
    lattice.rotate_secret(text)
    TO lattice_admin;
-- Hourly usage per tenant and quota class (api, ingest, dashboard; subject
-- is the service for ingest, '' otherwise), rolled up from the shared-memory
-- counters by the lattice usage roll-up worker (src/worker.c): one
-- write per tenant, class and subject per interval, never per request.
-- user_id makes it a tenant table (RLS).

CREATE TABLE lattice.usage_hourly (
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    hour        timestamptz NOT NULL,
    requests    bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    refused     bigint NOT NULL DEFAULT 0 CHECK (refused >= 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    class       text NOT NULL DEFAULT 'api' CHECK (class IN ('api', 'ingest', 'dashboard')),
    subject     text NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, class, subject, hour)
);
CREATE INDEX ON lattice.usage_hourly (user_id, hour);
-- The second factor's primitives (src/account_totp.c): TOTP codes (RFC 6238,
-- HMAC-SHA-1, 30-second steps), TOTP secrets sealed under the server pepper,
-- recovery codes and their hashes, and base32 for the otpauth URI.
--
-- The two functions that touch the pepper are SECURITY DEFINER with a pinned
-- search_path: the sealed secret the tables keep opens only inside them.
-- The others are pure functions of their arguments.

CREATE FUNCTION lattice.totp_code(secret bytea, step bigint, digits integer DEFAULT 6) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_totp_code' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION lattice.totp_code(bytea, bigint, integer) IS
    'the HOTP code (RFC 4226, HMAC-SHA-1) of counter step, 6 to 8 digits; a TOTP code is that of step floor(Unix time / 30)';

CREATE FUNCTION lattice.totp_generate(OUT secret text, OUT sealed bytea)
    AS 'MODULE_PATHNAME', 'lattice_totp_generate' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.totp_generate() IS
    'a new TOTP secret: secret in base32 for the authenticator app (shown once), sealed to store (opens only in totp_check)';

-- Not STRICT: last_step is NULL until a first code was used, and at NULL
-- means lattice.clock_now().
CREATE FUNCTION lattice.totp_check(sealed bytea, code text, last_step bigint, at timestamptz) RETURNS bigint
    AS 'MODULE_PATHNAME', 'lattice_totp_check' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.totp_check(bytea, text, bigint, timestamptz) IS
    'the step (to store as the next last_step) a 6-digit code is valid for, at the step of at or one either side, after last_step; NULL otherwise';

CREATE FUNCTION lattice.recovery_codes_new(OUT codes text[], OUT hashes bytea[])
    AS 'MODULE_PATHNAME', 'lattice_recovery_codes_new' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.recovery_codes_new() IS
    'ten recovery codes (xxxxx-xxxxx, shown once) and the BLAKE2b-256 of each, to store';

-- Not STRICT: a NULL must answer 0 (no match), never NULL.
CREATE FUNCTION lattice.recovery_code_match(code text, hashes bytea[]) RETURNS integer
    AS 'MODULE_PATHNAME', 'lattice_recovery_code_match' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION lattice.recovery_code_match(text, bytea[]) IS
    'the 1-based position of the code''s hash in hashes (case, spaces and dashes ignored), 0 when none; NULL elements never match';

CREATE FUNCTION lattice.base32_encode(data bytea) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_base32_encode' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- The lattice_http functions of the account routes call these.
GRANT EXECUTE ON FUNCTION
    lattice.totp_code(bytea, bigint, integer),
    lattice.totp_generate(),
    lattice.totp_check(bytea, text, bigint, timestamptz),
    lattice.recovery_codes_new(),
    lattice.recovery_code_match(text, bytea[]),
    lattice.base32_encode(bytea)
    TO lattice_app;
-- Services, their routes and packages, and the observed calls between them.
-- Child rows carry user_id and reference (id, user_id) of their parent, so a
-- row can never point at another tenant's service.
--
-- A service is (tenant, name, environment); the plugin's own service id
-- changes at every process start and is only kept as instance_id.
-- snapshot_hash is the hash of the last metadata snapshot without its
-- volatile fields (see src/ingest_digest.c): an identical re-submission is
-- recognised by it and only moves last_seen.  Liveness (active/inactive) is
-- derived from last_seen when read, so it costs no write.  An is_external
-- node never registered itself: a caller or callee seen only in traces
-- (kind external; an is_external row of kind service reads as external),
-- or a database or queue that OpenTelemetry spans name (kind database,
-- queue); each is drawn with its own shape.

CREATE TABLE lattice.services (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
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
    kind                text NOT NULL DEFAULT 'service'
                        CHECK (kind IN ('service', 'external', 'database', 'queue')),
    discovered_by       jsonb,
    metadata            jsonb,
    instance_id         text,
    snapshot_hash       text,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, name, environment),
    PRIMARY KEY (user_id, id),
    CHECK (kind = 'service' OR is_external)
);

-- attrs: the route as the plugin described it (middlewareChain,
-- handlerLocation, parameters, schemas, description, tags, metadata, ...),
-- without the ids and timestamps the plugin regenerates.  A route that
-- disappears from a snapshot keeps its id and gets removed_at.
CREATE TABLE lattice.routes (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    attrs               jsonb NOT NULL DEFAULT '{}',
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    UNIQUE (user_id, service_id, method, path),
    PRIMARY KEY (user_id, id),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);

-- One row per (package, type): the same package listed twice with one type
-- is folded into one row.
CREATE TABLE lattice.dependencies (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    package_name        text NOT NULL,
    version             text NOT NULL DEFAULT '',
    version_range       text,
    dependency_type     text NOT NULL,
    scope               text,
    attrs               jsonb NOT NULL DEFAULT '{}',
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    PRIMARY KEY (user_id, id),
    UNIQUE (user_id, service_id, package_name, dependency_type),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);

-- An observed edge source -> target (traces with caller_service), or a
-- declared one.  error_count counts status >= 500, client_error_count 4xx;
-- latency_hist is a lattice.hist_* histogram (src/ingest_hist.c).
CREATE TABLE lattice.connections (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    source_service_id   uuid NOT NULL,
    target_service_id   uuid NOT NULL,
    declared            boolean NOT NULL DEFAULT false,
    call_count          bigint NOT NULL DEFAULT 0 CHECK (call_count >= 0),
    error_count         bigint NOT NULL DEFAULT 0 CHECK (error_count >= 0),
    client_error_count  bigint NOT NULL DEFAULT 0 CHECK (client_error_count >= 0),
    total_duration_ms   double precision NOT NULL DEFAULT 0,
    latency_hist        bigint[],
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (user_id, id),
    UNIQUE (user_id, source_service_id, target_service_id),
    FOREIGN KEY (user_id, source_service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE,
    FOREIGN KEY (user_id, target_service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.connections (user_id, target_service_id);
-- Ingest: what the plugins send (captured in tests/fixtures/), applied for the
-- current tenant.  Validation is C (src/ingest_validate.c) and happens before
-- any write; a refusal raises PT400 and so writes nothing.  The lattice_http
-- wrappers are in 67_http_ingest.sql.

-- C: validation, route matching, latency histograms ---------------------------

CREATE FUNCTION lattice.ingest_check(kind text, body text) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_ingest_check'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.ingest_check(text, text) IS
    'refuses (PT400/PT413, every problem with its JSON path) a body that is not a valid metadata, traces, errors, error, breadcrumbs or metrics document';

CREATE FUNCTION lattice.ingest_check_metadata(body text, OUT hash text, OUT name text,
                                              OUT environment text, OUT instance_id text,
                                              OUT routes integer, OUT dependencies integer,
                                              OUT volatile_ok boolean)
    AS 'MODULE_PATHNAME', 'lattice_ingest_check_metadata'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.ingest_check_metadata(text) IS
    'the digest of a metadata snapshot (src/ingest_digest.c): hash of its non-volatile content, identity, counts, and whether the volatile fields are valid; refuses only non-JSON';

CREATE FUNCTION lattice.ingest_match_route(templates text[], method text, path text) RETURNS integer
    AS 'MODULE_PATHNAME', 'lattice_ingest_match_route'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION lattice.ingest_normalise_path(path text) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_ingest_normalise_path'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION lattice.hist_empty() RETURNS bigint[]
    AS 'MODULE_PATHNAME', 'lattice_hist_empty' LANGUAGE C IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION lattice.hist_of(durations double precision[]) RETURNS bigint[]
    AS 'MODULE_PATHNAME', 'lattice_hist_of' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION lattice.hist_add(a bigint[], b bigint[]) RETURNS bigint[]
    AS 'MODULE_PATHNAME', 'lattice_hist_add' LANGUAGE C IMMUTABLE PARALLEL SAFE;
CREATE FUNCTION lattice.hist_percentile(h bigint[], q double precision) RETURNS double precision
    AS 'MODULE_PATHNAME', 'lattice_hist_percentile' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE AGGREGATE lattice.hist_sum(bigint[]) (SFUNC = lattice.hist_add, STYPE = bigint[], COMBINEFUNC = lattice.hist_add, PARALLEL = SAFE);

-- Settings (superuser: ALTER SYSTEM / postgresql.conf) ------------------------
--   lattice.ingest_inactive_after   a service not seen for this long reads as inactive (15 min)
--   lattice.ingest_retention        route statistics, occurrences and breadcrumbs kept (30 days)

CREATE FUNCTION lattice.ingest_setting(name text) RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('lattice.ingest_' || name, true), ''),
                    CASE name WHEN 'inactive_after' THEN '15 minutes'
                              WHEN 'retention' THEN '30 days' END)::interval
$$;

-- Width of a route-statistics bucket; fixed, since buckets of different
-- widths would not add up.
CREATE FUNCTION lattice.ingest_bucket_width() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT interval '5 minutes' $$;

-- Liveness, derived when read: no write when a service goes quiet.
CREATE FUNCTION lattice.service_liveness(last_seen timestamptz, is_external boolean) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN is_external THEN 'external'
                WHEN last_seen >= pg_catalog.now() - lattice.ingest_setting('inactive_after') THEN 'active'
                ELSE 'inactive' END
$$;

-- Tables ----------------------------------------------------------------------

-- What changed in a service, snapshot to snapshot: route_added,
-- route_removed, dependency_added, dependency_removed,
-- dependency_version_changed, service_registered, service_version_changed,
-- error_reopened.
CREATE TABLE lattice.service_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    user_id     uuid NOT NULL,
    service_id  uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    kind        text NOT NULL,
    subject     text,
    old_value   text,
    new_value   text,
    PRIMARY KEY (user_id, id),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.service_changes (service_id, at DESC, id DESC);

-- Per-route traffic in time buckets.  (method, path) is the matched route
-- template, or the normalised raw path (matched = false) when none fits.
CREATE TABLE lattice.route_stats (
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    bucket              timestamptz NOT NULL,
    matched             boolean NOT NULL DEFAULT true,
    request_count       bigint NOT NULL DEFAULT 0,
    error_count         bigint NOT NULL DEFAULT 0,
    client_error_count  bigint NOT NULL DEFAULT 0,
    total_duration_ms   double precision NOT NULL DEFAULT 0,
    max_duration_ms     double precision NOT NULL DEFAULT 0,
    latency_hist        bigint[],
    PRIMARY KEY (user_id, service_id, method, path, bucket),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.route_stats (service_id, bucket);
CREATE INDEX ON lattice.route_stats (user_id, bucket);
-- the alert tick reads the last minutes of every tenant (88_alerts.sql)
CREATE INDEX ON lattice.route_stats (bucket);

-- Per-edge traffic in the same buckets (connections keeps the totals): the
-- error rate and latency of a caller -> callee edge over a window.
CREATE TABLE lattice.edge_stats (
    user_id             uuid NOT NULL,
    source_service_id   uuid NOT NULL,
    target_service_id   uuid NOT NULL,
    bucket              timestamptz NOT NULL,
    call_count          bigint NOT NULL DEFAULT 0,
    error_count         bigint NOT NULL DEFAULT 0,
    total_duration_ms   double precision NOT NULL DEFAULT 0,
    latency_hist        bigint[],
    PRIMARY KEY (user_id, source_service_id, target_service_id, bucket),
    FOREIGN KEY (user_id, source_service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE,
    FOREIGN KEY (user_id, target_service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.edge_stats (bucket);
CREATE INDEX ON lattice.edge_stats (user_id, target_service_id, bucket);

-- Errors grouped by fingerprint (type + normalised message + top frame).
CREATE TABLE lattice.error_groups (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    fingerprint         text NOT NULL,
    environment         text,
    error_type          text NOT NULL,
    message             text NOT NULL,
    top_frame           text,
    status              text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'ignored')),
    occurrence_count    bigint NOT NULL DEFAULT 0 CHECK (occurrence_count >= 0),
    reopened_count      integer NOT NULL DEFAULT 0,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    resolved_at         timestamptz,
    reopened_at         timestamptz,
    sample_stack        jsonb,
    sample_context      jsonb,
    UNIQUE (user_id, service_id, fingerprint),
    PRIMARY KEY (user_id, id),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.error_groups (user_id, last_seen DESC);

-- Recent occurrences, for their session (breadcrumbs) and context.
CREATE TABLE lattice.error_occurrences (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    user_id     uuid NOT NULL,
    group_id    uuid NOT NULL,
    at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    session_id  text,
    message     text,
    context     jsonb,
    PRIMARY KEY (user_id, id),
    FOREIGN KEY (user_id, group_id) REFERENCES lattice.error_groups (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.error_occurrences (group_id, at DESC);
CREATE INDEX ON lattice.error_occurrences (user_id, at);

-- The browser SDK's trail of a session (no service is named).
CREATE TABLE lattice.breadcrumbs (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    user_id     uuid NOT NULL,
    session_id  text NOT NULL,
    category    text NOT NULL,
    level       text NOT NULL,
    message     text NOT NULL,
    data        jsonb,
    at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    received_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (user_id, id)
);
CREATE INDEX ON lattice.breadcrumbs (user_id, session_id, at);
CREATE INDEX ON lattice.breadcrumbs (user_id, received_at);

-- pg_dump keeps the identity counters with the rows (the tables themselves
-- are registered by 90_security.sql).
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lattice.service_changes', 'id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lattice.error_occurrences', 'id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lattice.breadcrumbs', 'id')::regclass, '');

-- Entitlement and limits ------------------------------------------------------

-- May this account ingest?  lattice.entitlement (80_billing.sql, later in
-- this script) decides; it is looked up when called, and without it the
-- answer is the sign-up trial (users.trial_ends_at) or a trialing/active
-- subscription.  Runs as the caller: RLS keeps it to the tenant.
CREATE FUNCTION lattice.may_ingest(user_id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regprocedure('lattice.entitlement(uuid)') IS NOT NULL THEN
        RETURN COALESCE((lattice.entitlement(may_ingest.user_id) ->> 'may_ingest')::boolean, false);
    END IF;
    RETURN EXISTS (SELECT FROM lattice.users u
                    WHERE u.id = may_ingest.user_id AND u.trial_ends_at > pg_catalog.now())
        OR EXISTS (SELECT FROM lattice.subscriptions s
                    WHERE s.user_id = may_ingest.user_id AND s.status IN ('trialing', 'active'));
END
$$;

-- Raises 402 subscription_required when the tenant may not ingest; returns
-- the headers the answer carries (billing warnings).  The billing rule is
-- lattice.require_ingest_entitlement (80_billing.sql), looked up when called
-- as lattice.entitlement is above.
CREATE FUNCTION lattice.require_ingest(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regprocedure('lattice.require_ingest_entitlement(uuid)') IS NOT NULL THEN
        RETURN lattice.require_ingest_entitlement(require_ingest.user_id);
    END IF;
    IF NOT lattice.may_ingest(require_ingest.user_id) THEN
        PERFORM lattice.raise_http(402, 'subscription_required',
                                   'an active subscription or trial is required to ingest');
    END IF;
    RETURN '{}'::jsonb;
END
$$;

-- A new (registered) service must fit the plan's max_services: else 403
-- service_limit_exceeded, with the account's count and the plan's maximum.
CREATE FUNCTION lattice.check_service_limit(user_id uuid) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lim integer;
    cnt bigint;
BEGIN
    SELECT p.max_services INTO lim
      FROM lattice.users u JOIN lattice.plans p ON p.id = u.plan_id
     WHERE u.id = check_service_limit.user_id;
    SELECT pg_catalog.count(*) INTO cnt FROM lattice.services s
     WHERE s.user_id = check_service_limit.user_id AND NOT s.is_external;
    IF lim IS NOT NULL AND cnt >= lim THEN
        PERFORM lattice.raise_http(403, 'service_limit_exceeded',
            pg_catalog.format('your plan allows %s services', lim),
            pg_catalog.jsonb_build_object('currentCount', cnt, 'maxAllowed', lim));
    END IF;
END
$$;

-- The single place where ingest reports a change of graph topology or of a
-- node's state (new service or external node, new edge, service attributes):
-- it moves the tenant's graph version with lattice.bump_graph_version()
-- (70_graph.sql, later in this script), looked up when called.
CREATE FUNCTION lattice.ingest_graph_changed() RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regprocedure('lattice.bump_graph_version()') IS NOT NULL THEN
        PERFORM lattice.bump_graph_version();
    END IF;
END
$$;

CREATE FUNCTION lattice.ingest_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    uid uuid := lattice.current_user_id();
BEGIN
    IF uid IS NULL THEN
        PERFORM lattice.raise_http(401, 'unauthorized', 'authentication required');
    END IF;
    RETURN uid;
END
$$;

-- Drops this tenant's statistics, occurrences and breadcrumbs older than the
-- retention.  Called by ingest when a new bucket opens, so it runs at most a
-- few times per bucket width and tenant.
CREATE FUNCTION lattice.ingest_prune(user_id uuid) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    before timestamptz := pg_catalog.now() - lattice.ingest_setting('retention');
BEGIN
    DELETE FROM lattice.route_stats s WHERE s.user_id = ingest_prune.user_id AND s.bucket < before;
    DELETE FROM lattice.edge_stats s WHERE s.user_id = ingest_prune.user_id AND s.bucket < before;
    DELETE FROM lattice.error_occurrences o WHERE o.user_id = ingest_prune.user_id AND o.at < before;
    DELETE FROM lattice.breadcrumbs b WHERE b.user_id = ingest_prune.user_id AND b.received_at < before;
END
$$;

-- Metadata --------------------------------------------------------------------

-- POST /ingest/metadata: one service's snapshot.  Identity is (tenant, name,
-- environment).  An unchanged snapshot (same hash) only moves last_seen;
-- otherwise the service is updated and routes (method + path) and
-- dependencies (package + type) reconciled: ids kept, new ones added,
-- missing ones marked removed, each change recorded in service_changes.
CREATE FUNCTION lattice.ingest_metadata(body text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    uid uuid := lattice.ingest_tenant();
    chk record;
    env text;
    sid uuid;
    doc jsonb;
    svc jsonb;
    diff jsonb;
    old lattice.services;
    is_new boolean := false;
    changed_state boolean := false;
BEGIN
    SELECT * INTO chk FROM lattice.ingest_check_metadata(body);
    PERFORM lattice.rate_enforce_ingest(chk.name);
    env := COALESCE(chk.environment, 'production');

    -- The periodic re-send: nothing changed but the volatile fields, which
    -- the digest checked; the rest equals a snapshot that passed validation.
    IF chk.volatile_ok THEN
        UPDATE lattice.services s
           SET last_seen = pg_catalog.now(), instance_id = chk.instance_id
         WHERE s.user_id = uid AND s.name = chk.name AND s.environment = env
           AND s.snapshot_hash = chk.hash AND NOT s.is_external
        RETURNING s.id INTO sid;
    END IF;
    IF sid IS NOT NULL THEN
        RETURN pg_catalog.jsonb_build_object('success', true, 'serviceId', sid, 'unchanged', true,
                                             'routesProcessed', chk.routes,
                                             'dependenciesProcessed', chk.dependencies);
    END IF;

    PERFORM lattice.ingest_check('metadata', body);
    doc := body::jsonb;
    svc := doc -> 'service';

    SELECT s.* INTO old FROM lattice.services s
     WHERE s.user_id = uid AND s.name = chk.name AND s.environment = env FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM lattice.check_service_limit(uid);
        INSERT INTO lattice.services (user_id, name, environment)
        VALUES (uid, chk.name, env)
        ON CONFLICT (user_id, name, environment) DO NOTHING
        RETURNING id INTO sid;
        IF sid IS NULL THEN  -- registered concurrently: take that row
            SELECT s.* INTO STRICT old FROM lattice.services s
             WHERE s.user_id = uid AND s.name = chk.name AND s.environment = env FOR UPDATE;
            sid := old.id;
        ELSE
            is_new := true;
            INSERT INTO lattice.graph_events (user_id, kind, service_id, name, environment)
            VALUES (uid, 'service_added', sid, chk.name, env);
        END IF;
    ELSE
        sid := old.id;
        IF old.is_external THEN
            PERFORM lattice.check_service_limit(uid);
        END IF;
    END IF;

    UPDATE lattice.services s SET
        version = svc ->> 'version',
        language = svc ->> 'language',
        framework = svc ->> 'framework',
        runtime = svc ->> 'runtime',
        description = svc ->> 'description',
        repository = svc ->> 'repository',
        health_check_url = svc ->> 'healthCheckUrl',
        deployment_type = svc ->> 'deploymentType',
        discovered_by = svc -> 'discoveredBy',
        metadata = svc -> 'metadata',
        status = 'active',
        is_external = false,
        kind = 'service',
        instance_id = chk.instance_id,
        snapshot_hash = chk.hash,
        last_seen = pg_catalog.now()
     WHERE s.user_id = uid AND s.id = sid;

    IF is_new OR old.is_external THEN
        INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, new_value)
        VALUES (uid, sid, 'service_registered', chk.name || ' (' || env || ')', svc ->> 'version');
        changed_state := true;
    ELSE
        IF old.version IS DISTINCT FROM svc ->> 'version' THEN
            INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value, new_value)
            VALUES (uid, sid, 'service_version_changed', chk.name, old.version, svc ->> 'version');
        END IF;
        changed_state := old.version IS DISTINCT FROM svc ->> 'version'
            OR old.status IS DISTINCT FROM 'active'
            OR old.language IS DISTINCT FROM svc ->> 'language'
            OR old.framework IS DISTINCT FROM svc ->> 'framework'
            OR old.runtime IS DISTINCT FROM svc ->> 'runtime'
            OR old.deployment_type IS DISTINCT FROM svc ->> 'deploymentType';
    END IF;

    -- Routes: (method, path) is the identity; the last duplicate wins.  The
    -- difference is computed once into `diff`, then applied by plain
    -- statements: on Citus each is one task on the tenant's worker (a CTE
    -- shared by several statements would be materialised and sent to every
    -- worker).
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', x.id, 'method', x.method, 'path', x.path, 'attrs', x.attrs, 'kind', x.kind)), '[]')
      INTO diff
      FROM (SELECT cur.id, COALESCE(inc.method, cur.method) AS method, COALESCE(inc.path, cur.path) AS path,
                   inc.attrs,
                   CASE WHEN cur.id IS NULL THEN 'added'
                        WHEN inc.method IS NULL THEN CASE WHEN cur.removed_at IS NULL THEN 'removed' END
                        WHEN cur.removed_at IS NOT NULL THEN 'readded'
                        WHEN cur.attrs IS DISTINCT FROM inc.attrs THEN 'updated' END AS kind
              FROM (SELECT DISTINCT ON (r ->> 'method', r ->> 'path')
                           r ->> 'method' AS method, r ->> 'path' AS path,
                           r - '{id,serviceId,firstSeen,lastSeen,method,path}'::text[] AS attrs
                      FROM pg_catalog.jsonb_array_elements(COALESCE(doc -> 'routes', '[]')) WITH ORDINALITY AS e(r, o)
                     ORDER BY r ->> 'method', r ->> 'path', o DESC) inc
              FULL JOIN (SELECT r.id, r.method, r.path, r.attrs, r.removed_at FROM lattice.routes r
                          WHERE r.user_id = uid AND r.service_id = sid) cur
                ON cur.method = inc.method AND cur.path = inc.path) x
     WHERE x.kind IS NOT NULL;
    INSERT INTO lattice.routes (user_id, service_id, method, path, attrs)
    SELECT uid, sid, d.method, d.path, d.attrs
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
     WHERE d.kind = 'added'
    ON CONFLICT DO NOTHING;
    UPDATE lattice.routes r SET attrs = d.attrs, removed_at = NULL, last_seen = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
     WHERE r.user_id = uid AND r.id = d.id AND d.kind IN ('readded', 'updated');
    UPDATE lattice.routes r SET removed_at = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
     WHERE r.user_id = uid AND r.id = d.id AND d.kind = 'removed';
    IF NOT is_new THEN
        INSERT INTO lattice.service_changes (user_id, service_id, kind, subject)
        SELECT uid, sid, CASE d.kind WHEN 'removed' THEN 'route_removed' ELSE 'route_added' END,
               d.method || ' ' || d.path
          FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
         WHERE d.kind IN ('added', 'readded', 'removed')
         ORDER BY d.kind, d.method, d.path
        ON CONFLICT DO NOTHING;
    END IF;

    -- Dependencies: (package, type) is the identity; duplicates are folded.
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', x.id, 'package_name', x.package_name, 'dependency_type', x.dependency_type,
               'old_version', x.old_version, 'version', x.version, 'version_range', x.version_range,
               'scope', x.scope, 'attrs', x.attrs, 'kind', x.kind)), '[]')
      INTO diff
      FROM (SELECT cur.id, COALESCE(inc.package_name, cur.package_name) AS package_name,
                   COALESCE(inc.dependency_type, cur.dependency_type) AS dependency_type,
                   cur.version AS old_version, inc.version, inc.version_range, inc.scope, inc.attrs,
                   CASE WHEN cur.id IS NULL THEN 'added'
                        WHEN inc.package_name IS NULL THEN CASE WHEN cur.removed_at IS NULL THEN 'removed' END
                        WHEN cur.removed_at IS NOT NULL THEN 'readded'
                        WHEN cur.version IS DISTINCT FROM inc.version THEN 'version'
                        WHEN (cur.version_range, cur.scope, cur.attrs) IS DISTINCT FROM
                             (inc.version_range, inc.scope, inc.attrs) THEN 'updated' END AS kind
              FROM (SELECT DISTINCT ON (x ->> 'packageName', x ->> 'dependencyType')
                           x ->> 'packageName' AS package_name, x ->> 'dependencyType' AS dependency_type,
                           x ->> 'version' AS version, x ->> 'versionRange' AS version_range, x ->> 'scope' AS scope,
                           x - '{id,serviceId,firstSeen,lastSeen,packageName,dependencyType,version,versionRange,scope}'::text[] AS attrs
                      FROM pg_catalog.jsonb_array_elements(COALESCE(doc -> 'dependencies', '[]')) WITH ORDINALITY AS e(x, o)
                     ORDER BY x ->> 'packageName', x ->> 'dependencyType', o DESC) inc
              FULL JOIN (SELECT d.id, d.package_name, d.dependency_type, d.version, d.version_range, d.scope,
                                d.attrs, d.removed_at
                           FROM lattice.dependencies d WHERE d.user_id = uid AND d.service_id = sid) cur
                ON cur.package_name = inc.package_name AND cur.dependency_type = inc.dependency_type) x
     WHERE x.kind IS NOT NULL;
    INSERT INTO lattice.dependencies (user_id, service_id, package_name, dependency_type, version,
                                      version_range, scope, attrs)
    SELECT uid, sid, d.package_name, d.dependency_type, d.version, d.version_range, d.scope, d.attrs
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
           old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
     WHERE d.kind = 'added'
    ON CONFLICT DO NOTHING;
    UPDATE lattice.dependencies x
       SET version = d.version, version_range = d.version_range, scope = d.scope, attrs = d.attrs,
           removed_at = NULL, last_seen = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
           old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
     WHERE x.user_id = uid AND x.id = d.id AND d.kind IN ('readded', 'version', 'updated');
    UPDATE lattice.dependencies x SET removed_at = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
           old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
     WHERE x.user_id = uid AND x.id = d.id AND d.kind = 'removed';
    IF NOT is_new THEN
        INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value, new_value)
        SELECT uid, sid,
               CASE d.kind WHEN 'removed' THEN 'dependency_removed'
                           WHEN 'version' THEN 'dependency_version_changed'
                           ELSE 'dependency_added' END,
               d.package_name || CASE WHEN d.dependency_type = 'direct' THEN '' ELSE ' (' || d.dependency_type || ')' END,
               CASE WHEN d.kind IN ('version', 'removed') THEN d.old_version END,
               CASE WHEN d.kind <> 'removed' THEN d.version END
          FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
               old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
         WHERE d.kind IN ('added', 'readded', 'removed', 'version')
         ORDER BY d.kind, d.package_name, d.dependency_type
        ON CONFLICT DO NOTHING;
    END IF;

    IF changed_state THEN
        PERFORM lattice.ingest_graph_changed();
    END IF;

    RETURN pg_catalog.jsonb_build_object('success', true, 'serviceId', sid,
                                         'routesProcessed', chk.routes,
                                         'dependenciesProcessed', chk.dependencies);
END
$$;

-- Traces ----------------------------------------------------------------------

-- One trace, resolved: its service, its route key and its caller.
CREATE TYPE lattice.ingest_trace AS (
    idx         integer,
    service_id  uuid,
    environment text,
    method      text,
    path        text,
    matched     boolean,
    duration_ms double precision,
    status      integer,
    caller      text,
    at          timestamptz
);

-- One edge's share of a trace batch in one bucket.
CREATE TYPE lattice.ingest_edge AS (
    source      uuid,
    target      uuid,
    bucket      timestamptz,
    calls       bigint,
    errors      bigint,
    client_errors bigint,
    total_ms    double precision,
    hist        bigint[],
    first_at    timestamptz,
    last_at     timestamptz
);

-- One call between two nodes: its ends, when it started, how long it took
-- and its HTTP status.
CREATE TYPE lattice.ingest_call AS (
    source      uuid,
    target      uuid,
    at          timestamptz,
    duration_ms double precision,
    status      integer
);

-- Calls summed per edge and bucket, for lattice.ingest_edges: the calls,
-- the 5xx and the 4xx, the time they took (total and histogram), the first
-- and the last.  A call without both ends, or from a node to itself, is
-- left out.  NULL when nothing is left.
CREATE FUNCTION lattice.ingest_edge_batch(calls lattice.ingest_call[]) RETURNS lattice.ingest_edge[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.array_agg(ROW(e.source, e.target, e.bucket, e.n, e.e5, e.e4, e.total, e.h, e.first, e.last)
                                ::lattice.ingest_edge ORDER BY e.source, e.target, e.bucket)
      FROM (SELECT c.source, c.target,
                   pg_catalog.date_bin(lattice.ingest_bucket_width(), c.at, timestamptz '2000-01-01') AS bucket,
                   pg_catalog.count(*) AS n,
                   pg_catalog.count(*) FILTER (WHERE c.status >= 500) AS e5,
                   pg_catalog.count(*) FILTER (WHERE c.status BETWEEN 400 AND 499) AS e4,
                   pg_catalog.sum(c.duration_ms) AS total,
                   lattice.hist_of(pg_catalog.array_agg(c.duration_ms)) AS h,
                   pg_catalog.min(c.at) AS first, pg_catalog.max(c.at) AS last
              FROM pg_catalog.unnest(calls) c
             WHERE c.source IS NOT NULL AND c.target IS NOT NULL AND c.source <> c.target
             GROUP BY 1, 2, 3) e
$$;

-- Records edges source -> target per bucket: edge_stats, the connections'
-- totals, and an edge_added event for each new connection.  Returns how many
-- connections are new.  The user is passed (not read from the session) so
-- the background worker can record an account's edges too.
CREATE FUNCTION lattice.ingest_edges(tenant uuid, batch lattice.ingest_edge[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    edges jsonb;
BEGIN
    INSERT INTO lattice.edge_stats AS s
        (user_id, source_service_id, target_service_id, bucket, call_count, error_count,
         total_duration_ms, latency_hist)
    SELECT ingest_edges.tenant, e.source, e.target, e.bucket, pg_catalog.sum(e.calls), pg_catalog.sum(e.errors),
           pg_catalog.sum(e.total_ms), lattice.hist_sum(e.hist)
      FROM pg_catalog.unnest(ingest_edges.batch) e
     GROUP BY e.source, e.target, e.bucket
     ORDER BY 2, 3, 4
    ON CONFLICT (user_id, source_service_id, target_service_id, bucket) DO UPDATE SET
        call_count = s.call_count + EXCLUDED.call_count,
        error_count = s.error_count + EXCLUDED.error_count,
        total_duration_ms = s.total_duration_ms + EXCLUDED.total_duration_ms,
        latency_hist = lattice.hist_add(s.latency_hist, EXCLUDED.latency_hist);

    WITH up AS (
        INSERT INTO lattice.connections AS k
            (user_id, source_service_id, target_service_id, call_count, error_count, client_error_count,
             total_duration_ms, latency_hist, first_seen, last_seen)
        SELECT ingest_edges.tenant, e.source, e.target, pg_catalog.sum(e.calls), pg_catalog.sum(e.errors),
               pg_catalog.sum(e.client_errors), pg_catalog.sum(e.total_ms), lattice.hist_sum(e.hist),
               pg_catalog.min(e.first_at), pg_catalog.max(e.last_at)
          FROM pg_catalog.unnest(ingest_edges.batch) e
         GROUP BY e.source, e.target
         ORDER BY 2, 3
        ON CONFLICT (user_id, source_service_id, target_service_id) DO UPDATE SET
            call_count = k.call_count + EXCLUDED.call_count,
            error_count = k.error_count + EXCLUDED.error_count,
            client_error_count = k.client_error_count + EXCLUDED.client_error_count,
            total_duration_ms = k.total_duration_ms + EXCLUDED.total_duration_ms,
            latency_hist = lattice.hist_add(k.latency_hist, EXCLUDED.latency_hist),
            first_seen = LEAST(k.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(k.last_seen, EXCLUDED.last_seen)
        RETURNING (xmax = 0) AS inserted, k.source_service_id, k.target_service_id, k.first_seen
    )
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'source', up.source_service_id, 'target', up.target_service_id, 'at', up.first_seen))
               FILTER (WHERE up.inserted), '[]')
      INTO edges
      FROM up;
    INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
    SELECT ingest_edges.tenant, e.at, 'edge_added', e.source, e.target
      FROM pg_catalog.jsonb_to_recordset(edges) AS e(source uuid, target uuid, at timestamptz)
    ON CONFLICT DO NOTHING;

    RETURN pg_catalog.jsonb_array_length(edges);
END
$$;

-- Applies a validated {"traces": [...]} document: per-route buckets, edges
-- caller -> service (an unknown caller becomes an external node), liveness.
-- A trace whose service never registered is reported in `failures`.
CREATE FUNCTION lattice.ingest_trace_doc(doc jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    uid uuid := lattice.ingest_tenant();
    batch lattice.ingest_trace[];
    edge_batch lattice.ingest_edge[];
    keep interval := lattice.ingest_setting('retention');
    width interval := lattice.ingest_bucket_width();
    new_nodes bigint := 0;
    new_edges bigint := 0;
    new_buckets bigint := 0;
    known jsonb;
    results jsonb;
    failures jsonb;
BEGIN
    WITH t AS (
        SELECT (o - 1)::integer AS idx, e ->> 'service_id' AS sname,
               COALESCE(e ->> 'method', NULLIF(pg_catalog.split_part(e ->> 'operation_name', ' ', 1), '')) AS method,
               e ->> 'path' AS path, e ->> 'operation_name' AS operation,
               (e ->> 'duration_ms')::double precision AS d, (e ->> 'status_code')::integer AS sc,
               NULLIF(e ->> 'caller_service', '') AS caller,
               COALESCE((e ->> 'start_time')::timestamptz, (e ->> 'timestamp')::timestamptz) AS at
          FROM pg_catalog.jsonb_array_elements(doc -> 'traces') WITH ORDINALITY AS x(e, o)
    ), svc AS (
        SELECT DISTINCT ON (s.name) s.id, s.name, s.environment
          FROM lattice.services s
         WHERE s.user_id = uid AND NOT s.is_external AND s.name IN (SELECT t.sname FROM t)
         ORDER BY s.name, s.last_seen DESC
    ), tpl AS (
        SELECT r.service_id, pg_catalog.array_agg(r.method || ' ' || r.path ORDER BY r.method, r.path) AS arr
          FROM lattice.routes r
         WHERE r.user_id = uid AND r.service_id IN (SELECT svc.id FROM svc) AND r.removed_at IS NULL
         GROUP BY r.service_id
    )
    SELECT pg_catalog.array_agg(ROW(t.idx, svc.id, svc.environment, k.method, k.path, k.matched, t.d, t.sc, t.caller,
                                    CASE WHEN t.at IS NULL OR t.at > pg_catalog.now() + interval '5 minutes'
                                              OR t.at < pg_catalog.now() - keep
                                         THEN pg_catalog.now() ELSE t.at END)::lattice.ingest_trace
                                ORDER BY t.idx)
      INTO batch
      FROM t
      LEFT JOIN svc ON svc.name = t.sname
      LEFT JOIN tpl ON tpl.service_id = svc.id
      CROSS JOIN LATERAL (SELECT lattice.ingest_match_route(tpl.arr, t.method, t.path) AS pos) m
      CROSS JOIN LATERAL (
          SELECT CASE WHEN m.pos IS NOT NULL THEN pg_catalog.split_part(tpl.arr[m.pos], ' ', 1)
                      ELSE COALESCE(t.method, '-') END AS method,
                 CASE WHEN m.pos IS NOT NULL
                      THEN pg_catalog.substr(tpl.arr[m.pos], pg_catalog.strpos(tpl.arr[m.pos], ' ') + 1)
                      WHEN t.path IS NOT NULL THEN lattice.ingest_normalise_path(t.path)
                      ELSE COALESCE(t.operation, '-') END AS path,
                 m.pos IS NOT NULL AS matched) k;

    -- The tenant's services the callers name, read once: the statements
    -- below then join nothing of the tenant's but what is in variables, so
    -- on Citus each is one task on the tenant's worker.
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', s.id, 'name', s.name, 'environment', s.environment,
               'is_external', s.is_external, 'last_seen', s.last_seen)), '[]')
      INTO known
      FROM lattice.services s
     WHERE s.user_id = uid
       AND s.name = ANY (ARRAY(SELECT DISTINCT r.caller FROM pg_catalog.unnest(batch) r
                                WHERE r.service_id IS NOT NULL AND r.caller IS NOT NULL));

    -- Callers that are no known service become external nodes.
    WITH added AS (
        INSERT INTO lattice.services (user_id, name, environment, is_external, kind, status)
        SELECT DISTINCT uid, r.caller, r.environment, true, 'external', 'external'
          FROM pg_catalog.unnest(batch) r
         WHERE r.service_id IS NOT NULL AND r.caller IS NOT NULL
           AND NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements(known) k WHERE k ->> 'name' = r.caller)
         ORDER BY r.caller, r.environment
        ON CONFLICT (user_id, name, environment) DO NOTHING
        RETURNING id, name, environment, is_external, first_seen, last_seen
    )
    SELECT known || COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', a.id, 'name', a.name, 'environment', a.environment, 'is_external', a.is_external,
               'last_seen', a.last_seen, 'first_seen', a.first_seen)), '[]'),
           pg_catalog.count(*)
      INTO known, new_nodes
      FROM added a;
    INSERT INTO lattice.graph_events (user_id, at, kind, service_id, name, environment)
    SELECT uid, a.first_seen, 'service_added', a.id, a.name, a.environment
      FROM pg_catalog.jsonb_to_recordset(known) AS a(id uuid, name text, environment text, first_seen timestamptz)
     WHERE a.first_seen IS NOT NULL
    ON CONFLICT DO NOTHING;

    -- Route buckets (ordered, so concurrent batches lock rows in one order).
    WITH up AS (
        INSERT INTO lattice.route_stats AS s
            (user_id, service_id, method, path, bucket, matched, request_count, error_count,
             client_error_count, total_duration_ms, max_duration_ms, latency_hist)
        SELECT uid, r.service_id, r.method, r.path, pg_catalog.date_bin(width, r.at, timestamptz '2000-01-01'),
               pg_catalog.bool_or(r.matched), pg_catalog.count(*),
               pg_catalog.count(*) FILTER (WHERE r.status >= 500),
               pg_catalog.count(*) FILTER (WHERE r.status BETWEEN 400 AND 499),
               pg_catalog.sum(r.duration_ms), pg_catalog.max(r.duration_ms),
               lattice.hist_of(pg_catalog.array_agg(r.duration_ms))
          FROM pg_catalog.unnest(batch) r
         WHERE r.service_id IS NOT NULL
         GROUP BY r.service_id, r.method, r.path, pg_catalog.date_bin(width, r.at, timestamptz '2000-01-01')
         ORDER BY 2, 3, 4, 5
        ON CONFLICT (user_id, service_id, method, path, bucket) DO UPDATE SET
            request_count = s.request_count + EXCLUDED.request_count,
            error_count = s.error_count + EXCLUDED.error_count,
            client_error_count = s.client_error_count + EXCLUDED.client_error_count,
            total_duration_ms = s.total_duration_ms + EXCLUDED.total_duration_ms,
            max_duration_ms = GREATEST(s.max_duration_ms, EXCLUDED.max_duration_ms),
            latency_hist = lattice.hist_add(s.latency_hist, EXCLUDED.latency_hist)
        RETURNING (xmax = 0) AS inserted
    )
    SELECT pg_catalog.count(*) FILTER (WHERE up.inserted) INTO new_buckets FROM up;

    -- Edges caller -> service.  Each caller is looked up by name once (in
    -- `known`), preferring the callee's environment and registered services.
    SELECT lattice.ingest_edge_batch(pg_catalog.array_agg(
               ROW(c.source, r.service_id, r.at, r.duration_ms, r.status)::lattice.ingest_call))
      INTO edge_batch
      FROM pg_catalog.unnest(batch) r
      JOIN (SELECT n.caller, n.environment,
                   (SELECT x.id
                      FROM pg_catalog.jsonb_to_recordset(known)
                           AS x(id uuid, name text, environment text, is_external boolean, last_seen timestamptz)
                     WHERE x.name = n.caller
                     ORDER BY (x.environment = n.environment) DESC, x.is_external, x.last_seen DESC
                     LIMIT 1) AS source
              FROM (SELECT DISTINCT b.caller, b.environment FROM pg_catalog.unnest(batch) b
                     WHERE b.service_id IS NOT NULL AND b.caller IS NOT NULL) n) c
        ON c.caller = r.caller AND c.environment = r.environment
     WHERE r.service_id IS NOT NULL;

    new_edges := lattice.ingest_edges(uid, edge_batch);

    -- A service sending traces is alive; written at most once a minute.
    UPDATE lattice.services s SET last_seen = pg_catalog.now()
     WHERE s.user_id = uid AND s.id IN (SELECT r.service_id FROM pg_catalog.unnest(batch) r)
       AND s.last_seen < pg_catalog.now() - interval '1 minute';

    IF new_nodes > 0 OR new_edges > 0 THEN
        PERFORM lattice.ingest_graph_changed();
    END IF;
    IF new_buckets > 0 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;

    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'index', r.idx, 'serviceId', r.service_id,
               'route', CASE WHEN r.matched THEN r.method || ' ' || r.path END) ORDER BY r.idx)
               FILTER (WHERE r.service_id IS NOT NULL), '[]'),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'index', r.idx,
               'error', pg_catalog.jsonb_build_object('code', 'unknown_service',
                   'message', 'no service of this name has submitted metadata')) ORDER BY r.idx)
               FILTER (WHERE r.service_id IS NULL)
      INTO results, failures
      FROM pg_catalog.unnest(batch) r;

    RETURN pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'success', failures IS NULL,
        'processed', pg_catalog.jsonb_array_length(results),
        'failed', COALESCE(pg_catalog.jsonb_array_length(failures), 0),
        'results', results,
        'failures', failures));
END
$$;

-- POST /performance/traces/batch
CREATE FUNCTION lattice.ingest_traces(body text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
BEGIN
    PERFORM lattice.ingest_tenant();
    PERFORM lattice.ingest_check('traces', body);
    doc := body::jsonb;
    PERFORM lattice.rate_enforce_ingest(doc #>> '{traces,0,service_id}');
    RETURN lattice.ingest_trace_doc(doc);
END
$$;

-- POST /metrics (legacy): {serviceName, metrics: [{method, path, statusCode,
-- responseTime, timestamp, callerServiceName}]}, applied as traces.
CREATE FUNCTION lattice.ingest_legacy_metrics(body text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
BEGIN
    PERFORM lattice.ingest_tenant();
    PERFORM lattice.ingest_check('metrics', body);
    doc := body::jsonb;
    PERFORM lattice.rate_enforce_ingest(doc ->> 'serviceName');
    RETURN lattice.ingest_trace_doc(pg_catalog.jsonb_build_object('traces', (
        SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                   'service_id', doc ->> 'serviceName',
                   'method', m ->> 'method',
                   'path', m ->> 'path',
                   'status_code', m -> 'statusCode',
                   'duration_ms', m -> 'responseTime',
                   'caller_service', m ->> 'callerServiceName',
                   'timestamp', CASE WHEN pg_catalog.jsonb_typeof(m -> 'timestamp') = 'string' THEN m ->> 'timestamp'
                                     WHEN pg_catalog.jsonb_typeof(m -> 'timestamp') = 'number'
                                     THEN pg_catalog.to_char(pg_catalog.to_timestamp((m ->> 'timestamp')::numeric / 1000)
                                                             AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END))
                   ORDER BY o)
          FROM pg_catalog.jsonb_array_elements(doc -> 'metrics') WITH ORDINALITY AS x(m, o))));
END
$$;

-- Errors ----------------------------------------------------------------------

-- Removes secrets the plugin's scrubber may have missed: card and SSN-like
-- digit groups, Bearer/Basic credentials, JWTs, Lattice API keys.
CREATE FUNCTION lattice.scrub_text(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.regexp_replace(pg_catalog.regexp_replace(pg_catalog.regexp_replace(
           pg_catalog.regexp_replace(pg_catalog.regexp_replace(t,
        '(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+', '\1 [REDACTED]', 'gi'),
        'eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+', '[REDACTED]', 'g'),
        'ltc_[A-Za-z0-9_-]{16,}', '[REDACTED]', 'g'),
        '\m[0-9]{3}-[0-9]{2}-[0-9]{4}\M', '[REDACTED]', 'g'),
        '\m[0-9](?:[ -]?[0-9]){12,18}\M', '[REDACTED]', 'g')
$$;

-- scrub_text on every string, and values of secret-looking keys replaced.
CREATE FUNCTION lattice.scrub_json(j jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    CASE pg_catalog.jsonb_typeof(j)
    WHEN 'object' THEN
        RETURN COALESCE((SELECT pg_catalog.jsonb_object_agg(k,
                    CASE WHEN pg_catalog.lower(k) ~ '(pass|secret|token|authorization|cookie|api[-_]?key|credit|card|ssn|cvv)'
                         THEN '"[REDACTED]"'::jsonb ELSE lattice.scrub_json(v) END)
                  FROM pg_catalog.jsonb_each(j) AS e(k, v)), '{}'::jsonb);
    WHEN 'array' THEN
        RETURN COALESCE((SELECT pg_catalog.jsonb_agg(lattice.scrub_json(v) ORDER BY o)
                  FROM pg_catalog.jsonb_array_elements(j) WITH ORDINALITY AS a(v, o)), '[]'::jsonb);
    WHEN 'string' THEN
        RETURN pg_catalog.to_jsonb(lattice.scrub_text(j #>> '{}'));
    ELSE
        RETURN j;
    END CASE;
END
$$;

-- The message with its variable parts (numbers, ids, quoted values, e-mail
-- addresses) replaced, so that one kind of error groups together.
CREATE FUNCTION lattice.error_message_shape(message text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.regexp_replace(pg_catalog.regexp_replace(pg_catalog.regexp_replace(
           pg_catalog.regexp_replace(pg_catalog.regexp_replace(message,
        '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}', '<email>', 'g'),
        '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}', '<uuid>', 'g'),
        '"[^"]*"|''[^'']*''', '<str>', 'g'),
        '\m0x[0-9a-fA-F]+\M|\m[0-9a-f]{12,}\M', '<hex>', 'g'),
        '[0-9]+(\.[0-9]+)?', '<n>', 'g')
$$;

-- The first frame of the application (outside node_modules), else the first.
CREATE FUNCTION lattice.error_top_frame(stack jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(f ->> 'filename', '?') || ':' || COALESCE(f ->> 'function_name', '?')
      FROM pg_catalog.jsonb_array_elements(COALESCE(stack, '[]')) WITH ORDINALITY AS x(f, o)
     ORDER BY COALESCE(f ->> 'filename', '') LIKE '%node_modules%', o
     LIMIT 1
$$;

CREATE FUNCTION lattice.error_fingerprint(error_type text, message text, top_frame text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.md5(error_type || E'\n' || lattice.error_message_shape(message) || E'\n'
                          || COALESCE(top_frame, ''))
$$;

-- Applies validated error events: grouped by fingerprint, counted, the
-- latest sample kept; a resolved group that recurs re-opens.
CREATE FUNCTION lattice.ingest_error_items(items jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    uid uuid := lattice.ingest_tenant();
    e jsonb;
    i integer;
    sid uuid;
    env text;
    msg text;
    frame text;
    fp text;
    at timestamptz;
    received timestamptz := pg_catalog.now();
    g record;
    prev_status text;
    results jsonb := '[]';
    failures jsonb := '[]';
BEGIN
    FOR e, i IN SELECT x.e, (x.o - 1)::integer FROM pg_catalog.jsonb_array_elements(items) WITH ORDINALITY AS x(e, o)
    LOOP
        env := e ->> 'environment';
        SELECT s.id INTO sid FROM lattice.services s
         WHERE s.user_id = uid AND s.name = e ->> 'service_id' AND NOT s.is_external
         ORDER BY (s.environment = env) DESC, s.last_seen DESC
         LIMIT 1;
        IF sid IS NULL THEN
            failures := failures || pg_catalog.jsonb_build_object('index', i,
                'error', pg_catalog.jsonb_build_object('code', 'unknown_service',
                    'message', 'no service of this name has submitted metadata'));
            CONTINUE;
        END IF;
        msg := lattice.scrub_text(e ->> 'message');
        frame := lattice.error_top_frame(e -> 'stack_trace');
        fp := lattice.error_fingerprint(e ->> 'error_type', msg, frame);
        at := COALESCE((e ->> 'timestamp')::timestamptz, pg_catalog.now());
        IF at > pg_catalog.now() + interval '5 minutes' THEN
            at := pg_catalog.now();
        END IF;

        SELECT x.status INTO prev_status FROM lattice.error_groups x
         WHERE x.user_id = uid AND x.service_id = sid AND x.fingerprint = fp FOR UPDATE;

        INSERT INTO lattice.error_groups AS x
            (user_id, service_id, fingerprint, environment, error_type, message, top_frame,
             occurrence_count, first_seen, last_seen, sample_stack, sample_context)
        VALUES (uid, sid, fp, env, e ->> 'error_type', msg, frame, 1, at, at,
                e -> 'stack_trace', lattice.scrub_json(e -> 'context'))
        ON CONFLICT (user_id, service_id, fingerprint) DO UPDATE SET
            occurrence_count = x.occurrence_count + 1,
            first_seen = LEAST(x.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(x.last_seen, EXCLUDED.last_seen),
            message = EXCLUDED.message,
            environment = EXCLUDED.environment,
            sample_stack = EXCLUDED.sample_stack,
            sample_context = EXCLUDED.sample_context,
            status = CASE WHEN x.status = 'resolved' THEN 'open' ELSE x.status END,
            resolved_at = CASE WHEN x.status = 'resolved' THEN NULL ELSE x.resolved_at END,
            reopened_at = CASE WHEN x.status = 'resolved' THEN received ELSE x.reopened_at END,
            reopened_count = x.reopened_count + CASE WHEN x.status = 'resolved' THEN 1 ELSE 0 END
        RETURNING x.id, (x.xmax = 0) AS is_new, x.occurrence_count, x.status, x.error_type,
                  COALESCE(prev_status = 'resolved', false) AS reopened
        INTO g;

        INSERT INTO lattice.error_occurrences (user_id, group_id, at, session_id, message, context)
        VALUES (uid, g.id, at, e ->> 'session_id', msg, lattice.scrub_json(e -> 'context'));

        IF g.reopened THEN
            INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, new_value)
            VALUES (uid, sid, 'error_reopened', g.error_type, pg_catalog.left(msg, 200));
        END IF;

        results := results || pg_catalog.jsonb_build_object('index', i, 'id', g.id, 'fingerprint', fp,
            'is_new', g.is_new, 'occurrence_count', g.occurrence_count, 'status', g.status,
            'reopened', g.reopened);
    END LOOP;

    IF pg_catalog.random() < 0.01 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;

    RETURN pg_catalog.jsonb_build_object(
        'success', pg_catalog.jsonb_array_length(failures) = 0,
        'processed', pg_catalog.jsonb_array_length(results),
        'failed', pg_catalog.jsonb_array_length(failures),
        'results', results)
        || CASE WHEN pg_catalog.jsonb_array_length(failures) > 0
                THEN pg_catalog.jsonb_build_object('failures', failures) ELSE '{}'::jsonb END;
END
$$;

-- POST /errors/batch {errors: [...]}
CREATE FUNCTION lattice.ingest_errors(body text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
BEGIN
    PERFORM lattice.ingest_tenant();
    PERFORM lattice.ingest_check('errors', body);
    doc := body::jsonb;
    PERFORM lattice.rate_enforce_ingest(doc #>> '{errors,0,service_id}');
    RETURN lattice.ingest_error_items(doc -> 'errors');
END
$$;

-- POST /errors (browser SDK): one error; its result, or 422 unknown_service.
CREATE FUNCTION lattice.ingest_error(body text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    doc jsonb;
    r jsonb;
BEGIN
    PERFORM lattice.ingest_tenant();
    PERFORM lattice.ingest_check('error', body);
    doc := body::jsonb;
    PERFORM lattice.rate_enforce_ingest(doc ->> 'service_id');
    r := lattice.ingest_error_items(pg_catalog.jsonb_build_array(doc));
    IF (r ->> 'failed')::integer > 0 THEN
        PERFORM lattice.raise_http(422, 'unknown_service', 'no service of this name has submitted metadata',
                                   pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                                       'path', 'service_id', 'message', 'is not a registered service')));
    END IF;
    RETURN pg_catalog.jsonb_build_object('success', true) || ((r -> 'results') -> 0);
END
$$;

-- Breadcrumbs -----------------------------------------------------------------

-- POST /breadcrumbs {breadcrumbs: [...]}: stored by session.
CREATE FUNCTION lattice.ingest_breadcrumbs(body text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    uid uuid := lattice.ingest_tenant();
    n bigint;
BEGIN
    PERFORM lattice.ingest_check('breadcrumbs', body);
    PERFORM lattice.rate_enforce_ingest('browser');
    INSERT INTO lattice.breadcrumbs (user_id, session_id, category, level, message, data, at)
    SELECT uid, b ->> 'session_id', b ->> 'category', b ->> 'level', lattice.scrub_text(b ->> 'message'),
           lattice.scrub_json(b -> 'data'),
           LEAST(COALESCE((b ->> 'timestamp')::timestamptz, pg_catalog.now()), pg_catalog.now() + interval '5 minutes')
      FROM pg_catalog.jsonb_array_elements(body::jsonb -> 'breadcrumbs') WITH ORDINALITY AS x(b, o)
     ORDER BY o
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF pg_catalog.random() < 0.01 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;
    RETURN pg_catalog.jsonb_build_object('success', true, 'stored', n);
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.ingest_check(text, text), lattice.ingest_check_metadata(text),
    lattice.ingest_match_route(text[], text, text), lattice.ingest_normalise_path(text),
    lattice.hist_empty(), lattice.hist_of(double precision[]), lattice.hist_add(bigint[], bigint[]),
    lattice.hist_percentile(bigint[], double precision), lattice.hist_sum(bigint[]),
    lattice.ingest_setting(text), lattice.ingest_bucket_width(), lattice.service_liveness(timestamptz, boolean),
    lattice.may_ingest(uuid), lattice.require_ingest(uuid), lattice.check_service_limit(uuid),
    lattice.ingest_graph_changed(), lattice.ingest_tenant(), lattice.ingest_prune(uuid),
    lattice.ingest_metadata(text), lattice.ingest_edge_batch(lattice.ingest_call[]),
    lattice.ingest_edges(uuid, lattice.ingest_edge[]),
    lattice.ingest_trace_doc(jsonb), lattice.ingest_traces(text),
    lattice.ingest_legacy_metrics(text), lattice.scrub_text(text), lattice.scrub_json(jsonb),
    lattice.error_message_shape(text), lattice.error_top_frame(jsonb),
    lattice.error_fingerprint(text, text, text), lattice.ingest_error_items(jsonb),
    lattice.ingest_errors(text), lattice.ingest_error(text), lattice.ingest_breadcrumbs(text)
TO lattice_app;
-- OpenTelemetry traces (OTLP), mapped onto the same services, routes,
-- connections and error groups the plugin fills (docs/opentelemetry.md).
--
-- The shim undoes gzip and turns protobuf into OTLP/JSON; from there one
-- path: lattice.otlp_flatten (src/otlp_flatten_core.c) checks each span and
-- keeps what is read here, rejected spans are counted for the answer's
-- partial_success, and lattice.ingest_otlp maps the rest:
--   resource                 -> the service (name, environment), registered
--                               on first sight like a plugin's, same ids
--   SERVER span              -> a trace of its route (http.route + method) in
--                               route_stats; its caller, when known, an edge
--   CLIENT span -> SERVER    -> an edge caller -> callee, matched by the
--     span of the same trace    server span's parent id, in one request or
--                               across requests through lattice.otlp_pending
--   CLIENT span, unmatched   -> an edge to an external node (peer.service,
--                               server.address[:port]) once the match window
--                               has passed
--   db.system span           -> an edge to a database node
--   messaging span           -> producer -> queue node -> consumer
--   "exception" event        -> an error group, as the plugin's errors

CREATE FUNCTION lattice.otlp_flatten(body text, not_before timestamptz, not_after timestamptz) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_otlp_flatten'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- How long a span waits for its other half, and how many wait per account.
CREATE FUNCTION lattice.otlp_match_window() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('lattice.otlp_match_window', true), ''), '60 seconds')::interval
$$;

CREATE FUNCTION lattice.otlp_match_capacity() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('lattice.otlp_match_capacity', true), ''), '10000')::integer
$$;

-- One half of a cross-service call waiting for the other: a CLIENT span
-- (side 'c', keyed by its own span id) or a SERVER span (side 's', keyed by
-- its parent's id), with the figures the edge will carry.  Bounded by
-- lattice.otlp_match_capacity() rows per account and kept until expires_at;
-- unlogged: after a crash only matches in flight are lost.
CREATE UNLOGGED TABLE lattice.otlp_pending (
    user_id             uuid NOT NULL,
    trace_id            bytea NOT NULL,
    span_id             bytea NOT NULL,
    side                "char" NOT NULL CHECK (side IN ('c', 's')),
    service_id          uuid NOT NULL,
    peer                text,
    environment         text NOT NULL,
    at                  timestamptz NOT NULL,
    duration_ms         double precision NOT NULL,
    status              integer NOT NULL,
    expires_at          timestamptz NOT NULL,
    PRIMARY KEY (user_id, trace_id, span_id, side)
);
CREATE INDEX ON lattice.otlp_pending (user_id, expires_at);

-- One flattened span, with its service's id.
CREATE TYPE lattice.otlp_span AS (
    idx         integer,
    service_id  uuid,
    service     text,
    environment text,
    kind        integer,
    trace       bytea,
    span        bytea,
    parent      bytea,
    name        text,
    at          timestamptz,
    ms          double precision,
    status      integer,
    method      text,
    route       text,
    target      text,
    peer        text,
    db          text,
    db_name     text,
    mq          text,
    destination text,
    exceptions  jsonb
);

-- The service a resource names, registered on first sight (the plan's
-- service limit applies: NULL when it refuses) and kept alive; an
-- OpenTelemetry-only service takes its version and language from the
-- resource, a plugin-registered one keeps its snapshot's.
CREATE FUNCTION lattice.otlp_service(tenant uuid, name text, environment text, version text,
                                     language text, runtime text, OUT id uuid, OUT changed boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old lattice.services;
BEGIN
    changed := false;
    SELECT s.* INTO old FROM lattice.services s
     WHERE s.user_id = otlp_service.tenant AND s.name = otlp_service.name
       AND s.environment = otlp_service.environment;
    IF old.id IS NOT NULL AND NOT old.is_external THEN
        id := old.id;
        IF old.snapshot_hash IS NULL AND (old.version, old.language, old.runtime)
                IS DISTINCT FROM (otlp_service.version, otlp_service.language, otlp_service.runtime) THEN
            UPDATE lattice.services s
               SET version = otlp_service.version, language = otlp_service.language,
                   runtime = otlp_service.runtime, last_seen = pg_catalog.now()
             WHERE s.user_id = otlp_service.tenant AND s.id = old.id;
            IF old.version IS DISTINCT FROM otlp_service.version THEN
                INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value, new_value)
                VALUES (otlp_service.tenant, old.id, 'service_version_changed', old.name, old.version,
                        otlp_service.version);
            END IF;
            changed := true;
        ELSIF old.last_seen < pg_catalog.now() - interval '1 minute' THEN
            UPDATE lattice.services s SET last_seen = pg_catalog.now()
             WHERE s.user_id = otlp_service.tenant AND s.id = old.id;
        END IF;
        RETURN;
    END IF;

    BEGIN
        PERFORM lattice.check_service_limit(otlp_service.tenant);
    EXCEPTION WHEN SQLSTATE 'PT403' THEN
        id := NULL;
        RETURN;
    END;
    IF old.id IS NOT NULL THEN  -- an external node of this name becomes the service
        UPDATE lattice.services s
           SET is_external = false, kind = 'service', status = 'active', version = otlp_service.version,
               language = otlp_service.language, runtime = otlp_service.runtime,
               discovered_by = '{"via": "opentelemetry"}', last_seen = pg_catalog.now()
         WHERE s.user_id = otlp_service.tenant AND s.id = old.id;
        id := old.id;
    ELSE
        INSERT INTO lattice.services (user_id, name, environment, version, language, runtime, discovered_by)
        VALUES (otlp_service.tenant, otlp_service.name, otlp_service.environment, otlp_service.version,
                otlp_service.language, otlp_service.runtime, '{"via": "opentelemetry"}')
        ON CONFLICT ON CONSTRAINT services_user_id_name_environment_key DO NOTHING
        RETURNING services.id INTO id;
        IF id IS NULL THEN  -- registered concurrently
            SELECT s.id INTO id FROM lattice.services s
             WHERE s.user_id = otlp_service.tenant AND s.name = otlp_service.name
               AND s.environment = otlp_service.environment;
            RETURN;
        END IF;
        INSERT INTO lattice.graph_events (user_id, kind, service_id, name, environment)
        VALUES (otlp_service.tenant, 'service_added', id, otlp_service.name, otlp_service.environment);
    END IF;
    INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, new_value)
    VALUES (otlp_service.tenant, id, 'service_registered',
            otlp_service.name || ' (' || otlp_service.environment || ')', otlp_service.version);
    changed := true;
END
$$;

-- The node a name stands for: a service or node of that name (the same
-- environment first, registered services first), else a new external node
-- of the given kind.  `added` says whether it is new.
CREATE FUNCTION lattice.otlp_node(tenant uuid, name text, environment text, kind text,
                                  OUT id uuid, OUT added boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    added := false;
    SELECT s.id INTO id FROM lattice.services s
     WHERE s.user_id = otlp_node.tenant AND s.name = otlp_node.name
     ORDER BY (s.environment = otlp_node.environment) DESC, s.is_external, s.last_seen DESC
     LIMIT 1;
    IF id IS NOT NULL THEN
        RETURN;
    END IF;
    INSERT INTO lattice.services (user_id, name, environment, is_external, kind, status)
    VALUES (otlp_node.tenant, otlp_node.name, otlp_node.environment, true, otlp_node.kind, 'external')
    ON CONFLICT ON CONSTRAINT services_user_id_name_environment_key DO NOTHING
    RETURNING services.id INTO id;
    IF id IS NULL THEN
        SELECT s.id INTO id FROM lattice.services s
         WHERE s.user_id = otlp_node.tenant AND s.name = otlp_node.name
           AND s.environment = otlp_node.environment;
        RETURN;
    END IF;
    added := true;
    INSERT INTO lattice.graph_events (user_id, kind, service_id, name, environment)
    VALUES (otlp_node.tenant, 'service_added', id, otlp_node.name, otlp_node.environment);
END
$$;

-- Edges with an end that is a name (external, database, queue nodes): the
-- ends of each call resolved to nodes (created when new), then recorded.
-- calls: [{source, source_kind, target, target_kind, environment, at, ms,
-- status}], where an end without a kind is a service id and an end with a
-- kind is the name of a node of that kind.  Returns the number of new nodes
-- and edges.
CREATE FUNCTION lattice.otlp_named_edges(tenant uuid, calls jsonb) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names jsonb := '{}';
    n record;
    node record;
    created bigint := 0;
    batch lattice.ingest_edge[];
BEGIN
    FOR n IN SELECT DISTINCT x.name, x.kind, x.environment
               FROM pg_catalog.jsonb_to_recordset(calls) AS c(source text, source_kind text, target text,
                        target_kind text, environment text),
                    LATERAL (VALUES (c.source, c.source_kind, c.environment),
                                    (c.target, c.target_kind, c.environment)) x(name, kind, environment)
              WHERE x.kind IS NOT NULL
              ORDER BY 1, 2, 3 LOOP
        node := lattice.otlp_node(tenant, n.name, n.environment, n.kind);
        names := names || pg_catalog.jsonb_build_object(n.name || E'\n' || n.environment, node.id);
        created := created + node.added::integer;
    END LOOP;

    SELECT lattice.ingest_edge_batch(pg_catalog.array_agg(ROW(
               CASE WHEN c.source_kind IS NULL THEN c.source::uuid
                    ELSE (names ->> (c.source || E'\n' || c.environment))::uuid END,
               CASE WHEN c.target_kind IS NULL THEN c.target::uuid
                    ELSE (names ->> (c.target || E'\n' || c.environment))::uuid END,
               c.at, c.ms, c.status)::lattice.ingest_call))
      INTO batch
      FROM pg_catalog.jsonb_to_recordset(calls) AS c(source text, source_kind text, target text,
               target_kind text, environment text, at timestamptz, ms double precision, status integer);
    RETURN created + lattice.ingest_edges(tenant, batch);
END
$$;

-- The external edges of this account's client spans that waited in vain,
-- and the end of every expired wait.  Returns the number of new nodes and
-- edges.  Run before each OTLP request of the account and by the usage
-- worker for all (lattice.otlp_expire_all).
CREATE FUNCTION lattice.otlp_expire(tenant uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    calls jsonb;
BEGIN
    WITH gone AS (
        DELETE FROM lattice.otlp_pending p
         WHERE p.user_id = otlp_expire.tenant AND p.expires_at < pg_catalog.now()
        RETURNING p.side, p.service_id, p.peer, p.environment, p.at, p.duration_ms, p.status
    )
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'source', g.service_id, 'target', g.peer, 'target_kind', 'external',
               'environment', g.environment, 'at', g.at, 'ms', g.duration_ms, 'status', g.status))
      INTO calls
      FROM gone g
     WHERE g.side = 'c' AND g.peer IS NOT NULL;
    IF calls IS NULL THEN
        RETURN 0;
    END IF;
    RETURN lattice.otlp_named_edges(tenant, calls);
END
$$;

-- The usage worker's sweep: every account with expired waits.
CREATE FUNCTION lattice.otlp_expire_all() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t uuid;
    changed bigint;
    total bigint := 0;
BEGIN
    FOR t IN SELECT DISTINCT p.user_id FROM lattice.otlp_pending p WHERE p.expires_at < pg_catalog.now() LOOP
        changed := lattice.otlp_expire(t);
        IF changed > 0 THEN
            PERFORM lattice.graph_bump(t);
        END IF;
        total := total + changed;
    END LOOP;
    RETURN total;
END
$$;

-- POST /otlp/v1/traces: one ExportTraceServiceRequest in OTLP/JSON.
-- pre_rejected/pre_message: spans the shim could not carry (not UTF-8).
-- Returns the OTLP answer: {} or {"partialSuccess": {rejectedSpans,
-- errorMessage}}.
CREATE FUNCTION lattice.ingest_otlp(body text, pre_rejected integer DEFAULT 0, pre_message text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    uid uuid := lattice.ingest_tenant();
    flat jsonb;
    rejected bigint;
    message text;
    svc record;
    reg record;
    ids jsonb := '{}';
    n_services integer := 0;
    spans lattice.otlp_span[];
    callers jsonb;
    traces jsonb;
    calls jsonb;
    room integer;
    waiting bytea[];
    changed bigint := 0;
    errors jsonb;
    wait_until timestamptz := pg_catalog.now() + lattice.otlp_match_window();
BEGIN
    flat := lattice.otlp_flatten(COALESCE(NULLIF(body, ''), '{}'),
                                 pg_catalog.now() - lattice.ingest_setting('retention'),
                                 pg_catalog.now() + interval '10 minutes');
    rejected := COALESCE(pre_rejected, 0) + (flat ->> 'rejected')::bigint;
    message := COALESCE(pre_message, flat ->> 'message');
    changed := lattice.otlp_expire(uid);

    -- Services: each counts one request in its ingest quota (429 for all
    -- when one is over: the exporter retries the request).
    FOR svc IN SELECT s.service, COALESCE(s.environment, 'production') AS environment,
                      pg_catalog.min(s.version) AS version, pg_catalog.min(s.language) AS language,
                      pg_catalog.min(s.runtime) AS runtime, pg_catalog.count(*) AS n
                 FROM pg_catalog.jsonb_to_recordset(flat -> 'spans')
                      AS s(service text, environment text, version text, language text, runtime text)
                GROUP BY 1, 2 ORDER BY 1, 2 LOOP
        n_services := n_services + 1;
        IF n_services > 100 THEN
            rejected := rejected + svc.n;
            message := COALESCE(message, 'more than 100 services in one request');
            CONTINUE;
        END IF;
        PERFORM lattice.rate_enforce_ingest(svc.service);
        reg := lattice.otlp_service(uid, svc.service, svc.environment, svc.version, svc.language, svc.runtime);
        IF reg.id IS NULL THEN
            rejected := rejected + svc.n;
            message := COALESCE(message, 'your plan''s service limit is reached: ' || svc.service || ' was not added');
            CONTINUE;
        END IF;
        ids := ids || pg_catalog.jsonb_build_object(svc.service || E'\n' || svc.environment, reg.id);
        changed := changed + reg.changed::integer;
    END LOOP;

    SELECT pg_catalog.array_agg(ROW(s.i, (ids ->> (s.service || E'\n' || COALESCE(s.environment, 'production')))::uuid,
               s.service, COALESCE(s.environment, 'production'), s.kind,
               pg_catalog.decode(s.trace, 'hex'), pg_catalog.decode(s.span, 'hex'), pg_catalog.decode(s.parent, 'hex'),
               s.name, pg_catalog.to_timestamp(s.start), s.ms,
               COALESCE(s.status, CASE WHEN s.failed THEN 500 ELSE 200 END),
               pg_catalog.upper(s.method), s.route, s.target, s.peer, s.db, s.db_name, s.mq, s.destination,
               s.exceptions)::lattice.otlp_span ORDER BY s.i)
      INTO spans
      FROM pg_catalog.jsonb_to_recordset(flat -> 'spans')
           AS s(i integer, service text, environment text, kind integer, trace text, span text, parent text, name text,
                start double precision, ms double precision, status integer, failed boolean, method text,
                route text, target text, peer text, db text, db_name text, mq text, destination text,
                exceptions jsonb)
     WHERE ids ? (s.service || E'\n' || COALESCE(s.environment, 'production'));

    -- Client spans matched to their server spans: in this request, or a
    -- client half that waited for this server span.
    WITH matched AS (
        SELECT srv.idx, cli.service AS caller
          FROM pg_catalog.unnest(spans) srv
          JOIN pg_catalog.unnest(spans) cli
            ON cli.kind = 3 AND cli.trace = srv.trace AND cli.span = srv.parent AND cli.service_id <> srv.service_id
         WHERE srv.kind = 2 AND srv.parent IS NOT NULL
    ), waited AS (
        DELETE FROM lattice.otlp_pending p
         USING pg_catalog.unnest(spans) srv
         WHERE p.user_id = uid AND p.side = 'c' AND srv.kind = 2 AND srv.parent IS NOT NULL
           AND p.trace_id = srv.trace AND p.span_id = srv.parent
           AND srv.idx NOT IN (SELECT m.idx FROM matched m)
        RETURNING srv.idx, p.service_id
    )
    SELECT pg_catalog.jsonb_object_agg(x.idx::text, x.caller)
      INTO callers
      FROM (SELECT m.idx, m.caller FROM matched m
            UNION ALL
            SELECT w.idx, s.name FROM waited w
              JOIN lattice.services s ON s.user_id = uid AND s.id = w.service_id) x;
    callers := COALESCE(callers, '{}');

    -- Server spans are the routes' traces; unnamed routes fall back to the
    -- path (normalised) or the span name.
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'service_id', s.service, 'method', COALESCE(s.method, 'SPAN'),
               'path', COALESCE(s.route, s.target, s.name),
               'status_code', s.status, 'duration_ms', s.ms,
               'start_time', s.at, 'caller_service', callers ->> s.idx::text)) ORDER BY s.idx)
      INTO traces
      FROM pg_catalog.unnest(spans) s
     WHERE s.kind = 2;
    IF traces IS NOT NULL THEN
        INSERT INTO lattice.routes (user_id, service_id, method, path, attrs)
        SELECT DISTINCT uid, s.service_id, s.method, s.route, '{"source": "opentelemetry"}'::jsonb
          FROM pg_catalog.unnest(spans) s
         WHERE s.kind = 2 AND s.route IS NOT NULL AND s.method IS NOT NULL AND s.method <> '_OTHER'
         ORDER BY 2, 3, 4
        ON CONFLICT (user_id, service_id, method, path) DO NOTHING;
        PERFORM lattice.ingest_trace_doc(pg_catalog.jsonb_build_object('traces', traces));
    END IF;

    -- Server spans whose client half reported earlier: the edge, with the
    -- server's figures.
    WITH waited AS (
        DELETE FROM lattice.otlp_pending p
         USING pg_catalog.unnest(spans) cli
         WHERE p.user_id = uid AND p.side = 's' AND cli.kind = 3
           AND p.trace_id = cli.trace AND p.span_id = cli.span
        RETURNING cli.service_id AS source, p.service_id AS target, p.environment, p.at, p.duration_ms, p.status,
                  cli.span
    )
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'source', w.source, 'target', w.target, 'environment', w.environment,
               'at', w.at, 'ms', w.duration_ms, 'status', w.status)),
           pg_catalog.array_agg(w.span)
      INTO calls, waiting
      FROM waited w
     WHERE w.source <> w.target;
    calls := COALESCE(calls, '[]');
    waiting := COALESCE(waiting, '{}');

    -- What is left waits for its other half, as far as there is room; a
    -- client span there is no room for is an external call at once.
    room := lattice.otlp_match_capacity()
            - (SELECT pg_catalog.count(*) FROM (SELECT FROM lattice.otlp_pending p WHERE p.user_id = uid
                                                LIMIT lattice.otlp_match_capacity()) x)::integer;
    WITH halves AS (
        SELECT s.idx, s.trace, CASE WHEN s.kind = 3 THEN s.span ELSE s.parent END AS key,
               CASE WHEN s.kind = 3 THEN 'c' ELSE 's' END::"char" AS side,
               s.service_id, s.peer, s.environment, s.at, s.ms, s.status
          FROM pg_catalog.unnest(spans) s
         WHERE (s.kind = 3 AND s.db IS NULL AND s.mq IS NULL AND s.span <> ALL (waiting)
                AND NOT EXISTS (SELECT FROM pg_catalog.unnest(spans) srv
                                 WHERE srv.kind = 2 AND srv.trace = s.trace AND srv.parent = s.span))
            OR (s.kind = 2 AND s.parent IS NOT NULL AND NOT callers ? s.idx::text)
    ), kept AS (
        INSERT INTO lattice.otlp_pending (user_id, trace_id, span_id, side, service_id, peer, environment, at,
                                          duration_ms, status, expires_at)
        SELECT uid, h.trace, h.key, h.side, h.service_id, h.peer, h.environment, h.at, h.ms, h.status, wait_until
          FROM (SELECT * FROM halves ORDER BY idx LIMIT GREATEST(room, 0)) h
         ORDER BY 2, 3, 4
        ON CONFLICT DO NOTHING
    )
    SELECT calls || COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'source', h.service_id, 'target', h.peer, 'target_kind', 'external',
               'environment', h.environment, 'at', h.at, 'ms', h.ms, 'status', h.status)), '[]')
      INTO calls
      FROM (SELECT * FROM halves ORDER BY idx OFFSET GREATEST(room, 0)) h
     WHERE h.side = 'c' AND h.peer IS NOT NULL;

    -- Databases and queues.
    SELECT calls || COALESCE(pg_catalog.jsonb_agg(c), '[]')
      INTO calls
      FROM (SELECT pg_catalog.jsonb_build_object(
                       'source', CASE WHEN s.kind = 5 THEN s.mq || COALESCE(' ' || s.destination, '')
                                      ELSE s.service_id::text END,
                       'source_kind', CASE WHEN s.kind = 5 THEN 'queue' END,
                       'target', CASE WHEN s.kind = 5 THEN s.service_id::text
                                      WHEN s.db IS NOT NULL THEN s.db || COALESCE('/' || s.db_name, '')
                                      ELSE s.mq || COALESCE(' ' || s.destination, '') END,
                       'target_kind', CASE WHEN s.kind = 5 THEN NULL
                                           WHEN s.db IS NOT NULL THEN 'database'
                                           ELSE 'queue' END,
                       'environment', s.environment, 'at', s.at, 'ms', s.ms, 'status', s.status) AS c
              FROM pg_catalog.unnest(spans) s
             WHERE (s.db IS NOT NULL AND s.kind IN (0, 1, 3))
                OR (s.db IS NULL AND s.mq IS NOT NULL AND s.kind IN (3, 4, 5))) x;
    IF pg_catalog.jsonb_array_length(calls) > 0 THEN
        changed := changed + lattice.otlp_named_edges(uid, calls);
    END IF;

    -- Exceptions, grouped as the plugin's errors are.
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'service_id', s.service, 'environment', s.environment,
               'error_type', e ->> 'type', 'message', e ->> 'message', 'stack_trace', e -> 'frames',
               'timestamp', pg_catalog.to_timestamp((e ->> 'at')::double precision),
               'context', pg_catalog.jsonb_build_object('traceId', pg_catalog.encode(s.trace, 'hex'),
                                                        'spanId', pg_catalog.encode(s.span, 'hex'),
                                                        'span', s.name)) ORDER BY s.idx)
      INTO errors
      FROM pg_catalog.unnest(spans) s, pg_catalog.jsonb_array_elements(s.exceptions) e
     WHERE s.exceptions IS NOT NULL;
    IF errors IS NOT NULL THEN
        PERFORM lattice.ingest_error_items(errors);
    END IF;

    IF changed > 0 THEN
        PERFORM lattice.ingest_graph_changed();
    END IF;
    IF rejected > 0 THEN
        RETURN pg_catalog.jsonb_build_object('partialSuccess', pg_catalog.jsonb_build_object(
            'rejectedSpans', rejected::text, 'errorMessage', message));
    END IF;
    RETURN '{}'::jsonb;
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.otlp_flatten(text, timestamptz, timestamptz), lattice.otlp_match_window(),
    lattice.otlp_match_capacity(), lattice.otlp_service(uuid, text, text, text, text, text),
    lattice.otlp_node(uuid, text, text, text), lattice.otlp_named_edges(uuid, jsonb),
    lattice.otlp_expire(uuid), lattice.ingest_otlp(text, integer, text)
TO lattice_app;
-- Append-only trail of security-relevant events, written by the extension:
-- audit_log holds each tenant's, audit_unattributed the events no tenant is
-- known for (a login with an unknown email), which belong to the operator.

CREATE TABLE lattice.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    user_id     uuid NOT NULL,
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX ON lattice.audit_log (user_id, at);

CREATE TABLE lattice.audit_unattributed (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb
);
CREATE INDEX ON lattice.audit_unattributed (at);

-- Writes one audit row; the only way lattice_app adds to the trail.
CREATE FUNCTION lattice.audit(action text, target text DEFAULT NULL,
                              details jsonb DEFAULT NULL, req jsonb DEFAULT NULL,
                              user_id uuid DEFAULT lattice.current_user_id())
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF audit.user_id IS NULL THEN
        INSERT INTO lattice.audit_unattributed (action, target, client_addr, request_id, details)
        VALUES (audit.action, audit.target,
                CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
    ELSE
        INSERT INTO lattice.audit_log (user_id, action, target, client_addr, request_id, details)
        VALUES (audit.user_id, audit.action, audit.target,
                CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
    END IF;
END
$$;

-- lattice_admin acts as one tenant for the rest of the transaction, audited.
-- It runs as the admin (not SECURITY DEFINER): the audit row is the admin's
-- own insert, which a policy limits to exactly this event (90_security.sql),
-- so the admin's reads that follow use the same role -- on Citus a
-- transaction reaches a shard as one role only.
CREATE FUNCTION lattice.act_as_tenant(user_id uuid, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE
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
AS $$ SELECT ROW(status, headers, body::text)::lattice.http_response $$;

-- An error answer: {"error": {"code", "message", "details"}}.  The shim adds
-- the request id.
CREATE FUNCTION lattice.http_error(status integer, code text, message text,
                                   details jsonb DEFAULT NULL, headers jsonb DEFAULT '{}')
RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE PARALLEL SAFE
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
-- Endpoints of the shim itself (docs/shim.md).

-- GET /ready: the database answers and the extension is installed.  The shim
-- answers 503 by itself when it cannot reach the database at all.
CREATE FUNCTION lattice_http.ready(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE sql STABLE
AS $$
    SELECT lattice.http_json(200, pg_catalog.jsonb_build_object(
        'status', 'ready',
        'database', 'ok',
        'extension', (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'lattice')))
$$;

-- The tenant the current transaction authenticated, NULL when none: the shim
-- reads it in the same statement as a route's answer, for its access log.
CREATE FUNCTION lattice_http.tenant_id()
RETURNS uuid
AS 'MODULE_PATHNAME', 'lattice_current_user_id'
LANGUAGE C STABLE;

-- The transaction's last rate count, "<class> <limit> <remaining>
-- <reset_seconds> <period_seconds>" or NULL: the shim reads it in the same
-- statement as a route's answer and writes the RateLimit headers itself.
CREATE FUNCTION lattice_http.rate_state()
RETURNS text
AS 'MODULE_PATHNAME', 'lattice_rate_state'
LANGUAGE C VOLATILE;
-- The database side of the shim's GET /metrics (docs/shim.md, "Metrics").
--
-- The shim calls lattice_http.metrics_db() once a second at most, in one
-- statement with a short statement_timeout, and turns the jsonb into
-- Prometheus series.  Every figure is an aggregate over all tenants: no
-- tenant id, e-mail, address, service or per-tenant count leaves here.

-- This hour's requests allowed and refused per quota class, summed in C over
-- the shared-memory counters (src/ratelimit_admin.c): api, dashboard,
-- ingest (per service) and address (unauthenticated routes by client).
CREATE FUNCTION lattice.rate_class_totals(OUT class text, OUT used bigint, OUT refused bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'lattice_rate_class_totals'
    LANGUAGE C VOLATILE;

-- The figures, read as the extension owner (the outbox and Stripe's events
-- are owner-only tables; the rate table's size is lattice_admin's).  PL/pgSQL
-- because the billing tables come later in the install script.
--   outbox            jobs not done, by kind and state (pending, running, failed)
--   outbox_oldest_pending_seconds
--                     age of the oldest job not finished (pending or running), 0 when none
--   stripe_events     Stripe webhook events stored, by outcome
--   rate_classes      {class: {used, refused}} this hour
--   rate_table        {size, entries, evictions} of the shared counter table
CREATE FUNCTION lattice.metrics_figures() RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outbox jsonb;
    oldest double precision;
    events jsonb;
    classes jsonb;
    mem record;
BEGIN
    -- one pass over the jobs not done
    WITH open_jobs AS (
        SELECT o.kind, o.status, count(*) AS n, min(o.created_at) AS oldest
          FROM lattice.outbox o
         WHERE o.status <> 'done'
         GROUP BY o.kind, o.status)
    SELECT (SELECT jsonb_object_agg(k.kind, (
                SELECT jsonb_object_agg(s.state, coalesce(j.n, 0))
                  FROM unnest(ARRAY['pending', 'running', 'failed']) s(state)
                  LEFT JOIN open_jobs j ON j.kind = k.kind AND j.status = s.state))
              FROM unnest(ARRAY['stripe', 'email']) k(kind)),
           coalesce(extract(epoch FROM now() - (SELECT min(j.oldest) FROM open_jobs j
                                                 WHERE j.status IN ('pending', 'running'))), 0)
      INTO outbox, oldest;
    SELECT jsonb_object_agg(x.outcome, coalesce(d.n, 0))
      INTO events
      FROM unnest(ARRAY['received', 'applied', 'stale', 'ignored', 'unmatched']) x(outcome)
      LEFT JOIN (SELECT e.outcome, count(*) AS n FROM lattice.stripe_events e GROUP BY e.outcome) d
             ON d.outcome = x.outcome;
    SELECT jsonb_object_agg(t.class, jsonb_build_object('used', t.used, 'refused', t.refused))
      INTO classes
      FROM lattice.rate_class_totals() t;
    SELECT m.table_size, m.entries, m.evictions INTO mem FROM lattice.rate_memory() m;
    RETURN jsonb_build_object(
        'outbox', outbox,
        'outbox_oldest_pending_seconds', round(oldest::numeric, 3),
        'stripe_events', events,
        'rate_classes', classes,
        'rate_table', jsonb_build_object('size', mem.table_size, 'entries', mem.entries,
                                         'evictions', mem.evictions));
END
$$;

-- What the shim reads on a scrape (it logs in as a member of lattice_api).
CREATE FUNCTION lattice_http.metrics_db() RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT lattice.metrics_figures()
$$;

REVOKE ALL ON FUNCTION lattice.rate_class_totals(), lattice.metrics_figures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.rate_class_totals() TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.metrics_figures() TO lattice_app;
-- Authentication routes: sign-up, login, logout, me, sessions, token, API
-- keys.  Each is one lattice_http function (docs/http-contract.md); the
-- rules and every credential check are C (25_auth.sql: src/auth*.c,
-- src/account.c).  Cookies: lattice_session (HttpOnly) and
-- lattice_csrf (readable, echoed in X-CSRF-Token), SameSite=Lax, Path=/,
-- Secure when the request came over TLS.

-- The JSON object of a request body ({} when empty); 400 invalid_json else.
CREATE FUNCTION lattice.auth_body(body text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b jsonb;
BEGIN
    IF body IS NULL OR btrim(body) = '' THEN
        RETURN '{}'::jsonb;
    END IF;
    BEGIN
        b := body::jsonb;
    EXCEPTION WHEN others THEN
        PERFORM lattice.raise_http(400, 'invalid_json', 'the body is not valid JSON');
    END;
    IF jsonb_typeof(b) <> 'object' THEN
        PERFORM lattice.raise_http(400, 'invalid_json', 'the body must be a JSON object');
    END IF;
    RETURN b;
END
$$;

-- A string member of a body, NULL when absent; 400 invalid_input when it is
-- there but not a string.
CREATE FUNCTION lattice.auth_field(b jsonb, field text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT b ? field OR jsonb_typeof(b -> field) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(b -> field) <> 'string' THEN
        PERFORM lattice.raise_http(400, 'invalid_input', format('%s must be a string', field),
                                   jsonb_build_object('path', '$.' || field));
    END IF;
    RETURN b ->> field;
END
$$;

-- A path parameter as a uuid, NULL when it is not one (the routes answer 404).
CREATE FUNCTION lattice.auth_uuid_param(req jsonb, name text) RETURNS uuid
LANGUAGE sql IMMUTABLE
AS $$
    SELECT CASE WHEN req -> 'params' ->> name ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                THEN (req -> 'params' ->> name)::uuid END
$$;

-- Set-Cookie headers opening a session (or clearing it when token is NULL).
CREATE FUNCTION lattice.session_cookies(token text, csrf text, max_age integer, req jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT jsonb_build_object('Set-Cookie', jsonb_build_array(
        format('lattice_session=%s; Path=/; Max-Age=%s; HttpOnly; SameSite=Lax%s',
               coalesce(token, ''), max_age, sfx),
        format('lattice_csrf=%s; Path=/; Max-Age=%s; SameSite=Lax%s',
               coalesce(csrf, ''), max_age, sfx)))
      FROM (SELECT CASE WHEN coalesce((req ->> 'tls')::boolean, false) THEN '; Secure' ELSE '' END AS sfx) s
$$;

-- PL/pgSQL, like every function with parameters that reads a tenant table:
-- Citus cannot plan a parameterised SQL-language function's query.
CREATE FUNCTION lattice.user_json(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name)
              FROM lattice.users u WHERE u.id = user_json.user_id);
END
$$;

-- A JSON answer (the shim adds the quota headers of this request).
CREATE FUNCTION lattice.auth_answer(status integer, body jsonb, headers jsonb DEFAULT '{}')
RETURNS lattice.http_response
LANGUAGE sql VOLATILE
AS $$ SELECT lattice.http_json(status, body, headers) $$;

-- Opens a session for the account: the answer {user} with the session's
-- cookies, which live as long as the session may.
CREATE FUNCTION lattice.session_answer(status integer, account uuid, req jsonb)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM lattice.session_create(req);
    RETURN lattice.http_json(status, jsonb_build_object('user', lattice.user_json(account)),
        lattice.session_cookies(s.token, s.csrf,
                    extract(epoch FROM s.expires_at - lattice.clock_now())::integer, req));
END
$$;

-- POST /api/v1/auth/signup {email, password, name} -> 201 {user} + cookies
CREATE FUNCTION lattice_http.auth_signup(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb;
    account uuid;
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
    RETURN lattice.session_answer(201, account, req);
END
$$;

-- POST /api/v1/auth/login {email, password, code?} -> 200 {user} + cookies;
-- 401 invalid_credentials, mfa_required (two-factor on, no code) or
-- invalid_code (answered, not raised: the audit rows stay).
CREATE FUNCTION lattice_http.auth_login(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb;
    account uuid;
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
    RETURN lattice.session_answer(200, account, req);
END
$$;

-- POST /api/v1/auth/logout -> 204, the session revoked and the cookies cleared
CREATE FUNCTION lattice_http.auth_logout(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    sid uuid := lattice.current_session_id();
    at timestamptz := lattice.clock_now();
BEGIN
    IF sid IS NOT NULL THEN
        UPDATE lattice.sessions SET revoked_at = at
         WHERE user_id = account AND id = sid AND revoked_at IS NULL;
        PERFORM lattice.audit('logout', sid::text, NULL, req, account);
    END IF;
    RETURN lattice.auth_answer(204, NULL, lattice.session_cookies(NULL, NULL, 0, req));
END
$$;

-- GET /api/v1/auth/me -> {user, auth}
CREATE FUNCTION lattice_http.auth_me(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'any');
    -- this backend's request state, read here: a query's expressions may run
    -- on a Citus worker, which has none
    auth jsonb := jsonb_build_object('method', lattice.current_auth_method(),
                                     'scopes', to_jsonb(lattice.current_scopes()));
BEGIN
    RETURN lattice.auth_answer(200, (
        SELECT jsonb_build_object(
                   'user', jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name,
                                              'plan', u.plan_id, 'trial_ends_at', u.trial_ends_at,
                                              'created_at', u.created_at),
                   'auth', auth)
          FROM lattice.users u WHERE u.id = account));
END
$$;

-- GET /api/v1/auth/sessions -> {sessions: [...]}, the live ones
CREATE FUNCTION lattice_http.auth_sessions(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
    mine uuid := lattice.current_session_id();  -- read here, as in auth_me
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('sessions', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', s.id, 'created_at', s.created_at,
                   'last_seen_at', date_trunc('minute', s.last_seen_at),
                   'expires_at', least(s.idle_expires_at, s.expires_at),
                   'client_addr', host(s.client_addr), 'user_agent', s.user_agent,
                   'current', s.id IS NOT DISTINCT FROM mine)
                 ORDER BY s.created_at DESC)
          FROM lattice.sessions s
         WHERE s.user_id = account AND s.revoked_at IS NULL
           AND least(s.idle_expires_at, s.expires_at) > now), '[]')));
END
$$;

-- DELETE /api/v1/auth/sessions/{id} -> 204; 404 when not one of the caller's
CREATE FUNCTION lattice_http.auth_session_revoke(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    sid uuid := lattice.auth_uuid_param(req, 'id');
    found_id uuid;
    at timestamptz := lattice.clock_now();
BEGIN
    UPDATE lattice.sessions SET revoked_at = at
     WHERE user_id = account AND id = sid AND revoked_at IS NULL
    RETURNING id INTO found_id;
    IF found_id IS NULL THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such session');
    END IF;
    PERFORM lattice.audit('session.revoked', sid::text, NULL, req, account);
    IF sid = lattice.current_session_id() THEN
        RETURN lattice.auth_answer(204, NULL, lattice.session_cookies(NULL, NULL, 0, req));
    END IF;
    RETURN lattice.auth_answer(204, NULL);
END
$$;

-- POST /api/v1/auth/token {ttl_seconds?} -> {token, token_type, expires_at, expires_in}
-- Trades a session or an API key (not another token) for an HS256 JWT.
CREATE FUNCTION lattice_http.auth_token(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'any');
    b jsonb := lattice.auth_body(body);
    ttl integer;
    t record;
BEGIN
    IF lattice.current_auth_method() = 'bearer' THEN
        PERFORM lattice.raise_http(401, 'credential_not_accepted',
                                   'a token cannot issue tokens: use an API key or a session');
    END IF;
    IF b ? 'ttl_seconds' THEN
        IF jsonb_typeof(b -> 'ttl_seconds') <> 'number' OR (b ->> 'ttl_seconds') !~ '^[0-9]{1,9}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_ttl', 'ttl_seconds must be 1 to 3600');
        END IF;
        ttl := (b ->> 'ttl_seconds')::integer;
    END IF;
    SELECT * INTO t FROM lattice.jwt_issue(ttl, req);
    RETURN lattice.auth_answer(200, jsonb_build_object(
        'token', t.token, 'token_type', 'Bearer', 'expires_at', t.expires_at,
        'expires_in', round(extract(epoch FROM t.expires_at - lattice.clock_now()))::integer));
END
$$;

-- k: a row of lattice.api_keys (anyelement: see lattice.service_json)
CREATE FUNCTION lattice.api_key_json(k anyelement, now timestamptz) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'id', k.id, 'name', k.name, 'prefix', k.prefix, 'created_at', k.created_at,
        'last_used', date_trunc('minute', k.last_used), 'expires_at', k.expires_at,
        'revoked_at', k.revoked_at, 'rotated_from', k.rotated_from, 'scopes', to_jsonb(k.scopes),
        'status', CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked'
                       WHEN k.expires_at <= now THEN 'expired'
                       ELSE 'active' END)
$$;

-- GET /api/v1/keys -> {keys: [...]} (never a key or its hash)
CREATE FUNCTION lattice_http.keys_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('keys', coalesce((
        SELECT jsonb_agg(lattice.api_key_json(k, now) ORDER BY k.created_at, k.id)
          FROM lattice.api_keys k WHERE k.user_id = account), '[]')));
END
$$;

-- POST /api/v1/keys {name, expires_at?, scopes?} -> 201 {id, name, key, prefix,
-- scopes, created_at, expires_at}.  scopes: ["ingest"] unless given.
CREATE FUNCTION lattice_http.keys_create(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    expires timestamptz;
    scopes text[] := '{ingest}';
    k record;
BEGIN
    IF b ? 'scopes' THEN
        IF jsonb_typeof(b -> 'scopes') <> 'array'
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(b -> 'scopes') e WHERE jsonb_typeof(e) <> 'string') THEN
            PERFORM lattice.raise_http(400, 'invalid_scopes', 'scopes must be an array of scope names',
                                       jsonb_build_array(jsonb_build_object(
                                           'path', 'scopes', 'message', 'must be an array of strings')));
        END IF;
        scopes := ARRAY(SELECT jsonb_array_elements_text(b -> 'scopes'));
    END IF;
    IF lattice.auth_field(b, 'expires_at') IS NOT NULL THEN
        BEGIN
            expires := (b ->> 'expires_at')::timestamptz;
        EXCEPTION WHEN others THEN
            PERFORM lattice.raise_http(400, 'invalid_expiry', 'expires_at must be an ISO 8601 time');
        END;
    END IF;
    SELECT * INTO k FROM lattice.api_key_create(account, lattice.auth_field(b, 'name'), expires, req, scopes);
    RETURN lattice.auth_answer(201, jsonb_build_object(
        'id', k.id, 'name', (SELECT a.name FROM lattice.api_keys a WHERE a.user_id = account AND a.id = k.id),
        'key', k.key, 'prefix', k.prefix,
        'scopes', (SELECT to_jsonb(a.scopes) FROM lattice.api_keys a WHERE a.user_id = account AND a.id = k.id),
        'created_at', k.created_at, 'expires_at', expires),
        jsonb_build_object('Location', '/api/v1/keys/' || k.id));
END
$$;

-- POST /api/v1/keys/{id}/rotate {grace_seconds?} -> 201 {id, name, key, prefix, scopes,
-- old_key_expires_at}; the new key keeps the old one's scopes.
CREATE FUNCTION lattice_http.keys_rotate(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    grace integer;
    k record;
BEGIN
    IF b ? 'grace_seconds' THEN
        IF jsonb_typeof(b -> 'grace_seconds') <> 'number' OR (b ->> 'grace_seconds') !~ '^[0-9]{1,9}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_grace', 'grace_seconds must be 0 to 2592000');
        END IF;
        grace := (b ->> 'grace_seconds')::integer;
    END IF;
    SELECT * INTO k FROM lattice.api_key_rotate(lattice.auth_uuid_param(req, 'id'), grace, req);
    RETURN lattice.auth_answer(201, jsonb_build_object(
        'id', k.id, 'name', k.name, 'key', k.key, 'prefix', k.prefix,
        'scopes', (SELECT to_jsonb(a.scopes) FROM lattice.api_keys a WHERE a.user_id = account AND a.id = k.id),
        'created_at', k.created_at, 'old_key_expires_at', k.old_key_expires_at),
        jsonb_build_object('Location', '/api/v1/keys/' || k.id));
END
$$;

-- DELETE /api/v1/keys/{id} -> 204, refused from the next request on
CREATE FUNCTION lattice_http.keys_revoke(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    kid uuid := lattice.auth_uuid_param(req, 'id');
    was_revoked timestamptz;
    at timestamptz := lattice.clock_now();
BEGIN
    SELECT revoked_at INTO was_revoked FROM lattice.api_keys
     WHERE user_id = account AND id = kid FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such key');
    END IF;
    IF was_revoked IS NULL THEN
        UPDATE lattice.api_keys SET revoked_at = at WHERE user_id = account AND id = kid;
        PERFORM lattice.audit('key.revoked', kid::text, NULL, req, account);
    END IF;
    RETURN lattice.auth_answer(204, NULL);
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.auth_body(text),
    lattice.auth_field(jsonb, text),
    lattice.auth_uuid_param(jsonb, text),
    lattice.session_cookies(text, text, integer, jsonb),
    lattice.user_json(uuid),
    lattice.session_answer(integer, uuid, jsonb),
    lattice.auth_answer(integer, jsonb, jsonb),
    lattice.api_key_json(anyelement, timestamptz)
    TO lattice_app;
-- GET /api/v1/usage: the tenant's quota classes (api, ingest per service,
-- dashboard) this hour, what each refused in the last 24 hours, and the
-- last 24 rolled-up hours by class.  The top-level limit, remaining,
-- reset_seconds, period_seconds and this_hour are the api class's.  The
-- request itself counts (authenticate checks it).
CREATE FUNCTION lattice_http.usage(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    u lattice.rate_usage;
    live jsonb;
    this_hour timestamptz := pg_catalog.date_trunc('hour', pg_catalog.now());
    classes jsonb;
    history jsonb;
    account uuid;
BEGIN
    account := lattice.authenticate(req, 'read');
    u := lattice.rate_usage();
    live := lattice.rate_usage_classes();

    -- refused in the 23 full hours before this one (rolled up) plus this
    -- hour's live count make the last 24 hours; every service counted this
    -- hour is listed, and those refused earlier in the 24 hours
    WITH past AS (
        SELECT h.class, h.subject, pg_catalog.sum(h.refused)::bigint AS refused
          FROM lattice.usage_hourly h
         WHERE h.user_id = account AND h.hour >= this_hour - interval '23 hours' AND h.hour < this_hour
         GROUP BY h.class, h.subject),
    past_class AS (
        SELECT p.class, pg_catalog.sum(p.refused)::bigint AS refused FROM past p GROUP BY p.class),
    live_services AS (
        SELECT i ->> 'service' AS name, (i ->> 'used')::bigint AS used,
               (i ->> 'refused_this_hour')::bigint AS refused, i AS item
          FROM pg_catalog.jsonb_array_elements(live -> 'ingest' -> 'services') i),
    services AS (
        SELECT COALESCE(l.name, p.subject) AS name, COALESCE(l.used, 0) AS used,
               COALESCE(l.refused, 0) + COALESCE(p.refused, 0) AS refused_24h,
               COALESCE(l.item, pg_catalog.jsonb_build_object(
                   'service', p.subject, 'used', 0, 'remaining', live -> 'ingest' -> 'limit',
                   'reset_seconds', 0, 'refused_this_hour', 0)) AS item
          FROM live_services l
          FULL JOIN (SELECT * FROM past WHERE past.class = 'ingest' AND past.refused > 0) p
            ON p.subject = l.name)
    SELECT pg_catalog.jsonb_object_agg(k.class, (live -> k.class) || pg_catalog.jsonb_build_object(
               'refused_24h', (live -> k.class ->> 'refused_this_hour')::bigint + COALESCE(pc.refused, 0))
               || CASE WHEN k.class = 'ingest' THEN pg_catalog.jsonb_build_object('services', (
                      SELECT COALESCE(pg_catalog.jsonb_agg(
                                 s.item || pg_catalog.jsonb_build_object('refused_24h', s.refused_24h)
                                 ORDER BY s.refused_24h DESC, s.used DESC, s.name), '[]')
                        FROM services s))
                  ELSE '{}' END)
      INTO classes
      FROM (VALUES ('api'), ('ingest'), ('dashboard')) k(class)
      LEFT JOIN past_class pc ON pc.class = k.class;

    -- the last 24 rolled-up hours: totals and each class
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'hour', h.hour, 'requests', h.requests, 'refused', h.refused, 'classes', h.classes)
               ORDER BY h.hour DESC), '[]')
      INTO history
      FROM (SELECT c.hour, pg_catalog.sum(c.requests)::bigint AS requests, pg_catalog.sum(c.refused)::bigint AS refused,
                   pg_catalog.jsonb_object_agg(c.class, pg_catalog.jsonb_build_object(
                       'requests', c.requests, 'refused', c.refused)) AS classes
              FROM (SELECT x.hour, x.class, pg_catalog.sum(x.requests)::bigint AS requests,
                           pg_catalog.sum(x.refused)::bigint AS refused
                      FROM lattice.usage_hourly x
                     WHERE x.user_id = account AND x.hour >= this_hour - interval '23 hours'
                     GROUP BY x.hour, x.class) c
             GROUP BY c.hour) h;

    RETURN lattice.http_json(200,
        pg_catalog.jsonb_build_object(
            'limit', u."limit",
            'remaining', u.remaining,
            'reset_seconds', u.reset_seconds,
            'period_seconds', u.period_seconds,
            'this_hour', pg_catalog.jsonb_build_object(
                'start', u.hour_start,
                'requests', u.used_this_hour,
                'refused', u.refused_this_hour),
            'classes', classes,
            'history', history));
END
$$;
-- Ingest and service read routes (docs/http-contract.md).  Ingest takes API
-- keys with the ingest scope (the plugins' X-Lattice-API-Key) and is counted
-- per service in the ingest quota class; the read API takes a session, a
-- JWT or a key with the read scope.  The rules live in 35_ingest.sql; JSON
-- out is camelCase.

-- Before any ingest: a JSON content type, an entitled account.  Returns the
-- headers of the answer (the billing warning).
CREATE FUNCTION lattice.ingest_preflight(user_id uuid, req jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ct text := req ->> 'content_type';
BEGIN
    IF ct IS NOT NULL AND pg_catalog.lower(pg_catalog.split_part(ct, ';', 1)) <> 'application/json' THEN
        PERFORM lattice.raise_http(415, 'unsupported_media_type', 'send the body as application/json');
    END IF;
    RETURN lattice.require_ingest(ingest_preflight.user_id);
END
$$;

-- A path parameter as a uuid; 404 when it is not one (no such resource).
CREATE FUNCTION lattice.ingest_param_uuid(req jsonb, name text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text := req -> 'params' ->> name;
BEGIN
    IF v IS NULL OR v !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such resource');
    END IF;
    RETURN v::uuid;
END
$$;

-- A query parameter as an integer within [lo, hi], or the default.
CREATE FUNCTION lattice.ingest_query_int(req jsonb, name text, dflt integer, lo integer, hi integer)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text := NULLIF(req -> 'query' ->> name, '');
BEGIN
    IF v IS NULL THEN
        RETURN dflt;
    END IF;
    IF v !~ '^[0-9]{1,9}$' OR v::integer < lo OR v::integer > hi THEN
        PERFORM lattice.raise_http(400, 'invalid_query', pg_catalog.format('%s must be an integer from %s to %s', name, lo, hi),
            pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('path', 'query.' || name,
                'message', pg_catalog.format('must be an integer from %s to %s', lo, hi))));
    END IF;
    RETURN v::integer;
END
$$;

-- A query parameter as a timestamp, or the default.
CREATE FUNCTION lattice.ingest_query_time(req jsonb, name text, dflt timestamptz) RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v text := NULLIF(req -> 'query' ->> name, '');
BEGIN
    IF v IS NULL THEN
        RETURN dflt;
    END IF;
    BEGIN
        -- infinity is no date-time a range can be cut from
        IF pg_catalog.isfinite(v::timestamptz) THEN
            RETURN v::timestamptz;
        END IF;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_time_zone_displacement_value
                   OR invalid_parameter_value THEN
        NULL;
    END;
    PERFORM lattice.raise_http(400, 'invalid_query', name || ' must be an ISO-8601 date-time',
        pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object('path', 'query.' || name,
            'message', 'must be an ISO-8601 date-time')));
    RETURN NULL;
END
$$;

-- The API's view of a service.
-- The row comes as anyelement: on Citus a query's rows are a shard's row
-- type on the worker that runs it (lattice.services_102008, say), with the
-- same columns.
CREATE FUNCTION lattice.service_json(s anyelement) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'id', s.id, 'name', s.name, 'environment', s.environment, 'version', s.version,
        'language', s.language, 'framework', s.framework, 'runtime', s.runtime,
        'description', s.description, 'repository', s.repository,
        'healthCheckUrl', s.health_check_url, 'deploymentType', s.deployment_type,
        'status', lattice.service_liveness(s.last_seen, s.is_external),
        'isExternal', s.is_external, 'discoveredBy', s.discovered_by, 'metadata', s.metadata,
        'firstSeen', s.first_seen, 'lastSeen', s.last_seen))
$$;

-- Route statistics summarised: counts, average and percentiles.
CREATE FUNCTION lattice.stats_json(requests numeric, errors numeric, client_errors numeric,
                                   total_ms double precision, hist bigint[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'requestCount', COALESCE(requests, 0),
        'errorCount', COALESCE(errors, 0),
        'clientErrorCount', COALESCE(client_errors, 0),
        'errorRate', CASE WHEN requests > 0 THEN pg_catalog.round(100.0 * errors / requests, 2) ELSE 0 END,
        'avgMs', CASE WHEN requests > 0 THEN pg_catalog.round((total_ms / requests::double precision)::numeric, 2) END,
        'p50Ms', pg_catalog.round(lattice.hist_percentile(hist, 0.50)::numeric, 2),
        'p95Ms', pg_catalog.round(lattice.hist_percentile(hist, 0.95)::numeric, 2),
        'p99Ms', pg_catalog.round(lattice.hist_percentile(hist, 0.99)::numeric, 2))
$$;

-- g: a row of lattice.error_groups (anyelement: see lattice.service_json)
CREATE FUNCTION lattice.error_group_json(g anyelement, service_name text) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'id', g.id, 'serviceId', g.service_id, 'serviceName', service_name,
        'environment', g.environment, 'fingerprint', g.fingerprint,
        'errorType', g.error_type, 'message', g.message, 'topFrame', g.top_frame,
        'status', g.status, 'occurrenceCount', g.occurrence_count,
        'reopenedCount', g.reopened_count, 'firstSeen', g.first_seen, 'lastSeen', g.last_seen,
        'resolvedAt', g.resolved_at, 'reopenedAt', g.reopened_at)
$$;

-- Ingest routes ---------------------------------------------------------------

-- POST /api/v1/ingest/metadata
CREATE FUNCTION lattice_http.ingest_metadata(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(200, lattice.ingest_metadata(body), h);
END
$$;

-- POST /api/v1/performance/traces/batch
CREATE FUNCTION lattice_http.ingest_traces(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_traces(body), h);
END
$$;

-- POST /api/v1/metrics (legacy plugins)
CREATE FUNCTION lattice_http.ingest_legacy_metrics(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_legacy_metrics(body), h);
END
$$;

-- POST /api/v1/errors/batch
CREATE FUNCTION lattice_http.ingest_errors(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_errors(body), h);
END
$$;

-- POST /api/v1/errors (browser SDK, one error)
CREATE FUNCTION lattice_http.ingest_error(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_error(body), h);
END
$$;

-- POST /api/v1/breadcrumbs (browser SDK)
CREATE FUNCTION lattice_http.ingest_breadcrumbs(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_breadcrumbs(body), h);
END
$$;

-- Read routes -----------------------------------------------------------------

-- GET /api/v1/services?environment=&status=&framework=&search=&include_external=&page=&limit=
CREATE FUNCTION lattice_http.services_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    q jsonb := COALESCE(req -> 'query', '{}');
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 200);
    page integer := lattice.ingest_query_int(req, 'page', 1, 1, 1000000);
    pattern text := '%' || pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
                        COALESCE(q ->> 'search', ''), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    total bigint;
    items jsonb;
BEGIN
    IF q ->> 'status' IS NOT NULL AND q ->> 'status' NOT IN ('active', 'inactive', 'external') THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'status must be active, inactive or external',
            '[{"path": "query.status", "message": "must be one of active, inactive, external"}]');
    END IF;
    WITH f AS (
        SELECT s FROM lattice.services s
         WHERE s.user_id = uid
           AND (q ->> 'environment' IS NULL OR s.environment = q ->> 'environment')
           AND (q ->> 'framework' IS NULL OR s.framework = q ->> 'framework')
           AND (q ->> 'search' IS NULL OR s.name ILIKE pattern OR s.description ILIKE pattern)
           AND (q ->> 'status' IS NULL OR lattice.service_liveness(s.last_seen, s.is_external) = q ->> 'status')
           AND (COALESCE(q ->> 'include_external', 'false') = 'true' OR q ->> 'status' = 'external'
                OR NOT s.is_external)
    ), page_rows AS (
        SELECT f.s FROM f ORDER BY (f.s).name, (f.s).environment LIMIT lim OFFSET (page - 1) * lim
    )
    SELECT (SELECT pg_catalog.count(*) FROM f),
           COALESCE(pg_catalog.jsonb_agg(lattice.service_json(p.s) || pg_catalog.jsonb_build_object(
               'routeCount', (SELECT pg_catalog.count(*) FROM lattice.routes r
                               WHERE r.user_id = uid AND r.service_id = (p.s).id AND r.removed_at IS NULL),
               'dependencyCount', (SELECT pg_catalog.count(*) FROM lattice.dependencies d
                                    WHERE d.user_id = uid AND d.service_id = (p.s).id AND d.removed_at IS NULL))
               ORDER BY (p.s).name, (p.s).environment), '[]')
      INTO total, items
      FROM page_rows p;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'services', items, 'total', total, 'page', page, 'limit', lim));
END
$$;

-- GET /api/v1/services/{id}?window_hours=24: the service, its routes with
-- their traffic, its dependencies, its edges and its recent changes.
CREATE FUNCTION lattice_http.service_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    sid uuid := lattice.ingest_param_uuid(req, 'id');
    hours integer := lattice.ingest_query_int(req, 'window_hours', 24, 1, 24 * 90);
    since timestamptz := pg_catalog.now() - pg_catalog.make_interval(hours => hours);
    s lattice.services;
    result jsonb;
BEGIN
    SELECT x.* INTO s FROM lattice.services x WHERE x.id = sid AND x.user_id = uid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such service');
    END IF;

    WITH stats AS (
        SELECT st.method, st.path, pg_catalog.bool_or(st.matched) AS matched,
               pg_catalog.sum(st.request_count) AS n, pg_catalog.sum(st.error_count) AS e,
               pg_catalog.sum(st.client_error_count) AS c, pg_catalog.sum(st.total_duration_ms) AS t,
               lattice.hist_sum(st.latency_hist) AS h
          FROM lattice.route_stats st
         WHERE st.user_id = uid AND st.service_id = sid AND st.bucket >= since
         GROUP BY st.method, st.path
    )
    SELECT pg_catalog.jsonb_build_object(
        'service', lattice.service_json(s),
        'windowHours', hours,
        'routes', COALESCE((
            SELECT pg_catalog.jsonb_agg(r.attrs || pg_catalog.jsonb_build_object(
                       'id', r.id, 'method', r.method, 'path', r.path,
                       'firstSeen', r.first_seen, 'lastSeen', r.last_seen,
                       'stats', lattice.stats_json(st.n, st.e, st.c, st.t, st.h))
                       ORDER BY r.path, r.method)
              FROM lattice.routes r LEFT JOIN stats st ON st.method = r.method AND st.path = r.path
             WHERE r.user_id = uid AND r.service_id = sid AND r.removed_at IS NULL), '[]'),
        'unmatchedTraffic', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('method', st.method, 'path', st.path)
                       || lattice.stats_json(st.n, st.e, st.c, st.t, st.h) ORDER BY st.n DESC, st.path)
              FROM stats st WHERE NOT st.matched), '[]'),
        'dependencies', COALESCE((
            SELECT pg_catalog.jsonb_agg(d.attrs || pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'id', d.id, 'packageName', d.package_name, 'version', d.version,
                       'versionRange', d.version_range, 'dependencyType', d.dependency_type,
                       'scope', d.scope, 'firstSeen', d.first_seen))
                       ORDER BY d.package_name, d.dependency_type)
              FROM lattice.dependencies d WHERE d.user_id = uid AND d.service_id = sid AND d.removed_at IS NULL), '[]'),
        'connections', pg_catalog.jsonb_build_object(
            'incoming', COALESCE((
                SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'serviceId', k.source_service_id, 'name', o.name, 'environment', o.environment,
                           'isExternal', o.is_external, 'firstSeen', k.first_seen, 'lastSeen', k.last_seen)
                           || lattice.stats_json(k.call_count, k.error_count, k.client_error_count,
                                                 k.total_duration_ms, k.latency_hist) ORDER BY o.name)
                  FROM lattice.connections k JOIN lattice.services o ON o.user_id = k.user_id AND o.id = k.source_service_id
                 WHERE k.user_id = uid AND k.target_service_id = sid), '[]'),
            'outgoing', COALESCE((
                SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'serviceId', k.target_service_id, 'name', o.name, 'environment', o.environment,
                           'isExternal', o.is_external, 'firstSeen', k.first_seen, 'lastSeen', k.last_seen)
                           || lattice.stats_json(k.call_count, k.error_count, k.client_error_count,
                                                 k.total_duration_ms, k.latency_hist) ORDER BY o.name)
                  FROM lattice.connections k JOIN lattice.services o ON o.user_id = k.user_id AND o.id = k.target_service_id
                 WHERE k.user_id = uid AND k.source_service_id = sid), '[]')),
        'recentChanges', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'id', c.id, 'kind', c.kind, 'subject', c.subject, 'oldValue', c.old_value,
                       'newValue', c.new_value, 'at', c.at)) ORDER BY c.at DESC, c.id DESC)
              FROM (SELECT * FROM lattice.service_changes c WHERE c.user_id = uid AND c.service_id = sid
                     ORDER BY c.at DESC, c.id DESC LIMIT 20) c), '[]'))
      INTO result;
    RETURN lattice.http_json(200, result);
END
$$;

-- GET /api/v1/services/{id}/changes?before=<id>&limit=&kind=
CREATE FUNCTION lattice_http.service_changes(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    sid uuid := lattice.ingest_param_uuid(req, 'id');
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 500);
    before integer := lattice.ingest_query_int(req, 'before', NULL, 1, 2147483647);
    want_kind text := NULLIF(req -> 'query' ->> 'kind', '');
    items jsonb;
    last_id bigint;
    n integer;
BEGIN
    IF NOT EXISTS (SELECT FROM lattice.services s WHERE s.id = sid AND s.user_id = uid) THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such service');
    END IF;
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'id', c.id, 'kind', c.kind, 'subject', c.subject, 'oldValue', c.old_value,
               'newValue', c.new_value, 'at', c.at)) ORDER BY c.id DESC), '[]'),
           pg_catalog.min(c.id), pg_catalog.count(*)
      INTO items, last_id, n
      FROM (SELECT * FROM lattice.service_changes c
             WHERE c.user_id = uid AND c.service_id = sid AND (before IS NULL OR c.id < before)
               AND (want_kind IS NULL OR c.kind = want_kind)
             ORDER BY c.id DESC LIMIT lim) c;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'changes', items, 'nextBefore', CASE WHEN n = lim THEN last_id END));
END
$$;

-- GET /api/v1/errors?service_id=&status=&environment=&search=&page=&limit=
CREATE FUNCTION lattice_http.errors_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    q jsonb := COALESCE(req -> 'query', '{}');
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 200);
    page integer := lattice.ingest_query_int(req, 'page', 1, 1, 1000000);
    svc uuid;
    pattern text := '%' || pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
                        COALESCE(q ->> 'search', ''), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    total bigint;
    items jsonb;
BEGIN
    IF q ->> 'service_id' IS NOT NULL THEN
        svc := lattice.ingest_param_uuid(pg_catalog.jsonb_build_object('params',
                   pg_catalog.jsonb_build_object('id', q ->> 'service_id')), 'id');
    END IF;
    IF q ->> 'status' IS NOT NULL AND q ->> 'status' NOT IN ('open', 'resolved', 'ignored') THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'status must be open, resolved or ignored',
            '[{"path": "query.status", "message": "must be one of open, resolved, ignored"}]');
    END IF;
    WITH f AS (
        SELECT g, s.name AS service_name
          FROM lattice.error_groups g JOIN lattice.services s ON s.user_id = g.user_id AND s.id = g.service_id
         WHERE g.user_id = uid
           AND (svc IS NULL OR g.service_id = svc)
           AND (q ->> 'status' IS NULL OR g.status = q ->> 'status')
           AND (q ->> 'environment' IS NULL OR g.environment = q ->> 'environment')
           AND (q ->> 'search' IS NULL OR g.message ILIKE pattern OR g.error_type ILIKE pattern)
    ), page_rows AS (
        SELECT * FROM f ORDER BY (f.g).last_seen DESC, (f.g).id LIMIT lim OFFSET (page - 1) * lim
    )
    SELECT (SELECT pg_catalog.count(*) FROM f),
           COALESCE(pg_catalog.jsonb_agg(lattice.error_group_json(p.g, p.service_name)
                                         ORDER BY (p.g).last_seen DESC, (p.g).id), '[]')
      INTO total, items
      FROM page_rows p;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'errors', items, 'total', total, 'page', page, 'limit', lim));
END
$$;

-- The API's full view of one error group: sample, occurrences and the
-- breadcrumbs of the latest occurrence's session.
CREATE FUNCTION lattice.error_detail_json(gid uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g lattice.error_groups;
    svc_name text;
    last_session text;
    last_at timestamptz;
    uid uuid := lattice.current_user_id();
BEGIN
    SELECT x.* INTO g FROM lattice.error_groups x WHERE x.user_id = uid AND x.id = gid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such error');
    END IF;
    SELECT s.name INTO svc_name FROM lattice.services s WHERE s.user_id = uid AND s.id = g.service_id;
    SELECT o.session_id, o.at INTO last_session, last_at FROM lattice.error_occurrences o
     WHERE o.user_id = uid AND o.group_id = g.id AND o.session_id IS NOT NULL ORDER BY o.at DESC LIMIT 1;
    RETURN lattice.error_group_json(g, svc_name) || pg_catalog.jsonb_build_object(
        'sampleStack', g.sample_stack,
        'sampleContext', g.sample_context,
        'occurrences', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'at', o.at, 'sessionId', o.session_id, 'message', o.message, 'context', o.context))
                       ORDER BY o.at DESC, o.id DESC)
              FROM (SELECT * FROM lattice.error_occurrences o WHERE o.user_id = uid AND o.group_id = g.id
                     ORDER BY o.at DESC, o.id DESC LIMIT 20) o), '[]'),
        'breadcrumbs', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'sessionId', b.session_id, 'category', b.category, 'level', b.level,
                       'message', b.message, 'data', b.data, 'timestamp', b.at)) ORDER BY b.at, b.id)
              FROM (SELECT * FROM lattice.breadcrumbs b
                     WHERE b.user_id = g.user_id AND b.session_id = last_session
                       AND b.at <= last_at + interval '1 minute'
                     ORDER BY b.at DESC, b.id DESC LIMIT 100) b), '[]'));
END
$$;

-- GET /api/v1/errors/{id}
CREATE FUNCTION lattice_http.error_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    gid uuid := lattice.ingest_param_uuid(req, 'id');
BEGIN
    RETURN lattice.http_json(200, lattice.error_detail_json(gid));
END
$$;

-- PATCH /api/v1/errors/{id} {"status": "open" | "resolved" | "ignored"}
CREATE FUNCTION lattice_http.error_update(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'session');
    gid uuid := lattice.ingest_param_uuid(req, 'id');
    doc jsonb;
    new_status text;
    changed_at timestamptz := pg_catalog.now();
BEGIN
    BEGIN
        doc := body::jsonb;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        doc := NULL;
    END;
    new_status := CASE WHEN pg_catalog.jsonb_typeof(doc) = 'object' THEN doc ->> 'status' END;
    IF new_status IS NULL OR new_status NOT IN ('open', 'resolved', 'ignored') THEN
        PERFORM lattice.raise_http(400, 'validation_failed', 'the request body is invalid',
            '[{"path": "status", "message": "must be one of open, resolved, ignored"}]');
    END IF;
    UPDATE lattice.error_groups g
       SET status = new_status,
           resolved_at = CASE WHEN new_status = 'resolved' THEN changed_at END
     WHERE g.id = gid AND g.user_id = uid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such error');
    END IF;
    RETURN lattice.http_json(200, lattice.error_detail_json(gid));
END
$$;

-- GET /api/v1/performance/metrics?service_id=&from=&to=&interval=
-- Buckets of the interval (5m, 15m, 1h, 6h, 1d or any multiple of 5
-- minutes) with counts and percentiles, totals, and the slowest routes.
CREATE FUNCTION lattice_http.performance_metrics(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    q jsonb := COALESCE(req -> 'query', '{}');
    t_to timestamptz := lattice.ingest_query_time(req, 'to', pg_catalog.now());
    t_from timestamptz := lattice.ingest_query_time(req, 'from', t_to - interval '24 hours');
    step interval;
    svc uuid;
    result jsonb;
BEGIN
    IF q ->> 'service_id' IS NOT NULL THEN
        svc := lattice.ingest_param_uuid(pg_catalog.jsonb_build_object('params',
                   pg_catalog.jsonb_build_object('id', q ->> 'service_id')), 'id');
        IF NOT EXISTS (SELECT FROM lattice.services s WHERE s.id = svc AND s.user_id = uid) THEN
            PERFORM lattice.raise_http(404, 'not_found', 'no such service');
        END IF;
    END IF;
    IF t_from >= t_to THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'from must be before to',
            '[{"path": "query.from", "message": "must be before to"}]');
    END IF;
    step := CASE q ->> 'interval'
                WHEN '5m' THEN interval '5 minutes' WHEN '15m' THEN interval '15 minutes'
                WHEN '1h' THEN interval '1 hour' WHEN '6h' THEN interval '6 hours'
                WHEN '1d' THEN interval '1 day' END;
    IF step IS NULL AND q ->> 'interval' IS NOT NULL THEN
        BEGIN
            step := (q ->> 'interval')::interval;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
            step := NULL;
        END;
        -- months and years have no fixed length: date_bin refuses them
        IF step IS NULL OR step < lattice.ingest_bucket_width()
           OR pg_catalog.date_part('month', step) <> 0 OR pg_catalog.date_part('year', step) <> 0
           OR pg_catalog.mod(EXTRACT(epoch FROM step)::numeric,
                             EXTRACT(epoch FROM lattice.ingest_bucket_width())::numeric) <> 0 THEN
            PERFORM lattice.raise_http(400, 'invalid_query', 'interval must be 5m, 15m, 1h, 6h, 1d or a multiple of 5 minutes',
                '[{"path": "query.interval", "message": "must be 5m, 15m, 1h, 6h, 1d or a multiple of 5 minutes"}]');
        END IF;
    END IF;
    -- by default about a hundred points
    step := COALESCE(step, GREATEST(lattice.ingest_bucket_width(),
        pg_catalog.make_interval(secs => pg_catalog.ceil(EXTRACT(epoch FROM t_to - t_from) / 100 / 300) * 300)));
    IF EXTRACT(epoch FROM t_to - t_from) / EXTRACT(epoch FROM step) > 5000 THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'too many points: widen the interval',
            '[{"path": "query.interval", "message": "gives more than 5000 points"}]');
    END IF;

    WITH st AS (
        SELECT * FROM lattice.route_stats s
         WHERE s.user_id = uid AND (svc IS NULL OR s.service_id = svc)
           AND s.bucket >= t_from AND s.bucket < t_to
    ), b AS (
        SELECT pg_catalog.date_bin(step, st.bucket, timestamptz '2000-01-01') AS start,
               pg_catalog.sum(st.request_count) AS n, pg_catalog.sum(st.error_count) AS e,
               pg_catalog.sum(st.client_error_count) AS c, pg_catalog.sum(st.total_duration_ms) AS t,
               lattice.hist_sum(st.latency_hist) AS h
          FROM st GROUP BY 1
    ), r AS (
        SELECT st.service_id, st.method, st.path, pg_catalog.sum(st.request_count) AS n,
               pg_catalog.sum(st.error_count) AS e, pg_catalog.sum(st.client_error_count) AS c,
               pg_catalog.sum(st.total_duration_ms) AS t, lattice.hist_sum(st.latency_hist) AS h
          FROM st GROUP BY 1, 2, 3
    )
    SELECT pg_catalog.jsonb_build_object(
        'serviceId', svc, 'from', t_from, 'to', t_to,
        'intervalSeconds', EXTRACT(epoch FROM step)::bigint,
        'buckets', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('start', b.start)
                                 || lattice.stats_json(b.n, b.e, b.c, b.t, b.h) ORDER BY b.start) FROM b), '[]'),
        'totals', (SELECT lattice.stats_json(pg_catalog.sum(r.n), pg_catalog.sum(r.e), pg_catalog.sum(r.c),
                                             pg_catalog.sum(r.t), lattice.hist_sum(r.h)) FROM r),
        'slowestRoutes', COALESCE((
            SELECT pg_catalog.jsonb_agg(x.j ORDER BY x.p95 DESC NULLS LAST, x.avg DESC)
              FROM (SELECT pg_catalog.jsonb_build_object('serviceId', r.service_id, 'method', r.method,
                                                         'path', r.path)
                           || lattice.stats_json(r.n, r.e, r.c, r.t, r.h) AS j,
                           lattice.hist_percentile(r.h, 0.95) AS p95, r.t / NULLIF(r.n, 0) AS avg
                      FROM r ORDER BY 2 DESC NULLS LAST, 3 DESC LIMIT 10) x), '[]'))
      INTO result;
    RETURN lattice.http_json(200, result);
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.ingest_preflight(uuid, jsonb), lattice.ingest_param_uuid(jsonb, text),
    lattice.ingest_query_int(jsonb, text, integer, integer, integer),
    lattice.ingest_query_time(jsonb, text, timestamptz),
    lattice.service_json(anyelement),
    lattice.stats_json(numeric, numeric, numeric, double precision, bigint[]),
    lattice.error_group_json(anyelement, text), lattice.error_detail_json(uuid)
TO lattice_app;
-- OpenTelemetry's OTLP/HTTP traces endpoint (docs/opentelemetry.md).  The
-- shim has undone gzip and turned protobuf into OTLP/JSON, and it encodes
-- this answer back into the request's encoding; req.otlp says what it did.
-- Ingest rules as the plugin's routes: an ingest key (X-Lattice-API-Key or
-- Authorization: Bearer), an entitled account, the ingest quota per service.

-- POST /otlp/v1/traces
CREATE FUNCTION lattice_http.otlp_traces(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.require_ingest(uid);
BEGIN
    RETURN lattice.http_json(200, lattice.ingest_otlp(body, COALESCE((req #>> '{otlp,rejectedSpans}')::integer, 0),
                                                      req #>> '{otlp,rejectedMessage}'), h);
END
$$;
-- The dependency graph: a version per tenant (the cache key of the C graph in
-- src/graph_cache.c and the change signal for the dashboard), a history of
-- services and connections appearing and disappearing, and the SQL API over
-- the C traversal.  Every function works on lattice.current_user_id() only:
-- the C code reads the tables through SPI as the caller, so RLS applies.

-- One row per tenant, moved by lattice.bump_graph_version() on every change
-- of topology or of a service's state.  Edge figures (call counts, errors,
-- durations) move without a bump: a backend reloads a cached graph once it
-- is lattice.graph_stats_max_age old (60 s), so answers show them that fresh.
CREATE TABLE lattice.graph_versions (
    user_id     uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    version     bigint NOT NULL DEFAULT 0,
    changed_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- What appeared and disappeared, and when: services (by id, with the name and
-- environment they had) and connections (by source and target).  Written by
-- the ingest functions; read by graph_services_at / graph_edges_at / graph_diff.
-- kind: service_added, service_removed, edge_added, edge_removed.
CREATE TABLE lattice.graph_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    user_id             uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    at                  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    kind                text NOT NULL,
    service_id          uuid,
    name                text,
    environment         text,
    source_service_id   uuid,
    target_service_id   uuid,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX ON lattice.graph_events (user_id, at);
SELECT pg_catalog.pg_extension_config_dump(
    pg_catalog.pg_get_serial_sequence('lattice.graph_events', 'id')::regclass, '');

-- Moves one tenant's graph version and tells listeners on channel
-- lattice_graph ('<user_id>:<version>', delivered at commit).  Runs as the
-- caller: RLS lets a tenant move only its own row.
CREATE FUNCTION lattice.graph_bump(tenant uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v bigint;
BEGIN
    INSERT INTO lattice.graph_versions AS g (user_id, version, changed_at)
    VALUES (tenant, 1, pg_catalog.now())
    ON CONFLICT (user_id) DO UPDATE SET version = g.version + 1, changed_at = EXCLUDED.changed_at
    RETURNING g.version INTO v;
    PERFORM pg_catalog.pg_notify('lattice_graph', tenant::text || ':' || v::text);
    RETURN v;
END
$$;

-- For ingest: the current tenant's topology or a service's state changed.
-- The ingest functions call it, and write graph_events, where they add
-- services and connections: no trigger does it for them (distributed tables
-- on Citus take none).
CREATE FUNCTION lattice.bump_graph_version() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'lattice.bump_graph_version: no authenticated tenant'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;
    RETURN lattice.graph_bump(tenant);
END
$$;

-- The current tenant's graph version (0 before the first change).
CREATE FUNCTION lattice.graph_version() RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT COALESCE((SELECT version FROM lattice.graph_versions
                      WHERE user_id = lattice.current_user_id()), 0)
$$;

-- Traversal (C, src/graph_traverse.c).  Ids of another tenant's services are
-- not in the tenant's graph: they give "service not found" (404 over HTTP).
-- Depths and sizes are bounded by lattice.graph_max_depth and
-- lattice.graph_max_results; a NOTICE says when a bound cut an answer.
CREATE FUNCTION lattice.graph_neighbours(service uuid)
RETURNS TABLE (direction text, service_id uuid, name text, environment text,
               call_count bigint, error_count bigint, avg_duration_ms double precision,
               last_seen timestamptz)
    AS 'MODULE_PATHNAME', 'lattice_graph_neighbours' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_neighbours(uuid) IS
    'one hop both ways: the services it calls (dependency) and that call it (dependent), with the connection''s figures';

CREATE FUNCTION lattice.graph_dependencies(service uuid, depth integer DEFAULT 1)
RETURNS TABLE (service_id uuid, name text, environment text, distance integer,
               weakest_calls bigint, worst_error_rate double precision)
    AS 'MODULE_PATHNAME', 'lattice_graph_dependencies' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_dependencies(uuid, integer) IS
    'downstream: what the service calls, directly or through others, to depth hops (NULL: as deep as lattice.graph_max_depth)';

CREATE FUNCTION lattice.graph_dependents(service uuid, depth integer DEFAULT 1)
RETURNS TABLE (service_id uuid, name text, environment text, distance integer,
               weakest_calls bigint, worst_error_rate double precision)
    AS 'MODULE_PATHNAME', 'lattice_graph_dependents' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_dependents(uuid, integer) IS
    'upstream: what calls the service, directly or through others, to depth hops (NULL: as deep as lattice.graph_max_depth)';

CREATE FUNCTION lattice.graph_impact(service uuid)
RETURNS TABLE (service_id uuid, name text, environment text, distance integer,
               weakest_calls bigint, worst_error_rate double precision)
    AS 'MODULE_PATHNAME', 'lattice_graph_impact' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_impact(uuid) IS
    'the blast radius: everything that transitively depends on the service, with the hop distance; weakest_calls is the largest bottleneck call count and worst_error_rate the smallest worst error rate over the shortest paths';

CREATE FUNCTION lattice.graph_impact_summary(service uuid,
    OUT services integer, OUT max_distance integer, OUT truncated boolean)
    AS 'MODULE_PATHNAME', 'lattice_graph_impact_summary' LANGUAGE C STABLE STRICT;

CREATE FUNCTION lattice.graph_paths(from_service uuid, to_service uuid, max_paths integer DEFAULT 1)
RETURNS TABLE (path_no integer, hop integer, service_id uuid, name text, environment text)
    AS 'MODULE_PATHNAME', 'lattice_graph_paths' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_paths(uuid, uuid, integer) IS
    'the shortest call paths from one service to another (at most max_paths, bounded by lattice.graph_max_paths); hop 0 is from_service';

-- Cycles and deploy order (C, src/graph_scc.c).
CREATE FUNCTION lattice.graph_cycles()
RETURNS TABLE (cycle_no integer, size integer, service_ids uuid[], names text[])
    AS 'MODULE_PATHNAME', 'lattice_graph_cycles' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_cycles() IS
    'every strongly connected component of two or more services (services that reach each other)';

CREATE FUNCTION lattice.graph_order()
RETURNS TABLE (layer integer, service_id uuid, name text, environment text, cycle integer)
    AS 'MODULE_PATHNAME', 'lattice_graph_order' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_order() IS
    'deploy order: layer 0 calls nothing, layer k calls only lower layers; the members of a cycle share a layer and name their graph_cycles() cycle';

-- JSON answers (C): the dashboard's graph and the HTTP bodies.
CREATE FUNCTION lattice.graph_json(environment text DEFAULT NULL, active_only boolean DEFAULT false,
                                   min_calls bigint DEFAULT 0, since timestamptz DEFAULT NULL)
RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_json' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_json(text, boolean, bigint, timestamptz) IS
    'the graph as {"version", "nodes", "edges", "truncated"}; filters: environment, active services only, connections with at least min_calls calls, last seen since';

CREATE FUNCTION lattice.graph_reach_json(service uuid, direction text, depth integer DEFAULT 1)
RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_reach_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_paths_json(from_service uuid, to_service uuid, max_paths integer DEFAULT 1)
RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_paths_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_cycles_json() RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_cycles_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_order_json() RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_order_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_cache_info(OUT version bigint, OUT services integer,
                                         OUT connections integer, OUT bytes bigint)
    AS 'MODULE_PATHNAME', 'lattice_graph_cache_info' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_cache_info() IS
    'the current tenant''s graph as cached in this backend (loaded if needed): version, size and memory';

-- History: the graph as it was at a time, and what changed between two.
-- The latest event at or before `at` decides whether a thing was there.
-- (PL/pgSQL: see lattice.user_json.)
CREATE FUNCTION lattice.graph_services_at(at timestamptz)
RETURNS TABLE (service_id uuid, name text, environment text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    RETURN QUERY
    SELECT s.service_id, s.name, s.environment
      FROM (SELECT DISTINCT ON (e.service_id) e.service_id, e.kind, e.name, e.environment
              FROM lattice.graph_events e
             WHERE e.user_id = tenant AND e.at <= graph_services_at.at
               AND e.kind IN ('service_added', 'service_removed')
             ORDER BY e.service_id, e.at DESC, e.id DESC) s
     WHERE s.kind = 'service_added';
END
$$;

CREATE FUNCTION lattice.graph_edges_at(at timestamptz)
RETURNS TABLE (source_service_id uuid, target_service_id uuid)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    RETURN QUERY
    SELECT c.source_service_id, c.target_service_id
      FROM (SELECT DISTINCT ON (e.source_service_id, e.target_service_id)
                   e.source_service_id, e.target_service_id, e.kind
              FROM lattice.graph_events e
             WHERE e.user_id = tenant AND e.at <= graph_edges_at.at
               AND e.kind IN ('edge_added', 'edge_removed')
             ORDER BY e.source_service_id, e.target_service_id, e.at DESC, e.id DESC) c
     WHERE c.kind = 'edge_added';
END
$$;

-- {"at", "nodes": [{id, name, environment}], "edges": [{source, target}]}
CREATE FUNCTION lattice.graph_at(at timestamptz) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'at', graph_at.at,
        'nodes', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', s.service_id, 'name', s.name,
                                                               'environment', s.environment)
                                            ORDER BY s.name, s.environment, s.service_id)
                             FROM lattice.graph_services_at(graph_at.at) s), '[]'),
        'edges', COALESCE((SELECT jsonb_agg(jsonb_build_object('source', e.source_service_id,
                                                               'target', e.target_service_id)
                                            ORDER BY e.source_service_id, e.target_service_id)
                             FROM lattice.graph_edges_at(graph_at.at) e), '[]'))
$$;

-- {"from", "to", "services_added", "services_removed", "edges_added",
--  "edges_removed"}; edges carry their services' names as known then.
CREATE FUNCTION lattice.graph_diff(from_time timestamptz, to_time timestamptz) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    WITH a AS (SELECT * FROM lattice.graph_services_at(from_time)),
         b AS (SELECT * FROM lattice.graph_services_at(to_time)),
         ea AS (SELECT * FROM lattice.graph_edges_at(from_time)),
         eb AS (SELECT * FROM lattice.graph_edges_at(to_time)),
         names AS (SELECT DISTINCT ON (service_id) service_id, name, environment
                     FROM (SELECT * FROM b UNION ALL SELECT * FROM a) x),
         edge_json AS (
             SELECT d.added, jsonb_agg(jsonb_build_object(
                        'source', d.source_service_id, 'source_name', ns.name,
                        'target', d.target_service_id, 'target_name', nt.name)
                        ORDER BY ns.name, nt.name, d.source_service_id, d.target_service_id) AS list
               FROM (SELECT true AS added, * FROM (SELECT * FROM eb EXCEPT SELECT * FROM ea) x
                     UNION ALL
                     SELECT false, * FROM (SELECT * FROM ea EXCEPT SELECT * FROM eb) y) d
               LEFT JOIN names ns ON ns.service_id = d.source_service_id
               LEFT JOIN names nt ON nt.service_id = d.target_service_id
              GROUP BY d.added)
    SELECT jsonb_build_object(
        'from', from_time, 'to', to_time,
        'services_added', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', b.service_id, 'name', b.name,
                                                                        'environment', b.environment)
                                                     ORDER BY b.name, b.service_id)
                                      FROM b WHERE b.service_id NOT IN (SELECT service_id FROM a)), '[]'),
        'services_removed', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', a.service_id, 'name', a.name,
                                                                          'environment', a.environment)
                                                       ORDER BY a.name, a.service_id)
                                        FROM a WHERE a.service_id NOT IN (SELECT service_id FROM b)), '[]'),
        'edges_added', COALESCE((SELECT list FROM edge_json WHERE added), '[]'),
        'edges_removed', COALESCE((SELECT list FROM edge_json WHERE NOT added), '[]'))
$$;

GRANT EXECUTE ON FUNCTION
    lattice.graph_bump(uuid), lattice.bump_graph_version(), lattice.graph_version(),
    lattice.graph_neighbours(uuid), lattice.graph_dependencies(uuid, integer),
    lattice.graph_dependents(uuid, integer), lattice.graph_impact(uuid),
    lattice.graph_impact_summary(uuid), lattice.graph_paths(uuid, uuid, integer),
    lattice.graph_cycles(), lattice.graph_order(),
    lattice.graph_json(text, boolean, bigint, timestamptz),
    lattice.graph_reach_json(uuid, text, integer), lattice.graph_paths_json(uuid, uuid, integer),
    lattice.graph_cycles_json(), lattice.graph_order_json(), lattice.graph_cache_info(),
    lattice.graph_services_at(timestamptz), lattice.graph_edges_at(timestamptz),
    lattice.graph_at(timestamptz), lattice.graph_diff(timestamptz, timestamptz)
    TO lattice_app, lattice_admin;
-- The graph over HTTP (GET, any credential, RLS-scoped): each function
-- authenticates, reads its parameters and answers with the C graph's JSON
-- (src/graph_*.c), which is written once as text and never re-parsed.
-- Malformed ids in the path are "not found" (a forged id is not a hint);
-- malformed query parameters are 400 invalid_input.

-- A uuid from a path parameter, or 404.
CREATE FUNCTION lattice.graph_param_id(req jsonb, name text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := req -> 'params' ->> name;
BEGIN
    IF raw IS NULL OR raw !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        PERFORM lattice.raise_http(404, 'not_found', 'service not found');
    END IF;
    RETURN raw::uuid;
END
$$;

-- A typed query parameter (NULL when absent), or 400 naming it.
CREATE FUNCTION lattice.graph_query(req jsonb, name text, typ text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := req -> 'query' ->> name;
BEGIN
    IF raw IS NULL OR raw = '' THEN
        RETURN NULL;
    END IF;
    CASE typ
    WHEN 'positive' THEN
        IF raw !~ '^[0-9]{1,9}$' OR raw::integer < 1 THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be a positive integer',
                                       jsonb_build_object('parameter', name));
        END IF;
    WHEN 'count' THEN
        IF raw !~ '^[0-9]{1,18}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be a non-negative integer',
                                       jsonb_build_object('parameter', name));
        END IF;
    WHEN 'boolean' THEN
        IF lower(raw) NOT IN ('true', 'false', '1', '0', 'yes', 'no') THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be true or false',
                                       jsonb_build_object('parameter', name));
        END IF;
        RETURN lower(raw) IN ('true', '1', 'yes')::text;
    WHEN 'uuid' THEN
        IF raw !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be a service id',
                                       jsonb_build_object('parameter', name));
        END IF;
    WHEN 'timestamp' THEN
        BEGIN
            RETURN raw::timestamptz::text;
        EXCEPTION WHEN data_exception THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be an ISO 8601 time',
                                       jsonb_build_object('parameter', name));
        END;
    ELSE
        RAISE EXCEPTION 'lattice.graph_query: unknown type %', typ;
    END CASE;
    RETURN raw;
END
$$;

-- A 200 with a JSON text body (the shim adds the rate headers).
CREATE FUNCTION lattice.graph_answer(body json) RETURNS lattice.http_response
LANGUAGE sql STABLE
AS $$ SELECT ROW(200, '{}'::jsonb, body::text)::lattice.http_response $$;

-- GET /api/v1/graph?environment=&active=&min_calls=&since=  (or ?at=T: the
-- graph as it was at T, from the history)
CREATE FUNCTION lattice_http.graph(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    at timestamptz;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    at := lattice.graph_query(req, 'at', 'timestamp')::timestamptz;
    IF at IS NOT NULL THEN
        RETURN lattice.graph_answer(lattice.graph_at(at)::json);
    END IF;
    RETURN lattice.graph_answer(lattice.graph_json(
        req -> 'query' ->> 'environment',
        COALESCE(lattice.graph_query(req, 'active', 'boolean')::boolean, false),
        COALESCE(lattice.graph_query(req, 'min_calls', 'count')::bigint, 0),
        lattice.graph_query(req, 'since', 'timestamp')::timestamptz));
END
$$;

-- GET /api/v1/graph/dependencies/{id}?depth=  (default 1)
CREATE FUNCTION lattice_http.graph_dependencies(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'dependencies',
        COALESCE(lattice.graph_query(req, 'depth', 'positive')::integer, 1)));
END
$$;

-- GET /api/v1/graph/dependents/{id}?depth=  (default 1)
CREATE FUNCTION lattice_http.graph_dependents(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'dependents',
        COALESCE(lattice.graph_query(req, 'depth', 'positive')::integer, 1)));
END
$$;

-- GET /api/v1/services/{id}/impact
CREATE FUNCTION lattice_http.service_impact(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'impact', NULL));
END
$$;

-- GET /api/v1/graph/path?from=&to=&max_paths=
CREATE FUNCTION lattice_http.graph_path(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    from_id uuid;
    to_id uuid;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    from_id := lattice.graph_query(req, 'from', 'uuid')::uuid;
    to_id := lattice.graph_query(req, 'to', 'uuid')::uuid;
    IF from_id IS NULL OR to_id IS NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'from and to are required',
                                   jsonb_build_object('parameter', CASE WHEN from_id IS NULL THEN 'from' ELSE 'to' END));
    END IF;
    RETURN lattice.graph_answer(lattice.graph_paths_json(from_id, to_id,
        COALESCE(lattice.graph_query(req, 'max_paths', 'positive')::integer, 1)));
END
$$;

-- GET /api/v1/graph/cycles
CREATE FUNCTION lattice_http.graph_cycles(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_cycles_json());
END
$$;

-- GET /api/v1/graph/order
CREATE FUNCTION lattice_http.graph_order(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_order_json());
END
$$;

-- GET /api/v1/graph/diff?from=&to=  (to defaults to now)
CREATE FUNCTION lattice_http.graph_diff(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    from_time timestamptz;
    to_time timestamptz;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    from_time := lattice.graph_query(req, 'from', 'timestamp')::timestamptz;
    to_time := COALESCE(lattice.graph_query(req, 'to', 'timestamp')::timestamptz, pg_catalog.now());
    IF from_time IS NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'from is required',
                                   jsonb_build_object('parameter', 'from'));
    END IF;
    RETURN lattice.graph_answer(lattice.graph_diff(from_time, to_time)::json);
END
$$;

GRANT EXECUTE ON FUNCTION lattice.graph_param_id(jsonb, text), lattice.graph_query(jsonb, text, text),
                          lattice.graph_answer(json)
    TO lattice_app;
-- Live changes (GET /api/v1/events): the shim authenticates a Server-Sent
-- Events client through this function on its ordinary pooled path, then holds
-- the stream open outside any transaction and forwards the lattice_graph
-- notifications (lattice.graph_bump, 70_graph.sql) whose tenant is userId.
-- graphVersion lets the client tell whether what it shows is already stale.
CREATE FUNCTION lattice_http.events_subscribe(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
BEGIN
    RETURN lattice.http_json(200,
        jsonb_build_object('userId', uid, 'graphVersion', lattice.graph_version()));
END
$$;
-- E-mail templates: the subject, plain text and HTML of every message
-- Lattice sends, and how the messages write names, dates and amounts.
-- Billing (80_billing.sql), the account lifecycle (86_account.sql) and
-- alerts (88_alerts.sql) queue their messages with lattice.outbox_email
-- (80_billing.sql), which renders them here; the shim's worker sends what
-- the outbox holds.  A password-reset request renders its message even when
-- it sends none (no such account, or too many requests for the address)
-- and throws it away, so that its answer costs the same either way
-- (src/account_token.c).

-- Text for HTML: the five characters with a meaning there, escaped.
CREATE FUNCTION lattice.html_escape(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT replace(replace(replace(replace(replace(s, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'),
                           '"', '&quot;'), '''', '&#39;')
$$;

-- A date as the e-mails write it: "March 9, 2027" (UTC).
CREATE FUNCTION lattice.email_date(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'FMMonth FMDD, YYYY')
$$;

-- An amount as the e-mails write it: "25.00 USD" (cents of currency).
CREATE FUNCTION lattice.billing_money(cents bigint, currency text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_char(COALESCE(cents, 0) / 100.0, 'FM999999990.00') || ' ' || upper(COALESCE(currency, 'usd'))
$$;

-- The subject, plain text and HTML of one e-mail, by template; data holds
-- the template's values and `origin`, the dashboard's public origin.  Every
-- message ends with a footer saying why this address receives it; none has
-- an unsubscribe link.
CREATE FUNCTION lattice.billing_email_content(template text, name text, data jsonb,
                                              OUT subject text, OUT text_body text, OUT html_body text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
    WHEN 'alert' THEN
        subject := COALESCE(data ->> 'subject', 'Lattice alert');
        lines := ARRAY[COALESCE(data ->> 'summary', ''),
                       COALESCE(data ->> 'detail', ''),
                       'See it in the dashboard: ' || origin || '/dashboard/alerts'];
        footer := 'You receive this message because this address is an alert channel of a Lattice account; '
                  'its owner can remove it under Alerts in the dashboard.';
    WHEN 'alert_recipient_verify' THEN
        subject := 'Confirm that Lattice may send alerts to this address';
        lines := ARRAY['The Lattice account of ' || COALESCE(data ->> 'owner', 'a Lattice customer')
                       || ' wants to send its alerts to this address. Open this link to agree (it works for 7 days):',
                       COALESCE(data ->> 'link', ''),
                       'If you do not expect this, ignore this message: nothing will be sent.'];
        footer := 'You receive this message once because someone entered this address as an alert channel.';
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
$$;

GRANT EXECUTE ON FUNCTION lattice.email_date(timestamptz), lattice.billing_money(bigint, text) TO lattice_app;
-- Billing with Stripe (docs/http-contract.md, "Outbound routes").
--
--  * Webhooks: the Stripe-Signature header is verified in C
--    (src/billing_signature.c) against the active endpoint secrets of
--    lattice.webhook_secrets (owner-only).  Events are stored by Stripe's
--    event id and applied once; state carries the `created` of the event that
--    set it and an older event never overwrites a newer state.
--  * Entitlement: lattice.entitlement(user_id) says what the account may do;
--    ingest asks it, the API adds its warning header.
--  * Outbound calls (Stripe's API, e-mail, alert webhooks) are rows of
--    lattice.outbox, never made inside a transaction: the shim claims a job,
--    performs the call with no transaction open, and records the result
--    through lattice_worker.outbox_complete(), which may chain a next job.
--
-- Cross-tenant work (a webhook finding its customer, the shim draining the
-- outbox) happens in SECURITY DEFINER functions with a pinned search_path
-- that touch only the account an event or job names.
--
-- What the e-mails say is in 78_email_templates.sql; the billing routes, and
-- the answers of the webhook and of the actions that call Stripe, in
-- 85_http_billing.sql.

-- C entry points ------------------------------------------------------------

CREATE FUNCTION lattice.stripe_signature_verdict(header text, payload text, secrets text[],
                                                 tolerance_seconds integer, at timestamptz)
RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_stripe_signature_verdict'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION lattice.stripe_signature_verdict(text, text, text[], integer, timestamptz) IS
    'valid, or why a Stripe-Signature header does not verify: malformed_header, no_signature, '
    'no_secret, timestamp_out_of_tolerance, signature_mismatch';

CREATE FUNCTION lattice.stripe_signature_header(payload text, secret text, at timestamptz)
RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_stripe_signature_header'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION lattice.stripe_signature_header(text, text, timestamptz) IS
    'signs a payload the way Stripe does (t=...,v1=...); for tests and secret checks';

CREATE FUNCTION lattice.billing_setting(name text) RETURNS integer
    AS 'MODULE_PATHNAME', 'lattice_billing_setting'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION lattice.billing_webhook_rate(client_addr text) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_billing_webhook_rate'
    LANGUAGE C VOLATILE;

-- Where Stripe sends the browser back to: the public origin of the dashboard.
CREATE FUNCTION lattice.billing_public_origin() RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.rtrim(COALESCE(NULLIF(pg_catalog.current_setting('lattice.billing_public_origin', true), ''),
                                     'http://localhost:8080'), '/')
$$;

-- State ---------------------------------------------------------------------

-- Stripe's view of a subscription, kept verbatim (status is Stripe's word).
-- state_at is the `created` of the event that set the row: newest wins.
ALTER TABLE lattice.subscriptions
    ADD COLUMN IF NOT EXISTS cancel_at_period_end boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS trial_start          timestamptz,
    ADD COLUMN IF NOT EXISTS trial_end            timestamptz,
    ADD COLUMN IF NOT EXISTS current_period_start timestamptz,
    ADD COLUMN IF NOT EXISTS canceled_at          timestamptz,
    ADD COLUMN IF NOT EXISTS ended_at             timestamptz,
    ADD COLUMN IF NOT EXISTS past_due_since       timestamptz,
    ADD COLUMN IF NOT EXISTS payment_state        text,
    ADD COLUMN IF NOT EXISTS payment_state_at     timestamptz,
    ADD COLUMN IF NOT EXISTS stripe_price_id      text,
    ADD COLUMN IF NOT EXISTS state_at             timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at           timestamptz NOT NULL DEFAULT pg_catalog.now();

-- The Stripe customer of an account, created on first checkout and reused.
-- Also the look-up from a webhook's customer to the account, across tenants
-- (on Citus a reference table, as lattice.account_emails is).
CREATE TABLE lattice.billing_customers (
    user_id             uuid PRIMARY KEY,
    stripe_customer_id  text NOT NULL UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Invoices as the webhooks report them; the read API never calls Stripe.
CREATE TABLE lattice.invoices (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    stripe_invoice_id   text NOT NULL,
    stripe_subscription_id text,
    number              text,
    amount_due          bigint,
    amount_paid         bigint,
    currency            text,
    status              text,
    hosted_invoice_url  text,
    invoice_pdf         text,
    period_start        timestamptz,
    period_end          timestamptz,
    created             timestamptz,
    state_at            timestamptz NOT NULL,
    PRIMARY KEY (user_id, id),
    UNIQUE (user_id, stripe_invoice_id)
);
CREATE INDEX ON lattice.invoices (user_id, created DESC);

-- Webhook endpoint secrets (whsec_...): several may be active while Stripe
-- rolls one over.  Owner-only: no API or admin role reads it.
CREATE TABLE lattice.webhook_secrets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret      text NOT NULL UNIQUE CHECK (pg_catalog.length(secret) BETWEEN 16 AND 256),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at  timestamptz
);
REVOKE ALL ON lattice.webhook_secrets FROM PUBLIC;

-- Every verified event, by Stripe's id.  account_id is the account it was
-- matched to (NULL until known), so this is not a tenant table.
CREATE TABLE lattice.stripe_events (
    id              text PRIMARY KEY,
    type            text NOT NULL,
    created         timestamptz NOT NULL,
    livemode        boolean NOT NULL DEFAULT false,
    customer        text,
    account_id      uuid,
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    applied_at      timestamptz,
    outcome         text NOT NULL DEFAULT 'received'
                    CHECK (outcome IN ('received', 'applied', 'stale', 'ignored', 'unmatched'))
);
CREATE INDEX ON lattice.stripe_events (customer) WHERE outcome = 'unmatched';
REVOKE ALL ON lattice.stripe_events FROM PUBLIC;

-- Outbound calls and e-mails, drained by the shim.  interactive jobs are
-- performed by the request that created them, right after its COMMIT (the
-- user waits for the answer); the others by the shim's worker thread, with
-- retries and backoff.  Owner-only; the shim reaches it through
-- lattice_worker.* and the API through the enqueue functions below.
CREATE TABLE lattice.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('stripe', 'email', 'webhook')),
    purpose         text NOT NULL,
    interactive     boolean NOT NULL DEFAULT false,
    -- stripe: the request; params is an array of [key, value] pairs, form-encoded by the shim
    method          text CHECK (method IN ('GET', 'POST', 'DELETE')),
    path            text CHECK (path ~ '^/v1/[A-Za-z0-9_/.-]+$'),
    params          jsonb NOT NULL DEFAULT '[]',
    idempotency_key text,
    -- email: the message, rendered when enqueued
    mail_to         text,
    mail_subject    text,
    mail_text       text,
    mail_html       text,
    -- webhook: a JSON POST to url (alerts, docs/alerts.md); signed when claimed
    url             text,
    body            text,
    context         jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 20,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    locked_until    timestamptz,
    last_error      text,
    response_status integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    done_at         timestamptz,
    CHECK (kind <> 'stripe' OR (method IS NOT NULL AND path IS NOT NULL AND idempotency_key IS NOT NULL)),
    CHECK (kind <> 'email' OR (mail_to IS NOT NULL AND mail_subject IS NOT NULL
                               AND mail_text IS NOT NULL AND mail_html IS NOT NULL)),
    CHECK (kind <> 'webhook' OR (url IS NOT NULL AND body IS NOT NULL))
);
CREATE INDEX ON lattice.outbox (next_attempt_at) WHERE status IN ('pending', 'running') AND NOT interactive;
REVOKE ALL ON lattice.outbox FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('lattice.webhook_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('lattice.stripe_events', '');
SELECT pg_catalog.pg_extension_config_dump('lattice.outbox', '');

-- Small helpers ---------------------------------------------------------------

-- Whether webhooks may reach loopback addresses (src/alert_webhook.c); the
-- shim applies it to each connection it opens for a job.
CREATE FUNCTION lattice.outbound_allow_loopback() RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.current_setting('lattice.outbound_allow_loopback')::boolean $$;

-- A Stripe timestamp (unix seconds, or null) as timestamptz.
CREATE FUNCTION lattice.stripe_time(v jsonb) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(v) = 'number'
                THEN pg_catalog.to_timestamp((v #>> '{}')::double precision) END
$$;

-- Secrets (admin) -------------------------------------------------------------

-- Adds a webhook endpoint secret; the others stay active until retired, so a
-- rotation is: add the new one, let Stripe roll over, retire the old one.
CREATE FUNCTION lattice.webhook_secret_add(secret text, expires_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    IF secret IS NULL OR secret !~ '^whsec_[A-Za-z0-9+/=_-]{8,250}$' THEN
        RAISE EXCEPTION 'lattice.webhook_secret_add: not a Stripe webhook secret (whsec_...)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO lattice.webhook_secrets (secret, expires_at)
    VALUES (webhook_secret_add.secret, webhook_secret_add.expires_at)
    ON CONFLICT ON CONSTRAINT webhook_secrets_secret_key
        DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING id INTO new_id;
    PERFORM lattice.audit('billing.webhook_secret_added', new_id::text, NULL, NULL, NULL);
    RETURN new_id;
END
$$;

-- Retires secrets: one by id, or every one but the newest when id is NULL.
CREATE FUNCTION lattice.webhook_secret_retire(id bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE lattice.webhook_secrets w SET expires_at = pg_catalog.now()
     WHERE (w.expires_at IS NULL OR w.expires_at > pg_catalog.now())
       AND CASE WHEN webhook_secret_retire.id IS NOT NULL THEN w.id = webhook_secret_retire.id
                ELSE w.id <> (SELECT max(x.id) FROM lattice.webhook_secrets x) END;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM lattice.audit('billing.webhook_secret_retired', webhook_secret_retire.id::text,
                          pg_catalog.jsonb_build_object('count', n), NULL, NULL);
    RETURN n;
END
$$;

-- Sets the Stripe price a plan is sold at (configuration, not code).
CREATE FUNCTION lattice.billing_set_price(plan_id text, stripe_price_id text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF stripe_price_id !~ '^price_[A-Za-z0-9_]{1,120}$' THEN
        RAISE EXCEPTION 'lattice.billing_set_price: not a Stripe price id (price_...)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE lattice.plans p SET stripe_price_id = billing_set_price.stripe_price_id
     WHERE p.id = billing_set_price.plan_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lattice.billing_set_price: no plan "%"', plan_id
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM lattice.audit('billing.price_set', plan_id,
                          pg_catalog.jsonb_build_object('stripe_price_id', stripe_price_id), NULL, NULL);
END
$$;

-- E-mail ----------------------------------------------------------------------

-- Queues one e-mail to an account, rendered from its template
-- (78_email_templates.sql).  Sent by the shim's worker.
CREATE FUNCTION lattice.outbox_email(account uuid, template text, data jsonb DEFAULT '{}',
                                     to_email text DEFAULT NULL, to_name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
    m record;
    new_id bigint;
BEGIN
    -- the caller may know the address (sign-up, before its row is readable here)
    IF to_email IS NOT NULL THEN
        SELECT to_email AS email, to_name AS name INTO u;
    ELSE
        SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    m := lattice.billing_email_content(template, u.name,
                                       COALESCE(data, '{}') || pg_catalog.jsonb_build_object('origin', lattice.billing_public_origin()));
    INSERT INTO lattice.outbox (account_id, kind, purpose, mail_to, mail_subject, mail_text, mail_html, context)
    VALUES (account, 'email', 'email.' || template, u.email, m.subject, m.text_body, m.html_body,
            pg_catalog.jsonb_build_object('template', template))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- Welcome mail at sign-up: called by the C function that creates accounts,
-- with what it has just written (the row is the tenant's, not read here).
CREATE FUNCTION lattice.billing_welcome(account uuid, email text, name text, trial_ends timestamptz)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lattice.outbox_email(account, 'welcome',
        pg_catalog.jsonb_build_object('trial_ends', lattice.email_date(trial_ends)),
        email, name);
END
$$;

-- Entitlement -------------------------------------------------------------------

-- What an account may do, from its subscription (or, before any checkout,
-- the sign-up trial of lattice.users.trial_ends_at):
--   trialing, active                  -> full service
--   past_due                          -> full for lattice.billing_past_due_grace_days
--                                        after it became past_due, with a warning
--   canceled, unpaid, paused, incomplete_expired, expired trial
--                                     -> read-only: ingest refused (402
--                                        subscription_required), data kept
-- Runs as the caller: row-level security limits it to the caller's tenant.
CREATE FUNCTION lattice.entitlement(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- The warning header every API answer of this account carries, or {}.
CREATE FUNCTION lattice.entitlement_headers(user_id uuid) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN e ? 'warning'
                THEN pg_catalog.jsonb_build_object('Lattice-Billing-Warning', e ->> 'warning')
                ELSE '{}'::jsonb END
      FROM lattice.entitlement(entitlement_headers.user_id) AS e
$$;

-- For ingest: raises 402 subscription_required when the account may not
-- ingest, else returns the headers to add to the answer (the warning).
CREATE FUNCTION lattice.require_ingest_entitlement(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e jsonb := lattice.entitlement(require_ingest_entitlement.user_id);
BEGIN
    IF NOT (e ->> 'may_ingest')::boolean THEN
        PERFORM lattice.raise_http(402, 'subscription_required',
            'an active subscription is required to ingest; your data is kept read-only',
            pg_catalog.jsonb_build_object('status', e -> 'status', 'data_kept_until', e -> 'data_kept_until',
                                          'billing_url', lattice.billing_public_origin() || '/dashboard/billing'));
    END IF;
    RETURN CASE WHEN e ? 'warning'
                THEN pg_catalog.jsonb_build_object('Lattice-Billing-Warning', e ->> 'warning')
                ELSE '{}'::jsonb END;
END
$$;

-- Billing read API ----------------------------------------------------------------

-- GET /billing: plan, status, trial, period, cancellation, payment state.
CREATE FUNCTION lattice.billing_summary(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
    p record;
    s record;
    e jsonb := lattice.entitlement(billing_summary.user_id);
    trial_end timestamptz;
BEGIN
    SELECT x.plan_id, x.trial_ends_at INTO u FROM lattice.users x WHERE x.id = billing_summary.user_id;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such account');
    END IF;
    SELECT x.* INTO p FROM lattice.plans x WHERE x.id = u.plan_id;
    SELECT x.* INTO s FROM lattice.subscriptions x WHERE x.user_id = billing_summary.user_id;
    trial_end := CASE WHEN s IS NULL OR s.status = 'incomplete' THEN u.trial_ends_at ELSE s.trial_end END;
    RETURN pg_catalog.jsonb_build_object(
        'plan', pg_catalog.jsonb_build_object('id', p.id, 'name', p.name, 'price_cents', p.price_cents,
                                              'currency', p.currency, 'interval', p.billing_interval,
                                              'trial_days', p.trial_days,
                                              'rate_limit_per_hour', p.rate_limit_per_hour,
                                              'max_services', p.max_services),
        'status', e -> 'status',
        'entitlement', e,
        'trial_end', trial_end,
        'trial_days_left', CASE WHEN trial_end > pg_catalog.now()
                                THEN ceil(extract(epoch FROM trial_end - pg_catalog.now()) / 86400)::int
                                WHEN trial_end IS NOT NULL THEN 0 END,
        'current_period_end', s.current_period_end,
        'cancel_at_period_end', COALESCE(s.cancel_at_period_end, false),
        'payment_state', s.payment_state,
        'has_customer', EXISTS (SELECT FROM lattice.billing_customers c WHERE c.user_id = billing_summary.user_id));
END
$$;

-- GET /billing/invoices: as the webhooks recorded them, newest first.
CREATE FUNCTION lattice.billing_invoices(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT pg_catalog.jsonb_build_object('invoices', COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', i.stripe_invoice_id, 'number', i.number, 'amount_due', i.amount_due,
               'amount_paid', i.amount_paid, 'currency', i.currency, 'status', i.status,
               'hosted_invoice_url', i.hosted_invoice_url, 'invoice_pdf', i.invoice_pdf,
               'period_start', i.period_start, 'period_end', i.period_end, 'date', i.created)
               ORDER BY i.created DESC, i.stripe_invoice_id), '[]'::jsonb))
      FROM lattice.invoices i
     WHERE i.user_id = billing_invoices.user_id);
END
$$;

-- Applying webhook events --------------------------------------------------------

-- The account a Stripe object belongs to: our customer mapping first (we
-- created the customer), then the metadata.user_id / client_reference_id we
-- set on it.  Links an unknown customer to the account it names.
CREATE FUNCTION lattice.stripe_resolve_account(customer text, candidates text[])
RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id uuid;
    c text;
BEGIN
    IF customer IS NOT NULL THEN
        SELECT bc.user_id INTO found_id FROM lattice.billing_customers bc WHERE bc.stripe_customer_id = customer;
        IF found_id IS NOT NULL THEN
            RETURN found_id;
        END IF;
    END IF;
    FOREACH c IN ARRAY candidates LOOP
        CONTINUE WHEN c IS NULL OR c !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
        SELECT u.id INTO found_id FROM lattice.users u WHERE u.id = c::uuid;
        IF found_id IS NOT NULL THEN
            IF customer IS NOT NULL THEN
                INSERT INTO lattice.billing_customers (user_id, stripe_customer_id)
                VALUES (found_id, customer) ON CONFLICT DO NOTHING;
            END IF;
            RETURN found_id;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Applies a subscription object with the state time `at`; returns true when
-- it was newer than what we hold (and so was applied).
CREATE FUNCTION lattice.stripe_apply_subscription(account uuid, sub jsonb, at timestamptz, event_id text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old record;
    applied boolean;
    new_status text := sub ->> 'status';
BEGIN
    IF new_status IS NULL OR sub ->> 'id' IS NULL THEN
        RETURN false;
    END IF;
    SELECT s.status, s.cancel_at_period_end, s.stripe_subscription_id INTO old
      FROM lattice.subscriptions s WHERE s.user_id = account FOR UPDATE;

    INSERT INTO lattice.subscriptions AS s
        (user_id, stripe_customer_id, stripe_subscription_id, status, current_period_start, current_period_end,
         cancel_at_period_end, trial_start, trial_end, canceled_at, ended_at, stripe_price_id,
         past_due_since, state_at, updated_at)
    VALUES (account, sub ->> 'customer', sub ->> 'id', new_status,
            lattice.stripe_time(sub -> 'current_period_start'), lattice.stripe_time(sub -> 'current_period_end'),
            COALESCE((sub ->> 'cancel_at_period_end')::boolean, false),
            lattice.stripe_time(sub -> 'trial_start'), lattice.stripe_time(sub -> 'trial_end'),
            lattice.stripe_time(sub -> 'canceled_at'), lattice.stripe_time(sub -> 'ended_at'),
            sub #>> '{items,data,0,price,id}',
            CASE WHEN new_status = 'past_due' THEN at END, at, pg_catalog.now())
    ON CONFLICT (user_id) DO UPDATE SET
        stripe_customer_id = EXCLUDED.stripe_customer_id,
        stripe_subscription_id = EXCLUDED.stripe_subscription_id,
        status = EXCLUDED.status,
        current_period_start = EXCLUDED.current_period_start,
        current_period_end = EXCLUDED.current_period_end,
        cancel_at_period_end = EXCLUDED.cancel_at_period_end,
        trial_start = EXCLUDED.trial_start,
        trial_end = EXCLUDED.trial_end,
        canceled_at = EXCLUDED.canceled_at,
        ended_at = EXCLUDED.ended_at,
        stripe_price_id = EXCLUDED.stripe_price_id,
        past_due_since = CASE WHEN EXCLUDED.status <> 'past_due' THEN NULL
                              WHEN s.status = 'past_due' AND s.stripe_subscription_id = EXCLUDED.stripe_subscription_id
                              THEN COALESCE(s.past_due_since, EXCLUDED.past_due_since)
                              ELSE EXCLUDED.past_due_since END,
        -- a new subscription (re-subscribe) starts with an unknown payment state
        payment_state = CASE WHEN s.stripe_subscription_id = EXCLUDED.stripe_subscription_id
                             THEN s.payment_state END,
        state_at = EXCLUDED.state_at,
        updated_at = EXCLUDED.updated_at
    WHERE s.state_at IS NULL OR s.state_at <= EXCLUDED.state_at;
    GET DIAGNOSTICS applied = ROW_COUNT;

    IF applied AND (old IS NULL OR old.status IS DISTINCT FROM new_status
                    OR old.cancel_at_period_end IS DISTINCT FROM COALESCE((sub ->> 'cancel_at_period_end')::boolean, false)
                    OR old.stripe_subscription_id IS DISTINCT FROM sub ->> 'id') THEN
        PERFORM lattice.audit('billing.subscription_changed', sub ->> 'id',
            pg_catalog.jsonb_build_object('from', old.status, 'to', new_status, 'event', event_id,
                                          'cancel_at_period_end', sub -> 'cancel_at_period_end'),
            NULL, account);
    END IF;
    RETURN applied;
END
$$;

-- Applies an invoice object; on invoice.paid / invoice.payment_failed also
-- the payment state.  Returns true when newer than what we hold.
CREATE FUNCTION lattice.stripe_apply_invoice(account uuid, inv jsonb, at timestamptz, event_type text, event_id text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    applied boolean;
    pay_state text := CASE event_type WHEN 'invoice.paid' THEN 'paid'
                                      WHEN 'invoice.payment_succeeded' THEN 'paid'
                                      WHEN 'invoice.payment_failed' THEN 'failed' END;
BEGIN
    IF inv ->> 'id' IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO lattice.invoices AS i
        (user_id, stripe_invoice_id, stripe_subscription_id, number, amount_due, amount_paid, currency, status,
         hosted_invoice_url, invoice_pdf, period_start, period_end, created, state_at)
    VALUES (account, inv ->> 'id', inv ->> 'subscription', inv ->> 'number',
            (inv ->> 'amount_due')::bigint, (inv ->> 'amount_paid')::bigint, inv ->> 'currency', inv ->> 'status',
            inv ->> 'hosted_invoice_url', inv ->> 'invoice_pdf',
            lattice.stripe_time(inv -> 'period_start'), lattice.stripe_time(inv -> 'period_end'),
            lattice.stripe_time(inv -> 'created'), at)
    ON CONFLICT (user_id, stripe_invoice_id) DO UPDATE SET
        number = EXCLUDED.number, amount_due = EXCLUDED.amount_due, amount_paid = EXCLUDED.amount_paid,
        currency = EXCLUDED.currency, status = EXCLUDED.status,
        hosted_invoice_url = EXCLUDED.hosted_invoice_url, invoice_pdf = EXCLUDED.invoice_pdf,
        period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
        created = EXCLUDED.created, state_at = EXCLUDED.state_at
    WHERE i.user_id = EXCLUDED.user_id AND i.state_at <= EXCLUDED.state_at;
    GET DIAGNOSTICS applied = ROW_COUNT;

    IF pay_state IS NOT NULL THEN
        UPDATE lattice.subscriptions s
           SET payment_state = pay_state, payment_state_at = at, updated_at = pg_catalog.now()
         WHERE s.user_id = account
           AND (s.payment_state_at IS NULL OR s.payment_state_at <= at)
           AND (inv ->> 'subscription' IS NULL OR s.stripe_subscription_id IS NULL
                OR s.stripe_subscription_id = inv ->> 'subscription');
        PERFORM lattice.audit('billing.' || CASE pay_state WHEN 'paid' THEN 'payment_succeeded'
                                                           ELSE 'payment_failed' END,
                              inv ->> 'id',
                              pg_catalog.jsonb_build_object('amount_due', inv -> 'amount_due',
                                                            'currency', inv -> 'currency', 'event', event_id),
                              NULL, account);
    END IF;
    RETURN applied;
END
$$;

-- Applies one verified event; returns its outcome: applied, stale (a newer
-- state is already held), ignored (a type we do not act on) or unmatched (no
-- account known yet; re-applied when the customer is linked).
CREATE FUNCTION lattice.stripe_apply_event(event_id text)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- Re-applies, oldest first, the events of a customer that arrived before the
-- customer was linked to an account.
CREATE FUNCTION lattice.stripe_reapply_unmatched(customer text)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
    n integer := 0;
BEGIN
    IF NOT EXISTS (SELECT FROM lattice.billing_customers bc WHERE bc.stripe_customer_id = customer) THEN
        RETURN 0;
    END IF;
    FOR e IN SELECT se.id FROM lattice.stripe_events se
              WHERE se.customer = stripe_reapply_unmatched.customer AND se.outcome = 'unmatched'
              ORDER BY se.created, se.received_at
    LOOP
        PERFORM lattice.stripe_apply_event(e.id);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;


-- Interactive Stripe calls (the API, as the tenant) -----------------------------------

-- Queues an interactive Stripe call for the current tenant; the shim performs
-- it right after the request's COMMIT (route flag `outbound`).
CREATE FUNCTION lattice.outbox_enqueue_stripe(purpose text, method text, path text, params jsonb,
                                              idempotency_key text, context jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    new_id bigint;
BEGIN
    IF account IS NULL THEN
        RAISE EXCEPTION 'lattice.outbox_enqueue_stripe: no authenticated tenant'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO lattice.outbox (account_id, kind, purpose, interactive, method, path, params,
                                idempotency_key, context, max_attempts)
    VALUES (account, 'stripe', purpose, true, method, path, params, idempotency_key, context, 1)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- The answer of an outbound route: 202 with the job for the shim to run.
-- The shim removes the header and answers with what the job chain returns.
CREATE FUNCTION lattice.outbound_answer(job bigint) RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE
AS $$
    SELECT lattice.http_json(202, pg_catalog.jsonb_build_object('pending', true, 'job', job),
                             pg_catalog.jsonb_build_object('Lattice-Outbox-Job', job::text))
$$;

-- The Stripe params that create a Checkout Session for an account.
CREATE FUNCTION lattice.billing_checkout_params(account uuid, customer text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;


-- The shim's side of the outbox --------------------------------------------------
-- Schema lattice_worker holds only what the shim needs to drain the outbox;
-- lattice_api gets USAGE on it and EXECUTE on these functions, nothing else.

CREATE SCHEMA lattice_worker;
REVOKE ALL ON SCHEMA lattice_worker FROM PUBLIC;
GRANT USAGE ON SCHEMA lattice_worker TO lattice_api;

CREATE TYPE lattice_worker.job AS (
    id              bigint,
    kind            text,
    method          text,
    path            text,
    params          jsonb,
    idempotency_key text,
    mail_to         text,
    mail_subject    text,
    mail_text       text,
    mail_html       text,
    url             text,
    body            text,
    headers         jsonb,
    allow_loopback  boolean
);

-- The request headers of a claimed job: for a webhook, its signature over
-- the body at the time of this attempt (src/alert_webhook.c) and the
-- delivery id, so a receiver can verify it and drop a repeat.
CREATE FUNCTION lattice_worker.job_headers(o lattice.outbox) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF o.kind <> 'webhook' THEN
        RETURN NULL;
    END IF;
    RETURN lattice.alert_webhook_headers(o.id, o.account_id, (o.context ->> 'channel')::uuid, o.body);
END
$$;

-- Claims one interactive job by id (the request that created it, after its
-- COMMIT); no row when it is not pending any more.
CREATE FUNCTION lattice_worker.outbox_claim(job_id bigint)
RETURNS SETOF lattice_worker.job
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE lattice.outbox o
       SET status = 'running', attempts = o.attempts + 1,
           locked_until = pg_catalog.now() + interval '2 minutes'
     WHERE o.id = job_id AND o.status = 'pending'
    RETURNING o.id, o.kind, o.method, o.path, o.params, o.idempotency_key,
              o.mail_to, o.mail_subject, o.mail_text, o.mail_html,
              o.url, o.body, lattice_worker.job_headers(o), lattice.outbound_allow_loopback()
$$;

-- Claims up to max_jobs due background jobs of the given kinds (and jobs
-- whose lease ran out: a shim that died mid-call), skipping rows another
-- worker holds.  The shim drains webhooks apart from e-mail and Stripe, so a
-- slow receiver never holds up a mail.
CREATE FUNCTION lattice_worker.outbox_claim_due(max_jobs integer, kinds text[])
RETURNS SETOF lattice_worker.job
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE lattice.outbox o
       SET status = 'running', attempts = o.attempts + 1,
           locked_until = pg_catalog.now() + interval '2 minutes'
     WHERE o.id IN (SELECT x.id FROM lattice.outbox x
                     WHERE NOT x.interactive AND x.kind = ANY (kinds)
                       AND ((x.status = 'pending' AND x.next_attempt_at <= pg_catalog.now())
                            OR (x.status = 'running' AND x.locked_until < pg_catalog.now()))
                     ORDER BY x.next_attempt_at
                     LIMIT LEAST(GREATEST(max_jobs, 1), 100)
                     FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.kind, o.method, o.path, o.params, o.idempotency_key,
              o.mail_to, o.mail_subject, o.mail_text, o.mail_html,
              o.url, o.body, lattice_worker.job_headers(o), lattice.outbound_allow_loopback()
$$;

-- Records the result of a job the shim ran: response_status is the HTTP
-- status (Stripe) or the SMTP reply code (e-mail), error the transport error
-- (NULL when the call went through).  Returns the answer for the waiting
-- client of an interactive job, and the next job of a chain to run.
CREATE FUNCTION lattice_worker.outbox_complete(job_id bigint, response_status integer,
                                               response_body text, error text)
RETURNS TABLE (status integer, headers jsonb, body text, next_job bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j record;
    resp jsonb;
    ok boolean;
    answer lattice.http_response;
    chained bigint;
    backoff interval;
BEGIN
    SELECT o.* INTO j FROM lattice.outbox o WHERE o.id = job_id AND o.status = 'running' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lattice_worker.outbox_complete: job % is not running', job_id
            USING ERRCODE = 'no_data_found';
    END IF;
    BEGIN
        resp := outbox_complete.response_body::jsonb;
    EXCEPTION WHEN others THEN
        resp := NULL;
    END;
    IF j.kind IN ('email', 'webhook') THEN
        ok := outbox_complete.error IS NULL AND outbox_complete.response_status BETWEEN 200 AND 299;
    ELSE
        ok := outbox_complete.error IS NULL AND outbox_complete.response_status BETWEEN 200 AND 299 AND pg_catalog.jsonb_typeof(resp) = 'object';
    END IF;

    IF NOT ok THEN
        IF NOT j.interactive AND j.attempts < j.max_attempts THEN
            -- 30 s, 1 min, 2 min, ... capped at one hour; at least once, never lost
            backoff := LEAST(interval '30 seconds' * (2 ^ LEAST(j.attempts - 1, 10)), interval '1 hour');
            UPDATE lattice.outbox o SET status = 'pending', locked_until = NULL,
                   next_attempt_at = pg_catalog.now() + backoff,
                   last_error = COALESCE(outbox_complete.error, 'status ' || outbox_complete.response_status), response_status = outbox_complete.response_status
             WHERE o.id = job_id;
        ELSE
            UPDATE lattice.outbox o SET status = 'failed', locked_until = NULL, done_at = pg_catalog.now(),
                   last_error = COALESCE(outbox_complete.error, 'status ' || outbox_complete.response_status),
                   response_status = outbox_complete.response_status, response = resp
             WHERE o.id = job_id;
            PERFORM lattice.audit(CASE WHEN j.purpose LIKE 'alert.%' THEN 'alert.delivery_failed'
                                       ELSE 'billing.outbound_failed' END, j.purpose,
                pg_catalog.jsonb_build_object('job', job_id, 'status', outbox_complete.response_status, 'error', outbox_complete.error,
                                              'stripe_error', resp #> '{error,type}'),
                -- a deleted account's jobs (its cancellation, its last mail) are the operator's
                NULL, (SELECT u.id FROM lattice.users u WHERE u.id = j.account_id));
        END IF;
        IF j.interactive AND j.purpose = 'alert.test' THEN
            answer := lattice.http_error(502, 'delivery_failed', 'the test message could not be delivered',
                                         pg_catalog.jsonb_build_object('status', outbox_complete.response_status,
                                                                       'error', outbox_complete.error));
        ELSIF j.interactive THEN
            IF outbox_complete.error IS NOT NULL OR outbox_complete.response_status >= 500
               OR outbox_complete.response_status IS NULL THEN
                answer := lattice.http_error(503, 'payment_provider_unavailable',
                                             'the payment provider could not be reached; try again shortly',
                                             NULL, '{"Retry-After": "5"}');
            ELSE
                answer := lattice.http_error(502, 'payment_provider_error',
                                             'the payment provider refused the request',
                                             pg_catalog.jsonb_build_object('status', outbox_complete.response_status,
                                                                           'type', resp #> '{error,type}',
                                                                           'code', resp #> '{error,code}'));
            END IF;
        END IF;
        RETURN QUERY SELECT answer.status, answer.headers, answer.body, NULL::bigint;
        RETURN;
    END IF;

    UPDATE lattice.outbox o SET status = 'done', locked_until = NULL, done_at = pg_catalog.now(),
           response_status = outbox_complete.response_status, response = resp, last_error = NULL
     WHERE o.id = job_id;

    CASE j.purpose
    WHEN 'checkout.customer' THEN
        IF resp ->> 'id' IS NULL THEN
            answer := lattice.http_error(502, 'payment_provider_error', 'the customer has no id');
        ELSE
            INSERT INTO lattice.billing_customers (user_id, stripe_customer_id)
            VALUES (j.account_id, resp ->> 'id') ON CONFLICT DO NOTHING;
            PERFORM lattice.audit('billing.customer_created', resp ->> 'id', NULL, NULL, j.account_id);
            PERFORM lattice.stripe_reapply_unmatched(resp ->> 'id');
            INSERT INTO lattice.outbox (account_id, kind, purpose, interactive, method, path, params,
                                        idempotency_key, max_attempts)
            SELECT j.account_id, 'stripe', 'checkout.session', true, 'POST', '/v1/checkout/sessions',
                   lattice.billing_checkout_params(j.account_id, bc.stripe_customer_id),
                   'lattice-checkout-' || pg_catalog.gen_random_uuid()::text, 1
              FROM lattice.billing_customers bc WHERE bc.user_id = j.account_id
            RETURNING id INTO chained;
            IF chained IS NULL THEN
                -- the customer id belongs to another account: never cross tenants
                answer := lattice.http_error(502, 'payment_provider_error', 'the customer is linked to another account');
            ELSE
                answer := lattice.outbound_answer(chained);
            END IF;
        END IF;
    WHEN 'checkout.session', 'portal.session' THEN
        IF resp ->> 'url' IS NULL THEN
            answer := lattice.http_error(502, 'payment_provider_error', 'the session has no url');
        ELSE
            answer := lattice.http_json(200, pg_catalog.jsonb_build_object('url', resp ->> 'url', 'id', resp ->> 'id'));
        END IF;
    WHEN 'subscription.cancel', 'subscription.resume' THEN
        -- Stripe's answer is the subscription; its webhook follows and wins by `created`
        UPDATE lattice.subscriptions s
           SET cancel_at_period_end = COALESCE((resp ->> 'cancel_at_period_end')::boolean, s.cancel_at_period_end),
               updated_at = pg_catalog.now()
         WHERE s.user_id = j.account_id AND s.stripe_subscription_id = resp ->> 'id';
        PERFORM lattice.audit('billing.' || replace(j.purpose, 'subscription.', 'subscription_'), resp ->> 'id',
                              pg_catalog.jsonb_build_object('cancel_at_period_end', resp -> 'cancel_at_period_end'),
                              NULL, j.account_id);
        answer := lattice.http_json(200, pg_catalog.jsonb_build_object(
            'cancel_at_period_end', COALESCE((resp ->> 'cancel_at_period_end')::boolean, false),
            'current_period_end', lattice.stripe_time(resp -> 'current_period_end'),
            'status', resp ->> 'status'));
    WHEN 'alert.test' THEN
        answer := lattice.http_json(200, pg_catalog.jsonb_build_object('delivered', true,
                                                                       'status', outbox_complete.response_status));
    ELSE
        answer := NULL;
    END CASE;
    RETURN QUERY SELECT answer.status, answer.headers, answer.body, chained;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA lattice_worker FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice_worker TO lattice_api;

-- What lattice_app (the API functions) may call.
GRANT EXECUTE ON FUNCTION
    lattice.entitlement(uuid), lattice.entitlement_headers(uuid), lattice.require_ingest_entitlement(uuid),
    lattice.billing_summary(uuid), lattice.billing_invoices(uuid),
    lattice.billing_checkout_params(uuid, text), lattice.outbound_answer(bigint),
    lattice.outbox_enqueue_stripe(text, text, text, jsonb, text, jsonb),
    lattice.billing_webhook_rate(text), lattice.billing_setting(text), lattice.billing_public_origin()
    TO lattice_app;
GRANT EXECUTE ON FUNCTION lattice.webhook_secret_add(text, timestamptz),
                          lattice.webhook_secret_retire(bigint),
                          lattice.billing_set_price(text, text)
    TO lattice_admin;
-- Billing routes (docs/http-contract.md, "Billing routes").  Each is one
-- lattice_http function; the answers of the actions that call Stripe and of
-- Stripe's webhook are the lattice.* functions beside them, and the rules
-- they apply live in 80_billing.sql.  The routes that call Stripe answer
-- 202 + Lattice-Outbox-Job, and the shim (route flag `outbound`) runs the
-- job after COMMIT and answers with its result.

-- GET /api/v1/billing
CREATE FUNCTION lattice_http.billing_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
BEGIN
    RETURN lattice.http_json(200, lattice.billing_summary(account), lattice.entitlement_headers(account));
END
$$;

-- GET /api/v1/billing/invoices
CREATE FUNCTION lattice_http.billing_invoices(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
BEGIN
    RETURN lattice.http_json(200, lattice.billing_invoices(account), lattice.entitlement_headers(account));
END
$$;

-- The body of a billing action: absent, or a JSON object with only the
-- members named in allowed (400 invalid_json / unknown_field otherwise), so a
-- malformed request never reaches Stripe.
CREATE FUNCTION lattice.billing_body(body text, allowed text[] DEFAULT '{}')
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    extra text;
BEGIN
    SELECT k INTO extra FROM jsonb_object_keys(b) k WHERE k <> ALL (allowed) LIMIT 1;
    IF extra IS NOT NULL THEN
        PERFORM lattice.raise_http(400, 'unknown_field', 'the body has a member this action does not take',
                                   jsonb_build_array(jsonb_build_object('path', extra, 'message', 'unknown field')));
    END IF;
    RETURN b;
END
$$;

-- POST /billing/checkout: creates (or reuses) the customer, then a Checkout
-- Session; answers {url} once the shim has run the job chain.
CREATE FUNCTION lattice.billing_checkout(req jsonb) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

-- POST /api/v1/billing/checkout -> {url} of a Stripe Checkout Session
CREATE FUNCTION lattice_http.billing_checkout(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb;
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    b := lattice.billing_body(body, ARRAY['plan']);
    -- an account subscribes to its own plan: a named plan must be that one
    IF b ? 'plan' AND (jsonb_typeof(b -> 'plan') <> 'string' OR NOT EXISTS (
           SELECT FROM lattice.users u WHERE u.id = lattice.current_user_id() AND u.plan_id = b ->> 'plan')) THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'plan must name the account''s plan',
                                   '[{"path": "plan", "message": "unknown plan"}]');
    END IF;
    RETURN lattice.billing_checkout(req);
END
$$;

-- POST /billing/portal: a billing-portal session for the account's customer.
CREATE FUNCTION lattice.billing_portal(req jsonb) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    customer text;
    job bigint;
BEGIN
    SELECT bc.stripe_customer_id INTO customer FROM lattice.billing_customers bc WHERE bc.user_id = account;
    IF customer IS NULL THEN
        PERFORM lattice.raise_http(409, 'no_customer', 'start a subscription with checkout first');
    END IF;
    job := lattice.outbox_enqueue_stripe('portal.session', 'POST', '/v1/billing_portal/sessions',
        pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_array('customer', customer),
            pg_catalog.jsonb_build_array('return_url', lattice.billing_public_origin() || '/dashboard/billing')),
        'lattice-portal-' || pg_catalog.gen_random_uuid()::text);
    PERFORM lattice.audit('billing.portal_opened', NULL, pg_catalog.jsonb_build_object('job', job), req, account);
    RETURN lattice.outbound_answer(job);
END
$$;

-- POST /api/v1/billing/portal -> {url} of a billing-portal session
CREATE FUNCTION lattice_http.billing_portal(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_portal(req);
END
$$;

-- POST /billing/cancel (at period end) and /billing/resume.
CREATE FUNCTION lattice.billing_set_cancel(req jsonb, cancel boolean) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    s record;
    job bigint;
BEGIN
    SELECT x.* INTO s FROM lattice.subscriptions x WHERE x.user_id = account;
    IF s IS NULL OR s.stripe_subscription_id IS NULL
       OR s.status NOT IN ('trialing', 'active', 'past_due', 'unpaid', 'paused') THEN
        PERFORM lattice.raise_http(409, 'no_subscription', 'the account has no subscription to change');
    END IF;
    IF s.cancel_at_period_end = cancel THEN
        RETURN lattice.http_json(200, lattice.billing_summary(account));
    END IF;
    job := lattice.outbox_enqueue_stripe(CASE WHEN cancel THEN 'subscription.cancel' ELSE 'subscription.resume' END,
        'POST', '/v1/subscriptions/' || s.stripe_subscription_id,
        pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array('cancel_at_period_end', cancel::text)),
        'lattice-' || CASE WHEN cancel THEN 'cancel-' ELSE 'resume-' END || pg_catalog.gen_random_uuid()::text);
    PERFORM lattice.audit(CASE WHEN cancel THEN 'billing.cancel_requested' ELSE 'billing.resume_requested' END,
                          s.stripe_subscription_id, pg_catalog.jsonb_build_object('job', job), req, account);
    RETURN lattice.outbound_answer(job);
END
$$;

-- POST /api/v1/billing/cancel: cancel at the end of the period
CREATE FUNCTION lattice_http.billing_cancel(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_set_cancel(req, true);
END
$$;

-- POST /api/v1/billing/resume: undo a pending cancellation
CREATE FUNCTION lattice_http.billing_resume(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_set_cancel(req, false);
END
$$;

-- The webhook: size, signature, then store-once and apply.  SECURITY
-- DEFINER because an event names its account only inside the payload; the
-- signature check comes first, so only Stripe can make it act.
CREATE FUNCTION lattice.stripe_webhook_receive(signature text, body text, req jsonb)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secrets text[];
    verdict text;
    ev jsonb;
    inserted integer;
    outcome text;
BEGIN
    IF body IS NULL OR body = '' THEN
        RETURN lattice.http_error(400, 'invalid_input', 'the webhook body is empty');
    END IF;
    IF pg_catalog.octet_length(body) > lattice.billing_setting('webhook_max_bytes') THEN
        RETURN lattice.http_error(413, 'too_large', 'the webhook body is too large',
                                  pg_catalog.jsonb_build_object('max_bytes', lattice.billing_setting('webhook_max_bytes')));
    END IF;

    SELECT pg_catalog.array_agg(w.secret ORDER BY w.id DESC) INTO secrets
      FROM (SELECT x.id, x.secret FROM lattice.webhook_secrets x
             WHERE x.expires_at IS NULL OR x.expires_at > pg_catalog.now()
             ORDER BY x.id DESC LIMIT 8) w;
    verdict := lattice.stripe_signature_verdict(signature, body, secrets,
                                                lattice.billing_setting('webhook_tolerance'),
                                                pg_catalog.statement_timestamp());
    IF verdict = 'no_secret' THEN
        RETURN lattice.http_error(503, 'billing_not_configured', 'no webhook secret is configured');
    ELSIF verdict <> 'valid' THEN
        RETURN lattice.http_error(400, 'invalid_signature', 'the Stripe-Signature header does not verify',
                                  pg_catalog.jsonb_build_object('reason', verdict));
    END IF;

    BEGIN
        ev := body::jsonb;
    EXCEPTION WHEN invalid_text_representation OR program_limit_exceeded THEN
        RETURN lattice.http_error(400, 'invalid_json', 'the webhook body is not JSON');
    END;
    IF pg_catalog.jsonb_typeof(ev) <> 'object' OR pg_catalog.jsonb_typeof(ev -> 'id') <> 'string'
       OR pg_catalog.jsonb_typeof(ev -> 'type') <> 'string' OR pg_catalog.jsonb_typeof(ev -> 'created') <> 'number'
       OR pg_catalog.length(ev ->> 'id') > 255 OR pg_catalog.length(ev ->> 'type') > 255 THEN
        RETURN lattice.http_error(400, 'invalid_event', 'the event needs a string id and type and a numeric created');
    END IF;

    INSERT INTO lattice.stripe_events (id, type, created, livemode, payload)
    VALUES (ev ->> 'id', ev ->> 'type', lattice.stripe_time(ev -> 'created'),
            COALESCE((ev ->> 'livemode')::boolean, false), ev)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted = 0 THEN
        RETURN lattice.http_json(200, pg_catalog.jsonb_build_object('received', true, 'duplicate', true));
    END IF;

    outcome := lattice.stripe_apply_event(ev ->> 'id');
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object('received', true, 'outcome', outcome));
END
$$;

-- POST /api/v1/webhooks/stripe: no user; the signature is the credential,
-- and the client address is rate-limited.  Needs the route to pass the
-- `stripe-signature` header (req.headers).
CREATE FUNCTION lattice_http.stripe_webhook(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.billing_webhook_rate(req ->> 'client_addr');
    RETURN lattice.stripe_webhook_receive(req #>> '{headers,stripe-signature}', body, req);
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.billing_body(text, text[]),
    lattice.billing_checkout(jsonb), lattice.billing_portal(jsonb), lattice.billing_set_cancel(jsonb, boolean),
    lattice.stripe_webhook_receive(text, text, jsonb)
    TO lattice_app;
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
-- Alerts (docs/alerts.md): per-account rules, channels (e-mail, signed
-- webhook, Slack), incidents opened and resolved by a tick the background
-- worker runs, and deliveries through the outbox.
--
-- The tick never scans every service: each rule reads an index range that
-- holds only what moved recently -- services whose last report fell out of
-- the liveness window since the last tick (services.last_seen), the buckets
-- of the longest window an account set (route_stats.bucket,
-- edge_stats.bucket; 10 minutes by default), topology events
-- after a cursor (graph_events.id, service_changes.id), this hour's refused
-- ingest (usage_hourly, partial index) -- and then the open incidents, one
-- small look-up each.
--
-- Functions that read tenant tables with parameters are PL/pgSQL: Citus
-- plans their statements with the values, not SQL functions' parameters.

-- Settings ---------------------------------------------------------------------

CREATE FUNCTION lattice.alert_defaults() RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT '{"cooldown_minutes": 30, "recover_after_minutes": 5,
             "rules": {
               "service_down":   {"enabled": true},
               "error_rate":     {"enabled": true, "window_minutes": 10, "threshold_percent": 5,
                                  "clear_percent": 2.5, "min_requests": 20},
               "latency":        {"enabled": true, "window_minutes": 10, "p95_ms": 1000,
                                  "week_factor": 3, "min_requests": 20},
               "topology":       {"enabled": true, "new_caller": true, "new_external_caller": true,
                                  "dependency_removed": true, "new_cycle": true},
               "ingest_refused": {"enabled": true}}}'::jsonb
$$;

-- What each field may hold: [type, min, max] (booleans: ["boolean"]).
CREATE FUNCTION lattice.alert_fields() RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT '{"cooldown_minutes": ["integer", 0, 1440], "recover_after_minutes": ["integer", 0, 1440],
             "service_down":   {"enabled": ["boolean"]},
             "error_rate":     {"enabled": ["boolean"], "window_minutes": ["integer", 5, 60],
                                "threshold_percent": ["number", 0.1, 100], "clear_percent": ["number", 0, 100],
                                "min_requests": ["integer", 1, 1000000]},
             "latency":        {"enabled": ["boolean"], "window_minutes": ["integer", 5, 60],
                                "p95_ms": ["number", 1, 600000], "week_factor": ["number", 0, 100],
                                "min_requests": ["integer", 1, 1000000]},
             "topology":       {"enabled": ["boolean"], "new_caller": ["boolean"], "new_external_caller": ["boolean"],
                                "dependency_removed": ["boolean"], "new_cycle": ["boolean"]},
             "ingest_refused": {"enabled": ["boolean"]}}'::jsonb
$$;

-- The account's settings as stored (only what it changed); defaults apply
-- to the rest, so a rule field added later has its default everywhere.
CREATE TABLE lattice.alert_settings (
    user_id     uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    config      jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- A configuration overlaid with a change, rule by rule and field by field:
-- the defaults with what an account stored, or what it stored with a request.
CREATE FUNCTION lattice.alert_merge(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT (base - 'rules') || (COALESCE(patch, '{}') - 'rules')
           || pg_catalog.jsonb_build_object('rules', COALESCE((
                  SELECT pg_catalog.jsonb_object_agg(k.rule, COALESCE(base #> ARRAY['rules', k.rule], '{}')
                                                             || COALESCE(patch #> ARRAY['rules', k.rule], '{}'))
                    FROM (SELECT pg_catalog.jsonb_object_keys(COALESCE(base -> 'rules', '{}'))
                          UNION SELECT pg_catalog.jsonb_object_keys(COALESCE(patch -> 'rules', '{}'))) AS k(rule)),
                  '{}'))
$$;

CREATE FUNCTION lattice.alert_config(config jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT lattice.alert_merge(lattice.alert_defaults(), config) $$;

-- Raises 400 invalid_rules (details.path) unless patch is a valid change.
CREATE FUNCTION lattice.alert_validate(patch jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    spec jsonb := lattice.alert_fields();
    top record;
    r record;
    f record;
    s jsonb;
    path text;
BEGIN
    IF jsonb_typeof(patch) IS DISTINCT FROM 'object' THEN
        PERFORM lattice.raise_http(400, 'invalid_rules', 'the body must be a JSON object', jsonb_build_object('path', ''));
    END IF;
    FOR top IN SELECT * FROM jsonb_each(patch) LOOP
        IF top.key = 'rules' THEN
            IF jsonb_typeof(top.value) <> 'object' THEN
                PERFORM lattice.raise_http(400, 'invalid_rules', 'rules must be an object', jsonb_build_object('path', 'rules'));
            END IF;
            FOR r IN SELECT * FROM jsonb_each(top.value) LOOP
                IF jsonb_typeof(spec -> r.key) IS DISTINCT FROM 'object' THEN
                    PERFORM lattice.raise_http(400, 'invalid_rules', format('unknown rule "%s"', left(r.key, 64)),
                                               jsonb_build_object('path', 'rules.' || left(r.key, 64)));
                END IF;
                IF jsonb_typeof(r.value) <> 'object' THEN
                    PERFORM lattice.raise_http(400, 'invalid_rules', 'a rule must be an object',
                                               jsonb_build_object('path', 'rules.' || r.key));
                END IF;
                FOR f IN SELECT * FROM jsonb_each(r.value) LOOP
                    path := 'rules.' || r.key || '.' || left(f.key, 64);
                    s := spec -> r.key -> f.key;
                    IF s IS NULL THEN
                        PERFORM lattice.raise_http(400, 'invalid_rules', format('unknown field "%s"', left(f.key, 64)),
                                                   jsonb_build_object('path', path));
                    END IF;
                    PERFORM lattice.alert_validate_value(f.value, s, path);
                END LOOP;
            END LOOP;
        ELSIF jsonb_typeof(spec -> top.key) = 'array' THEN
            PERFORM lattice.alert_validate_value(top.value, spec -> top.key, top.key);
        ELSE
            PERFORM lattice.raise_http(400, 'invalid_rules', format('unknown field "%s"', left(top.key, 64)),
                                       jsonb_build_object('path', left(top.key, 64)));
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION lattice.alert_validate_value(v jsonb, spec jsonb, path text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF spec ->> 0 = 'boolean' THEN
        IF jsonb_typeof(v) <> 'boolean' THEN
            PERFORM lattice.raise_http(400, 'invalid_rules', path || ' must be true or false', jsonb_build_object('path', path));
        END IF;
        RETURN;
    END IF;
    IF jsonb_typeof(v) <> 'number' OR (spec ->> 0 = 'integer' AND v::numeric <> trunc(v::numeric))
       OR v::numeric < (spec ->> 1)::numeric OR v::numeric > (spec ->> 2)::numeric THEN
        PERFORM lattice.raise_http(400, 'invalid_rules',
            format('%s must be %s from %s to %s', path, CASE WHEN spec ->> 0 = 'integer' THEN 'an integer' ELSE 'a number' END,
                   spec ->> 1, spec ->> 2),
            jsonb_build_object('path', path));
    END IF;
END
$$;

-- Channels -----------------------------------------------------------------------

-- target: the e-mail address or the URL.  A webhook's signing secret is
-- sealed (src/alert_webhook.c); an e-mail channel sends nothing until its
-- address is verified (verified_at).
CREATE TABLE lattice.alert_channels (
    id              uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('email', 'webhook', 'slack')),
    name            text NOT NULL CHECK (pg_catalog.length(name) BETWEEN 1 AND 100),
    target          text NOT NULL CHECK (pg_catalog.length(target) BETWEEN 3 AND 2048),
    secret_sealed   bytea,
    enabled         boolean NOT NULL DEFAULT true,
    verified_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (user_id, id),
    CHECK ((kind = 'webhook') = (secret_sealed IS NOT NULL))
);

CREATE FUNCTION lattice.alert_webhook_headers(job bigint, account uuid, channel uuid, body text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_alert_webhook_headers' LANGUAGE C STABLE;
CREATE FUNCTION lattice.outbound_url_check(url text) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_outbound_url_check' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION lattice.webhook_secret_new(OUT secret text, OUT sealed bytea)
    AS 'MODULE_PATHNAME', 'lattice_webhook_secret_new' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Incidents -----------------------------------------------------------------------

-- One per rule and subject while open (the unique index).  subject_key
-- names the subject (a service id, route, edge, package, ...); notified says
-- whether its opening was sent (a cooled-down or muted one is not, and
-- neither is its resolution); clear_since starts the hysteresis.
CREATE TABLE lattice.alert_incidents (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    user_id         uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    rule            text NOT NULL,
    subject_key     text NOT NULL,
    subject         jsonb NOT NULL,
    service_id      uuid,
    status          text NOT NULL CHECK (status IN ('open', 'resolved')),
    summary         text NOT NULL,
    value           jsonb NOT NULL DEFAULT '{}',
    opened_at       timestamptz NOT NULL,
    resolved_at     timestamptz,
    clear_since     timestamptz,
    notified        boolean NOT NULL,
    acknowledged_at timestamptz,
    PRIMARY KEY (user_id, id)
);
CREATE UNIQUE INDEX ON lattice.alert_incidents (user_id, rule, subject_key) WHERE status = 'open';
CREATE INDEX ON lattice.alert_incidents (status) WHERE status = 'open';
CREATE INDEX ON lattice.alert_incidents (user_id, rule, subject_key, opened_at);
CREATE INDEX ON lattice.alert_incidents (user_id, service_id, id);

-- A rule and subject silenced until a time.
CREATE TABLE lattice.alert_mutes (
    user_id         uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    rule            text NOT NULL,
    subject_key     text NOT NULL,
    until           timestamptz NOT NULL,
    PRIMARY KEY (user_id, rule, subject_key)
);

-- The tick's own state: when it last ran and how far it read the topology
-- events.  The owner's, on the coordinator; no user_id, not a tenant table.
CREATE TABLE lattice.alert_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_tick_at    timestamptz,
    graph_event_id  bigint,
    service_change_id bigint
);
REVOKE ALL ON lattice.alert_state FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.alert_state', '');

-- The index ranges the tick reads.
CREATE INDEX ON lattice.services (last_seen) WHERE NOT is_external;
CREATE INDEX ON lattice.graph_events (id);
CREATE INDEX ON lattice.service_changes (id);
CREATE INDEX ON lattice.usage_hourly (hour) WHERE refused > 0 AND class = 'ingest';

-- Delivery -------------------------------------------------------------------------

-- The JSON an incident is shown as, in the API and in webhooks.
CREATE FUNCTION lattice.alert_incident_json(i lattice.alert_incidents, muted_until timestamptz DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'id', i.id, 'rule', i.rule, 'status', i.status, 'subject', i.subject, 'summary', i.summary,
        'value', i.value, 'opened_at', i.opened_at, 'resolved_at', i.resolved_at,
        'acknowledged_at', i.acknowledged_at, 'muted_until', muted_until, 'notified', i.notified)
$$;

-- Queues one message about an incident (event 'opened', 'resolved' or
-- 'test') to one channel; returns the outbox job.  interactive: the
-- request performs it right after its COMMIT (the "send test" button).
CREATE FUNCTION lattice.alert_enqueue(c lattice.alert_channels, event text, incident jsonb,
                                      interactive boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := lattice.clock_now();
    title text;
    body text;
    job bigint;
    ctx jsonb := jsonb_build_object('channel', c.id, 'event', event, 'incident', incident -> 'id');
BEGIN
    title := CASE event WHEN 'opened' THEN '[Lattice] ' || (incident ->> 'summary')
                        WHEN 'resolved' THEN '[Lattice] Resolved: ' || (incident ->> 'summary')
                        ELSE '[Lattice] Test alert' END;
    IF c.kind = 'email' THEN
        job := lattice.outbox_email(c.user_id, 'alert', jsonb_build_object(
                   'subject', title,
                   'summary', CASE event WHEN 'test' THEN 'This is a test alert from Lattice: this channel works.'
                                         WHEN 'resolved' THEN 'Resolved: ' || (incident ->> 'summary')
                                         ELSE incident ->> 'summary' END,
                   'detail', CASE WHEN event = 'test' THEN '' ELSE
                                  'Opened ' || lattice.email_date((incident ->> 'opened_at')::timestamptz)
                                  || to_char((incident ->> 'opened_at')::timestamptz AT TIME ZONE 'UTC', ' HH24:MI "UTC"')
                                  || COALESCE(', resolved ' || to_char((incident ->> 'resolved_at')::timestamptz AT TIME ZONE 'UTC',
                                                                       'YYYY-MM-DD HH24:MI "UTC"'), '') || '.' END),
                   c.target);
        UPDATE lattice.outbox o SET context = o.context || ctx, interactive = alert_enqueue.interactive,
               max_attempts = CASE WHEN alert_enqueue.interactive THEN 1 ELSE 8 END,
               purpose = CASE WHEN alert_enqueue.interactive THEN 'alert.test' ELSE 'alert.' || event END
         WHERE o.id = job;
        RETURN job;
    END IF;
    IF c.kind = 'slack' THEN
        body := jsonb_build_object(
            'text', title,
            'blocks', jsonb_build_array(jsonb_build_object('type', 'section', 'text', jsonb_build_object(
                'type', 'mrkdwn',
                'text', CASE event WHEN 'opened' THEN ':red_circle: *' WHEN 'resolved' THEN ':large_green_circle: *Resolved:* *'
                                   ELSE ':white_check_mark: *' END
                        || replace(replace(replace(COALESCE(incident ->> 'summary', 'Test alert from Lattice: this channel works.'),
                                                   '&', '&amp;'), '<', '&lt;'), '>', '&gt;') || '*'))))::text;
    ELSE
        body := jsonb_build_object(
            'id', 'evt_' || COALESCE(incident ->> 'id', 'test') || '_' || event || CASE WHEN event = 'test' THEN '_' || (extract(epoch FROM at) * 1000)::bigint ELSE '' END,
            'type', CASE event WHEN 'test' THEN 'test' ELSE 'incident.' || event END,
            'created', extract(epoch FROM at)::bigint,
            'incident', incident)::text;
    END IF;
    INSERT INTO lattice.outbox (account_id, kind, purpose, interactive, url, body, context, max_attempts)
    VALUES (c.user_id, 'webhook', CASE WHEN interactive THEN 'alert.test' ELSE 'alert.' || event END,
            interactive, c.target, body, ctx, CASE WHEN interactive THEN 1 ELSE 8 END)
    RETURNING id INTO job;
    RETURN job;
END
$$;

-- Sends an incident's opening or resolution to every usable channel.
CREATE FUNCTION lattice.alert_notify(i lattice.alert_incidents, event text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c lattice.alert_channels;
    n integer := 0;
    doc jsonb := lattice.alert_incident_json(i);
BEGIN
    FOR c IN SELECT * FROM lattice.alert_channels x
              WHERE x.user_id = i.user_id AND x.enabled AND x.verified_at IS NOT NULL ORDER BY x.created_at LOOP
        PERFORM lattice.alert_enqueue(c, event, doc);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Evaluation -----------------------------------------------------------------------

-- The account's configuration, as the tick reads it.
CREATE FUNCTION lattice.alert_config_of(account uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT lattice.alert_config((SELECT s.config FROM lattice.alert_settings s WHERE s.user_id = account)));
END
$$;

-- Request volume, 5xx and p95 of a service, route or edge over a window
-- ending at `at` (every bucket that overlaps it).  kind: service, route, edge.
CREATE FUNCTION lattice.alert_traffic(kind text, account uuid, a uuid, b uuid, method text, path text,
                                      from_at timestamptz, to_at timestamptz,
                                      OUT requests bigint, OUT errors bigint, OUT p95 double precision)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lo timestamptz := from_at - lattice.ingest_bucket_width();
    h bigint[];
BEGIN
    IF kind = 'edge' THEN
        SELECT COALESCE(sum(e.call_count), 0), COALESCE(sum(e.error_count), 0), lattice.hist_sum(e.latency_hist)
          INTO requests, errors, h
          FROM lattice.edge_stats e
         WHERE e.user_id = account AND e.source_service_id = a AND e.target_service_id = b
           AND e.bucket > lo AND e.bucket <= to_at;
    ELSE
        SELECT COALESCE(sum(r.request_count), 0), COALESCE(sum(r.error_count), 0), lattice.hist_sum(r.latency_hist)
          INTO requests, errors, h
          FROM lattice.route_stats r
         WHERE r.user_id = account AND r.service_id = a AND r.bucket > lo AND r.bucket <= to_at
           AND (kind = 'service' OR (r.method = alert_traffic.method AND r.path = alert_traffic.path));
    END IF;
    p95 := CASE WHEN h IS NULL THEN NULL ELSE lattice.hist_percentile(h, 0.95) END;
END
$$;

-- Whether an open incident's condition still holds at `at`, and its figures
-- now: {"firing": bool, "value": {...}}.  Error and latency rules clear at
-- a lower level than they fire (hysteresis).
CREATE FUNCTION lattice.alert_recheck(i lattice.alert_incidents, cfg jsonb, at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r jsonb := cfg -> 'rules' -> i.rule;
    t record;
    win interval;
    n bigint;
    e jsonb;
BEGIN
    IF NOT COALESCE((r ->> 'enabled')::boolean, false) THEN
        RETURN jsonb_build_object('firing', false, 'value', i.value);
    END IF;
    CASE i.rule
    WHEN 'service_down' THEN
        RETURN jsonb_build_object('firing', COALESCE((SELECT s.last_seen < at - lattice.ingest_setting('inactive_after')
                                                        FROM lattice.services s
                                                       WHERE s.user_id = i.user_id AND s.id = i.service_id), false),
                                  'value', i.value);
    WHEN 'error_rate', 'latency' THEN
        win := make_interval(mins => (r ->> 'window_minutes')::integer);
        t := lattice.alert_traffic(i.subject ->> 'type', i.user_id,
                                   COALESCE((i.subject ->> 'service_id')::uuid, (i.subject ->> 'source_id')::uuid),
                                   (i.subject ->> 'target_id')::uuid, i.subject ->> 'method', i.subject ->> 'path',
                                   at - win, at);
        IF i.rule = 'error_rate' THEN
            RETURN jsonb_build_object(
                'firing', t.requests >= (r ->> 'min_requests')::bigint
                          AND t.errors * 100.0 / t.requests >= (r ->> 'clear_percent')::numeric,
                'value', jsonb_build_object('requests', t.requests, 'errors', t.errors,
                                            'percent', round(t.errors * 100.0 / NULLIF(t.requests, 0), 2)));
        END IF;
        RETURN jsonb_build_object(
            'firing', t.requests >= (r ->> 'min_requests')::bigint
                      AND t.p95 >= 0.8 * (i.value ->> 'fired_at_ms')::double precision,
            'value', i.value || jsonb_build_object('requests', t.requests, 'p95_ms', round(t.p95::numeric, 1)));
    WHEN 'ingest_refused' THEN
        IF i.subject ->> 'type' = 'entitlement' THEN
            e := lattice.entitlement(i.user_id);
            RETURN jsonb_build_object('firing', NOT COALESCE((e ->> 'may_ingest')::boolean, false), 'value', i.value);
        END IF;
        SELECT COALESCE(sum(u.refused), 0) INTO n FROM lattice.usage_hourly u
         WHERE u.user_id = i.user_id AND u.class = 'ingest' AND u.subject = i.subject ->> 'service'
           AND u.hour >= date_trunc('hour', at) - interval '1 hour';
        RETURN jsonb_build_object('firing', n > COALESCE((i.value ->> 'refused')::bigint, 0),
                                  'value', jsonb_build_object('refused', n));
    ELSE
        RETURN jsonb_build_object('firing', false, 'value', i.value);
    END CASE;
END
$$;

-- A subject that fires, as the candidate queries below return it.
CREATE TYPE lattice.alert_candidate AS (
    user_id     uuid,
    rule        text,
    key         text,
    subject     jsonb,
    service     uuid,
    summary     text,
    value       jsonb,
    event       boolean
);

-- Services whose last report fell out of the liveness window in (since, at].
CREATE FUNCTION lattice.alert_candidates_down(at timestamptz, since timestamptz)
RETURNS SETOF lattice.alert_candidate
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT s.user_id, 'service_down', s.id::text,
           pg_catalog.jsonb_build_object('type', 'service', 'service_id', s.id, 'service', s.name,
                                         'environment', s.environment),
           s.id, pg_catalog.format('%s (%s) stopped reporting', s.name, s.environment),
           pg_catalog.jsonb_build_object('last_seen', s.last_seen), false
      FROM lattice.services s
     WHERE NOT s.is_external
       AND s.last_seen < at - lattice.ingest_setting('inactive_after')
       AND s.last_seen >= since - lattice.ingest_setting('inactive_after');
END
$$;

-- The longest window any account gives a rule: the traffic rules read the
-- buckets of that span only (10 minutes unless an account asked for more).
CREATE FUNCTION lattice.alert_max_window(rule text) RETURNS interval
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT pg_catalog.make_interval(mins => GREATEST(
        (lattice.alert_defaults() #>> ARRAY['rules', rule, 'window_minutes'])::integer,
        (SELECT pg_catalog.max((s.config #>> ARRAY['rules', rule, 'window_minutes'])::integer)
           FROM lattice.alert_settings s))));
END
$$;

-- Traffic in (lo, hi]: per service and route (route_stats) and per edge
-- (edge_stats), bucket by bucket, with the account's configuration of one
-- rule -- computed once per account, not per row.  key names the route or
-- edge in one hashable value.
CREATE FUNCTION lattice.alert_recent_traffic(rule text, lo timestamptz, hi timestamptz)
RETURNS TABLE (user_id uuid, kind text, key text, a uuid, b uuid, method text, path text, bucket timestamptz,
               requests bigint, errors bigint, hist bigint[], r jsonb)
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH t AS MATERIALIZED (
        SELECT x.user_id, 'route' AS kind, x.service_id || ' ' || x.method || ' ' || x.path AS key,
               x.service_id AS a, NULL::uuid AS b, x.method, x.path, x.bucket,
               x.request_count AS requests, x.error_count AS errors, x.latency_hist AS hist
          FROM lattice.route_stats x
         WHERE x.bucket > lo AND x.bucket <= hi
        UNION ALL
        SELECT e.user_id, 'edge', e.source_service_id || '>' || e.target_service_id,
               e.source_service_id, e.target_service_id, NULL, NULL, e.bucket,
               e.call_count, e.error_count, e.latency_hist
          FROM lattice.edge_stats e
         WHERE e.bucket > lo AND e.bucket <= hi
    ), changed AS MATERIALIZED (
        -- the accounts that changed a setting (few): read whole, joined here
        SELECT st.user_id, st.config FROM lattice.alert_settings st
    ), cfg AS MATERIALIZED (
        SELECT u.user_id, lattice.alert_config(changed.config) -> 'rules' -> rule AS r
          FROM (SELECT DISTINCT t.user_id FROM t) u
          LEFT JOIN changed ON changed.user_id = u.user_id
    )
    SELECT t.*, cfg.r FROM t JOIN cfg ON cfg.user_id = t.user_id
     WHERE (cfg.r ->> 'enabled')::boolean;
END
$$;

-- A service's name, or NULL when it is gone.  (Each look-up is one
-- account's: on Citus one shard.)
CREATE FUNCTION lattice.alert_service_name(account uuid, service uuid) RETURNS text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    n text;
BEGIN
    SELECT s.name INTO n FROM lattice.services s WHERE s.user_id = account AND s.id = service;
    RETURN n;
END
$$;

-- Services and edges whose 5xx share over their window reached the
-- threshold, with enough requests.
CREATE FUNCTION lattice.alert_candidates_errors(at timestamptz)
RETURNS SETOF lattice.alert_candidate
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
    w record;
    sa text;
    sb text;
BEGIN
    FOR w IN
        SELECT t.user_id, t.kind = 'edge' AS edge, t.a, t.b, t.r,
               pg_catalog.sum(t.requests) AS requests, pg_catalog.sum(t.errors) AS errors
          FROM lattice.alert_recent_traffic('error_rate', at - lattice.alert_max_window('error_rate')
                                                          - lattice.ingest_bucket_width(), at) t
         WHERE t.bucket > at - pg_catalog.make_interval(mins => (t.r ->> 'window_minutes')::integer)
                            - lattice.ingest_bucket_width()
         GROUP BY t.user_id, t.kind = 'edge', t.a, t.b, t.r
        HAVING pg_catalog.sum(t.requests) >= (t.r ->> 'min_requests')::bigint
           AND pg_catalog.sum(t.errors) * 100.0 / pg_catalog.sum(t.requests) >= (t.r ->> 'threshold_percent')::numeric
    LOOP
        sa := lattice.alert_service_name(w.user_id, w.a);
        sb := CASE WHEN w.edge THEN lattice.alert_service_name(w.user_id, w.b) END;
        CONTINUE WHEN sa IS NULL OR (w.edge AND sb IS NULL);
        RETURN NEXT ROW(w.user_id, 'error_rate',
            CASE WHEN w.edge THEN w.a || '>' || w.b ELSE w.a::text END,
            CASE WHEN w.edge
                 THEN pg_catalog.jsonb_build_object('type', 'edge', 'source_id', w.a, 'source', sa,
                                                    'target_id', w.b, 'target', sb)
                 ELSE pg_catalog.jsonb_build_object('type', 'service', 'service_id', w.a, 'service', sa) END,
            COALESCE(w.b, w.a),
            pg_catalog.format('%s: %s%% of %s requests failed in the last %s minutes',
                              CASE WHEN w.edge THEN sa || ' → ' || sb ELSE sa END,
                              pg_catalog.round(w.errors * 100.0 / w.requests, 1), w.requests, w.r ->> 'window_minutes'),
            pg_catalog.jsonb_build_object('requests', w.requests, 'errors', w.errors,
                                          'percent', pg_catalog.round(w.errors * 100.0 / w.requests, 2)),
            false)::lattice.alert_candidate;
    END LOOP;
END
$$;

-- Routes and edges whose p95 over their window is above the threshold, or
-- above week_factor times their p95 in the same window a week before.
CREATE FUNCTION lattice.alert_candidates_latency(at timestamptz)
RETURNS SETOF lattice.alert_candidate
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
    f record;
    sa text;
    sb text;
BEGIN
    FOR f IN
        WITH w AS MATERIALIZED (
            SELECT t.user_id, t.kind, t.key, t.a, t.b, t.method, t.path, t.r,
                   pg_catalog.sum(t.requests) AS requests,
                   lattice.hist_percentile(lattice.hist_sum(t.hist), 0.95) AS p95
              FROM lattice.alert_recent_traffic('latency', at - lattice.alert_max_window('latency')
                                                           - lattice.ingest_bucket_width(), at) t
             WHERE t.bucket > at - pg_catalog.make_interval(mins => (t.r ->> 'window_minutes')::integer)
                                - lattice.ingest_bucket_width()
             GROUP BY t.user_id, t.kind, t.key, t.a, t.b, t.method, t.path, t.r
            HAVING pg_catalog.sum(t.requests) >= (t.r ->> 'min_requests')::bigint
        ), prev AS MATERIALIZED (
            -- the same window a week before, summed per route and edge
            SELECT p.user_id, p.key, pg_catalog.sum(p.requests) AS requests,
                   lattice.hist_percentile(lattice.hist_sum(p.hist), 0.95) AS p95
              FROM lattice.alert_recent_traffic('latency', at - interval '7 days' - lattice.alert_max_window('latency')
                                                           - lattice.ingest_bucket_width(), at - interval '7 days') p
             WHERE (p.r ->> 'week_factor')::numeric > 0
               AND p.bucket > at - interval '7 days' - pg_catalog.make_interval(mins => (p.r ->> 'window_minutes')::integer)
                              - lattice.ingest_bucket_width()
             GROUP BY p.user_id, p.key, p.r
            HAVING pg_catalog.sum(p.requests) >= (p.r ->> 'min_requests')::bigint
        )
        SELECT w.*, prev.p95 AS week_p95,
               CASE WHEN w.p95 >= (w.r ->> 'p95_ms')::numeric THEN (w.r ->> 'p95_ms')::double precision
                    ELSE (w.r ->> 'week_factor')::double precision * prev.p95 END AS fired_at_ms
          FROM w LEFT JOIN prev ON prev.user_id = w.user_id AND prev.key = w.key
         WHERE w.p95 >= (w.r ->> 'p95_ms')::numeric
            OR ((w.r ->> 'week_factor')::numeric > 0 AND prev.p95 > 0
                AND w.p95 >= (w.r ->> 'week_factor')::numeric * prev.p95)
    LOOP
        sa := lattice.alert_service_name(f.user_id, f.a);
        sb := CASE WHEN f.kind = 'edge' THEN lattice.alert_service_name(f.user_id, f.b) END;
        CONTINUE WHEN sa IS NULL OR (f.kind = 'edge' AND sb IS NULL);
        RETURN NEXT ROW(f.user_id, 'latency',
            CASE WHEN f.kind = 'edge' THEN f.a || '>' || f.b ELSE f.a || ' ' || f.method || ' ' || f.path END,
            CASE WHEN f.kind = 'edge'
                 THEN pg_catalog.jsonb_build_object('type', 'edge', 'source_id', f.a, 'source', sa,
                                                    'target_id', f.b, 'target', sb)
                 ELSE pg_catalog.jsonb_build_object('type', 'route', 'service_id', f.a, 'service', sa,
                                                    'method', f.method, 'path', f.path) END,
            COALESCE(f.b, f.a),
            pg_catalog.format('%s: p95 %s ms over the last %s minutes (%s)',
                              CASE WHEN f.kind = 'edge' THEN sa || ' → ' || sb ELSE sa || ' ' || f.method || ' ' || f.path END,
                              pg_catalog.round(f.p95::numeric), f.r ->> 'window_minutes',
                              CASE WHEN f.p95 >= (f.r ->> 'p95_ms')::numeric THEN 'threshold ' || (f.r ->> 'p95_ms') || ' ms'
                                   ELSE pg_catalog.round((f.p95 / f.week_p95)::numeric, 1) || '× last week''s '
                                        || pg_catalog.round(f.week_p95::numeric) || ' ms' END),
            pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                'requests', f.requests, 'p95_ms', pg_catalog.round(f.p95::numeric, 1),
                'week_p95_ms', pg_catalog.round(f.week_p95::numeric, 1), 'fired_at_ms', f.fired_at_ms)),
            false)::lattice.alert_candidate;
    END LOOP;
END
$$;

-- Topology events with ids in (from_id, to_id]: a new caller of an
-- established service (seen for an hour), a new external caller, a new
-- cycle, a package dependency removed.  Events open and resolve at once.
-- Each event's checks are one account's statements (on Citus, one shard).
CREATE FUNCTION lattice.alert_candidates_topology(graph_from bigint, graph_to bigint,
                                                  change_from bigint, change_to bigint)
RETURNS SETOF lattice.alert_candidate
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    e record;
    r jsonb;
    change text;
    cycle boolean;
BEGIN
    FOR e IN SELECT g.user_id, g.at, g.source_service_id AS src, g.target_service_id AS dst,
                    sa.name AS src_name, sa.is_external AS src_external, sb.name AS dst_name, sb.first_seen AS dst_first
               FROM lattice.graph_events g
               JOIN lattice.services sa ON sa.user_id = g.user_id AND sa.id = g.source_service_id
               JOIN lattice.services sb ON sb.user_id = g.user_id AND sb.id = g.target_service_id
              WHERE g.id > graph_from AND g.id <= graph_to AND g.kind = 'edge_added'
              ORDER BY g.id LOOP
        r := lattice.alert_config_of(e.user_id) -> 'rules' -> 'topology';
        CONTINUE WHEN NOT (r ->> 'enabled')::boolean;
        change := CASE WHEN e.src_external THEN 'new_external_caller' ELSE 'new_caller' END;
        IF (r ->> change)::boolean AND e.dst_first < e.at - interval '1 hour' THEN
            RETURN NEXT ROW(e.user_id, 'topology', change || ':' || e.src || '>' || e.dst,
                jsonb_build_object('type', 'edge', 'source_id', e.src, 'source', e.src_name,
                                   'target_id', e.dst, 'target', e.dst_name),
                e.dst,
                format('%s has a new %scaller: %s', e.dst_name,
                       CASE WHEN e.src_external THEN 'external ' ELSE '' END, e.src_name),
                jsonb_build_object('change', change, 'at', e.at), true)::lattice.alert_candidate;
        END IF;
        IF (r ->> 'new_cycle')::boolean THEN
            WITH RECURSIVE reach(n) AS (
                SELECT k.target_service_id FROM lattice.connections k
                 WHERE k.user_id = e.user_id AND k.source_service_id = e.dst
                UNION
                SELECT k.target_service_id FROM reach
                  JOIN lattice.connections k ON k.user_id = e.user_id AND k.source_service_id = reach.n)
            SELECT EXISTS (SELECT FROM reach WHERE reach.n = e.src) INTO cycle;
            IF cycle THEN
                RETURN NEXT ROW(e.user_id, 'topology', 'new_cycle:' || e.src || '>' || e.dst,
                    jsonb_build_object('type', 'edge', 'source_id', e.src, 'source', e.src_name,
                                       'target_id', e.dst, 'target', e.dst_name),
                    e.dst, format('a new call %s → %s closes a cycle', e.src_name, e.dst_name),
                    jsonb_build_object('change', 'new_cycle', 'at', e.at), true)::lattice.alert_candidate;
            END IF;
        END IF;
    END LOOP;

    FOR e IN SELECT c.user_id, c.at, c.service_id, c.subject, c.old_value, s.name
               FROM lattice.service_changes c
               JOIN lattice.services s ON s.user_id = c.user_id AND s.id = c.service_id
              WHERE c.id > change_from AND c.id <= change_to AND c.kind = 'dependency_removed'
              ORDER BY c.id LOOP
        r := lattice.alert_config_of(e.user_id) -> 'rules' -> 'topology';
        CONTINUE WHEN NOT ((r ->> 'enabled')::boolean AND (r ->> 'dependency_removed')::boolean);
        RETURN NEXT ROW(e.user_id, 'topology', 'dependency_removed:' || e.service_id || ':' || e.subject,
            jsonb_build_object('type', 'package', 'service_id', e.service_id, 'service', e.name, 'package', e.subject),
            e.service_id, format('%s no longer depends on %s', e.name, e.subject),
            jsonb_build_object('change', 'dependency_removed', 'at', e.at, 'version', e.old_value),
            true)::lattice.alert_candidate;
    END LOOP;
END
$$;

-- Ingest refused: by quota (the usage roll-up's refused counts, per
-- service, more than the last incident of this hour saw) or by entitlement
-- (an account that may not ingest while its services reported in the last
-- day: what their plugins send is refused).
CREATE FUNCTION lattice.alert_candidates_ingest(at timestamptz, since timestamptz)
RETURNS SETOF lattice.alert_candidate
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    q record;
    seen bigint;
    e jsonb;
BEGIN
    FOR q IN SELECT u.user_id, u.subject, pg_catalog.sum(u.refused) AS refused
               FROM lattice.usage_hourly u
              WHERE u.class = 'ingest' AND u.refused > 0 AND u.hour >= pg_catalog.date_trunc('hour', at) - interval '1 hour'
              GROUP BY u.user_id, u.subject
             HAVING pg_catalog.max(u.updated_at) > since LOOP
        CONTINUE WHEN NOT (lattice.alert_config_of(q.user_id) #>> '{rules,ingest_refused,enabled}')::boolean;
        SELECT (x.value ->> 'refused')::bigint INTO seen FROM lattice.alert_incidents x
         WHERE x.user_id = q.user_id AND x.rule = 'ingest_refused' AND x.subject_key = 'quota:' || q.subject
           AND x.opened_at >= pg_catalog.date_trunc('hour', at) - interval '1 hour'
         ORDER BY x.opened_at DESC LIMIT 1;
        CONTINUE WHEN q.refused <= COALESCE(seen, 0);
        RETURN NEXT ROW(q.user_id, 'ingest_refused', 'quota:' || q.subject,
            jsonb_build_object('type', 'service', 'service', q.subject, 'cause', 'quota'), NULL::uuid,
            format('%s: %s ingest requests refused by the quota in the last hour; the plugin dropped that data',
                   q.subject, q.refused),
            jsonb_build_object('refused', q.refused), false)::lattice.alert_candidate;
    END LOOP;

    FOR q IN SELECT DISTINCT s.user_id FROM lattice.services s
              WHERE NOT s.is_external AND s.last_seen >= at - interval '1 day' LOOP
        CONTINUE WHEN EXISTS (SELECT FROM lattice.alert_incidents x
                               WHERE x.user_id = q.user_id AND x.rule = 'ingest_refused'
                                 AND x.subject_key = 'entitlement' AND x.status = 'open')
                   OR NOT (lattice.alert_config_of(q.user_id) #>> '{rules,ingest_refused,enabled}')::boolean;
        e := lattice.entitlement(q.user_id);
        CONTINUE WHEN COALESCE((e ->> 'may_ingest')::boolean, false);
        RETURN NEXT ROW(q.user_id, 'ingest_refused', 'entitlement',
            jsonb_build_object('type', 'account', 'cause', 'entitlement'), NULL::uuid,
            'ingest is refused: the account has no active subscription or trial, so the plugins drop their data',
            jsonb_build_object('status', e -> 'status'), false)::lattice.alert_candidate;
    END LOOP;
END
$$;

-- Opens an incident for a firing subject of an enabled rule without an open
-- one: silent when muted or within the cool-down after the last message about
-- the subject.  Events (topology) are resolved as they open.  Returns whether
-- it was notified; NULL when nothing opened (rule off, or an incident open).
CREATE FUNCTION lattice.alert_open(c lattice.alert_candidate, at timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg jsonb := lattice.alert_config_of(c.user_id);
    muted boolean;
    last_notified timestamptz;
    notify boolean;
    i lattice.alert_incidents;
BEGIN
    IF NOT (cfg #>> ARRAY['rules', c.rule, 'enabled'])::boolean
       OR EXISTS (SELECT FROM lattice.alert_incidents x
                   WHERE x.user_id = c.user_id AND x.rule = c.rule AND x.subject_key = c.key AND x.status = 'open') THEN
        RETURN NULL;
    END IF;
    muted := EXISTS (SELECT FROM lattice.alert_mutes m
                      WHERE m.user_id = c.user_id AND m.rule = c.rule AND m.subject_key = c.key AND m.until > at);
    SELECT max(COALESCE(x.resolved_at, x.opened_at)) INTO last_notified FROM lattice.alert_incidents x
     WHERE x.user_id = c.user_id AND x.rule = c.rule AND x.subject_key = c.key AND x.notified;
    notify := NOT muted AND (last_notified IS NULL
                             OR last_notified <= at - make_interval(mins => (cfg ->> 'cooldown_minutes')::integer));
    INSERT INTO lattice.alert_incidents (user_id, rule, subject_key, subject, service_id, status, summary, value,
                                         opened_at, resolved_at, notified)
    VALUES (c.user_id, c.rule, c.key, c.subject, c.service, CASE WHEN c.event THEN 'resolved' ELSE 'open' END,
            c.summary, c.value, at, CASE WHEN c.event THEN at END, notify)
    RETURNING * INTO i;
    IF notify THEN
        PERFORM lattice.alert_notify(i, 'opened');
    END IF;
    RETURN notify;
END
$$;

-- One evaluation of every account's rules at `at` (now when NULL); the
-- usage worker runs it every lattice.alert_interval seconds.  First the
-- open incidents (still firing, or clear for recover_after_minutes and so
-- resolved), then the new firing subjects.  Returns what it did.
CREATE FUNCTION lattice.alert_tick(at timestamptz DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'   -- the window's histograms are summed in memory
AS $$
DECLARE
    st lattice.alert_state;
    since timestamptz;
    c lattice.alert_candidate;
    i lattice.alert_incidents;
    cfg jsonb;
    chk jsonb;
    sent boolean;
    checked integer := 0;
    opened integer := 0;
    notified integer := 0;
    resolved integer := 0;
    graph_to bigint;
    change_to bigint;
BEGIN
    at := COALESCE(at, lattice.clock_now());
    INSERT INTO lattice.alert_state DEFAULT VALUES ON CONFLICT DO NOTHING;
    SELECT * INTO st FROM lattice.alert_state FOR UPDATE;
    since := CASE WHEN st.last_tick_at IS NULL OR st.last_tick_at >= at OR st.last_tick_at < at - interval '1 hour'
                  THEN at - interval '1 hour' ELSE st.last_tick_at END;
    SELECT COALESCE(max(g.id), 0) INTO graph_to FROM lattice.graph_events g;
    SELECT COALESCE(max(x.id), 0) INTO change_to FROM lattice.service_changes x;

    FOR i IN SELECT * FROM lattice.alert_incidents x WHERE x.status = 'open' ORDER BY x.user_id, x.id LOOP
        checked := checked + 1;
        cfg := lattice.alert_config_of(i.user_id);
        chk := lattice.alert_recheck(i, cfg, at);
        IF (chk ->> 'firing')::boolean THEN
            UPDATE lattice.alert_incidents x SET value = chk -> 'value', clear_since = NULL
             WHERE x.user_id = i.user_id AND x.id = i.id;
        ELSIF COALESCE(i.clear_since, at) <= at - make_interval(mins => (cfg ->> 'recover_after_minutes')::integer) THEN
            UPDATE lattice.alert_incidents x SET status = 'resolved', resolved_at = at, value = chk -> 'value'
             WHERE x.user_id = i.user_id AND x.id = i.id
            RETURNING * INTO i;
            resolved := resolved + 1;
            IF i.notified AND NOT EXISTS (SELECT FROM lattice.alert_mutes m
                                           WHERE m.user_id = i.user_id AND m.rule = i.rule
                                             AND m.subject_key = i.subject_key AND m.until > at) THEN
                PERFORM lattice.alert_notify(i, 'resolved');
            END IF;
        ELSIF i.clear_since IS NULL THEN
            UPDATE lattice.alert_incidents x SET clear_since = at, value = chk -> 'value'
             WHERE x.user_id = i.user_id AND x.id = i.id;
        END IF;
    END LOOP;

    FOR c IN
        SELECT * FROM lattice.alert_candidates_down(at, since)
        UNION ALL SELECT * FROM lattice.alert_candidates_errors(at)
        UNION ALL SELECT * FROM lattice.alert_candidates_latency(at)
        UNION ALL SELECT * FROM lattice.alert_candidates_ingest(at, since)
        UNION ALL SELECT * FROM lattice.alert_candidates_topology(st.graph_event_id, graph_to,
                                                                   st.service_change_id, change_to)
                   WHERE st.graph_event_id IS NOT NULL
    LOOP
        sent := lattice.alert_open(c, at);
        IF sent IS NOT NULL THEN
            opened := opened + 1;
            notified := notified + sent::integer;
        END IF;
    END LOOP;

    -- the first tick starts the topology cursors at the present: no flood of history
    UPDATE lattice.alert_state SET last_tick_at = at, graph_event_id = graph_to, service_change_id = change_to;
    RETURN jsonb_build_object('at', at, 'open_checked', checked, 'opened', opened, 'notified', notified,
                              'resolved', resolved);
END
$$;

-- Housekeeping: resolved incidents are kept 90 days, mutes until they end.
CREATE FUNCTION lattice.alert_prune(at timestamptz DEFAULT NULL) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    at := COALESCE(at, lattice.clock_now());
    DELETE FROM lattice.alert_incidents x WHERE x.status = 'resolved' AND x.resolved_at < at - interval '90 days';
    DELETE FROM lattice.alert_mutes m WHERE m.until < at;
END
$$;

GRANT EXECUTE ON FUNCTION lattice.alert_tick(timestamptz), lattice.alert_prune(timestamptz) TO lattice_admin;
-- The alerts API (docs/alerts.md): rules, channels and their delivery log,
-- incidents.  Reads take a session or a key with the read scope; changes
-- need a session.

-- The delivery log of one of the caller's channels: its outbox jobs (the
-- owner's table), newest first.
CREATE FUNCTION lattice.alert_deliveries(channel uuid, lim integer) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', o.id, 'event', o.context ->> 'event', 'incident_id', o.context -> 'incident',
               'status', o.status, 'attempts', o.attempts, 'response_status', o.response_status,
               'last_error', o.last_error, 'created_at', o.created_at, 'done_at', o.done_at,
               'next_attempt_at', CASE WHEN o.status = 'pending' THEN o.next_attempt_at END) ORDER BY o.id DESC), '[]')
      FROM (SELECT * FROM lattice.outbox x
             WHERE x.account_id = lattice.current_user_id() AND x.purpose LIKE 'alert.%'
               AND x.context ->> 'channel' = channel::text
             ORDER BY x.id DESC LIMIT lim) o
$$;
CREATE INDEX ON lattice.outbox (account_id, id) WHERE purpose LIKE 'alert.%';

-- A channel as the API shows it: a webhook's URL only by host and its last
-- four characters (Slack's carry their secret in the path).
CREATE FUNCTION lattice.alert_channel_json(c lattice.alert_channels) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'id', c.id, 'kind', c.kind, 'name', c.name,
        'target', CASE WHEN c.kind = 'email' THEN c.target
                       ELSE pg_catalog.regexp_replace(c.target, '^([a-zA-Z]+://[^/?#]+).*$', '\1') || '/…'
                            || pg_catalog.right(c.target, 4) END,
        'enabled', c.enabled, 'verified', c.verified_at IS NOT NULL, 'created_at', c.created_at,
        'last_delivery', lattice.alert_deliveries(c.id, 1) -> 0)
$$;

CREATE FUNCTION lattice.alert_channel_get(account uuid, req jsonb) RETURNS lattice.alert_channels
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c lattice.alert_channels;
BEGIN
    SELECT * INTO c FROM lattice.alert_channels x
     WHERE x.user_id = account AND x.id = lattice.ingest_param_uuid(req, 'id');
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such channel');
    END IF;
    RETURN c;
END
$$;

-- The body of a channel request: a JSON object with only the members named
-- in allowed (400 invalid_channel, at the first other one).  The shape of
-- lattice.billing_body, with the channels' own error code.
CREATE FUNCTION lattice.alert_channel_body(body text, allowed text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    extra text;
BEGIN
    SELECT left(k, 64) INTO extra FROM jsonb_object_keys(b) k WHERE k <> ALL (allowed) LIMIT 1;
    IF extra IS NOT NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', format('unknown field "%s"', extra),
                                   jsonb_build_object('path', extra));
    END IF;
    RETURN b;
END
$$;

-- Refuses a webhook URL with the reason lattice.outbound_url_check gives.
CREATE FUNCTION lattice.alert_url_require(url text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    why text := lattice.outbound_url_check(url);
BEGIN
    IF why IS NULL THEN
        RETURN;
    END IF;
    PERFORM lattice.raise_http(400, 'invalid_url',
        CASE split_part(why, ':', 1)
        WHEN 'scheme' THEN 'the URL must start with https://'
        WHEN 'credentials' THEN 'the URL must not carry a user name or password'
        WHEN 'too_long' THEN 'the URL is longer than 2048 characters'
        WHEN 'unresolvable' THEN 'the URL''s host name does not resolve'
        WHEN 'blocked' THEN format('the URL''s host resolves to %s, a %s address; webhooks may only reach public addresses',
                                   substr(why, length(split_part(why, ':', 1)) + length(split_part(why, ':', 2)) + 3),
                                   split_part(why, ':', 2))
        ELSE 'the URL is not a valid https URL' END,
        jsonb_build_object('path', 'url', 'reason', split_part(why, ':', 1)));
END
$$;

-- GET /api/v1/alerts/rules
CREATE FUNCTION lattice_http.alert_rules_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
BEGIN
    RETURN lattice.http_json(200, lattice.alert_config_of(account)
                                  || jsonb_build_object('defaults', lattice.alert_defaults()));
END
$$;

-- PUT /api/v1/alerts/rules {rules?, cooldown_minutes?, recover_after_minutes?}
CREATE FUNCTION lattice_http.alert_rules_put(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    stored jsonb;
    cfg jsonb;
BEGIN
    PERFORM lattice.alert_validate(b);
    -- what the account changed so far, with this change over it
    stored := lattice.alert_merge(COALESCE((SELECT s.config FROM lattice.alert_settings s WHERE s.user_id = account), '{}'), b);
    cfg := lattice.alert_config(stored);
    IF (cfg #>> '{rules,error_rate,clear_percent}')::numeric > (cfg #>> '{rules,error_rate,threshold_percent}')::numeric THEN
        PERFORM lattice.raise_http(400, 'invalid_rules', 'clear_percent must not be above threshold_percent',
                                   jsonb_build_object('path', 'rules.error_rate.clear_percent'));
    END IF;
    INSERT INTO lattice.alert_settings (user_id, config, updated_at) VALUES (account, stored, now())
    ON CONFLICT (user_id) DO UPDATE SET config = EXCLUDED.config, updated_at = EXCLUDED.updated_at;
    PERFORM lattice.audit('alerts.rules_changed', NULL, b, req, account);
    RETURN lattice.http_json(200, cfg || jsonb_build_object('defaults', lattice.alert_defaults()));
END
$$;

-- GET /api/v1/alerts/channels
CREATE FUNCTION lattice_http.alert_channels_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    c lattice.alert_channels;
    items jsonb := '[]';
BEGIN
    -- row by row: on Citus a whole row stays on the coordinator
    FOR c IN SELECT * FROM lattice.alert_channels x WHERE x.user_id = account ORDER BY x.created_at, x.id LOOP
        items := items || jsonb_build_array(lattice.alert_channel_json(c));
    END LOOP;
    RETURN lattice.http_json(200, jsonb_build_object('channels', items));
END
$$;

-- POST /api/v1/alerts/channels {kind, name, address | url}
CREATE FUNCTION lattice_http.alert_channel_create(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.alert_channel_body(body, '{kind,name,address,url}');
    kind text := b ->> 'kind';
    name text := btrim(COALESCE(b ->> 'name', ''));
    dest text;
    secret text;
    sealed bytea;
    own record;
    c lattice.alert_channels;
BEGIN
    IF kind IS NULL OR jsonb_typeof(b -> 'kind') <> 'string' OR kind NOT IN ('email', 'webhook', 'slack') THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'kind must be "email", "webhook" or "slack"',
                                   jsonb_build_object('path', 'kind'));
    END IF;
    IF jsonb_typeof(b -> 'name') IS DISTINCT FROM 'string' OR length(name) NOT BETWEEN 1 AND 100 THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'name must be 1 to 100 characters',
                                   jsonb_build_object('path', 'name'));
    END IF;
    IF (SELECT count(*) FROM lattice.alert_channels x WHERE x.user_id = account) >= 20 THEN
        PERFORM lattice.raise_http(409, 'too_many_channels', 'an account may have 20 alert channels');
    END IF;
    IF kind = 'email' THEN
        dest := lower(btrim(COALESCE(b ->> 'address', '')));
        IF jsonb_typeof(b -> 'address') IS DISTINCT FROM 'string' OR b ? 'url'
           OR dest !~ '^[^@\s<>"]{1,64}@[a-z0-9.-]{1,253}\.[a-z]{2,}$' OR length(dest) > 254 THEN
            PERFORM lattice.raise_http(400, 'invalid_channel', 'address must be an e-mail address',
                                       jsonb_build_object('path', 'address'));
        END IF;
        SELECT u.email, u.email_verified_at, u.name INTO own FROM lattice.users u WHERE u.id = account;
        IF dest <> lower(own.email) OR own.email_verified_at IS NULL THEN
            IF (SELECT count(*) FROM lattice.alert_channels x
                 WHERE x.user_id = account AND x.kind = 'email' AND x.verified_at IS NULL) >= 5 THEN
                PERFORM lattice.raise_http(409, 'too_many_unverified', 'five addresses already wait for confirmation');
            END IF;
        END IF;
        INSERT INTO lattice.alert_channels (user_id, kind, name, target, verified_at)
        VALUES (account, 'email', name, dest,
                CASE WHEN dest = lower(own.email) AND own.email_verified_at IS NOT NULL THEN now() END)
        RETURNING * INTO c;
        IF c.verified_at IS NULL AND NOT EXISTS (SELECT FROM lattice.alert_channels x
                                                  WHERE x.user_id = account AND x.kind = 'email'
                                                    AND x.target = dest AND x.id <> c.id) THEN
            PERFORM lattice.outbox_email(account, 'alert_recipient_verify', jsonb_build_object(
                'owner', own.email,
                'link', lattice.billing_public_origin() || '/alerts/verify?token='
                        || lattice.account_token_issue(account, 'alert_recipient', dest)), dest);
        END IF;
    ELSE
        dest := b ->> 'url';
        IF jsonb_typeof(b -> 'url') IS DISTINCT FROM 'string' OR b ? 'address' THEN
            PERFORM lattice.raise_http(400, 'invalid_channel', 'url must be a string', jsonb_build_object('path', 'url'));
        END IF;
        PERFORM lattice.alert_url_require(dest);
        IF kind = 'webhook' THEN
            SELECT w.secret, w.sealed INTO secret, sealed FROM lattice.webhook_secret_new() w;
        END IF;
        INSERT INTO lattice.alert_channels (user_id, kind, name, target, secret_sealed, verified_at)
        VALUES (account, kind, name, dest, sealed, now())
        RETURNING * INTO c;
    END IF;
    PERFORM lattice.audit('alerts.channel_created', c.id::text, jsonb_build_object('kind', kind), req, account);
    RETURN lattice.http_json(201, jsonb_strip_nulls(jsonb_build_object(
        'channel', lattice.alert_channel_json(c), 'secret', secret)));
END
$$;

-- PATCH /api/v1/alerts/channels/{id} {name?, enabled?}
CREATE FUNCTION lattice_http.alert_channel_update(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.alert_channel_body(body, '{name,enabled}');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    IF b ? 'name' AND (jsonb_typeof(b -> 'name') <> 'string' OR length(btrim(b ->> 'name')) NOT BETWEEN 1 AND 100) THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'name must be 1 to 100 characters', jsonb_build_object('path', 'name'));
    END IF;
    IF b ? 'enabled' AND jsonb_typeof(b -> 'enabled') <> 'boolean' THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'enabled must be true or false', jsonb_build_object('path', 'enabled'));
    END IF;
    UPDATE lattice.alert_channels x
       SET name = COALESCE(btrim(b ->> 'name'), x.name), enabled = COALESCE((b ->> 'enabled')::boolean, x.enabled)
     WHERE x.user_id = account AND x.id = c.id
    RETURNING * INTO c;
    RETURN lattice.http_json(200, jsonb_build_object('channel', lattice.alert_channel_json(c)));
END
$$;

-- DELETE /api/v1/alerts/channels/{id}: its pending deliveries go with it.
CREATE FUNCTION lattice.alert_channel_forget(channel uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM lattice.outbox o
     WHERE o.account_id = lattice.current_user_id() AND o.purpose LIKE 'alert.%'
       AND o.context ->> 'channel' = channel::text AND o.status = 'pending';
$$;

CREATE FUNCTION lattice_http.alert_channel_delete(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    DELETE FROM lattice.alert_channels x WHERE x.user_id = account AND x.id = c.id;
    PERFORM lattice.alert_channel_forget(c.id);
    PERFORM lattice.audit('alerts.channel_deleted', c.id::text, jsonb_build_object('kind', c.kind), req, account);
    RETURN lattice.http_json(204, NULL);
END
$$;

-- POST /api/v1/alerts/channels/{id}/test: performed right after COMMIT.
CREATE FUNCTION lattice_http.alert_channel_test(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    IF c.verified_at IS NULL THEN
        PERFORM lattice.raise_http(409, 'unverified', 'the address has not confirmed yet; the e-mail sent to it has the link');
    END IF;
    PERFORM lattice.account_throttle('alert_test', account, 10, 60);
    RETURN lattice.outbound_answer(lattice.alert_enqueue(c, 'test', NULL, true));
END
$$;

-- POST /api/v1/alerts/channels/{id}/secret: a new signing secret, shown once.
CREATE FUNCTION lattice_http.alert_channel_secret(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
    secret record;
BEGIN
    IF c.kind <> 'webhook' THEN
        PERFORM lattice.raise_http(409, 'no_secret', 'only webhook channels are signed');
    END IF;
    secret := lattice.webhook_secret_new();
    UPDATE lattice.alert_channels x SET secret_sealed = secret.sealed WHERE x.user_id = account AND x.id = c.id;
    PERFORM lattice.audit('alerts.channel_secret_rotated', c.id::text, NULL, req, account);
    RETURN lattice.http_json(200, jsonb_build_object('secret', secret.secret));
END
$$;

-- GET /api/v1/alerts/channels/{id}/deliveries?limit=
CREATE FUNCTION lattice_http.alert_channel_deliveries(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    RETURN lattice.http_json(200, jsonb_build_object('deliveries',
        lattice.alert_deliveries(c.id, lattice.ingest_query_int(req, 'limit', 50, 1, 100))));
END
$$;

-- POST /api/v1/alerts/recipients/verify {token}: the link in the e-mail.
CREATE FUNCTION lattice_http.alert_recipient_verify(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    claim record;
    n integer;
BEGIN
    IF jsonb_typeof(b -> 'token') IS DISTINCT FROM 'string' THEN
        PERFORM lattice.raise_http(400, 'invalid_token', 'token is missing', jsonb_build_object('path', 'token'));
    END IF;
    SELECT * INTO claim FROM lattice.account_token_claim(b ->> 'token', ARRAY['alert_recipient'], req);
    UPDATE lattice.alert_channels x SET verified_at = now()
     WHERE x.user_id = claim.user_id AND x.kind = 'email' AND x.target = claim.email AND x.verified_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM lattice.audit('alerts.recipient_verified', claim.email, jsonb_build_object('channels', n), req, claim.user_id);
    RETURN lattice.http_json(200, jsonb_build_object('address', claim.email, 'channels', n));
END
$$;

-- The incident with the caller's mute of its rule and subject.
CREATE FUNCTION lattice.alert_incident_view(i lattice.alert_incidents) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT lattice.alert_incident_json(i, (SELECT m.until FROM lattice.alert_mutes m
                                            WHERE m.user_id = i.user_id AND m.rule = i.rule
                                              AND m.subject_key = i.subject_key AND m.until > pg_catalog.now())));
END
$$;

-- GET /api/v1/alerts/incidents?status=open|all&service=&limit=&before=
CREATE FUNCTION lattice_http.alert_incidents_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    which text := COALESCE(req #>> '{query,status}', 'all');
    service uuid;
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 100);
    before bigint;
    items jsonb;
    i lattice.alert_incidents;
BEGIN
    IF which NOT IN ('open', 'all') THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'status must be open or all', jsonb_build_object('path', 'query.status'));
    END IF;
    IF req #>> '{query,service}' IS NOT NULL THEN
        IF req #>> '{query,service}' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_query', 'service must be a service id', jsonb_build_object('path', 'query.service'));
        END IF;
        service := (req #>> '{query,service}')::uuid;
    END IF;
    IF req #>> '{query,before}' IS NOT NULL THEN
        IF req #>> '{query,before}' !~ '^[0-9]{1,18}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_cursor', 'before must be an incident id', jsonb_build_object('path', 'query.before'));
        END IF;
        before := (req #>> '{query,before}')::bigint;
    END IF;
    items := '[]';
    FOR i IN SELECT * FROM lattice.alert_incidents x
              WHERE x.user_id = account AND (which = 'all' OR x.status = 'open')
                AND (service IS NULL OR x.service_id = service OR (x.subject ->> 'source_id')::uuid = service)
                AND (before IS NULL OR x.id < before)
              ORDER BY x.id DESC LIMIT lim LOOP
        items := items || jsonb_build_array(lattice.alert_incident_view(i));
    END LOOP;
    RETURN lattice.http_json(200, jsonb_build_object('incidents', items,
        'next_before', CASE WHEN jsonb_array_length(items) = lim THEN items -> (lim - 1) -> 'id' END));
END
$$;

CREATE FUNCTION lattice.alert_incident_get(account uuid, req jsonb) RETURNS lattice.alert_incidents
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    i lattice.alert_incidents;
    v text := req #>> '{params,id}';
BEGIN
    IF v IS NOT NULL AND v ~ '^[0-9]{1,18}$' THEN
        SELECT * INTO i FROM lattice.alert_incidents x WHERE x.user_id = account AND x.id = v::bigint;
    END IF;
    IF i.id IS NULL THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such incident');
    END IF;
    RETURN i;
END
$$;

-- POST /api/v1/alerts/incidents/{id}/acknowledge
CREATE FUNCTION lattice_http.alert_incident_acknowledge(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    i lattice.alert_incidents := lattice.alert_incident_get(account, req);
    at timestamptz := now();
BEGIN
    UPDATE lattice.alert_incidents x SET acknowledged_at = COALESCE(x.acknowledged_at, at)
     WHERE x.user_id = account AND x.id = i.id
    RETURNING * INTO i;
    RETURN lattice.http_json(200, jsonb_build_object('incident', lattice.alert_incident_view(i)));
END
$$;

-- POST /api/v1/alerts/incidents/{id}/mute {minutes}
CREATE FUNCTION lattice_http.alert_incident_mute(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    i lattice.alert_incidents := lattice.alert_incident_get(account, req);
    at timestamptz := now();
BEGIN
    IF jsonb_typeof(b -> 'minutes') IS DISTINCT FROM 'number' OR (b ->> 'minutes')::numeric <> trunc((b ->> 'minutes')::numeric)
       OR (b ->> 'minutes')::numeric NOT BETWEEN 1 AND 10080 THEN
        PERFORM lattice.raise_http(400, 'invalid_minutes', 'minutes must be an integer from 1 to 10080 (a week)',
                                   jsonb_build_object('path', 'minutes'));
    END IF;
    INSERT INTO lattice.alert_mutes (user_id, rule, subject_key, until)
    VALUES (account, i.rule, i.subject_key, now() + make_interval(mins => (b ->> 'minutes')::integer))
    ON CONFLICT (user_id, rule, subject_key) DO UPDATE SET until = EXCLUDED.until;
    UPDATE lattice.alert_incidents x SET acknowledged_at = COALESCE(x.acknowledged_at, at)
     WHERE x.user_id = account AND x.id = i.id
    RETURNING * INTO i;
    RETURN lattice.http_json(200, jsonb_build_object('incident', lattice.alert_incident_view(i)));
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.alert_defaults(), lattice.alert_fields(), lattice.alert_merge(jsonb, jsonb), lattice.alert_config(jsonb),
    lattice.alert_config_of(uuid), lattice.alert_validate(jsonb), lattice.alert_validate_value(jsonb, jsonb, text),
    lattice.alert_channel_json(lattice.alert_channels), lattice.alert_channel_get(uuid, jsonb),
    lattice.alert_channel_body(text, text[]),
    lattice.alert_url_require(text), lattice.outbound_url_check(text), lattice.webhook_secret_new(),
    lattice.alert_deliveries(uuid, integer), lattice.alert_channel_forget(uuid),
    lattice.alert_enqueue(lattice.alert_channels, text, jsonb, boolean),
    lattice.alert_incident_json(lattice.alert_incidents, timestamptz), lattice.alert_incident_view(lattice.alert_incidents),
    lattice.alert_incident_get(uuid, jsonb)
TO lattice_app;
-- Applied to every object the parts before it created, so that no new table
-- or function can be forgotten (92_cluster.sql, the one part after it,
-- creates no tenant table and revokes its own functions from PUBLIC):
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
    seq record;
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
        -- identity columns: Citus draws their values on the coordinator, as the caller
        FOR seq IN SELECT d.objid::regclass AS s FROM pg_catalog.pg_depend d
                     JOIN pg_catalog.pg_class q ON q.oid = d.objid AND q.relkind = 'S'
                    WHERE d.refobjid = t.rel AND d.classid = 'pg_class'::regclass AND d.deptype = 'i'
                      AND d.refclassid = 'pg_class'::regclass LOOP
            EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO lattice_app', seq.s);
        END LOOP;
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
-- may add rows, never change them, and delete them only with the account
-- (below).  A tenant reads its own rows.
REVOKE UPDATE, DELETE ON lattice.audit_log FROM lattice_app;
DROP POLICY tenant_update ON lattice.audit_log;
DROP POLICY tenant_delete ON lattice.audit_log;
DROP POLICY tenant_insert ON lattice.audit_log;
CREATE POLICY audit_insert ON lattice.audit_log FOR INSERT TO lattice_app
    WITH CHECK (user_id = lattice.current_user_id());
-- lattice.act_as_tenant's row, written as the admin: only that event, for
-- the tenant being acted as, under the admin's own name.
CREATE POLICY audit_admin_insert ON lattice.audit_log FOR INSERT TO lattice_admin
    WITH CHECK (user_id = lattice.current_user_id() AND action = 'admin.act_as_tenant'
                AND actor = SESSION_USER);
GRANT INSERT ON lattice.audit_log TO lattice_admin;
-- Deleting the account deletes its trail too, only in the transaction that
-- proved the deletion (password and second factor, src/account_reauth.c).
CREATE POLICY audit_account_deleted ON lattice.audit_log FOR DELETE TO lattice_app
    USING (user_id = lattice.current_user_id() AND lattice.account_deleting());
GRANT DELETE ON lattice.audit_log TO lattice_app;
GRANT USAGE ON SEQUENCE lattice.audit_log_id_seq TO lattice_admin;
-- Events no tenant is known for: lattice_app adds them and reads none.
REVOKE ALL ON lattice.audit_unattributed FROM PUBLIC;
GRANT INSERT ON lattice.audit_unattributed TO lattice_app;
GRANT SELECT ON lattice.audit_unattributed TO lattice_admin;
SELECT pg_catalog.pg_extension_config_dump('lattice.audit_unattributed', '');

-- The look-ups across tenants are read and written by the identity
-- functions (SECURITY DEFINER) only: the API role gets nothing of them,
-- even for its own tenant.
REVOKE ALL ON lattice.account_emails, lattice.api_key_prefixes, lattice.session_tokens
    FROM PUBLIC, lattice_app, lattice_admin;

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
GRANT EXECUTE ON FUNCTION lattice.act_as_tenant(uuid, text), lattice.act_as_tenant_c(uuid) TO lattice_admin;
-- Lattice on Citus: one coordinator that takes every request, and workers
-- that hold the tenants' rows in shards.  One node stays the default and
-- needs none of this.  docs/scaling.md has the design and threat model.
--
-- Tables by kind (lattice.cluster_tables() lists them):
--   distributed  every tenant table, by user_id (users by id), co-located
--                with lattice.users, so a request touches one worker;
--   reference    the look-ups across tenants and the global data, copied to
--                every node and read locally on the coordinator;
--   local        what only the coordinator uses: server secrets, the
--                outbox, unattributed audit events, the cluster key.

-- The key the coordinator signs tenant tokens with and the workers verify
-- them with (src/tenant_token.c): the same 32 bytes on every node, read by
-- the extension owner only.  Empty on a single node.
CREATE TABLE lattice.cluster_key (
    key         bytea NOT NULL CHECK (pg_catalog.length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE UNIQUE INDEX cluster_key_one_row ON lattice.cluster_key ((true));
REVOKE ALL ON lattice.cluster_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.cluster_key', '');

CREATE FUNCTION lattice.cluster_key_generate() RETURNS bytea
    AS 'MODULE_PATHNAME', 'lattice_cluster_key_generate' LANGUAGE C VOLATILE STRICT;

-- How each table of schema lattice is placed on Citus, from the catalog as
-- the RLS rules are (90_security.sql): a table with a user_id column is a
-- tenant table and distributed unless it is one of the named look-ups.
CREATE FUNCTION lattice.cluster_tables(OUT rel regclass, OUT kind text, OUT dist_column text)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.rel, t.kind, CASE WHEN t.kind = 'distributed' THEN t.dist_column END
      FROM (
    SELECT c.oid::regclass AS rel,
           CASE WHEN c.relname IN ('plans', 'account_emails', 'api_key_prefixes', 'session_tokens',
                                   'billing_customers', 'stripe_events', 'webhook_secrets')
                THEN 'reference'
                WHEN c.relname = 'users' OR EXISTS (
                     SELECT FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)
                THEN 'distributed'
                ELSE 'local' END AS kind,
           CASE WHEN c.relname = 'users' THEN 'id' ELSE 'user_id' END AS dist_column,
           c.relname
      FROM pg_class c
     WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')) t
     ORDER BY t.relname <> 'users', t.relname
$$;

-- The workers' part of the set-up, also for a worker added later (after
-- citus_add_node, which runs CREATE EXTENSION there): the cluster key,
-- no secrets or plans of their own, lattice_app's login, no metadata sync.
-- Idempotent; superuser only.
CREATE FUNCTION lattice.cluster_sync_workers() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k bytea;
    w record;
    cmd text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'lattice.cluster_sync_workers: permission denied'
            USING ERRCODE = 'insufficient_privilege', DETAIL = 'Only a superuser sets up a cluster.';
    END IF;
    -- the key: this node's, or a new one
    SELECT c.key INTO k FROM lattice.cluster_key c;
    IF k IS NULL THEN
        k := lattice.cluster_key_generate();
        INSERT INTO lattice.cluster_key (key) VALUES (k);
    END IF;

    FOR w IN SELECT n.nodename, n.nodeport FROM pg_dist_node n
              WHERE n.noderole = 'primary' AND n.groupid <> 0 AND n.hasmetadata LOOP
        PERFORM pg_catalog.stop_metadata_sync_to_node(w.nodename, w.nodeport);
    END LOOP;
    FOR cmd IN SELECT unnest(ARRAY[
            'DELETE FROM lattice.cluster_key',
            pg_catalog.format('INSERT INTO lattice.cluster_key (key) VALUES (%L)', k),
            'DELETE FROM lattice.secrets',
            'DELETE FROM lattice.plans',
            -- role DDL is the coordinator's to propagate, unless told otherwise
            'DO $d$BEGIN SET LOCAL citus.enable_ddl_propagation TO off;'
            ' ALTER ROLE lattice_app LOGIN; ALTER ROLE lattice_app SET track_activities = off; END$d$']) LOOP
        IF EXISTS (SELECT FROM pg_catalog.run_command_on_workers(cmd) r WHERE NOT r.success) THEN
            RAISE EXCEPTION 'lattice.cluster_sync_workers: a worker refused: %', cmd
                USING ERRCODE = 'connection_failure';
        END IF;
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.run_command_on_workers('SELECT count(*) FROM lattice.cluster_key') r
                WHERE NOT r.success OR r.result <> '1') THEN
        RAISE EXCEPTION 'lattice.cluster_sync_workers: a worker did not take the cluster key'
            USING ERRCODE = 'connection_failure';
    END IF;
    RETURN (SELECT pg_catalog.count(*)::integer FROM pg_dist_node n
             WHERE n.noderole = 'primary' AND n.groupid <> 0);
END
$$;

-- Run once on the coordinator, as a superuser, after CREATE EXTENSION
-- lattice (which Citus also runs on the workers) and citus_add_node for
-- every worker:
--   * lattice.cluster_sync_workers(): one cluster key, generated here and
--     written to every worker; the workers keep no secrets or plans of their
--     own (the install script Citus runs there seeds none; any a worker made
--     when the extension was created on it by hand are removed); metadata is
--     not synced to the workers (the coordinator plans every query, the
--     workers hold shards only); lattice_app, the role the API functions run
--     as, may log in on the workers (Citus connects as the current user) and
--     its statements are not shown in pg_stat_activity there, where they
--     carry the token;
--   * every table placed as lattice.cluster_tables() says, with the foreign
--     keys between them put back once both ends are placed.
CREATE FUNCTION lattice.cluster_setup(shard_count integer DEFAULT NULL)
RETURNS TABLE (rel regclass, kind text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    fks text[] := '{}';
    fk record;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'lattice.cluster_setup: permission denied'
            USING ERRCODE = 'insufficient_privilege', DETAIL = 'Only a superuser sets up a cluster.';
    END IF;
    IF pg_catalog.to_regproc('pg_catalog.citus_is_coordinator') IS NULL THEN
        RAISE EXCEPTION 'lattice.cluster_setup: Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'lattice.cluster_setup: run it on the coordinator'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = 'lattice.users'::regclass) THEN
        RAISE EXCEPTION 'lattice.cluster_setup: the tables are distributed already'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_node n WHERE n.noderole = 'primary' AND n.groupid <> 0) THEN
        RAISE EXCEPTION 'lattice.cluster_setup: no workers; add them with citus_add_node first'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    PERFORM lattice.cluster_sync_workers();

    -- foreign keys come off while the tables move, and go back after
    SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    IF shard_count IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.shard_count', shard_count::text, true);
    END IF;
    FOR fk IN SELECT c.conrelid::regclass AS tbl, c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def
                FROM pg_constraint c
               WHERE c.contype = 'f' AND c.connamespace = 'lattice'::regnamespace LOOP
        fks := fks || pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tbl, fk.conname, fk.def);
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
    END LOOP;

    FOR t IN SELECT * FROM lattice.cluster_tables() c WHERE c.kind <> 'local' LOOP
        IF t.kind = 'reference' THEN
            PERFORM pg_catalog.create_reference_table(t.rel);
        ELSIF t.rel = 'lattice.users'::regclass THEN
            PERFORM pg_catalog.create_distributed_table(t.rel, t.dist_column, colocate_with => 'none');
        ELSE
            PERFORM pg_catalog.create_distributed_table(t.rel, t.dist_column, colocate_with => 'lattice.users');
        END IF;
        -- rows that were here before now live in the shards
        PERFORM pg_catalog.truncate_local_data_after_distributing_table(t.rel);
        rel := t.rel;
        kind := t.kind;
        RETURN NEXT;
    END LOOP;

    FOR i IN 1 .. pg_catalog.cardinality(fks) LOOP
        EXECUTE fks[i];
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION lattice.cluster_key_generate(), lattice.cluster_tables(),
                       lattice.cluster_sync_workers(), lattice.cluster_setup(integer) FROM PUBLIC;

-- The tenant tables an account deletion and an export walk (86_account.sql,
-- 87_http_account.sql).
GRANT EXECUTE ON FUNCTION lattice.cluster_tables() TO lattice_app;
