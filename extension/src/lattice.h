/*
 * lattice.h
 *		What the parts without a header of their own export: the rate
 *		counters' entry points, billing, alerts and histograms, and the
 *		initialisers _PG_init calls.
 *
 * The other concerns have their own header: common.h (the leaf helpers),
 * tenant.h, auth.h (identity), ratelimit.h (the counters' internals),
 * graph.h.  Functions exported to SQL are declared with PG_FUNCTION_INFO_V1
 * next to their definitions.  docs/design.md maps the files and the order in
 * which they depend on each other.
 */
#ifndef LATTICE_H
#define LATTICE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/uuid.h"

/* billing_signature.c: Stripe's signature scheme, for webhooks both ways */
extern char *lattice_signature_header(const char *secret, size_t secret_len, const char *payload,
									  size_t payload_len, TimestampTz at);

/* alert_webhook.c: the settings of alerts and their webhooks */
extern void lattice_alert_init(void);
extern int lattice_alert_interval; /* seconds, 0: the worker does not tick */

/* ratelimit.c: counters in shared memory */
typedef struct LatticeRateResult
{
	bool allowed;
	int64 limit; /* requests per window */
	int64 remaining;
	int64 reset_seconds;	   /* until the window is whole again */
	int64 retry_after_seconds; /* 0 when allowed */
	int64 period_seconds;	   /* the window the limit counts over */
} LatticeRateResult;

/* The counters in shared memory (ratelimit.c), the quotas (ratelimit_enforce.c) */
extern void lattice_rate_init(void);
extern void lattice_rate_enforce_init(void);

/* The quota classes authentication counts in (ingest counts per service) */
typedef enum LatticeQuotaClass
{
	LATTICE_QUOTA_API,		/* API key or bearer token, not ingest */
	LATTICE_QUOTA_DASHBOARD /* session cookie */
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
extern bool lattice_rate_check(const char *scope, const char *key, int64 limit, int64 period_seconds,
							   LatticeRateResult *out);

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

/* billing_settings.c: billing GUCs */
extern void lattice_billing_init(void);

/* worker.c: the background worker that runs the periodic jobs */
extern void lattice_worker_register(void);

#endif /* LATTICE_H */
