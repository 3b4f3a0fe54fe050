-- make run's demo tenant: the account and two API keys, what no plugin can
-- report.  Its services, routes, packages, versions, calls and errors come
-- through the real ingest API (scripts/demo_seed.mjs, then
-- scripts/demo_live.mjs while make run runs).  Runs once (skipped when the
-- demo account exists).  Prints "key <ingest-only key>" (for plugins) and
-- "read-key <read-only key>" (for API scripts); scripts/run.sh issues fresh
-- ones of each at every start and prints those.
\set ON_ERROR_STOP 1
SELECT NOT EXISTS (SELECT FROM lattice.users WHERE email = 'demo@lattice.local') AS fresh \gset
\if :fresh
SELECT lattice.create_user('demo@lattice.local', 'lattice-demo-password', 'Demo Shop') AS demo_id \gset
SELECT 'key ' || lattice.create_api_key(:'demo_id', 'demo key', ARRAY['ingest']) AS line;
SELECT 'read-key ' || lattice.create_api_key(:'demo_id', 'demo read key', ARRAY['read']) AS line;
\else
SELECT 'existing';
\endif
