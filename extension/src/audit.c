/*
 * audit.c
 *		Audit rows of the identity functions: written now, or deferred when
 *		the transaction is read-only.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

/*
 * One audit row through lattice.audit(): as the tenant's role when user_id is
 * the transaction's tenant, else as the owner, so it works before any tenant
 * is known (failed logins).  A read-only transaction cannot write: the row
 * then waits in the deferred queue (auth_deferred.c) for the next writing
 * transaction.
 */
void
lattice_audit(const char *action, const pg_uuid_t *user_id, const char *target, const char *details_json,
			  Jsonb *req)
{
	LatticeRoleSwitch sw;

	if (lattice_xact_read_only())
	{
		lattice_defer_audit(action, user_id, target, req);
		return;
	}
	lattice_as_tenant_role(user_id, &sw);
	lattice_audit_insert(action, user_id, target, details_json, req);
	lattice_restore_role(&sw);
}

/*
 * lattice.audit_event(action text, target text, details jsonb, req jsonb)
 * -> void: an audit row of the current tenant that a read-only transaction
 * (a GET) may also leave: it then waits in the deferred queue.
 */
PG_FUNCTION_INFO_V1(lattice_audit_event);
Datum
lattice_audit_event(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;

	if (!lattice_get_tenant(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.audit_event: no authenticated tenant")));
	lattice_audit(text_to_cstring(PG_GETARG_TEXT_PP(0)), &tenant,
				  PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1)),
				  PG_ARGISNULL(2) ? NULL : JsonbToCString(NULL, &PG_GETARG_JSONB_P(2)->root, 0),
				  PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3));
	PG_RETURN_VOID();
}
