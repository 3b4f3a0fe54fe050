/*
 * account.c
 *		Accounts: sign-up, login, the DBA's create_user, and the e-mail
 *		addresses and names they take.
 *
 * A login with an unknown email verifies against the dummy hash
 * (auth_password.c), so both failures cost the same and answer the same.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include <sodium.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define ACCOUNT_NAME_MAX_CHARS 200 /* a person's display name */
#define LOGIN_EMAIL_LIMIT	   10  /* attempts per account per window */
#define LOGIN_ADDR_LIMIT	   100 /* attempts per client address per window */
#define LOGIN_WINDOW		   900 /* seconds */

/*
 * Validates and inserts one account.  The trial starts now, as long as the
 * default plan's trial_days.  For a sign-up (becomes_tenant) the new account
 * is the transaction's tenant from here on and its row is written as the
 * tenant's role (tenant.c); a DBA's create_user writes as the owner.
 */
static void
user_insert(FunctionCallInfo fcinfo, pg_uuid_t *user_id, char **email_out, char **name_out,
			bool becomes_tenant)
{
	LatticeRoleSwitch sw;
	char *email;
	char *name;
	char *hash;
	text *pw;
	Datum values[7];
	bool isnull;

	if (PG_ARGISNULL(0) || (email = lattice_normalise_email(PG_GETARG_TEXT_PP(0))) == NULL)
		lattice_raise_http(400, "invalid_email", "email is not a valid address", NULL, NULL);
	if (PG_ARGISNULL(1))
		lattice_password_check_length("", 0); /* raises invalid_password */
	name = lattice_clean_label(PG_ARGISNULL(2) ? cstring_to_text("") : PG_GETARG_TEXT_PP(2),
							   ACCOUNT_NAME_MAX_CHARS, "name");
	pw = PG_GETARG_TEXT_PP(1);
	lattice_password_check_length(VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw));

	lattice_spi_connect("lattice.signup_user");
	values[0] = CStringGetTextDatum(email);
	if (SPI_execute_with_args("SELECT 1 FROM lattice.account_emails WHERE email = $1", 1,
							  (Oid[]) {TEXTOID}, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: account lookup failed");
	if (SPI_processed > 0)
		lattice_raise_http(409, "email_taken", "an account with this email exists", NULL, NULL);

	hash = lattice_password_hash_cstr(VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw));
	values[1] = CStringGetTextDatum(hash);
	values[2] = CStringGetTextDatum(name);
	values[3] = TimestampTzGetDatum(lattice_clock_now());
	if (SPI_execute_with_args("SELECT pg_catalog.gen_random_uuid(),"
							  "       $1 + pg_catalog.make_interval(days => p.trial_days)"
							  "  FROM lattice.plans p WHERE p.id = 'standard'",
							  1, (Oid[]) {TIMESTAMPTZOID}, values + 3, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "lattice: the standard plan is missing");
	memcpy(user_id,
		   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
		   sizeof(pg_uuid_t));
	values[4] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	values[5] = UUIDPGetDatum(user_id);

	/* the address's row first: its primary key settles a concurrent sign-up */
	if (SPI_execute_with_args("INSERT INTO lattice.account_emails (email, user_id) VALUES ($1, $2)"
							  " ON CONFLICT (email) DO NOTHING",
							  2, (Oid[]) {TEXTOID, UUIDOID}, (Datum[]) {values[0], values[5]}, NULL,
							  false, 0) != SPI_OK_INSERT)
		elog(ERROR, "lattice: account insert failed");
	if (SPI_processed != 1)
		lattice_raise_http(409, "email_taken", "an account with this email exists", NULL, NULL);
	if (becomes_tenant)
		lattice_set_authenticated(user_id, LATTICE_AUTH_PASSWORD, NULL, 0);
	lattice_as_tenant_role(user_id, &sw);
	/* an address an operator gives counts as verified; a sign-up's is not yet */
	values[6] = BoolGetDatum(!becomes_tenant);
	if (SPI_execute_with_args("INSERT INTO lattice.users (id, email, password_hash, name, trial_ends_at,"
							  " created_at, updated_at, email_verified_at)"
							  " VALUES ($6, $1, $2, $3, $5, $4, $4, CASE WHEN $7 THEN $4 END)",
							  7,
							  (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
									   UUIDOID, BOOLOID},
							  values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "lattice: account insert failed");
	lattice_restore_role(&sw);
	/* the welcome e-mail, through the outbox like every other */
	if (SPI_execute_with_args("SELECT lattice.billing_welcome($1, $2, $3, $4)", 4,
							  (Oid[]) {UUIDOID, TEXTOID, TEXTOID, TIMESTAMPTZOID},
							  (Datum[]) {values[5], values[0], values[2], values[4]}, NULL, false,
							  0) != SPI_OK_SELECT)
		elog(ERROR, "lattice: welcome e-mail failed");
	SPI_finish();
	*email_out = email;
	*name_out = name;
}

/*
 * lattice.create_user(email, password, name) -> uuid: for DBAs, tests and the
 * demo seed (superusers and lattice_admin only), audited.
 */
PG_FUNCTION_INFO_V1(lattice_create_user);
Datum
lattice_create_user(PG_FUNCTION_ARGS)
{
	pg_uuid_t *id = palloc(sizeof(pg_uuid_t));
	char *email;
	char *name;

	if (!lattice_caller_is_privileged())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.create_user: permission denied"),
				 errdetail("Only superusers and members of lattice_admin may create accounts.")));
	user_insert(fcinfo, id, &email, &name, false);
	lattice_audit("user.created", id, lattice_uuid_text(id), NULL, NULL);
	PG_RETURN_UUID_P(id);
}

/*
 * lattice.signup_user(email, password, name, req) -> uuid: the sign-up
 * route.  The new account becomes the transaction's tenant (it has just been
 * created by this caller), so the route can open its session.
 */
PG_FUNCTION_INFO_V1(lattice_signup_user);
Datum
lattice_signup_user(PG_FUNCTION_ARGS)
{
	pg_uuid_t *id = palloc(sizeof(pg_uuid_t));
	Jsonb *req = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	char *email;
	char *name;

	/* the per-address limit of sign-ups is the route's (rate_enforce_address) */
	user_insert(fcinfo, id, &email, &name, true);
	lattice_audit("user.signup", id, lattice_uuid_text(id), NULL, req);
	PG_RETURN_UUID_P(id);
}

/*
 * lattice.login(email, password, req) -> uuid, NULL when refused.
 *
 * Limits attempts per account and per address first (the counters are in
 * shared memory, so they hold across connections), then verifies.  Refusals
 * are audited and answered NULL (not raised) so the audit row commits.  On
 * success the account becomes the tenant and an outdated hash is redone.
 */
PG_FUNCTION_INFO_V1(lattice_login);
Datum
lattice_login(PG_FUNCTION_ARGS)
{
	Jsonb *req = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	char *email = PG_ARGISNULL(0) ? NULL : lattice_normalise_email(PG_GETARG_TEXT_PP(0));
	text *pw = PG_ARGISNULL(1) ? cstring_to_text("") : PG_GETARG_TEXT_PP(1);
	const char *pw_s = VARDATA_ANY(pw);
	size_t pw_len = VARSIZE_ANY_EXHDR(pw);
	char *hash = NULL;
	pg_uuid_t *id = NULL;
	bool ok;
	Datum values[2];

	lattice_enforce_attempts("login_addr", lattice_req_text(req, "client_addr"), LOGIN_ADDR_LIMIT,
							 LOGIN_WINDOW);
	lattice_enforce_attempts("login_email", email, LOGIN_EMAIL_LIMIT, LOGIN_WINDOW);

	if (email != NULL)
	{
		lattice_spi_connect("lattice.login");
		values[0] = CStringGetTextDatum(email);
		if (SPI_execute_with_args("SELECT user_id FROM lattice.account_emails WHERE email = $1", 1,
								  (Oid[]) {TEXTOID}, values, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "lattice.login: account lookup failed");
		if (SPI_processed == 1)
		{
			bool isnull;

			values[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			if (SPI_execute_with_args("SELECT id, password_hash FROM lattice.users WHERE id = $1", 1,
									  (Oid[]) {UUIDOID}, values + 1, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "lattice.login: account lookup failed");
		}
		if (SPI_processed == 1)
		{
			bool isnull;
			Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			id = SPI_palloc(sizeof(pg_uuid_t));
			memcpy(id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
			hash = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
			if (hash != NULL) /* outlive SPI_finish */
				hash = strcpy(SPI_palloc(strlen(hash) + 1), hash);
		}
		SPI_finish();
	}

	/* the same work whatever was wrong */
	ok = lattice_password_verify_cstr(hash, pw_s, pw_len) && lattice_password_length_ok(pw_s, pw_len);
	if (!ok)
	{
		lattice_audit("login.failure", id, email,
					  id ? "{\"reason\": \"wrong_password\"}" : "{\"reason\": \"unknown_account\"}",
					  req);
		PG_RETURN_NULL();
	}

	lattice_set_authenticated(id, LATTICE_AUTH_PASSWORD, NULL, 0);
	if (crypto_pwhash_str_needs_rehash(hash, LATTICE_PWHASH_OPSLIMIT, LATTICE_PWHASH_MEMLIMIT) != 0)
	{
		char *fresh = lattice_password_hash_cstr(pw_s, pw_len);
		LatticeRoleSwitch sw;

		lattice_as_tenant_role(id, &sw);
		lattice_spi_connect("lattice.login");
		values[0] = CStringGetTextDatum(fresh);
		values[1] = UUIDPGetDatum(id);
		if (SPI_execute_with_args(
				"UPDATE lattice.users SET password_hash = $1, updated_at = pg_catalog.now()"
				" WHERE id = $2",
				2, (Oid[]) {TEXTOID, UUIDOID}, values, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "lattice.login: rehash failed");
		SPI_finish();
		lattice_restore_role(&sw);
	}
	lattice_audit("login.success", id, email, NULL, req);
	PG_RETURN_UUID_P(id);
}
