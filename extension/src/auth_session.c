/*
 * auth_session.c
 *		Dashboard sessions: random tokens in a cookie, stored hashed, with a
 *		sliding idle expiry under an absolute cap, and CSRF double-submit.
 *
 * The token is 32 bytes of libsodium randomness (base64url); the table keeps
 * only its BLAKE2b-256 (unkeyed: 256 random bits need no pepper, and lookup
 * by hash then needs no secret).  The CSRF token is BLAKE2b keyed with the
 * session token, so it is bound to the session and cannot be forged without
 * the HttpOnly cookie; an unsafe request must echo it in X-CSRF-Token and
 * carry it in the lattice_csrf cookie (double submit), both compared in
 * constant time.  last_seen_at moves at most once a minute, and never in a
 * read-only transaction (deferred, as for API keys).
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/inet.h"
#include "utils/timestamp.h"

#define SESSION_TOKEN_BYTES 32
#define SESSION_TOKEN_LEN	43

static const char csrf_context[] = "lattice csrf v1";

static bool
token_well_formed(const char *t, size_t len)
{
	size_t i;

	if (len != SESSION_TOKEN_LEN)
		return false;
	for (i = 0; i < len; i++)
		if (!((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= 'a' && t[i] <= 'z') ||
			  (t[i] >= '0' && t[i] <= '9') || t[i] == '-' || t[i] == '_'))
			return false;
	return true;
}

static char *
csrf_for(const char *token)
{
	uint8 mac[32];

	crypto_generichash(mac, sizeof(mac), (const unsigned char *) csrf_context, strlen(csrf_context),
					   (const unsigned char *) token, strlen(token));
	return lattice_b64url_encode(mac, sizeof(mac));
}

static bool
safe_method(const char *method)
{
	return method != NULL &&
		(strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0 || strcmp(method, "OPTIONS") == 0);
}

static bool
equal_ct(const char *a, const char *b)
{
	size_t len = strlen(a);

	return len == strlen(b) && sodium_memcmp(a, b, len) == 0;
}

/*
 * Verifies a session cookie (and, for unsafe methods, the CSRF pair); raises
 * 401 invalid_session / session_expired or 403 csrf_failed.
 */
void
lattice_session_verify_cstr(const char *token, Jsonb *req, pg_uuid_t *user_id, pg_uuid_t *session_id,
							bool *stale)
{
	static SPIPlanPtr lookup_plan = NULL;
	static SPIPlanPtr plan = NULL;
	TimestampTz now = lattice_clock_now();
	bool found = false;
	bool revoked = false;
	bool expired = false;

	*stale = false;
	if (!token_well_formed(token, strlen(token)))
		lattice_raise_http(401, "invalid_session", "the session is not valid", NULL, NULL);

	/* the token's hash names the account and the session; then that row */
	lattice_spi_connect("lattice.authenticate");
	lattice_spi_prepare_kept(
		&lookup_plan, "SELECT user_id, session_id FROM lattice.session_tokens WHERE token_hash = $1", 1,
		(Oid[]) {BYTEAOID});
	if (SPI_execute_plan(lookup_plan,
						 (Datum[]) {PointerGetDatum(lattice_secret_hash(token, strlen(token)))}, NULL,
						 true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: session lookup failed");
	if (SPI_processed == 1)
	{
		bool isnull;

		memcpy(user_id,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
		memcpy(session_id,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull)),
			   sizeof(pg_uuid_t));
		lattice_spi_prepare_kept(&plan,
								 "SELECT revoked_at, idle_expires_at, expires_at, last_seen_at"
								 "  FROM lattice.sessions WHERE user_id = $1 AND id = $2",
								 2, (Oid[]) {UUIDOID, UUIDOID});
		if (SPI_execute_plan(plan, (Datum[]) {UUIDPGetDatum(user_id), UUIDPGetDatum(session_id)}, NULL,
							 true, 1) != SPI_OK_SELECT)
			elog(ERROR, "lattice: session lookup failed");
		found = SPI_processed == 1;
	}
	if (found)
	{
		HeapTuple tup = SPI_tuptable->vals[0];
		TupleDesc desc = SPI_tuptable->tupdesc;
		bool isnull;

		SPI_getbinval(tup, desc, 1, &isnull);
		revoked = !isnull;
		expired = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull)) <= now ||
			DatumGetTimestampTz(SPI_getbinval(tup, desc, 3, &isnull)) <= now;
		*stale = DatumGetTimestampTz(SPI_getbinval(tup, desc, 4, &isnull)) < now - USECS_PER_MINUTE;
	}
	if (!found || revoked)
		lattice_raise_http(401, "invalid_session", "the session is not valid", NULL, NULL);
	if (expired)
		lattice_raise_http(401, "session_expired", "the session has expired", NULL, NULL);

	if (!safe_method(lattice_req_text(req, "method")))
	{
		char *cookie = lattice_req_text(req, "csrf_cookie");
		char *header = lattice_req_text(req, "csrf_header");
		char *expected = csrf_for(token);

		if (cookie == NULL || header == NULL || !equal_ct(header, cookie) || !equal_ct(header, expected))
			lattice_raise_http(403, "csrf_failed",
							   "a state-changing request needs the X-CSRF-Token header", NULL, NULL);
	}

	/* the caller records the use (lattice_credential_touch) once the tenant is set */
	SPI_finish();
}

/*
 * lattice.session_create(req jsonb)
 *   -> (id uuid, token text, csrf text, expires_at timestamptz)
 *
 * Opens a session for the current tenant, only right after a password
 * proved it in this transaction (login or sign-up), and its second factor
 * when it has one on: an API key, a token or a link cannot be traded for a
 * cookie.
 */
PG_FUNCTION_INFO_V1(lattice_session_create);
Datum
lattice_session_create(PG_FUNCTION_ARGS)
{
	Jsonb *req = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	pg_uuid_t tenant;
	char *token;
	char *addr;
	char *agent;
	TimestampTz now = lattice_clock_now();
	TimestampTz idle = now + (int64) LATTICE_SESSION_IDLE_SECONDS * USECS_PER_SEC;
	TimestampTz cap = now + (int64) LATTICE_SESSION_MAX_SECONDS * USECS_PER_SEC;
	Datum values[7];
	char nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Datum out[4];
	bool out_nulls[4] = {false, false, false, false};
	TupleDesc desc;
	bool isnull;
	pg_uuid_t id;
	LatticeRoleSwitch sw;

	if (!lattice_get_tenant(&tenant) || lattice_auth_method() != LATTICE_AUTH_PASSWORD)
		ereport(
			ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("lattice.session_create: permission denied"),
			 errdetail(
				 "A session opens only after a password login or sign-up in the same transaction.")));
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.session_create: must return a record");
	lattice_mfa_gate(&tenant);

	token = lattice_random_token(SESSION_TOKEN_BYTES);
	addr = lattice_req_text(req, "client_addr");
	agent = lattice_req_text(req, "user_agent");
	values[0] = UUIDPGetDatum(&tenant);
	values[1] = PointerGetDatum(lattice_secret_hash(token, strlen(token)));
	values[2] = TimestampTzGetDatum(now);
	values[3] = TimestampTzGetDatum(idle);
	values[4] = TimestampTzGetDatum(cap);
	if (addr)
		values[5] = CStringGetTextDatum(addr);
	else
		nulls[5] = 'n';
	if (agent) /* bounded, cut on a character boundary */
		agent[pg_mbcliplen(agent, strlen(agent), 512)] = '\0';
	if (agent)
		values[6] = CStringGetTextDatum(agent);
	else
		nulls[6] = 'n';

	lattice_as_tenant_role(&tenant, &sw);
	lattice_spi_connect("lattice.session_create");
	if (SPI_execute_with_args(
			"INSERT INTO lattice.sessions (user_id, token_hash, created_at, last_seen_at,"
			" idle_expires_at, expires_at, client_addr, user_agent)"
			" VALUES ($1, $2, $3, $3, $4, $5, CAST($6 AS inet), $7) RETURNING id",
			7,
			(Oid[]) {UUIDOID, BYTEAOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID,
					 TEXTOID},
			values, nulls, false, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "lattice.session_create: insert failed");
	memcpy(&id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
		   sizeof(pg_uuid_t));
	lattice_restore_role(&sw); /* the look-up is the owner's */
	if (SPI_execute_with_args("INSERT INTO lattice.session_tokens (token_hash, user_id, session_id)"
							  " VALUES ($1, $2, $3)",
							  3, (Oid[]) {BYTEAOID, UUIDOID, UUIDOID},
							  (Datum[]) {values[1], values[0], UUIDPGetDatum(&id)}, NULL, false,
							  0) != SPI_OK_INSERT)
		elog(ERROR, "lattice.session_create: insert failed");
	SPI_finish();
	lattice_set_authenticated(&tenant, LATTICE_AUTH_PASSWORD, &id,
							  0); /* the session is the credential now */

	out[0] = UUIDPGetDatum(&id);
	out[1] = CStringGetTextDatum(token);
	out[2] = CStringGetTextDatum(csrf_for(token));
	out[3] = TimestampTzGetDatum(cap);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, out_nulls)));
}
