/*
 * auth_mfa.c
 *		Whether an account has two-factor authentication on, whether this
 *		transaction verified its code, and the gate a session passes.
 *
 * Codes are verified in account_reauth.c (which marks the authenticated
 * context, tenant.h); a session opens only through lattice_mfa_gate().
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"

/* Whether the account has two-factor authentication on */
bool
lattice_mfa_enabled(const pg_uuid_t *user_id)
{
	static SPIPlanPtr plan = NULL;
	bool enabled;
	LatticeRoleSwitch sw;

	lattice_as_tenant_role(user_id, &sw);
	lattice_spi_connect("lattice.session_create");
	lattice_spi_prepare_kept(
		&plan, "SELECT 1 FROM lattice.account_mfa WHERE user_id = $1 AND enabled_at IS NOT NULL", 1,
		(Oid[]) {UUIDOID});
	if (SPI_execute_plan(plan, (Datum[]) {UUIDPGetDatum(user_id)}, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading the second factor failed");
	enabled = SPI_processed == 1;
	SPI_finish();
	lattice_restore_role(&sw);
	return enabled;
}

/* Whether this transaction verified a code for user_id, its tenant */
bool
lattice_mfa_passed(const pg_uuid_t *user_id)
{
	const LatticeAuthContext *ctx = lattice_auth_context();

	return ctx != NULL && ctx->second_factor && memcmp(&ctx->tenant, user_id, sizeof(pg_uuid_t)) == 0;
}

/*
 * Raises 401 mfa_required when the account has two-factor authentication
 * on and this transaction has not verified a code for it.
 */
void
lattice_mfa_gate(const pg_uuid_t *user_id)
{
	if (!lattice_mfa_passed(user_id) && lattice_mfa_enabled(user_id))
		lattice_raise_http(401, "mfa_required", "this account needs its two-factor code", NULL, NULL);
}
