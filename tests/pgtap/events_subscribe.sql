-- lattice_http.events_subscribe (GET /api/v1/events, 76_http_events.sql):
-- the credential names the tenant whose stream the shim opens, and its graph
-- version; nothing in the request can name another tenant.
BEGIN;
SELECT plan(6);

INSERT INTO lattice.users (id, email, name) VALUES
    ('a0000000-0000-0000-0000-0000000000e1', 'events-a@example.com', 'A'),
    ('b0000000-0000-0000-0000-0000000000e2', 'events-b@example.com', 'B');
SELECT lattice.create_api_key('a0000000-0000-0000-0000-0000000000e1', 'a') AS key_a \gset
SELECT lattice.create_api_key('b0000000-0000-0000-0000-0000000000e2', 'b') AS key_b \gset
SELECT lattice.graph_bump('a0000000-0000-0000-0000-0000000000e1');
SELECT lattice.graph_bump('a0000000-0000-0000-0000-0000000000e1');

CREATE TEMP TABLE answers (who text, status int, body jsonb);
GRANT INSERT, SELECT ON answers TO lattice_api;
SET ROLE lattice_api;
INSERT INTO answers
SELECT 'a', r.status, r.body::jsonb FROM lattice_http.events_subscribe(
    jsonb_build_object('method', 'GET', 'path', '/api/v1/events', 'api_key', :'key_a', 'client_addr', '127.0.0.1',
                       'query', jsonb_build_object('user_id', 'b0000000-0000-0000-0000-0000000000e2')), NULL) r;
INSERT INTO answers
SELECT 'b', r.status, r.body::jsonb FROM lattice_http.events_subscribe(
    jsonb_build_object('method', 'GET', 'path', '/api/v1/events', 'api_key', :'key_b', 'client_addr', '127.0.0.1'), NULL) r;
RESET ROLE;

SELECT is((SELECT status FROM answers WHERE who = 'a'), 200, 'an API key subscribes');
SELECT is((SELECT body ->> 'userId' FROM answers WHERE who = 'a'), 'a0000000-0000-0000-0000-0000000000e1',
          'the stream is the credential''s tenant, whatever the query says');
SELECT is((SELECT (body ->> 'graphVersion')::bigint FROM answers WHERE who = 'a'), 2::bigint, 'with its graph version');
SELECT is((SELECT body FROM answers WHERE who = 'b'),
          '{"userId": "b0000000-0000-0000-0000-0000000000e2", "graphVersion": 0}'::jsonb,
          'another tenant: its own id, version 0 before any change');
SET ROLE lattice_api;
SELECT throws_ok($$SELECT lattice_http.events_subscribe('{"method": "GET", "client_addr": "127.0.0.1"}', NULL)$$,
                 'PT401', NULL, 'no credential: 401');
SELECT throws_ok($$SELECT lattice_http.events_subscribe('{"method": "GET", "client_addr": "127.0.0.1", "api_key": "ltc_nope"}', NULL)$$,
                 'PT401', NULL, 'a wrong key: 401');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
