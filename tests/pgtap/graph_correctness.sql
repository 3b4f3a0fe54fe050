-- The C traversal against WITH RECURSIVE on seeded random graphs: sparse,
-- dense, cyclic, acyclic, disconnected, with self-loops and external
-- services.  Every start node of every graph; sets and distances must match.
BEGIN;
SELECT plan(72);

SET lattice.graph_max_depth = 1000;

-- Services s0..s(n-1) and m random calls, seeded; loops allows self-calls,
-- dag only allows calls from lower to higher numbers.
CREATE FUNCTION pg_temp.make_graph(owner uuid, n int, m int, seed float8, loops bool, dag bool)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE i int; a int; b int; ids uuid[]; calls bigint;
BEGIN
    PERFORM setseed(seed);
    INSERT INTO lattice.users (id, email, name) VALUES (owner, owner || '@graph.test', 'graph');
    FOR i IN 0 .. n - 1 LOOP
        ids[i] := gen_random_uuid();
        INSERT INTO lattice.services (id, user_id, name, environment, status, is_external)
        VALUES (ids[i], owner, 's' || i, CASE WHEN i % 3 = 0 THEN 'staging' ELSE 'production' END,
                CASE WHEN random() < 0.2 THEN 'inactive' ELSE 'active' END, random() < 0.15);
    END LOOP;
    FOR i IN 1 .. m LOOP
        a := floor(random() * n); b := floor(random() * n);
        IF a = b AND NOT loops THEN CONTINUE; END IF;
        IF dag AND a >= b THEN CONTINUE; END IF;
        calls := floor(random() * 1000);
        INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count)
        VALUES (owner, ids[a], ids[b], calls, floor(random() * (calls + 1)))
        ON CONFLICT DO NOTHING;
    END LOOP;
END $$;

-- Differences between C reach (downstream or upstream, to depth) and a
-- breadth-first WITH RECURSIVE over (service, distance) pairs, for every
-- start.  Rows are (start, service, distance, which side has it).
CREATE FUNCTION pg_temp.diff_reach(downstream bool, depth int)
RETURNS TABLE (start uuid, service uuid, distance int, side text) LANGUAGE sql AS $$
    WITH c AS (
        SELECT s.id AS start, x.service_id AS service, x.distance
          FROM lattice.services s,
               LATERAL (SELECT * FROM lattice.graph_dependencies(s.id, depth) WHERE downstream
                        UNION ALL
                        SELECT * FROM lattice.graph_dependents(s.id, depth) WHERE NOT downstream) x),
    r AS (
        SELECT s.id AS start, q.id AS service, min(q.d) AS distance
          FROM lattice.services s,
               LATERAL (WITH RECURSIVE walk(id, d) AS (
                            SELECT s.id, 0
                            UNION
                            SELECT CASE WHEN downstream THEN e.target_service_id ELSE e.source_service_id END, w.d + 1
                              FROM walk w JOIN lattice.connections e
                                ON w.id = CASE WHEN downstream THEN e.source_service_id ELSE e.target_service_id END
                             WHERE w.d < COALESCE(depth, (SELECT count(*) FROM lattice.services)))
                        SELECT * FROM walk) q
         WHERE q.id <> s.id
         GROUP BY s.id, q.id)
    (SELECT *, 'C only' FROM c EXCEPT SELECT *, 'C only' FROM r)
    UNION ALL
    (SELECT *, 'CTE only' FROM r EXCEPT SELECT *, 'CTE only' FROM c)
$$;

-- The same for impact, against the textbook CTE with a CYCLE clause.
CREATE FUNCTION pg_temp.diff_reach_cycle()
RETURNS TABLE (start uuid, service uuid, distance int, side text) LANGUAGE sql AS $$
    WITH c AS (
        SELECT s.id AS start, x.service_id AS service, x.distance
          FROM lattice.services s, LATERAL lattice.graph_impact(s.id) x),
    r AS (
        SELECT s.id AS start, q.id AS service, min(q.d)::int AS distance
          FROM lattice.services s,
               LATERAL (WITH RECURSIVE walk(id, d) AS (
                            SELECT s.id, 0
                            UNION ALL
                            SELECT e.source_service_id, w.d + 1
                              FROM walk w JOIN lattice.connections e ON e.target_service_id = w.id)
                        CYCLE id SET is_cycle USING path
                        SELECT id, d FROM walk WHERE NOT is_cycle) q
         WHERE q.id <> s.id
         GROUP BY s.id, q.id)
    (SELECT *, 'C only' FROM c EXCEPT SELECT *, 'C only' FROM r)
    UNION ALL
    (SELECT *, 'CTE only' FROM r EXCEPT SELECT *, 'CTE only' FROM c)
$$;

-- Impact's edge figures checked level by level: a service at distance d
-- takes the best of min(weakest of a caller-side neighbour at d-1, the
-- connection's calls) over its neighbours at d-1 (and the mirror for the
-- worst error rate).  Rows are the services where C disagrees.
CREATE FUNCTION pg_temp.diff_weakest()
RETURNS TABLE (start uuid, service uuid) LANGUAGE sql AS $$
    WITH c AS (
        SELECT s.id AS start, x.*
          FROM lattice.services s, LATERAL lattice.graph_impact(s.id) x),
    prev AS (
        SELECT c.start, c.service_id, c.distance, c.weakest_calls, c.worst_error_rate FROM c
        UNION ALL
        SELECT s.id, s.id, 0, 9223372036854775807, 0 FROM lattice.services s),
    expect AS (
        SELECT c.start, c.service_id,
               max(LEAST(p.weakest_calls, e.call_count)) AS weakest,
               min(GREATEST(p.worst_error_rate,
                            CASE WHEN e.call_count > 0 THEN e.error_count::float8 / e.call_count ELSE 0 END)) AS worst
          FROM c
          JOIN lattice.connections e ON e.source_service_id = c.service_id
          JOIN prev p ON p.start = c.start AND p.service_id = e.target_service_id AND p.distance = c.distance - 1
         GROUP BY c.start, c.service_id)
    SELECT c.start, c.service_id FROM c JOIN expect x USING (start, service_id)
     WHERE c.weakest_calls <> x.weakest OR abs(c.worst_error_rate - x.worst) > 1e-12
$$;

-- Cycles against mutual reachability from a transitive closure.
CREATE FUNCTION pg_temp.diff_cycles()
RETURNS TABLE (members uuid[], side text) LANGUAGE sql AS $$
    WITH RECURSIVE reach(a, b) AS (
        SELECT id, id FROM lattice.services
        UNION
        SELECT r.a, e.target_service_id FROM reach r JOIN lattice.connections e ON e.source_service_id = r.b),
    mutual AS (SELECT r1.a, r1.b FROM reach r1 JOIN reach r2 ON r2.a = r1.b AND r2.b = r1.a),
    scc AS (SELECT DISTINCT array_agg(b ORDER BY b) AS members FROM mutual GROUP BY a),
    expect AS (SELECT members FROM scc WHERE cardinality(members) > 1),
    got AS (SELECT (SELECT array_agg(u ORDER BY u) FROM unnest(service_ids) u) AS members FROM lattice.graph_cycles())
    (SELECT *, 'C only' FROM got EXCEPT SELECT *, 'C only' FROM expect)
    UNION ALL
    (SELECT *, 'closure only' FROM expect EXCEPT SELECT *, 'closure only' FROM got)
$$;

-- Order: a call leaves a layer only downwards, a layer is the lowest
-- possible, every service is listed once, and cycle numbers agree with
-- graph_cycles().
CREATE FUNCTION pg_temp.bad_order() RETURNS SETOF text LANGUAGE sql AS $$
    WITH o AS (SELECT * FROM lattice.graph_order()),
    comp AS (SELECT o.service_id, COALESCE(o.cycle::text, o.service_id::text) AS comp, o.layer FROM o)
    SELECT 'upward call ' || e.id FROM lattice.connections e
      JOIN comp a ON a.service_id = e.source_service_id JOIN comp b ON b.service_id = e.target_service_id
     WHERE a.comp <> b.comp AND a.layer <= b.layer
    UNION ALL
    SELECT 'layer not minimal ' || a.service_id FROM comp a
     WHERE a.layer <> COALESCE((SELECT max(b.layer) + 1 FROM comp m
                                  JOIN lattice.connections e ON e.source_service_id = m.service_id
                                  JOIN comp b ON b.service_id = e.target_service_id
                                 WHERE m.comp = a.comp AND b.comp <> a.comp), 0)
    UNION ALL
    SELECT 'listed ' || count(*) || ' of ' || (SELECT count(*) FROM lattice.services)
      FROM o HAVING count(*) <> (SELECT count(*) FROM lattice.services) OR count(DISTINCT service_id) <> count(*)
    UNION ALL
    SELECT 'cycle numbers differ' WHERE
        (SELECT array_agg(c ORDER BY c) FROM (SELECT cycle_no || ':' || (SELECT string_agg(u::text, ',' ORDER BY u) FROM unnest(service_ids) u) AS c
                                                 FROM lattice.graph_cycles()) x)
        IS DISTINCT FROM
        (SELECT array_agg(c ORDER BY c) FROM (SELECT cycle || ':' || string_agg(service_id::text, ',' ORDER BY service_id) AS c
                                                 FROM o WHERE cycle IS NOT NULL GROUP BY cycle) y)
$$;

-- Paths: for every pair, C's paths (up to 50) have the CTE's distance, are
-- made of real calls, start and end right and are distinct; no path when
-- the CTE finds none.
CREATE FUNCTION pg_temp.bad_paths() RETURNS SETOF text LANGUAGE sql AS $$
    WITH pairs AS (SELECT a.id AS f, b.id AS t FROM lattice.services a, lattice.services b),
    dist AS (
        SELECT s.id AS f, q.id AS t, min(q.d) AS d
          FROM lattice.services s,
               LATERAL (WITH RECURSIVE walk(id, d) AS (
                            SELECT s.id, 0
                            UNION
                            SELECT e.target_service_id, w.d + 1 FROM walk w
                              JOIN lattice.connections e ON e.source_service_id = w.id
                             WHERE w.d < (SELECT count(*) FROM lattice.services))
                        SELECT * FROM walk) q
         GROUP BY s.id, q.id),
    p AS (SELECT pairs.f, pairs.t, x.* FROM pairs, LATERAL lattice.graph_paths(pairs.f, pairs.t, 50) x),
    per_path AS (SELECT f, t, path_no, max(hop) AS len, array_agg(service_id ORDER BY hop) AS nodes FROM p GROUP BY f, t, path_no)
    SELECT 'length ' || pp.f || '->' || pp.t FROM per_path pp LEFT JOIN dist d ON d.f = pp.f AND d.t = pp.t
     WHERE d.d IS DISTINCT FROM pp.len OR pp.nodes[1] <> pp.f OR pp.nodes[pp.len + 1] <> pp.t
    UNION ALL
    SELECT 'not a call ' || p1.service_id || '->' || p2.service_id FROM p p1
      JOIN p p2 ON p2.f = p1.f AND p2.t = p1.t AND p2.path_no = p1.path_no AND p2.hop = p1.hop + 1
     WHERE NOT EXISTS (SELECT FROM lattice.connections e
                        WHERE e.source_service_id = p1.service_id AND e.target_service_id = p2.service_id)
    UNION ALL
    SELECT 'duplicate path ' || f || '->' || t FROM per_path GROUP BY f, t, nodes HAVING count(*) > 1
    UNION ALL
    SELECT 'missing path ' || d.f || '->' || d.t FROM dist d
     WHERE NOT EXISTS (SELECT FROM per_path pp WHERE pp.f = d.f AND pp.t = d.t)
$$;

-- Eight graphs, one tenant each.
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000001', 40, 45, 0.11, false, false);  -- sparse, disconnected
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000002', 7, 60, 0.22, true, false);    -- dense with self-loops
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000003', 25, 60, 0.33, false, false);  -- cyclic
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000004', 30, 70, 0.44, false, true);   -- acyclic
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000005', 20, 40, 0.55, true, false);   -- self-loops, external
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000006', 6, 0, 0.66, false, false);    -- no calls at all
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000007', 36, 90, 0.77, true, false);  -- larger random
-- a ring of 12 with two chords: one big cycle, many paths
SELECT pg_temp.make_graph('c0000000-0000-0000-0000-000000000008', 12, 0, 0.88, false, false);
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count)
SELECT s.user_id, s.id, t.id, 10 * (i + 1), i
  FROM generate_series(0, 11) i
  JOIN lattice.services s ON s.user_id = 'c0000000-0000-0000-0000-000000000008' AND s.name = 's' || i
  JOIN lattice.services t ON t.user_id = s.user_id AND t.name = 's' || ((i + 1) % 12);
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count)
SELECT s.user_id, s.id, t.id, 5
  FROM (VALUES (0, 6), (3, 9)) v(a, b)
  JOIN lattice.services s ON s.user_id = 'c0000000-0000-0000-0000-000000000008' AND s.name = 's' || v.a
  JOIN lattice.services t ON t.user_id = s.user_id AND t.name = 's' || v.b;

\set t c0000000-0000-0000-0000-000000000001
\set name 'sparse 40/45'
\set cyc true
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000002
\set name 'dense 7/60 with self-loops'
\set cyc true
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000003
\set name 'cyclic 25/60'
\set cyc false
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000004
\set name 'acyclic 30/70'
\set cyc false
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000005
\set name 'self-loops and external 20/40'
\set cyc false
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000006
\set name 'no calls 6/0'
\set cyc true
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000007
\set name 'random 36/90'
\set cyc false
\ir graph_checks.psql
\set t c0000000-0000-0000-0000-000000000008
\set name 'ring of 12 with chords'
\set cyc true
\ir graph_checks.psql

SELECT * FROM finish();
ROLLBACK;
