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
