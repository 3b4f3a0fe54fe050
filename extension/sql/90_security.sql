-- Applied to every object the parts before it created, so that no new table
-- or function can be forgotten (92_cluster.sql, the one part after it,
-- creates no tenant table and revokes its own functions from PUBLIC):
--  * every table of schema lattice with a user_id column is a tenant table:
--    RLS enabled and forced, one policy per command against current_user_id();
--  * lattice.users is the tenant itself: its policies compare id;
--  * lattice_http functions are SECURITY DEFINER, owned by lattice_app (which
--    RLS binds), with a pinned search_path, executable by lattice_api only;
--  * nothing in lattice is executable by PUBLIC unless granted below.
DO $security$
DECLARE
    t record;
    f record;
    seq record;
    col text;
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel,
               CASE WHEN c.relname = 'users' THEN 'id' ELSE 'user_id' END AS col
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')
           AND (c.relname = 'users' OR EXISTS (
                SELECT FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped))
    LOOP
        col := t.col;
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t.rel);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t.rel);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_select ON %s FOR SELECT USING (%I = lattice.current_user_id())', t.rel, col);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (%I = lattice.current_user_id())', t.rel, col);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_update ON %s FOR UPDATE USING (%I = lattice.current_user_id()) WITH CHECK (%I = lattice.current_user_id())',
            t.rel, col, col);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_delete ON %s FOR DELETE USING (%I = lattice.current_user_id())', t.rel, col);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO lattice_app', t.rel);
        -- identity columns: Citus draws their values on the coordinator, as the caller
        FOR seq IN SELECT d.objid::regclass AS s FROM pg_catalog.pg_depend d
                     JOIN pg_catalog.pg_class q ON q.oid = d.objid AND q.relkind = 'S'
                    WHERE d.refobjid = t.rel AND d.classid = 'pg_class'::regclass AND d.deptype = 'i'
                      AND d.refclassid = 'pg_class'::regclass LOOP
            EXECUTE pg_catalog.format('GRANT USAGE ON SEQUENCE %s TO lattice_app', seq.s);
        END LOOP;
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO lattice_admin', t.rel);
        PERFORM pg_catalog.pg_extension_config_dump(t.rel, '');
    END LOOP;

    FOR f IN
        SELECT p.oid::regprocedure AS fn
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'lattice_http'::regnamespace
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SECURITY DEFINER', f.fn);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.fn);
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO lattice_app', f.fn);
    END LOOP;
END
$security$;

-- The audit trail is append-only for everyone but the owner: lattice_app
-- may add rows, never change them, and delete them only with the account
-- (below).  A tenant reads its own rows.
REVOKE UPDATE, DELETE ON lattice.audit_log FROM lattice_app;
DROP POLICY tenant_update ON lattice.audit_log;
DROP POLICY tenant_delete ON lattice.audit_log;
DROP POLICY tenant_insert ON lattice.audit_log;
CREATE POLICY audit_insert ON lattice.audit_log FOR INSERT TO lattice_app
    WITH CHECK (user_id = lattice.current_user_id());
-- lattice.act_as_tenant's row, written as the admin: only that event, for
-- the tenant being acted as, under the admin's own name.
CREATE POLICY audit_admin_insert ON lattice.audit_log FOR INSERT TO lattice_admin
    WITH CHECK (user_id = lattice.current_user_id() AND action = 'admin.act_as_tenant'
                AND actor = SESSION_USER);
GRANT INSERT ON lattice.audit_log TO lattice_admin;
-- Deleting the account deletes its trail too, only in the transaction that
-- proved the deletion (password and second factor, src/account_reauth.c).
CREATE POLICY audit_account_deleted ON lattice.audit_log FOR DELETE TO lattice_app
    USING (user_id = lattice.current_user_id() AND lattice.account_deleting());
GRANT DELETE ON lattice.audit_log TO lattice_app;
GRANT USAGE ON SEQUENCE lattice.audit_log_id_seq TO lattice_admin;
-- Events no tenant is known for: lattice_app adds them and reads none.
REVOKE ALL ON lattice.audit_unattributed FROM PUBLIC;
GRANT INSERT ON lattice.audit_unattributed TO lattice_app;
GRANT SELECT ON lattice.audit_unattributed TO lattice_admin;
SELECT pg_catalog.pg_extension_config_dump('lattice.audit_unattributed', '');

-- The look-ups across tenants are read and written by the identity
-- functions (SECURITY DEFINER) only: the API role gets nothing of them,
-- even for its own tenant.
REVOKE ALL ON lattice.account_emails, lattice.api_key_prefixes, lattice.session_tokens
    FROM PUBLIC, lattice_app, lattice_admin;

-- Reference data every role reads.
GRANT SELECT ON lattice.plans TO lattice_app, lattice_admin;
-- The seeded plan comes with CREATE EXTENSION; plans added later are data.
SELECT pg_catalog.pg_extension_config_dump('lattice.plans', $$WHERE id <> 'standard'$$);
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('lattice.audit_log', 'id')::regclass, '');

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice_http FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice_http TO lattice_api;
GRANT EXECUTE ON FUNCTION lattice.current_user_id() TO PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.http_json(integer, jsonb, jsonb),
                          lattice.http_error(integer, text, text, jsonb, jsonb),
                          lattice.raise_http(integer, text, text, jsonb, jsonb),
                          lattice.audit(text, text, jsonb, jsonb, uuid)
    TO lattice_app;
GRANT EXECUTE ON FUNCTION lattice.act_as_tenant(uuid, text), lattice.act_as_tenant_c(uuid) TO lattice_admin;
