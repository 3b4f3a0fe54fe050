/*
 * lattice.h
 *		Shared declarations of the lattice extension.
 *
 * Each concern has its own file in src/: tenant.c holds the transaction's
 * tenant, the others build on it.  Functions exported to SQL are declared
 * with PG_FUNCTION_INFO_V1 next to their definitions.
 */
#ifndef LATTICE_H
#define LATTICE_H

#include "postgres.h"
#include "datatype/timestamp.h"
#include "utils/uuid.h"

/* tenant.c: the authenticated tenant of the current transaction */
extern void lattice_tenant_init(void);
extern void lattice_set_tenant(const pg_uuid_t *user_id);
extern bool lattice_get_tenant(pg_uuid_t *user_id);
extern void lattice_clear_tenant(void);

typedef struct LatticeRoleSwitch
{
	Oid			userid;
	int			sec_context;
	bool		switched;
} LatticeRoleSwitch;
extern void lattice_as_tenant_role(const pg_uuid_t *user_id, LatticeRoleSwitch *sw);
extern void lattice_restore_role(const LatticeRoleSwitch *sw);
extern Oid	lattice_schema_owner(void);

/* tenant_token.c: the tenant handed to the workers of a Citus cluster */
extern void lattice_tenant_token_init(void);
extern void lattice_tenant_token_issue(const pg_uuid_t *tenant);
extern void lattice_tenant_token_issue_as(const pg_uuid_t *tenant, bool deleting);
extern bool lattice_tenant_token_deleting(void);
extern bool lattice_tenant_token_verify(pg_uuid_t *tenant);
extern void lattice_tenant_token_forget(void);
extern bool lattice_tenant_token_active(void);

/* secrets.c: an SPI plan prepared once per backend (needs executor/spi.h) */
struct _SPI_plan;
extern struct _SPI_plan *lattice_spi_prepare_kept(struct _SPI_plan **cache, const char *sql,
												  int nargs, Oid *types);

/* http.c: raise an error the shim turns into an HTTP answer (PTnnn SQLSTATE) */
extern void lattice_raise_http(int status, const char *code, const char *message,
							   const char *details_json, const char *headers_json) pg_attribute_noreturn();

/* billing_signature.c: Stripe's signature scheme, for webhooks both ways */
extern char *lattice_signature_header(const char *secret, size_t secret_len,
									  const char *payload, size_t payload_len, TimestampTz at);

/* alert_webhook.c: the settings of alerts and their webhooks */
extern void lattice_alert_init(void);
extern int	lattice_alert_interval;		/* seconds, 0: the worker does not tick */

/* ratelimit.c: counters in shared memory */
typedef struct LatticeRateResult
{
	bool		allowed;
	int64		limit;			/* requests per window */
	int64		remaining;
	int64		reset_seconds;	/* until the window is whole again */
	int64		retry_after_seconds;	/* 0 when allowed */
	int64		period_seconds; /* the window the limit counts over */
} LatticeRateResult;

extern void lattice_rate_init(void);

/* The quota classes authentication counts in (ingest counts per service) */
typedef enum LatticeQuotaClass
{
	LATTICE_QUOTA_API,			/* API key or bearer token, not ingest */
	LATTICE_QUOTA_DASHBOARD		/* session cookie */
} LatticeQuotaClass;

/*
 * Checks (and counts) one request of a tenant against its plan's quota of
 * the class; raises PT429 rate_limited with Retry-After when refused.
 * Called by authentication right after the credential is verified.
 * lattice_rate_enforce_tenant() is the api class.
 */
extern void lattice_rate_enforce_account(LatticeQuotaClass klass, const pg_uuid_t *user_id,
										 LatticeRateResult *out);
extern void lattice_rate_enforce_tenant(const pg_uuid_t *user_id, LatticeRateResult *out);

/*
 * Counts one event for (scope, key) against limit events per period_seconds
 * and says whether it is allowed; never raises a refusal (it raises only when
 * lattice is not in shared_preload_libraries).  Used for per-address limits
 * and login brute-force limits (scope e.g. "login_email", "addr_signup").
 */
extern bool lattice_rate_check(const char *scope, const char *key, int64 limit,
							   int64 period_seconds, LatticeRateResult *out);

/*
 * The rate headers of one answer as a JSON object text (RateLimit-*,
 * X-RateLimit-*, and Retry-After when refused), palloc'd.
 */
extern char *lattice_rate_headers_json(const LatticeRateResult *result);

/*
 * The result of the last enforce call of this transaction (tenant or
 * address), behind lattice.rate_headers(); false when there was none.
 */
extern bool lattice_rate_last_result(LatticeRateResult *out);

/* ingest_hist.c: the q-quantile of a latency histogram; false when empty */
struct ArrayType;
extern bool lattice_hist_quantile(struct ArrayType *h, double q, const char *fn, double *out);

/* deferred.c: the queue of deferred identity writes (shared when preloaded) */
extern void lattice_deferred_init(void);
extern int	lattice_deferred_flush(void);

/* billing_settings.c: billing GUCs */
extern void lattice_billing_init(void);

/* true when lattice is loaded through shared_preload_libraries */
extern bool lattice_preloaded;

#endif							/* LATTICE_H */
