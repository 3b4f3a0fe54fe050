-- lattice 0.2.0 -> 0.3.0: every tenant key led by user_id, look-up tables for
-- e-mail, key prefix and session token, audit events without a tenant apart,
-- no triggers on tenant tables
\echo Use "ALTER EXTENSION lattice UPDATE TO '0.3.0'" to load this file. \quit

-- The graph triggers and the welcome-mail trigger go: the ingest functions
-- record graph events and bump the version themselves, and the C function
-- that creates accounts calls lattice.billing_welcome(uuid).  (Their trigger
-- functions are dropped with the other removed functions below.)
DROP TRIGGER graph_services_inserted ON lattice.services;
DROP TRIGGER graph_services_deleted ON lattice.services;
DROP TRIGGER graph_service_changed ON lattice.services;
DROP TRIGGER graph_connections_inserted ON lattice.connections;
DROP TRIGGER graph_connections_deleted ON lattice.connections;
DROP TRIGGER graph_connection_moved ON lattice.connections;
DROP TRIGGER billing_welcome ON lattice.users;

-- Foreign keys on the old keys come off first; they go back on the new keys
-- once those exist.  billing_customers, stripe_events and outbox no longer
-- reference users at all.
ALTER TABLE lattice.routes DROP CONSTRAINT routes_service_id_user_id_fkey;
ALTER TABLE lattice.dependencies DROP CONSTRAINT dependencies_service_id_user_id_fkey;
ALTER TABLE lattice.connections
    DROP CONSTRAINT connections_source_service_id_user_id_fkey,
    DROP CONSTRAINT connections_target_service_id_user_id_fkey;
ALTER TABLE lattice.service_changes DROP CONSTRAINT service_changes_service_id_user_id_fkey;
ALTER TABLE lattice.route_stats DROP CONSTRAINT route_stats_service_id_user_id_fkey;
ALTER TABLE lattice.error_occurrences DROP CONSTRAINT error_occurrences_group_id_user_id_fkey;
ALTER TABLE lattice.error_groups DROP CONSTRAINT error_groups_service_id_user_id_fkey;
ALTER TABLE lattice.api_keys DROP CONSTRAINT api_keys_rotated_from_fkey;
ALTER TABLE lattice.billing_customers DROP CONSTRAINT billing_customers_user_id_fkey;
ALTER TABLE lattice.stripe_events DROP CONSTRAINT stripe_events_account_id_fkey;
ALTER TABLE lattice.outbox DROP CONSTRAINT outbox_account_id_fkey;

-- Primary keys (user_id, id); unique constraints with user_id in front; the
-- indexes on user_id alone that the new primary keys cover are dropped.
ALTER TABLE lattice.services
    DROP CONSTRAINT services_id_user_id_key,
    DROP CONSTRAINT services_pkey,
    ADD CONSTRAINT services_pkey PRIMARY KEY (user_id, id);

ALTER TABLE lattice.routes
    DROP CONSTRAINT routes_id_user_id_key,
    DROP CONSTRAINT routes_service_id_method_path_key,
    DROP CONSTRAINT routes_pkey,
    ADD CONSTRAINT routes_user_id_service_id_method_path_key UNIQUE (user_id, service_id, method, path),
    ADD CONSTRAINT routes_pkey PRIMARY KEY (user_id, id);
DROP INDEX lattice.routes_user_id_idx;

ALTER TABLE lattice.dependencies
    DROP CONSTRAINT dependencies_service_id_package_name_dependency_type_key,
    DROP CONSTRAINT dependencies_pkey,
    ADD CONSTRAINT dependencies_pkey PRIMARY KEY (user_id, id),
    ADD CONSTRAINT dependencies_user_id_service_id_package_name_dependency_typ_key
        UNIQUE (user_id, service_id, package_name, dependency_type);
DROP INDEX lattice.dependencies_user_id_idx;

ALTER TABLE lattice.connections
    DROP CONSTRAINT connections_source_service_id_target_service_id_key,
    DROP CONSTRAINT connections_pkey,
    ADD CONSTRAINT connections_pkey PRIMARY KEY (user_id, id),
    ADD CONSTRAINT connections_user_id_source_service_id_target_service_id_key
        UNIQUE (user_id, source_service_id, target_service_id);
DROP INDEX lattice.connections_user_id_idx;
DROP INDEX lattice.connections_target_service_id_idx;
CREATE INDEX connections_user_id_target_service_id_idx ON lattice.connections (user_id, target_service_id);

ALTER TABLE lattice.service_changes
    DROP CONSTRAINT service_changes_pkey,
    ADD CONSTRAINT service_changes_pkey PRIMARY KEY (user_id, id);
DROP INDEX lattice.service_changes_user_id_idx;

ALTER TABLE lattice.route_stats
    DROP CONSTRAINT route_stats_pkey,
    ADD CONSTRAINT route_stats_pkey PRIMARY KEY (user_id, service_id, method, path, bucket);

ALTER TABLE lattice.error_groups
    DROP CONSTRAINT error_groups_service_id_fingerprint_key,
    DROP CONSTRAINT error_groups_id_user_id_key,
    DROP CONSTRAINT error_groups_pkey,
    ADD CONSTRAINT error_groups_user_id_service_id_fingerprint_key UNIQUE (user_id, service_id, fingerprint),
    ADD CONSTRAINT error_groups_pkey PRIMARY KEY (user_id, id);

ALTER TABLE lattice.error_occurrences
    DROP CONSTRAINT error_occurrences_pkey,
    ADD CONSTRAINT error_occurrences_pkey PRIMARY KEY (user_id, id);

ALTER TABLE lattice.breadcrumbs
    DROP CONSTRAINT breadcrumbs_pkey,
    ADD CONSTRAINT breadcrumbs_pkey PRIMARY KEY (user_id, id);

ALTER TABLE lattice.graph_events
    DROP CONSTRAINT graph_events_pkey,
    ADD CONSTRAINT graph_events_pkey PRIMARY KEY (user_id, id);

-- Credentials: their uniqueness moves to the look-up tables below.
ALTER TABLE lattice.users DROP CONSTRAINT users_email_key;

ALTER TABLE lattice.api_keys
    DROP CONSTRAINT api_keys_prefix_key,
    DROP CONSTRAINT api_keys_pkey,
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (user_id, id);
DROP INDEX lattice.api_keys_user_id_idx;

ALTER TABLE lattice.sessions
    DROP CONSTRAINT sessions_token_hash_key,
    DROP CONSTRAINT sessions_pkey,
    ADD CONSTRAINT sessions_pkey PRIMARY KEY (user_id, id);
DROP INDEX lattice.sessions_user_id_idx;

-- Billing: one subscription per account, keyed by it; Stripe's ids are
-- looked up within the account.
ALTER TABLE lattice.subscriptions
    DROP CONSTRAINT subscriptions_stripe_customer_id_key,
    DROP CONSTRAINT subscriptions_stripe_subscription_id_key,
    DROP CONSTRAINT subscriptions_user_id_key,
    DROP CONSTRAINT subscriptions_pkey,
    ADD CONSTRAINT subscriptions_pkey PRIMARY KEY (user_id);

ALTER TABLE lattice.invoices
    DROP CONSTRAINT invoices_stripe_invoice_id_key,
    DROP CONSTRAINT invoices_pkey,
    ADD CONSTRAINT invoices_pkey PRIMARY KEY (user_id, id),
    ADD CONSTRAINT invoices_user_id_stripe_invoice_id_key UNIQUE (user_id, stripe_invoice_id);

-- Foreign keys between tenant tables, (user_id, x) -> parent (user_id, id).
ALTER TABLE lattice.routes
    ADD CONSTRAINT routes_user_id_service_id_fkey FOREIGN KEY (user_id, service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE;
ALTER TABLE lattice.dependencies
    ADD CONSTRAINT dependencies_user_id_service_id_fkey FOREIGN KEY (user_id, service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE;
ALTER TABLE lattice.connections
    ADD CONSTRAINT connections_user_id_source_service_id_fkey FOREIGN KEY (user_id, source_service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE,
    ADD CONSTRAINT connections_user_id_target_service_id_fkey FOREIGN KEY (user_id, target_service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE;
ALTER TABLE lattice.service_changes
    ADD CONSTRAINT service_changes_user_id_service_id_fkey FOREIGN KEY (user_id, service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE;
ALTER TABLE lattice.route_stats
    ADD CONSTRAINT route_stats_user_id_service_id_fkey FOREIGN KEY (user_id, service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE;
ALTER TABLE lattice.error_groups
    ADD CONSTRAINT error_groups_user_id_service_id_fkey FOREIGN KEY (user_id, service_id)
        REFERENCES lattice.services (user_id, id) ON DELETE CASCADE;
ALTER TABLE lattice.error_occurrences
    ADD CONSTRAINT error_occurrences_user_id_group_id_fkey FOREIGN KEY (user_id, group_id)
        REFERENCES lattice.error_groups (user_id, id) ON DELETE CASCADE;
-- keys are revoked, never deleted one by one (only with their account)
ALTER TABLE lattice.api_keys
    ADD CONSTRAINT api_keys_user_id_rotated_from_fkey FOREIGN KEY (user_id, rotated_from)
        REFERENCES lattice.api_keys (user_id, id);

-- Look-ups across tenants, filled from the rows there are: the address an
-- account signs in with, the prefix an API key is found by, the hash of a
-- session token.  Their primary keys keep each unique.
CREATE TABLE lattice.account_emails (
    email       text PRIMARY KEY,
    user_id     uuid NOT NULL
);
CREATE TABLE lattice.api_key_prefixes (
    prefix      text PRIMARY KEY,
    user_id     uuid NOT NULL,
    key_id      uuid NOT NULL
);
CREATE TABLE lattice.session_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     uuid NOT NULL,
    session_id  uuid NOT NULL
);
INSERT INTO lattice.account_emails (email, user_id)
SELECT u.email, u.id FROM lattice.users u;
INSERT INTO lattice.api_key_prefixes (prefix, user_id, key_id)
SELECT k.prefix, k.user_id, k.id FROM lattice.api_keys k;
INSERT INTO lattice.session_tokens (token_hash, user_id, session_id)
SELECT s.token_hash, s.user_id, s.id FROM lattice.sessions s;

-- As 90_security.sql leaves every table with a user_id column: RLS enabled
-- and forced, the four tenant policies; then the look-ups are taken from
-- every role but the owner (the identity functions read and write them).
DO $security$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY['lattice.account_emails', 'lattice.api_key_prefixes',
                             'lattice.session_tokens']::regclass[] LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_select ON %s FOR SELECT USING (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_update ON %s FOR UPDATE USING (user_id = lattice.current_user_id()) WITH CHECK (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format(
            'CREATE POLICY tenant_delete ON %s FOR DELETE USING (user_id = lattice.current_user_id())', t);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO lattice_app', t);
        EXECUTE pg_catalog.format('GRANT SELECT ON %s TO lattice_admin', t);
        PERFORM pg_catalog.pg_extension_config_dump(t, '');
    END LOOP;
END
$security$;
REVOKE ALL ON lattice.account_emails, lattice.api_key_prefixes, lattice.session_tokens
    FROM PUBLIC, lattice_app, lattice_admin;

-- Audit events no tenant is known for move to their own table (the
-- operator's); every row left in audit_log has a tenant.  The rows keep
-- their ids, and the new table's identity continues after them.
CREATE TABLE lattice.audit_unattributed (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb
);
CREATE INDEX audit_unattributed_at_idx ON lattice.audit_unattributed (at);
WITH moved AS (
    DELETE FROM lattice.audit_log a WHERE a.user_id IS NULL
    RETURNING a.id, a.at, a.actor, a.action, a.target, a.client_addr, a.request_id, a.details
)
INSERT INTO lattice.audit_unattributed (id, at, actor, action, target, client_addr, request_id, details)
OVERRIDING SYSTEM VALUE
SELECT m.id, m.at, m.actor, m.action, m.target, m.client_addr, m.request_id, m.details
  FROM moved m ORDER BY m.id;
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('lattice.audit_unattributed', 'id'),
                         max(u.id))
  FROM lattice.audit_unattributed u HAVING max(u.id) IS NOT NULL;
REVOKE ALL ON lattice.audit_unattributed FROM PUBLIC;
GRANT INSERT ON lattice.audit_unattributed TO lattice_app;
GRANT SELECT ON lattice.audit_unattributed TO lattice_admin;
SELECT pg_catalog.pg_extension_config_dump('lattice.audit_unattributed', '');

ALTER TABLE lattice.audit_log
    ALTER COLUMN user_id SET NOT NULL,
    DROP CONSTRAINT audit_log_pkey,
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (user_id, id);
ALTER POLICY audit_insert ON lattice.audit_log TO lattice_app
    WITH CHECK (user_id = lattice.current_user_id());
-- lattice.act_as_tenant writes its audit row as the admin (it is no longer
-- SECURITY DEFINER): only that event, for the tenant acted as, in their name.
CREATE POLICY audit_admin_insert ON lattice.audit_log FOR INSERT TO lattice_admin
    WITH CHECK (user_id = lattice.current_user_id() AND action = 'admin.act_as_tenant'
                AND actor = SESSION_USER);
GRANT INSERT ON lattice.audit_log TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.act_as_tenant_c(uuid) TO lattice_admin;

-- The key tenant tokens are signed with on Citus (src/tenant_token.c):
-- read by the extension owner only, empty on a single node.
CREATE TABLE lattice.cluster_key (
    key         bytea NOT NULL CHECK (pg_catalog.length(key) = 32),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE UNIQUE INDEX cluster_key_one_row ON lattice.cluster_key ((true));
REVOKE ALL ON lattice.cluster_key FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('lattice.cluster_key', '');


-- Tenant tables' identity sequences: on Citus the coordinator draws their
-- values as the caller, so lattice_app uses them (as 90_security.sql grants).
GRANT USAGE ON SEQUENCE lattice.service_changes_id_seq, lattice.error_occurrences_id_seq,
    lattice.breadcrumbs_id_seq, lattice.audit_log_id_seq, lattice.graph_events_id_seq TO lattice_app;
GRANT USAGE ON SEQUENCE lattice.audit_log_id_seq TO lattice_admin;  -- lattice.act_as_tenant's row

-- Functions: dropped, then every new or changed definition.
DROP FUNCTION lattice.api_key_json(lattice.api_keys,timestamp with time zone);
DROP FUNCTION lattice.billing_welcome_trigger();
DROP FUNCTION lattice.error_group_json(lattice.error_groups,text);
DROP FUNCTION lattice.graph_connection_moved();
DROP FUNCTION lattice.graph_connections_deleted();
DROP FUNCTION lattice.graph_connections_inserted();
DROP FUNCTION lattice.graph_service_changed();
DROP FUNCTION lattice.graph_services_deleted();
DROP FUNCTION lattice.graph_services_inserted();
DROP FUNCTION lattice.outbox_email(uuid,text,jsonb);
DROP FUNCTION lattice.service_json(lattice.services);

CREATE OR REPLACE FUNCTION lattice.api_key_json(k anyelement, now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT jsonb_build_object(
        'id', k.id, 'name', k.name, 'prefix', k.prefix, 'created_at', k.created_at,
        'last_used', date_trunc('minute', k.last_used), 'expires_at', k.expires_at,
        'revoked_at', k.revoked_at, 'rotated_from', k.rotated_from, 'scopes', to_jsonb(k.scopes),
        'status', CASE WHEN k.revoked_at IS NOT NULL THEN 'revoked'
                       WHEN k.expires_at <= now THEN 'expired'
                       ELSE 'active' END)
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_welcome(account uuid, email text, name text, trial_ends timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM lattice.outbox_email(account, 'welcome',
        pg_catalog.jsonb_build_object('trial_ends', to_char(trial_ends AT TIME ZONE 'UTC', 'FMMonth FMDD, YYYY')),
        email, name);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.cluster_key_generate()
 RETURNS bytea
 LANGUAGE c
 STRICT
AS '$libdir/lattice', $function$lattice_cluster_key_generate$function$;

CREATE OR REPLACE FUNCTION lattice.cluster_setup(shard_count integer DEFAULT NULL::integer)
 RETURNS TABLE(rel regclass, kind text)
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.cluster_sync_workers()
 RETURNS integer
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.cluster_tables(OUT rel regclass, OUT kind text, OUT dist_column text)
 RETURNS SETOF record
 LANGUAGE sql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION lattice.error_group_json(g anyelement, service_name text)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT pg_catalog.jsonb_build_object(
        'id', g.id, 'serviceId', g.service_id, 'serviceName', service_name,
        'environment', g.environment, 'fingerprint', g.fingerprint,
        'errorType', g.error_type, 'message', g.message, 'topFrame', g.top_frame,
        'status', g.status, 'occurrenceCount', g.occurrence_count,
        'reopenedCount', g.reopened_count, 'firstSeen', g.first_seen, 'lastSeen', g.last_seen,
        'resolvedAt', g.resolved_at, 'reopenedAt', g.reopened_at)
$function$;

CREATE OR REPLACE FUNCTION lattice.outbox_email(account uuid, template text, data jsonb DEFAULT '{}'::jsonb, to_email text DEFAULT NULL::text, to_name text DEFAULT NULL::text)
 RETURNS bigint
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    u record;
    m record;
    new_id bigint;
BEGIN
    -- the caller may know the address (sign-up, before its row is readable here)
    IF to_email IS NOT NULL THEN
        SELECT to_email AS email, to_name AS name INTO u;
    ELSE
        SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    m := lattice.billing_email_content(template, u.name,
                                       COALESCE(data, '{}') || pg_catalog.jsonb_build_object('origin', lattice.billing_public_origin()));
    INSERT INTO lattice.outbox (account_id, kind, purpose, mail_to, mail_subject, mail_text, mail_html, context)
    VALUES (account, 'email', 'email.' || template, u.email, m.subject, m.text_body, m.html_body,
            pg_catalog.jsonb_build_object('template', template))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.service_json(s anyelement)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'id', s.id, 'name', s.name, 'environment', s.environment, 'version', s.version,
        'language', s.language, 'framework', s.framework, 'runtime', s.runtime,
        'description', s.description, 'repository', s.repository,
        'healthCheckUrl', s.health_check_url, 'deploymentType', s.deployment_type,
        'status', lattice.service_liveness(s.last_seen, s.is_external),
        'isExternal', s.is_external, 'discoveredBy', s.discovered_by, 'metadata', s.metadata,
        'firstSeen', s.first_seen, 'lastSeen', s.last_seen))
$function$;

CREATE OR REPLACE FUNCTION lattice.act_as_tenant(user_id uuid, reason text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF reason IS NULL OR pg_catalog.length(pg_catalog.btrim(reason)) = 0 THEN
        RAISE EXCEPTION 'lattice.act_as_tenant: a reason is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM lattice.act_as_tenant_c(act_as_tenant.user_id);
    INSERT INTO lattice.audit_log (user_id, action, target, details)
    VALUES (act_as_tenant.user_id, 'admin.act_as_tenant', act_as_tenant.user_id::text,
            pg_catalog.jsonb_build_object('reason', reason));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.audit(action text, target text DEFAULT NULL::text, details jsonb DEFAULT NULL::jsonb, req jsonb DEFAULT NULL::jsonb, user_id uuid DEFAULT lattice.current_user_id())
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    IF audit.user_id IS NULL THEN
        INSERT INTO lattice.audit_unattributed (action, target, client_addr, request_id, details)
        VALUES (audit.action, audit.target,
                CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
    ELSE
        INSERT INTO lattice.audit_log (user_id, action, target, client_addr, request_id, details)
        VALUES (audit.user_id, audit.action, audit.target,
                CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
    END IF;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.billing_invoices(user_id uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    RETURN (SELECT pg_catalog.jsonb_build_object('invoices', COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', i.stripe_invoice_id, 'number', i.number, 'amount_due', i.amount_due,
               'amount_paid', i.amount_paid, 'currency', i.currency, 'status', i.status,
               'hosted_invoice_url', i.hosted_invoice_url, 'invoice_pdf', i.invoice_pdf,
               'period_start', i.period_start, 'period_end', i.period_end, 'date', i.created)
               ORDER BY i.created DESC, i.stripe_invoice_id), '[]'::jsonb))
      FROM lattice.invoices i
     WHERE i.user_id = billing_invoices.user_id);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.error_detail_json(gid uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    g lattice.error_groups;
    svc_name text;
    last_session text;
    last_at timestamptz;
    uid uuid := lattice.current_user_id();
BEGIN
    SELECT x.* INTO g FROM lattice.error_groups x WHERE x.user_id = uid AND x.id = gid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such error');
    END IF;
    SELECT s.name INTO svc_name FROM lattice.services s WHERE s.user_id = uid AND s.id = g.service_id;
    SELECT o.session_id, o.at INTO last_session, last_at FROM lattice.error_occurrences o
     WHERE o.user_id = uid AND o.group_id = g.id AND o.session_id IS NOT NULL ORDER BY o.at DESC LIMIT 1;
    RETURN lattice.error_group_json(g, svc_name) || pg_catalog.jsonb_build_object(
        'sampleStack', g.sample_stack,
        'sampleContext', g.sample_context,
        'occurrences', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'at', o.at, 'sessionId', o.session_id, 'message', o.message, 'context', o.context))
                       ORDER BY o.at DESC, o.id DESC)
              FROM (SELECT * FROM lattice.error_occurrences o WHERE o.user_id = uid AND o.group_id = g.id
                     ORDER BY o.at DESC, o.id DESC LIMIT 20) o), '[]'),
        'breadcrumbs', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'sessionId', b.session_id, 'category', b.category, 'level', b.level,
                       'message', b.message, 'data', b.data, 'timestamp', b.at)) ORDER BY b.at, b.id)
              FROM (SELECT * FROM lattice.breadcrumbs b
                     WHERE b.user_id = g.user_id AND b.session_id = last_session
                       AND b.at <= last_at + interval '1 minute'
                     ORDER BY b.at DESC, b.id DESC LIMIT 100) b), '[]'));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.graph_bump(tenant uuid)
 RETURNS bigint
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    v bigint;
BEGIN
    INSERT INTO lattice.graph_versions AS g (user_id, version, changed_at)
    VALUES (tenant, 1, pg_catalog.now())
    ON CONFLICT (user_id) DO UPDATE SET version = g.version + 1, changed_at = EXCLUDED.changed_at
    RETURNING g.version INTO v;
    PERFORM pg_catalog.pg_notify('lattice_graph', tenant::text || ':' || v::text);
    RETURN v;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.graph_edges_at(at timestamp with time zone)
 RETURNS TABLE(source_service_id uuid, target_service_id uuid)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    RETURN QUERY
    SELECT c.source_service_id, c.target_service_id
      FROM (SELECT DISTINCT ON (e.source_service_id, e.target_service_id)
                   e.source_service_id, e.target_service_id, e.kind
              FROM lattice.graph_events e
             WHERE e.user_id = tenant AND e.at <= graph_edges_at.at
               AND e.kind IN ('edge_added', 'edge_removed')
             ORDER BY e.source_service_id, e.target_service_id, e.at DESC, e.id DESC) c
     WHERE c.kind = 'edge_added';
END
$function$;

CREATE OR REPLACE FUNCTION lattice.graph_services_at(at timestamp with time zone)
 RETURNS TABLE(service_id uuid, name text, environment text)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    tenant uuid := lattice.current_user_id();
BEGIN
    RETURN QUERY
    SELECT s.service_id, s.name, s.environment
      FROM (SELECT DISTINCT ON (e.service_id) e.service_id, e.kind, e.name, e.environment
              FROM lattice.graph_events e
             WHERE e.user_id = tenant AND e.at <= graph_services_at.at
               AND e.kind IN ('service_added', 'service_removed')
             ORDER BY e.service_id, e.at DESC, e.id DESC) s
     WHERE s.kind = 'service_added';
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_breadcrumbs(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.ingest_tenant();
    n bigint;
BEGIN
    PERFORM lattice.ingest_check('breadcrumbs', body);
    PERFORM lattice.rate_enforce_ingest('browser');
    INSERT INTO lattice.breadcrumbs (user_id, session_id, category, level, message, data, at)
    SELECT uid, b ->> 'session_id', b ->> 'category', b ->> 'level', lattice.scrub_text(b ->> 'message'),
           lattice.scrub_json(b -> 'data'),
           LEAST(COALESCE((b ->> 'timestamp')::timestamptz, pg_catalog.now()), pg_catalog.now() + interval '5 minutes')
      FROM pg_catalog.jsonb_array_elements(body::jsonb -> 'breadcrumbs') WITH ORDINALITY AS x(b, o)
     ORDER BY o
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF pg_catalog.random() < 0.01 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;
    RETURN pg_catalog.jsonb_build_object('success', true, 'stored', n);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_error_items(items jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.ingest_tenant();
    e jsonb;
    i integer;
    sid uuid;
    env text;
    msg text;
    frame text;
    fp text;
    at timestamptz;
    received timestamptz := pg_catalog.now();
    g record;
    prev_status text;
    results jsonb := '[]';
    failures jsonb := '[]';
BEGIN
    FOR e, i IN SELECT x.e, (x.o - 1)::integer FROM pg_catalog.jsonb_array_elements(items) WITH ORDINALITY AS x(e, o)
    LOOP
        env := e ->> 'environment';
        SELECT s.id INTO sid FROM lattice.services s
         WHERE s.user_id = uid AND s.name = e ->> 'service_id' AND NOT s.is_external
         ORDER BY (s.environment = env) DESC, s.last_seen DESC
         LIMIT 1;
        IF sid IS NULL THEN
            failures := failures || pg_catalog.jsonb_build_object('index', i,
                'error', pg_catalog.jsonb_build_object('code', 'unknown_service',
                    'message', 'no service of this name has submitted metadata'));
            CONTINUE;
        END IF;
        msg := lattice.scrub_text(e ->> 'message');
        frame := lattice.error_top_frame(e -> 'stack_trace');
        fp := lattice.error_fingerprint(e ->> 'error_type', msg, frame);
        at := COALESCE((e ->> 'timestamp')::timestamptz, pg_catalog.now());
        IF at > pg_catalog.now() + interval '5 minutes' THEN
            at := pg_catalog.now();
        END IF;

        SELECT x.status INTO prev_status FROM lattice.error_groups x
         WHERE x.user_id = uid AND x.service_id = sid AND x.fingerprint = fp FOR UPDATE;

        INSERT INTO lattice.error_groups AS x
            (user_id, service_id, fingerprint, environment, error_type, message, top_frame,
             occurrence_count, first_seen, last_seen, sample_stack, sample_context)
        VALUES (uid, sid, fp, env, e ->> 'error_type', msg, frame, 1, at, at,
                e -> 'stack_trace', lattice.scrub_json(e -> 'context'))
        ON CONFLICT (user_id, service_id, fingerprint) DO UPDATE SET
            occurrence_count = x.occurrence_count + 1,
            first_seen = LEAST(x.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(x.last_seen, EXCLUDED.last_seen),
            message = EXCLUDED.message,
            environment = EXCLUDED.environment,
            sample_stack = EXCLUDED.sample_stack,
            sample_context = EXCLUDED.sample_context,
            status = CASE WHEN x.status = 'resolved' THEN 'open' ELSE x.status END,
            resolved_at = CASE WHEN x.status = 'resolved' THEN NULL ELSE x.resolved_at END,
            reopened_at = CASE WHEN x.status = 'resolved' THEN received ELSE x.reopened_at END,
            reopened_count = x.reopened_count + CASE WHEN x.status = 'resolved' THEN 1 ELSE 0 END
        RETURNING x.id, (x.xmax = 0) AS is_new, x.occurrence_count, x.status, x.error_type,
                  COALESCE(prev_status = 'resolved', false) AS reopened
        INTO g;

        INSERT INTO lattice.error_occurrences (user_id, group_id, at, session_id, message, context)
        VALUES (uid, g.id, at, e ->> 'session_id', msg, lattice.scrub_json(e -> 'context'));

        IF g.reopened THEN
            INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, new_value)
            VALUES (uid, sid, 'error_reopened', g.error_type, pg_catalog.left(msg, 200));
        END IF;

        results := results || pg_catalog.jsonb_build_object('index', i, 'id', g.id, 'fingerprint', fp,
            'is_new', g.is_new, 'occurrence_count', g.occurrence_count, 'status', g.status,
            'reopened', g.reopened);
    END LOOP;

    IF pg_catalog.random() < 0.01 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;

    RETURN pg_catalog.jsonb_build_object(
        'success', pg_catalog.jsonb_array_length(failures) = 0,
        'processed', pg_catalog.jsonb_array_length(results),
        'failed', pg_catalog.jsonb_array_length(failures),
        'results', results)
        || CASE WHEN pg_catalog.jsonb_array_length(failures) > 0
                THEN pg_catalog.jsonb_build_object('failures', failures) ELSE '{}'::jsonb END;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_metadata(body text)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.ingest_tenant();
    chk record;
    env text;
    sid uuid;
    doc jsonb;
    svc jsonb;
    diff jsonb;
    old lattice.services;
    is_new boolean := false;
    changed_state boolean := false;
BEGIN
    SELECT * INTO chk FROM lattice.ingest_check_metadata(body);
    PERFORM lattice.rate_enforce_ingest(chk.name);
    env := COALESCE(chk.environment, 'production');

    -- The periodic re-send: nothing changed but the volatile fields, which
    -- the digest checked; the rest equals a snapshot that passed validation.
    IF chk.volatile_ok THEN
        UPDATE lattice.services s
           SET last_seen = pg_catalog.now(), instance_id = chk.instance_id
         WHERE s.user_id = uid AND s.name = chk.name AND s.environment = env
           AND s.snapshot_hash = chk.hash AND NOT s.is_external
        RETURNING s.id INTO sid;
    END IF;
    IF sid IS NOT NULL THEN
        RETURN pg_catalog.jsonb_build_object('success', true, 'serviceId', sid, 'unchanged', true,
                                             'routesProcessed', chk.routes,
                                             'dependenciesProcessed', chk.dependencies);
    END IF;

    PERFORM lattice.ingest_check('metadata', body);
    doc := body::jsonb;
    svc := doc -> 'service';

    SELECT s.* INTO old FROM lattice.services s
     WHERE s.user_id = uid AND s.name = chk.name AND s.environment = env FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM lattice.check_service_limit(uid);
        INSERT INTO lattice.services (user_id, name, environment)
        VALUES (uid, chk.name, env)
        ON CONFLICT (user_id, name, environment) DO NOTHING
        RETURNING id INTO sid;
        IF sid IS NULL THEN  -- registered concurrently: take that row
            SELECT s.* INTO STRICT old FROM lattice.services s
             WHERE s.user_id = uid AND s.name = chk.name AND s.environment = env FOR UPDATE;
            sid := old.id;
        ELSE
            is_new := true;
            INSERT INTO lattice.graph_events (user_id, kind, service_id, name, environment)
            VALUES (uid, 'service_added', sid, chk.name, env);
        END IF;
    ELSE
        sid := old.id;
        IF old.is_external THEN
            PERFORM lattice.check_service_limit(uid);
        END IF;
    END IF;

    UPDATE lattice.services s SET
        version = svc ->> 'version',
        language = svc ->> 'language',
        framework = svc ->> 'framework',
        runtime = svc ->> 'runtime',
        description = svc ->> 'description',
        repository = svc ->> 'repository',
        health_check_url = svc ->> 'healthCheckUrl',
        deployment_type = svc ->> 'deploymentType',
        discovered_by = svc -> 'discoveredBy',
        metadata = svc -> 'metadata',
        status = 'active',
        is_external = false,
        instance_id = chk.instance_id,
        snapshot_hash = chk.hash,
        last_seen = pg_catalog.now()
     WHERE s.user_id = uid AND s.id = sid;

    IF is_new OR old.is_external THEN
        INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, new_value)
        VALUES (uid, sid, 'service_registered', chk.name || ' (' || env || ')', svc ->> 'version');
        changed_state := true;
    ELSE
        IF old.version IS DISTINCT FROM svc ->> 'version' THEN
            INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value, new_value)
            VALUES (uid, sid, 'service_version_changed', chk.name, old.version, svc ->> 'version');
        END IF;
        changed_state := old.version IS DISTINCT FROM svc ->> 'version'
            OR old.status IS DISTINCT FROM 'active'
            OR old.language IS DISTINCT FROM svc ->> 'language'
            OR old.framework IS DISTINCT FROM svc ->> 'framework'
            OR old.runtime IS DISTINCT FROM svc ->> 'runtime'
            OR old.deployment_type IS DISTINCT FROM svc ->> 'deploymentType';
    END IF;

    -- Routes: (method, path) is the identity; the last duplicate wins.  The
    -- difference is computed once into `diff`, then applied by plain
    -- statements: on Citus each is one task on the tenant's worker (a CTE
    -- shared by several statements would be materialised and sent to every
    -- worker).
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', x.id, 'method', x.method, 'path', x.path, 'attrs', x.attrs, 'kind', x.kind)), '[]')
      INTO diff
      FROM (SELECT cur.id, COALESCE(inc.method, cur.method) AS method, COALESCE(inc.path, cur.path) AS path,
                   inc.attrs,
                   CASE WHEN cur.id IS NULL THEN 'added'
                        WHEN inc.method IS NULL THEN CASE WHEN cur.removed_at IS NULL THEN 'removed' END
                        WHEN cur.removed_at IS NOT NULL THEN 'readded'
                        WHEN cur.attrs IS DISTINCT FROM inc.attrs THEN 'updated' END AS kind
              FROM (SELECT DISTINCT ON (r ->> 'method', r ->> 'path')
                           r ->> 'method' AS method, r ->> 'path' AS path,
                           r - '{id,serviceId,firstSeen,lastSeen,method,path}'::text[] AS attrs
                      FROM pg_catalog.jsonb_array_elements(COALESCE(doc -> 'routes', '[]')) WITH ORDINALITY AS e(r, o)
                     ORDER BY r ->> 'method', r ->> 'path', o DESC) inc
              FULL JOIN (SELECT r.id, r.method, r.path, r.attrs, r.removed_at FROM lattice.routes r
                          WHERE r.user_id = uid AND r.service_id = sid) cur
                ON cur.method = inc.method AND cur.path = inc.path) x
     WHERE x.kind IS NOT NULL;
    INSERT INTO lattice.routes (user_id, service_id, method, path, attrs)
    SELECT uid, sid, d.method, d.path, d.attrs
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
     WHERE d.kind = 'added'
    ON CONFLICT DO NOTHING;
    UPDATE lattice.routes r SET attrs = d.attrs, removed_at = NULL, last_seen = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
     WHERE r.user_id = uid AND r.id = d.id AND d.kind IN ('readded', 'updated');
    UPDATE lattice.routes r SET removed_at = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
     WHERE r.user_id = uid AND r.id = d.id AND d.kind = 'removed';
    IF NOT is_new THEN
        INSERT INTO lattice.service_changes (user_id, service_id, kind, subject)
        SELECT uid, sid, CASE d.kind WHEN 'removed' THEN 'route_removed' ELSE 'route_added' END,
               d.method || ' ' || d.path
          FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, method text, path text, attrs jsonb, kind text)
         WHERE d.kind IN ('added', 'readded', 'removed')
         ORDER BY d.kind, d.method, d.path
        ON CONFLICT DO NOTHING;
    END IF;

    -- Dependencies: (package, type) is the identity; duplicates are folded.
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', x.id, 'package_name', x.package_name, 'dependency_type', x.dependency_type,
               'old_version', x.old_version, 'version', x.version, 'version_range', x.version_range,
               'scope', x.scope, 'attrs', x.attrs, 'kind', x.kind)), '[]')
      INTO diff
      FROM (SELECT cur.id, COALESCE(inc.package_name, cur.package_name) AS package_name,
                   COALESCE(inc.dependency_type, cur.dependency_type) AS dependency_type,
                   cur.version AS old_version, inc.version, inc.version_range, inc.scope, inc.attrs,
                   CASE WHEN cur.id IS NULL THEN 'added'
                        WHEN inc.package_name IS NULL THEN CASE WHEN cur.removed_at IS NULL THEN 'removed' END
                        WHEN cur.removed_at IS NOT NULL THEN 'readded'
                        WHEN cur.version IS DISTINCT FROM inc.version THEN 'version'
                        WHEN (cur.version_range, cur.scope, cur.attrs) IS DISTINCT FROM
                             (inc.version_range, inc.scope, inc.attrs) THEN 'updated' END AS kind
              FROM (SELECT DISTINCT ON (x ->> 'packageName', x ->> 'dependencyType')
                           x ->> 'packageName' AS package_name, x ->> 'dependencyType' AS dependency_type,
                           x ->> 'version' AS version, x ->> 'versionRange' AS version_range, x ->> 'scope' AS scope,
                           x - '{id,serviceId,firstSeen,lastSeen,packageName,dependencyType,version,versionRange,scope}'::text[] AS attrs
                      FROM pg_catalog.jsonb_array_elements(COALESCE(doc -> 'dependencies', '[]')) WITH ORDINALITY AS e(x, o)
                     ORDER BY x ->> 'packageName', x ->> 'dependencyType', o DESC) inc
              FULL JOIN (SELECT d.id, d.package_name, d.dependency_type, d.version, d.version_range, d.scope,
                                d.attrs, d.removed_at
                           FROM lattice.dependencies d WHERE d.user_id = uid AND d.service_id = sid) cur
                ON cur.package_name = inc.package_name AND cur.dependency_type = inc.dependency_type) x
     WHERE x.kind IS NOT NULL;
    INSERT INTO lattice.dependencies (user_id, service_id, package_name, dependency_type, version,
                                      version_range, scope, attrs)
    SELECT uid, sid, d.package_name, d.dependency_type, d.version, d.version_range, d.scope, d.attrs
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
           old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
     WHERE d.kind = 'added'
    ON CONFLICT DO NOTHING;
    UPDATE lattice.dependencies x
       SET version = d.version, version_range = d.version_range, scope = d.scope, attrs = d.attrs,
           removed_at = NULL, last_seen = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
           old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
     WHERE x.user_id = uid AND x.id = d.id AND d.kind IN ('readded', 'version', 'updated');
    UPDATE lattice.dependencies x SET removed_at = pg_catalog.now()
      FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
           old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
     WHERE x.user_id = uid AND x.id = d.id AND d.kind = 'removed';
    IF NOT is_new THEN
        INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value, new_value)
        SELECT uid, sid,
               CASE d.kind WHEN 'removed' THEN 'dependency_removed'
                           WHEN 'version' THEN 'dependency_version_changed'
                           ELSE 'dependency_added' END,
               d.package_name || CASE WHEN d.dependency_type = 'direct' THEN '' ELSE ' (' || d.dependency_type || ')' END,
               CASE WHEN d.kind IN ('version', 'removed') THEN d.old_version END,
               CASE WHEN d.kind <> 'removed' THEN d.version END
          FROM pg_catalog.jsonb_to_recordset(diff) AS d(id uuid, package_name text, dependency_type text,
               old_version text, version text, version_range text, scope text, attrs jsonb, kind text)
         WHERE d.kind IN ('added', 'readded', 'removed', 'version')
         ORDER BY d.kind, d.package_name, d.dependency_type
        ON CONFLICT DO NOTHING;
    END IF;

    IF changed_state THEN
        PERFORM lattice.ingest_graph_changed();
    END IF;

    RETURN pg_catalog.jsonb_build_object('success', true, 'serviceId', sid,
                                         'routesProcessed', chk.routes,
                                         'dependenciesProcessed', chk.dependencies);
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_prune(user_id uuid)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    before timestamptz := pg_catalog.now() - lattice.ingest_setting('retention');
BEGIN
    DELETE FROM lattice.route_stats s WHERE s.user_id = ingest_prune.user_id AND s.bucket < before;
    DELETE FROM lattice.error_occurrences o WHERE o.user_id = ingest_prune.user_id AND o.at < before;
    DELETE FROM lattice.breadcrumbs b WHERE b.user_id = ingest_prune.user_id AND b.received_at < before;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.ingest_trace_doc(doc jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.ingest_tenant();
    batch lattice.ingest_trace[];
    keep interval := lattice.ingest_setting('retention');
    width interval := lattice.ingest_bucket_width();
    new_nodes bigint := 0;
    new_edges bigint := 0;
    new_buckets bigint := 0;
    known jsonb;
    edges jsonb;
    results jsonb;
    failures jsonb;
BEGIN
    WITH t AS (
        SELECT (o - 1)::integer AS idx, e ->> 'service_id' AS sname,
               COALESCE(e ->> 'method', NULLIF(pg_catalog.split_part(e ->> 'operation_name', ' ', 1), '')) AS method,
               e ->> 'path' AS path, e ->> 'operation_name' AS operation,
               (e ->> 'duration_ms')::double precision AS d, (e ->> 'status_code')::integer AS sc,
               NULLIF(e ->> 'caller_service', '') AS caller,
               COALESCE((e ->> 'start_time')::timestamptz, (e ->> 'timestamp')::timestamptz) AS at
          FROM pg_catalog.jsonb_array_elements(doc -> 'traces') WITH ORDINALITY AS x(e, o)
    ), svc AS (
        SELECT DISTINCT ON (s.name) s.id, s.name, s.environment
          FROM lattice.services s
         WHERE s.user_id = uid AND NOT s.is_external AND s.name IN (SELECT t.sname FROM t)
         ORDER BY s.name, s.last_seen DESC
    ), tpl AS (
        SELECT r.service_id, pg_catalog.array_agg(r.method || ' ' || r.path ORDER BY r.method, r.path) AS arr
          FROM lattice.routes r
         WHERE r.user_id = uid AND r.service_id IN (SELECT svc.id FROM svc) AND r.removed_at IS NULL
         GROUP BY r.service_id
    )
    SELECT pg_catalog.array_agg(ROW(t.idx, svc.id, svc.environment, k.method, k.path, k.matched, t.d, t.sc, t.caller,
                                    CASE WHEN t.at IS NULL OR t.at > pg_catalog.now() + interval '5 minutes'
                                              OR t.at < pg_catalog.now() - keep
                                         THEN pg_catalog.now() ELSE t.at END)::lattice.ingest_trace
                                ORDER BY t.idx)
      INTO batch
      FROM t
      LEFT JOIN svc ON svc.name = t.sname
      LEFT JOIN tpl ON tpl.service_id = svc.id
      CROSS JOIN LATERAL (SELECT lattice.ingest_match_route(tpl.arr, t.method, t.path) AS pos) m
      CROSS JOIN LATERAL (
          SELECT CASE WHEN m.pos IS NOT NULL THEN pg_catalog.split_part(tpl.arr[m.pos], ' ', 1)
                      ELSE COALESCE(t.method, '-') END AS method,
                 CASE WHEN m.pos IS NOT NULL
                      THEN pg_catalog.substr(tpl.arr[m.pos], pg_catalog.strpos(tpl.arr[m.pos], ' ') + 1)
                      WHEN t.path IS NOT NULL THEN lattice.ingest_normalise_path(t.path)
                      ELSE COALESCE(t.operation, '-') END AS path,
                 m.pos IS NOT NULL AS matched) k;

    -- The tenant's services the callers name, read once: the statements
    -- below then join nothing of the tenant's but what is in variables, so
    -- on Citus each is one task on the tenant's worker.
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', s.id, 'name', s.name, 'environment', s.environment,
               'is_external', s.is_external, 'last_seen', s.last_seen)), '[]')
      INTO known
      FROM lattice.services s
     WHERE s.user_id = uid
       AND s.name = ANY (ARRAY(SELECT DISTINCT r.caller FROM pg_catalog.unnest(batch) r
                                WHERE r.service_id IS NOT NULL AND r.caller IS NOT NULL));

    -- Callers that are no known service become external nodes.
    WITH added AS (
        INSERT INTO lattice.services (user_id, name, environment, is_external, status)
        SELECT DISTINCT uid, r.caller, r.environment, true, 'external'
          FROM pg_catalog.unnest(batch) r
         WHERE r.service_id IS NOT NULL AND r.caller IS NOT NULL
           AND NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements(known) k WHERE k ->> 'name' = r.caller)
         ORDER BY r.caller, r.environment
        ON CONFLICT (user_id, name, environment) DO NOTHING
        RETURNING id, name, environment, is_external, first_seen, last_seen
    )
    SELECT known || COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', a.id, 'name', a.name, 'environment', a.environment, 'is_external', a.is_external,
               'last_seen', a.last_seen, 'first_seen', a.first_seen)), '[]'),
           pg_catalog.count(*)
      INTO known, new_nodes
      FROM added a;
    INSERT INTO lattice.graph_events (user_id, at, kind, service_id, name, environment)
    SELECT uid, a.first_seen, 'service_added', a.id, a.name, a.environment
      FROM pg_catalog.jsonb_to_recordset(known) AS a(id uuid, name text, environment text, first_seen timestamptz)
     WHERE a.first_seen IS NOT NULL
    ON CONFLICT DO NOTHING;

    -- Route buckets (ordered, so concurrent batches lock rows in one order).
    WITH up AS (
        INSERT INTO lattice.route_stats AS s
            (user_id, service_id, method, path, bucket, matched, request_count, error_count,
             client_error_count, total_duration_ms, max_duration_ms, latency_hist)
        SELECT uid, r.service_id, r.method, r.path, pg_catalog.date_bin(width, r.at, timestamptz '2000-01-01'),
               pg_catalog.bool_or(r.matched), pg_catalog.count(*),
               pg_catalog.count(*) FILTER (WHERE r.status >= 500),
               pg_catalog.count(*) FILTER (WHERE r.status BETWEEN 400 AND 499),
               pg_catalog.sum(r.duration_ms), pg_catalog.max(r.duration_ms),
               lattice.hist_of(pg_catalog.array_agg(r.duration_ms))
          FROM pg_catalog.unnest(batch) r
         WHERE r.service_id IS NOT NULL
         GROUP BY r.service_id, r.method, r.path, pg_catalog.date_bin(width, r.at, timestamptz '2000-01-01')
         ORDER BY 2, 3, 4, 5
        ON CONFLICT (user_id, service_id, method, path, bucket) DO UPDATE SET
            request_count = s.request_count + EXCLUDED.request_count,
            error_count = s.error_count + EXCLUDED.error_count,
            client_error_count = s.client_error_count + EXCLUDED.client_error_count,
            total_duration_ms = s.total_duration_ms + EXCLUDED.total_duration_ms,
            max_duration_ms = GREATEST(s.max_duration_ms, EXCLUDED.max_duration_ms),
            latency_hist = lattice.hist_add(s.latency_hist, EXCLUDED.latency_hist)
        RETURNING (xmax = 0) AS inserted
    )
    SELECT pg_catalog.count(*) FILTER (WHERE up.inserted) INTO new_buckets FROM up;

    -- Edges caller -> service.  The caller is looked up by name (in `known`),
    -- preferring the callee's environment and registered services.
    WITH up AS (
        INSERT INTO lattice.connections AS k
            (user_id, source_service_id, target_service_id, call_count, error_count, client_error_count,
             total_duration_ms, latency_hist, first_seen, last_seen)
        SELECT uid, src.source, src.target, src.n, src.e5, src.e4, src.total, src.h, src.first, src.last
          FROM (SELECT c.*, (SELECT x.id
                               FROM pg_catalog.jsonb_to_recordset(known)
                                    AS x(id uuid, name text, environment text, is_external boolean,
                                         last_seen timestamptz)
                              WHERE x.name = c.caller
                              ORDER BY (x.environment = c.environment) DESC, x.is_external, x.last_seen DESC
                              LIMIT 1) AS source
                  FROM (SELECT r.service_id AS target, r.caller, r.environment,
                               pg_catalog.count(*) AS n,
                               pg_catalog.count(*) FILTER (WHERE r.status >= 500) AS e5,
                               pg_catalog.count(*) FILTER (WHERE r.status BETWEEN 400 AND 499) AS e4,
                               pg_catalog.sum(r.duration_ms) AS total,
                               lattice.hist_of(pg_catalog.array_agg(r.duration_ms)) AS h,
                               pg_catalog.min(r.at) AS first, pg_catalog.max(r.at) AS last
                          FROM pg_catalog.unnest(batch) r
                         WHERE r.service_id IS NOT NULL AND r.caller IS NOT NULL
                         GROUP BY r.service_id, r.caller, r.environment) c) src
         WHERE src.source IS NOT NULL AND src.source <> src.target
         ORDER BY src.source, src.target
        ON CONFLICT (user_id, source_service_id, target_service_id) DO UPDATE SET
            call_count = k.call_count + EXCLUDED.call_count,
            error_count = k.error_count + EXCLUDED.error_count,
            client_error_count = k.client_error_count + EXCLUDED.client_error_count,
            total_duration_ms = k.total_duration_ms + EXCLUDED.total_duration_ms,
            latency_hist = lattice.hist_add(k.latency_hist, EXCLUDED.latency_hist),
            first_seen = LEAST(k.first_seen, EXCLUDED.first_seen),
            last_seen = GREATEST(k.last_seen, EXCLUDED.last_seen)
        RETURNING (xmax = 0) AS inserted, k.source_service_id, k.target_service_id, k.first_seen
    )
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'source', up.source_service_id, 'target', up.target_service_id, 'at', up.first_seen))
               FILTER (WHERE up.inserted), '[]')
      INTO edges
      FROM up;
    new_edges := pg_catalog.jsonb_array_length(edges);
    INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
    SELECT uid, e.at, 'edge_added', e.source, e.target
      FROM pg_catalog.jsonb_to_recordset(edges) AS e(source uuid, target uuid, at timestamptz)
    ON CONFLICT DO NOTHING;

    -- A service sending traces is alive; written at most once a minute.
    UPDATE lattice.services s SET last_seen = pg_catalog.now()
     WHERE s.user_id = uid AND s.id IN (SELECT r.service_id FROM pg_catalog.unnest(batch) r)
       AND s.last_seen < pg_catalog.now() - interval '1 minute';

    IF new_nodes > 0 OR new_edges > 0 THEN
        PERFORM lattice.ingest_graph_changed();
    END IF;
    IF new_buckets > 0 THEN
        PERFORM lattice.ingest_prune(uid);
    END IF;

    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'index', r.idx, 'serviceId', r.service_id,
               'route', CASE WHEN r.matched THEN r.method || ' ' || r.path END) ORDER BY r.idx)
               FILTER (WHERE r.service_id IS NOT NULL), '[]'),
           pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'index', r.idx,
               'error', pg_catalog.jsonb_build_object('code', 'unknown_service',
                   'message', 'no service of this name has submitted metadata')) ORDER BY r.idx)
               FILTER (WHERE r.service_id IS NULL)
      INTO results, failures
      FROM pg_catalog.unnest(batch) r;

    RETURN pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'success', failures IS NULL,
        'processed', pg_catalog.jsonb_array_length(results),
        'failed', COALESCE(pg_catalog.jsonb_array_length(failures), 0),
        'results', results,
        'failures', failures));
END
$function$;

CREATE OR REPLACE FUNCTION lattice.stripe_apply_invoice(account uuid, inv jsonb, at timestamp with time zone, event_type text, event_id text)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    applied boolean;
    pay_state text := CASE event_type WHEN 'invoice.paid' THEN 'paid'
                                      WHEN 'invoice.payment_succeeded' THEN 'paid'
                                      WHEN 'invoice.payment_failed' THEN 'failed' END;
BEGIN
    IF inv ->> 'id' IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO lattice.invoices AS i
        (user_id, stripe_invoice_id, stripe_subscription_id, number, amount_due, amount_paid, currency, status,
         hosted_invoice_url, invoice_pdf, period_start, period_end, created, state_at)
    VALUES (account, inv ->> 'id', inv ->> 'subscription', inv ->> 'number',
            (inv ->> 'amount_due')::bigint, (inv ->> 'amount_paid')::bigint, inv ->> 'currency', inv ->> 'status',
            inv ->> 'hosted_invoice_url', inv ->> 'invoice_pdf',
            lattice.stripe_time(inv -> 'period_start'), lattice.stripe_time(inv -> 'period_end'),
            lattice.stripe_time(inv -> 'created'), at)
    ON CONFLICT (user_id, stripe_invoice_id) DO UPDATE SET
        number = EXCLUDED.number, amount_due = EXCLUDED.amount_due, amount_paid = EXCLUDED.amount_paid,
        currency = EXCLUDED.currency, status = EXCLUDED.status,
        hosted_invoice_url = EXCLUDED.hosted_invoice_url, invoice_pdf = EXCLUDED.invoice_pdf,
        period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
        created = EXCLUDED.created, state_at = EXCLUDED.state_at
    WHERE i.user_id = EXCLUDED.user_id AND i.state_at <= EXCLUDED.state_at;
    GET DIAGNOSTICS applied = ROW_COUNT;

    IF pay_state IS NOT NULL THEN
        UPDATE lattice.subscriptions s
           SET payment_state = pay_state, payment_state_at = at, updated_at = pg_catalog.now()
         WHERE s.user_id = account
           AND (s.payment_state_at IS NULL OR s.payment_state_at <= at)
           AND (inv ->> 'subscription' IS NULL OR s.stripe_subscription_id IS NULL
                OR s.stripe_subscription_id = inv ->> 'subscription');
        PERFORM lattice.audit('billing.' || CASE pay_state WHEN 'paid' THEN 'payment_succeeded'
                                                           ELSE 'payment_failed' END,
                              inv ->> 'id',
                              pg_catalog.jsonb_build_object('amount_due', inv -> 'amount_due',
                                                            'currency', inv -> 'currency', 'event', event_id),
                              NULL, account);
    END IF;
    RETURN applied;
END
$function$;

CREATE OR REPLACE FUNCTION lattice.user_json(user_id uuid)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    RETURN (SELECT jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name)
              FROM lattice.users u WHERE u.id = user_json.user_id);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_logout(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    sid uuid := lattice.current_session_id();
    at timestamptz := lattice.clock_now();
BEGIN
    IF sid IS NOT NULL THEN
        UPDATE lattice.sessions SET revoked_at = at
         WHERE user_id = account AND id = sid AND revoked_at IS NULL;
        PERFORM lattice.audit('logout', sid::text, NULL, req, account);
    END IF;
    RETURN lattice.auth_answer(204, NULL, lattice.session_cookies(NULL, NULL, 0, req));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_me(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'any');
    -- this backend's request state, read here: a query's expressions may run
    -- on a Citus worker, which has none
    auth jsonb := jsonb_build_object('method', lattice.current_auth_method(),
                                     'scopes', to_jsonb(lattice.current_scopes()));
BEGIN
    RETURN lattice.auth_answer(200, (
        SELECT jsonb_build_object(
                   'user', jsonb_build_object('id', u.id, 'email', u.email, 'name', u.name,
                                              'plan', u.plan_id, 'trial_ends_at', u.trial_ends_at,
                                              'created_at', u.created_at),
                   'auth', auth)
          FROM lattice.users u WHERE u.id = account));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_session_revoke(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    sid uuid := lattice.auth_uuid_param(req, 'id');
    found_id uuid;
    at timestamptz := lattice.clock_now();
BEGIN
    UPDATE lattice.sessions SET revoked_at = at
     WHERE user_id = account AND id = sid AND revoked_at IS NULL
    RETURNING id INTO found_id;
    IF found_id IS NULL THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such session');
    END IF;
    PERFORM lattice.audit('session.revoked', sid::text, NULL, req, account);
    IF sid = lattice.current_session_id() THEN
        RETURN lattice.auth_answer(204, NULL, lattice.session_cookies(NULL, NULL, 0, req));
    END IF;
    RETURN lattice.auth_answer(204, NULL);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.auth_sessions(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
    mine uuid := lattice.current_session_id();  -- read here, as in auth_me
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('sessions', coalesce((
        SELECT jsonb_agg(jsonb_build_object(
                   'id', s.id, 'created_at', s.created_at,
                   'last_seen_at', date_trunc('minute', s.last_seen_at),
                   'expires_at', least(s.idle_expires_at, s.expires_at),
                   'client_addr', host(s.client_addr), 'user_agent', s.user_agent,
                   'current', s.id IS NOT DISTINCT FROM mine)
                 ORDER BY s.created_at DESC)
          FROM lattice.sessions s
         WHERE s.user_id = account AND s.revoked_at IS NULL
           AND least(s.idle_expires_at, s.expires_at) > now), '[]')));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.error_update(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'session');
    gid uuid := lattice.ingest_param_uuid(req, 'id');
    doc jsonb;
    new_status text;
    changed_at timestamptz := pg_catalog.now();
BEGIN
    BEGIN
        doc := body::jsonb;
    EXCEPTION WHEN invalid_text_representation OR untranslatable_character THEN
        doc := NULL;
    END;
    new_status := CASE WHEN pg_catalog.jsonb_typeof(doc) = 'object' THEN doc ->> 'status' END;
    IF new_status IS NULL OR new_status NOT IN ('open', 'resolved', 'ignored') THEN
        PERFORM lattice.raise_http(400, 'validation_failed', 'the request body is invalid',
            '[{"path": "status", "message": "must be one of open, resolved, ignored"}]');
    END IF;
    UPDATE lattice.error_groups g
       SET status = new_status,
           resolved_at = CASE WHEN new_status = 'resolved' THEN changed_at END
     WHERE g.id = gid AND g.user_id = uid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such error');
    END IF;
    RETURN lattice.http_json(200, lattice.error_detail_json(gid));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.errors_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    q jsonb := COALESCE(req -> 'query', '{}');
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 200);
    page integer := lattice.ingest_query_int(req, 'page', 1, 1, 1000000);
    svc uuid;
    pattern text := '%' || pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
                        COALESCE(q ->> 'search', ''), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    total bigint;
    items jsonb;
BEGIN
    IF q ->> 'service_id' IS NOT NULL THEN
        svc := lattice.ingest_param_uuid(pg_catalog.jsonb_build_object('params',
                   pg_catalog.jsonb_build_object('id', q ->> 'service_id')), 'id');
    END IF;
    IF q ->> 'status' IS NOT NULL AND q ->> 'status' NOT IN ('open', 'resolved', 'ignored') THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'status must be open, resolved or ignored',
            '[{"path": "query.status", "message": "must be one of open, resolved, ignored"}]');
    END IF;
    WITH f AS (
        SELECT g, s.name AS service_name
          FROM lattice.error_groups g JOIN lattice.services s ON s.user_id = g.user_id AND s.id = g.service_id
         WHERE g.user_id = uid
           AND (svc IS NULL OR g.service_id = svc)
           AND (q ->> 'status' IS NULL OR g.status = q ->> 'status')
           AND (q ->> 'environment' IS NULL OR g.environment = q ->> 'environment')
           AND (q ->> 'search' IS NULL OR g.message ILIKE pattern OR g.error_type ILIKE pattern)
    ), page_rows AS (
        SELECT * FROM f ORDER BY (f.g).last_seen DESC, (f.g).id LIMIT lim OFFSET (page - 1) * lim
    )
    SELECT (SELECT pg_catalog.count(*) FROM f),
           COALESCE(pg_catalog.jsonb_agg(lattice.error_group_json(p.g, p.service_name)
                                         ORDER BY (p.g).last_seen DESC, (p.g).id), '[]')
      INTO total, items
      FROM page_rows p;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'errors', items, 'total', total, 'page', page, 'limit', lim));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_create(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    expires timestamptz;
    scopes text[] := '{ingest}';
    k record;
BEGIN
    IF b ? 'scopes' THEN
        IF jsonb_typeof(b -> 'scopes') <> 'array'
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(b -> 'scopes') e WHERE jsonb_typeof(e) <> 'string') THEN
            PERFORM lattice.raise_http(400, 'invalid_scopes', 'scopes must be an array of scope names',
                                       jsonb_build_array(jsonb_build_object(
                                           'path', 'scopes', 'message', 'must be an array of strings')));
        END IF;
        scopes := ARRAY(SELECT jsonb_array_elements_text(b -> 'scopes'));
    END IF;
    IF lattice.auth_field(b, 'expires_at') IS NOT NULL THEN
        BEGIN
            expires := (b ->> 'expires_at')::timestamptz;
        EXCEPTION WHEN others THEN
            PERFORM lattice.raise_http(400, 'invalid_expiry', 'expires_at must be an ISO 8601 time');
        END;
    END IF;
    SELECT * INTO k FROM lattice.api_key_create(account, lattice.auth_field(b, 'name'), expires, req, scopes);
    RETURN lattice.auth_answer(201, jsonb_build_object(
        'id', k.id, 'name', (SELECT a.name FROM lattice.api_keys a WHERE a.user_id = account AND a.id = k.id),
        'key', k.key, 'prefix', k.prefix,
        'scopes', (SELECT to_jsonb(a.scopes) FROM lattice.api_keys a WHERE a.user_id = account AND a.id = k.id),
        'created_at', k.created_at, 'expires_at', expires),
        jsonb_build_object('Location', '/api/v1/keys/' || k.id));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    now timestamptz := lattice.clock_now();
BEGIN
    RETURN lattice.auth_answer(200, jsonb_build_object('keys', coalesce((
        SELECT jsonb_agg(lattice.api_key_json(k, now) ORDER BY k.created_at, k.id)
          FROM lattice.api_keys k WHERE k.user_id = account), '[]')));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_revoke(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    kid uuid := lattice.auth_uuid_param(req, 'id');
    was_revoked timestamptz;
    at timestamptz := lattice.clock_now();
BEGIN
    SELECT revoked_at INTO was_revoked FROM lattice.api_keys
     WHERE user_id = account AND id = kid FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such key');
    END IF;
    IF was_revoked IS NULL THEN
        UPDATE lattice.api_keys SET revoked_at = at WHERE user_id = account AND id = kid;
        PERFORM lattice.audit('key.revoked', kid::text, NULL, req, account);
    END IF;
    RETURN lattice.auth_answer(204, NULL);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.keys_rotate(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    grace integer;
    k record;
BEGIN
    IF b ? 'grace_seconds' THEN
        IF jsonb_typeof(b -> 'grace_seconds') <> 'number' OR (b ->> 'grace_seconds') !~ '^[0-9]{1,9}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_grace', 'grace_seconds must be 0 to 2592000');
        END IF;
        grace := (b ->> 'grace_seconds')::integer;
    END IF;
    SELECT * INTO k FROM lattice.api_key_rotate(lattice.auth_uuid_param(req, 'id'), grace, req);
    RETURN lattice.auth_answer(201, jsonb_build_object(
        'id', k.id, 'name', k.name, 'key', k.key, 'prefix', k.prefix,
        'scopes', (SELECT to_jsonb(a.scopes) FROM lattice.api_keys a WHERE a.user_id = account AND a.id = k.id),
        'created_at', k.created_at, 'old_key_expires_at', k.old_key_expires_at),
        jsonb_build_object('Location', '/api/v1/keys/' || k.id));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.service_changes(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    sid uuid := lattice.ingest_param_uuid(req, 'id');
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 500);
    before integer := lattice.ingest_query_int(req, 'before', NULL, 1, 2147483647);
    want_kind text := NULLIF(req -> 'query' ->> 'kind', '');
    items jsonb;
    last_id bigint;
    n integer;
BEGIN
    IF NOT EXISTS (SELECT FROM lattice.services s WHERE s.id = sid AND s.user_id = uid) THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such service');
    END IF;
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
               'id', c.id, 'kind', c.kind, 'subject', c.subject, 'oldValue', c.old_value,
               'newValue', c.new_value, 'at', c.at)) ORDER BY c.id DESC), '[]'),
           pg_catalog.min(c.id), pg_catalog.count(*)
      INTO items, last_id, n
      FROM (SELECT * FROM lattice.service_changes c
             WHERE c.user_id = uid AND c.service_id = sid AND (before IS NULL OR c.id < before)
               AND (want_kind IS NULL OR c.kind = want_kind)
             ORDER BY c.id DESC LIMIT lim) c;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'changes', items, 'nextBefore', CASE WHEN n = lim THEN last_id END));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.service_get(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    sid uuid := lattice.ingest_param_uuid(req, 'id');
    hours integer := lattice.ingest_query_int(req, 'window_hours', 24, 1, 24 * 90);
    since timestamptz := pg_catalog.now() - pg_catalog.make_interval(hours => hours);
    s lattice.services;
    result jsonb;
BEGIN
    SELECT x.* INTO s FROM lattice.services x WHERE x.id = sid AND x.user_id = uid;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such service');
    END IF;

    WITH stats AS (
        SELECT st.method, st.path, pg_catalog.bool_or(st.matched) AS matched,
               pg_catalog.sum(st.request_count) AS n, pg_catalog.sum(st.error_count) AS e,
               pg_catalog.sum(st.client_error_count) AS c, pg_catalog.sum(st.total_duration_ms) AS t,
               lattice.hist_sum(st.latency_hist) AS h
          FROM lattice.route_stats st
         WHERE st.user_id = uid AND st.service_id = sid AND st.bucket >= since
         GROUP BY st.method, st.path
    )
    SELECT pg_catalog.jsonb_build_object(
        'service', lattice.service_json(s),
        'windowHours', hours,
        'routes', COALESCE((
            SELECT pg_catalog.jsonb_agg(r.attrs || pg_catalog.jsonb_build_object(
                       'id', r.id, 'method', r.method, 'path', r.path,
                       'firstSeen', r.first_seen, 'lastSeen', r.last_seen,
                       'stats', lattice.stats_json(st.n, st.e, st.c, st.t, st.h))
                       ORDER BY r.path, r.method)
              FROM lattice.routes r LEFT JOIN stats st ON st.method = r.method AND st.path = r.path
             WHERE r.user_id = uid AND r.service_id = sid AND r.removed_at IS NULL), '[]'),
        'unmatchedTraffic', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('method', st.method, 'path', st.path)
                       || lattice.stats_json(st.n, st.e, st.c, st.t, st.h) ORDER BY st.n DESC, st.path)
              FROM stats st WHERE NOT st.matched), '[]'),
        'dependencies', COALESCE((
            SELECT pg_catalog.jsonb_agg(d.attrs || pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'id', d.id, 'packageName', d.package_name, 'version', d.version,
                       'versionRange', d.version_range, 'dependencyType', d.dependency_type,
                       'scope', d.scope, 'firstSeen', d.first_seen))
                       ORDER BY d.package_name, d.dependency_type)
              FROM lattice.dependencies d WHERE d.user_id = uid AND d.service_id = sid AND d.removed_at IS NULL), '[]'),
        'connections', pg_catalog.jsonb_build_object(
            'incoming', COALESCE((
                SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'serviceId', k.source_service_id, 'name', o.name, 'environment', o.environment,
                           'isExternal', o.is_external, 'firstSeen', k.first_seen, 'lastSeen', k.last_seen)
                           || lattice.stats_json(k.call_count, k.error_count, k.client_error_count,
                                                 k.total_duration_ms, k.latency_hist) ORDER BY o.name)
                  FROM lattice.connections k JOIN lattice.services o ON o.user_id = k.user_id AND o.id = k.source_service_id
                 WHERE k.user_id = uid AND k.target_service_id = sid), '[]'),
            'outgoing', COALESCE((
                SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                           'serviceId', k.target_service_id, 'name', o.name, 'environment', o.environment,
                           'isExternal', o.is_external, 'firstSeen', k.first_seen, 'lastSeen', k.last_seen)
                           || lattice.stats_json(k.call_count, k.error_count, k.client_error_count,
                                                 k.total_duration_ms, k.latency_hist) ORDER BY o.name)
                  FROM lattice.connections k JOIN lattice.services o ON o.user_id = k.user_id AND o.id = k.target_service_id
                 WHERE k.user_id = uid AND k.source_service_id = sid), '[]')),
        'recentChanges', COALESCE((
            SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                       'id', c.id, 'kind', c.kind, 'subject', c.subject, 'oldValue', c.old_value,
                       'newValue', c.new_value, 'at', c.at)) ORDER BY c.at DESC, c.id DESC)
              FROM (SELECT * FROM lattice.service_changes c WHERE c.user_id = uid AND c.service_id = sid
                     ORDER BY c.at DESC, c.id DESC LIMIT 20) c), '[]'))
      INTO result;
    RETURN lattice.http_json(200, result);
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.services_list(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
    q jsonb := COALESCE(req -> 'query', '{}');
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 200);
    page integer := lattice.ingest_query_int(req, 'page', 1, 1, 1000000);
    pattern text := '%' || pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(
                        COALESCE(q ->> 'search', ''), '\', '\\'), '%', '\%'), '_', '\_') || '%';
    total bigint;
    items jsonb;
BEGIN
    IF q ->> 'status' IS NOT NULL AND q ->> 'status' NOT IN ('active', 'inactive', 'external') THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'status must be active, inactive or external',
            '[{"path": "query.status", "message": "must be one of active, inactive, external"}]');
    END IF;
    WITH f AS (
        SELECT s FROM lattice.services s
         WHERE s.user_id = uid
           AND (q ->> 'environment' IS NULL OR s.environment = q ->> 'environment')
           AND (q ->> 'framework' IS NULL OR s.framework = q ->> 'framework')
           AND (q ->> 'search' IS NULL OR s.name ILIKE pattern OR s.description ILIKE pattern)
           AND (q ->> 'status' IS NULL OR lattice.service_liveness(s.last_seen, s.is_external) = q ->> 'status')
           AND (COALESCE(q ->> 'include_external', 'false') = 'true' OR q ->> 'status' = 'external'
                OR NOT s.is_external)
    ), page_rows AS (
        SELECT f.s FROM f ORDER BY (f.s).name, (f.s).environment LIMIT lim OFFSET (page - 1) * lim
    )
    SELECT (SELECT pg_catalog.count(*) FROM f),
           COALESCE(pg_catalog.jsonb_agg(lattice.service_json(p.s) || pg_catalog.jsonb_build_object(
               'routeCount', (SELECT pg_catalog.count(*) FROM lattice.routes r
                               WHERE r.user_id = uid AND r.service_id = (p.s).id AND r.removed_at IS NULL),
               'dependencyCount', (SELECT pg_catalog.count(*) FROM lattice.dependencies d
                                    WHERE d.user_id = uid AND d.service_id = (p.s).id AND d.removed_at IS NULL))
               ORDER BY (p.s).name, (p.s).environment), '[]')
      INTO total, items
      FROM page_rows p;
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object(
        'services', items, 'total', total, 'page', page, 'limit', lim));
END
$function$;

CREATE OR REPLACE FUNCTION lattice_http.usage(req jsonb, body text)
 RETURNS lattice.http_response
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    u lattice.rate_usage;
    live jsonb;
    this_hour timestamptz := pg_catalog.date_trunc('hour', pg_catalog.now());
    classes jsonb;
    history jsonb;
    account uuid;
BEGIN
    account := lattice.authenticate(req, 'read');
    u := lattice.rate_usage();
    live := lattice.rate_usage_classes();

    -- refused in the 23 full hours before this one (rolled up) plus this
    -- hour's live count make the last 24 hours; every service counted this
    -- hour is listed, and those refused earlier in the 24 hours
    WITH past AS (
        SELECT h.class, h.subject, pg_catalog.sum(h.refused)::bigint AS refused
          FROM lattice.usage_hourly h
         WHERE h.user_id = account AND h.hour >= this_hour - interval '23 hours' AND h.hour < this_hour
         GROUP BY h.class, h.subject),
    past_class AS (
        SELECT p.class, pg_catalog.sum(p.refused)::bigint AS refused FROM past p GROUP BY p.class),
    live_services AS (
        SELECT i ->> 'service' AS name, (i ->> 'used')::bigint AS used,
               (i ->> 'refused_this_hour')::bigint AS refused, i AS item
          FROM pg_catalog.jsonb_array_elements(live -> 'ingest' -> 'services') i),
    services AS (
        SELECT COALESCE(l.name, p.subject) AS name, COALESCE(l.used, 0) AS used,
               COALESCE(l.refused, 0) + COALESCE(p.refused, 0) AS refused_24h,
               COALESCE(l.item, pg_catalog.jsonb_build_object(
                   'service', p.subject, 'used', 0, 'remaining', live -> 'ingest' -> 'limit',
                   'reset_seconds', 0, 'refused_this_hour', 0)) AS item
          FROM live_services l
          FULL JOIN (SELECT * FROM past WHERE past.class = 'ingest' AND past.refused > 0) p
            ON p.subject = l.name)
    SELECT pg_catalog.jsonb_object_agg(k.class, (live -> k.class) || pg_catalog.jsonb_build_object(
               'refused_24h', (live -> k.class ->> 'refused_this_hour')::bigint + COALESCE(pc.refused, 0))
               || CASE WHEN k.class = 'ingest' THEN pg_catalog.jsonb_build_object('services', (
                      SELECT COALESCE(pg_catalog.jsonb_agg(
                                 s.item || pg_catalog.jsonb_build_object('refused_24h', s.refused_24h)
                                 ORDER BY s.refused_24h DESC, s.used DESC, s.name), '[]')
                        FROM services s))
                  ELSE '{}' END)
      INTO classes
      FROM (VALUES ('api'), ('ingest'), ('dashboard')) k(class)
      LEFT JOIN past_class pc ON pc.class = k.class;

    -- the last 24 rolled-up hours: totals and each class
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'hour', h.hour, 'requests', h.requests, 'refused', h.refused, 'classes', h.classes)
               ORDER BY h.hour DESC), '[]')
      INTO history
      FROM (SELECT c.hour, pg_catalog.sum(c.requests)::bigint AS requests, pg_catalog.sum(c.refused)::bigint AS refused,
                   pg_catalog.jsonb_object_agg(c.class, pg_catalog.jsonb_build_object(
                       'requests', c.requests, 'refused', c.refused)) AS classes
              FROM (SELECT x.hour, x.class, pg_catalog.sum(x.requests)::bigint AS requests,
                           pg_catalog.sum(x.refused)::bigint AS refused
                      FROM lattice.usage_hourly x
                     WHERE x.user_id = account AND x.hour >= this_hour - interval '23 hours'
                     GROUP BY x.hour, x.class) c
             GROUP BY c.hour) h;

    RETURN lattice.http_json(200,
        pg_catalog.jsonb_build_object(
            'limit', u."limit",
            'remaining', u.remaining,
            'reset_seconds', u.reset_seconds,
            'period_seconds', u.period_seconds,
            'this_hour', pg_catalog.jsonb_build_object(
                'start', u.hour_start,
                'requests', u.used_this_hour,
                'refused', u.refused_this_hour),
            'classes', classes,
            'history', history));
END
$function$;
REVOKE ALL ON FUNCTION lattice.api_key_json(anyelement,timestamp with time zone) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.api_key_json(anyelement,timestamp with time zone) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.billing_welcome(uuid,text,text,timestamp with time zone) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.cluster_key_generate() FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.cluster_setup(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.cluster_sync_workers() FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.cluster_tables() FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.error_group_json(anyelement,text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.error_group_json(anyelement,text) TO lattice_app;
REVOKE ALL ON FUNCTION lattice.outbox_email(uuid,text,jsonb,text,text) FROM PUBLIC;
REVOKE ALL ON FUNCTION lattice.service_json(anyelement) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.service_json(anyelement) TO lattice_app;
