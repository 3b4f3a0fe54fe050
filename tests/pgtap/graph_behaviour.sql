-- The graph API on a small hand-made graph: figures, paths, order, cache
-- invalidation (including a rolled-back change), bounds, tenancy, history.
BEGIN;
SELECT plan(53);
SET client_min_messages = warning;  -- the bounds below raise NOTICEs by design

-- The test writes services and connections directly, so it does what the
-- ingest functions do where they add them (no trigger does it): record the
-- change in lattice.graph_events and move each tenant's graph version.
-- Added rows happen at their first_seen, removed ones now.  Pass the rows a
-- DML statement returned, e.g. WITH n AS (INSERT ... RETURNING *)
-- SELECT pg_temp.record_services('service_added', array_agg(n::lattice.services)) FROM n.
CREATE FUNCTION pg_temp.record_services(kind text, rows lattice.services[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lattice.graph_events (user_id, at, kind, service_id, name, environment)
    SELECT r.user_id, CASE record_services.kind WHEN 'service_added' THEN r.first_seen ELSE now() END,
           record_services.kind, r.id, r.name, r.environment
      FROM unnest(rows) r;
    PERFORM lattice.graph_bump(t) FROM (SELECT DISTINCT r.user_id FROM unnest(rows) r) u(t);
END
$$;
CREATE FUNCTION pg_temp.record_edges(kind text, rows lattice.connections[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
    SELECT r.user_id, CASE kind WHEN 'edge_added' THEN r.first_seen ELSE now() END, kind,
           r.source_service_id, r.target_service_id
      FROM unnest(rows) r;
    PERFORM lattice.graph_bump(t) FROM (SELECT DISTINCT r.user_id FROM unnest(rows) r) u(t);
END
$$;

INSERT INTO lattice.users (id, email, name) VALUES
    ('d0000000-0000-0000-0000-00000000000a', 'graph-a@example.com', 'A'),
    ('d0000000-0000-0000-0000-00000000000b', 'graph-b@example.com', 'B');

--   a -> b -> d -> e (self-call)      x is external, called by nobody yet
--   a -> c -> d
WITH n AS (
INSERT INTO lattice.services (id, user_id, name, is_external, first_seen) VALUES
    ('d0000000-0000-0000-0001-00000000000a', 'd0000000-0000-0000-0000-00000000000a', 'a', false, now() - interval '3 days'),
    ('d0000000-0000-0000-0001-00000000000b', 'd0000000-0000-0000-0000-00000000000a', 'b', false, now() - interval '3 days'),
    ('d0000000-0000-0000-0001-00000000000c', 'd0000000-0000-0000-0000-00000000000a', 'c', false, now() - interval '3 days'),
    ('d0000000-0000-0000-0001-00000000000d', 'd0000000-0000-0000-0000-00000000000a', 'd', false, now() - interval '3 days'),
    ('d0000000-0000-0000-0001-00000000000e', 'd0000000-0000-0000-0000-00000000000a', 'e', false, now() - interval '3 days'),
    ('d0000000-0000-0000-0001-0000000000ff', 'd0000000-0000-0000-0000-00000000000a', 'x', true, now() - interval '3 days'),
    ('d0000000-0000-0000-0002-00000000000a', 'd0000000-0000-0000-0000-00000000000b', 'y', false, now() - interval '3 days')
RETURNING *)
SELECT pg_temp.record_services('service_added', array_agg(n::lattice.services)) FROM n;
WITH n AS (
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count, total_duration_ms, first_seen)
SELECT 'd0000000-0000-0000-0000-00000000000a', ('d0000000-0000-0000-0001-0000000000' || s)::uuid,
       ('d0000000-0000-0000-0001-0000000000' || t)::uuid, calls, errs, calls * 2.5, now() - age
  FROM (VALUES ('0a', '0b', 100, 1, interval '2 days'), ('0a', '0c', 10, 0, interval '1 day'),
               ('0b', '0d', 50, 0, interval '1 day'), ('0c', '0d', 500, 0, interval '1 day'),
               ('0d', '0e', 1000, 10, interval '1 day'), ('0e', '0e', 7, 0, interval '1 day')) v(s, t, calls, errs, age)
RETURNING *)
SELECT pg_temp.record_edges('edge_added', array_agg(n::lattice.connections)) FROM n;
-- a -> b's durations: 90 fast calls and 10 slow ones
UPDATE lattice.connections
   SET latency_hist = lattice.hist_of(array_fill(3.0::float8, ARRAY[90]) || array_fill(700.0::float8, ARRAY[10]))
 WHERE source_service_id = 'd0000000-0000-0000-0001-00000000000a'
   AND target_service_id = 'd0000000-0000-0000-0001-00000000000b';

SELECT lattice.test_set_tenant('d0000000-0000-0000-0000-00000000000a');
SET ROLE lattice_app;

-- figures
SELECT results_eq(
    $$SELECT name, distance, weakest_calls, round(worst_error_rate::numeric, 4)
        FROM lattice.graph_impact('d0000000-0000-0000-0001-00000000000e') ORDER BY distance, name$$,
    $$VALUES ('d', 1, 1000::bigint, 0.01), ('b', 2, 50, 0.01), ('c', 2, 500, 0.01), ('a', 3, 50, 0.01)$$,
    'impact: distance and the weakest link of the best shortest path');
SELECT results_eq(
    $$SELECT services, max_distance, truncated FROM lattice.graph_impact_summary('d0000000-0000-0000-0001-00000000000e')$$,
    $$VALUES (4, 3, false)$$, 'impact summary: size and depth of the blast radius');
SELECT results_eq(
    $$SELECT name FROM lattice.graph_dependencies('d0000000-0000-0000-0001-00000000000a', 1) ORDER BY name$$,
    ARRAY['b', 'c'], 'dependencies to 1 hop');
SELECT results_eq(
    $$SELECT name, distance FROM lattice.graph_dependencies('d0000000-0000-0000-0001-00000000000a', 2) ORDER BY name$$,
    $$VALUES ('b', 1), ('c', 1), ('d', 2)$$, 'dependencies to 2 hops, with distances');
SELECT results_eq(
    $$SELECT direction, name, call_count, avg_duration_ms FROM lattice.graph_neighbours('d0000000-0000-0000-0001-00000000000d') ORDER BY 1, 2$$,
    $$VALUES ('dependency', 'e', 1000::bigint, 2.5::float8), ('dependent', 'b', 50, 2.5), ('dependent', 'c', 500, 2.5)$$,
    'neighbours both ways with the connection figures');
SELECT is((SELECT count(*)::int FROM lattice.graph_dependents('d0000000-0000-0000-0001-0000000000ff', 5)), 0,
          'a service nobody calls has no dependents');

-- paths
SELECT results_eq(
    $$SELECT string_agg(name, '>' ORDER BY hop) FROM lattice.graph_paths('d0000000-0000-0000-0001-00000000000a',
                                                                    'd0000000-0000-0000-0001-00000000000e', 5)
      GROUP BY path_no ORDER BY 1$$,
    ARRAY['a>b>d>e', 'a>c>d>e'], 'both shortest paths');
SELECT is((SELECT count(DISTINCT path_no)::int FROM lattice.graph_paths('d0000000-0000-0000-0001-00000000000a',
                                                                      'd0000000-0000-0000-0001-00000000000e')), 1,
          'one path by default');
SELECT is_empty($$SELECT * FROM lattice.graph_paths('d0000000-0000-0000-0001-00000000000e', 'd0000000-0000-0000-0001-00000000000a')$$,
                'no path against the calls');
SELECT is((lattice.graph_paths_json('d0000000-0000-0000-0001-00000000000a', 'd0000000-0000-0000-0001-00000000000e', 1)::jsonb
           - 'paths' - 'from' - 'to'),
          '{"distance": 3, "more_paths": true, "truncated": true}'::jsonb, 'path JSON says more paths exist');
SELECT is((SELECT string_agg(name, '>' ORDER BY hop) FROM lattice.graph_paths('d0000000-0000-0000-0001-00000000000e',
                                                                         'd0000000-0000-0000-0001-00000000000e')),
          'e', 'a path to itself is the service alone');

-- order and cycles
SELECT results_eq($$SELECT layer, name, cycle FROM lattice.graph_order() ORDER BY layer, name$$,
                  $$VALUES (0, 'e', NULL::int), (0, 'x', NULL), (1, 'd', NULL), (2, 'b', NULL), (2, 'c', NULL), (3, 'a', NULL)$$,
                  'deploy order: what is called first; a self-call is no cycle');
SELECT is_empty('SELECT * FROM lattice.graph_cycles()', 'no cycles yet');

-- cache invalidation: each change moves the version and the next answer
SELECT is((lattice.graph_cache_info()).version, lattice.graph_version(), 'the cached graph has the current version');
SELECT is((lattice.graph_cache_info()).services, 6, 'the cached graph holds the tenant''s services only');
WITH n AS (
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count)
VALUES ('d0000000-0000-0000-0000-00000000000a', 'd0000000-0000-0000-0001-00000000000e', 'd0000000-0000-0000-0001-00000000000b', 3)
RETURNING *)
SELECT pg_temp.record_edges('edge_added', array_agg(n::lattice.connections)) FROM n;
SELECT results_eq($$SELECT size, (SELECT array_agg(n ORDER BY n) FROM unnest(names) n) FROM lattice.graph_cycles()$$,
                  $$VALUES (3, ARRAY['b', 'd', 'e'])$$, 'a new call closing a loop shows up as a cycle at once');
SELECT results_eq($$SELECT layer, name, cycle FROM lattice.graph_order() ORDER BY layer, name$$,
                  $$VALUES (0, 'b', 1), (0, 'd', 1), (0, 'e', 1), (0, 'x', NULL), (1, 'c', NULL), (2, 'a', NULL)$$,
                  'order reports the cycle instead of failing');
SELECT is((lattice.graph_cycles_json()::jsonb) ->> 'count', '1', 'cycles JSON counts it');
SELECT is((lattice.graph_order_json()::jsonb) ->> 'acyclic', 'false', 'order JSON says the graph is not acyclic');
WITH d AS (
DELETE FROM lattice.connections WHERE source_service_id = 'd0000000-0000-0000-0001-00000000000e'
                                  AND target_service_id = 'd0000000-0000-0000-0001-00000000000b'
RETURNING *)
SELECT pg_temp.record_edges('edge_removed', array_agg(d::lattice.connections)) FROM d;
SELECT is_empty('SELECT * FROM lattice.graph_cycles()', 'deleting the call removes the cycle');
UPDATE lattice.services SET status = 'inactive' WHERE id = 'd0000000-0000-0000-0001-00000000000b';
SELECT lattice.bump_graph_version();  -- a service's state changed
SELECT is((SELECT count(*)::int FROM json_array_elements(lattice.graph_json(active_only => true) -> 'nodes')), 5,
          'a state change is seen: active_only leaves the inactive service out');
SELECT is((SELECT count(*)::int FROM json_array_elements(lattice.graph_json(active_only => true) -> 'edges')), 4,
          'and the calls touching it');
UPDATE lattice.services SET status = 'active' WHERE id = 'd0000000-0000-0000-0001-00000000000b';
SELECT lattice.bump_graph_version();  -- a service's state changed
SELECT is((SELECT (e ->> 'p95_ms')::float8 FROM json_array_elements(lattice.graph_json() -> 'edges') e
            WHERE e ->> 'source' = 'd0000000-0000-0000-0001-00000000000a'
              AND e ->> 'target' = 'd0000000-0000-0000-0001-00000000000b'),
          (SELECT lattice.hist_percentile(latency_hist, 0.95) FROM lattice.connections
            WHERE source_service_id = 'd0000000-0000-0000-0001-00000000000a'
              AND target_service_id = 'd0000000-0000-0000-0001-00000000000b'),
          'an edge''s p95 comes from its latency histogram (in the slow bucket)');
SELECT is((SELECT e -> 'p95_ms' FROM json_array_elements(lattice.graph_json() -> 'edges') e
            WHERE e ->> 'source' = 'd0000000-0000-0000-0001-00000000000a'
              AND e ->> 'target' = 'd0000000-0000-0000-0001-00000000000c')::text,
          'null', 'an edge without durations has a null p95');
-- call counts move without a bump: a cached graph is reloaded once it is
-- lattice.graph_stats_max_age (60 s) old
UPDATE lattice.connections SET call_count = call_count + 1000
 WHERE source_service_id = 'd0000000-0000-0000-0001-00000000000a'
   AND target_service_id = 'd0000000-0000-0000-0001-00000000000c';
SELECT is((SELECT (e ->> 'calls')::int FROM json_array_elements(lattice.graph_json() -> 'edges') e
            WHERE e ->> 'target' = 'd0000000-0000-0000-0001-00000000000c'
              AND e ->> 'source' = 'd0000000-0000-0000-0001-00000000000a'),
          10, 'within a minute the cached graph answers (no reload for figures alone)');
RESET ROLE;
SELECT lattice.test_set_clock(now() + interval '61 seconds');
SET ROLE lattice_app;
SELECT is((SELECT (e ->> 'calls')::int FROM json_array_elements(lattice.graph_json() -> 'edges') e
            WHERE e ->> 'target' = 'd0000000-0000-0000-0001-00000000000c'
              AND e ->> 'source' = 'd0000000-0000-0000-0001-00000000000a'),
          1010, 'a minute later the figures are read again');
RESET ROLE;
SELECT lattice.test_set_clock(NULL);
SET ROLE lattice_app;

-- a rolled-back change, then another that reaches the same version number
SAVEPOINT before_x;
WITH n AS (
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id)
VALUES ('d0000000-0000-0000-0000-00000000000a', 'd0000000-0000-0000-0001-00000000000a', 'd0000000-0000-0000-0001-0000000000ff')
RETURNING *)
SELECT pg_temp.record_edges('edge_added', array_agg(n::lattice.connections)) FROM n;
SELECT results_eq($$SELECT name FROM lattice.graph_dependencies('d0000000-0000-0000-0001-00000000000a') ORDER BY name$$,
                  ARRAY['b', 'c', 'x'], 'inside the savepoint the new call is seen');
ROLLBACK TO SAVEPOINT before_x;
SELECT results_eq($$SELECT name FROM lattice.graph_dependencies('d0000000-0000-0000-0001-00000000000a') ORDER BY name$$,
                  ARRAY['b', 'c'], 'after the rollback it is gone');
WITH n AS (
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id)
VALUES ('d0000000-0000-0000-0000-00000000000a', 'd0000000-0000-0000-0001-00000000000a', 'd0000000-0000-0000-0001-00000000000e')
RETURNING *)
SELECT pg_temp.record_edges('edge_added', array_agg(n::lattice.connections)) FROM n;
SELECT results_eq($$SELECT name FROM lattice.graph_dependencies('d0000000-0000-0000-0001-00000000000a') ORDER BY name$$,
                  ARRAY['b', 'c', 'e'], 'a later change at the same version number is not mistaken for the rolled-back one');
WITH d AS (
DELETE FROM lattice.connections WHERE source_service_id = 'd0000000-0000-0000-0001-00000000000a'
                                  AND target_service_id = 'd0000000-0000-0000-0001-00000000000e'
RETURNING *)
SELECT pg_temp.record_edges('edge_removed', array_agg(d::lattice.connections)) FROM d;

-- bounds
RESET ROLE;  -- the bounds are superuser settings
SET lattice.graph_max_depth = 2;
SET ROLE lattice_app;
SELECT results_eq($$SELECT name FROM lattice.graph_impact('d0000000-0000-0000-0001-00000000000e') ORDER BY name$$,
                  ARRAY['b', 'c', 'd'], 'impact stops at lattice.graph_max_depth');
SELECT is((lattice.graph_reach_json('d0000000-0000-0000-0001-00000000000e', 'impact')::jsonb) -> 'truncated', 'true'::jsonb,
          'and its JSON says it was cut');
SELECT is((lattice.graph_impact_summary('d0000000-0000-0000-0001-00000000000e')).truncated, true, 'and so does the summary');
SELECT is((lattice.graph_reach_json('d0000000-0000-0000-0001-00000000000e', 'dependents', 1)::jsonb - 'services' - 'service'),
          '{"count": 1, "depth": 1, "direction": "dependents", "max_depth": 2, "truncated": false, "max_results": 100000,
            "max_distance": 1, "requested_depth": 1, "more_beyond_depth": true}'::jsonb,
          'a depth the caller chose is not a cut, but more_beyond_depth tells');
SELECT is((lattice.graph_reach_json('d0000000-0000-0000-0001-00000000000e', 'dependents', 50)::jsonb) -> 'depth', '2'::jsonb,
          'a deeper request is capped to the bound');
RESET ROLE;  -- the bounds are superuser settings
RESET lattice.graph_max_depth;
SET ROLE lattice_app;
RESET ROLE;  -- the bounds are superuser settings
SET lattice.graph_max_results = 2;
SET ROLE lattice_app;
SELECT is((SELECT count(*)::int FROM lattice.graph_impact('d0000000-0000-0000-0001-00000000000e')), 2,
          'impact lists at most lattice.graph_max_results services');
SELECT is((lattice.graph_reach_json('d0000000-0000-0000-0001-00000000000e', 'impact')::jsonb) -> 'truncated', 'true'::jsonb,
          'and says so');
SELECT is((SELECT json_array_length(g -> 'nodes') || '/' || (g ->> 'truncated')
             FROM lattice.graph_json() g), '2/true', 'the graph JSON is bounded too');
RESET ROLE;  -- the bounds are superuser settings
RESET lattice.graph_max_results;
SET ROLE lattice_app;
RESET ROLE;  -- the bounds are superuser settings
SET lattice.graph_max_paths = 1;
SET ROLE lattice_app;
SELECT is((SELECT count(DISTINCT path_no)::int FROM lattice.graph_paths('d0000000-0000-0000-0001-00000000000a',
                                                                      'd0000000-0000-0000-0001-00000000000e', 10)), 1,
          'paths are capped by lattice.graph_max_paths');
RESET ROLE;  -- the bounds are superuser settings
RESET lattice.graph_max_paths;
SET ROLE lattice_app;
SELECT throws_ok($$SELECT * FROM lattice.graph_dependents('d0000000-0000-0000-0001-00000000000e', 0)$$, '22023', NULL,
                 'depth 0 is refused');

-- tenancy: another tenant's id is not found, wherever it is used
SELECT throws_ok($$SELECT * FROM lattice.graph_impact('d0000000-0000-0000-0002-00000000000a')$$, 'PT404',
                 'no such service', 'a forged id of another tenant: impact says not found');
SELECT throws_ok($$SELECT * FROM lattice.graph_paths('d0000000-0000-0000-0001-00000000000a', 'd0000000-0000-0000-0002-00000000000a')$$,
                 'PT404', NULL, 'paths to another tenant''s service: not found');
SELECT throws_ok($$SELECT lattice.graph_reach_json('d0000000-0000-0000-0002-00000000000a', 'dependencies', 3)$$,
                 'PT404', NULL, 'dependencies of another tenant''s service: not found');
SELECT throws_ok($$SELECT * FROM lattice.graph_neighbours('d0000000-0000-0000-0002-00000000000a')$$,
                 'PT404', NULL, 'neighbours of another tenant''s service: not found');
SELECT ok((SELECT bool_and(n ->> 'name' <> 'y') FROM json_array_elements(lattice.graph_json() -> 'nodes') n),
          'the graph JSON never shows another tenant''s service');
RESET ROLE;
SELECT lattice.test_set_tenant('d0000000-0000-0000-0000-00000000000b');
SET ROLE lattice_app;
SELECT is((SELECT string_agg(n ->> 'name', ',') FROM json_array_elements(lattice.graph_json() -> 'nodes') n), 'y',
          'tenant B sees its own graph from the same backend cache');
SELECT throws_ok($$SELECT * FROM lattice.graph_dependents('d0000000-0000-0000-0001-00000000000e')$$, 'PT404', NULL,
                 'and A''s ids are not found for B');
SELECT is((SELECT count(*)::int FROM lattice.graph_services_at(now())), 1, 'B''s history holds only B''s service');
RESET ROLE;
SELECT lattice.test_set_tenant(NULL);
SET ROLE lattice_app;
SELECT throws_ok('SELECT lattice.graph_json()', '28000', NULL, 'no tenant, no graph');
RESET ROLE;
SET ROLE lattice_api;
SELECT throws_ok('SELECT lattice.graph_json()', '42501', NULL, 'the shim''s role cannot call the SQL API directly');
RESET ROLE;

-- history: the graph at a time, and what changed
SELECT lattice.test_set_tenant('d0000000-0000-0000-0000-00000000000a');
SET ROLE lattice_app;
WITH d AS (DELETE FROM lattice.services WHERE id = 'd0000000-0000-0000-0001-0000000000ff' RETURNING *)
SELECT pg_temp.record_services('service_removed', array_agg(d::lattice.services)) FROM d;
WITH d AS (
DELETE FROM lattice.connections WHERE source_service_id = 'd0000000-0000-0000-0001-00000000000c'
                                  AND target_service_id = 'd0000000-0000-0000-0001-00000000000d'
RETURNING *)
SELECT pg_temp.record_edges('edge_removed', array_agg(d::lattice.connections)) FROM d;
SELECT is((SELECT jsonb_array_length(g -> 'nodes') || '/' || jsonb_array_length(g -> 'edges')
             FROM lattice.graph_at(now() - interval '36 hours') g), '6/1', 'the graph 36 hours ago: six services, one call');
SELECT is((SELECT jsonb_array_length(g -> 'nodes') || '/' || jsonb_array_length(g -> 'edges')
             FROM lattice.graph_at(now()) g), '5/5', 'the graph now');
SELECT is((SELECT jsonb_build_object(
                 'services_removed', (SELECT jsonb_agg(s -> 'name') FROM jsonb_array_elements(d -> 'services_removed') s),
                 'edges_added', (SELECT jsonb_agg((e ->> 'source_name') || '>' || (e ->> 'target_name'))
                                   FROM jsonb_array_elements(d -> 'edges_added') e),
                 'edges_removed', (SELECT jsonb_agg((e ->> 'source_name') || '>' || (e ->> 'target_name'))
                                     FROM jsonb_array_elements(d -> 'edges_removed') e))
             FROM lattice.graph_diff(now() - interval '36 hours', now()) d),
          '{"services_removed": ["x"], "edges_added": ["a>c", "b>d", "d>e", "e>e"], "edges_removed": null}'::jsonb,
          'the diff: calls added since, the removed service');
SELECT is((SELECT (d -> 'edges_removed') FROM lattice.graph_diff(now() - interval '1 hour', now()) d),
          '[{"source": "d0000000-0000-0000-0001-00000000000c", "target": "d0000000-0000-0000-0001-00000000000d", "source_name": "c", "target_name": "d"}]'::jsonb,
          'a removed call shows in the diff with its services'' names');

SELECT * FROM finish();
ROLLBACK;
