/*
 * ratelimit_enforce.c
 *		Quotas on top of the counters, and the SQL entry points
 *		lattice_http functions use.
 *
 * Authenticated requests count in one of three classes, each with its own
 * counters, so exhausting one never refuses another:
 *   api        an API key or bearer token on a non-ingest route: per
 *              account, the plan's rate_limit_per_hour (the roadmap's 1,000)
 *   dashboard  a session cookie: per account, the plan's dashboard_per_hour
 *   ingest     the plugin endpoints: per service (tenant + service name),
 *              the plan's ingest_per_service_per_hour, and at the same time
 *              the account's ceiling of max_services times that, so new
 *              service names cannot buy more
 * Unauthenticated routes count per client address and route class.
 *
 * The last enforce result of the transaction is kept backend-locally: the
 * shim reads it compactly through lattice_http.rate_state() and writes the
 * RateLimit headers itself.  It is cleared at the end of every transaction,
 * like the tenant.
 */
#include "common.h"
#include "ratelimit.h"
#include "tenant.h"

#include <sys/socket.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#define RATE_HOUR_SECONDS 3600

static LatticeRateResult last_result;
static const char *last_class = NULL;
static bool last_result_set = false;

/* A tenant's plan limits */
typedef struct PlanLimits
{
	int64 api_per_hour;
	int64 dashboard_per_hour;
	int64 ingest_per_service_per_hour;
	int64 max_services;
} PlanLimits;

/* backend-local cache of tenants' plan limits */
typedef struct PlanCacheEntry
{
	pg_uuid_t user_id;
	PlanLimits limits;
	TimestampTz fetched_at;
} PlanCacheEntry;

static HTAB *plan_cache = NULL;
static SPIPlanPtr plan_query = NULL;

static void
rate_xact_callback(XactEvent event, void *arg)
{
	if (lattice_xact_ended(event))
		last_result_set = false;
}

void
lattice_rate_enforce_init(void)
{
	RegisterXactCallback(rate_xact_callback, NULL);
}

bool
lattice_rate_last_result(LatticeRateResult *out)
{
	if (last_result_set && out)
		*out = last_result;
	return last_result_set;
}

static void
rate_set_last(const LatticeRateResult *r, const char *klass)
{
	last_result = *r;
	last_class = klass;
	last_result_set = true;
}

/*
 * The rate headers of one answer as (name, value) pairs.  RateLimit-* carry
 * the IETF draft's delta seconds; X-RateLimit-Reset is the Unix time of the
 * reset, as GitHub's clients expect; RateLimit-Class the class of the last
 * count (always set just before).
 */
#define RATE_HEADERS_MAX 9

typedef struct RateHeader
{
	const char *name;
	char value[48];
} RateHeader;

static int
rate_headers(const LatticeRateResult *r, RateHeader *h)
{
	int64 epoch_reset = (GetCurrentTimestamp() / USECS_PER_SEC) +
		(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY + r->reset_seconds;
	int n = 0;

#define RATE_HEADER(hname, ...) \
	(h[n].name = (hname), snprintf(h[n].value, sizeof(h[n].value), __VA_ARGS__), n++)
	RATE_HEADER("RateLimit-Limit", INT64_FORMAT, r->limit);
	RATE_HEADER("RateLimit-Remaining", INT64_FORMAT, r->remaining);
	RATE_HEADER("RateLimit-Reset", INT64_FORMAT, r->reset_seconds);
	RATE_HEADER("RateLimit-Policy", INT64_FORMAT ";w=" INT64_FORMAT, r->limit, r->period_seconds);
	RATE_HEADER("X-RateLimit-Limit", INT64_FORMAT, r->limit);
	RATE_HEADER("X-RateLimit-Remaining", INT64_FORMAT, r->remaining);
	RATE_HEADER("X-RateLimit-Reset", INT64_FORMAT, epoch_reset);
	if (!r->allowed)
		RATE_HEADER("Retry-After", INT64_FORMAT, r->retry_after_seconds);
	if (last_class)
		RATE_HEADER("RateLimit-Class", "%s", last_class);
#undef RATE_HEADER
	Assert(n <= RATE_HEADERS_MAX);
	return n;
}

char *
lattice_rate_headers_json(const LatticeRateResult *r)
{
	RateHeader h[RATE_HEADERS_MAX];
	int n = rate_headers(r, h);
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, ',');
		escape_json(&buf, h[i].name);
		appendStringInfoChar(&buf, ':');
		escape_json(&buf, h[i].value);
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

static void
rate_push_string(JsonbParseState **state, JsonbIteratorToken token, const char *s)
{
	JsonbValue v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, s);
	v.val.string.len = strlen(s);
	pushJsonbValue(state, token, &v);
}

/* The same headers as jsonb, built directly: this runs with every answer. */
static Datum
rate_headers_jsonb(const LatticeRateResult *r)
{
	RateHeader h[RATE_HEADERS_MAX];
	int n = rate_headers(r, h);
	JsonbParseState *state = NULL;
	JsonbValue *result;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < n; i++)
	{
		rate_push_string(&state, WJB_KEY, h[i].name);
		rate_push_string(&state, WJB_VALUE, h[i].value);
	}
	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}

/* PT429 rate_limited, with the headers the shim writes out. */
static void
rate_raise_refused(const LatticeRateResult *r, const char *scope)
{
	StringInfoData details;

	initStringInfo(&details);
	appendStringInfoString(&details, "{\"scope\":");
	escape_json(&details, scope);
	appendStringInfo(&details,
					 ",\"limit\":" INT64_FORMAT ",\"period_seconds\":" INT64_FORMAT
					 ",\"remaining\":0,\"reset_seconds\":" INT64_FORMAT
					 ",\"retry_after_seconds\":" INT64_FORMAT "}",
					 r->limit, r->period_seconds, r->reset_seconds, r->retry_after_seconds);
	lattice_raise_http(429, "rate_limited",
					   psprintf("rate limit exceeded: retry after " INT64_FORMAT " seconds",
								r->retry_after_seconds),
					   details.data, lattice_rate_headers_json(r));
}

/* Plan limits of a tenant whose plan cannot be read (the GUC, the defaults) */
static void
rate_plan_defaults(PlanLimits *out)
{
	out->api_per_hour = rate_tenant_per_hour;
	out->dashboard_per_hour = 7200;
	out->ingest_per_service_per_hour = 3600;
	out->max_services = 100;
}

/*
 * Reads the tenant's plan limits as the owner of schema lattice (a
 * parameterised query, one row), so the answer does not depend on which
 * role or tenant is current.  Unknown users get the defaults.
 */
static void
rate_plan_limits_read(const pg_uuid_t *user_id, PlanLimits *out)
{
	Oid save_userid;
	int save_sec;
	Datum arg = UUIDPGetDatum(user_id);
	LatticeRoleSwitch sw;

	rate_plan_defaults(out);

	/*
	 * The tenant's own row is read as its role (tenant.c says why); anyone
	 * else's as the owner of schema lattice.
	 */
	lattice_as_tenant_role(user_id, &sw);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	if (!sw.switched)
		SetUserIdAndSecContext(lattice_schema_owner(),
							   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	lattice_spi_connect("lattice");
	lattice_spi_prepare_kept(&plan_query,
							 "SELECT p.rate_limit_per_hour, p.dashboard_per_hour,"
							 "       p.ingest_per_service_per_hour, p.max_services"
							 "  FROM lattice.users u"
							 "  JOIN lattice.plans p ON p.id OPERATOR(pg_catalog.=) u.plan_id"
							 " WHERE u.id OPERATOR(pg_catalog.=) $1",
							 1, (Oid[]) {UUIDOID});
	if (SPI_execute_plan(plan_query, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading the account's plan failed");
	if (SPI_processed == 1)
	{
		HeapTuple row = SPI_tuptable->vals[0];
		TupleDesc desc = SPI_tuptable->tupdesc;
		bool isnull;

		out->api_per_hour = DatumGetInt32(SPI_getbinval(row, desc, 1, &isnull));
		out->dashboard_per_hour = DatumGetInt32(SPI_getbinval(row, desc, 2, &isnull));
		out->ingest_per_service_per_hour = DatumGetInt32(SPI_getbinval(row, desc, 3, &isnull));
		out->max_services = DatumGetInt32(SPI_getbinval(row, desc, 4, &isnull));
	}
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
	lattice_restore_role(&sw);
}

/* The plan limits, reused for lattice.rate_plan_cache_ms per backend. */
static void
rate_plan_limits(const pg_uuid_t *user_id, PlanLimits *out)
{
	TimestampTz now = GetCurrentTimestamp();
	PlanCacheEntry *e;

	if (plan_cache == NULL || hash_get_num_entries(plan_cache) > 4096)
	{
		HASHCTL ctl;

		if (plan_cache)
			hash_destroy(plan_cache);
		ctl.keysize = sizeof(pg_uuid_t);
		ctl.entrysize = sizeof(PlanCacheEntry);
		ctl.hcxt = TopMemoryContext;
		plan_cache = hash_create("lattice plan limits", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(plan_cache, user_id, HASH_FIND, NULL);
	if (e == NULL || now - e->fetched_at >= (int64) rate_plan_cache_ms * 1000)
	{
		PlanLimits limits;

		rate_plan_limits_read(user_id, &limits);
		e = hash_search(plan_cache, user_id, HASH_ENTER, NULL);
		e->limits = limits;
		e->fetched_at = now;
	}
	*out = e->limits;
}

static int64
rate_effective_burst(int64 burst_guc, int64 limit)
{
	return burst_guc > 0 ? Min(burst_guc, limit) : limit;
}

/* The cell of an account class (api or dashboard) of a tenant. */
static void
rate_account_cell(LatticeQuotaClass klass, const pg_uuid_t *user_id, const PlanLimits *plan,
				  RateCell *cell)
{
	bool dashboard = klass == LATTICE_QUOTA_DASHBOARD;

	rate_tenant_key(dashboard ? RATE_KIND_DASHBOARD : RATE_KIND_TENANT, user_id, &cell->key);
	cell->scope = dashboard ? "dashboard" : "api";
	cell->label = NULL;
	cell->tenant = user_id;
	cell->limit = dashboard ? plan->dashboard_per_hour : plan->api_per_hour;
	cell->period_seconds = RATE_HOUR_SECONDS;
	cell->burst = dashboard ? Min((int64) rate_dashboard_burst, cell->limit) :
							  rate_effective_burst(rate_tenant_burst, cell->limit);
}

/* The cells of one ingest request: the service's budget, the account's ceiling */
static void
rate_ingest_cells(const pg_uuid_t *user_id, const char *service, const PlanLimits *plan,
				  RateCell cells[2])
{
	rate_service_key(user_id, service, &cells[0].key);
	cells[0].scope = "ingest";
	cells[0].label = service;
	cells[0].tenant = user_id;
	cells[0].limit = plan->ingest_per_service_per_hour;
	cells[0].period_seconds = RATE_HOUR_SECONDS;
	cells[0].burst = Min((int64) rate_ingest_burst, cells[0].limit);

	rate_tenant_key(RATE_KIND_INGEST_ACCOUNT, user_id, &cells[1].key);
	cells[1].scope = "ingest_account";
	cells[1].label = NULL;
	cells[1].tenant = user_id;
	cells[1].limit = plan->ingest_per_service_per_hour * plan->max_services;
	cells[1].period_seconds = RATE_HOUR_SECONDS;
	cells[1].burst = cells[0].burst * plan->max_services;
}

void
lattice_rate_enforce_account(LatticeQuotaClass klass, const pg_uuid_t *user_id, LatticeRateResult *out)
{
	PlanLimits plan;
	RateCell cell;

	if (!rate_limits_enabled)
	{
		memset(out, 0, sizeof(*out));
		out->allowed = true;
		return;
	}
	rate_require_shmem("lattice.authenticate");
	rate_plan_limits(user_id, &plan);
	rate_account_cell(klass, user_id, &plan, &cell);
	rate_check_cells(&cell, 1, out);
	rate_set_last(out, cell.scope);
	if (!out->allowed)
		rate_raise_refused(out, cell.scope);
}

void
lattice_rate_enforce_tenant(const pg_uuid_t *user_id, LatticeRateResult *out)
{
	lattice_rate_enforce_account(LATTICE_QUOTA_API, user_id, out);
}

/* The longest service name kept (the plugins' names are 2 to 63 characters) */
#define RATE_SERVICE_NAME_MAX (RATE_LABEL_LEN - 1)

/*
 * lattice.rate_enforce_ingest(service text) -> void
 * Counts one ingest request of the current tenant's service against the
 * service's budget and the account's ceiling together; raises PT429
 * rate_limited (with Retry-After) when either refuses.  A missing or empty
 * name counts as the service "unnamed".
 */
PG_FUNCTION_INFO_V1(lattice_rate_enforce_ingest);
Datum
lattice_rate_enforce_ingest(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;
	char *service = PG_ARGISNULL(0) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	PlanLimits plan;
	RateCell cells[2];
	LatticeRateResult r;
	int refusing;

	if (!lattice_get_tenant(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.rate_enforce_ingest: no authenticated tenant")));
	if (!rate_limits_enabled)
		PG_RETURN_VOID();
	rate_require_shmem("lattice.rate_enforce_ingest");
	if (service[0] == '\0')
		service = "unnamed";
	if (strlen(service) > RATE_SERVICE_NAME_MAX)
		service[pg_mbcliplen(service, strlen(service), RATE_SERVICE_NAME_MAX)] = '\0';

	rate_plan_limits(&tenant, &plan);
	rate_ingest_cells(&tenant, service, &plan, cells);
	refusing = rate_check_cells(cells, 2, &r);
	rate_set_last(&r, "ingest");
	if (!r.allowed)
		rate_raise_refused(&r, refusing == 0 ? "ingest" : "ingest_account");
	PG_RETURN_VOID();
}

/*
 * lattice_http.rate_state() -> text: this transaction's last count as
 * "<class> <limit> <remaining> <reset_seconds> <period_seconds>", or NULL.
 * The shim reads it with every answer and writes the RateLimit headers.
 */
PG_FUNCTION_INFO_V1(lattice_rate_state);
Datum
lattice_rate_state(PG_FUNCTION_ARGS)
{
	char buf[128];

	if (!last_result_set || last_result.limit <= 0)
		PG_RETURN_NULL();
	snprintf(buf, sizeof(buf), "%s " INT64_FORMAT " " INT64_FORMAT " " INT64_FORMAT " " INT64_FORMAT,
			 last_class ? last_class : "api", last_result.limit, last_result.remaining,
			 last_result.reset_seconds, last_result.period_seconds);
	PG_RETURN_TEXT_P(cstring_to_text(buf));
}

/* The per-class limit of an unauthenticated route. */
static int64
rate_address_limit(const char *route_class)
{
	if (strcmp(route_class, "signup") == 0)
		return rate_signup_per_hour;
	if (strcmp(route_class, "login") == 0)
		return rate_login_per_hour;
	if (strcmp(route_class, "webhook") == 0)
		return rate_webhook_per_hour;
	if (strcmp(route_class, "health") == 0)
		return rate_health_per_hour;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("lattice.rate_enforce_address: unknown route class \"%s\"", route_class),
			 errhint("Use signup, login, webhook or health.")));
	return 0; /* keep the compiler quiet */
}

/*
 * The key of a client address: IPv4 as is, IPv6 by its /64 (one host holds
 * a whole /64, so per-address limits on IPv6 would be trivial to dodge).
 */
static char *
rate_address_label(Jsonb *req)
{
	JsonbValue k;
	JsonbValue *v;
	inet *ip;
	inet *net;
	int bits;

	k.type = jbvString;
	k.val.string.val = "client_addr";
	k.val.string.len = strlen("client_addr");
	v = JB_ROOT_IS_OBJECT(req) ? findJsonbValueFromContainer(&req->root, JB_FOBJECT, &k) : NULL;
	if (v == NULL || v->type != jbvString || v->val.string.len == 0)
		return pstrdup("unknown");

	ip = DatumGetInetPP(DirectFunctionCall1(inet_in,
											CStringGetDatum(pnstrdup(v->val.string.val,
																	 v->val.string.len))));
	net = palloc0(sizeof(inet));
	net->inet_data.family = ip_family(ip);
	bits = ip_family(ip) == PGSQL_AF_INET ? 32 : 64;
	net->inet_data.bits = bits;
	memcpy(net->inet_data.ipaddr, ip_addr(ip), bits / 8);
	SET_INET_VARSIZE(net);
	return DatumGetCString(DirectFunctionCall1(inet_out, InetPGetDatum(net)));
}

/*
 * lattice.rate_enforce_address(req jsonb, route_class text) -> jsonb
 * Counts one request of req's client address for the route class; raises
 * PT429 rate_limited when refused, else returns the rate headers.
 */
PG_FUNCTION_INFO_V1(lattice_rate_enforce_address);
Datum
lattice_rate_enforce_address(PG_FUNCTION_ARGS)
{
	char *route_class;
	char *label;
	char scope[RATE_SCOPE_LEN];
	int64 limit;
	RateKey key;
	LatticeRateResult r;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.rate_enforce_address: arguments must not be null")));
	rate_require_shmem("lattice.rate_enforce_address");
	route_class = text_to_cstring(PG_GETARG_TEXT_PP(1));
	limit = rate_address_limit(route_class);
	label = rate_address_label(PG_GETARG_JSONB_P(0));

	snprintf(scope, sizeof(scope), "addr_%s", route_class);
	rate_scoped_key(scope, label, &key);
	rate_check_key(&key, scope, label, limit, RATE_HOUR_SECONDS,
				   rate_effective_burst(rate_address_burst, limit), &r);
	rate_set_last(&r, "address");
	if (!r.allowed)
		rate_raise_refused(&r, scope);
	PG_RETURN_DATUM(rate_headers_jsonb(&r));
}

/* lattice.rate_headers() -> jsonb: the last enforce result's headers, or {}. */
PG_FUNCTION_INFO_V1(lattice_rate_headers);
Datum
lattice_rate_headers(PG_FUNCTION_ARGS)
{
	if (!last_result_set)
		PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
	PG_RETURN_DATUM(rate_headers_jsonb(&last_result));
}

static Datum
rate_result_datum(FunctionCallInfo fcinfo, const LatticeRateResult *r)
{
	TupleDesc tupdesc;
	Datum values[5];
	bool nulls[5] = {false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice: function returning a rate result called in a wrong context");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = BoolGetDatum(r->allowed);
	values[1] = Int64GetDatum(r->limit);
	values[2] = Int64GetDatum(r->remaining);
	values[3] = Int64GetDatum(r->reset_seconds);
	values[4] = Int64GetDatum(r->retry_after_seconds);
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/*
 * lattice.rate_check(scope, key, lim, period_seconds) -> lattice.rate_result
 * Counts one event; never raises a refusal (callers decide).
 */
PG_FUNCTION_INFO_V1(lattice_rate_check_sql);
Datum
lattice_rate_check_sql(PG_FUNCTION_ARGS)
{
	LatticeRateResult r;
	char *scope;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.rate_check: arguments must not be null")));
	scope = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strncmp(scope, "addr_", 5) == 0 || strcmp(scope, "tenant") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.rate_check: scope \"%s\" is reserved", scope)));
	lattice_rate_check(scope, text_to_cstring(PG_GETARG_TEXT_PP(1)), PG_GETARG_INT64(2),
					   PG_GETARG_INT64(3), &r);
	PG_RETURN_DATUM(rate_result_datum(fcinfo, &r));
}

/* Only the tenant itself (or a superuser) may spend a tenant's quota. */
static void
rate_check_own_tenant(const char *caller, const pg_uuid_t *user_id)
{
	pg_uuid_t current;

	if (superuser())
		return;
	if (!lattice_get_tenant(&current) || memcmp(&current, user_id, sizeof(current)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("%s: permission denied", caller),
				 errdetail("Only the authenticated tenant's own quota can be used.")));
}

/*
 * lattice.rate_enforce_tenant(user_id uuid) -> lattice.rate_result
 * The SQL face of lattice_rate_enforce_tenant(): raises PT429 when refused.
 */
PG_FUNCTION_INFO_V1(lattice_rate_enforce_tenant_sql);
Datum
lattice_rate_enforce_tenant_sql(PG_FUNCTION_ARGS)
{
	LatticeRateResult r;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.rate_enforce_tenant: user id must not be null")));
	rate_check_own_tenant("lattice.rate_enforce_tenant", PG_GETARG_UUID_P(0));
	lattice_rate_enforce_tenant(PG_GETARG_UUID_P(0), &r);
	PG_RETURN_DATUM(rate_result_datum(fcinfo, &r));
}

/* The state of one entry now, without counting: remaining, reset, this hour */
typedef struct RateFigures
{
	bool found;
	int64 remaining;
	int64 reset_seconds;
	int64 used;
	int64 refused;
} RateFigures;

/* Reads an entry's figures; the caller holds the lock. */
static void
rate_figures_locked(const RateEntry *e, int64 burst, TimestampTz now, int64 hour, RateFigures *f)
{
	memset(f, 0, sizeof(*f));
	f->remaining = burst;
	if (e == NULL)
		return;
	f->found = true;
	rate_entry_state(e, now, &f->remaining, &f->reset_seconds);
	if (e->hour == hour)
	{
		f->used = e->allowed;
		f->refused = e->refused;
	}
}

static void
rate_figures(const RateCell *cell, TimestampTz now, int64 hour, RateFigures *f)
{
	RateEntry *e;

	LWLockAcquire(rate_shared->lock, LW_SHARED);
	e = hash_search(rate_hash, &cell->key, HASH_FIND, NULL);
	rate_figures_locked(e, Min(Max(cell->burst, 1), cell->limit), now, hour, f);
	LWLockRelease(rate_shared->lock);
}

/*
 * lattice.rate_usage() -> lattice.rate_usage: the current tenant's api
 * class and this hour's counts, without counting a request.  NULL without
 * a tenant.
 */
PG_FUNCTION_INFO_V1(lattice_rate_usage);
Datum
lattice_rate_usage(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;
	TupleDesc tupdesc;
	Datum values[7];
	bool nulls[7] = {false};
	int64 hour = GetCurrentTimestamp() / USECS_PER_HOUR;
	PlanLimits plan;
	RateCell cell;
	RateFigures f;

	rate_require_shmem("lattice.rate_usage");
	if (!lattice_get_tenant(&tenant))
		PG_RETURN_NULL();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.rate_usage: called in a wrong context");
	tupdesc = BlessTupleDesc(tupdesc);

	rate_plan_limits(&tenant, &plan);
	rate_account_cell(LATTICE_QUOTA_API, &tenant, &plan, &cell);
	rate_figures(&cell, rate_now(), hour, &f);

	values[0] = Int64GetDatum(cell.limit);
	values[1] = Int64GetDatum(f.remaining);
	values[2] = Int64GetDatum(f.reset_seconds);
	values[3] = Int64GetDatum(RATE_HOUR_SECONDS);
	values[4] = Int64GetDatum(f.used);
	values[5] = Int64GetDatum(f.refused);
	values[6] = TimestampTzGetDatum(hour * USECS_PER_HOUR);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

static void
usage_push_int(JsonbParseState **state, const char *key, int64 value)
{
	JsonbValue v;

	rate_push_string(state, WJB_KEY, key);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(value);
	pushJsonbValue(state, WJB_VALUE, &v);
}

static void
usage_push_figures(JsonbParseState **state, const RateCell *cell, const RateFigures *f)
{
	usage_push_int(state, "limit", cell->limit);
	usage_push_int(state, "burst", Min(Max(cell->burst, 1), cell->limit));
	usage_push_int(state, "period_seconds", cell->period_seconds);
	usage_push_int(state, "used", f->used);
	usage_push_int(state, "remaining", f->remaining);
	usage_push_int(state, "reset_seconds", f->reset_seconds);
	usage_push_int(state, "refused_this_hour", f->refused);
}

/* One service's figures, copied under the lock */
typedef struct ServiceFigures
{
	char name[RATE_LABEL_LEN];
	RateFigures f;
} ServiceFigures;

/* "<class>": {"unit": "account", figures} of an account class */
static void
usage_push_account_class(JsonbParseState **state, const RateCell *cell, const RateFigures *f)
{
	rate_push_string(state, WJB_KEY, cell->scope);
	pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
	rate_push_string(state, WJB_KEY, "unit");
	rate_push_string(state, WJB_VALUE, "account");
	usage_push_figures(state, cell, f);
	pushJsonbValue(state, WJB_END_OBJECT, NULL);
}

static int
service_figures_cmp(const void *a, const void *b)
{
	return strcmp(((const ServiceFigures *) a)->name, ((const ServiceFigures *) b)->name);
}

/*
 * lattice.rate_usage_classes() -> jsonb: the current tenant's three classes
 * as they stand now (limit, burst, used and refused this hour, remaining,
 * reset), ingest with one entry per service the table holds.  Counts
 * nothing.  The services are found by one pass over the table under a
 * shared lock: a usage page's cost, never a request's.  NULL without a
 * tenant.
 */
PG_FUNCTION_INFO_V1(lattice_rate_usage_classes);
Datum
lattice_rate_usage_classes(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;
	TimestampTz now = rate_now();
	int64 hour = GetCurrentTimestamp() / USECS_PER_HOUR;
	PlanLimits plan;
	RateCell api;
	RateCell dashboard;
	RateCell ingest[2];
	RateFigures api_f;
	RateFigures dash_f;
	RateFigures account_f;
	ServiceFigures *services;
	int nservices = 0;
	int cap;
	int64 ingest_used = 0;
	int64 ingest_refused = 0;
	HASH_SEQ_STATUS seq;
	RateEntry *e;
	JsonbParseState *state = NULL;
	JsonbValue *result;

	rate_require_shmem("lattice.rate_usage_classes");
	if (!lattice_get_tenant(&tenant))
		PG_RETURN_NULL();
	rate_plan_limits(&tenant, &plan);
	rate_account_cell(LATTICE_QUOTA_API, &tenant, &plan, &api);
	rate_account_cell(LATTICE_QUOTA_DASHBOARD, &tenant, &plan, &dashboard);
	rate_ingest_cells(&tenant, "", &plan, ingest);

	LWLockAcquire(rate_shared->lock, LW_SHARED);
	rate_figures_locked(hash_search(rate_hash, &api.key, HASH_FIND, NULL), api.burst, now, hour, &api_f);
	rate_figures_locked(hash_search(rate_hash, &dashboard.key, HASH_FIND, NULL), dashboard.burst, now,
						hour, &dash_f);
	rate_figures_locked(hash_search(rate_hash, &ingest[1].key, HASH_FIND, NULL),
						Min(ingest[1].burst, ingest[1].limit), now, hour, &account_f);
	cap = (int) Min(hash_get_num_entries(rate_hash), (long) plan.max_services * 4 + 16);
	services = palloc(sizeof(ServiceFigures) * Max(cap, 1));
	hash_seq_init(&seq, rate_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.kind != RATE_KIND_INGEST || !e->has_tenant ||
			memcmp(&e->tenant, &tenant, sizeof(tenant)) != 0)
			continue;
		if (nservices < cap)
		{
			strlcpy(services[nservices].name, e->label, RATE_LABEL_LEN);
			rate_figures_locked(e, e->burst, now, hour, &services[nservices].f);
			ingest_used += services[nservices].f.used;
			ingest_refused += services[nservices].f.refused;
			nservices++;
		}
	}
	LWLockRelease(rate_shared->lock);
	qsort(services, nservices, sizeof(ServiceFigures), service_figures_cmp);

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);

	usage_push_account_class(&state, &api, &api_f);
	usage_push_account_class(&state, &dashboard, &dash_f);

	rate_push_string(&state, WJB_KEY, "ingest");
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	rate_push_string(&state, WJB_KEY, "unit");
	rate_push_string(&state, WJB_VALUE, "service");
	usage_push_int(&state, "limit", ingest[0].limit);
	usage_push_int(&state, "burst", ingest[0].burst);
	usage_push_int(&state, "period_seconds", ingest[0].period_seconds);
	usage_push_int(&state, "used", ingest_used);
	usage_push_int(&state, "refused_this_hour", ingest_refused);
	usage_push_int(&state, "account_limit", ingest[1].limit);
	usage_push_int(&state, "account_remaining", account_f.remaining);
	rate_push_string(&state, WJB_KEY, "services");
	pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
	for (int i = 0; i < nservices; i++)
	{
		pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
		rate_push_string(&state, WJB_KEY, "service");
		rate_push_string(&state, WJB_VALUE, services[i].name);
		usage_push_int(&state, "used", services[i].f.used);
		usage_push_int(&state, "remaining", services[i].f.remaining);
		usage_push_int(&state, "reset_seconds", services[i].f.reset_seconds);
		usage_push_int(&state, "refused_this_hour", services[i].f.refused);
		pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	}
	pushJsonbValue(&state, WJB_END_ARRAY, NULL);
	pushJsonbValue(&state, WJB_END_OBJECT, NULL);

	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(result));
}
