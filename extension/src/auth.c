/*
 * auth.c
 *		lattice.authenticate(): the one entry point every API function calls
 *		first, and the writes that verification defers.
 *
 * It takes whatever credential the shim found in req (docs/http-contract.md):
 * api_key, then bearer, then session (+ CSRF for unsafe methods); verifies
 * it in C; sets the transaction's tenant (tenant.c); counts the request
 * against the tenant's quota (ratelimit.c); and returns the account id.  Or it
 * raises PT401/PT403 with a code that says why.
 *
 * What verification cannot write in its own transaction (a read-only GET,
 * or a refusal that rolls back) waits in deferred.c; an authentication in a
 * writing transaction writes what waits first.
 */
#include "lattice.h"
#include "identity.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

/* What authenticated this transaction (stamped with its local xid) */
static LatticeAuthMethod auth_method = LATTICE_AUTH_NONE;
static pg_uuid_t auth_credential;
static bool auth_has_credential = false;
static LocalTransactionId auth_lxid = InvalidLocalTransactionId;

void
lattice_auth_note(LatticeAuthMethod method, const pg_uuid_t *credential_id)
{
	auth_method = method;
	auth_has_credential = credential_id != NULL;
	if (credential_id)
		memcpy(&auth_credential, credential_id, sizeof(pg_uuid_t));
	auth_lxid = MyProc->lxid;
}

LatticeAuthMethod
lattice_auth_method(void)
{
	if (auth_lxid != MyProc->lxid || !lattice_get_tenant(NULL))
		return LATTICE_AUTH_NONE;
	return auth_method;
}

/* ---- the entry point ---- */

static bool
method_allowed(ArrayType *allowed, const char *method)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (allowed == NULL)
		return true;
	deconstruct_array(allowed, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i] && strcmp(TextDatumGetCString(elems[i]), method) == 0)
			return true;
	return false;
}

/*
 * lattice.authenticate(req jsonb, allowed text[] DEFAULT NULL) -> uuid
 *
 * allowed limits the credential kinds ('api_key', 'bearer', 'session'),
 * e.g. ingest takes API keys only; NULL takes all three.
 */
PG_FUNCTION_INFO_V1(lattice_authenticate);
Datum
lattice_authenticate(PG_FUNCTION_ARGS)
{
	Jsonb	   *req = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	ArrayType  *allowed = PG_ARGISNULL(1) ? NULL : PG_GETARG_ARRAYTYPE_P(1);
	char	   *api_key = lattice_req_text(req, "api_key");
	char	   *bearer = lattice_req_text(req, "bearer");
	char	   *session = lattice_req_text(req, "session");
	pg_uuid_t  *user_id = palloc(sizeof(pg_uuid_t));
	pg_uuid_t	credential;
	LatticeRateResult rate;

	lattice_deferred_flush();	/* deferred.c: what waits, if this transaction writes */

	if (api_key && method_allowed(allowed, "api_key"))
	{
		lattice_api_key_verify_cstr(api_key, req, user_id, &credential);
		lattice_set_tenant(user_id);
		lattice_auth_note(LATTICE_AUTH_API_KEY, &credential);
	}
	else if (bearer && method_allowed(allowed, "bearer"))
	{
		lattice_jwt_verify_cstr(bearer, user_id);
		lattice_set_tenant(user_id);
		lattice_auth_note(LATTICE_AUTH_BEARER, NULL);
	}
	else if (session && method_allowed(allowed, "session"))
	{
		lattice_session_verify_cstr(session, req, user_id, &credential);
		lattice_set_tenant(user_id);
		lattice_auth_note(LATTICE_AUTH_SESSION, &credential);
	}
	else if (api_key || bearer || session)
		lattice_raise_http(401, "credential_not_accepted",
						   "this endpoint does not accept that kind of credential", NULL, NULL);
	else
		lattice_raise_http(401, "missing_credentials",
						   "send an API key (X-Lattice-API-Key), a bearer token or a session cookie",
						   NULL, "{\"WWW-Authenticate\": \"Bearer\"}");

	lattice_rate_enforce_tenant(user_id, &rate);
	PG_RETURN_UUID_P(user_id);
}

/* lattice.current_auth_method() -> text: api_key, bearer, session, password or NULL */
PG_FUNCTION_INFO_V1(lattice_current_auth_method);
Datum
lattice_current_auth_method(PG_FUNCTION_ARGS)
{
	switch (lattice_auth_method())
	{
		case LATTICE_AUTH_API_KEY:
			PG_RETURN_TEXT_P(cstring_to_text("api_key"));
		case LATTICE_AUTH_BEARER:
			PG_RETURN_TEXT_P(cstring_to_text("bearer"));
		case LATTICE_AUTH_SESSION:
			PG_RETURN_TEXT_P(cstring_to_text("session"));
		case LATTICE_AUTH_PASSWORD:
			PG_RETURN_TEXT_P(cstring_to_text("password"));
		default:
			PG_RETURN_NULL();
	}
}

/* lattice.current_session_id() -> uuid: the session of this request, if any */
PG_FUNCTION_INFO_V1(lattice_current_session_id);
Datum
lattice_current_session_id(PG_FUNCTION_ARGS)
{
	LatticeAuthMethod m = lattice_auth_method();
	pg_uuid_t  *id;

	if ((m != LATTICE_AUTH_SESSION && m != LATTICE_AUTH_PASSWORD) || !auth_has_credential)
		PG_RETURN_NULL();
	id = palloc(sizeof(pg_uuid_t));
	memcpy(id, &auth_credential, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(id);
}
