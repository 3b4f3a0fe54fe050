-- The database side of the shim's GET /metrics (docs/shim.md, "Metrics").
--
-- The shim calls lattice_http.metrics_db() once a second at most, in one
-- statement with a short statement_timeout, and turns the jsonb into
-- Prometheus series.  Every figure is an aggregate over all tenants: no
-- tenant id, e-mail, address, service or per-tenant count leaves here.

-- This hour's requests allowed and refused per quota class, summed in C over
-- the shared-memory counters (src/ratelimit_admin.c): api, dashboard,
-- ingest (per service) and address (unauthenticated routes by client).
CREATE FUNCTION lattice.rate_class_totals(OUT class text, OUT used bigint, OUT refused bigint)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'lattice_rate_class_totals'
    LANGUAGE C VOLATILE;

-- The figures, read as the extension owner (the outbox and Stripe's events
-- are owner-only tables; the rate table's size is lattice_admin's).  PL/pgSQL
-- because the billing tables come later in the install script.
--   outbox            jobs not done, by kind and state (pending, running, failed)
--   outbox_oldest_pending_seconds
--                     age of the oldest job not finished (pending or running), 0 when none
--   stripe_events     Stripe webhook events stored, by outcome
--   rate_classes      {class: {used, refused}} this hour
--   rate_table        {size, entries, evictions} of the shared counter table
CREATE FUNCTION lattice.metrics_figures() RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    outbox jsonb;
    oldest double precision;
    events jsonb;
    classes jsonb;
    mem record;
BEGIN
    -- one pass over the jobs not done
    WITH open_jobs AS (
        SELECT o.kind, o.status, count(*) AS n, min(o.created_at) AS oldest
          FROM lattice.outbox o
         WHERE o.status <> 'done'
         GROUP BY o.kind, o.status)
    SELECT (SELECT jsonb_object_agg(k.kind, (
                SELECT jsonb_object_agg(s.state, coalesce(j.n, 0))
                  FROM unnest(ARRAY['pending', 'running', 'failed']) s(state)
                  LEFT JOIN open_jobs j ON j.kind = k.kind AND j.status = s.state))
              FROM unnest(ARRAY['stripe', 'email']) k(kind)),
           coalesce(extract(epoch FROM now() - (SELECT min(j.oldest) FROM open_jobs j
                                                 WHERE j.status IN ('pending', 'running'))), 0)
      INTO outbox, oldest;
    SELECT jsonb_object_agg(x.outcome, coalesce(d.n, 0))
      INTO events
      FROM unnest(ARRAY['received', 'applied', 'stale', 'ignored', 'unmatched']) x(outcome)
      LEFT JOIN (SELECT e.outcome, count(*) AS n FROM lattice.stripe_events e GROUP BY e.outcome) d
             ON d.outcome = x.outcome;
    SELECT jsonb_object_agg(t.class, jsonb_build_object('used', t.used, 'refused', t.refused))
      INTO classes
      FROM lattice.rate_class_totals() t;
    SELECT m.table_size, m.entries, m.evictions INTO mem FROM lattice.rate_memory() m;
    RETURN jsonb_build_object(
        'outbox', outbox,
        'outbox_oldest_pending_seconds', round(oldest::numeric, 3),
        'stripe_events', events,
        'rate_classes', classes,
        'rate_table', jsonb_build_object('size', mem.table_size, 'entries', mem.entries,
                                         'evictions', mem.evictions));
END
$$;

-- What the shim reads on a scrape (it logs in as a member of lattice_api).
CREATE FUNCTION lattice_http.metrics_db() RETURNS jsonb
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT lattice.metrics_figures()
$$;

REVOKE ALL ON FUNCTION lattice.rate_class_totals(), lattice.metrics_figures() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lattice.rate_class_totals() TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.metrics_figures() TO lattice_app;
