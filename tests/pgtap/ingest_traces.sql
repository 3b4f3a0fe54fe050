-- Traces: route matching (full and router-relative), per-route buckets with
-- histograms, edges caller -> service, external nodes, legacy metrics.
\set raw1 `cat tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json`
\set raw3 `cat tests/fixtures/captured/003-POST-api_v1_performance_traces_batch.json`
BEGIN;
SELECT plan(28);

-- the C helpers
SELECT is(lattice.ingest_match_route(ARRAY['GET /users/:id', 'GET /users/me'], 'GET', '/users/me'), 2,
          'a literal segment beats a parameter');
SELECT is(lattice.ingest_match_route(ARRAY['GET /users/:id', 'ALL /users/:id'], 'POST', '/users/7'), 2,
          'ALL matches any method');
SELECT is(lattice.ingest_match_route(ARRAY['GET /files/*'], 'GET', '/files/a/b/c'), 1, '* matches the rest');
SELECT is(lattice.ingest_match_route(ARRAY['GET /users', 'GET /orders'], 'GET', '/'), NULL,
          'an ambiguous router-relative path matches nothing');
SELECT is(lattice.ingest_normalise_path('/users/12345/orders/3f2b8c9a-1111-2222-3333-444455556666?x=1'),
          '/users/:id/orders/:id', 'unmatched paths are normalised');
SELECT is(lattice.hist_of('{0.5, 3, 3, 700}'), '{1,0,2,0,0,0,0,0,0,1,0,0,0,0}'::bigint[], 'histogram buckets');
SELECT ok(lattice.hist_percentile(lattice.hist_of('{0.5, 3, 3, 700}'), 0.5) BETWEEN 2 AND 5, 'p50 falls in its bucket');
SELECT is(lattice.hist_add(lattice.hist_of('{1}'), lattice.hist_of('{1, 20000}')), '{0,2,0,0,0,0,0,0,0,0,0,0,0,1}'::bigint[],
          'histograms add up');

INSERT INTO lattice.users (id, email, name) VALUES ('a0000000-0000-0000-0000-0000000000a1', 'traces-a@example.com', 'A');
CREATE TEMP TABLE bodies (name text PRIMARY KEY, body text);
INSERT INTO bodies VALUES ('meta', (:'raw1')::jsonb ->> 'body_raw'), ('traces', (:'raw3')::jsonb ->> 'body_raw');
INSERT INTO bodies SELECT 'checkout', jsonb_set(jsonb_set(body::jsonb, '{service,name}', '"checkout-web"'), '{routes}', '[]')::text
  FROM bodies WHERE name = 'meta';
INSERT INTO bodies SELECT 'shop', jsonb_set(jsonb_set(body::jsonb, '{service,name}', '"shop"'), '{routes}',
    '[{"id": "a", "serviceId": "s", "method": "GET", "path": "/orders"},
      {"id": "b", "serviceId": "s", "method": "GET", "path": "/orders/:orderId"}]')::text
  FROM bodies WHERE name = 'meta';
GRANT SELECT ON bodies TO lattice_app;
CREATE TEMP TABLE seen (k text PRIMARY KEY, v jsonb);
GRANT ALL ON seen TO lattice_app;

SELECT lattice.test_set_tenant('a0000000-0000-0000-0000-0000000000a1');
SET ROLE lattice_app;
SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'meta';
INSERT INTO seen SELECT 'graph0', to_jsonb(lattice.graph_version());
INSERT INTO seen SELECT 't1', lattice.ingest_traces(body) FROM bodies WHERE name = 'traces';

SELECT is((SELECT v - 'results' FROM seen WHERE k = 't1'), '{"success": true, "processed": 8, "failed": 0}'::jsonb,
          'the captured batch is processed');
SELECT is((SELECT v -> 'results' -> 2 ->> 'route' FROM seen WHERE k = 't1'), 'GET /users/:id',
          'per-item results name the matched route');
SELECT results_eq($$ SELECT method || ' ' || path, request_count::int, error_count::int, client_error_count::int
                       FROM lattice.route_stats WHERE matched ORDER BY 1 $$,
    $$ VALUES ('GET /boom', 1, 1, 0), ('GET /users', 1, 0, 0), ('GET /users/:id', 2, 0, 1), ('POST /users', 1, 0, 0) $$,
    'raw paths are counted on their route templates, with 5xx and 4xx apart');
SELECT results_eq($$ SELECT method || ' ' || path FROM lattice.route_stats WHERE NOT matched ORDER BY 1 $$,
    ARRAY['GET /', 'GET /o1', 'POST /'], 'ambiguous router-relative paths stay unmatched');
SELECT is((SELECT sum(x)::int FROM lattice.route_stats, unnest(latency_hist) x), 8, 'every trace is in a histogram');
SELECT is((SELECT count(*)::int FROM lattice.route_stats WHERE bucket = date_bin('5 minutes', bucket, '2000-01-01')), 7,
          'buckets are aligned to 5 minutes');
SELECT results_eq($$ SELECT name, environment, is_external FROM lattice.services ORDER BY name $$,
    $$ VALUES ('capture-demo', 'development', false), ('checkout-web', 'development', true) $$,
    'an unknown caller becomes an external node in the callee''s environment');
SELECT results_eq($$ SELECT s.name, t.name, k.call_count::int, k.error_count::int, k.client_error_count::int,
                            (SELECT sum(x)::int FROM unnest(k.latency_hist) x)
                       FROM lattice.connections k JOIN lattice.services s ON s.id = k.source_service_id
                       JOIN lattice.services t ON t.id = k.target_service_id $$,
    $$ VALUES ('checkout-web', 'capture-demo', 8, 1, 1, 8) $$,
    'the traces make one edge caller -> service with its counts and latencies');
SELECT ok(lattice.graph_version() > (SELECT v::bigint FROM seen WHERE k = 'graph0'), 'a new edge moves the graph version');

-- the same batch again adds up, and creates nothing new
INSERT INTO seen SELECT 'graph1', to_jsonb(lattice.graph_version());
SELECT lattice.ingest_traces(body) FROM bodies WHERE name = 'traces';
SELECT is((SELECT call_count::int FROM lattice.connections), 16, 'edge counts add up');
SELECT is((SELECT request_count::int FROM lattice.route_stats WHERE path = '/users/:id'), 4, 'bucket counts add up');
SELECT is((SELECT count(*)::int FROM lattice.services), 2, 'no second external node');
SELECT is(lattice.graph_version(), (SELECT v::bigint FROM seen WHERE k = 'graph1'),
          'traffic on known edges does not move the graph version');

-- the caller registers: the external node becomes that service, its edge kept
INSERT INTO seen SELECT 'ext', to_jsonb(id) FROM lattice.services WHERE name = 'checkout-web';
SELECT is((SELECT lattice.ingest_metadata(body) ->> 'serviceId' FROM bodies WHERE name = 'checkout')::uuid,
          (SELECT (v #>> '{}')::uuid FROM seen WHERE k = 'ext'), 'a registering caller takes over its external node');
SELECT is((SELECT is_external FROM lattice.services WHERE name = 'checkout-web'), false, 'and is no longer external');
SELECT is((SELECT count(*)::int FROM lattice.connections), 1, 'the edge is kept');

-- router-relative paths where only one template fits
SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'shop';
INSERT INTO seen SELECT 'shop', lattice.ingest_traces(
    '{"traces": [{"service_id": "shop", "duration_ms": 3, "status_code": 200, "method": "GET", "path": "/o1"},
                 {"service_id": "shop", "duration_ms": 4, "status_code": 200, "method": "GET", "path": "/"}]}');
SELECT results_eq($$ SELECT r ->> 'route' FROM seen, jsonb_array_elements(v -> 'results') r WHERE k = 'shop' $$,
    ARRAY['GET /orders/:orderId', 'GET /orders'], 'a router-relative path matches the one template it fits');

-- traces of a service that never registered are reported, the rest applied
INSERT INTO seen SELECT 'unknown', lattice.ingest_traces(
    '{"traces": [{"service_id": "ghost", "duration_ms": 1}, {"service_id": "shop", "duration_ms": 1, "method": "GET", "path": "/orders"}]}');
SELECT is((SELECT v - 'results' FROM seen WHERE k = 'unknown'),
          '{"success": false, "processed": 1, "failed": 1, "failures": [{"index": 0, "error": {"code": "unknown_service", "message": "no service of this name has submitted metadata"}}]}'::jsonb,
          'an unknown service is a per-item failure');

-- the legacy /metrics body
SELECT is(lattice.ingest_legacy_metrics(
    '{"serviceName": "shop", "metrics": [{"method": "GET", "path": "/orders/9", "statusCode": 503, "responseTime": 12.5,
                                          "timestamp": 1700000000000, "callerServiceName": "checkout-web"}]}') ->> 'processed',
    '1', 'legacy metrics are applied as traces');
SELECT is((SELECT error_count::int FROM lattice.connections k JOIN lattice.services t ON t.id = k.target_service_id
            WHERE t.name = 'shop'), 1, 'and make edges too');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
