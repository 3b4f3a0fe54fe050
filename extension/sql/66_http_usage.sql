-- GET /api/v1/usage: the tenant's quota, this hour's use and the last 24
-- rolled-up hours.  The request itself counts (authenticate checks it).
CREATE FUNCTION lattice_http.usage(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    u lattice.rate_usage;
    history jsonb;
BEGIN
    PERFORM lattice.authenticate(req);
    u := lattice.rate_usage();
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'hour', h.hour, 'requests', h.requests, 'refused', h.refused)
               ORDER BY h.hour DESC), '[]')
      INTO history
      FROM (SELECT hour, requests, refused FROM lattice.usage_hourly
             ORDER BY hour DESC LIMIT 24) h;
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
            'history', history),
        lattice.rate_headers());
END
$$;
