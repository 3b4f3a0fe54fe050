-- Tenancy, structurally: every table that holds tenant data has row-level
-- security enabled and forced with the four tenant policies; the roles hold
-- only what they need.  Queries over the catalog, so a table added later
-- without RLS (or without user_id) fails here.
BEGIN;
SELECT plan(14);

CREATE TEMP VIEW tenant_tables AS
SELECT c.oid::regclass AS rel, c.relname::text AS name
  FROM pg_class c
 WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')
   AND (c.relname = 'users' OR EXISTS (
        SELECT FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped));

SELECT has_schema('lattice');
SELECT has_schema('lattice_http');
SELECT has_function('lattice', 'current_user_id', ARRAY[]::text[], 'lattice.current_user_id() exists');

SELECT is_empty($$
    SELECT name FROM tenant_tables t JOIN pg_class c ON c.oid = t.rel
     WHERE NOT (c.relrowsecurity AND c.relforcerowsecurity)
$$, 'every tenant table has RLS enabled and forced');

SELECT is_empty($$
    SELECT c.relname FROM pg_class c
     WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')
       AND c.oid NOT IN (SELECT rel FROM tenant_tables)
       AND c.relname NOT IN ('plans', 'secrets', 'jwt_keys', 'webhook_secrets',
                             'stripe_events', 'outbox', 'graph_versions_global',
                             'audit_unattributed', 'cluster_key', 'retained_invoices', 'reset_links',
                             'alert_state')
$$, 'every table without user_id is a known non-tenant table');

SELECT is_empty($$
    SELECT t.name FROM tenant_tables t
     WHERE t.name <> 'users'
       AND NOT EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = t.rel AND a.attname = 'user_id' AND a.attnotnull)
$$, 'every tenant table has user_id NOT NULL');

SELECT is_empty($$
    SELECT t.name FROM tenant_tables t
     WHERE t.name <> 'audit_log'
       AND (SELECT array_agg(polname::text ORDER BY polname) FROM pg_policy WHERE polrelid = t.rel)
           IS DISTINCT FROM ARRAY['tenant_delete', 'tenant_insert', 'tenant_select', 'tenant_update']
$$, 'every tenant table has exactly the four tenant policies');

SELECT policies_are('lattice', 'audit_log', ARRAY['tenant_select', 'audit_insert', 'audit_admin_insert', 'audit_account_deleted'],
                    'audit_log: tenants read their own rows and append only (an admin only its act_as_tenant row)');

SELECT is_empty($$
    SELECT p.polrelid::regclass::text, p.polname FROM pg_policy p
     WHERE p.polrelid IN (SELECT rel FROM tenant_tables)
       AND pg_get_expr(COALESCE(p.polqual, p.polwithcheck), p.polrelid) !~ 'lattice\.current_user_id\(\)'
$$, 'every policy compares with lattice.current_user_id()');

SELECT ok(NOT rolbypassrls AND NOT rolsuper AND NOT rolcanlogin, 'lattice_app: no BYPASSRLS, no superuser, no login')
  FROM pg_roles WHERE rolname = 'lattice_app';
SELECT ok(NOT rolbypassrls AND NOT rolsuper, 'lattice_api: no BYPASSRLS, no superuser')
  FROM pg_roles WHERE rolname = 'lattice_api';

SELECT is_empty($$
    SELECT c.relname, p.priv FROM pg_class c,
           unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p(priv)
     WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
       AND has_table_privilege('lattice_api', c.oid, p.priv)
$$, 'lattice_api holds no privilege on any table of schema lattice');

SELECT is_empty($$
    SELECT c.relname FROM pg_class c
     WHERE c.relnamespace = 'lattice'::regnamespace AND c.relname ~ 'secret|jwt_key'
       AND (has_table_privilege('lattice_app', c.oid, 'SELECT')
            OR has_table_privilege('lattice_api', c.oid, 'SELECT')
            OR has_table_privilege('lattice_admin', c.oid, 'SELECT'))
$$, 'no API or admin role can read a secrets table');

SELECT is_empty($$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'lattice_http'::regnamespace
       AND NOT (p.prosecdef AND p.proowner = 'lattice_app'::regrole
                AND p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'])
$$, 'every lattice_http function is SECURITY DEFINER, owned by lattice_app, with a pinned search_path');

SELECT * FROM finish();
ROLLBACK;
