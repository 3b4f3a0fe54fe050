-- OpenTelemetry's OTLP/HTTP traces endpoint (docs/opentelemetry.md).  The
-- shim has undone gzip and turned protobuf into OTLP/JSON, and it encodes
-- this answer back into the request's encoding; req.otlp says what it did.
-- Ingest rules as the plugin's routes: an ingest key (X-Lattice-API-Key or
-- Authorization: Bearer), an entitled account, the ingest quota per service.

-- POST /otlp/v1/traces
CREATE FUNCTION lattice_http.otlp_traces(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    uid uuid := lattice.authenticate(req, 'ingest');
    h jsonb := lattice.require_ingest(uid);
BEGIN
    RETURN lattice.http_json(200, lattice.ingest_otlp(body, COALESCE((req #>> '{otlp,rejectedSpans}')::integer, 0),
                                                      req #>> '{otlp,rejectedMessage}'), h);
END
$$;
