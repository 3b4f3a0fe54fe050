/*
 * account_reauth.c
 *		Proving again that it is the account holder: the current password
 *		before a sensitive change, the second factor (a TOTP code or a
 *		recovery code, account_totp.c) at login and before turning it off or
 *		deleting the account; and setting a new password.
 *
 * Each check is limited per account (shared-memory counters, so they hold
 * across connections) and every failure is audited.  A passed second factor
 * is remembered for the rest of the transaction only; auth_session.c asks
 * lattice_mfa_gate() (auth_mfa.c) before it opens a session, so no route can open
 * one for an account with two-factor authentication without the code.
 * The account's rows are read and written as its role (tenant.c), as the
 * rest of the request does: on Citus a transaction reaches a shard as one
 * role.  The TOTP secret is opened by account_totp.c with the pepper.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define REAUTH_LIMIT  10  /* password checks per account per window */
#define MFA_LIMIT	  10  /* second-factor checks per account per window */
#define REAUTH_WINDOW 900 /* seconds */

/* The tenant, proved by a session or a password in this transaction (or a link) */
static void
require_holder(pg_uuid_t *tenant, bool link_ok, const char *fn)
{
	LatticeAuthMethod m = lattice_auth_method();

	if (!lattice_get_tenant(tenant) ||
		!(m == LATTICE_AUTH_SESSION || m == LATTICE_AUTH_PASSWORD ||
		  (link_ok && m == LATTICE_AUTH_LINK)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("%s: permission denied", fn),
				 errdetail("It acts for an account signed in with a session or a password.")));
}

static void
limit_attempts(const char *scope, const pg_uuid_t *tenant, int64 limit)
{
	lattice_enforce_attempts(scope, lattice_uuid_text(tenant), limit, REAUTH_WINDOW);
}

/* The account's current password; a wrong one is audited */
static bool
password_matches(const pg_uuid_t *tenant, text *pw, Jsonb *req)
{
	static SPIPlanPtr plan = NULL;
	char *hash = NULL;
	bool ok;
	LatticeRoleSwitch sw;

	limit_attempts("reauth_account", tenant, REAUTH_LIMIT);
	lattice_as_tenant_role(tenant, &sw);
	lattice_spi_connect("lattice");
	lattice_spi_prepare_kept(&plan, "SELECT password_hash FROM lattice.users WHERE id = $1", 1,
							 (Oid[]) {UUIDOID});
	if (SPI_execute_plan(plan, (Datum[]) {UUIDPGetDatum(tenant)}, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading the password failed");
	if (SPI_processed == 1)
	{
		hash = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		if (hash) /* outlive SPI_finish */
			hash = strcpy(SPI_palloc(strlen(hash) + 1), hash);
	}
	SPI_finish();
	lattice_restore_role(&sw);

	ok = lattice_password_verify_cstr(hash, VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw));
	if (!ok)
		lattice_audit("reauth.failure", tenant, NULL, "{\"reason\": \"wrong_password\"}", req);
	return ok;
}

/*
 * lattice.account_password_check(password text, req jsonb) -> boolean: the
 * current password of the signed-in account; false (audited) when wrong.
 */
PG_FUNCTION_INFO_V1(lattice_account_password_check);
Datum
lattice_account_password_check(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;

	require_holder(&tenant, false, "lattice.account_password_check");
	PG_RETURN_BOOL(password_matches(&tenant,
									PG_ARGISNULL(0) ? cstring_to_text("") : PG_GETARG_TEXT_PP(0),
									PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1)));
}

/*
 * lattice.account_password_set(password text) -> void: a new password
 * (10 to 1024 characters, else 400 invalid_password) for the signed-in
 * account or the one a reset link named.
 */
PG_FUNCTION_INFO_V1(lattice_account_password_set);
Datum
lattice_account_password_set(PG_FUNCTION_ARGS)
{
	text *pw;
	pg_uuid_t tenant;
	char *hash;
	LatticeRoleSwitch sw;

	require_holder(&tenant, true, "lattice.account_password_set");
	pw = PG_ARGISNULL(0) ? cstring_to_text("") : PG_GETARG_TEXT_PP(0);
	lattice_password_check_length(VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw));
	hash = lattice_password_hash_cstr(VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw));

	lattice_as_tenant_role(&tenant, &sw);
	lattice_spi_connect("lattice.account_password_set");
	if (SPI_execute_with_args(
			"UPDATE lattice.users SET password_hash = $1, updated_at = $2 WHERE id = $3", 3,
			(Oid[]) {TEXTOID, TIMESTAMPTZOID, UUIDOID},
			(Datum[]) {CStringGetTextDatum(hash), TimestampTzGetDatum(lattice_clock_now()),
					   UUIDPGetDatum(&tenant)},
			NULL, false, 0) != SPI_OK_UPDATE ||
		SPI_processed != 1)
		elog(ERROR, "lattice.account_password_set: update failed");
	lattice_restore_role(&sw);
	/* a new password ends every pending reset link (the owner's table) */
	if (SPI_execute_with_args(
			"UPDATE lattice.reset_links SET used_at = $2 WHERE account_id = $1 AND used_at IS NULL", 2,
			(Oid[]) {UUIDOID, TIMESTAMPTZOID},
			(Datum[]) {UUIDPGetDatum(&tenant), TimestampTzGetDatum(lattice_clock_now())}, NULL, false,
			0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice.account_password_set: ending the reset links failed");
	SPI_finish();
	PG_RETURN_VOID();
}

/* A six-digit TOTP code (spaces around allowed); anything else may be a recovery code */
static bool
looks_like_totp(const char *code)
{
	int digits = 0;

	for (const char *c = code; *c; c++)
	{
		if (*c >= '0' && *c <= '9')
			digits++;
		else if (*c != ' ')
			return false;
	}
	return digits == 6;
}

/*
 * The TOTP code against the stored secret; true once its step is recorded.
 * The row is read first and checked here: on Citus the row is a worker's,
 * and only the coordinator holds the pepper that opens the secret.
 */
static bool
mfa_totp(const pg_uuid_t *tenant, const char *code)
{
	static SPIPlanPtr read_plan = NULL;
	static SPIPlanPtr step_plan = NULL;
	bool isnull;
	bool last_null;
	Datum sealed;
	Datum last;
	Datum step;

	lattice_spi_prepare_kept(&read_plan,
							 "SELECT sealed, last_step FROM lattice.account_mfa WHERE user_id = $1", 1,
							 (Oid[]) {UUIDOID});
	if (SPI_execute_plan(read_plan, (Datum[]) {UUIDPGetDatum(tenant)}, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice.account_mfa_verify: reading the secret failed");
	if (SPI_processed != 1)
		return false;
	sealed = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	last = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &last_null);
	if (SPI_execute_with_args("SELECT lattice.totp_check($1, $2, $3, $4)", 4,
							  (Oid[]) {BYTEAOID, TEXTOID, INT8OID, TIMESTAMPTZOID},
							  (Datum[]) {sealed, CStringGetTextDatum(code), last,
										 TimestampTzGetDatum(lattice_clock_now())},
							  last_null ? "  n " : "    ", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice.account_mfa_verify: check failed");
	step = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;

	/* the step is used up: the same code cannot be replayed in its window */
	lattice_spi_prepare_kept(&step_plan,
							 "UPDATE lattice.account_mfa SET last_step = $2"
							 " WHERE user_id = $1 AND (last_step IS NULL OR last_step < $2)",
							 2, (Oid[]) {UUIDOID, INT8OID});
	if (SPI_execute_plan(step_plan, (Datum[]) {UUIDPGetDatum(tenant), step}, NULL, false, 0) !=
		SPI_OK_UPDATE)
		elog(ERROR, "lattice.account_mfa_verify: recording the step failed");
	return SPI_processed == 1;
}

/* A recovery code against the unused ones; true once it is used up */
static bool
mfa_recovery_code(const pg_uuid_t *tenant, const char *code)
{
	static SPIPlanPtr match_plan = NULL;
	static SPIPlanPtr use_plan = NULL;
	bool isnull;
	Datum id;

	lattice_spi_prepare_kept(
		&match_plan,
		"SELECT (pg_catalog.array_agg(c.id ORDER BY c.id))"
		"         [lattice.recovery_code_match($2, pg_catalog.array_agg(c.code_hash ORDER BY c.id))]"
		"  FROM lattice.account_recovery_codes c"
		" WHERE c.user_id = $1 AND c.used_at IS NULL",
		2, (Oid[]) {UUIDOID, TEXTOID});
	if (SPI_execute_plan(match_plan, (Datum[]) {UUIDPGetDatum(tenant), CStringGetTextDatum(code)}, NULL,
						 true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice.account_mfa_verify: recovery code check failed");
	if (SPI_processed != 1)
		return false;
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	id = SPI_datumTransfer(id, false, UUID_LEN);

	lattice_spi_prepare_kept(&use_plan,
							 "UPDATE lattice.account_recovery_codes SET used_at = $3"
							 " WHERE user_id = $1 AND id = $2 AND used_at IS NULL",
							 3, (Oid[]) {UUIDOID, UUIDOID, TIMESTAMPTZOID});
	if (SPI_execute_plan(use_plan,
						 (Datum[]) {UUIDPGetDatum(tenant), id, TimestampTzGetDatum(lattice_clock_now())},
						 NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice.account_mfa_verify: using the recovery code failed");
	return SPI_processed == 1;
}

/* A second-factor code of the account; true once used up, false (audited) else */
static bool
mfa_check(const pg_uuid_t *tenant, const char *code, Jsonb *req)
{
	bool totp = looks_like_totp(code);
	bool ok;
	LatticeRoleSwitch sw;

	limit_attempts("mfa_account", tenant, MFA_LIMIT);
	if (strlen(code) > 64)
		code = "";
	if (totp) /* as apps show it: "123 456" */
	{
		char *digits = palloc0(strlen(code) + 1);
		char *d = digits;

		for (const char *c = code; *c; c++)
			if (*c != ' ')
				*d++ = *c;
		code = digits;
	}
	lattice_as_tenant_role(tenant, &sw);
	lattice_spi_connect("lattice");
	ok = totp ? mfa_totp(tenant, code) : mfa_recovery_code(tenant, code);
	SPI_finish();
	lattice_restore_role(&sw);

	if (!ok)
	{
		lattice_audit("mfa.failure", tenant, NULL,
					  totp ? "{\"method\": \"totp\"}" : "{\"method\": \"recovery_code\"}", req);
		return false;
	}
	lattice_auth_second_factor_passed();
	lattice_audit(totp ? "mfa.verified" : "mfa.recovery_code_used", tenant, NULL, NULL, req);
	return true;
}

/*
 * lattice.account_mfa_verify(code text, req jsonb) -> boolean: a TOTP code
 * of the account's secret (enabled or being enrolled), each step once, or
 * one of its unused recovery codes, used up.  False (audited) otherwise.
 */
PG_FUNCTION_INFO_V1(lattice_account_mfa_verify);
Datum
lattice_account_mfa_verify(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;

	require_holder(&tenant, false, "lattice.account_mfa_verify");
	PG_RETURN_BOOL(mfa_check(&tenant, PG_ARGISNULL(0) ? "" : text_to_cstring(PG_GETARG_TEXT_PP(0)),
							 PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1)));
}

/*
 * lattice.account_delete_begin(password text, code text, req jsonb) -> text
 *
 * The proof an account deletion needs: a dashboard session, the current
 * password and, when two-factor authentication is on, a code.  Returns NULL
 * when proved (lattice.account_deleting() is then true for the rest of the
 * transaction), else why not: wrong_password, mfa_required or invalid_code
 * (failures audited).
 */
PG_FUNCTION_INFO_V1(lattice_account_delete_begin);
Datum
lattice_account_delete_begin(PG_FUNCTION_ARGS)
{
	Jsonb *req = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	pg_uuid_t tenant;

	require_holder(&tenant, false, "lattice.account_delete_begin");
	if (lattice_auth_method() != LATTICE_AUTH_SESSION)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.account_delete_begin: permission denied"),
				 errdetail("An account is deleted from a dashboard session.")));
	if (!password_matches(&tenant, PG_ARGISNULL(0) ? cstring_to_text("") : PG_GETARG_TEXT_PP(0), req))
		PG_RETURN_TEXT_P(cstring_to_text("wrong_password"));
	if (lattice_mfa_enabled(&tenant) && !lattice_mfa_passed(&tenant))
	{
		if (PG_ARGISNULL(1))
			PG_RETURN_TEXT_P(cstring_to_text("mfa_required"));
		if (!mfa_check(&tenant, text_to_cstring(PG_GETARG_TEXT_PP(1)), req))
			PG_RETURN_TEXT_P(cstring_to_text("invalid_code"));
	}
	lattice_auth_deleting_proved();
	lattice_tenant_token_issue_as(&tenant, true); /* for the workers, on Citus */
	PG_RETURN_NULL();
}

/*
 * lattice.account_deleting() -> boolean: this transaction proved, for its
 * tenant, what deleting the account needs (on a Citus worker: the
 * coordinator's tenant token vouches for it).  The one case in which the
 * API role may delete the account's audit trail (90_security.sql).
 */
PG_FUNCTION_INFO_V1(lattice_account_deleting);
Datum
lattice_account_deleting(PG_FUNCTION_ARGS)
{
	const LatticeAuthContext *ctx = lattice_auth_context();

	if (ctx != NULL && ctx->deleting)
		PG_RETURN_BOOL(true);
	/* a Citus worker: the coordinator's signed token says so */
	PG_RETURN_BOOL(lattice_tenant_token_deleting());
}
