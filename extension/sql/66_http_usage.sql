-- GET /api/v1/usage: the tenant's quota classes (api, ingest per service,
-- dashboard) this hour, what each refused in the last 24 hours, and the
-- last 24 rolled-up hours by class.  The top-level limit, remaining,
-- reset_seconds, period_seconds and this_hour are the api class's.  The
-- request itself counts (authenticate checks it).
CREATE FUNCTION lattice_http.usage(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
AS $$
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
$$;
