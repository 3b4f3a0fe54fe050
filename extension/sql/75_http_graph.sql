-- The graph over HTTP (GET, any credential, RLS-scoped): each function
-- authenticates, reads its parameters and answers with the C graph's JSON
-- (src/graph_*.c), which is written once as text and never re-parsed.
-- Malformed ids in the path are "not found" (a forged id is not a hint);
-- malformed query parameters are 400 invalid_input.

-- A uuid from a path parameter, or 404.
CREATE FUNCTION lattice.graph_param_id(req jsonb, name text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := req -> 'params' ->> name;
BEGIN
    IF raw IS NULL OR raw !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
        PERFORM lattice.raise_http(404, 'not_found', 'service not found');
    END IF;
    RETURN raw::uuid;
END
$$;

-- A typed query parameter (NULL when absent), or 400 naming it.
CREATE FUNCTION lattice.graph_query(req jsonb, name text, typ text) RETURNS text
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    raw text := req -> 'query' ->> name;
BEGIN
    IF raw IS NULL OR raw = '' THEN
        RETURN NULL;
    END IF;
    CASE typ
    WHEN 'positive' THEN
        IF raw !~ '^[0-9]{1,9}$' OR raw::integer < 1 THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be a positive integer',
                                       jsonb_build_object('parameter', name));
        END IF;
    WHEN 'count' THEN
        IF raw !~ '^[0-9]{1,18}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be a non-negative integer',
                                       jsonb_build_object('parameter', name));
        END IF;
    WHEN 'boolean' THEN
        IF lower(raw) NOT IN ('true', 'false', '1', '0', 'yes', 'no') THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be true or false',
                                       jsonb_build_object('parameter', name));
        END IF;
        RETURN lower(raw) IN ('true', '1', 'yes')::text;
    WHEN 'uuid' THEN
        IF raw !~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be a service id',
                                       jsonb_build_object('parameter', name));
        END IF;
    WHEN 'timestamp' THEN
        BEGIN
            RETURN raw::timestamptz::text;
        EXCEPTION WHEN data_exception THEN
            PERFORM lattice.raise_http(400, 'invalid_input', name || ' must be an ISO 8601 time',
                                       jsonb_build_object('parameter', name));
        END;
    ELSE
        RAISE EXCEPTION 'lattice.graph_query: unknown type %', typ;
    END CASE;
    RETURN raw;
END
$$;

-- A 200 with a JSON text body (the shim adds the rate headers).
CREATE FUNCTION lattice.graph_answer(body json) RETURNS lattice.http_response
LANGUAGE sql STABLE
AS $$ SELECT ROW(200, '{}'::jsonb, body::text)::lattice.http_response $$;

-- GET /api/v1/graph?environment=&active=&min_calls=&since=  (or ?at=T: the
-- graph as it was at T, from the history)
CREATE FUNCTION lattice_http.graph(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    at timestamptz;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    at := lattice.graph_query(req, 'at', 'timestamp')::timestamptz;
    IF at IS NOT NULL THEN
        RETURN lattice.graph_answer(lattice.graph_at(at)::json);
    END IF;
    RETURN lattice.graph_answer(lattice.graph_json(
        req -> 'query' ->> 'environment',
        COALESCE(lattice.graph_query(req, 'active', 'boolean')::boolean, false),
        COALESCE(lattice.graph_query(req, 'min_calls', 'count')::bigint, 0),
        lattice.graph_query(req, 'since', 'timestamp')::timestamptz));
END
$$;

-- GET /api/v1/graph/dependencies/{id}?depth=  (default 1)
CREATE FUNCTION lattice_http.graph_dependencies(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'dependencies',
        COALESCE(lattice.graph_query(req, 'depth', 'positive')::integer, 1)));
END
$$;

-- GET /api/v1/graph/dependents/{id}?depth=  (default 1)
CREATE FUNCTION lattice_http.graph_dependents(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'dependents',
        COALESCE(lattice.graph_query(req, 'depth', 'positive')::integer, 1)));
END
$$;

-- GET /api/v1/services/{id}/impact
CREATE FUNCTION lattice_http.service_impact(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_reach_json(
        lattice.graph_param_id(req, 'id'), 'impact', NULL));
END
$$;

-- GET /api/v1/graph/path?from=&to=&max_paths=
CREATE FUNCTION lattice_http.graph_path(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    from_id uuid;
    to_id uuid;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    from_id := lattice.graph_query(req, 'from', 'uuid')::uuid;
    to_id := lattice.graph_query(req, 'to', 'uuid')::uuid;
    IF from_id IS NULL OR to_id IS NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'from and to are required',
                                   jsonb_build_object('parameter', CASE WHEN from_id IS NULL THEN 'from' ELSE 'to' END));
    END IF;
    RETURN lattice.graph_answer(lattice.graph_paths_json(from_id, to_id,
        COALESCE(lattice.graph_query(req, 'max_paths', 'positive')::integer, 1)));
END
$$;

-- GET /api/v1/graph/cycles
CREATE FUNCTION lattice_http.graph_cycles(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_cycles_json());
END
$$;

-- GET /api/v1/graph/order
CREATE FUNCTION lattice_http.graph_order(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    RETURN lattice.graph_answer(lattice.graph_order_json());
END
$$;

-- GET /api/v1/graph/diff?from=&to=  (to defaults to now)
CREATE FUNCTION lattice_http.graph_diff(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    from_time timestamptz;
    to_time timestamptz;
BEGIN
    PERFORM lattice.authenticate(req, 'read');
    from_time := lattice.graph_query(req, 'from', 'timestamp')::timestamptz;
    to_time := COALESCE(lattice.graph_query(req, 'to', 'timestamp')::timestamptz, pg_catalog.now());
    IF from_time IS NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'from is required',
                                   jsonb_build_object('parameter', 'from'));
    END IF;
    RETURN lattice.graph_answer(lattice.graph_diff(from_time, to_time)::json);
END
$$;

GRANT EXECUTE ON FUNCTION lattice.graph_param_id(jsonb, text), lattice.graph_query(jsonb, text, text),
                          lattice.graph_answer(json)
    TO lattice_app;
