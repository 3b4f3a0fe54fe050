-- Errors: grouping by fingerprint, counts, resolve/ignore and re-open,
-- server-side scrubbing, the browser SDK's single error and breadcrumbs.
\set raw1 `cat tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json`
\set raw4 `cat tests/fixtures/captured/004-POST-api_v1_errors_batch.json`
BEGIN;
SELECT plan(19);

INSERT INTO lattice.users (id, email, name) VALUES ('a0000000-0000-0000-0000-0000000000e1', 'errors-a@example.com', 'A');
CREATE TEMP TABLE bodies (name text PRIMARY KEY, body text);
INSERT INTO bodies VALUES ('meta', (:'raw1')::jsonb ->> 'body_raw'), ('errors', (:'raw4')::jsonb ->> 'body_raw');
GRANT SELECT ON bodies TO lattice_app;
CREATE TEMP TABLE seen (k text PRIMARY KEY, v jsonb);
GRANT ALL ON seen TO lattice_app;
-- one error of the demo app with another message
CREATE FUNCTION pg_temp.one(error_type text, message text, extra jsonb DEFAULT '{}') RETURNS text
LANGUAGE sql AS $$
    SELECT jsonb_build_object('errors', jsonb_build_array(jsonb_build_object(
        'service_id', 'capture-demo', 'environment', 'development', 'error_type', error_type, 'message', message,
        'stack_trace', '[{"filename": "/app/db.js", "line_number": 10, "function_name": "query"}]'::jsonb) || extra))::text
$$;
GRANT EXECUTE ON FUNCTION pg_temp.one(text, text, jsonb) TO lattice_app;

SELECT lattice.test_set_tenant('a0000000-0000-0000-0000-0000000000e1');
SET ROLE lattice_app;
SELECT lattice.ingest_metadata(body) FROM bodies WHERE name = 'meta';

INSERT INTO seen SELECT 'e1', lattice.ingest_errors(body) FROM bodies WHERE name = 'errors';
INSERT INTO seen SELECT 'e2', lattice.ingest_errors(body) FROM bodies WHERE name = 'errors';
SELECT is((SELECT v - 'results' FROM seen WHERE k = 'e1'), '{"success": true, "processed": 1, "failed": 0}'::jsonb,
          'the captured batch is processed');
SELECT is((SELECT v -> 'results' -> 0 ->> 'is_new' FROM seen WHERE k = 'e1'), 'true', 'first occurrence is new');
SELECT is((SELECT v -> 'results' -> 0 ->> 'is_new' FROM seen WHERE k = 'e2'), 'false', 'second is not');
SELECT is((SELECT v -> 'results' -> 0 ->> 'occurrence_count' FROM seen WHERE k = 'e2'), '2', 'and is counted');
SELECT is((SELECT v -> 'results' -> 0 ->> 'id' FROM seen WHERE k = 'e2'), (SELECT v -> 'results' -> 0 ->> 'id' FROM seen WHERE k = 'e1'),
          'in the same group');
SELECT is((SELECT top_frame FROM lattice.error_groups), '/opt/lattice-capture/app/demo-app.js:<anonymous>',
          'the top frame is the application''s, not node_modules''');

-- grouping by shape
SELECT lattice.ingest_errors(pg_temp.one('TimeoutError', 'query timed out after 30 ms for user 17'));
SELECT lattice.ingest_errors(pg_temp.one('TimeoutError', 'query timed out after 45 ms for user 8'));
SELECT lattice.ingest_errors(pg_temp.one('RangeError', 'query timed out after 45 ms for user 8'));
SELECT is((SELECT occurrence_count::int FROM lattice.error_groups WHERE error_type = 'TimeoutError'), 2,
          'messages differing in numbers group together');
SELECT is((SELECT count(*)::int FROM lattice.error_groups), 3, 'another type is another group');

-- resolve, recur, re-open; ignored stays ignored
UPDATE lattice.error_groups SET status = 'resolved', resolved_at = now() WHERE error_type = 'TimeoutError';
UPDATE lattice.error_groups SET status = 'ignored' WHERE error_type = 'RangeError';
INSERT INTO seen SELECT 'reopen', lattice.ingest_errors(pg_temp.one('TimeoutError', 'query timed out after 99 ms for user 1'));
SELECT lattice.ingest_errors(pg_temp.one('RangeError', 'query timed out after 1 ms for user 1'));
SELECT is((SELECT v -> 'results' -> 0 ->> 'reopened' FROM seen WHERE k = 'reopen'), 'true', 'a resolved group that recurs re-opens');
SELECT results_eq($$ SELECT status, reopened_count, resolved_at IS NULL FROM lattice.error_groups WHERE error_type = 'TimeoutError' $$,
                  $$ VALUES ('open', 1, true) $$, 'it is open again, counted as re-opened');
SELECT is((SELECT status FROM lattice.error_groups WHERE error_type = 'RangeError'), 'ignored', 'an ignored group stays ignored');
SELECT results_eq($$ SELECT kind, subject FROM lattice.service_changes WHERE kind = 'error_reopened' $$,
                  $$ VALUES ('error_reopened', 'TimeoutError') $$, 'the re-opening is in the service''s history');

-- secrets the plugin missed are scrubbed here
SELECT lattice.ingest_errors(pg_temp.one('AuthError', 'rejected Bearer abc.def-123 for card 4111 1111 1111 1111',
    '{"context": {"headers": {"authorization": "Basic dXNlcjpwYXNz", "accept": "*/*"}, "note": "key ltc_abcdefghijklmnopqrstu"}}'));
SELECT is((SELECT message FROM lattice.error_groups WHERE error_type = 'AuthError'),
          'rejected Bearer [REDACTED] for card [REDACTED]', 'tokens and card numbers are scrubbed from messages');
SELECT is((SELECT sample_context FROM lattice.error_groups WHERE error_type = 'AuthError'),
          '{"headers": {"authorization": "[REDACTED]", "accept": "*/*"}, "note": "key [REDACTED]"}'::jsonb,
          'secret keys and API keys are scrubbed from the context');

-- the browser SDK: one error, breadcrumbs by session
INSERT INTO seen SELECT 'single', lattice.ingest_error(
    '{"service_id": "capture-demo", "environment": "development", "error_type": "Error", "message": "click failed",
      "session_id": "lx1-abc", "stack_trace": [{"filename": "app.js", "line_number": 1, "function_name": "onClick"}],
      "context": {"type": "unhandled_error", "filename": "app.js", "lineno": 1, "colno": 2}}');
SELECT is((SELECT v ->> 'success' FROM seen WHERE k = 'single'), 'true', 'a single browser error is accepted');
SELECT is(lattice.ingest_breadcrumbs(
    '{"breadcrumbs": [{"session_id": "lx1-abc", "category": "navigation", "message": "to /cart", "level": "info", "timestamp": "2020-01-01T00:00:00Z"},
                      {"session_id": "lx1-abc", "category": "user_action", "message": "click #buy", "level": "info", "data": {"password": "x"}},
                      {"session_id": "other", "category": "console", "message": "hi", "level": "debug"}]}'),
    '{"success": true, "stored": 3}'::jsonb, 'breadcrumbs are stored');
SELECT results_eq($$ SELECT b ->> 'message' FROM jsonb_array_elements(lattice.error_detail_json(
                          (SELECT (v ->> 'id')::uuid FROM seen WHERE k = 'single')) -> 'breadcrumbs') b $$,
                  ARRAY['to /cart', 'click #buy'], 'an error shows the breadcrumbs of its session, in order');
SELECT is((SELECT data FROM lattice.breadcrumbs WHERE message = 'click #buy'), '{"password": "[REDACTED]"}'::jsonb,
          'breadcrumb data is scrubbed');
SELECT throws_ok($$ SELECT lattice.ingest_error('{"service_id": "nope", "environment": "d", "error_type": "E", "message": "m"}') $$,
                 'PT422', NULL, 'a single error of an unknown service is refused');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
