-- Endpoints of the shim itself (docs/shim.md).

-- GET /ready: the database answers and the extension is installed.  The shim
-- answers 503 by itself when it cannot reach the database at all.
CREATE FUNCTION lattice_http.ready(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE sql STABLE
AS $$
    SELECT lattice.http_json(200, pg_catalog.jsonb_build_object(
        'status', 'ready',
        'database', 'ok',
        'extension', (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'lattice')))
$$;

-- The tenant the current transaction authenticated, NULL when none: the shim
-- reads it in the same statement as a route's answer, for its access log.
CREATE FUNCTION lattice_http.tenant_id()
RETURNS uuid
AS 'MODULE_PATHNAME', 'lattice_current_user_id'
LANGUAGE C STABLE;

-- The transaction's last rate count, "<class> <limit> <remaining>
-- <reset_seconds> <period_seconds>" or NULL: the shim reads it in the same
-- statement as a route's answer and writes the RateLimit headers itself.
CREATE FUNCTION lattice_http.rate_state()
RETURNS text
AS 'MODULE_PATHNAME', 'lattice_rate_state'
LANGUAGE C VOLATILE;
