-- Rate counters in shared memory (src/ratelimit*.c).  They need lattice in
-- shared_preload_libraries; without it these functions raise an error that
-- names the setting.  See docs/http-contract.md "Rate limits".

CREATE TYPE lattice.rate_result AS (
    allowed             boolean,
    "limit"             bigint,
    remaining           bigint,
    reset_seconds       bigint,
    retry_after_seconds bigint
);

CREATE TYPE lattice.rate_usage AS (
    "limit"             bigint,
    remaining           bigint,
    reset_seconds       bigint,
    period_seconds      bigint,
    used_this_hour      bigint,
    refused_this_hour   bigint,
    hour_start          timestamptz
);

-- Counts one event for (scope, key): lim events per period_seconds.  Never
-- raises a refusal; the caller decides (e.g. login attempts per account).
CREATE FUNCTION lattice.rate_check(scope text, key text, lim bigint, period_seconds bigint)
RETURNS lattice.rate_result
    AS 'MODULE_PATHNAME', 'lattice_rate_check_sql'
    LANGUAGE C VOLATILE STRICT;

-- Counts one request of the tenant against its plan; PT429 when refused.
-- Only the authenticated tenant itself (or a superuser) may call it.
CREATE FUNCTION lattice.rate_enforce_tenant(user_id uuid)
RETURNS lattice.rate_result
    AS 'MODULE_PATHNAME', 'lattice_rate_enforce_tenant_sql'
    LANGUAGE C VOLATILE;

-- Counts one ingest request of the current tenant's service (quota class
-- ingest): the service's budget and the account's ceiling together; PT429
-- when either refuses.
CREATE FUNCTION lattice.rate_enforce_ingest(service text)
RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_rate_enforce_ingest'
    LANGUAGE C VOLATILE;

-- Counts one request of req->>'client_addr' (IPv6 by /64) for an
-- unauthenticated route class (signup, login, webhook, health); PT429 when
-- refused, else returns the rate headers.
CREATE FUNCTION lattice.rate_enforce_address(req jsonb, route_class text)
RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_rate_enforce_address'
    LANGUAGE C VOLATILE;

-- The RateLimit-* / X-RateLimit-* headers of this transaction's last
-- enforce call ({} when none): lattice_http functions merge them into their
-- answer's headers.
CREATE FUNCTION lattice.rate_headers() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_rate_headers'
    LANGUAGE C VOLATILE;

-- The current tenant's api class and this hour's counts (counts nothing).
CREATE FUNCTION lattice.rate_usage() RETURNS lattice.rate_usage
    AS 'MODULE_PATHNAME', 'lattice_rate_usage'
    LANGUAGE C VOLATILE;

-- The current tenant's three quota classes as they stand now, ingest per
-- service (counts nothing).
CREATE FUNCTION lattice.rate_usage_classes() RETURNS jsonb
    AS 'MODULE_PATHNAME', 'lattice_rate_usage_classes'
    LANGUAGE C VOLATILE;

-- Every counter, for DBAs (lattice_admin) through lattice.rate_counters.
CREATE FUNCTION lattice.rate_counters_all(
    OUT scope text, OUT key text, OUT "limit" bigint, OUT period_seconds bigint,
    OUT burst bigint, OUT remaining bigint, OUT reset_seconds bigint,
    OUT allowed_this_hour bigint, OUT refused_this_hour bigint,
    OUT hour_start timestamptz, OUT last_used timestamptz)
RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'lattice_rate_counters_all'
    LANGUAGE C VOLATILE;

CREATE VIEW lattice.rate_counters AS
    SELECT * FROM lattice.rate_counters_all();
COMMENT ON VIEW lattice.rate_counters IS
    'every rate counter in shared memory (tenants by user id, addresses by scope); lattice_admin only';

-- Shared memory of the table: size, keys in use, evictions, bytes.
CREATE FUNCTION lattice.rate_memory(
    OUT table_size integer, OUT entries bigint, OUT evictions bigint,
    OUT entry_bytes integer, OUT table_bytes bigint, OUT bytes_for_100k_keys bigint)
RETURNS record
    AS 'MODULE_PATHNAME', 'lattice_rate_memory'
    LANGUAGE C VOLATILE;

-- Superuser only: checks/s of the C check in a loop inside C.
CREATE FUNCTION lattice.rate_bench(iterations bigint, keys integer DEFAULT 1000)
RETURNS double precision
    AS 'MODULE_PATHNAME', 'lattice_rate_bench'
    LANGUAGE C VOLATILE;

-- Rolls unwritten hourly usage into lattice.usage_hourly now (the worker
-- does it every lattice.rate_usage_interval seconds).
CREATE FUNCTION lattice.rate_flush_usage() RETURNS bigint
    AS 'MODULE_PATHNAME', 'lattice_rate_flush_usage'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

REVOKE ALL ON lattice.rate_counters FROM PUBLIC;
GRANT SELECT ON lattice.rate_counters TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.rate_counters_all(), lattice.rate_memory(),
                          lattice.rate_flush_usage()
    TO lattice_admin;
GRANT EXECUTE ON FUNCTION lattice.rate_check(text, text, bigint, bigint),
                          lattice.rate_enforce_tenant(uuid),
                          lattice.rate_enforce_address(jsonb, text),
                          lattice.rate_enforce_ingest(text),
                          lattice.rate_headers(),
                          lattice.rate_usage(),
                          lattice.rate_usage_classes()
    TO lattice_app;
