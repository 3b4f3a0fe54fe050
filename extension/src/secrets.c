/*
 * secrets.c
 *		Server secrets (API-key pepper, JWT signing keys), the identity clock,
 *		and the small helpers the identity files share.
 *
 * Secrets live in lattice.secrets, which no role but the extension
 * owner can read: the C code reads it through SPI from SECURITY DEFINER
 * functions only.  Each secret has a kid; rotation adds a new one and retires
 * the old, which stays readable so that what it signed keeps verifying:
 * JWT keys until the longest token signed with them has expired, peppers for
 * as long as a key hashed with them exists (a key's hash cannot be redone
 * without the plaintext, which is never stored).
 */
#include "lattice.h"
#include "identity.h"

#include <sodium.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/*
 * The clock every validity check uses.  Superusers may pin it for the rest of
 * a transaction (lattice.test_set_clock) so tests can step through rotation
 * windows; the pin is stamped with the local transaction id, so it can never
 * outlive the transaction that set it.
 */
static TimestampTz clock_override;
static LocalTransactionId clock_override_lxid = InvalidLocalTransactionId;

TimestampTz
lattice_clock_now(void)
{
	if (clock_override_lxid != InvalidLocalTransactionId &&
		MyProc != NULL && MyProc->lxid == clock_override_lxid)
		return clock_override;
	return GetCurrentTimestamp();
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
	if (PG_ARGISNULL(0))
		clock_override_lxid = InvalidLocalTransactionId;
	else
	{
		clock_override = PG_GETARG_TIMESTAMPTZ(0);
		clock_override_lxid = MyProc->lxid;
	}
	PG_RETURN_VOID();
}

/* Session user is a superuser or a member of lattice_admin */
bool
lattice_caller_is_privileged(void)
{
	Oid			session_user = GetSessionUserId();
	Oid			admin = get_role_oid("lattice_admin", true);

	return superuser_arg(session_user) ||
		(OidIsValid(admin) && has_privs_of_role(session_user, admin));
}

bool
lattice_xact_read_only(void)
{
	return XactReadOnly || RecoveryInProgress();
}

char *
lattice_b64url_encode(const uint8 *bin, size_t len)
{
	size_t		outlen = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	char	   *out = palloc(outlen);

	sodium_bin2base64(out, outlen, bin, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return out;
}

/*
 * The unkeyed BLAKE2b-256 of a high-entropy secret (a session token, a link
 * token, a recovery code) as bytea, as it is stored: 256 random bits need no
 * pepper, and a look-up by hash then needs no secret.
 */
bytea *
lattice_secret_hash(const char *s, size_t len)
{
	bytea	   *b = palloc(VARHDRSZ + LATTICE_SECRET_HASH_BYTES);

	SET_VARSIZE(b, VARHDRSZ + LATTICE_SECRET_HASH_BYTES);
	crypto_generichash((unsigned char *) VARDATA(b), LATTICE_SECRET_HASH_BYTES,
					   (const unsigned char *) s, len, NULL, 0);
	return b;
}

/* nbytes of libsodium randomness as base64url text */
char *
lattice_random_token(size_t nbytes)
{
	uint8		buf[64];
	char	   *out;

	Assert(nbytes <= sizeof(buf));
	randombytes_buf(buf, nbytes);
	out = lattice_b64url_encode(buf, nbytes);
	sodium_memzero(buf, sizeof(buf));
	return out;
}

/* A string member of the request object, palloc'd; NULL when absent */
char *
lattice_req_text(Jsonb *req, const char *key)
{
	JsonbValue	v;

	if (req == NULL || !JB_ROOT_IS_OBJECT(req))
		return NULL;
	if (getKeyJsonValueFromContainer(&req->root, key, strlen(key), &v) == NULL ||
		v.type != jbvString)
		return NULL;
	return pnstrdup(v.val.string.val, v.val.string.len);
}

bool
lattice_req_bool(Jsonb *req, const char *key)
{
	JsonbValue	v;

	if (req == NULL || !JB_ROOT_IS_OBJECT(req))
		return false;
	if (getKeyJsonValueFromContainer(&req->root, key, strlen(key), &v) == NULL)
		return false;
	return v.type == jbvBool && v.val.boolean;
}

/* Prepares sql once per backend and keeps the plan */
SPIPlanPtr
lattice_spi_prepare_kept(SPIPlanPtr *cache, const char *sql, int nargs, Oid *types)
{
	if (*cache == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "lattice: SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		*cache = plan;
	}
	return *cache;
}

/*
 * One audit row through lattice.audit(); written as the owner, so it works
 * before any tenant is known (failed logins).  A read-only transaction cannot
 * write: the row is then deferred (auth.c) to the next writing transaction.
 */
void
lattice_audit(const char *action, const pg_uuid_t *user_id, const char *target,
			  const char *details_json, Jsonb *req)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[5] = {TEXTOID, TEXTOID, JSONBOID, JSONBOID, UUIDOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	LatticeRoleSwitch sw;

	if (lattice_xact_read_only())
	{
		lattice_defer_audit(action, user_id, target, req);
		return;
	}
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

	/* the tenant's own row, as its role (tenant.c) */
	lattice_as_tenant_role(user_id, &sw);
	SPI_connect();
	lattice_spi_prepare_kept(&plan, "SELECT lattice.audit($1, $2, $3, $4, $5)", 5, types);
	if (SPI_execute_plan(plan, values, nulls, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: audit insert failed");
	SPI_finish();
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
	pg_uuid_t	tenant;

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

/*
 * Reads a secret: the active one of a kind (kid NULL) or a given kid, active
 * or retired.  Copies the secret into the caller's buffer (which the caller
 * wipes) and the kid into kid_out when given.  False when there is none.
 */
bool
lattice_secret_get(const char *kind, const char *kid,
				   uint8 secret[LATTICE_SECRET_BYTES], char kid_out[LATTICE_KID_MAX + 1])
{
	static SPIPlanPtr active_plan = NULL;
	static SPIPlanPtr kid_plan = NULL;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	bool		found = false;
	SPIPlanPtr	plan;

	SPI_connect();
	values[0] = CStringGetTextDatum(kind);
	if (kid == NULL)
		plan = lattice_spi_prepare_kept(&active_plan,
							"SELECT kid, secret FROM lattice.secrets"
							" WHERE kind = $1 AND retired_at IS NULL"
							" ORDER BY created_at DESC LIMIT 1", 1, types);
	else
	{
		values[1] = CStringGetTextDatum(kid);
		plan = lattice_spi_prepare_kept(&kid_plan,
							"SELECT kid, secret FROM lattice.secrets"
							" WHERE kind = $1 AND kid = $2", 2, types);
	}
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading server secrets failed");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		bytea	   *b = DatumGetByteaPP(d);

		if (!isnull && VARSIZE_ANY_EXHDR(b) == LATTICE_SECRET_BYTES)
		{
			memcpy(secret, VARDATA_ANY(b), LATTICE_SECRET_BYTES);
			if (kid_out)
			{
				char	   *k = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

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
	Oid			types[2] = {TEXTOID, TIMESTAMPTZOID};
	Datum		values[2];
	bool		found = false;
	TimestampTz oldest = lattice_clock_now() -
		(int64) (LATTICE_JWT_MAX_TTL + LATTICE_JWT_SKEW) * USECS_PER_SEC;

	SPI_connect();
	values[0] = CStringGetTextDatum(kid);
	values[1] = TimestampTzGetDatum(oldest);
	lattice_spi_prepare_kept(&plan,
				 "SELECT secret FROM lattice.secrets"
				 " WHERE kind = 'jwt' AND kid = $1"
				 " AND (retired_at IS NULL OR retired_at > $2)", 2, types);
	if (SPI_execute_plan(plan, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading server secrets failed");
	if (SPI_processed == 1)
	{
		bool		isnull;
		bytea	   *b = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull));

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
	text	   *kind_t;
	char	   *kind;
	uint8		secret[LATTICE_SECRET_BYTES];
	char	   *kid;
	Datum		values[3];
	bytea	   *b;
	TimestampTz now = lattice_clock_now();
	uint64		retired;

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

	kid = lattice_random_token(9);	/* 12 characters */
	randombytes_buf(secret, sizeof(secret));
	b = palloc(VARHDRSZ + sizeof(secret));
	SET_VARSIZE(b, VARHDRSZ + sizeof(secret));
	memcpy(VARDATA(b), secret, sizeof(secret));
	sodium_memzero(secret, sizeof(secret));

	SPI_connect();
	values[0] = CStringGetTextDatum(kind);
	values[1] = TimestampTzGetDatum(now);
	if (SPI_execute_with_args("UPDATE lattice.secrets SET retired_at = $2"
							  " WHERE kind = $1 AND retired_at IS NULL",
							  2, (Oid[]) {TEXTOID, TIMESTAMPTZOID}, values, NULL,
							  false, 0) != SPI_OK_UPDATE)
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
