-- lattice 0.1.1 -> 0.2.0: quota classes and scoped API keys
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.2.0'" to load this file. \quit

-- Plans: the ingest budget of one service and the dashboard's own budget.
ALTER TABLE lattice.plans
    ADD COLUMN ingest_per_service_per_hour integer NOT NULL DEFAULT 3600 CHECK (ingest_per_service_per_hour > 0),
    ADD COLUMN dashboard_per_hour integer NOT NULL DEFAULT 7200 CHECK (dashboard_per_hour > 0);

-- API keys get scopes.  A key made before scopes keeps what it could send
-- and read (ingest, read); new keys are ingest only unless asked.  No key
-- manages keys, sessions or billing any more: that takes a session.
ALTER TABLE lattice.api_keys
    ADD COLUMN scopes text[] NOT NULL DEFAULT '{ingest,read}'
        CHECK (pg_catalog.cardinality(scopes) >= 1 AND scopes <@ '{ingest,read}'::text[]);
ALTER TABLE lattice.api_keys ALTER COLUMN scopes SET DEFAULT '{ingest}';

-- Hourly usage by quota class; the rows so far are the api class.
ALTER TABLE lattice.usage_hourly
    ADD COLUMN class text NOT NULL DEFAULT 'api' CHECK (class IN ('api', 'ingest', 'dashboard')),
    ADD COLUMN subject text NOT NULL DEFAULT '',
    DROP CONSTRAINT usage_hourly_pkey,
    ADD PRIMARY KEY (user_id, class, subject, hour);
CREATE INDEX ON lattice.usage_hourly (user_id, hour);

-- Functions: dropped, then every new or changed definition.
DROP FUNCTION lattice.api_key_create(uuid,text,timestamp with time zone,jsonb);
DROP FUNCTION lattice.authenticate(jsonb,text[]);
DROP FUNCTION lattice.create_api_key(uuid,text);

CREATE OR REPLACE FUNCTION lattice.api_key_create(user_id uuid, name text, expires_at timestamp with time zone DEFAULT NULL::timestamp with time zone, req jsonb DEFAULT NULL::jsonb, scopes text[] DEFAULT '{ingest}'::text[], OUT id uuid, OUT key text, OUT prefix text, OUT created_at timestamp with time zone)
 RETURNS record
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_api_key_create$function$;

CREATE OR REPLACE FUNCTION lattice.authenticate(req jsonb, need text)
 RETURNS uuid
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_authenticate$function$;

CREATE OR REPLACE FUNCTION lattice.create_api_key(user_id uuid, name text, scopes text[] DEFAULT '{ingest,read}'::text[])
 RETURNS text
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT k.key FROM lattice.api_key_create(create_api_key.user_id, create_api_key.name, NULL, NULL,
                                             create_api_key.scopes) k
$function$;

CREATE OR REPLACE FUNCTION lattice.current_scopes()
 RETURNS text[]
 LANGUAGE c
 STABLE
AS '$libdir/lattice', $function$lattice_current_scopes$function$;

CREATE OR REPLACE FUNCTION lattice.metrics_figures()
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.rate_class_totals(OUT class text, OUT used bigint, OUT refused bigint)
 RETURNS SETOF record
 LANGUAGE c
AS '$libdir/lattice', $function$lattice_rate_class_totals$function$;

CREATE OR REPLACE FUNCTION lattice.rate_enforce_ingest(service text)
 RETURNS void
 LANGUAGE c
AS '$libdir/lattice', $function$lattice_rate_enforce_ingest$function$;

CREATE OR REPLACE FUNCTION lattice.rate_usage_classes()
 RETURNS jsonb
 LANGUAGE c
AS '$libdir/lattice', $function$lattice_rate_usage_classes$function$;

CREATE OR REPLACE FUNCTION lattice_http.metrics_db()
 RETURNS jsonb
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT lattice.metrics_figures()
$function$;

CREATE OR REPLACE FUNCTION lattice_http.rate_state()
 RETURNS text
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_rate_state$function$;

CREATE OR REPLACE FUNCTION lattice.api_key_json(k lattice.api_keys, now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT jsonb_build_object(
        'id', k.id, 'name', k.name, 'prefix', k.prefix, 'created_at', k.created_at,
        'last_used', date_trunc('minute', k.last_used), 'expires_at', k.expires_at,
        'revoked_at', k.revoked_at, 'rotated_from', k.rotated_from, 'scopes', to_jsonb(k.scopes),
        'status', CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked'
                       WHEN k.expires_at <= now THEN 'expired'
                       ELSE 'active' END)
$function$;

CREATE OR REPLACE FUNCTION lattice.auth_answer(status integer, body jsonb, headers jsonb DEFAULT '{}'::jsonb)
 RETURNS lattice.http_response
 LANGUAGE sql
AS $function$ SELECT lattice.http_json(status, body, headers) $function$;

CREATE OR REPLACE FUNCTION lattice.graph_answer(body json)
 RETURNS lattice.http_response
 LANGUAGE sql
 STABLE
AS $function$ SELECT ROW(200, '{}'::jsonb, body::text)::lattice.http_response $function$;

CREATE OR REPLACE FUNCTION lattice.ingest_breadcrumbs(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
     ORDER BY o;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF pg_catalog.random() < 0.01 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;
    RETURN pg_catalog.jsonb_build_object('success', true, 'stored', n);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_error(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_errors(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    doc jsonb;
BEGIN
    PERFORM lattice.ingest_tenant();
    PERFORM lattice.ingest_check('errors', body);
    doc := body::jsonb;
    PERFORM lattice.rate_enforce_ingest(doc #>> '{errors,0,service_id}');
    RETURN lattice.ingest_error_items(doc -> 'errors');
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_legacy_metrics(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_metadata(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.ingest_tenant();
    chk record;
    env text;
    sid uuid;
    doc jsonb;
    svc jsonb;
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
        instance_id = chk.instance_id,
        snapshot_hash = chk.hash,
        last_seen = pg_catalog.now()
     WHERE s.id = sid;

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
            OR old.language IS DISTINCT FROM svc ->> 'language'
            OR old.framework IS DISTINCT FROM svc ->> 'framework'
            OR old.runtime IS DISTINCT FROM svc ->> 'runtime'
            OR old.deployment_type IS DISTINCT FROM svc ->> 'deploymentType';
    END IF;

    -- Routes: (method, path) is the identity; the last duplicate wins.
    WITH inc AS (
        SELECT DISTINCT ON (r ->> 'method', r ->> 'path')
               r ->> 'method' AS method, r ->> 'path' AS path,
               r - '{id,serviceId,firstSeen,lastSeen,method,path}'::text[] AS attrs
          FROM pg_catalog.jsonb_array_elements(COALESCE(doc -> 'routes', '[]')) WITH ORDINALITY AS e(r, o)
         ORDER BY r ->> 'method', r ->> 'path', o DESC
    ), cur AS (
        SELECT r.id, r.method, r.path, r.attrs, r.removed_at FROM lattice.routes r WHERE r.service_id = sid
    ), diff AS (
        SELECT cur.id, COALESCE(inc.method, cur.method) AS method, COALESCE(inc.path, cur.path) AS path,
               inc.attrs,
               CASE WHEN cur.id IS NULL THEN 'added'
                    WHEN inc.method IS NULL THEN CASE WHEN cur.removed_at IS NULL THEN 'removed' END
                    WHEN cur.removed_at IS NOT NULL THEN 'readded'
                    WHEN cur.attrs IS DISTINCT FROM inc.attrs THEN 'updated' END AS kind
          FROM inc FULL JOIN cur ON cur.method = inc.method AND cur.path = inc.path
    ), ins AS (
        INSERT INTO lattice.routes (user_id, service_id, method, path, attrs)
        SELECT uid, sid, d.method, d.path, d.attrs FROM diff d WHERE d.kind = 'added'
    ), upd AS (
        UPDATE lattice.routes r SET attrs = d.attrs, removed_at = NULL, last_seen = pg_catalog.now()
          FROM diff d WHERE r.id = d.id AND d.kind IN ('readded', 'updated')
    ), rem AS (
        UPDATE lattice.routes r SET removed_at = pg_catalog.now()
          FROM diff d WHERE r.id = d.id AND d.kind = 'removed'
    )
    INSERT INTO lattice.service_changes (user_id, service_id, kind, subject)
    SELECT uid, sid, CASE d.kind WHEN 'removed' THEN 'route_removed' ELSE 'route_added' END,
           d.method || ' ' || d.path
      FROM diff d
     WHERE d.kind IN ('added', 'readded', 'removed') AND NOT is_new
     ORDER BY d.kind, d.method, d.path;

    -- Dependencies: (package, type) is the identity; duplicates are folded.
    WITH inc AS (
        SELECT DISTINCT ON (x ->> 'packageName', x ->> 'dependencyType')
               x ->> 'packageName' AS package_name, x ->> 'dependencyType' AS dependency_type,
               x ->> 'version' AS version, x ->> 'versionRange' AS version_range, x ->> 'scope' AS scope,
               x - '{id,serviceId,firstSeen,lastSeen,packageName,dependencyType,version,versionRange,scope}'::text[] AS attrs
          FROM pg_catalog.jsonb_array_elements(COALESCE(doc -> 'dependencies', '[]')) WITH ORDINALITY AS e(x, o)
         ORDER BY x ->> 'packageName', x ->> 'dependencyType', o DESC
    ), cur AS (
        SELECT d.id, d.package_name, d.dependency_type, d.version, d.version_range, d.scope, d.attrs, d.removed_at
          FROM lattice.dependencies d WHERE d.service_id = sid
    ), diff AS (
        SELECT cur.id, COALESCE(inc.package_name, cur.package_name) AS package_name,
               COALESCE(inc.dependency_type, cur.dependency_type) AS dependency_type,
               cur.version AS old_version, inc.version, inc.version_range, inc.scope, inc.attrs,
               CASE WHEN cur.id IS NULL THEN 'added'
                    WHEN inc.package_name IS NULL THEN CASE WHEN cur.removed_at IS NULL THEN 'removed' END
                    WHEN cur.removed_at IS NOT NULL THEN 'readded'
                    WHEN cur.version IS DISTINCT FROM inc.version THEN 'version'
                    WHEN (cur.version_range, cur.scope, cur.attrs) IS DISTINCT FROM
                         (inc.version_range, inc.scope, inc.attrs) THEN 'updated' END AS kind
          FROM inc FULL JOIN cur ON cur.package_name = inc.package_name AND cur.dependency_type = inc.dependency_type
    ), ins AS (
        INSERT INTO lattice.dependencies (user_id, service_id, package_name, dependency_type, version,
                                          version_range, scope, attrs)
        SELECT uid, sid, d.package_name, d.dependency_type, d.version, d.version_range, d.scope, d.attrs
          FROM diff d WHERE d.kind = 'added'
    ), upd AS (
        UPDATE lattice.dependencies x
           SET version = d.version, version_range = d.version_range, scope = d.scope, attrs = d.attrs,
               removed_at = NULL, last_seen = pg_catalog.now()
          FROM diff d WHERE x.id = d.id AND d.kind IN ('readded', 'version', 'updated')
    ), rem AS (
        UPDATE lattice.dependencies x SET removed_at = pg_catalog.now()
          FROM diff d WHERE x.id = d.id AND d.kind = 'removed'
    )
    INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value, new_value)
    SELECT uid, sid,
           CASE d.kind WHEN 'removed' THEN 'dependency_removed'
                       WHEN 'version' THEN 'dependency_version_changed'
                       ELSE 'dependency_added' END,
           d.package_name || CASE WHEN d.dependency_type = 'direct' THEN '' ELSE ' (' || d.dependency_type || ')' END,
           CASE WHEN d.kind IN ('version', 'removed') THEN d.old_version END,
           CASE WHEN d.kind <> 'removed' THEN d.version END
      FROM diff d
     WHERE d.kind IN ('added', 'readded', 'removed', 'version') AND NOT is_new
     ORDER BY d.kind, d.package_name, d.dependency_type;

    IF changed_state THEN
        PERFORM lattice.ingest_graph_changed();
    END IF;

    RETURN pg_catalog.jsonb_build_object('success', true, 'serviceId', sid,
                                         'routesProcessed', chk.routes,
                                         'dependenciesProcessed', chk.dependencies);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_preflight(user_id uuid, req jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    ct text := req ->> 'content_type';
BEGIN
    IF ct IS NOT NULL AND pg_catalog.lower(pg_catalog.split_part(ct, ';', 1)) <> 'application/json' THEN
        PERFORM lattice.raise_http(415, 'unsupported_media_type', 'send the body as application/json');
    END IF;
    RETURN lattice.require_ingest(ingest_preflight.user_id);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_traces(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    doc jsonb;
BEGIN
    PERFORM lattice.ingest_tenant();
    PERFORM lattice.ingest_check('traces', body);
    doc := body::jsonb;
    PERFORM lattice.rate_enforce_ingest(doc #>> '{traces,0,service_id}');
    RETURN lattice.ingest_trace_doc(doc);
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
BEGIN
    PERFORM lattice.rate_enforce_address(req, 'login');
    b := lattice.auth_body(body);
    account := lattice.login(lattice.auth_field(b, 'email'), lattice.auth_field(b, 'password'), req);
    IF account IS NULL THEN
        RETURN lattice.http_error(401, 'invalid_credentials', 'the email or the password is wrong');
    END IF;
    SELECT * INTO s FROM lattice.session_create(req);
    RETURN lattice.http_json(200, jsonb_build_object('user', lattice.user_json(account)),
        lattice.session_cookies(s.token, s.csrf,
                    extract(epoch FROM s.expires_at - lattice.clock_now())::integer, req));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_logout(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    sid uuid := lattice.current_session_id();
BEGIN
    IF sid IS NOT NULL THEN
        UPDATE lattice.sessions SET revoked_at = lattice.clock_now()
         WHERE id = sid AND revoked_at IS NULL;
        PERFORM lattice.audit('logout', sid::text, NULL, req, account);
    END IF;
    RETURN lattice.auth_answer(204, NULL, lattice.session_cookies(NULL, NULL, 0, req));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_me(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'any');
BEGIN
    RETURN lattice.auth_answer(200, (
        SELECT jsonb_build_object(
                   'user', jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name,
                                              'plan', u.plan_id, 'trial_ends_at', u.trial_ends_at,
                                              'created_at', u.created_at),
                   'auth', jsonb_build_object('method', lattice.current_auth_method(),
                                              'scopes', to_jsonb(lattice.current_scopes())))
          FROM lattice.users u WHERE u.id = account));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_session_revoke(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    sid uuid := lattice.auth_uuid_param(req, 'id');
    found_id uuid;
BEGIN
    UPDATE lattice.sessions SET revoked_at = lattice.clock_now()
     WHERE id = sid AND revoked_at IS NULL
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_sessions(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('sessions', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', s.id, 'created_at', s.created_at,
                   'last_seen_at', date_trunc('minute', s.last_seen_at),
                   'expires_at', least(s.idle_expires_at, s.expires_at),
                   'client_addr', host(s.client_addr), 'user_agent', s.user_agent,
                   'current', s.id IS NOT DISTINCT FROM lattice.current_session_id())
                 ORDER BY s.created_at DESC)
          FROM lattice.sessions s
         WHERE s.revoked_at IS NULL AND least(s.idle_expires_at, s.expires_at) > now), '[]')));
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
BEGIN
    PERFORM lattice.rate_enforce_address(req, 'signup');
    b := lattice.auth_body(body);
    account := lattice.signup_user(lattice.auth_field(b, 'email'), lattice.auth_field(b, 'password'),
                                   lattice.auth_field(b, 'name'), req);
    SELECT * INTO s FROM lattice.session_create(req);
    RETURN lattice.http_json(201, jsonb_build_object('user', lattice.user_json(account)),
        lattice.session_cookies(s.token, s.csrf,
                    extract(epoch FROM s.expires_at - lattice.clock_now())::integer, req));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_token(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.billing_cancel(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_set_cancel(req, true);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.billing_checkout(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    b jsonb;
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    b := lattice.billing_body(body, ARRAY['plan']);
    -- one plan today: a named plan must be the account's own
    IF b ? 'plan' AND (jsonb_typeof(b -> 'plan') <> 'string' OR NOT EXISTS (
           SELECT FROM lattice.users u WHERE u.id = lattice.current_user_id() AND u.plan_id = b ->> 'plan')) THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'plan must name the account''s plan',
                                   '[{"path": "plan", "message": "unknown plan"}]');
    END IF;
    RETURN lattice.billing_checkout(req);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.billing_get(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
BEGIN
    RETURN lattice.http_json(200, lattice.billing_summary(account), lattice.entitlement_headers(account));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.billing_invoices(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
BEGIN
    RETURN lattice.http_json(200, lattice.billing_invoices(account), lattice.entitlement_headers(account));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.billing_portal(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_portal(req);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.billing_resume(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_set_cancel(req, false);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.error_get(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    gid uuid := lattice.ingest_param_uuid(req, 'id');
BEGIN
    RETURN lattice.http_json(200, lattice.error_detail_json(gid));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.error_update(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'session');
    gid uuid := lattice.ingest_param_uuid(req, 'id');
    doc jsonb;
    new_status text;
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
           resolved_at = CASE WHEN new_status = 'resolved' THEN pg_catalog.now() END
     WHERE g.id = gid AND g.user_id = uid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such error');
    END IF;
    RETURN lattice.http_json(200, lattice.error_detail_json(gid));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.errors_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
          FROM lattice.error_groups g JOIN lattice.services s ON s.id = g.service_id
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.events_subscribe(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
BEGIN
    RETURN lattice.http_json(200,
        jsonb_build_object('userId', uid, 'graphVersion', lattice.graph_version()));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph_cycles(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_cycles_json());
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph_dependencies(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'dependencies',
        COALESCE(lattice.graph_query(req, 'depth', 'positive')::integer, 1)));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph_dependents(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'dependents',
        COALESCE(lattice.graph_query(req, 'depth', 'positive')::integer, 1)));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph_diff(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph_order(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_order_json());
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.graph_path(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.ingest_breadcrumbs(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_breadcrumbs(body), h);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.ingest_error(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_error(body), h);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.ingest_errors(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_errors(body), h);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.ingest_legacy_metrics(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_legacy_metrics(body), h);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.ingest_metadata(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(200, lattice.ingest_metadata(body), h);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.ingest_traces(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.ingest_preflight(uid, req);
BEGIN
    RETURN lattice.http_json(201, lattice.ingest_traces(body), h);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_create(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
        'id', k.id, 'name', (SELECT a.name FROM lattice.api_keys a WHERE a.id = k.id),
        'key', k.key, 'prefix', k.prefix,
        'scopes', (SELECT to_jsonb(a.scopes) FROM lattice.api_keys a WHERE a.id = k.id),
        'created_at', k.created_at, 'expires_at', expires),
        jsonb_build_object('Location', '/api/v1/keys/' || k.id));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('keys', coalesce((
        SELECT jsonb_agg(lattice.api_key_json(k, now) ORDER BY k.created_at, k.id)
          FROM lattice.api_keys k), '[]')));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_revoke(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    kid uuid := lattice.auth_uuid_param(req, 'id');
    was_revoked timestamptz;
BEGIN
    SELECT revoked_at INTO was_revoked FROM lattice.api_keys WHERE id = kid FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such key');
    END IF;
    IF was_revoked IS NULL THEN
        UPDATE lattice.api_keys SET revoked_at = lattice.clock_now() WHERE id = kid;
        PERFORM lattice.audit('key.revoked', kid::text, NULL, req, account);
    END IF;
    RETURN lattice.auth_answer(204, NULL);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_rotate(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
        'scopes', (SELECT to_jsonb(a.scopes) FROM lattice.api_keys a WHERE a.id = k.id),
        'created_at', k.created_at, 'old_key_expires_at', k.old_key_expires_at),
        jsonb_build_object('Location', '/api/v1/keys/' || k.id));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.performance_metrics(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.service_changes(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
             WHERE c.service_id = sid AND (before IS NULL OR c.id < before)
               AND (want_kind IS NULL OR c.kind = want_kind)
             ORDER BY c.id DESC LIMIT lim) c;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'changes', items, 'nextBefore', CASE WHEN n = lim THEN last_id END));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.service_get(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
         WHERE st.service_id = sid AND st.bucket >= since
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
             WHERE r.service_id = sid AND r.removed_at IS NULL), '[]'),
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
              FROM lattice.dependencies d WHERE d.service_id = sid AND d.removed_at IS NULL), '[]'),
        'connections', pg_catalog.jsonb_build_object(
            'incoming', COALESCE((
                SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'serviceId', k.source_service_id, 'name', o.name, 'environment', o.environment,
                           'isExternal', o.is_external, 'firstSeen', k.first_seen, 'lastSeen', k.last_seen)
                           || lattice.stats_json(k.call_count, k.error_count, k.client_error_count,
                                                 k.total_duration_ms, k.latency_hist) ORDER BY o.name)
                  FROM lattice.connections k JOIN lattice.services o ON o.id = k.source_service_id
                 WHERE k.target_service_id = sid), '[]'),
            'outgoing', COALESCE((
                SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'serviceId', k.target_service_id, 'name', o.name, 'environment', o.environment,
                           'isExternal', o.is_external, 'firstSeen', k.first_seen, 'lastSeen', k.last_seen)
                           || lattice.stats_json(k.call_count, k.error_count, k.client_error_count,
                                                 k.total_duration_ms, k.latency_hist) ORDER BY o.name)
                  FROM lattice.connections k JOIN lattice.services o ON o.id = k.target_service_id
                 WHERE k.source_service_id = sid), '[]')),
        'recentChanges', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'id', c.id, 'kind', c.kind, 'subject', c.subject, 'oldValue', c.old_value,
                       'newValue', c.new_value, 'at', c.at)) ORDER BY c.at DESC, c.id DESC)
              FROM (SELECT * FROM lattice.service_changes c WHERE c.service_id = sid
                     ORDER BY c.at DESC, c.id DESC LIMIT 20) c), '[]'))
      INTO result;
    RETURN lattice.http_json(200, result);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.service_impact(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'impact', NULL));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.services_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
                               WHERE r.service_id = (p.s).id AND r.removed_at IS NULL),
               'dependencyCount', (SELECT pg_catalog.count(*) FROM lattice.dependencies d
                                    WHERE d.service_id = (p.s).id AND d.removed_at IS NULL))
               ORDER BY (p.s).name, (p.s).environment), '[]')
      INTO total, items
      FROM page_rows p;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'services', items, 'total', total, 'page', page, 'limit', lim));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.usage(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    u lattice.rate_usage;
    live jsonb;
    this_hour timestamptz := pg_catalog.date_trunc('hour', pg_catalog.now());
    classes jsonb;
    history jsonb;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    u := lattice.rate_usage();
    live := lattice.rate_usage_classes();

    -- refused in the 23 full hours before this one (rolled up) plus this
    -- hour's live count make the last 24 hours; every service counted this
    -- hour is listed, and those refused earlier in the 24 hours
    WITH past AS (
        SELECT h.class, h.subject, pg_catalog.sum(h.refused)::bigint AS refused
          FROM lattice.usage_hourly h
         WHERE h.hour >= this_hour - interval '23 hours' AND h.hour < this_hour
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
                     WHERE x.hour >= this_hour - interval '23 hours'
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
$function$;
REVOKE ALL ON FUNCTION lattice.api_key_create(uuid,text,timestamp with time zone,jsonb,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.api_key_create(uuid,text,timestamp with time zone,jsonb,text[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.authenticate(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.authenticate(jsonb,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.create_api_key(uuid,text,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.create_api_key(uuid,text,text[]) TO lattice_admin;
REVOKE ALL ON FUNCTION lattice.current_scopes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.current_scopes() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.metrics_figures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.metrics_figures() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.rate_class_totals() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.rate_class_totals() TO lattice_admin;
REVOKE ALL ON FUNCTION lattice.rate_enforce_ingest(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.rate_enforce_ingest(text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.rate_usage_classes() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.rate_usage_classes() TO lattice_app;
ALTER FUNCTION lattice_http.metrics_db() OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.metrics_db() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.metrics_db() TO lattice_api;
ALTER FUNCTION lattice_http.rate_state() OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.rate_state() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.rate_state() TO lattice_api;
