/*
 * auth_apikey.c
 *		API keys for the plugins: creation, verification, rotation.
 *
 * A key is "ltc_" + 32 bytes of libsodium randomness in base64url (47
 * characters), shown once.  Stored: its first 12 characters as the lookup and
 * display prefix (48 bits, not secret) and a BLAKE2b-256 of the whole key
 * keyed with the server pepper (which pepper: pepper_kid), compared in
 * constant time.  A fast keyed hash is right for 208+ bits of randomness; a
 * slow one would cost milliseconds per request for nothing.
 *
 * last_used is kept to the minute: a verification writes only when the stored
 * minute is older than the current one, and never in a read-only transaction
 * (GET routes) -- then the touch waits in the deferred queue
 * (auth_deferred.c) for the next writing transaction.  Locked rows are
 * skipped, so concurrent requests with one key never wait on each other.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define KEY_RANDOM_BYTES	   32
#define KEY_TEXT_LEN		   (4 + 43)
#define KEY_PREFIX_LEN		   12
#define KEY_HASH_BYTES		   32
#define API_KEY_NAME_MAX_CHARS 100

static void
key_hash(const char *key, size_t len, const uint8 pepper[LATTICE_SECRET_BYTES],
		 uint8 out[KEY_HASH_BYTES])
{
	crypto_generichash(out, KEY_HASH_BYTES, (const unsigned char *) key, len, pepper,
					   LATTICE_SECRET_BYTES);
}

static bool
key_well_formed(const char *key, size_t len)
{
	size_t i;

	if (len != KEY_TEXT_LEN || strncmp(key, LATTICE_API_KEY_PREFIX, strlen(LATTICE_API_KEY_PREFIX)) != 0)
		return false;
	for (i = 4; i < len; i++)
	{
		char c = key[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
			  c == '_'))
			return false;
	}
	return true;
}

/* The bits of a stored text[] of scope names (the table's CHECK keeps them known) */
static int
key_scopes_of(Datum arr)
{
	Datum *elems;
	bool *nulls;
	int n;
	int scopes = 0;

	deconstruct_array(DatumGetArrayTypeP(arr), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			scopes |= lattice_scopes_from_text(TextDatumGetCString(elems[i]));
	return scopes;
}

/*
 * Verifies a key and returns its account, id and scopes; raises 401 with
 * invalid_api_key, revoked_api_key or expired_api_key.  Use after
 * revocation is audited (deferred: the refusal rolls this transaction back).
 */
void
lattice_api_key_verify_cstr(const char *key, Jsonb *req, pg_uuid_t *user_id, pg_uuid_t *key_id,
							int *scopes, bool *stale)
{
	static SPIPlanPtr prefix_plan = NULL;
	static SPIPlanPtr key_plan = NULL;
	size_t len = strlen(key);
	uint8 pepper[LATTICE_SECRET_BYTES];
	uint8 computed[KEY_HASH_BYTES];
	char prefix[KEY_PREFIX_LEN + 1];
	char *kid = NULL;
	bytea *stored = NULL;
	bool found = false;
	bool matches = false;
	bool revoked = false;
	bool expired = false;
	TimestampTz now = lattice_clock_now();

	*stale = false;
	if (!key_well_formed(key, len))
		lattice_raise_http(401, "invalid_api_key", "the API key is not valid", NULL, NULL);
	memcpy(prefix, key, KEY_PREFIX_LEN);
	prefix[KEY_PREFIX_LEN] = '\0';

	/*
	 * The prefix names the account and the key; the key's row is then read
	 * by (account, id), so only that tenant's rows are touched, and the
	 * pepper separately, so it never travels to where the key's row is.
	 */
	lattice_spi_connect("lattice.authenticate");
	lattice_spi_prepare_kept(&prefix_plan,
							 "SELECT user_id, key_id FROM lattice.api_key_prefixes WHERE prefix = $1", 1,
							 (Oid[]) {TEXTOID});
	if (SPI_execute_plan(prefix_plan, (Datum[]) {CStringGetTextDatum(prefix)}, NULL, true, 1) !=
		SPI_OK_SELECT)
		elog(ERROR, "lattice: API key lookup failed");
	if (SPI_processed == 1)
	{
		bool isnull;

		memcpy(user_id,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
		memcpy(key_id,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
			   sizeof(pg_uuid_t));
		lattice_spi_prepare_kept(&key_plan,
								 "SELECT key_hash, revoked_at, expires_at, last_used, pepper_kid, scopes"
								 "  FROM lattice.api_keys WHERE user_id = $1 AND id = $2",
								 2, (Oid[]) {UUIDOID, UUIDOID});
		if (SPI_execute_plan(key_plan, (Datum[]) {UUIDPGetDatum(user_id), UUIDPGetDatum(key_id)}, NULL,
							 true, 1) != SPI_OK_SELECT)
			elog(ERROR, "lattice: API key lookup failed");
		found = SPI_processed == 1;
	}
	if (found)
	{
		HeapTuple tup = SPI_tuptable->vals[0];
		TupleDesc desc = SPI_tuptable->tupdesc;
		bool isnull;
		Datum d;

		stored = DatumGetByteaPCopy(SPI_getbinval(tup, desc, 1, &isnull));
		d = SPI_getbinval(tup, desc, 2, &isnull);
		revoked = !isnull && DatumGetTimestampTz(d) <= now;
		d = SPI_getbinval(tup, desc, 3, &isnull);
		expired = !isnull && DatumGetTimestampTz(d) <= now;
		d = SPI_getbinval(tup, desc, 4, &isnull);
		*stale = isnull || DatumGetTimestampTz(d) < now - USECS_PER_MINUTE;
		kid = SPI_getvalue(tup, desc, 5);
		*scopes = key_scopes_of(SPI_getbinval(tup, desc, 6, &isnull));
	}
	if (found && lattice_secret_get("pepper", kid, pepper, NULL))
	{
		key_hash(key, len, pepper, computed);
		matches = VARSIZE_ANY_EXHDR(stored) == KEY_HASH_BYTES &&
			sodium_memcmp(computed, VARDATA_ANY(stored), KEY_HASH_BYTES) == 0;
	}
	else
	{
		/* the same work for an unknown prefix */
		memset(pepper, 0, sizeof(pepper));
		key_hash(key, len, pepper, computed);
	}
	sodium_memzero(pepper, sizeof(pepper));

	SPI_finish();

	if (!found || !matches)
		lattice_raise_http(401, "invalid_api_key", "the API key is not valid", NULL, NULL);
	if (revoked)
	{
		char *id = lattice_uuid_text(key_id);

		lattice_defer_audit("key.used_after_revocation", user_id, id, req);
		lattice_raise_http(401, "revoked_api_key", "the API key has been revoked", NULL, NULL);
	}
	if (expired)
		lattice_raise_http(401, "expired_api_key", "the API key has expired", NULL, NULL);
	/* the caller records the use (lattice_credential_touch) once the tenant is set */
}

/* lattice.api_key_verify(key text, req jsonb) -> uuid: the account, or a 401 */
PG_FUNCTION_INFO_V1(lattice_api_key_verify);
Datum
lattice_api_key_verify(PG_FUNCTION_ARGS)
{
	pg_uuid_t *user_id = palloc(sizeof(pg_uuid_t));
	pg_uuid_t key_id;
	int scopes;
	bool stale;

	if (PG_ARGISNULL(0))
		lattice_raise_http(401, "missing_credentials", "no API key given", NULL, NULL);

	lattice_api_key_verify_cstr(text_to_cstring(PG_GETARG_TEXT_PP(0)),
								PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1), user_id, &key_id, &scopes,
								&stale);
	if (stale)
		lattice_credential_touch("api_key", user_id, &key_id);
	PG_RETURN_UUID_P(user_id);
}

/* Creating or rotating keys of user_id: its own tenant, or a DBA */
static void
check_key_owner(const char *fn, const pg_uuid_t *user_id)
{
	pg_uuid_t tenant;

	if (lattice_get_tenant(&tenant) && memcmp(&tenant, user_id, sizeof(pg_uuid_t)) == 0)
		return;
	if (lattice_caller_is_privileged())
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("%s: permission denied", fn),
			 errdetail("Keys are created by their authenticated account or a DBA.")));
}

typedef struct NewKey
{
	pg_uuid_t id;
	char *key;
	char *prefix;
	TimestampTz created_at;
} NewKey;

/* Generates, hashes and stores one key; the plaintext is only in out->key */
static void
key_insert(const pg_uuid_t *user_id, const char *name, Datum expires_at, bool expires_null,
		   const pg_uuid_t *rotated_from, int scopes, NewKey *out)
{
	uint8 pepper[LATTICE_SECRET_BYTES];
	char kid[LATTICE_KID_MAX + 1];
	uint8 hash[KEY_HASH_BYTES];
	bytea *hash_b;
	char *random_part;
	Datum values[9];
	char nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool isnull;
	TimestampTz now = lattice_clock_now();
	LatticeRoleSwitch sw;

	if (!lattice_secret_get("pepper", NULL, pepper, kid))
		elog(ERROR, "lattice: no active pepper; run lattice.rotate_secret('pepper')");
	random_part = lattice_random_token(KEY_RANDOM_BYTES);
	out->key = psprintf(LATTICE_API_KEY_PREFIX "%s", random_part);
	sodium_memzero(random_part, strlen(random_part));
	out->prefix = pnstrdup(out->key, KEY_PREFIX_LEN);
	key_hash(out->key, strlen(out->key), pepper, hash);
	sodium_memzero(pepper, sizeof(pepper));
	hash_b = palloc(VARHDRSZ + KEY_HASH_BYTES);
	SET_VARSIZE(hash_b, VARHDRSZ + KEY_HASH_BYTES);
	memcpy(VARDATA(hash_b), hash, KEY_HASH_BYTES);

	values[0] = UUIDPGetDatum(user_id);
	values[1] = CStringGetTextDatum(name);
	values[2] = CStringGetTextDatum(out->prefix);
	values[3] = PointerGetDatum(hash_b);
	values[4] = CStringGetTextDatum(kid);
	values[5] = TimestampTzGetDatum(now);
	values[6] = expires_at;
	if (expires_null)
		nulls[6] = 'n';
	if (rotated_from)
		values[7] = UUIDPGetDatum(rotated_from);
	else
		nulls[7] = 'n';
	values[8] = lattice_scopes_array(scopes);

	lattice_as_tenant_role(user_id, &sw);
	lattice_spi_connect("lattice.api_key_create");
	if (SPI_execute_with_args(
			"INSERT INTO lattice.api_keys (user_id, name, prefix, key_hash, pepper_kid,"
			" created_at, expires_at, rotated_from, scopes)"
			" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
			9,
			(Oid[]) {UUIDOID, TEXTOID, TEXTOID, BYTEAOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
					 UUIDOID, TEXTARRAYOID},
			values, nulls, false, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "lattice: API key insert failed");
	memcpy(&out->id,
		   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
		   sizeof(pg_uuid_t));
	lattice_restore_role(&sw); /* the look-up is the owner's */
	if (SPI_execute_with_args("INSERT INTO lattice.api_key_prefixes (prefix, user_id, key_id)"
							  " VALUES ($1, $2, $3)",
							  3, (Oid[]) {TEXTOID, UUIDOID, UUIDOID},
							  (Datum[]) {values[2], values[0], UUIDPGetDatum(&out->id)}, NULL, false,
							  0) != SPI_OK_INSERT)
		elog(ERROR, "lattice: API key insert failed");
	SPI_finish();
	out->created_at = now;
}

/*
 * The scopes of a new key from a text[] of names: at least one, each known
 * (400 invalid_scopes otherwise).
 */
static int
key_scopes_arg(ArrayType *arr)
{
	Datum *elems;
	bool *nulls;
	int n;
	const char **names;

	if (ARR_NDIM(arr) > 1)
		lattice_raise_http(400, "invalid_scopes", "scopes must be a list of scope names", NULL, NULL);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	names = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		names[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
	return lattice_scopes_from_names(names, n);
}

/*
 * lattice.api_key_create(user_id uuid, name text, expires_at timestamptz, req jsonb,
 *                        scopes text[])
 *   -> (id uuid, key text, prefix text, created_at timestamptz)
 * For the account's own tenant or a DBA; audited.  scopes: ingest and/or
 * read (a plugin's key: ingest only, the default).
 */
PG_FUNCTION_INFO_V1(lattice_api_key_create);
Datum
lattice_api_key_create(PG_FUNCTION_ARGS)
{
	pg_uuid_t *user_id;
	char *name;
	TupleDesc desc;
	Datum values[4];
	bool nulls[4] = {false, false, false, false};
	NewKey nk;
	char *details;
	int scopes = PG_ARGISNULL(4) ? LATTICE_SCOPE_INGEST : key_scopes_arg(PG_GETARG_ARRAYTYPE_P(4));

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.api_key_create: user id must not be null")));
	user_id = PG_GETARG_UUID_P(0);
	check_key_owner("lattice.api_key_create", user_id);
	name = lattice_clean_label(PG_ARGISNULL(1) ? cstring_to_text("") : PG_GETARG_TEXT_PP(1),
							   API_KEY_NAME_MAX_CHARS, "key name");
	if (!PG_ARGISNULL(2) && PG_GETARG_TIMESTAMPTZ(2) <= lattice_clock_now())
		lattice_raise_http(400, "invalid_expiry", "expires_at must be in the future", NULL, NULL);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.api_key_create: must return a record");

	key_insert(user_id, name, PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2), PG_ARGISNULL(2), NULL,
			   scopes, &nk);
	details = psprintf("{\"prefix\": \"%s\", \"scopes\": \"%s\"}", nk.prefix,
					   lattice_scopes_text(scopes));
	lattice_audit("key.created", user_id, lattice_uuid_text(&nk.id), details,
				  PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3));

	values[0] = UUIDPGetDatum(&nk.id);
	values[1] = CStringGetTextDatum(nk.key);
	values[2] = CStringGetTextDatum(nk.prefix);
	values[3] = TimestampTzGetDatum(nk.created_at);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * lattice.api_key_rotate(key_id uuid, grace_seconds integer, req jsonb)
 *   -> (id, name, key, prefix, created_at, old_key_expires_at)
 *
 * A new key with the same name; the old one keeps working for grace_seconds
 * (default 24 h, 0 to 30 days; never longer than it would have anyway).
 * Only the current tenant's own live keys rotate.
 */
PG_FUNCTION_INFO_V1(lattice_api_key_rotate);
Datum
lattice_api_key_rotate(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;
	pg_uuid_t *key_id;
	int64 grace = PG_ARGISNULL(1) ? LATTICE_API_KEY_GRACE_DEFAULT : PG_GETARG_INT32(1);
	TimestampTz now = lattice_clock_now();
	TimestampTz old_expires;
	TupleDesc desc;
	Datum values[6];
	bool nulls[6] = {false, false, false, false, false, false};
	char *name;
	NewKey nk;
	bool isnull;
	char details[128];
	int scopes;
	LatticeRoleSwitch sw;

	if (!lattice_get_tenant(&tenant))
		lattice_raise_http(401, "missing_credentials", "authentication required", NULL, NULL);
	if (PG_ARGISNULL(0))
		lattice_raise_http(404, "not_found", "no such key", NULL, NULL);
	key_id = PG_GETARG_UUID_P(0);
	if (grace < 0 || grace > LATTICE_API_KEY_GRACE_MAX)
		lattice_raise_http(400, "invalid_grace",
						   psprintf("grace_seconds must be 0 to %d", LATTICE_API_KEY_GRACE_MAX), NULL,
						   NULL);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.api_key_rotate: must return a record");

	old_expires = now + grace * USECS_PER_SEC;
	lattice_as_tenant_role(&tenant, &sw);
	lattice_spi_connect("lattice.api_key_rotate");
	if (SPI_execute_with_args("SELECT name, revoked_at, expires_at, scopes FROM lattice.api_keys"
							  " WHERE id = $1 AND user_id = $2 FOR UPDATE",
							  2, (Oid[]) {UUIDOID, UUIDOID},
							  (Datum[]) {UUIDPGetDatum(key_id), UUIDPGetDatum(&tenant)}, NULL, false,
							  1) != SPI_OK_SELECT)
		elog(ERROR, "lattice.api_key_rotate: lookup failed");
	if (SPI_processed != 1)
		lattice_raise_http(404, "not_found", "no such key", NULL, NULL);
	name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	name = strcpy(SPI_palloc(strlen(name) + 1), name);
	scopes = key_scopes_of(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 4, &isnull));
	SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull)
		lattice_raise_http(409, "key_revoked", "a revoked key cannot be rotated", NULL, NULL);
	{
		Datum d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);

		if (!isnull && DatumGetTimestampTz(d) <= now)
			lattice_raise_http(409, "key_expired", "an expired key cannot be rotated", NULL, NULL);
		if (!isnull && DatumGetTimestampTz(d) < old_expires)
			old_expires = DatumGetTimestampTz(d);
	}
	if (SPI_execute_with_args(
			"UPDATE lattice.api_keys SET expires_at = $2 WHERE user_id = $3 AND id = $1", 3,
			(Oid[]) {UUIDOID, TIMESTAMPTZOID, UUIDOID},
			(Datum[]) {UUIDPGetDatum(key_id), TimestampTzGetDatum(old_expires), UUIDPGetDatum(&tenant)},
			NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice.api_key_rotate: update failed");
	SPI_finish();
	lattice_restore_role(&sw);

	key_insert(&tenant, name, (Datum) 0, true, key_id, scopes, &nk);
	snprintf(details, sizeof(details), "{\"new_key_id\": \"%s\", \"grace_seconds\": " INT64_FORMAT "}",
			 lattice_uuid_text(&nk.id), grace);
	lattice_audit("key.rotated", &tenant, lattice_uuid_text(key_id), details,
				  PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2));

	values[0] = UUIDPGetDatum(&nk.id);
	values[1] = CStringGetTextDatum(name);
	values[2] = CStringGetTextDatum(nk.key);
	values[3] = CStringGetTextDatum(nk.prefix);
	values[4] = TimestampTzGetDatum(nk.created_at);
	values[5] = TimestampTzGetDatum(old_expires);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
