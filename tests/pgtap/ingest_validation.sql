-- The validator (src/ingest_validate.c): every refusal is PT400 (PT413 for
-- size) with each problem and its JSON path, and nothing is written.
\set raw1 `cat tests/fixtures/captured/001-POST-api_v1_ingest_metadata.json`
BEGIN;
SELECT plan(34);

INSERT INTO lattice.users (id, email, name) VALUES ('a0000000-0000-0000-0000-0000000000aa', 'valid-a@example.com', 'A');
CREATE TEMP TABLE good (body jsonb, raw text);
INSERT INTO good VALUES (((:'raw1')::jsonb ->> 'body_raw')::jsonb, (:'raw1')::jsonb ->> 'body_raw');
GRANT SELECT ON good TO lattice_app;

-- The refusal of `body` as `kind`: {state, message, code, details}, or NULL if accepted.
CREATE FUNCTION pg_temp.refusal(kind text, body text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE st text; msg text; det text;
BEGIN
    IF kind = 'metadata' THEN
        PERFORM lattice.ingest_metadata(body);
    ELSE
        PERFORM lattice.ingest_check(kind, body);
    END IF;
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    RETURN jsonb_build_object('state', st, 'message', msg) || COALESCE(det::jsonb, '{}');
END $$;
-- The paths of a refusal, sorted.
CREATE FUNCTION pg_temp.paths(r jsonb) RETURNS text[]
LANGUAGE sql AS $$ SELECT array_agg(d ->> 'path' ORDER BY d ->> 'path') FROM jsonb_array_elements(r -> 'details') d $$;
-- The good snapshot with one change at path.
CREATE FUNCTION pg_temp.with(path text[], v jsonb) RETURNS text
LANGUAGE sql AS $$ SELECT jsonb_set(body, path, v)::text FROM good $$;
GRANT EXECUTE ON FUNCTION pg_temp.refusal(text, text), pg_temp.paths(jsonb), pg_temp.with(text[], jsonb) TO lattice_app;

SELECT lattice.test_set_tenant('a0000000-0000-0000-0000-0000000000aa');
SET ROLE lattice_app;

SELECT is(pg_temp.refusal('metadata', (SELECT raw FROM good)), NULL, 'the captured snapshot is valid');
-- a re-send whose content is unchanged but whose volatile fields are bad is still refused
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', (SELECT replace(raw, '"lastSeen":"2026-11-29T03:13:36.391Z"', '"lastSeen":"yesterday"') FROM good))),
          ARRAY['service.lastSeen'], 'an unchanged re-send with a bad timestamp is refused');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', (SELECT replace(raw, '"id":"f4w9sjjq0miggdy82m95f25b",', '') FROM good))),
          ARRAY['service.id'], 'an unchanged re-send without its service id is refused');

-- syntax, encoding, size, depth
SELECT is(pg_temp.refusal('metadata', '') ->> 'state', 'PT400', 'an empty body is refused');
SELECT is(pg_temp.refusal('metadata', NULL) ->> 'code', 'validation_failed', 'no body is refused');
SELECT is(pg_temp.refusal('metadata', '{"service": ') ->> 'code', 'invalid_json', 'truncated JSON is refused');
SELECT is(pg_temp.refusal('metadata', '{} {}') ->> 'code', 'invalid_json', 'bytes after the document are refused');
SELECT is(pg_temp.refusal('metadata', '{"a": 1,}') ->> 'code', 'invalid_json', 'strict mode: trailing comma refused');
SELECT is(pg_temp.refusal('metadata', $${'a': 1}$$) ->> 'code', 'invalid_json', 'strict mode: single quotes refused');
SELECT is(pg_temp.refusal('metadata', pg_temp.with('{service,metadata}', (repeat('[', 40) || repeat(']', 40))::jsonb)) ->> 'code',
          'invalid_json', 'nesting deeper than 32 levels is refused');
SELECT is(pg_temp.refusal('metadata', repeat(' ', 3 * 1024 * 1024)) ->> 'state', 'PT413', 'a body over 2 MiB is 413');
SELECT is(pg_temp.refusal('metadata', replace(pg_temp.with('{service,description}', '"x"'), '"x"', '"\u0000"')) ->> 'code',
          'invalid_json', 'an escaped NUL is refused');
SELECT is(pg_temp.refusal('metadata', replace(pg_temp.with('{service,description}', '"x"'), '"x"', '"\ud800"')) ->> 'code',
          'invalid_json', 'a lone surrogate (not UTF-8) is refused');

-- schema-v1 rules, each with its path
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes,3,method}', '"FETCH"'))),
          ARRAY['routes[3].method'], 'a bad method names its route');
SELECT ok(pg_temp.refusal('metadata', pg_temp.with('{routes,3,method}', '"FETCH"')) -> 'details' -> 0 ->> 'message'
          LIKE 'must be one of GET, POST%', 'and says what is allowed');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes,0,path}', '"users"'))),
          ARRAY['routes[0].path'], 'a path must start with /');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{service,name}', '"Capture Demo"'))),
          ARRAY['service.name'], 'a service name must be a DNS label');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{service,version}', '"1.2"'))),
          ARRAY['service.version'], 'a version must be semver');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', (SELECT (body #- '{service,language}')::text FROM good))),
          ARRAY['service.language'], 'a missing required field is named');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes}', '{"a": 1}'))),
          ARRAY['routes'], 'routes must be an array');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{dependencies,1,dependencyType}', '7'))),
          ARRAY['dependencies[1].dependencyType'], 'a wrong type is named');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes,0,handlerLocation}', '{"line": 0}'))),
          ARRAY['routes[0].handlerLocation.line'], 'integers have their minimum');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes,0,handlerLocation}', '{"line": 123456789012345678901234567890}'))),
          ARRAY['routes[0].handlerLocation.line'], 'a huge integer is refused');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes,0,errorRate}', '1e400'))),
          ARRAY['routes[0].errorRate'], 'a number out of range (1e400) is refused');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{service,description}', to_jsonb(repeat('x', 9000))))),
          ARRAY['service.description'], 'strings have a length cap');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', pg_temp.with('{routes}',
              (SELECT jsonb_agg(jsonb_build_object('id', 'r', 'serviceId', 's', 'method', 'GET', 'path', '/p' || i))
                 FROM generate_series(1, 2001) i)))),
          ARRAY['routes'], 'at most 2000 routes');
SELECT is(pg_temp.paths(pg_temp.refusal('metadata', (SELECT jsonb_set(jsonb_set(body, '{routes,1,method}', '"X"'),
                                                     '{service,status}', '"up"')::text FROM good))),
          ARRAY['routes[1].method', 'service.status'], 'every problem is listed, not only the first');
SELECT is(pg_temp.refusal('metadata', pg_temp.with('{service,environment}', '"qa-2"')), NULL,
          'any environment name is accepted');

-- the other documents
SELECT is(pg_temp.paths(pg_temp.refusal('traces', '{"traces": []}')), ARRAY['traces'], 'a trace batch is not empty');
SELECT is(pg_temp.paths(pg_temp.refusal('traces', '{"traces": [{"service_id": "a", "duration_ms": -1}]}')),
          ARRAY['traces[0].duration_ms'], 'a duration is not negative');
SELECT is(pg_temp.paths(pg_temp.refusal('errors', '{"errors": [{"service_id": "a", "environment": "dev", "error_type": "E"}]}')),
          ARRAY['errors[0].message'], 'an error needs its message');
SELECT is(pg_temp.paths(pg_temp.refusal('breadcrumbs', '{"breadcrumbs": [{"session_id": "s", "category": "x", "message": "m", "level": "info"}]}')),
          ARRAY['breadcrumbs[0].category'], 'breadcrumb categories are checked');
SELECT is(pg_temp.paths(pg_temp.refusal('error', '[]')), ARRAY['body'], 'a single error is an object');

-- nothing was written by any refusal
SELECT results_eq($$ SELECT environment, (SELECT count(*)::int FROM lattice.routes r WHERE r.service_id = s.id)
                       FROM lattice.services s ORDER BY 1 $$,
                  $$ VALUES ('development', 7), ('qa-2', 7) $$,
                  'only the two accepted snapshots were written; no refused request wrote anything');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
