// The SQL side of the shim's test-only routes (R_TEST lines of shim/routes.c,
// active with test_routes = 1).  Created as the superuser in the test
// database, dropped again afterwards; _test_missing is never created.
import { psql } from './lib.mjs';

const FUNCTIONS = `
CREATE TABLE IF NOT EXISTS public.shim_test_writes (request_id text, method text);
GRANT INSERT, SELECT ON public.shim_test_writes TO lattice_api;

-- Echoes what the shim sent, with headers of both shapes; ?tenant= sets one.
CREATE OR REPLACE FUNCTION lattice_http._test_echo(req jsonb, body text)
RETURNS lattice.http_response LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF req->'query' ? 'tenant' THEN
        PERFORM lattice.test_set_tenant((req->'query'->>'tenant')::uuid);
    END IF;
    RETURN ROW(COALESCE((req->'query'->>'status')::int, 200),
               jsonb_build_object('X-Test', 'yes',
                                  'Set-Cookie', jsonb_build_array('a=1; Path=/', 'b=2; Path=/'),
                                  'X-Bad', E'evil\\r\\nInjected: yes'),
               jsonb_build_object('req', req, 'body', body)::text)::lattice.http_response;
END $$;

CREATE OR REPLACE FUNCTION lattice_http._test_fixed(req jsonb, body text)
RETURNS lattice.http_response LANGUAGE sql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT ROW(200, '{}'::jsonb, jsonb_build_object('fixed', true, 'params', req->'params')::text)::lattice.http_response
$$;

-- ?pt=409&code=x raises through lattice.raise_http, ?answer=1 returns an
-- error answer, ?sqlstate=23505 raises that SQLSTATE.
CREATE OR REPLACE FUNCTION lattice_http._test_fail(req jsonb, body text)
RETURNS lattice.http_response LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
DECLARE q jsonb := req->'query';
BEGIN
    IF req->>'method' <> 'GET' THEN  -- shows that a raised error rolls the write back
        INSERT INTO public.shim_test_writes VALUES (req->>'request_id', 'fail:' || (req->>'method'));
    END IF;
    IF q ? 'pt' THEN
        PERFORM lattice.raise_http((q->>'pt')::int, q->>'code', 'raised on purpose',
                                   '{"field": "name"}'::jsonb, '{"Retry-After": "7"}'::jsonb);
    ELSIF q ? 'answer' THEN
        RETURN lattice.http_error(422, 'answered_error', 'returned on purpose', '{"n": 1}'::jsonb,
                                  '{"X-Extra": "1"}'::jsonb);
    END IF;
    RAISE EXCEPTION USING ERRCODE = q->>'sqlstate', MESSAGE = 'failing with ' || (q->>'sqlstate');
END $$;

CREATE OR REPLACE FUNCTION lattice_http._test_sleep(req jsonb, body text)
RETURNS lattice.http_response LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_sleep((req->'query'->>'ms')::int / 1000.0);
    RETURN ROW(200, '{}'::jsonb, '{"slept": true}')::lattice.http_response;
END $$;

-- Runs as the caller so that a GET (READ ONLY) cannot write.
CREATE OR REPLACE FUNCTION lattice_http._test_write(req jsonb, body text)
RETURNS lattice.http_response LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.shim_test_writes VALUES (req->>'request_id', req->>'method');
    RETURN ROW(201, '{}'::jsonb, '{"written": true}'::text);  -- no cast: the caller has no USAGE on lattice
END $$;

GRANT EXECUTE ON FUNCTION lattice_http._test_echo(jsonb, text), lattice_http._test_fixed(jsonb, text),
    lattice_http._test_fail(jsonb, text), lattice_http._test_sleep(jsonb, text),
    lattice_http._test_write(jsonb, text) TO lattice_api;
`;

export function createTestFunctions() {
  psql(FUNCTIONS);
}

export function dropTestFunctions() {
  psql(`DROP FUNCTION IF EXISTS lattice_http._test_echo(jsonb, text), lattice_http._test_fixed(jsonb, text),
        lattice_http._test_fail(jsonb, text), lattice_http._test_sleep(jsonb, text),
        lattice_http._test_write(jsonb, text);
        DROP TABLE IF EXISTS public.shim_test_writes;`);
}
