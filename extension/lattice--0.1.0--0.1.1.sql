-- lattice 0.1.0 -> 0.1.1
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.1.1'" to load this file. \quit

-- SQL helpers that run with their caller's rights no longer pin search_path
-- (their bodies name every object with its schema; the SECURITY DEFINER
-- functions keep theirs).  A function with a SET clause is never inlined and
-- is parsed again at every call; without it, the planner inlines the simple
-- ones into the calling statement -- 1.5x the database's requests/s on the
-- shim's own statement.
DO $upgrade$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_language l ON l.oid = p.prolang
         WHERE p.pronamespace = 'lattice'::regnamespace
           AND l.lanname = 'sql'
           AND NOT p.prosecdef
           AND p.proconfig = ARRAY['search_path=pg_catalog, pg_temp']
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s RESET search_path', f);
    END LOOP;
END
$upgrade$;

-- The tenant the shim reads with every answer: the C function itself, not a
-- SQL wrapper parsed at every request.  CREATE OR REPLACE keeps the owner
-- and the grants; the SECURITY DEFINER and pinned search_path every
-- lattice_http function has (90_security.sql) are set again.
CREATE OR REPLACE FUNCTION lattice_http.tenant_id()
RETURNS uuid
AS 'MODULE_PATHNAME', 'lattice_current_user_id'
LANGUAGE C STABLE;
ALTER FUNCTION lattice_http.tenant_id() SECURITY DEFINER;
ALTER FUNCTION lattice_http.tenant_id() SET search_path = pg_catalog, pg_temp;
