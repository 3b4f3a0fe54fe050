/*
 * auth_password.c
 *		Argon2id password hashes, and the limit of attempts at anything
 *		guessable (passwords, codes).
 *
 * Parameters: Argon2id through libsodium's crypto_pwhash_str with 19 MiB and
 * t=2 (p=1), OWASP's minimum recommendation.  Chosen because a login runs
 * inside a PostgreSQL backend on a small shared machine: ~18 ms and 19 MiB
 * per concurrent login keeps a burst of logins from starving the database,
 * while still costing an offline attacker 19 MiB per guess.  Hashes made with
 * other parameters are redone at the next successful login (account.c).
 *
 * A check against no hash (an unknown account) verifies against a fixed
 * dummy hash with the same parameters, so both failures cost the same.
 */
#include "common.h"
#include "auth.h"
#include "lattice.h"

#include <sodium.h>

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

/* made once with the parameters above from a random, forgotten password */
static const char dummy_hash[] =
	"$argon2id$v=19$m=19456,t=2,p=1$Xsk90pVw62NV97OxkO2BSw$I3eEmrHtYOxJ62r3zLkC2k28241tcZkRHOXWtqM5d+0";

/* Raises 400 invalid_password unless LATTICE_PASSWORD_MIN_CHARS to _MAX_CHARS characters */
void
lattice_password_check_length(const char *password, size_t len)
{
	int chars;

	if (len > LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN)
		chars = LATTICE_PASSWORD_MAX_CHARS + 1;
	else
		chars = pg_mbstrlen_with_len(password, len);
	if (chars < LATTICE_PASSWORD_MIN_CHARS || chars > LATTICE_PASSWORD_MAX_CHARS)
		lattice_raise_http(400, "invalid_password",
						   psprintf("password must be %d to %d characters", LATTICE_PASSWORD_MIN_CHARS,
									LATTICE_PASSWORD_MAX_CHARS),
						   NULL, NULL);
}

bool
lattice_password_length_ok(const char *password, size_t len)
{
	int chars;

	if (len > LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN)
		return false;
	chars = pg_mbstrlen_with_len(password, len);
	return chars >= LATTICE_PASSWORD_MIN_CHARS && chars <= LATTICE_PASSWORD_MAX_CHARS;
}

char *
lattice_password_hash_cstr(const char *password, size_t len)
{
	char *out = palloc(crypto_pwhash_STRBYTES);

	lattice_password_check_length(password, len);
	if (crypto_pwhash_str(out, password, len, LATTICE_PWHASH_OPSLIMIT, LATTICE_PWHASH_MEMLIMIT) != 0)
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
	bool ok;

	if (len > LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN)
		len = LATTICE_PASSWORD_MAX_CHARS * MAX_MULTIBYTE_CHAR_LEN; /* bound the work */
	ok = crypto_pwhash_str_verify(hash ? hash : dummy_hash, password, len) == 0;
	return ok && hash != NULL;
}

/* lattice.password_hash(password text) -> text */
PG_FUNCTION_INFO_V1(lattice_password_hash);
Datum
lattice_password_hash(PG_FUNCTION_ARGS)
{
	text *pw = PG_GETARG_TEXT_PP(0);

	PG_RETURN_TEXT_P(cstring_to_text(lattice_password_hash_cstr(VARDATA_ANY(pw),
																VARSIZE_ANY_EXHDR(pw))));
}

/* lattice.password_verify(hash text, password text) -> boolean */
PG_FUNCTION_INFO_V1(lattice_password_verify);
Datum
lattice_password_verify(PG_FUNCTION_ARGS)
{
	char *hash = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	text *pw;

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
	char *hash = text_to_cstring(PG_GETARG_TEXT_PP(0));

	/* -1 (not an Argon2id string of ours) also means: hash again */
	PG_RETURN_BOOL(crypto_pwhash_str_needs_rehash(hash, LATTICE_PWHASH_OPSLIMIT,
												  LATTICE_PWHASH_MEMLIMIT) != 0);
}

/*
 * Counts one attempt of key at scope; raises 429 too_many_attempts with
 * Retry-After past limit attempts per period (seconds).  No key, no count.
 */
void
lattice_enforce_attempts(const char *scope, const char *key, int64 limit, int64 period)
{
	LatticeRateResult r;
	char headers[64];

	if (key == NULL || lattice_rate_check(scope, key, limit, period, &r))
		return;
	snprintf(headers, sizeof(headers), "{\"Retry-After\": \"" INT64_FORMAT "\"}",
			 r.retry_after_seconds > 0 ? r.retry_after_seconds : 1);
	lattice_raise_http(429, "too_many_attempts", "too many attempts, try again later", NULL, headers);
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
							 lattice_uuid_text(PG_GETARG_UUID_P(1)), PG_GETARG_INT64(2),
							 PG_GETARG_INT64(3));
	PG_RETURN_VOID();
}
