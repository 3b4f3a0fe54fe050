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
