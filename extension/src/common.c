/*
 * common.c
 *		The clock, request fields, SPI helpers, the audit-row insert and
 *		the catalog look-ups every concern shares.
 *
 * A leaf: it calls nothing else of the extension (common.h).
 */
#include "common.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

/*
 * A superuser's pin of the clock (lattice.test_set_clock), so tests can step
 * through rotation windows; the end of the transaction that set it unpins it.
 */
static TimestampTz clock_pinned_at;
static bool clock_pinned = false;

static void
clock_xact_callback(XactEvent event, void *arg)
{
	if (lattice_xact_ended(event))
		clock_pinned = false;
}

bool
lattice_xact_ended(XactEvent event)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			return true;
		default:
			return false;
	}
}

void
lattice_common_init(void)
{
	RegisterXactCallback(clock_xact_callback, NULL);
}

TimestampTz
lattice_clock_now(void)
{
	return clock_pinned ? clock_pinned_at : GetCurrentTimestamp();
}

PG_FUNCTION_INFO_V1(lattice_clock_now_sql);
Datum
lattice_clock_now_sql(PG_FUNCTION_ARGS)
{
	PG_RETURN_TIMESTAMPTZ(lattice_clock_now());
}

/* lattice.test_set_clock(timestamptz): superuser only; NULL unpins */
PG_FUNCTION_INFO_V1(lattice_test_set_clock);
Datum
lattice_test_set_clock(PG_FUNCTION_ARGS)
{
	if (!superuser_arg(GetSessionUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.test_set_clock: permission denied"),
				 errdetail("Only superusers may pin the clock.")));
	clock_pinned = !PG_ARGISNULL(0);
	if (clock_pinned)
		clock_pinned_at = PG_GETARG_TIMESTAMPTZ(0);
	PG_RETURN_VOID();
}

/* A string member of the request object, palloc'd; NULL when absent */
char *
lattice_req_text(Jsonb *req, const char *key)
{
	JsonbValue v;

	if (req == NULL || !JB_ROOT_IS_OBJECT(req))
		return NULL;
	if (getKeyJsonValueFromContainer(&req->root, key, strlen(key), &v) == NULL || v.type != jbvString)
		return NULL;
	return pnstrdup(v.val.string.val, v.val.string.len);
}

bool
lattice_req_bool(Jsonb *req, const char *key)
{
	JsonbValue v;

	if (req == NULL || !JB_ROOT_IS_OBJECT(req))
		return false;
	if (getKeyJsonValueFromContainer(&req->root, key, strlen(key), &v) == NULL)
		return false;
	return v.type == jbvBool && v.val.boolean;
}

char *
lattice_uuid_text(const pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

void
lattice_spi_connect(const char *caller)
{
	int rc = SPI_connect();

	if (rc != SPI_OK_CONNECT)
		elog(ERROR, "%s: SPI_connect failed: %s", caller, SPI_result_code_string(rc));
}

/* Prepares sql once per backend and keeps the plan */
SPIPlanPtr
lattice_spi_prepare_kept(SPIPlanPtr *cache, const char *sql, int nargs, Oid *types)
{
	if (*cache == NULL)
	{
		SPIPlanPtr plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "lattice: SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}

void
lattice_audit_insert(const char *action, const pg_uuid_t *user_id, const char *target,
					 const char *details_json, Jsonb *req)
{
	static SPIPlanPtr plan = NULL;
	Oid types[5] = {TEXTOID, TEXTOID, JSONBOID, JSONBOID, UUIDOID};
	Datum values[5];
	char nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(action);
	if (target)
		values[1] = CStringGetTextDatum(target);
	else
		nulls[1] = 'n';
	if (details_json)
		values[2] = DirectFunctionCall1(jsonb_in, CStringGetDatum(details_json));
	else
		nulls[2] = 'n';
	if (req)
		values[3] = JsonbPGetDatum(req);
	else
		nulls[3] = 'n';
	if (user_id)
		values[4] = UUIDPGetDatum(user_id);
	else
		nulls[4] = 'n';

	lattice_spi_connect("lattice.audit");
	lattice_spi_prepare_kept(&plan, "SELECT lattice.audit($1, $2, $3, $4, $5)", 5, types);
	if (SPI_execute_plan(plan, values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: audit insert failed");
	SPI_finish();
}

bool
lattice_caller_is_privileged(void)
{
	Oid session_user = GetSessionUserId();
	Oid admin = get_role_oid("lattice_admin", true);

	return superuser_arg(session_user) || (OidIsValid(admin) && has_privs_of_role(session_user, admin));
}

bool
lattice_xact_read_only(void)
{
	return XactReadOnly || RecoveryInProgress();
}

Oid
lattice_schema_owner(void)
{
	Oid nsp = get_namespace_oid("lattice", false);
	HeapTuple tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	Oid owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "lattice: cache lookup failed for namespace %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);
	return owner;
}
