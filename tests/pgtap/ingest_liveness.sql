-- Liveness derived from last_seen (lattice.ingest_inactive_after, 15 min by
-- default) and retention of statistics (lattice.ingest_retention, 30 days).
\set raw1 `cat tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json`
\set raw5 `cat tests/fixtures/captured/005-POST-api_v1_ingest_metadata.json`
BEGIN;
SELECT plan(9);

SELECT is(lattice.service_liveness(now() - interval '1 minute', false), 'active', 'seen a minute ago: active');
SELECT is(lattice.service_liveness(now() - interval '16 minutes', false), 'inactive', 'three missed submissions: inactive');
SELECT is(lattice.service_liveness(now(), true), 'external', 'an external node is external');
SET LOCAL lattice.ingest_inactive_after = '1 hour';
SELECT is(lattice.service_liveness(now() - interval '16 minutes', false), 'active', 'the threshold is a setting');
RESET lattice.ingest_inactive_after;

INSERT INTO lattice.users (id, email, name) VALUES ('a0000000-0000-0000-0000-0000000000f1', 'live-a@example.com', 'A');
CREATE TEMP TABLE bodies (name text PRIMARY KEY, body text);
INSERT INTO bodies VALUES ('v1', (:'raw1')::jsonb ->> 'body_raw'), ('resend', (:'raw5')::jsonb ->> 'body_raw');
GRANT SELECT ON bodies TO lattice_app;

SELECT lattice.test_set_tenant('a0000000-0000-0000-0000-0000000000f1');
SET ROLE lattice_app;
SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'v1';
RESET ROLE;
UPDATE lattice.services SET last_seen = now() - interval '20 minutes';
INSERT INTO lattice.route_stats (user_id, service_id, method, path, bucket, request_count, latency_hist)
SELECT user_id, id, 'GET', '/users', now() - interval '40 days', 5, lattice.hist_of('{1}') FROM lattice.services;
SET ROLE lattice_app;
SELECT is((SELECT lattice.service_liveness(last_seen, is_external) FROM lattice.services), 'inactive',
          'a quiet service reads as inactive');
SELECT is((SELECT lattice.ingest_metadata(body) ->> 'unchanged' FROM bodies WHERE name = 'resend'), 'true',
          'its next (unchanged) submission');
SELECT is((SELECT lattice.service_liveness(last_seen, is_external) FROM lattice.services), 'active',
          'makes it active again');

SELECT lattice.ingest_traces('{"traces": [{"service_id": "capture-demo", "duration_ms": 2, "status_code": 200, "method": "GET", "path": "/users"}]}');
SELECT is((SELECT count(*)::int FROM lattice.route_stats WHERE bucket < now() - interval '30 days'), 0,
          'buckets older than the retention are dropped when a new bucket opens');
SELECT is((SELECT count(*)::int FROM lattice.route_stats), 1, 'the new bucket is kept');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
