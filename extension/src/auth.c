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
 * Deferred writes: a GET runs in a read-only transaction, and a refusal rolls
 * its transaction back, yet a key's last_used, a session's sliding expiry
 * and the audit row of a revoked key's use must be kept.  They wait in a small
 * backend-local queue and are written by the next authentication of this
 * backend in a writing transaction (the pool reuses backends, and a LOG line
 * is written at once for the revoked-key event).  The queue is emptied only
 * when that transaction commits.
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

/* ---- deferred writes ---- */

#define DEFER_MAX 256

typedef struct Deferred
{
	char		kind;			/* 'k' key touch, 's' session touch, 'a' audit */
	pg_uuid_t	id;				/* key or session; audit: the account */
	bool		has_id;
	TimestampTz at;
	char		action[48];
	char		target[40];
	char		client_addr[64];
	char		request_id[72];
} Deferred;

static Deferred *deferred = NULL;
static int	n_deferred = 0;
static int	n_flushed = 0;		/* written by the current transaction */
static bool callback_registered = false;

static void
deferred_xact_callback(XactEvent event, void *arg)
{
	if (n_flushed == 0)
		return;
	if (event == XACT_EVENT_COMMIT)
	{
		memmove(deferred, deferred + n_flushed, sizeof(Deferred) * (n_deferred - n_flushed));
		n_deferred -= n_flushed;
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		n_flushed = 0;
}

static Deferred *
defer_slot(void)
{
	if (deferred == NULL)
		deferred = MemoryContextAllocZero(TopMemoryContext, sizeof(Deferred) * DEFER_MAX);
	if (!callback_registered)
	{
		RegisterXactCallback(deferred_xact_callback, NULL);
		callback_registered = true;
	}
	if (n_deferred >= DEFER_MAX)
		return NULL;
	return &deferred[n_deferred++];
}

void
lattice_defer_touch(const char *what, const pg_uuid_t *id)
{
	char		kind = strcmp(what, "session") == 0 ? 's' : 'k';
	Deferred   *d;
	int			i;

	for (i = n_flushed; deferred && i < n_deferred; i++)
		if (deferred[i].kind == kind && memcmp(&deferred[i].id, id, sizeof(pg_uuid_t)) == 0)
		{
			deferred[i].at = lattice_clock_now();
			return;
		}
	if ((d = defer_slot()) == NULL)
		return;					/* a touch is only a hint: dropping one is harmless */
	memset(d, 0, sizeof(*d));
	d->kind = kind;
	d->id = *id;
	d->has_id = true;
	d->at = lattice_clock_now();
}

static void
copy_field(char *dst, size_t size, const char *src)
{
	if (src)
		strlcpy(dst, src, size);
	else
		dst[0] = '\0';
}

void
lattice_defer_audit(const char *action, const pg_uuid_t *user_id, const char *target, Jsonb *req)
{
	char	   *addr = lattice_req_text(req, "client_addr");
	char	   *request_id = lattice_req_text(req, "request_id");
	Deferred   *d;

	ereport(LOG,
			(errmsg("lattice audit: %s target=%s addr=%s request_id=%s", action,
					target ? target : "", addr ? addr : "", request_id ? request_id : "")));
	if ((d = defer_slot()) == NULL)
	{
		ereport(WARNING,
				(errmsg("lattice: deferred audit queue full, event kept in the server log only")));
		return;
	}
	memset(d, 0, sizeof(*d));
	d->kind = 'a';
	if (user_id)
	{
		d->id = *user_id;
		d->has_id = true;
	}
	d->at = lattice_clock_now();
	copy_field(d->action, sizeof(d->action), action);
	copy_field(d->target, sizeof(d->target), target);
	copy_field(d->client_addr, sizeof(d->client_addr), addr);
	copy_field(d->request_id, sizeof(d->request_id), request_id);
}

/* Writes the queue as the owner; emptied when this transaction commits */
static void
flush_deferred(void)
{
	int			i;

	if (n_deferred == n_flushed || lattice_xact_read_only())
		return;
	SPI_connect();
	for (i = n_flushed; i < n_deferred; i++)
	{
		Deferred   *d = &deferred[i];
		Datum		v[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
		int			rc;

		v[0] = UUIDPGetDatum(&d->id);
		v[1] = TimestampTzGetDatum(d->at);
		if (d->kind == 'k')
			rc = SPI_execute_with_args("UPDATE lattice.api_keys SET last_used = $2"
									   " WHERE id = $1 AND (last_used IS NULL OR last_used < $2)",
									   2, (Oid[]) {UUIDOID, TIMESTAMPTZOID}, v, NULL, false, 0);
		else if (d->kind == 's')
		{
			v[2] = Int32GetDatum(LATTICE_SESSION_IDLE_SECONDS);
			rc = SPI_execute_with_args("UPDATE lattice.sessions SET last_seen_at = $2,"
									   "   idle_expires_at = LEAST($2 + $3 * interval '1 second', expires_at)"
									   " WHERE id = $1 AND last_seen_at < $2 AND revoked_at IS NULL"
									   "   AND idle_expires_at > $2",
									   3, (Oid[]) {UUIDOID, TIMESTAMPTZOID, INT4OID}, v, NULL, false, 0);
		}
		else
		{
			if (!d->has_id)
				nulls[0] = 'n';
			v[2] = CStringGetTextDatum(d->action);
			v[3] = CStringGetTextDatum(d->target);
			v[4] = CStringGetTextDatum(d->client_addr);
			v[5] = CStringGetTextDatum(d->request_id);
			rc = SPI_execute_with_args("INSERT INTO lattice.audit_log"
									   " (user_id, at, action, target, client_addr, request_id, details)"
									   " VALUES ($1, $2, $3, NULLIF($4, ''), CAST(NULLIF($5, '') AS inet),"
									   "         NULLIF($6, ''), '{\"deferred\": true}')",
									   6, (Oid[]) {UUIDOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID},
									   v, nulls, false, 0);
		}
		if (rc < 0)
			elog(ERROR, "lattice: writing deferred identity state failed");
	}
	SPI_finish();
	n_flushed = n_deferred;
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

	flush_deferred();

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

/* lattice.flush_deferred() -> integer (entries written): this backend's queue, for tests */
PG_FUNCTION_INFO_V1(lattice_flush_deferred);
Datum
lattice_flush_deferred(PG_FUNCTION_ARGS)
{
	int			n = n_deferred - n_flushed;

	flush_deferred();
	PG_RETURN_INT32(n);
}
