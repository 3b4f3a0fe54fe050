-- Lattice on Citus: one coordinator that takes every request, and workers
-- that hold the tenants' rows in shards.  One node stays the default and
-- needs none of this.  docs/scaling.md has the design and threat model.
--
-- Tables by kind (lattice.cluster_tables() lists them):
--   distributed  every tenant table, by user_id (users by id), co-located
--                with lattice.users, so a request touches one worker;
--   reference    the look-ups across tenants and the global data, copied to
--                every node and read locally on the coordinator;
--   local        what only the coordinator uses: server secrets, the
--                outbox, unattributed audit events, the cluster key.

-- The key the coordinator signs tenant tokens with and the workers verify
-- them with (src/tenant_token.c): the same 32 bytes on every node, read by
-- the extension owner only.  Empty on a single node.
CREATE TABLE lattice.cluster_key (
    key         bytea NOT NULL CHECK (pg_catalog.length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE UNIQUE INDEX cluster_key_one_row ON lattice.cluster_key ((true));
REVOKE ALL ON lattice.cluster_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.cluster_key', '');

CREATE FUNCTION lattice.cluster_key_generate() RETURNS bytea
    AS 'MODULE_PATHNAME', 'lattice_cluster_key_generate' LANGUAGE C VOLATILE STRICT;

-- How each table of schema lattice is placed on Citus, from the catalog as
-- the RLS rules are (90_security.sql): a table with a user_id column is a
-- tenant table and distributed unless it is one of the named look-ups.
CREATE FUNCTION lattice.cluster_tables(OUT rel regclass, OUT kind text, OUT dist_column text)
RETURNS SETOF record
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.rel, t.kind, CASE WHEN t.kind = 'distributed' THEN t.dist_column END
      FROM (
    SELECT c.oid::regclass AS rel,
           CASE WHEN c.relname IN ('plans', 'account_emails', 'api_key_prefixes', 'session_tokens',
                                   'billing_customers', 'stripe_events', 'webhook_secrets')
                THEN 'reference'
                WHEN c.relname = 'users' OR EXISTS (
                     SELECT FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped)
                THEN 'distributed'
                ELSE 'local' END AS kind,
           CASE WHEN c.relname = 'users' THEN 'id' ELSE 'user_id' END AS dist_column,
           c.relname
      FROM pg_class c
     WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')) t
     ORDER BY t.relname <> 'users', t.relname
$$;

-- The workers' part of the set-up, also for a worker added later (after
-- citus_add_node, which runs CREATE EXTENSION there): the cluster key,
-- no secrets or plans of their own, lattice_app's login, no metadata sync.
-- Idempotent; superuser only.
CREATE FUNCTION lattice.cluster_sync_workers() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k bytea;
    w record;
    cmd text;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'lattice.cluster_sync_workers: permission denied'
            USING ERRCODE = 'insufficient_privilege', DETAIL = 'Only a superuser sets up a cluster.';
    END IF;
    -- the key: this node's, or a new one
    SELECT c.key INTO k FROM lattice.cluster_key c;
    IF k IS NULL THEN
        k := lattice.cluster_key_generate();
        INSERT INTO lattice.cluster_key (key) VALUES (k);
    END IF;

    FOR w IN SELECT n.nodename, n.nodeport FROM pg_dist_node n
              WHERE n.noderole = 'primary' AND n.groupid <> 0 AND n.hasmetadata LOOP
        PERFORM pg_catalog.stop_metadata_sync_to_node(w.nodename, w.nodeport);
    END LOOP;
    FOR cmd IN SELECT unnest(ARRAY[
            'DELETE FROM lattice.cluster_key',
            pg_catalog.format('INSERT INTO lattice.cluster_key (key) VALUES (%L)', k),
            'DELETE FROM lattice.secrets',
            'DELETE FROM lattice.plans',
            -- role DDL is the coordinator's to propagate, unless told otherwise
            'DO $d$BEGIN SET LOCAL citus.enable_ddl_propagation TO off;'
            ' ALTER ROLE lattice_app LOGIN; ALTER ROLE lattice_app SET track_activities = off; END$d$']) LOOP
        IF EXISTS (SELECT FROM pg_catalog.run_command_on_workers(cmd) r WHERE NOT r.success) THEN
            RAISE EXCEPTION 'lattice.cluster_sync_workers: a worker refused: %', cmd
                USING ERRCODE = 'connection_failure';
        END IF;
    END LOOP;
    IF EXISTS (SELECT FROM pg_catalog.run_command_on_workers('SELECT count(*) FROM lattice.cluster_key') r
                WHERE NOT r.success OR r.result <> '1') THEN
        RAISE EXCEPTION 'lattice.cluster_sync_workers: a worker did not take the cluster key'
            USING ERRCODE = 'connection_failure';
    END IF;
    RETURN (SELECT pg_catalog.count(*)::integer FROM pg_dist_node n
             WHERE n.noderole = 'primary' AND n.groupid <> 0);
END
$$;

-- Run once on the coordinator, as a superuser, after CREATE EXTENSION
-- lattice (which Citus also runs on the workers) and citus_add_node for
-- every worker:
--   * lattice.cluster_sync_workers(): one cluster key, generated here and
--     written to every worker; the workers keep no secrets or plans of their
--     own (the install script Citus runs there seeds none; any a worker made
--     when the extension was created on it by hand are removed); metadata is
--     not synced to the workers (the coordinator plans every query, the
--     workers hold shards only); lattice_app, the role the API functions run
--     as, may log in on the workers (Citus connects as the current user) and
--     its statements are not shown in pg_stat_activity there, where they
--     carry the token;
--   * every table placed as lattice.cluster_tables() says, with the foreign
--     keys between them put back once both ends are placed.
CREATE FUNCTION lattice.cluster_setup(shard_count integer DEFAULT NULL)
RETURNS TABLE (rel regclass, kind text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    fks text[] := '{}';
    fk record;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'lattice.cluster_setup: permission denied'
            USING ERRCODE = 'insufficient_privilege', DETAIL = 'Only a superuser sets up a cluster.';
    END IF;
    IF pg_catalog.to_regproc('pg_catalog.citus_is_coordinator') IS NULL THEN
        RAISE EXCEPTION 'lattice.cluster_setup: Citus is not installed in this database'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'lattice.cluster_setup: run it on the coordinator'
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF EXISTS (SELECT FROM pg_dist_partition p WHERE p.logicalrelid = 'lattice.users'::regclass) THEN
        RAISE EXCEPTION 'lattice.cluster_setup: the tables are distributed already'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_dist_node n WHERE n.noderole = 'primary' AND n.groupid <> 0) THEN
        RAISE EXCEPTION 'lattice.cluster_setup: no workers; add them with citus_add_node first'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    PERFORM lattice.cluster_sync_workers();

    -- foreign keys come off while the tables move, and go back after
    SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
    IF shard_count IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.shard_count', shard_count::text, true);
    END IF;
    FOR fk IN SELECT c.conrelid::regclass AS tbl, c.conname, pg_catalog.pg_get_constraintdef(c.oid) AS def
                FROM pg_constraint c
               WHERE c.contype = 'f' AND c.connamespace = 'lattice'::regnamespace LOOP
        fks := fks || pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tbl, fk.conname, fk.def);
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.conname);
    END LOOP;

    FOR t IN SELECT * FROM lattice.cluster_tables() c WHERE c.kind <> 'local' LOOP
        IF t.kind = 'reference' THEN
            PERFORM pg_catalog.create_reference_table(t.rel);
        ELSIF t.rel = 'lattice.users'::regclass THEN
            PERFORM pg_catalog.create_distributed_table(t.rel, t.dist_column, colocate_with => 'none');
        ELSE
            PERFORM pg_catalog.create_distributed_table(t.rel, t.dist_column, colocate_with => 'lattice.users');
        END IF;
        -- rows that were here before now live in the shards
        PERFORM pg_catalog.truncate_local_data_after_distributing_table(t.rel);
        rel := t.rel;
        kind := t.kind;
        RETURN NEXT;
    END LOOP;

    FOR i IN 1 .. pg_catalog.cardinality(fks) LOOP
        EXECUTE fks[i];
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION lattice.cluster_key_generate(), lattice.cluster_tables(),
                       lattice.cluster_sync_workers(), lattice.cluster_setup(integer) FROM PUBLIC;

-- The tenant tables an account deletion and an export walk (86_account.sql,
-- 87_http_account.sql).
GRANT EXECUTE ON FUNCTION lattice.cluster_tables() TO lattice_app;
