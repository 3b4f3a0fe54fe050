-- lattice install script, assembled from extension/sql/*.sql in name order.
\echo Use "CREATE EXTENSION lattice" to load this file. \quit

-- Roles are cluster-wide, so they may already exist from another database.
--   lattice_api   what the shim logs in through: EXECUTE on lattice_http only
--   lattice_app   owns the lattice_http functions (SECURITY DEFINER); subject
--                 to row-level security, never BYPASSRLS, never a login
--   lattice_admin DBAs: read access, may act as a tenant through an audited call
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice_api') THEN
        CREATE ROLE lattice_api NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice_app') THEN
        CREATE ROLE lattice_app NOLOGIN NOBYPASSRLS;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'lattice_admin') THEN
        CREATE ROLE lattice_admin NOLOGIN NOBYPASSRLS;
    END IF;
END
$roles$;

-- The functions the shim calls, one per route (see docs/http-contract.md).
CREATE SCHEMA lattice_http;

GRANT USAGE ON SCHEMA lattice TO lattice_app, lattice_admin;
GRANT USAGE ON SCHEMA lattice_http TO lattice_api;
