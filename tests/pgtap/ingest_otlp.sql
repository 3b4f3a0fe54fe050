-- OpenTelemetry traces (extension/sql/36_ingest_otlp.sql, 68_http_otlp.sql,
-- src/otlp_flatten_core.c): span checks and partial success, services from
-- resources, routes from server spans, calls matched in one request and
-- across requests, the match state's window and capacity, database and
-- queue nodes, exceptions as error groups, credentials, tenancy.
-- tests/http/otel_sdk.test.mjs sends the same through the real SDKs.
BEGIN;
SELECT plan(53);

\ir helpers.psql

CREATE TEMP TABLE kv (k text PRIMARY KEY, v jsonb);
GRANT ALL ON kv TO lattice_app;
CREATE FUNCTION pg_temp.v(key text) RETURNS jsonb LANGUAGE sql AS $$ SELECT v FROM kv WHERE k = key $$;

-- OTLP/JSON builders: a span (ids in hex, times `ago_ms` before now), a
-- resource's spans, a request.
CREATE FUNCTION pg_temp.span(trace text, id text, parent text, name text, kind int, attrs jsonb,
                             ago_ms int DEFAULT 1000, ms int DEFAULT 20, extra jsonb DEFAULT '{}') RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'traceId', rpad(trace, 32, '0'), 'spanId', rpad(id, 16, '0'),
        'parentSpanId', CASE WHEN parent IS NOT NULL THEN rpad(parent, 16, '0') END,
        'name', name, 'kind', kind,
        'startTimeUnixNano', ((extract(epoch FROM now()) * 1e9)::bigint - ago_ms::bigint * 1000000)::text,
        'endTimeUnixNano', ((extract(epoch FROM now()) * 1e9)::bigint - (ago_ms - ms)::bigint * 1000000)::text,
        'attributes', (SELECT jsonb_agg(jsonb_build_object('key', k, 'value',
                              CASE jsonb_typeof(v) WHEN 'number' THEN jsonb_build_object('intValue', v #>> '{}')
                                   ELSE jsonb_build_object('stringValue', v #>> '{}') END))
                         FROM jsonb_each(attrs) AS a(k, v)))) || extra
$$;
CREATE FUNCTION pg_temp.resource(service text, spans jsonb, env text DEFAULT NULL) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('resource', jsonb_build_object('attributes', jsonb_build_array(
               jsonb_build_object('key', 'service.name', 'value', jsonb_build_object('stringValue', service)),
               jsonb_build_object('key', 'service.version', 'value', jsonb_build_object('stringValue', '2.0.0')),
               jsonb_build_object('key', 'telemetry.sdk.language', 'value', jsonb_build_object('stringValue', 'nodejs')))
               || CASE WHEN env IS NOT NULL THEN jsonb_build_array(jsonb_build_object('key', 'deployment.environment.name',
                      'value', jsonb_build_object('stringValue', env))) ELSE '[]' END),
           'scopeSpans', jsonb_build_array(jsonb_build_object('scope', jsonb_build_object('name', 'test'), 'spans', spans)))
$$;
CREATE FUNCTION pg_temp.export(key text, resources jsonb, extra jsonb DEFAULT '{}') RETURNS jsonb LANGUAGE sql AS $$
    SELECT pg_temp.call('otlp_traces', jsonb_build_object('method', 'POST', 'client_addr', '10.9.0.1',
                                                          'api_key', key, 'content_type', 'application/json') || extra,
                        jsonb_build_object('resourceSpans', resources))
$$;
CREATE FUNCTION pg_temp.node(account uuid, n text) RETURNS text LANGUAGE sql AS $$
    SELECT kind || CASE WHEN is_external THEN ' (external)' ELSE '' END
      FROM lattice.services WHERE user_id = account AND name = n
$$;
CREATE FUNCTION pg_temp.calls(account uuid, a text, b text) RETURNS bigint LANGUAGE sql AS $$
    SELECT COALESCE(sum(c.call_count), 0) FROM lattice.connections c
      JOIN lattice.services s ON s.user_id = c.user_id AND s.id = c.source_service_id
      JOIN lattice.services t ON t.user_id = c.user_id AND t.id = c.target_service_id
     WHERE c.user_id = account AND s.name = a AND t.name = b
$$;

SELECT substr(md5(random()::text), 1, 8) AS r \gset
SELECT lattice.rotate_secret('pepper') IS NOT NULL AS pepper \gset
SELECT lattice.create_user('otlp-a-' || :'r' || '@example.com', 'otlp password 1', 'Ada') AS a,
       lattice.create_user('otlp-b-' || :'r' || '@example.com', 'otlp password 1', 'Bob') AS b \gset
SELECT lattice.create_api_key(:'a', 'otel') AS key_a, lattice.create_api_key(:'b', 'otel') AS key_b,
       lattice.create_api_key(:'a', 'reader', '{read}') AS key_read \gset

-- ======================================================================
-- Span checks: one bad span is counted, the others are kept
-- ======================================================================
SELECT is(pg_temp.code(pg_temp.export(:'key_a', '[]')), '200:', 'an empty export is accepted');
INSERT INTO kv SELECT 'checks', pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('checks', jsonb_build_array(
    pg_temp.span('c1', '01', NULL, 'good', 1, '{}'),
    pg_temp.span('zz', '02', NULL, 'bad trace id', 1, '{}'),
    pg_temp.span('c1', '', NULL, 'zero span id', 1, '{}') || '{"spanId": "0000000000000000"}',
    pg_temp.span('c1', '04', 'xyz', 'bad parent', 1, '{}'),
    pg_temp.span('c1', '05', NULL, 'from 1990', 1, '{}') || '{"startTimeUnixNano": "631152000000000000"}',
    pg_temp.span('c1', '06', NULL, 'ends before it starts', 1, '{}', 1000, -5),
    pg_temp.span('c1', '07', NULL, 'bad kind', 9, '{}'),
    pg_temp.span('c1', '08', NULL, 'kind by name', 1, '{}') || '{"kind": "SPAN_KIND_SERVER"}',
    pg_temp.span('c1', '09', NULL, repeat('n', 1025), 1, '{}'),
    pg_temp.span('c1', '0a', NULL, 'many attributes', 1,
                 (SELECT jsonb_object_agg('k' || i, i) FROM generate_series(1, 129) i)),
    pg_temp.span('c1', '0b', NULL, 'no times', 1, '{}') - 'endTimeUnixNano'))));
SELECT is(pg_temp.v('checks') ->> 'status', '200', 'a request with bad spans is still a 200');
SELECT is(pg_temp.v('checks') #>> '{body,partialSuccess,rejectedSpans}', '9',
          'the bad spans are counted in partial_success (as a string: int64 in OTLP/JSON)');
SELECT ok(pg_temp.v('checks') #>> '{body,partialSuccess,errorMessage}' LIKE 'traceId must be 16 bytes%',
          'and the first reason is given');
SELECT is((SELECT count(*) FROM lattice.otlp_flatten(
              (SELECT jsonb_build_object('resourceSpans', jsonb_build_array(pg_temp.resource('x', jsonb_build_array(
                   pg_temp.span('c1', '01', NULL, 'kind by name', 1, '{}') || '{"kind": "SPAN_KIND_SERVER"}'))))::text),
              now() - interval '1 day', now() + interval '1 hour') f, jsonb_array_elements(f -> 'spans') s
            WHERE (s ->> 'kind')::int = 2), 1::bigint, 'a kind may be given by its enum name');
SELECT is(pg_temp.code(pg_temp.call('otlp_traces', jsonb_build_object('method', 'POST', 'api_key', :'key_a'),
                                    '{"resourceSpans": {"not": "a list"}}')),
          '400:invalid_otlp', 'a document that is no export request is a 400 (exporters do not retry it)');
SELECT is(pg_temp.code(pg_temp.call('otlp_traces', jsonb_build_object('method', 'POST', 'api_key', :'key_a'), '[1]')),
          '400:invalid_otlp', 'so is a JSON array');
SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource(repeat('s', 129), jsonb_build_array(
              pg_temp.span('c2', '01', NULL, 'x', 2, '{}'))))) #>> '{body,partialSuccess,errorMessage}',
          'service.name longer than 128 bytes', 'a resource whose name is too long rejects its spans');
SELECT is(pg_temp.export(:'key_a', '[]', '{"otlp": {"rejectedSpans": 3, "rejectedMessage": "3 spans had strings that are not valid UTF-8"}}')
              -> 'body',
          '{"partialSuccess": {"rejectedSpans": "3", "errorMessage": "3 spans had strings that are not valid UTF-8"}}',
          'spans the shim could not carry are counted too');

-- ======================================================================
-- One request: services, routes, a call A -> B, a database, an exception
-- ======================================================================
INSERT INTO kv SELECT 'one', pg_temp.export(:'key_a', jsonb_build_array(
    pg_temp.resource('shop-a', jsonb_build_array(
        pg_temp.span('a1', 'a1', NULL, 'GET /orders/:id', 2,
                     '{"http.request.method": "GET", "http.route": "/orders/:id", "http.response.status_code": 200}', 1000, 40),
        pg_temp.span('a1', 'a2', 'a1', 'GET', 3,
                     '{"http.request.method": "GET", "server.address": "stock", "server.port": 3001}', 990, 30),
        pg_temp.span('a3', 'a3', NULL, 'GET /boom', 2,
                     '{"http.method": "GET", "http.route": "/boom", "http.status_code": 500}', 900, 5,
                     jsonb_build_object('status', '{"code": 2}'::jsonb, 'events', jsonb_build_array(jsonb_build_object(
                         'name', 'exception', 'timeUnixNano', ((extract(epoch FROM now()) * 1e9)::bigint - 899000000)::text,
                         'attributes', jsonb_build_array(
                             jsonb_build_object('key', 'exception.type', 'value', '{"stringValue": "TypeError"}'::jsonb),
                             jsonb_build_object('key', 'exception.message', 'value', '{"stringValue": "order 42 has no lines"}'::jsonb),
                             jsonb_build_object('key', 'exception.stacktrace', 'value', jsonb_build_object('stringValue',
                                 E'TypeError: order 42 has no lines\n    at Layer.handle (/app/node_modules/express/lib/router/layer.js:95:5)\n    at boom (/app/a.js:17:11)'))))))))),
    pg_temp.resource('shop-b', jsonb_build_array(
        pg_temp.span('a1', 'b1', 'a2', 'GET /stock/:sku', 2,
                     '{"http.request.method": "GET", "http.route": "/stock/:sku", "http.response.status_code": 200}', 985, 20),
        pg_temp.span('a1', 'b2', 'b1', 'pg.query:SELECT', 3, '{"db.system": "postgresql", "db.name": "stock"}', 980, 4),
        pg_temp.span('a1', 'b4', 'b1', 'pg-pool.connect', 3, '{"db.system.name": "postgresql"}', 982, 1),
        pg_temp.span('a1', 'b3', 'b1', 'publish', 4, '{"messaging.system": "kafka", "messaging.destination.name": "orders"}', 975, 1)))));
SELECT is(pg_temp.v('one') -> 'body', '{}', 'a clean export answers {}');
SELECT is(pg_temp.node(:'a', 'shop-a'), 'service', 'a resource registers its service');
SELECT is((SELECT version || ' ' || language || ' ' || environment FROM lattice.services WHERE user_id = :'a' AND name = 'shop-a'),
          '2.0.0 nodejs production', 'with version, language and the default environment');
SELECT is((SELECT c.kind FROM lattice.service_changes c JOIN lattice.services s ON s.id = c.service_id
            WHERE s.user_id = :'a' AND s.name = 'shop-a'), 'service_registered', 'recorded in its history');
SELECT is((SELECT array_agg(method || ' ' || path ORDER BY path) FROM lattice.routes r
             JOIN lattice.services s ON s.id = r.service_id WHERE s.user_id = :'a' AND s.name = 'shop-a'),
          '{"GET /boom","GET /orders/:id"}', 'server spans name the routes (http.route + method)');
SELECT is((SELECT request_count || '/' || error_count || ' ' || matched FROM lattice.route_stats st
             JOIN lattice.services s ON s.id = st.service_id
            WHERE s.user_id = :'a' AND s.name = 'shop-a' AND st.path = '/boom'),
          '1/1 true', 'and fill the route buckets, a 500 counted as an error');
SELECT ok((SELECT lattice.hist_percentile(latency_hist, 0.5) FROM lattice.route_stats st
             JOIN lattice.services s ON s.id = st.service_id
            WHERE s.user_id = :'a' AND s.name = 'shop-a' AND st.path = '/orders/:id') BETWEEN 20 AND 60,
          'with the span''s duration in the histogram');
SELECT is(pg_temp.calls(:'a', 'shop-a', 'shop-b'), 1::bigint, 'a client span and its server child make the edge A -> B');
SELECT is(pg_temp.node(:'a', 'postgresql/stock'), 'database (external)', 'a db.system span names a database node');
SELECT is(pg_temp.calls(:'a', 'shop-b', 'postgresql/stock'), 1::bigint, 'called by B');
SELECT is(pg_temp.node(:'a', 'postgresql'), NULL, 'a pool''s connect span (no database, no query) is no call');
SELECT is(pg_temp.node(:'a', 'kafka orders'), 'queue (external)', 'a producer span names a queue node');
SELECT is(pg_temp.calls(:'a', 'shop-b', 'kafka orders'), 1::bigint, 'B publishes to it');
SELECT is(pg_temp.node(:'a', 'stock:3001'), NULL, 'a matched client span makes no external node');
SELECT is((SELECT count(*) FROM lattice.otlp_pending WHERE user_id = :'a'), 0::bigint, 'and nothing waits');
SELECT is((SELECT error_type || ': ' || message || ' @ ' || top_frame || ' x' || occurrence_count
             FROM lattice.error_groups g JOIN lattice.services s ON s.id = g.service_id
            WHERE s.user_id = :'a' AND s.name = 'shop-a'),
          'TypeError: order 42 has no lines @ /app/a.js:boom x1', 'an exception event is an error group, its top frame the app''s');
SELECT is((SELECT (lattice.graph_json()::jsonb -> 'nodes') @> '[{"name": "postgresql/stock", "kind": "database"}, {"name": "kafka orders", "kind": "queue"}, {"name": "shop-a", "kind": "service"}]'
             FROM (SELECT lattice.test_set_tenant(:'a')) t), true, 'the graph carries each node''s kind');
SELECT lattice.test_set_tenant(NULL);

-- ======================================================================
-- Across requests: either half first, then the window and the capacity
-- ======================================================================
SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('shop-c', jsonb_build_array(
              pg_temp.span('f1', 'c1', NULL, 'GET', 3, '{"http.request.method": "GET", "peer.service": "shop-d"}'))))) -> 'body',
          '{}', 'a client span alone');
SELECT is((SELECT side::text || ' ' || peer FROM lattice.otlp_pending p JOIN lattice.services s ON s.id = p.service_id
            WHERE p.user_id = :'a' AND s.name = 'shop-c'), 'c shop-d', 'waits for its server half');
SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('shop-d', jsonb_build_array(
              pg_temp.span('f1', 'd1', 'c1', 'GET /d', 2, '{"http.request.method": "GET", "http.route": "/d"}'))))) -> 'body',
          '{}', 'which comes in the next request');
SELECT is(pg_temp.calls(:'a', 'shop-c', 'shop-d'), 1::bigint, 'and makes the edge');
SELECT is((SELECT count(*) FROM lattice.otlp_pending WHERE user_id = :'a'), 0::bigint, 'the wait is over');

SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('shop-f', jsonb_build_array(
              pg_temp.span('f2', 'f1', 'e1', 'GET /f', 2, '{"http.request.method": "GET", "http.route": "/f"}', 1000, 25))))) -> 'body',
          '{}', 'a server span before its client');
SELECT is((SELECT side::text FROM lattice.otlp_pending WHERE user_id = :'a'), 's', 'waits too');
SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('shop-e', jsonb_build_array(
              pg_temp.span('f2', 'e1', NULL, 'GET', 3, '{"http.request.method": "GET"}', 1010, 40))))) -> 'body',
          '{}', 'its client comes later');
SELECT is((SELECT call_count || ' ' || total_duration_ms FROM lattice.connections c
             JOIN lattice.services t ON t.id = c.target_service_id WHERE c.user_id = :'a' AND t.name = 'shop-f'),
          '1 25', 'the edge E -> F, with the server''s figures');

SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('shop-g', jsonb_build_array(
              pg_temp.span('f3', 'a7', NULL, 'GET', 3, '{"http.request.method": "GET", "server.address": "api.example.com", "server.port": 443}'),
              pg_temp.span('f3', 'a6', NULL, 'POST', 3, '{"url.full": "https://user@pay.example:8443/charge?card=1"}'))))) -> 'body',
          '{}', 'a call to something that never reports');
UPDATE lattice.otlp_pending SET expires_at = now() - interval '1 second' WHERE user_id = :'a';
SELECT is(lattice.otlp_expire_all() >= 2, true, 'once its window has passed the worker''s sweep records it');
SELECT is(pg_temp.node(:'a', 'api.example.com:443'), 'external (external)', 'as an external node named by server.address:port');
SELECT is(pg_temp.calls(:'a', 'shop-g', 'api.example.com:443'), 1::bigint, 'with the edge');
SELECT is(pg_temp.calls(:'a', 'shop-g', 'pay.example:8443'), 1::bigint, 'or by the host of url.full');

SET LOCAL lattice.otlp_match_capacity = 1;
SELECT is(pg_temp.export(:'key_a', jsonb_build_array(pg_temp.resource('shop-h', jsonb_build_array(
              pg_temp.span('f4', 'a8', NULL, 'GET', 3, '{"peer.service": "billing"}'),
              pg_temp.span('f4', 'a9', NULL, 'GET', 3, '{"peer.service": "ledger"}'))))) -> 'body',
          '{}', 'two unmatched calls, room for one');
SELECT is((SELECT count(*) FROM lattice.otlp_pending WHERE user_id = :'a'), 1::bigint, 'one waits');
SELECT is(pg_temp.calls(:'a', 'shop-h', 'ledger'), 1::bigint, 'the other is an external call at once');
RESET lattice.otlp_match_capacity;

-- ======================================================================
-- Credentials, plugin services, the service limit, tenancy
-- ======================================================================
SELECT is(pg_temp.code(pg_temp.call('otlp_traces', jsonb_build_object('method', 'POST', 'bearer', :'key_a'), '{}')),
          '200:', 'an ingest key as Authorization: Bearer (what OTEL_EXPORTER_OTLP_HEADERS can send)');
SELECT is(pg_temp.code(pg_temp.call('otlp_traces', jsonb_build_object('method', 'POST', 'api_key', :'key_read'), '{}')),
          '403:insufficient_scope', 'a read-only key may not ingest');
SELECT is(pg_temp.code(pg_temp.call('otlp_traces', jsonb_build_object('method', 'POST',
              'api_key', 'ltc_' || repeat('A', 43)), '{}')), '401:invalid_api_key', 'an unknown key is refused');

-- B's account: a plugin-registered service keeps its snapshot's version
INSERT INTO lattice.services (user_id, name, environment, version, snapshot_hash)
VALUES (:'b', 'plugged', 'production', '9.9.9', 'h');
SELECT is(pg_temp.export(:'key_b', jsonb_build_array(pg_temp.resource('plugged', jsonb_build_array(
              pg_temp.span('a1', 'b1', 'a2', 'GET /x', 2, '{"http.request.method": "GET", "http.route": "/x"}'))))) -> 'body',
          '{}', 'a plugin service may report through OpenTelemetry too');
SELECT is((SELECT version FROM lattice.services WHERE user_id = :'b' AND name = 'plugged'), '9.9.9',
          'and keeps its plugin snapshot''s version');
SELECT is((SELECT count(*) FROM lattice.services WHERE user_id = :'b' AND name = 'plugged'), 1::bigint, 'one service, same id');
SELECT is((SELECT count(*) FROM lattice.otlp_pending p WHERE p.user_id = :'b'), 1::bigint,
          'the same trace and span ids in another account match nothing of the first');
SELECT is(pg_temp.calls(:'b', 'shop-a', 'plugged'), 0::bigint, 'no edge crosses accounts');

UPDATE lattice.plans SET max_services = 1 WHERE id = (SELECT plan_id FROM lattice.users WHERE id = :'b');
SELECT is(pg_temp.export(:'key_b', jsonb_build_array(pg_temp.resource('one-too-many', jsonb_build_array(
              pg_temp.span('b9', 'b9', NULL, 'GET /y', 2, '{"http.request.method": "GET", "http.route": "/y"}'))))) #>> '{body,partialSuccess,rejectedSpans}',
          '1', 'a service over the plan''s limit: its spans are rejected, the request is not');
SELECT is(pg_temp.node(:'b', 'one-too-many'), NULL, 'and it is not added');

SELECT * FROM finish();
ROLLBACK;
