-- Hourly usage per tenant and quota class (api, ingest, dashboard; subject
-- is the service for ingest, '' otherwise), rolled up from the shared-memory
-- counters by the lattice usage roll-up worker (src/worker.c): one
-- write per tenant, class and subject per interval, never per request.
-- user_id makes it a tenant table (RLS).

CREATE TABLE lattice.usage_hourly (
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    hour        timestamptz NOT NULL,
    requests    bigint NOT NULL DEFAULT 0 CHECK (requests >= 0),
    refused     bigint NOT NULL DEFAULT 0 CHECK (refused >= 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    class       text NOT NULL DEFAULT 'api' CHECK (class IN ('api', 'ingest', 'dashboard')),
    subject     text NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, class, subject, hour)
);
CREATE INDEX ON lattice.usage_hourly (user_id, hour);
