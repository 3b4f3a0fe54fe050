-- make run's demo tenant: an account, two API keys and a realistic shop of
-- services with the calls between them.  Runs once (skipped when the demo
-- account exists).  Prints "key <ingest-only key>" (for plugins) and
-- "read-key <read-only key>" (for API scripts); scripts/run.sh issues fresh
-- ones of each at every start and prints those.
\set ON_ERROR_STOP 1
SELECT NOT EXISTS (SELECT FROM lattice.users WHERE email = 'demo@lattice.local') AS fresh \gset
\if :fresh
SELECT lattice.create_user('demo@lattice.local', 'lattice-demo-password', 'Demo Shop') AS demo_id \gset
SELECT 'key ' || lattice.create_api_key(:'demo_id', 'demo key', ARRAY['ingest']) AS line;
SELECT 'read-key ' || lattice.create_api_key(:'demo_id', 'demo read key', ARRAY['read']) AS line;

WITH svc(name, framework, version) AS (VALUES
    ('web-frontend', 'nextjs', '3.4.1'), ('api-gateway', 'express', '2.8.0'),
    ('auth', 'express', '1.9.2'), ('users', 'express', '1.4.0'), ('catalog', 'express', '5.0.3'),
    ('search', 'express', '0.9.7'), ('cart', 'express', '2.2.0'), ('orders', 'express', '4.1.5'),
    ('payments', 'express', '3.0.0'), ('inventory', 'express', '1.7.1'), ('shipping', 'express', '1.1.0'),
    ('notifications', 'express', '0.6.2'), ('recommendations', 'express', '0.3.0'))
INSERT INTO lattice.services (user_id, name, environment, version, language, framework, runtime, status)
SELECT :'demo_id', name, 'production', version, 'typescript', framework, 'node-v20.20.2', 'active' FROM svc;

WITH e(src, dst, calls, errors) AS (VALUES
    ('web-frontend', 'api-gateway', 182340, 211), ('api-gateway', 'auth', 90311, 12),
    ('api-gateway', 'catalog', 61022, 40), ('api-gateway', 'cart', 22008, 9),
    ('api-gateway', 'orders', 8110, 31), ('api-gateway', 'search', 30441, 3),
    ('auth', 'users', 45012, 2), ('catalog', 'inventory', 30110, 14),
    ('catalog', 'recommendations', 9021, 120), ('search', 'catalog', 28004, 5),
    ('cart', 'catalog', 19876, 1), ('cart', 'inventory', 11002, 6),
    ('orders', 'payments', 7990, 88), ('orders', 'inventory', 8001, 4),
    ('orders', 'shipping', 7702, 2), ('orders', 'notifications', 7690, 0),
    ('payments', 'notifications', 7400, 1), ('shipping', 'notifications', 7120, 0),
    ('recommendations', 'users', 8800, 3), ('notifications', 'users', 15010, 7))
-- each call's duration: the edge's typical time with a long tail, so the
-- graph's p95 and the averages come from the same histogram
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id, call_count, error_count,
                                 total_duration_ms, latency_hist)
SELECT :'demo_id', s.id, d.id, e.calls, e.errors, t.total, t.hist
  FROM e JOIN lattice.services s ON s.user_id = :'demo_id' AND s.name = e.src
         JOIN lattice.services d ON d.user_id = :'demo_id' AND d.name = e.dst
 CROSS JOIN LATERAL (SELECT 4 + random() * 30 AS typical) k
 CROSS JOIN LATERAL (SELECT sum(ms) AS total, lattice.hist_of(array_agg(ms)) AS hist
                       FROM (SELECT k.typical * (0.4 + random() ^ 4 * 12) AS ms
                               FROM generate_series(1, e.calls)) x) t;
\else
SELECT 'existing';
\endif
