/*
 * password.c
 *		Accounts: Argon2id passwords, sign-up, login, and the DBA's create_user.
 *
 * Parameters: Argon2id through libsodium's crypto_pwhash_str with 19 MiB and
 * t=2 (p=1), OWASP's minimum recommendation.  Chosen because a login runs
 * inside a PostgreSQL backend on a small shared machine: ~18 ms and 19 MiB
 * per concurrent login keeps a burst of logins from starving the database,
 * while still costing an offline attacker 19 MiB per guess.  Hashes made with
 * other parameters are redone at the next successful login.
 *
 * A login with an unknown email verifies against a fixed dummy hash with the
 * same parameters, so both failures cost the same and answer the same.
 */
#include "lattice.h"
#include "identity.h"

#include <sodium.h>

#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/timestamp.h"

/* made once with the parameters above from a random, forgotten password */
static const char dummy_hash[] =
"$argon2id$v=19$m=19456,t=2,p=1$Xsk90pVw62NV97OxkO2BSw$I3eEmrHtYOxJ62r3zLkC2k28241tcZkRHOXWtqM5d+0";

#define LOGIN_EMAIL_LIMIT	10		/* attempts per account per window */
#define LOGIN_ADDR_LIMIT	100		/* attempts per client address per window */
#define LOGIN_WINDOW		900		/* seconds */

/* Raises 400 invalid_password unless 10-1024 characters */
void
lattice_password_check_length(const char *password, size_t len)
{
	int			chars;

	if (len > LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN)
		chars = LATTICE_PASSWORD_MAX_CHARS + 1;
	else
		chars = pg_mbstrlen_with_len(password, len);
	if (chars < LATTICE_PASSWORD_MIN_CHARS || chars > LATTICE_PASSWORD_MAX_CHARS)
		lattice_raise_http(400, "invalid_password",
						   "password must be 10 to 1024 characters", NULL, NULL);
}

static bool
password_length_ok(const char *password, size_t len)
{
	int			chars;

	if (len > LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN)
		return false;
	chars = pg_mbstrlen_with_len(password, len);
	return chars >= LATTICE_PASSWORD_MIN_CHARS && chars <= LATTICE_PASSWORD_MAX_CHARS;
}

char *
lattice_password_hash_cstr(const char *password, size_t len)
{
	char	   *out = palloc(crypto_pwhash_STRBYTES);

	lattice_password_check_length(password, len);
	if (crypto_pwhash_str(out, password, len, LATTICE_PWHASH_OPSLIMIT,
						  LATTICE_PWHASH_MEMLIMIT) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("lattice.password_hash: argon2id ran out of memory")));
	return out;
}

/*
 * True when password matches hash.  A NULL hash (unknown account, account
 * without a password) verifies against the dummy so it takes the same time.
 */
bool
lattice_password_verify_cstr(const char *hash, const char *password, size_t len)
{
	bool		ok;

	if (len > LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN)
		len = LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN;	/* bound the work */
	ok = crypto_pwhash_str_verify(hash ? hash : dummy_hash, password, len) == 0;
	return ok && hash != NULL;
}

/* lattice.password_hash(password text) -> text */
PG_FUNCTION_INFO_V1(lattice_password_hash);
Datum
lattice_password_hash(PG_FUNCTION_ARGS)
{
	text	   *pw = PG_GETARG_TEXT_PP(0);

	PG_RETURN_TEXT_P(cstring_to_text(lattice_password_hash_cstr(VARDATA_ANY(pw),
																VARSIZE_ANY_EXHDR(pw))));
}

/* lattice.password_verify(hash text, password text) -> boolean */
PG_FUNCTION_INFO_V1(lattice_password_verify);
Datum
lattice_password_verify(PG_FUNCTION_ARGS)
{
	char	   *hash = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	text	   *pw;

	if (PG_ARGISNULL(1))
		PG_RETURN_BOOL(false);
	pw = PG_GETARG_TEXT_PP(1);
	PG_RETURN_BOOL(lattice_password_verify_cstr(hash, VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw)));
}

/* lattice.password_needs_rehash(hash text) -> boolean */
PG_FUNCTION_INFO_V1(lattice_password_needs_rehash);
Datum
lattice_password_needs_rehash(PG_FUNCTION_ARGS)
{
	char	   *hash = text_to_cstring(PG_GETARG_TEXT_PP(0));

	/* -1 (not an Argon2id string of ours) also means: hash again */
	PG_RETURN_BOOL(crypto_pwhash_str_needs_rehash(hash, LATTICE_PWHASH_OPSLIMIT,
												  LATTICE_PWHASH_MEMLIMIT) != 0);
}

/* Trimmed, lower-cased email; NULL when it is not a plausible address */
char *
lattice_normalise_email(text *t)
{
	const char *s = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	char	   *email;
	char	   *at;
	char	   *p;

	while (len > 0 && isspace((unsigned char) *s))
		s++, len--;
	while (len > 0 && isspace((unsigned char) s[len - 1]))
		len--;
	if (len < 3 || len > 254)
		return NULL;
	email = str_tolower(s, len, DEFAULT_COLLATION_OID);
	at = strchr(email, '@');
	if (at == NULL || at == email || strchr(at + 1, '@') != NULL || at - email > 64)
		return NULL;
	for (p = email; *p; p++)
		if ((unsigned char) *p <= ' ' || *p == 0x7f)
			return NULL;
	p = strchr(at + 1, '.');
	if (p == NULL || p == at + 1 || email[strlen(email) - 1] == '.')
		return NULL;
	return email;
}

/* lattice.email_normalise(email text) -> text: as above, NULL when implausible */
PG_FUNCTION_INFO_V1(lattice_email_normalise);
Datum
lattice_email_normalise(PG_FUNCTION_ARGS)
{
	char	   *email = lattice_normalise_email(PG_GETARG_TEXT_PP(0));

	if (email == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(email));
}

/*
 * A display name or label: surrounding white space trimmed, 1 to max_chars
 * characters, else 400 invalid_name naming what it is.  Shared with keys.
 */
char *
lattice_clean_label(text *t, int max_chars, const char *what)
{
	char	   *name = text_to_cstring(t);
	char	   *end;
	int			chars;

	while (isspace((unsigned char) *name))
		name++;
	end = name + strlen(name);
	while (end > name && isspace((unsigned char) end[-1]))
		*--end = '\0';
	chars = pg_mbstrlen(name);
	if (chars < 1 || chars > max_chars)
		lattice_raise_http(400, "invalid_name",
						   psprintf("%s must be 1 to %d characters", what, max_chars), NULL, NULL);
	return name;
}

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
	char	   *email;
	char	   *name;
	char	   *hash;
	text	   *pw;
	Datum		values[7];
	bool		isnull;

	if (PG_ARGISNULL(0) || (email = lattice_normalise_email(PG_GETARG_TEXT_PP(0))) == NULL)
		lattice_raise_http(400, "invalid_email", "email is not a valid address", NULL, NULL);
	if (PG_ARGISNULL(1))
		lattice_raise_http(400, "invalid_password", "password must be 10 to 1024 characters",
						   NULL, NULL);
	if (PG_ARGISNULL(2))
		lattice_raise_http(400, "invalid_name", "name must be 1 to 200 characters", NULL, NULL);
	name = lattice_clean_label(PG_GETARG_TEXT_PP(2), 200, "name");
	pw = PG_GETARG_TEXT_PP(1);
	lattice_password_check_length(VARDATA_ANY(pw), VARSIZE_ANY_EXHDR(pw));

	SPI_connect();
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
							  "  FROM lattice.plans p WHERE p.id = 'standard'", 1,
							  (Oid[]) {TIMESTAMPTZOID}, values + 3, NULL, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "lattice: the standard plan is missing");
	memcpy(user_id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												&isnull)), sizeof(pg_uuid_t));
	values[4] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	values[5] = UUIDPGetDatum(user_id);

	/* the address's row first: its primary key settles a concurrent sign-up */
	if (SPI_execute_with_args("INSERT INTO lattice.account_emails (email, user_id) VALUES ($1, $2)"
							  " ON CONFLICT (email) DO NOTHING", 2, (Oid[]) {TEXTOID, UUIDOID},
							  (Datum[]) {values[0], values[5]}, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "lattice: account insert failed");
	if (SPI_processed != 1)
		lattice_raise_http(409, "email_taken", "an account with this email exists", NULL, NULL);
	if (becomes_tenant)
		lattice_set_tenant(user_id);
	lattice_as_tenant_role(user_id, &sw);
	/* an address an operator gives counts as verified; a sign-up's is not yet */
	values[6] = BoolGetDatum(!becomes_tenant);
	if (SPI_execute_with_args("INSERT INTO lattice.users (id, email, password_hash, name, trial_ends_at,"
							  " created_at, updated_at, email_verified_at)"
							  " VALUES ($6, $1, $2, $3, $5, $4, $4, CASE WHEN $7 THEN $4 END)",
							  7, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID, UUIDOID, BOOLOID},
							  values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "lattice: account insert failed");
	lattice_restore_role(&sw);
	/* the welcome e-mail, through the outbox like every other */
	if (SPI_execute_with_args("SELECT lattice.billing_welcome($1, $2, $3, $4)", 4,
							  (Oid[]) {UUIDOID, TEXTOID, TEXTOID, TIMESTAMPTZOID},
							  (Datum[]) {values[5], values[0], values[2], values[4]}, NULL, false, 0)
		!= SPI_OK_SELECT)
		elog(ERROR, "lattice: welcome e-mail failed");
	SPI_finish();
	*email_out = email;
	*name_out = name;
}

static char *
uuid_text(const pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

/*
 * lattice.create_user(email, password, name) -> uuid: for DBAs, tests and the
 * demo seed (superusers and lattice_admin only), audited.
 */
PG_FUNCTION_INFO_V1(lattice_create_user);
Datum
lattice_create_user(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	char	   *email;
	char	   *name;

	if (!lattice_caller_is_privileged())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.create_user: permission denied"),
				 errdetail("Only superusers and members of lattice_admin may create accounts.")));
	user_insert(fcinfo, id, &email, &name, false);
	lattice_audit("user.created", id, uuid_text(id), NULL, NULL);
	PG_RETURN_UUID_P(id);
}

/*
 * Counts one attempt of key at scope; raises 429 too_many_attempts with
 * Retry-After past limit attempts per period (seconds).  No key, no count.
 */
void
lattice_enforce_attempts(const char *scope, const char *key, int64 limit, int64 period)
{
	LatticeRateResult r;
	char		headers[64];

	if (key == NULL || lattice_rate_check(scope, key, limit, period, &r))
		return;
	snprintf(headers, sizeof(headers), "{\"Retry-After\": \"" INT64_FORMAT "\"}",
			 r.retry_after_seconds > 0 ? r.retry_after_seconds : 1);
	lattice_raise_http(429, "too_many_attempts", "too many attempts, try again later",
					   NULL, headers);
}

/*
 * lattice.account_throttle(scope text, account uuid, lim bigint,
 * period_seconds bigint) -> void: lattice_enforce_attempts for SQL, keyed
 * by the account.
 */
PG_FUNCTION_INFO_V1(lattice_account_throttle);
Datum
lattice_account_throttle(PG_FUNCTION_ARGS)
{
	lattice_enforce_attempts(text_to_cstring(PG_GETARG_TEXT_PP(0)),
							 DatumGetCString(DirectFunctionCall1(uuid_out, PG_GETARG_DATUM(1))),
							 PG_GETARG_INT64(2), PG_GETARG_INT64(3));
	PG_RETURN_VOID();
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
	pg_uuid_t  *id = palloc(sizeof(pg_uuid_t));
	Jsonb	   *req = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	char	   *email;
	char	   *name;

	/* the per-address limit of sign-ups is the route's (rate_enforce_address) */
	user_insert(fcinfo, id, &email, &name, true);
	lattice_auth_note(LATTICE_AUTH_PASSWORD, NULL);
	lattice_audit("user.signup", id, uuid_text(id), NULL, req);
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
	Jsonb	   *req = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	char	   *email = PG_ARGISNULL(0) ? NULL : lattice_normalise_email(PG_GETARG_TEXT_PP(0));
	text	   *pw = PG_ARGISNULL(1) ? cstring_to_text("") : PG_GETARG_TEXT_PP(1);
	const char *pw_s = VARDATA_ANY(pw);
	size_t		pw_len = VARSIZE_ANY_EXHDR(pw);
	char	   *hash = NULL;
	pg_uuid_t  *id = NULL;
	bool		ok;
	Datum		values[2];

	lattice_enforce_attempts("login_addr", lattice_req_text(req, "client_addr"),
					 LOGIN_ADDR_LIMIT, LOGIN_WINDOW);
	lattice_enforce_attempts("login_email", email, LOGIN_EMAIL_LIMIT, LOGIN_WINDOW);

	if (email != NULL)
	{
		SPI_connect();
		values[0] = CStringGetTextDatum(email);
		if (SPI_execute_with_args("SELECT user_id FROM lattice.account_emails WHERE email = $1", 1,
								  (Oid[]) {TEXTOID}, values, NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "lattice.login: account lookup failed");
		if (SPI_processed == 1)
		{
			bool		isnull;

			values[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			if (SPI_execute_with_args("SELECT id, password_hash FROM lattice.users WHERE id = $1", 1,
									  (Oid[]) {UUIDOID}, values + 1, NULL, true, 1) != SPI_OK_SELECT)
				elog(ERROR, "lattice.login: account lookup failed");
		}
		if (SPI_processed == 1)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			id = SPI_palloc(sizeof(pg_uuid_t));
			memcpy(id, DatumGetUUIDP(d), sizeof(pg_uuid_t));
			hash = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
			if (hash != NULL)	/* outlive SPI_finish */
				hash = strcpy(SPI_palloc(strlen(hash) + 1), hash);
		}
		SPI_finish();
	}

	/* the same work whatever was wrong */
	ok = lattice_password_verify_cstr(hash, pw_s, pw_len) && password_length_ok(pw_s, pw_len);
	if (!ok)
	{
		lattice_audit("login.failure", id, email,
					  id ? "{\"reason\": \"wrong_password\"}" : "{\"reason\": \"unknown_account\"}",
					  req);
		PG_RETURN_NULL();
	}

	lattice_set_tenant(id);
	if (crypto_pwhash_str_needs_rehash(hash, LATTICE_PWHASH_OPSLIMIT, LATTICE_PWHASH_MEMLIMIT) != 0)
	{
		char	   *fresh = lattice_password_hash_cstr(pw_s, pw_len);
		LatticeRoleSwitch sw;

		lattice_as_tenant_role(id, &sw);
		SPI_connect();
		values[0] = CStringGetTextDatum(fresh);
		values[1] = UUIDPGetDatum(id);
		if (SPI_execute_with_args("UPDATE lattice.users SET password_hash = $1, updated_at = pg_catalog.now()"
								  " WHERE id = $2", 2, (Oid[]) {TEXTOID, UUIDOID}, values, NULL,
								  false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "lattice.login: rehash failed");
		SPI_finish();
		lattice_restore_role(&sw);
	}
	lattice_auth_note(LATTICE_AUTH_PASSWORD, NULL);
	lattice_audit("login.success", id, email, NULL, req);
	PG_RETURN_UUID_P(id);
}
