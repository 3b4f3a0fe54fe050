/*
 * auth_secret.c
 *		Server secrets: the API-key pepper and the JWT signing keys.
 *
 * Secrets live in lattice.secrets, which no role but the extension
 * owner can read: the C code reads it through SPI from SECURITY DEFINER
 * functions only.  Each secret has a kid; rotation adds a new one and retires
 * the old, which stays readable so that what it signed keeps verifying:
 * JWT keys until the longest token signed with them has expired, peppers for
 * as long as a key hashed with them exists (a key's hash cannot be redone
 * without the plaintext, which is never stored).
 */
#include "common.h"
#include "auth.h"

#include <sodium.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/*
 * Reads a secret: the active one of a kind (kid NULL) or a given kid, active
 * or retired.  Copies the secret into the caller's buffer (which the caller
 * wipes) and the kid into kid_out when given.  False when there is none.
 */
bool
lattice_secret_get(const char *kind, const char *kid, uint8 secret[LATTICE_SECRET_BYTES],
				   char kid_out[LATTICE_KID_MAX + 1])
{
	static SPIPlanPtr active_plan = NULL;
	static SPIPlanPtr kid_plan = NULL;
	Oid types[2] = {TEXTOID, TEXTOID};
	Datum values[2];
	bool found = false;
	SPIPlanPtr plan;

	lattice_spi_connect("lattice.secret_get");
	values[0] = CStringGetTextDatum(kind);
	if (kid == NULL)
		plan = lattice_spi_prepare_kept(&active_plan,
										"SELECT kid, secret FROM lattice.secrets"
										" WHERE kind = $1 AND retired_at IS NULL"
										" ORDER BY created_at DESC LIMIT 1",
										1, types);
	else
	{
		values[1] = CStringGetTextDatum(kid);
		plan = lattice_spi_prepare_kept(&kid_plan,
										"SELECT kid, secret FROM lattice.secrets"
										" WHERE kind = $1 AND kid = $2",
										2, types);
	}
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading server secrets failed");
	if (SPI_processed == 1)
	{
		bool isnull;
		Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		bytea *b = DatumGetByteaPP(d);

		if (!isnull && VARSIZE_ANY_EXHDR(b) == LATTICE_SECRET_BYTES)
		{
			memcpy(secret, VARDATA_ANY(b), LATTICE_SECRET_BYTES);
			if (kid_out)
			{
				char *k = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

				strlcpy(kid_out, k, LATTICE_KID_MAX + 1);
			}
			found = true;
		}
	}
	SPI_finish();
	return found;
}

/*
 * A JWT key by kid, if it may still verify tokens: active, or retired less
 * than the longest token lifetime (plus skew) ago.
 */
bool
lattice_jwt_key_usable(const char *kid, uint8 secret[LATTICE_SECRET_BYTES])
{
	static SPIPlanPtr plan = NULL;
	Oid types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum values[2];
	bool found = false;
	TimestampTz oldest = lattice_clock_now() -
		(int64) (LATTICE_JWT_MAX_TTL + LATTICE_JWT_SKEW) * USECS_PER_SEC;

	lattice_spi_connect("lattice.jwt_key_usable");
	values[0] = CStringGetTextDatum(kid);
	values[1] = TimestampTzGetDatum(oldest);
	lattice_spi_prepare_kept(&plan,
							 "SELECT secret FROM lattice.secrets"
							 " WHERE kind = 'jwt' AND kid = $1"
							 " AND (retired_at IS NULL OR retired_at > $2)",
							 2, types);
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading server secrets failed");
	if (SPI_processed == 1)
	{
		bool isnull;
		bytea *b = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));

		if (!isnull && VARSIZE_ANY_EXHDR(b) == LATTICE_SECRET_BYTES)
		{
			memcpy(secret, VARDATA_ANY(b), LATTICE_SECRET_BYTES);
			found = true;
		}
	}
	SPI_finish();
	return found;
}

/*
 * lattice.rotate_secret(kind text) -> text (the new kid)
 *
 * Generates a new secret of a kind ('pepper' or 'jwt') from libsodium's
 * randomness and retires the active one.  Called at CREATE EXTENSION to make
 * the first ones, later by superusers or lattice_admin; rotations (not the
 * first generation) are audited.  The secret itself never leaves C.
 */
PG_FUNCTION_INFO_V1(lattice_rotate_secret);
Datum
lattice_rotate_secret(PG_FUNCTION_ARGS)
{
	text *kind_t;
	char *kind;
	uint8 secret[LATTICE_SECRET_BYTES];
	char *kid;
	Datum values[3];
	bytea *b;
	TimestampTz now = lattice_clock_now();
	uint64 retired;

	if (!lattice_caller_is_privileged())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.rotate_secret: permission denied"),
				 errdetail("Only superusers and members of lattice_admin may rotate secrets.")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.rotate_secret: kind must not be null")));
	kind_t = PG_GETARG_TEXT_PP(0);
	kind = text_to_cstring(kind_t);
	if (strcmp(kind, "pepper") != 0 && strcmp(kind, "jwt") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.rotate_secret: unknown kind \"%s\"", kind),
				 errhint("Use 'pepper' or 'jwt'.")));

	kid = lattice_random_token(9); /* 12 characters */
	randombytes_buf(secret, sizeof(secret));
	b = palloc(VARHDRSZ + sizeof(secret));
	SET_VARSIZE(b, VARHDRSZ + sizeof(secret));
	memcpy(VARDATA(b), secret, sizeof(secret));
	sodium_memzero(secret, sizeof(secret));

	lattice_spi_connect("lattice.rotate_secret");
	values[0] = CStringGetTextDatum(kind);
	values[1] = TimestampTzGetDatum(now);
	if (SPI_execute_with_args("UPDATE lattice.secrets SET retired_at = $2"
							  " WHERE kind = $1 AND retired_at IS NULL",
							  2, (Oid[]) {TEXTOID, TIMESTAMPTZOID}, values, NULL, false,
							  0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice.rotate_secret: retiring the old secret failed");
	retired = SPI_processed;
	values[1] = CStringGetTextDatum(kid);
	values[2] = PointerGetDatum(b);
	if (SPI_execute_with_args("INSERT INTO lattice.secrets (kind, kid, secret, created_at)"
							  " VALUES ($1, $2, $3, $4)",
							  4, (Oid[]) {TEXTOID, TEXTOID, BYTEAOID, TIMESTAMPTZOID},
							  (Datum[]) {values[0], values[1], values[2], TimestampTzGetDatum(now)},
							  NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "lattice.rotate_secret: storing the new secret failed");
	SPI_finish();
	sodium_memzero(VARDATA(b), sizeof(secret));

	if (retired > 0)
	{
		StringInfoData details;

		initStringInfo(&details);
		appendStringInfo(&details, "{\"kind\": \"%s\", \"kid\": \"%s\"}", kind, kid);
		lattice_audit("secret.rotated", NULL, kind, details.data, NULL);
	}
	PG_RETURN_TEXT_P(cstring_to_text(kid));
}
