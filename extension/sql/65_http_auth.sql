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
