/*
 * ratelimit_enforce.c
 *		Quotas on top of the counters: per tenant (from its plan) and per
 *		client address (per route class), the headers of the answer, and
 *		the SQL entry points lattice_http functions use.
 *
 * The last enforce result of the transaction is kept backend-locally so a
 * lattice_http function can merge lattice.rate_headers() into its answer; it
 * is cleared at the end of every transaction, like the tenant.
 */
#include "ratelimit.h"

#include <sys/socket.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#define RATE_HOUR_SECONDS 3600

static LatticeRateResult last_result;
static bool last_result_set = false;

/* backend-local cache of tenants' plan limits */
typedef struct PlanCacheEntry
{
	pg_uuid_t	user_id;
	int64		limit;
	TimestampTz fetched_at;
} PlanCacheEntry;

static HTAB *plan_cache = NULL;
static SPIPlanPtr plan_query = NULL;

static void
rate_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT)
		last_result_set = false;
}

void
rate_enforce_init(void)
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
rate_set_last(const LatticeRateResult *r)
{
	last_result = *r;
	last_result_set = true;
}

/*
 * The rate headers of one answer as (name, value) pairs.  RateLimit-* carry
 * the IETF draft's delta seconds; X-RateLimit-Reset is the Unix time of the
 * reset, as GitHub's clients expect.
 */
#define RATE_HEADERS_MAX 8

typedef struct RateHeader
{
	const char *name;
	char		value[48];
} RateHeader;

static int
rate_headers(const LatticeRateResult *r, RateHeader *h)
{
	int64		epoch_reset = (GetCurrentTimestamp() / USECS_PER_SEC) +
		(POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY + r->reset_seconds;
	int			n = 0;

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
#undef RATE_HEADER
	Assert(n <= RATE_HEADERS_MAX);
	return n;
}

char *
lattice_rate_headers_json(const LatticeRateResult *r)
{
	RateHeader	h[RATE_HEADERS_MAX];
	int			n = rate_headers(r, h);
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
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, s);
	v.val.string.len = strlen(s);
	pushJsonbValue(state, token, &v);
}

/* The same headers as jsonb, built directly: this runs with every answer. */
static Datum
rate_headers_jsonb(const LatticeRateResult *r)
{
	RateHeader	h[RATE_HEADERS_MAX];
	int			n = rate_headers(r, h);
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

/*
 * Reads the tenant's lattice.plans.rate_limit_per_hour as the owner of
 * schema lattice (a parameterised query, one row), so the answer does not
 * depend on which role or tenant is current.  Unknown users get the GUC.
 */
static int64
rate_plan_limit_read(const pg_uuid_t *user_id)
{
	Oid			nsp = get_namespace_oid("lattice", false);
	HeapTuple	tup;
	Oid			owner;
	Oid			save_userid;
	int			save_sec;
	int64		limit = rate_tenant_per_hour;
	Datum		arg = UUIDPGetDatum(user_id);

	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "lattice_rate_enforce_tenant: cache lookup failed for namespace %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "lattice_rate_enforce_tenant: SPI_connect failed");
	if (plan_query == NULL)
	{
		Oid			argtype = UUIDOID;
		SPIPlanPtr	p;

		p = SPI_prepare("SELECT p.rate_limit_per_hour FROM lattice.users u"
						" JOIN lattice.plans p ON p.id OPERATOR(pg_catalog.=) u.plan_id"
						" WHERE u.id OPERATOR(pg_catalog.=) $1",
						1, &argtype);
		if (p == NULL)
			elog(ERROR, "lattice_rate_enforce_tenant: SPI_prepare failed: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		plan_query = p;
	}
	if (SPI_execute_plan(plan_query, &arg, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice_rate_enforce_tenant: plan lookup failed");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			limit = DatumGetInt32(d);
	}
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
	return limit;
}

/* The plan limit, reused for lattice.rate_plan_cache_ms per backend. */
static int64
rate_plan_limit(const pg_uuid_t *user_id)
{
	TimestampTz now = GetCurrentTimestamp();
	PlanCacheEntry *e;
	bool		found;

	if (plan_cache == NULL || hash_get_num_entries(plan_cache) > 4096)
	{
		HASHCTL		ctl;

		if (plan_cache)
			hash_destroy(plan_cache);
		ctl.keysize = sizeof(pg_uuid_t);
		ctl.entrysize = sizeof(PlanCacheEntry);
		ctl.hcxt = TopMemoryContext;
		plan_cache = hash_create("lattice plan limits", 64, &ctl,
								 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	e = hash_search(plan_cache, user_id, HASH_FIND, NULL);
	if (e && now - e->fetched_at < (int64) rate_plan_cache_ms * 1000)
		return e->limit;
	{
		int64		limit = rate_plan_limit_read(user_id);

		e = hash_search(plan_cache, user_id, HASH_ENTER, &found);
		e->limit = limit;
		e->fetched_at = now;
		return limit;
	}
}

static int64
rate_effective_burst(int64 burst_guc, int64 limit)
{
	return burst_guc > 0 ? Min(burst_guc, limit) : limit;
}

void
lattice_rate_enforce_tenant(const pg_uuid_t *user_id, LatticeRateResult *out)
{
	RateKey		key;
	int64		limit;

	if (!rate_limits_enabled)
	{
		memset(out, 0, sizeof(*out));
		out->allowed = true;
		return;
	}
	rate_require_shmem("lattice_rate_enforce_tenant");
	limit = rate_plan_limit(user_id);
	memset(&key, 0, sizeof(key));
	key.kind = RATE_KIND_TENANT;
	memcpy(key.id, user_id->data, sizeof(key.id));
	rate_check_key(&key, "tenant", NULL, limit, RATE_HOUR_SECONDS,
				   rate_effective_burst(rate_tenant_burst, limit), out);
	rate_set_last(out);
	if (!out->allowed)
		rate_raise_refused(out, "tenant");
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
	return 0;					/* keep the compiler quiet */
}

/*
 * The key of a client address: IPv4 as is, IPv6 by its /64 (one host holds
 * a whole /64, so per-address limits on IPv6 would be trivial to dodge).
 */
static char *
rate_address_label(Jsonb *req)
{
	JsonbValue	k;
	JsonbValue *v;
	inet	   *ip;
	inet	   *net;
	int			bits;

	k.type = jbvString;
	k.val.string.val = "client_addr";
	k.val.string.len = strlen("client_addr");
	v = JB_ROOT_IS_OBJECT(req) ?
		findJsonbValueFromContainer(&req->root, JB_FOBJECT, &k) : NULL;
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
	char	   *route_class;
	char	   *label;
	char		scope[RATE_SCOPE_LEN];
	int64		limit;
	RateKey		key;
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
	rate_set_last(&r);
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
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false};

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
	char	   *scope;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.rate_check: arguments must not be null")));
	scope = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strncmp(scope, "addr_", 5) == 0 || strcmp(scope, "tenant") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.rate_check: scope \"%s\" is reserved", scope)));
	lattice_rate_check(scope, text_to_cstring(PG_GETARG_TEXT_PP(1)),
					   PG_GETARG_INT64(2), PG_GETARG_INT64(3), &r);
	PG_RETURN_DATUM(rate_result_datum(fcinfo, &r));
}

/* Only the tenant itself (or a superuser) may spend a tenant's quota. */
static void
rate_check_own_tenant(const char *caller, const pg_uuid_t *user_id)
{
	pg_uuid_t	current;

	if (superuser())
		return;
	if (!lattice_get_tenant(&current) || memcmp(&current, user_id, sizeof(current)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s: permission denied", caller),
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

/*
 * lattice.rate_usage() -> lattice.rate_usage: the current tenant's quota and
 * this hour's counts, without counting a request.  NULL without a tenant.
 */
PG_FUNCTION_INFO_V1(lattice_rate_usage);
Datum
lattice_rate_usage(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	RateKey		key;
	RateEntry  *e;
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {false};
	TimestampTz now = rate_now();
	int64		hour = GetCurrentTimestamp() / USECS_PER_HOUR;
	int64		limit;
	int64		burst;
	int64		remaining;
	int64		reset = 0;
	int64		allowed = 0;
	int64		refused = 0;

	rate_require_shmem("lattice.rate_usage");
	if (!lattice_get_tenant(&tenant))
		PG_RETURN_NULL();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.rate_usage: called in a wrong context");
	tupdesc = BlessTupleDesc(tupdesc);

	limit = rate_plan_limit(&tenant);
	burst = rate_effective_burst(rate_tenant_burst, limit);
	remaining = burst;
	memset(&key, 0, sizeof(key));
	key.kind = RATE_KIND_TENANT;
	memcpy(key.id, tenant.data, sizeof(key.id));

	LWLockAcquire(rate_shared->lock, LW_SHARED);
	e = hash_search(rate_hash, &key, HASH_FIND, NULL);
	if (e)
	{
		rate_entry_state(e, now, &remaining, &reset);
		if (e->hour == hour)
		{
			allowed = e->allowed;
			refused = e->refused;
		}
	}
	LWLockRelease(rate_shared->lock);

	values[0] = Int64GetDatum(limit);
	values[1] = Int64GetDatum(remaining);
	values[2] = Int64GetDatum(reset);
	values[3] = Int64GetDatum(RATE_HOUR_SECONDS);
	values[4] = Int64GetDatum(allowed);
	values[5] = Int64GetDatum(refused);
	values[6] = TimestampTzGetDatum(hour * USECS_PER_HOUR);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
