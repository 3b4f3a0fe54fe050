-- lattice 0.4.0 -> 0.5.0: alerts (docs/alerts.md): rules, channels (e-mail,
-- signed webhooks, Slack), incidents evaluated by the worker's tick, and
-- their delivery through the outbox; per-edge traffic buckets
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.5.0'" to load this file. \quit

-- the route_stats bucket index the alert tick reads
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

ALTER TABLE lattice.account_tokens DROP CONSTRAINT account_tokens_purpose_check,
    ADD CONSTRAINT account_tokens_purpose_check CHECK (purpose IN ('verify_email', 'change_email', 'alert_recipient'));

-- Webhook jobs in the outbox
ALTER TABLE lattice.outbox ADD COLUMN url text, ADD COLUMN body text,
    DROP CONSTRAINT outbox_kind_check,
    ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('stripe', 'email', 'webhook')),
    ADD CONSTRAINT outbox_check2 CHECK (kind <> 'webhook' OR (url IS NOT NULL AND body IS NOT NULL));
CREATE INDEX ON lattice.outbox (account_id, id) WHERE purpose LIKE 'alert.%';

-- The account's settings as stored (only what it changed); defaults apply
-- to the rest, so a rule field added later has its default everywhere.
CREATE TABLE lattice.alert_settings (
    user_id     uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    config      jsonb NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

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

DO $security$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY['lattice.edge_stats', 'lattice.alert_settings', 'lattice.alert_channels',
                             'lattice.alert_incidents', 'lattice.alert_mutes']::regclass[] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_select ON %s FOR SELECT USING (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_update ON %s FOR UPDATE USING (user_id = lattice.current_user_id()) WITH CHECK (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_delete ON %s FOR DELETE USING (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO lattice_app', t);
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO lattice_admin', t);
        PERFORM pg_catalog.pg_extension_config_dump(t, '');
    END LOOP;
    GRANT USAGE ON SEQUENCE lattice.alert_incidents_id_seq TO lattice_app;
END
$security$;

-- The shim's side of the outbox: webhook fields in the claimed job, claims by kind
ALTER TYPE lattice_worker.job ADD ATTRIBUTE url text, ADD ATTRIBUTE body text,
    ADD ATTRIBUTE headers jsonb, ADD ATTRIBUTE allow_loopback boolean;
DROP FUNCTION lattice_worker.outbox_claim_due(integer);

-- Functions: dropped, then every new or changed definition.

CREATE OR REPLACE FUNCTION lattice.alert_candidates_down(at timestamp with time zone, since timestamp with time zone)
 RETURNS SETOF lattice.alert_candidate
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_candidates_errors(at timestamp with time zone)
 RETURNS SETOF lattice.alert_candidate
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_candidates_ingest(at timestamp with time zone, since timestamp with time zone)
 RETURNS SETOF lattice.alert_candidate
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_candidates_latency(at timestamp with time zone)
 RETURNS SETOF lattice.alert_candidate
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_candidates_topology(graph_from bigint, graph_to bigint, change_from bigint, change_to bigint)
 RETURNS SETOF lattice.alert_candidate
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_channel_body(body text, allowed text[])
 RETURNS jsonb
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_channel_forget(channel uuid)
 RETURNS void
 LANGUAGE sql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    DELETE FROM lattice.outbox o
     WHERE o.account_id = lattice.current_user_id() AND o.purpose LIKE 'alert.%'
       AND o.context ->> 'channel' = channel::text AND o.status = 'pending';
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_channel_get(account uuid, req jsonb)
 RETURNS lattice.alert_channels
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_channel_json(c lattice.alert_channels)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT pg_catalog.jsonb_build_object(
        'id', c.id, 'kind', c.kind, 'name', c.name,
        'target', CASE WHEN c.kind = 'email' THEN c.target
                       ELSE pg_catalog.regexp_replace(c.target, '^([a-zA-Z]+://[^/?#]+).*$', '\1') || '/…'
                            || pg_catalog.right(c.target, 4) END,
        'enabled', c.enabled, 'verified', c.verified_at IS NOT NULL, 'created_at', c.created_at,
        'last_delivery', lattice.alert_deliveries(c.id, 1) -> 0)
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_config(config jsonb)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$ SELECT lattice.alert_merge(lattice.alert_defaults(), config) $function$;

CREATE OR REPLACE FUNCTION lattice.alert_config_of(account uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT lattice.alert_config((SELECT s.config FROM lattice.alert_settings s WHERE s.user_id = account)));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_defaults()
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_deliveries(channel uuid, lim integer)
 RETURNS jsonb
 LANGUAGE sql
 STABLE SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', o.id, 'event', o.context ->> 'event', 'incident_id', o.context -> 'incident',
               'status', o.status, 'attempts', o.attempts, 'response_status', o.response_status,
               'last_error', o.last_error, 'created_at', o.created_at, 'done_at', o.done_at,
               'next_attempt_at', CASE WHEN o.status = 'pending' THEN o.next_attempt_at END) ORDER BY o.id DESC), '[]')
      FROM (SELECT * FROM lattice.outbox x
             WHERE x.account_id = lattice.current_user_id() AND x.purpose LIKE 'alert.%'
               AND x.context ->> 'channel' = channel::text
             ORDER BY x.id DESC LIMIT lim) o
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_enqueue(c lattice.alert_channels, event text, incident jsonb, interactive boolean DEFAULT false)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_fields()
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_incident_get(account uuid, req jsonb)
 RETURNS lattice.alert_incidents
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_incident_json(i lattice.alert_incidents, muted_until timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT pg_catalog.jsonb_build_object(
        'id', i.id, 'rule', i.rule, 'status', i.status, 'subject', i.subject, 'summary', i.summary,
        'value', i.value, 'opened_at', i.opened_at, 'resolved_at', i.resolved_at,
        'acknowledged_at', i.acknowledged_at, 'muted_until', muted_until, 'notified', i.notified)
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_incident_view(i lattice.alert_incidents)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT lattice.alert_incident_json(i, (SELECT m.until FROM lattice.alert_mutes m
                                            WHERE m.user_id = i.user_id AND m.rule = i.rule
                                              AND m.subject_key = i.subject_key AND m.until > pg_catalog.now())));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_max_window(rule text)
 RETURNS interval
 LANGUAGE plpgsql
 STABLE
AS $function$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT pg_catalog.make_interval(mins => GREATEST(
        (lattice.alert_defaults() #>> ARRAY['rules', rule, 'window_minutes'])::integer,
        (SELECT pg_catalog.max((s.config #>> ARRAY['rules', rule, 'window_minutes'])::integer)
           FROM lattice.alert_settings s))));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_merge(base jsonb, patch jsonb)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT (base - 'rules') || (COALESCE(patch, '{}') - 'rules')
           || pg_catalog.jsonb_build_object('rules', COALESCE((
                  SELECT pg_catalog.jsonb_object_agg(k.rule, COALESCE(base #> ARRAY['rules', k.rule], '{}')
                                                             || COALESCE(patch #> ARRAY['rules', k.rule], '{}'))
                    FROM (SELECT pg_catalog.jsonb_object_keys(COALESCE(base -> 'rules', '{}'))
                          UNION SELECT pg_catalog.jsonb_object_keys(COALESCE(patch -> 'rules', '{}'))) AS k(rule)),
                  '{}'))
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_notify(i lattice.alert_incidents, event text)
 RETURNS integer
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_open(c lattice.alert_candidate, at timestamp with time zone)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_prune(at timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    at := COALESCE(at, lattice.clock_now());
    DELETE FROM lattice.alert_incidents x WHERE x.status = 'resolved' AND x.resolved_at < at - interval '90 days';
    DELETE FROM lattice.alert_mutes m WHERE m.until < at;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_recent_traffic(rule text, lo timestamp with time zone, hi timestamp with time zone)
 RETURNS TABLE(user_id uuid, kind text, key text, a uuid, b uuid, method text, path text, bucket timestamp with time zone, requests bigint, errors bigint, hist bigint[], r jsonb)
 LANGUAGE plpgsql
 STABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_recheck(i lattice.alert_incidents, cfg jsonb, at timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_service_name(account uuid, service uuid)
 RETURNS text
 LANGUAGE plpgsql
 STABLE
AS $function$
DECLARE
    n text;
BEGIN
    SELECT s.name INTO n FROM lattice.services s WHERE s.user_id = account AND s.id = service;
    RETURN n;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_tick(at timestamp with time zone DEFAULT NULL::timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET work_mem TO '64MB'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_traffic(kind text, account uuid, a uuid, b uuid, method text, path text, from_at timestamp with time zone, to_at timestamp with time zone, OUT requests bigint, OUT errors bigint, OUT p95 double precision)
 RETURNS record
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_url_require(url text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_validate(patch jsonb)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_validate_value(v jsonb, spec jsonb, path text)
 RETURNS void
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.alert_webhook_headers(job bigint, account uuid, channel uuid, body text)
 RETURNS jsonb
 LANGUAGE c
 STABLE
AS '$libdir/lattice', $function$lattice_alert_webhook_headers$function$;

CREATE OR REPLACE FUNCTION lattice.outbound_allow_loopback()
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$ SELECT pg_catalog.current_setting('lattice.outbound_allow_loopback')::boolean $function$;

CREATE OR REPLACE FUNCTION lattice.outbound_url_check(url text)
 RETURNS text
 LANGUAGE c
 STRICT
AS '$libdir/lattice', $function$lattice_outbound_url_check$function$;

CREATE OR REPLACE FUNCTION lattice.webhook_secret_new(OUT secret text, OUT sealed bytea)
 RETURNS record
 LANGUAGE c
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS '$libdir/lattice', $function$lattice_webhook_secret_new$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channel_create(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channel_delete(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    DELETE FROM lattice.alert_channels x WHERE x.user_id = account AND x.id = c.id;
    PERFORM lattice.alert_channel_forget(c.id);
    PERFORM lattice.audit('alerts.channel_deleted', c.id::text, jsonb_build_object('kind', c.kind), req, account);
    RETURN lattice.http_json(204, NULL);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channel_deliveries(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    RETURN lattice.http_json(200, jsonb_build_object('deliveries',
        lattice.alert_deliveries(c.id, lattice.ingest_query_int(req, 'limit', 50, 1, 100))));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channel_secret(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channel_test(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channel_update(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_channels_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_incident_acknowledge(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_incident_mute(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_incidents_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_recipient_verify(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_rules_get(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
BEGIN
    RETURN lattice.http_json(200, lattice.alert_config_of(account)
                                  || jsonb_build_object('defaults', lattice.alert_defaults()));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.alert_rules_put(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_email_content(template text, name text, data jsonb, OUT subject text, OUT text_body text, OUT html_body text)
 RETURNS record
 LANGUAGE plpgsql
 IMMUTABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_prune(user_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    before timestamptz := pg_catalog.now() - lattice.ingest_setting('retention');
BEGIN
    DELETE FROM lattice.route_stats s WHERE s.user_id = ingest_prune.user_id AND s.bucket < before;
    DELETE FROM lattice.edge_stats s WHERE s.user_id = ingest_prune.user_id AND s.bucket < before;
    DELETE FROM lattice.error_occurrences o WHERE o.user_id = ingest_prune.user_id AND o.at < before;
    DELETE FROM lattice.breadcrumbs b WHERE b.user_id = ingest_prune.user_id AND b.received_at < before;
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
    edges jsonb;
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
        INSERT INTO lattice.services (user_id, name, environment, is_external, status)
        SELECT DISTINCT uid, r.caller, r.environment, true, 'external'
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

    INSERT INTO lattice.edge_stats AS s
        (user_id, source_service_id, target_service_id, bucket, call_count, error_count,
         total_duration_ms, latency_hist)
    SELECT uid, e.source, e.target, e.bucket, pg_catalog.sum(e.calls), pg_catalog.sum(e.errors),
           pg_catalog.sum(e.total_ms), lattice.hist_sum(e.hist)
      FROM pg_catalog.unnest(edge_batch) e
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
        SELECT uid, e.source, e.target, pg_catalog.sum(e.calls), pg_catalog.sum(e.errors),
               pg_catalog.sum(e.client_errors), pg_catalog.sum(e.total_ms), lattice.hist_sum(e.hist),
               pg_catalog.min(e.first_at), pg_catalog.max(e.last_at)
          FROM pg_catalog.unnest(edge_batch) e
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
    new_edges := pg_catalog.jsonb_array_length(edges);
    INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
    SELECT uid, e.at, 'edge_added', e.source, e.target
      FROM pg_catalog.jsonb_to_recordset(edges) AS e(source uuid, target uuid, at timestamptz)
    ON CONFLICT DO NOTHING;

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
REVOKE ALL ON FUNCTION lattice.alert_candidates_down(timestamp with time zone,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_candidates_errors(timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_candidates_ingest(timestamp with time zone,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_candidates_latency(timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_candidates_topology(bigint,bigint,bigint,bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_channel_body(text,text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_channel_body(text,text[]) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_channel_forget(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_channel_forget(uuid) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_channel_get(uuid,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_channel_get(uuid,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_channel_json(lattice.alert_channels) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_channel_json(lattice.alert_channels) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_config(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_config(jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_config_of(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_config_of(uuid) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_defaults() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_defaults() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_deliveries(uuid,integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_deliveries(uuid,integer) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_enqueue(lattice.alert_channels,text,jsonb,boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_enqueue(lattice.alert_channels,text,jsonb,boolean) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_fields() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_fields() TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_incident_get(uuid,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_incident_get(uuid,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_incident_json(lattice.alert_incidents,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_incident_json(lattice.alert_incidents,timestamp with time zone) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_incident_view(lattice.alert_incidents) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_incident_view(lattice.alert_incidents) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_max_window(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_merge(jsonb,jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_merge(jsonb,jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_notify(lattice.alert_incidents,text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_open(lattice.alert_candidate,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_prune(timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_prune(timestamp with time zone) TO lattice_admin;
REVOKE ALL ON FUNCTION lattice.alert_recent_traffic(text,timestamp with time zone,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_recheck(lattice.alert_incidents,jsonb,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_service_name(uuid,uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_tick(timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_tick(timestamp with time zone) TO lattice_admin;
REVOKE ALL ON FUNCTION lattice.alert_traffic(text,uuid,uuid,uuid,text,text,timestamp with time zone,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.alert_url_require(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_url_require(text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_validate(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_validate(jsonb) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_validate_value(jsonb,jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.alert_validate_value(jsonb,jsonb,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.alert_webhook_headers(bigint,uuid,uuid,text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.outbound_allow_loopback() FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.outbound_url_check(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.outbound_url_check(text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.webhook_secret_new() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.webhook_secret_new() TO lattice_app;
ALTER FUNCTION lattice_http.alert_channel_create(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channel_create(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channel_create(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_channel_delete(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channel_delete(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channel_delete(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_channel_deliveries(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channel_deliveries(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channel_deliveries(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_channel_secret(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channel_secret(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channel_secret(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_channel_test(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channel_test(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channel_test(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_channel_update(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channel_update(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channel_update(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_channels_list(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_channels_list(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_channels_list(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_incident_acknowledge(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_incident_acknowledge(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_incident_acknowledge(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_incident_mute(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_incident_mute(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_incident_mute(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_incidents_list(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_incidents_list(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_incidents_list(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_recipient_verify(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_recipient_verify(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_recipient_verify(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_rules_get(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_rules_get(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_rules_get(jsonb,text) TO lattice_api;
ALTER FUNCTION lattice_http.alert_rules_put(jsonb,text) OWNER TO lattice_app;
REVOKE ALL ON FUNCTION lattice_http.alert_rules_put(jsonb,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice_http.alert_rules_put(jsonb,text) TO lattice_api;

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
CREATE OR REPLACE FUNCTION lattice_worker.outbox_claim(job_id bigint)
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
CREATE OR REPLACE FUNCTION lattice_worker.outbox_complete(job_id bigint, response_status integer,
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
