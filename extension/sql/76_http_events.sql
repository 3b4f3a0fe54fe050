-- Live changes (GET /api/v1/events): the shim authenticates a Server-Sent
-- Events client through this function on its ordinary pooled path, then holds
-- the stream open outside any transaction and forwards the lattice_graph
-- notifications (lattice.graph_bump, 70_graph.sql) whose tenant is userId.
-- graphVersion lets the client tell whether what it shows is already stale.
CREATE FUNCTION lattice_http.events_subscribe(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'read');
BEGIN
    RETURN lattice.http_json(200,
        jsonb_build_object('userId', uid, 'graphVersion', lattice.graph_version()));
END
$$;
