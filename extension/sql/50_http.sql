-- The HTTP contract (docs/http-contract.md): every route of the shim calls
--   lattice_http.<name>(req jsonb, body text) RETURNS lattice.http_response
-- and writes the answer out as it is.

CREATE TYPE lattice.http_response AS (
    status  integer,
    headers jsonb,
    body    text
);

-- A JSON answer with optional extra headers.
CREATE FUNCTION lattice.http_json(status integer, body jsonb, headers jsonb DEFAULT '{}')
RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ROW(status, headers, body::text)::lattice.http_response $$;

-- An error answer: {"error": {"code", "message", "details"}}.  The shim adds
-- the request id.
CREATE FUNCTION lattice.http_error(status integer, code text, message text,
                                   details jsonb DEFAULT NULL, headers jsonb DEFAULT '{}')
RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ROW(status, headers,
               jsonb_build_object('error',
                   jsonb_strip_nulls(jsonb_build_object('code', code, 'message', message,
                                                        'details', details)))::text
              )::lattice.http_response
$$;

-- Raises an error that the shim turns into an HTTP answer: SQLSTATE PTnnn
-- (PostgREST's convention) gives the status, the message stays the message,
-- and the detail carries {"code", "details", "headers"} as JSON.  Raising
-- rolls the whole request back, which is what refusals want.
CREATE FUNCTION lattice.raise_http(status integer, code text, message text,
                                   details jsonb DEFAULT NULL, headers jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF status < 400 OR status > 599 THEN
        RAISE EXCEPTION 'lattice.raise_http: status % is not an error', status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'PT' || status::text,
        MESSAGE = message,
        DETAIL = jsonb_strip_nulls(jsonb_build_object('code', code, 'details', details,
                                                      'headers', headers))::text;
END
$$;
