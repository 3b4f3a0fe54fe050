-- lattice 0.5.0 -> 0.6.0: OpenTelemetry traces (docs/opentelemetry.md): the
-- OTLP/HTTP endpoint's mapping, database and queue nodes (services.kind), the
-- state that matches client and server spans across requests
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.6.0'" to load this file. \quit

-- A node's kind; the external nodes recorded so far are callers
ALTER TABLE lattice.services
    ADD COLUMN kind text NOT NULL DEFAULT 'service' CHECK (kind IN ('service', 'external', 'database', 'queue')),
    ADD CONSTRAINT services_check CHECK (kind = 'service' OR is_external);
UPDATE lattice.services SET kind = 'external' WHERE is_external;

-- One half of a cross-service call waiting for the other
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

DO $security$
BEGIN
    ALTER TABLE lattice.otlp_pending ENABLE ROW LEVEL SECURITY;
    ALTER TABLE lattice.otlp_pending FORCE ROW LEVEL SECURITY;
    CREATE POLICY tenant_select ON lattice.otlp_pending FOR SELECT USING (user_id = lattice.current_user_id());
    CREATE POLICY tenant_insert ON lattice.otlp_pending FOR INSERT WITH CHECK (user_id = lattice.current_user_id());
    CREATE POLICY tenant_update ON lattice.otlp_pending FOR UPDATE USING (user_id = lattice.current_user_id())
        WITH CHECK (user_id = lattice.current_user_id());
    CREATE POLICY tenant_delete ON lattice.otlp_pending FOR DELETE USING (user_id = lattice.current_user_id());
    GRANT SELECT, INSERT, UPDATE, DELETE ON lattice.otlp_pending TO lattice_app;
    GRANT SELECT ON lattice.otlp_pending TO lattice_admin;
    PERFORM pg_catalog.pg_extension_config_dump('lattice.otlp_pending', '');
END
$security$;

-- Functions: every new or changed definition.

-- Functions: dropped, then every new or changed definition.

CREATE OR REPLACE FUNCTION lattice.ingest_edges(tenant uuid, batch lattice.ingest_edge[])
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_otlp(body text, pre_rejected integer DEFAULT 0, pre_message text DEFAULT NULL::text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_expire(tenant uuid)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_expire_all()
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_flatten(body text, not_before timestamp with time zone, not_after timestamp with time zone)
 RETURNS jsonb
 LANGUAGE c
 IMMUTABLE PARALLEL SAFE STRICT
AS '$libdir/lattice', $function$lattice_otlp_flatten$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_match_capacity()
 RETURNS integer
 LANGUAGE sql
 STABLE PARALLEL SAFE
AS $function$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('lattice.otlp_match_capacity', true), ''), '10000')::integer
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_match_window()
 RETURNS interval
 LANGUAGE sql
 STABLE PARALLEL SAFE
AS $function$
    SELECT COALESCE(NULLIF(pg_catalog.current_setting('lattice.otlp_match_window', true), ''), '60 seconds')::interval
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_named_edges(tenant uuid, calls jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    width interval := lattice.ingest_bucket_width();
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

    SELECT pg_catalog.array_agg(ROW(e.source, e.target, e.bucket, e.n, e.e5, e.e4, e.total, e.h, e.first, e.last)
                                ::lattice.ingest_edge ORDER BY e.source, e.target, e.bucket)
      INTO batch
      FROM (SELECT CASE WHEN c.source_kind IS NULL THEN c.source::uuid
                        ELSE (names ->> (c.source || E'\n' || c.environment))::uuid END AS source,
                   CASE WHEN c.target_kind IS NULL THEN c.target::uuid
                        ELSE (names ->> (c.target || E'\n' || c.environment))::uuid END AS target,
                   pg_catalog.date_bin(width, c.at, timestamptz '2000-01-01') AS bucket,
                   pg_catalog.count(*) AS n,
                   pg_catalog.count(*) FILTER (WHERE c.status >= 500) AS e5,
                   pg_catalog.count(*) FILTER (WHERE c.status BETWEEN 400 AND 499) AS e4,
                   pg_catalog.sum(c.ms) AS total,
                   lattice.hist_of(pg_catalog.array_agg(c.ms)) AS h,
                   pg_catalog.min(c.at) AS first, pg_catalog.max(c.at) AS last
              FROM pg_catalog.jsonb_to_recordset(calls) AS c(source text, source_kind text, target text,
                       target_kind text, environment text, at timestamptz, ms double precision, status integer)
             GROUP BY 1, 2, 3) e
     WHERE e.source IS NOT NULL AND e.target IS NOT NULL AND e.source <> e.target;
    RETURN created + lattice.ingest_edges(tenant, batch);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_node(tenant uuid, name text, environment text, kind text, OUT id uuid, OUT added boolean)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.otlp_service(tenant uuid, name text, environment text, version text, language text, runtime text, OUT id uuid, OUT changed boolean)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.otlp_traces(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.require_ingest(uid);
BEGIN
    RETURN lattice.http_json(200, lattice.ingest_otlp(body, COALESCE((req #>> '{otlp,rejectedSpans}')::integer, 0),
                                                      req #>> '{otlp,rejectedMessage}'), h);
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

    -- Edges caller -> service, per bucket.  The caller is looked up by name
    -- (in `known`), preferring the callee's environment and registered services.
    SELECT pg_catalog.array_agg(ROW(src.source, src.target, src.bucket, src.n, src.e5, src.e4, src.total, src.h,
                                    src.first, src.last)::lattice.ingest_edge ORDER BY src.source, src.target, src.bucket)
      INTO edge_batch
      FROM (SELECT c.*, (SELECT x.id
                           FROM pg_catalog.jsonb_to_recordset(known)
                                AS x(id uuid, name text, environment text, is_external boolean,
                                     last_seen timestamptz)
                          WHERE x.name = c.caller
                          ORDER BY (x.environment = c.environment) DESC, x.is_external, x.last_seen DESC
                          LIMIT 1) AS source
              FROM (SELECT r.service_id AS target, r.caller, r.environment,
                           pg_catalog.date_bin(width, r.at, timestamptz '2000-01-01') AS bucket,
                           pg_catalog.count(*) AS n,
                           pg_catalog.count(*) FILTER (WHERE r.status >= 500) AS e5,
                           pg_catalog.count(*) FILTER (WHERE r.status BETWEEN 400 AND 499) AS e4,
                           pg_catalog.sum(r.duration_ms) AS total,
                           lattice.hist_of(pg_catalog.array_agg(r.duration_ms)) AS h,
                           pg_catalog.min(r.at) AS first, pg_catalog.max(r.at) AS last
                      FROM pg_catalog.unnest(batch) r
                     WHERE r.service_id IS NOT NULL AND r.caller IS NOT NULL
                     GROUP BY 1, 2, 3, 4) c) src
     WHERE src.source IS NOT NULL AND src.source <> src.target;

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
REVOKE ALL ON FUNCTION lattice.ingest_edges(uuid,lattice.ingest_edge[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.ingest_edges(uuid,lattice.ingest_edge[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.ingest_otlp(text,integer,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.ingest_otlp(text,integer,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_expire(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_expire(uuid) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_expire_all() FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.otlp_flatten(text,timestamp with time zone,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_flatten(text,timestamp with time zone,timestamp with time zone) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_match_capacity() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_match_capacity() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_match_window() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_match_window() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_named_edges(uuid,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_named_edges(uuid,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_node(uuid,text,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_node(uuid,text,text,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.otlp_service(uuid,text,text,text,text,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.otlp_service(uuid,text,text,text,text,text) TO lattice_app;
ALTER FUNCTION lattice_http.otlp_traces(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.otlp_traces(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.otlp_traces(jsonb,text) TO lattice_api;
