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
