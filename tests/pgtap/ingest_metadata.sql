-- Metadata ingest: the captured snapshot, the periodic re-send (no row
-- rewritten), reconciliation with stable ids and change events, duplicate
-- packages, environments, tenants, entitlement and the service limit.
\set raw1 `cat tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json`
\set raw5 `cat tests/fixtures/captured/005-POST-api_v1_ingest_metadata.json`
BEGIN;
SELECT plan(34);

INSERT INTO lattice.plans (id, name, price_cents, max_services) VALUES ('tiny', 'Tiny', 100, 1);
INSERT INTO lattice.users (id, email, name) VALUES
    ('a0000000-0000-0000-0000-00000000000a', 'ingest-a@example.com', 'A'),
    ('b0000000-0000-0000-0000-00000000000b', 'ingest-b@example.com', 'B');
INSERT INTO lattice.users (id, email, name, trial_ends_at) VALUES
    ('c0000000-0000-0000-0000-00000000000c', 'ingest-c@example.com', 'C', now() - interval '1 day');
INSERT INTO lattice.users (id, email, name, plan_id) VALUES
    ('d0000000-0000-0000-0000-00000000000d', 'ingest-d@example.com', 'D', 'tiny');

CREATE TEMP TABLE bodies (name text PRIMARY KEY, body text);
INSERT INTO bodies VALUES ('v1', (:'raw1')::jsonb ->> 'body_raw'), ('resend', (:'raw5')::jsonb ->> 'body_raw');
-- v2: new version, GET /boom gone, GET /health new, express upgraded
INSERT INTO bodies
SELECT 'v2', jsonb_set(jsonb_set(jsonb_set(b, '{service,version}', '"1.3.0"'),
           '{routes}', (SELECT jsonb_agg(r) FROM jsonb_array_elements(b -> 'routes') r WHERE r ->> 'path' <> '/boom')
                       || '[{"id": "h1", "serviceId": "x", "method": "GET", "path": "/health"}]'),
           '{dependencies}', (SELECT jsonb_agg(CASE WHEN d ->> 'packageName' = 'express'
                                                    THEN jsonb_set(d, '{version}', '"4.21.3"') ELSE d END)
                                FROM jsonb_array_elements(b -> 'dependencies') d))::text
  FROM (SELECT body::jsonb AS b FROM bodies WHERE name = 'v1') x;
-- v3: v2 with GET /boom back, express listed twice as direct, left-pad also direct
INSERT INTO bodies
SELECT 'v3', jsonb_set(jsonb_set(b, '{routes}', (b -> 'routes') || '[{"id": "z", "serviceId": "x", "method": "GET", "path": "/boom"}]'),
           '{dependencies}', (b -> 'dependencies')
               || '[{"id": "d1", "serviceId": "x", "packageName": "express", "version": "4.21.4", "dependencyType": "direct"},
                    {"id": "d2", "serviceId": "x", "packageName": "left-pad", "version": "1.3.0", "dependencyType": "direct"}]')::text
  FROM (SELECT body::jsonb AS b FROM bodies WHERE name = 'v2') x;
INSERT INTO bodies
SELECT 'prod', jsonb_set(body::jsonb, '{service,environment}', '"production"')::text FROM bodies WHERE name = 'v1';
INSERT INTO bodies
SELECT 'test-env', jsonb_set(body::jsonb, '{service,environment}', '"test"')::text FROM bodies WHERE name = 'v1';
INSERT INTO bodies
SELECT 'other', jsonb_set(body::jsonb, '{service,name}', '"other-svc"')::text FROM bodies WHERE name = 'v1';
GRANT SELECT ON bodies TO lattice_app;
CREATE TEMP TABLE seen (k text PRIMARY KEY, v jsonb);
GRANT ALL ON seen TO lattice_app;

SELECT lattice.test_set_tenant('a0000000-0000-0000-0000-00000000000a');
SET ROLE lattice_app;

INSERT INTO seen SELECT 'v1', lattice.ingest_metadata(body) FROM bodies WHERE name = 'v1';
SELECT is((SELECT v - 'serviceId' FROM seen WHERE k = 'v1'),
          '{"success": true, "routesProcessed": 7, "dependenciesProcessed": 4}'::jsonb,
          'the captured snapshot is answered as the plugin expects');
SELECT is((SELECT (v ->> 'serviceId')::uuid FROM seen WHERE k = 'v1'),
          (SELECT id FROM lattice.services WHERE name = 'capture-demo' AND environment = 'development'),
          'serviceId is the server''s id of (name, environment)');
SELECT is((SELECT count(*)::int FROM lattice.routes), 7, 'seven routes stored');
SELECT is((SELECT count(*)::int FROM lattice.dependencies), 4, 'four dependencies stored');
SELECT results_eq($$ SELECT kind FROM lattice.service_changes $$, ARRAY['service_registered'],
                  'a first snapshot is one service_registered event, not one per route');
SELECT is((SELECT framework || '/' || language || '/' || version FROM lattice.services), 'express/typescript/1.2.3',
          'service attributes stored');

-- periodic re-send: identical but for lastSeen (and here a new instance id)
INSERT INTO seen SELECT 'rows_before', jsonb_agg(jsonb_build_array(id, xmin::text) ORDER BY id) FROM lattice.routes;
INSERT INTO seen SELECT 'deps_before', jsonb_agg(jsonb_build_array(id, xmin::text) ORDER BY id) FROM lattice.dependencies;
INSERT INTO seen SELECT 'resend', lattice.ingest_metadata(body) FROM bodies WHERE name = 'resend';
-- a restarted plugin: new service and route ids, new timestamps
INSERT INTO seen SELECT 'resend2', lattice.ingest_metadata(replace(replace(body, 'f4w9sjjq0miggdy82m95f25b', 'abc123'),
                                                                   'do43wn9iudhoaknqhhnrxrjj', 'newrouteid'))
  FROM bodies WHERE name = 'resend';
-- the same snapshot with its keys in another order takes the full path and changes nothing
INSERT INTO seen SELECT 'reordered', lattice.ingest_metadata(jsonb_set(body::jsonb, '{service,id}', '"abc123"')::text)
  FROM bodies WHERE name = 'resend';
SELECT is((SELECT v ->> 'unchanged' FROM seen WHERE k = 'resend'), 'true', 're-send recognised as unchanged');
SELECT is((SELECT v ->> 'unchanged' FROM seen WHERE k = 'resend2'), 'true', 'new plugin ids and timestamps are not a change');
SELECT is((SELECT v ->> 'unchanged' FROM seen WHERE k = 'reordered'), NULL, 'keys in another order take the full path');
SELECT is((SELECT v ->> 'serviceId' FROM seen WHERE k = 'resend'), (SELECT v ->> 'serviceId' FROM seen WHERE k = 'v1'),
          're-send answers the same service id');
SELECT is((SELECT jsonb_agg(jsonb_build_array(id, xmin::text) ORDER BY id) FROM lattice.routes),
          (SELECT v FROM seen WHERE k = 'rows_before'), 're-send rewrites no route row');
SELECT is((SELECT jsonb_agg(jsonb_build_array(id, xmin::text) ORDER BY id) FROM lattice.dependencies),
          (SELECT v FROM seen WHERE k = 'deps_before'), 're-send rewrites no dependency row');
SELECT is((SELECT instance_id FROM lattice.services), 'abc123', 're-send records the plugin instance');
SELECT is((SELECT count(*)::int FROM lattice.service_changes), 1, 're-send records no change');

-- a changed snapshot
INSERT INTO seen SELECT 'ids_before', jsonb_object_agg(method || ' ' || path, id) FROM lattice.routes;
SELECT is((SELECT lattice.ingest_metadata(body) ->> 'routesProcessed' FROM bodies WHERE name = 'v2'), '7',
          'changed snapshot processed');
SELECT results_eq($$ SELECT kind, subject, old_value, new_value FROM lattice.service_changes
                      WHERE kind <> 'service_registered' ORDER BY kind, subject $$,
    $$ VALUES ('dependency_version_changed', 'express', '4.21.2', '4.21.3'),
              ('route_added', 'GET /health', NULL, NULL),
              ('route_removed', 'GET /boom', NULL, NULL),
              ('service_version_changed', 'capture-demo', '1.2.3', '1.3.0') $$,
    'each change is recorded: route added and removed, dependency and service versions');
SELECT ok((SELECT removed_at IS NOT NULL FROM lattice.routes WHERE path = '/boom'), 'a missing route is marked removed');
SELECT is((SELECT count(*)::int FROM lattice.routes r, seen s
            WHERE s.k = 'ids_before' AND (s.v ->> (r.method || ' ' || r.path))::uuid = r.id), 7,
          'the routes that stayed (and the removed one) keep their ids');
SELECT is((SELECT count(*)::int FROM lattice.routes WHERE removed_at IS NULL), 7, 'seven current routes');

SELECT lives_ok($$ SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'v3' $$, 'snapshot with duplicates accepted');
SELECT is((SELECT id FROM lattice.routes WHERE path = '/boom'),
          (SELECT (v ->> 'GET /boom')::uuid FROM seen WHERE k = 'ids_before'), 'a route that comes back keeps its id');
SELECT ok((SELECT removed_at IS NULL FROM lattice.routes WHERE path = '/boom'), 'and is current again');
SELECT results_eq($$ SELECT version FROM lattice.dependencies WHERE package_name = 'express' $$, ARRAY['4.21.4'],
                  'a package listed twice with one type is one row; the last listing wins');
SELECT results_eq($$ SELECT dependency_type FROM lattice.dependencies WHERE package_name = 'left-pad' ORDER BY 1 $$,
                  ARRAY['dev', 'direct'], 'one package with two types is two rows');

-- environments and tenants
SELECT isnt((SELECT lattice.ingest_metadata(body) ->> 'serviceId' FROM bodies WHERE name = 'prod'),
            (SELECT v ->> 'serviceId' FROM seen WHERE k = 'v1'), 'production is another service than development');
SELECT lives_ok($$ SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'test-env' $$,
                'any environment name is accepted');
SELECT is((SELECT count(*)::int FROM lattice.services WHERE name = 'capture-demo'), 3, 'three environments, three services');

RESET ROLE;
SELECT lattice.test_set_tenant('b0000000-0000-0000-0000-00000000000b');
SET ROLE lattice_app;
INSERT INTO seen SELECT 'b', lattice.ingest_metadata(body) FROM bodies WHERE name = 'v1';
SELECT isnt((SELECT v ->> 'serviceId' FROM seen WHERE k = 'b'), (SELECT v ->> 'serviceId' FROM seen WHERE k = 'v1'),
            'another tenant''s service of the same name is its own');
SELECT is((SELECT count(*)::int FROM lattice.services), 1, 'tenant B sees only its service');
SELECT is((SELECT count(*)::int FROM lattice.service_changes), 1, 'and only its history');
RESET ROLE;
SELECT is((SELECT version FROM lattice.services WHERE id = (SELECT (v ->> 'serviceId')::uuid FROM seen WHERE k = 'v1')),
          '1.3.0', 'tenant A''s service is untouched by B');

-- entitlement: an expired trial without subscription may not ingest
SELECT lattice.test_set_tenant('c0000000-0000-0000-0000-00000000000c');
SET ROLE lattice_app;
SELECT throws_ok($$ SELECT lattice.require_ingest('c0000000-0000-0000-0000-00000000000c') $$, 'PT402', NULL,
                 'an expired trial is refused with 402');
RESET ROLE;
SELECT lattice.test_set_tenant('a0000000-0000-0000-0000-00000000000a');
SET ROLE lattice_app;
SELECT ok(lattice.may_ingest('a0000000-0000-0000-0000-00000000000a'), 'an account in its trial may ingest');
RESET ROLE;

-- the plan's service limit applies to new services only
SELECT lattice.test_set_tenant('d0000000-0000-0000-0000-00000000000d');
SET ROLE lattice_app;
SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'v1';
SELECT throws_ok($$ SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'other' $$, 'PT403', NULL,
                 'a service beyond the plan''s limit is refused with 403');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
