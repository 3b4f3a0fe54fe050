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
