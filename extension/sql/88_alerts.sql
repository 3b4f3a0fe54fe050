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
