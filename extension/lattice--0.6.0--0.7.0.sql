-- lattice 0.6.0 -> 0.7.0: the install script's parts regrouped (the e-mail
-- templates in one part, every part's HTTP answers in its own
-- NN_http_<concern>.sql), its comments made true.  Trace ingest sums its
-- edges with one helper (lattice.ingest_edge_batch over the new type
-- lattice.ingest_call), as does OpenTelemetry ingest; sign-up and login
-- open their session with lattice.session_answer.  No table changes.
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.7.0'" to load this file. \quit

-- One call between two nodes: its ends, when it started, how long it took
-- and its HTTP status.
CREATE TYPE lattice.ingest_call AS (
    source      uuid,
    target      uuid,
    at          timestamptz,
    duration_ms double precision,
    status      integer
);

-- Functions: dropped, then every new or changed definition.

CREATE OR REPLACE FUNCTION lattice.ingest_edge_batch(calls lattice.ingest_call[])
 RETURNS lattice.ingest_edge[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.session_answer(status integer, account uuid, req jsonb)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    s record;
BEGIN
    SELECT * INTO s FROM lattice.session_create(req);
    RETURN lattice.http_json(status, jsonb_build_object('user', lattice.user_json(account)),
        lattice.session_cookies(s.token, s.csrf,
                    extract(epoch FROM s.expires_at - lattice.clock_now())::integer, req));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_trace_doc(doc jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_named_edges(tenant uuid, calls jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
    -- an account subscribes to its own plan: a named plan must be that one
    IF b ? 'plan' AND (jsonb_typeof(b -> 'plan') <> 'string' OR NOT EXISTS (
           SELECT FROM lattice.users u WHERE u.id = lattice.current_user_id() AND u.plan_id = b ->> 'plan')) THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'plan must name the account''s plan',
                                   '[{"path": "plan", "message": "unknown plan"}]');
    END IF;
    RETURN lattice.billing_checkout(req);
END
$function$;
REVOKE ALL ON FUNCTION lattice.ingest_edge_batch(lattice.ingest_call[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.ingest_edge_batch(lattice.ingest_call[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.session_answer(integer,uuid,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.session_answer(integer,uuid,jsonb) TO lattice_app;
