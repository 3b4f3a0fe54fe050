/*
 * ratelimit.h
 *		Internals shared by the rate-counter files (ratelimit*.c).
 *
 * ratelimit.c          shared memory, GUCs, the GCRA check, LRU eviction
 * ratelimit_enforce.c  tenant and address quotas, headers, SQL entry points
 * ratelimit_admin.c    the DBA's view, memory figures, the benchmark loop
 * ratelimit_usage.c    hourly usage roll-up into lattice.usage_hourly
 *
 * What the rest of the extension uses of them is in lattice.h.
 */
#ifndef LATTICE_RATELIMIT_H
#define LATTICE_RATELIMIT_H

#include "lattice.h"

#include "datatype/timestamp.h"
#include "lib/ilist.h"
#include "storage/lwlock.h"
#include "utils/hsearch.h"

/*
 * What a key counts.  The three quota classes of authenticated requests
 * (api, dashboard, ingest) are kinds of their own, so one class never
 * spends another's allowance.
 */
#define RATE_KIND_TENANT		 1 /* class api: id is the tenant's uuid */
#define RATE_KIND_SCOPED		 2 /* id is BLAKE2b-128(scope NUL key) */
#define RATE_KIND_BENCH			 3 /* lattice.rate_bench() keys */
#define RATE_KIND_DASHBOARD		 4 /* class dashboard: id is the tenant's uuid */
#define RATE_KIND_INGEST		 5 /* class ingest, one service: BLAKE2b-128(tenant, name) */
#define RATE_KIND_INGEST_ACCOUNT 6 /* the tenant-wide ingest ceiling: the tenant's uuid */

#define RATE_PERIOD_MAX_DAYS 366 /* the longest period lattice.rate_check counts over */
#define RATE_SCOPE_LEN		 16
#define RATE_LABEL_LEN		 64 /* an IPv6 address, a service name, a truncated key */

/* hash key: no padding, so HASH_BLOBS may compare the bytes */
typedef struct RateKey
{
	uint32 kind;
	uint8 id[16];
} RateKey;

typedef struct RateEntry
{
	RateKey key;	 /* hash key, must be first */
	dlist_node lru;	 /* head = most recently used */
	TimestampTz tat; /* GCRA theoretical arrival time */
	TimestampTz last_used;
	int64 limit; /* parameters of the last check */
	int64 period_us;
	int64 burst;
	/* usage of the current hour (real clock), for the view and roll-up */
	int64 hour; /* hours since 2000-01-01 */
	int64 allowed;
	int64 refused;
	int64 flushed_allowed; /* part of allowed already rolled up */
	int64 flushed_refused;
	/* what the previous hour left unflushed when the hour turned */
	int64 prev_hour;
	int64 prev_allowed;
	int64 prev_refused;
	bool prev_dirty;
	char scope[RATE_SCOPE_LEN];
	char label[RATE_LABEL_LEN];
	bool has_tenant; /* the class kinds: whose quota this is */
	pg_uuid_t tenant;
} RateEntry;

/*
 * One key a check counts against, with its limit.  A request may count
 * against several at once (a service and its tenant's ingest ceiling):
 * it is allowed only when every one allows it, and then counted in each.
 */
typedef struct RateCell
{
	RateKey key;
	const char *scope;		 /* kept in the entry, for the views */
	const char *label;		 /* NULL when none */
	const pg_uuid_t *tenant; /* NULL unless a class kind */
	int64 limit;
	int64 period_seconds;
	int64 burst;
} RateCell;

typedef struct RateShared
{
	LWLock *lock; /* guards the hash, the LRU list, every entry */
	dlist_head lru;
	int64 evictions;
} RateShared;

extern RateShared *rate_shared;
extern HTAB *rate_hash;

/* GUCs (ratelimit.c) */
extern int rate_table_size;
extern int rate_tenant_per_hour;
extern int rate_tenant_burst;
extern int rate_dashboard_burst;
extern int rate_ingest_burst;
extern int rate_signup_per_hour;
extern int rate_login_per_hour;
extern int rate_webhook_per_hour;
extern int rate_health_per_hour;
extern int rate_address_burst;
extern int rate_plan_cache_ms;
extern int rate_test_clock_offset;
extern int rate_usage_interval;
extern bool rate_limits_enabled;
extern char *rate_database;

extern void rate_require_shmem(const char *caller);
extern TimestampTz rate_now(void);
extern int64 rate_ceil_seconds(int64 usecs);
extern int rate_check_cells(const RateCell *cells, int ncells, LatticeRateResult *out);
extern void rate_check_key(const RateKey *key, const char *scope, const char *label, int64 limit,
						   int64 period_seconds, int64 burst, LatticeRateResult *out);
extern void rate_tenant_key(uint32 kind, const pg_uuid_t *tenant, RateKey *out);
extern void rate_service_key(const pg_uuid_t *tenant, const char *service, RateKey *out);
extern const char *rate_kind_class(uint32 kind);
extern void rate_scoped_key(const char *scope, const char *key, RateKey *out);
extern void rate_entry_state(const RateEntry *e, TimestampTz now, int64 *remaining,
							 int64 *reset_seconds);

/* ratelimit_usage.c */
extern int64 rate_flush_usage(void);

#endif /* LATTICE_RATELIMIT_H */
