-- The dependency graph: a version per tenant (the cache key of the C graph in
-- src/graph_cache.c and the change signal for the dashboard), a history of
-- services and connections appearing and disappearing, and the SQL API over
-- the C traversal.  Every function works on lattice.current_user_id() only:
-- the C code reads the tables through SPI as the caller, so RLS applies.

-- One row per tenant, moved by lattice.bump_graph_version() on every change
-- of topology or of a service's state.  Edge figures (call counts, errors,
-- durations) move without a bump: a backend reloads a cached graph once it
-- is lattice.graph_stats_max_age old (60 s), so answers show them that fresh.
CREATE TABLE lattice.graph_versions (
    user_id     uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    version     bigint NOT NULL DEFAULT 0,
    changed_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- What appeared and disappeared, and when: services (by id, with the name and
-- environment they had) and connections (by source and target).  Written by
-- the ingest functions; read by graph_services_at / graph_edges_at / graph_diff.
-- kind: service_added, service_removed, edge_added, edge_removed.
CREATE TABLE lattice.graph_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    user_id             uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    at                  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    kind                text NOT NULL,
    service_id          uuid,
    name                text,
    environment         text,
    source_service_id   uuid,
    target_service_id   uuid,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX ON lattice.graph_events (user_id, at);
SELECT pg_catalog.pg_extension_config_dump(
    pg_catalog.pg_get_serial_sequence('lattice.graph_events', 'id')::regclass, '');

-- Moves one tenant's graph version and tells listeners on channel
-- lattice_graph ('<user_id>:<version>', delivered at commit).  Runs as the
-- caller: RLS lets a tenant move only its own row.
CREATE FUNCTION lattice.graph_bump(tenant uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v bigint;
BEGIN
    INSERT INTO lattice.graph_versions AS g (user_id, version, changed_at)
    VALUES (tenant, 1, pg_catalog.now())
    ON CONFLICT (user_id) DO UPDATE SET version = g.version + 1, changed_at = EXCLUDED.changed_at
    RETURNING g.version INTO v;
    PERFORM pg_catalog.pg_notify('lattice_graph', tenant::text || ':' || v::text);
    RETURN v;
END
$$;

-- For ingest: the current tenant's topology or a service's state changed.
-- The ingest functions call it, and write graph_events, where they add
-- services and connections: no trigger does it for them (distributed tables
-- on Citus take none).
CREATE FUNCTION lattice.bump_graph_version() RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    IF tenant IS NULL THEN
        RAISE EXCEPTION 'lattice.bump_graph_version: no authenticated tenant'
            USING ERRCODE = 'invalid_authorization_specification';
    END IF;
    RETURN lattice.graph_bump(tenant);
END
$$;

-- The current tenant's graph version (0 before the first change).
CREATE FUNCTION lattice.graph_version() RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT COALESCE((SELECT version FROM lattice.graph_versions
                      WHERE user_id = lattice.current_user_id()), 0)
$$;

-- Traversal (C, src/graph_traverse.c).  Ids of another tenant's services are
-- not in the tenant's graph: they give "service not found" (404 over HTTP).
-- Depths and sizes are bounded by lattice.graph_max_depth and
-- lattice.graph_max_results; a NOTICE says when a bound cut an answer.
CREATE FUNCTION lattice.graph_neighbours(service uuid)
RETURNS TABLE (direction text, service_id uuid, name text, environment text,
               call_count bigint, error_count bigint, avg_duration_ms double precision,
               last_seen timestamptz)
    AS 'MODULE_PATHNAME', 'lattice_graph_neighbours' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_neighbours(uuid) IS
    'one hop both ways: the services it calls (dependency) and that call it (dependent), with the connection''s figures';

CREATE FUNCTION lattice.graph_dependencies(service uuid, depth integer DEFAULT 1)
RETURNS TABLE (service_id uuid, name text, environment text, distance integer,
               weakest_calls bigint, worst_error_rate double precision)
    AS 'MODULE_PATHNAME', 'lattice_graph_dependencies' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_dependencies(uuid, integer) IS
    'downstream: what the service calls, directly or through others, to depth hops (NULL: as deep as lattice.graph_max_depth)';

CREATE FUNCTION lattice.graph_dependents(service uuid, depth integer DEFAULT 1)
RETURNS TABLE (service_id uuid, name text, environment text, distance integer,
               weakest_calls bigint, worst_error_rate double precision)
    AS 'MODULE_PATHNAME', 'lattice_graph_dependents' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_dependents(uuid, integer) IS
    'upstream: what calls the service, directly or through others, to depth hops (NULL: as deep as lattice.graph_max_depth)';

CREATE FUNCTION lattice.graph_impact(service uuid)
RETURNS TABLE (service_id uuid, name text, environment text, distance integer,
               weakest_calls bigint, worst_error_rate double precision)
    AS 'MODULE_PATHNAME', 'lattice_graph_impact' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_impact(uuid) IS
    'the blast radius: everything that transitively depends on the service, with the hop distance; weakest_calls is the largest bottleneck call count and worst_error_rate the smallest worst error rate over the shortest paths';

CREATE FUNCTION lattice.graph_impact_summary(service uuid,
    OUT services integer, OUT max_distance integer, OUT truncated boolean)
    AS 'MODULE_PATHNAME', 'lattice_graph_impact_summary' LANGUAGE C STABLE STRICT;

CREATE FUNCTION lattice.graph_paths(from_service uuid, to_service uuid, max_paths integer DEFAULT 1)
RETURNS TABLE (path_no integer, hop integer, service_id uuid, name text, environment text)
    AS 'MODULE_PATHNAME', 'lattice_graph_paths' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_paths(uuid, uuid, integer) IS
    'the shortest call paths from one service to another (at most max_paths, bounded by lattice.graph_max_paths); hop 0 is from_service';

-- Cycles and deploy order (C, src/graph_scc.c).
CREATE FUNCTION lattice.graph_cycles()
RETURNS TABLE (cycle_no integer, size integer, service_ids uuid[], names text[])
    AS 'MODULE_PATHNAME', 'lattice_graph_cycles' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_cycles() IS
    'every strongly connected component of two or more services (services that reach each other)';

CREATE FUNCTION lattice.graph_order()
RETURNS TABLE (layer integer, service_id uuid, name text, environment text, cycle integer)
    AS 'MODULE_PATHNAME', 'lattice_graph_order' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_order() IS
    'deploy order: layer 0 calls nothing, layer k calls only lower layers; the members of a cycle share a layer and name their graph_cycles() cycle';

-- JSON answers (C): the dashboard's graph and the HTTP bodies.
CREATE FUNCTION lattice.graph_json(environment text DEFAULT NULL, active_only boolean DEFAULT false,
                                   min_calls bigint DEFAULT 0, since timestamptz DEFAULT NULL)
RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_json' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_json(text, boolean, bigint, timestamptz) IS
    'the graph as {"version", "nodes", "edges", "truncated"}; filters: environment, active services only, connections with at least min_calls calls, last seen since';

CREATE FUNCTION lattice.graph_reach_json(service uuid, direction text, depth integer DEFAULT 1)
RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_reach_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_paths_json(from_service uuid, to_service uuid, max_paths integer DEFAULT 1)
RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_paths_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_cycles_json() RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_cycles_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_order_json() RETURNS json
    AS 'MODULE_PATHNAME', 'lattice_graph_order_json' LANGUAGE C STABLE;

CREATE FUNCTION lattice.graph_cache_info(OUT version bigint, OUT services integer,
                                         OUT connections integer, OUT bytes bigint)
    AS 'MODULE_PATHNAME', 'lattice_graph_cache_info' LANGUAGE C STABLE;
COMMENT ON FUNCTION lattice.graph_cache_info() IS
    'the current tenant''s graph as cached in this backend (loaded if needed): version, size and memory';

-- History: the graph as it was at a time, and what changed between two.
-- The latest event at or before `at` decides whether a thing was there.
-- (PL/pgSQL: see lattice.user_json.)
CREATE FUNCTION lattice.graph_services_at(at timestamptz)
RETURNS TABLE (service_id uuid, name text, environment text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    RETURN QUERY
    SELECT s.service_id, s.name, s.environment
      FROM (SELECT DISTINCT ON (e.service_id) e.service_id, e.kind, e.name, e.environment
              FROM lattice.graph_events e
             WHERE e.user_id = tenant AND e.at <= graph_services_at.at
               AND e.kind IN ('service_added', 'service_removed')
             ORDER BY e.service_id, e.at DESC, e.id DESC) s
     WHERE s.kind = 'service_added';
END
$$;

CREATE FUNCTION lattice.graph_edges_at(at timestamptz)
RETURNS TABLE (source_service_id uuid, target_service_id uuid)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    RETURN QUERY
    SELECT c.source_service_id, c.target_service_id
      FROM (SELECT DISTINCT ON (e.source_service_id, e.target_service_id)
                   e.source_service_id, e.target_service_id, e.kind
              FROM lattice.graph_events e
             WHERE e.user_id = tenant AND e.at <= graph_edges_at.at
               AND e.kind IN ('edge_added', 'edge_removed')
             ORDER BY e.source_service_id, e.target_service_id, e.at DESC, e.id DESC) c
     WHERE c.kind = 'edge_added';
END
$$;

-- {"at", "nodes": [{id, name, environment}], "edges": [{source, target}]}
CREATE FUNCTION lattice.graph_at(at timestamptz) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'at', graph_at.at,
        'nodes', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', s.service_id, 'name', s.name,
                                                               'environment', s.environment)
                                            ORDER BY s.name, s.environment, s.service_id)
                             FROM lattice.graph_services_at(graph_at.at) s), '[]'),
        'edges', COALESCE((SELECT jsonb_agg(jsonb_build_object('source', e.source_service_id,
                                                               'target', e.target_service_id)
                                            ORDER BY e.source_service_id, e.target_service_id)
                             FROM lattice.graph_edges_at(graph_at.at) e), '[]'))
$$;

-- {"from", "to", "services_added", "services_removed", "edges_added",
--  "edges_removed"}; edges carry their services' names as known then.
CREATE FUNCTION lattice.graph_diff(from_time timestamptz, to_time timestamptz) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    WITH a AS (SELECT * FROM lattice.graph_services_at(from_time)),
         b AS (SELECT * FROM lattice.graph_services_at(to_time)),
         ea AS (SELECT * FROM lattice.graph_edges_at(from_time)),
         eb AS (SELECT * FROM lattice.graph_edges_at(to_time)),
         names AS (SELECT DISTINCT ON (service_id) service_id, name, environment
                     FROM (SELECT * FROM b UNION ALL SELECT * FROM a) x),
         edge_json AS (
             SELECT d.added, jsonb_agg(jsonb_build_object(
                        'source', d.source_service_id, 'source_name', ns.name,
                        'target', d.target_service_id, 'target_name', nt.name)
                        ORDER BY ns.name, nt.name, d.source_service_id, d.target_service_id) AS list
               FROM (SELECT true AS added, * FROM (SELECT * FROM eb EXCEPT SELECT * FROM ea) x
                     UNION ALL
                     SELECT false, * FROM (SELECT * FROM ea EXCEPT SELECT * FROM eb) y) d
               LEFT JOIN names ns ON ns.service_id = d.source_service_id
               LEFT JOIN names nt ON nt.service_id = d.target_service_id
              GROUP BY d.added)
    SELECT jsonb_build_object(
        'from', from_time, 'to', to_time,
        'services_added', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', b.service_id, 'name', b.name,
                                                                        'environment', b.environment)
                                                     ORDER BY b.name, b.service_id)
                                      FROM b WHERE b.service_id NOT IN (SELECT service_id FROM a)), '[]'),
        'services_removed', COALESCE((SELECT jsonb_agg(jsonb_build_object('id', a.service_id, 'name', a.name,
                                                                          'environment', a.environment)
                                                       ORDER BY a.name, a.service_id)
                                        FROM a WHERE a.service_id NOT IN (SELECT service_id FROM b)), '[]'),
        'edges_added', COALESCE((SELECT list FROM edge_json WHERE added), '[]'),
        'edges_removed', COALESCE((SELECT list FROM edge_json WHERE NOT added), '[]'))
$$;

GRANT EXECUTE ON FUNCTION
    lattice.graph_bump(uuid), lattice.bump_graph_version(), lattice.graph_version(),
    lattice.graph_neighbours(uuid), lattice.graph_dependencies(uuid, integer),
    lattice.graph_dependents(uuid, integer), lattice.graph_impact(uuid),
    lattice.graph_impact_summary(uuid), lattice.graph_paths(uuid, uuid, integer),
    lattice.graph_cycles(), lattice.graph_order(),
    lattice.graph_json(text, boolean, bigint, timestamptz),
    lattice.graph_reach_json(uuid, text, integer), lattice.graph_paths_json(uuid, uuid, integer),
    lattice.graph_cycles_json(), lattice.graph_order_json(), lattice.graph_cache_info(),
    lattice.graph_services_at(timestamptz), lattice.graph_edges_at(timestamptz),
    lattice.graph_at(timestamptz), lattice.graph_diff(timestamptz, timestamptz)
    TO lattice_app, lattice_admin;
