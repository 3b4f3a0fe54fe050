/*
 * auth.c
 *		lattice.authenticate(): the one entry point every API function calls
 *		first, and what the transaction's credential is (current_*).
 *
 * It takes whatever credential the shim found in req (docs/http-contract.md):
 * api_key, then bearer, then session (+ CSRF for unsafe methods); verifies
 * it in C; sets the transaction's authenticated context (tenant.c); checks
 * that the credential may do what the route needs; counts the request in its
 * quota class (ratelimit_enforce.c); and returns the account id.  Or it raises
 * PT401 (no valid credential) or PT403 (insufficient_scope, csrf) with a
 * code that says why.
 *
 * What a route needs, named by every lattice_http function:
 *   ingest   a key or token with the ingest scope (counted per service by
 *            lattice.rate_enforce_ingest once the body names the service)
 *   read     a session, or a key or token with the read scope
 *   session  a dashboard session: managing keys, sessions, billing and the
 *            account is never done with a key or token
 *   any      any valid credential (who am I, trading one for a token)
 *
 * What verification cannot write in its own transaction (a read-only GET,
 * or a refusal that rolls back) waits in auth_deferred.c; an authentication
 * in a writing transaction writes what waits first.
 */
#include "common.h"
#include "auth.h"
#include "lattice.h"
#include "tenant.h"

#include "fmgr.h"
#include "utils/builtins.h"

typedef enum AuthNeed
{
	NEED_INGEST,
	NEED_READ,
	NEED_SESSION,
	NEED_ANY
} AuthNeed;

static AuthNeed
auth_need(text *need)
{
	char *s = text_to_cstring(need);

	if (strcmp(s, "ingest") == 0)
		return NEED_INGEST;
	if (strcmp(s, "read") == 0)
		return NEED_READ;
	if (strcmp(s, "session") == 0)
		return NEED_SESSION;
	if (strcmp(s, "any") == 0)
		return NEED_ANY;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("lattice.authenticate: unknown need \"%s\"", s),
			 errhint("Use ingest, read, session or any.")));
	return NEED_ANY; /* keep the compiler quiet */
}

/*
 * 403 insufficient_scope naming what was needed; audited (deferred: the
 * refusal rolls this transaction back).
 */
static void
refuse_scope(const pg_uuid_t *user_id, Jsonb *req, const char *needed, const char *message)
{
	lattice_defer_audit("auth.insufficient_scope", user_id, needed, req);
	lattice_raise_http(403, "insufficient_scope", message,
					   psprintf("{\"required_scope\": \"%s\"}", needed), NULL);
}

/* Whether the credential just verified may do what the route needs */
static void
auth_check_need(AuthNeed need, LatticeAuthMethod method, int scopes, const pg_uuid_t *user_id,
				Jsonb *req)
{
	bool person = method == LATTICE_AUTH_SESSION;

	switch (need)
	{
		case NEED_INGEST:
			if (person)
				refuse_scope(user_id, req, "ingest",
							 "ingest takes an API key with the ingest scope, not a dashboard session");
			if (!(scopes & LATTICE_SCOPE_INGEST))
				refuse_scope(user_id, req, "ingest", "this API key or token lacks the ingest scope");
			break;
		case NEED_READ:
			if (!person && !(scopes & LATTICE_SCOPE_READ))
				refuse_scope(user_id, req, "read", "this API key or token lacks the read scope");
			break;
		case NEED_SESSION:
			if (!person)
				refuse_scope(
					user_id, req, "session",
					"managing keys, sessions, billing and the account needs a dashboard session, never an API key or token");
			break;
		case NEED_ANY:
			break;
	}
}

/*
 * lattice.authenticate(req jsonb, need text) -> uuid
 *
 * need: ingest, read, session or any (see the top of this file).
 */
PG_FUNCTION_INFO_V1(lattice_authenticate);
Datum
lattice_authenticate(PG_FUNCTION_ARGS)
{
	Jsonb *req = PG_ARGISNULL(0) ? NULL : PG_GETARG_JSONB_P(0);
	AuthNeed need;
	char *api_key = lattice_req_text(req, "api_key");
	char *bearer = lattice_req_text(req, "bearer");
	char *session = lattice_req_text(req, "session");
	pg_uuid_t *user_id = palloc(sizeof(pg_uuid_t));
	pg_uuid_t credential;
	LatticeAuthMethod method;
	int scopes = 0;
	bool stale = false;
	LatticeRateResult rate;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.authenticate: need must not be null")));
	need = auth_need(PG_GETARG_TEXT_PP(1));

	/*
	 * auth_deferred.c: what waits, if this transaction writes.  Not on Citus,
	 * where those rows (other tenants') would be written over connections
	 * of another role than the request's; the roll-up worker writes them.
	 */
	if (!lattice_tenant_token_active())
		lattice_deferred_flush();

	/*
	 * An API key may come as a bearer credential too (OpenTelemetry
	 * exporters send Authorization: Bearer); its prefix tells it from a JWT.
	 */
	if (!api_key && bearer &&
		strncmp(bearer, LATTICE_API_KEY_PREFIX, strlen(LATTICE_API_KEY_PREFIX)) == 0)
	{
		api_key = bearer;
		bearer = NULL;
	}
	if (need == NEED_INGEST && !api_key && bearer)
		lattice_raise_http(401, "credential_not_accepted",
						   "ingest takes an API key (X-Lattice-API-Key), not a bearer token", NULL,
						   NULL);

	if (api_key)
	{
		lattice_api_key_verify_cstr(api_key, req, user_id, &credential, &scopes, &stale);
		method = LATTICE_AUTH_API_KEY;
	}
	else if (bearer)
	{
		lattice_jwt_verify_cstr(bearer, user_id, &scopes);
		method = LATTICE_AUTH_BEARER;
	}
	else if (session)
	{
		lattice_session_verify_cstr(session, req, user_id, &credential, &stale);
		method = LATTICE_AUTH_SESSION;
	}
	else
		lattice_raise_http(401, "missing_credentials",
						   "send an API key (X-Lattice-API-Key), a bearer token or a session cookie",
						   NULL, "{\"WWW-Authenticate\": \"Bearer\"}");

	lattice_set_authenticated(user_id, method, method == LATTICE_AUTH_BEARER ? NULL : &credential,
							  scopes);
	if (stale)
		lattice_credential_touch(method == LATTICE_AUTH_SESSION ? "session" : "api_key", user_id,
								 &credential);
	auth_check_need(need, method, scopes, user_id, req);

	/* ingest counts per service, once the body names it */
	if (need != NEED_INGEST)
		lattice_rate_enforce_account(method == LATTICE_AUTH_SESSION ? LATTICE_QUOTA_DASHBOARD :
																	  LATTICE_QUOTA_API,
									 user_id, &rate);
	PG_RETURN_UUID_P(user_id);
}

/* lattice.current_scopes() -> text[]: the scopes this request may use, NULL without one */
PG_FUNCTION_INFO_V1(lattice_current_scopes);
Datum
lattice_current_scopes(PG_FUNCTION_ARGS)
{
	if (lattice_auth_method() == LATTICE_AUTH_NONE)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(lattice_scopes_array(lattice_auth_scopes()));
}

/* lattice.current_auth_method() -> text: api_key, bearer, session, password, link or NULL */
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
		case LATTICE_AUTH_LINK:
			PG_RETURN_TEXT_P(cstring_to_text("link"));
		default:
			PG_RETURN_NULL();
	}
}

/* lattice.current_session_id() -> uuid: the session of this request, if any */
PG_FUNCTION_INFO_V1(lattice_current_session_id);
Datum
lattice_current_session_id(PG_FUNCTION_ARGS)
{
	const LatticeAuthContext *ctx = lattice_auth_context();
	pg_uuid_t *id;

	if (ctx == NULL || (ctx->method != LATTICE_AUTH_SESSION && ctx->method != LATTICE_AUTH_PASSWORD) ||
		!ctx->has_credential)
		PG_RETURN_NULL();
	id = palloc(sizeof(pg_uuid_t));
	memcpy(id, &ctx->credential, sizeof(pg_uuid_t));
	PG_RETURN_UUID_P(id);
}
