/*
 * tenant.c
 *		The tenant of the current transaction, behind row-level security.
 *
 * Every tenant table's policies compare user_id with lattice.current_user_id().
 * The tenant is part of the authenticated context (tenant.h), a backend-local
 * value that only C code of this extension sets: the authentication
 * functions, the audited admin switch and, for tests, a superuser-only
 * setter.  It is not a GUC, so SET, set_config, RESET and SET ROLE cannot
 * reach it; it is cleared at the end of every transaction and when the
 * subtransaction that set it aborts, so a pooled connection never carries
 * one request's tenant into the next.
 */
#include "common.h"
#include "tenant.h"

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"

static LatticeAuthContext ctx;
static bool tenant_set = false;
static int tenant_nest_level = 0;	   /* subtransaction level that set it */
static bool tenant_from_token = false; /* a worker's: see tenant_token.c */

static void
tenant_xact_callback(XactEvent event, void *arg)
{
	if (lattice_xact_ended(event))
		lattice_clear_tenant();
}

static void
tenant_subxact_callback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid,
						void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && tenant_set &&
		GetCurrentTransactionNestLevel() <= tenant_nest_level)
		lattice_clear_tenant();
}

void
lattice_tenant_init(void)
{
	RegisterXactCallback(tenant_xact_callback, NULL);
	RegisterSubXactCallback(tenant_subxact_callback, NULL);
}

/*
 * Sets the tenant for the rest of the transaction.  Only callable from C:
 * callers must have verified a credential (or be the audited admin switch).
 * A new tenant starts a new context: nothing proved for another one stays.
 */
static void
tenant_assign(const pg_uuid_t *user_id, bool from_token)
{
	if (!IsTransactionState())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
				 errmsg("lattice: a tenant can only be set inside a transaction")));
	if (!tenant_set || memcmp(&ctx.tenant, user_id, sizeof(pg_uuid_t)) != 0)
	{
		memset(&ctx, 0, sizeof(ctx));
		ctx.tenant = *user_id;
	}
	tenant_set = true;
	tenant_from_token = from_token;
	tenant_nest_level = GetCurrentTransactionNestLevel();
}

/*
 * Also hands the tenant to the workers of a Citus cluster, for this
 * transaction (nothing on a single node).
 */
void
lattice_set_authenticated(const pg_uuid_t *user_id, LatticeAuthMethod method,
						  const pg_uuid_t *credential, int scopes)
{
	tenant_assign(user_id, false);
	lattice_tenant_token_issue(user_id);
	ctx.method = method;
	ctx.scopes = scopes;
	ctx.has_credential = credential != NULL;
	if (credential)
		ctx.credential = *credential;
}

void
lattice_set_tenant(const pg_uuid_t *user_id)
{
	lattice_set_authenticated(user_id, LATTICE_AUTH_NONE, NULL, 0);
}

bool
lattice_get_tenant(pg_uuid_t *user_id)
{
	if (tenant_set && user_id)
		memcpy(user_id, &ctx.tenant, sizeof(pg_uuid_t));
	return tenant_set;
}

const LatticeAuthContext *
lattice_auth_context(void)
{
	return tenant_set ? &ctx : NULL;
}

LatticeAuthMethod
lattice_auth_method(void)
{
	return tenant_set ? ctx.method : LATTICE_AUTH_NONE;
}

void
lattice_auth_second_factor_passed(void)
{
	Assert(tenant_set);
	ctx.second_factor = true;
}

void
lattice_auth_deleting_proved(void)
{
	Assert(tenant_set);
	ctx.deleting = true;
}

void
lattice_clear_tenant(void)
{
	memset(&ctx, 0, sizeof(ctx));
	tenant_set = false;
	tenant_from_token = false;
	tenant_nest_level = 0;
	lattice_tenant_token_forget();
}

/*
 * lattice.current_user_id() -> uuid, NULL without an authenticated tenant.
 * NULL makes every policy comparison false: no rows visible, none writable.
 * On a Citus worker the tenant comes from the coordinator's token, verified
 * each time the token changes (tenant_token.c).
 */
PG_FUNCTION_INFO_V1(lattice_current_user_id);
Datum
lattice_current_user_id(PG_FUNCTION_ARGS)
{
	pg_uuid_t *result;
	pg_uuid_t from_token;

	if (!tenant_set || tenant_from_token)
	{
		if (lattice_tenant_token_verify(&from_token))
			tenant_assign(&from_token, true);
		else if (tenant_from_token)
			lattice_clear_tenant();
	}
	if (!tenant_set)
		PG_RETURN_NULL();
	result = palloc(sizeof(pg_uuid_t));
	memcpy(result, &ctx.tenant, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(result);
}

/*
 * lattice.test_set_tenant(uuid): a test-only switch for the pgTAP suites.
 * Superuser only, checked here and not just by grants, so a stray GRANT
 * cannot hand it to the API role.
 */
PG_FUNCTION_INFO_V1(lattice_test_set_tenant);
Datum
lattice_test_set_tenant(PG_FUNCTION_ARGS)
{
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.test_set_tenant: permission denied"),
				 errdetail("Only superusers may set the tenant directly.")));
	if (PG_ARGISNULL(0))
	{
		lattice_clear_tenant();
		lattice_tenant_token_issue(NULL); /* and none on the workers */
	}
	else
		lattice_set_tenant(PG_GETARG_UUID_P(0));
	PG_RETURN_VOID();
}

/*
 * lattice.act_as_tenant(uuid, reason text): lets a member of lattice_admin
 * act as one tenant for the rest of the transaction.  The SQL wrapper writes
 * the audit row; this C part checks the role and switches.
 */
PG_FUNCTION_INFO_V1(lattice_act_as_tenant_c);
Datum
lattice_act_as_tenant_c(PG_FUNCTION_ARGS)
{
	Oid admin = get_role_oid("lattice_admin", true);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.act_as_tenant: user id must not be null")));
	if (!OidIsValid(admin) || !has_privs_of_role(GetSessionUserId(), admin))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.act_as_tenant: permission denied"),
				 errdetail("Only members of lattice_admin may act as a tenant.")));
	lattice_set_tenant(PG_GETARG_UUID_P(0));
	PG_RETURN_VOID();
}

/*
 * The C functions are SECURITY DEFINER (the extension owner) so that they
 * can read secrets and look credentials up across tenants.  Tenant tables
 * they write -- and read, once the tenant is known -- as lattice_app, the
 * role the API functions run as, so RLS applies to them as to those.  On
 * Citus this is also what keeps a request's work on one connection per
 * worker: a shard written by one role cannot be read by another in the
 * same transaction.  With no tenant set, or another one, the caller's role
 * stays (DBA functions, background workers).
 */
void
lattice_as_tenant_role(const pg_uuid_t *user_id, LatticeRoleSwitch *sw)
{
	static Oid app_role = InvalidOid;

	GetUserIdAndSecContext(&sw->userid, &sw->sec_context);
	sw->switched = false;
	if (user_id == NULL || !tenant_set || memcmp(user_id, &ctx.tenant, sizeof(pg_uuid_t)) != 0)
		return;
	if (!OidIsValid(app_role))
		app_role = get_role_oid("lattice_app", false);
	SetUserIdAndSecContext(app_role, sw->sec_context | SECURITY_LOCAL_USERID_CHANGE);
	sw->switched = true;
}

void
lattice_restore_role(const LatticeRoleSwitch *sw)
{
	if (sw->switched)
		SetUserIdAndSecContext(sw->userid, sw->sec_context);
}
