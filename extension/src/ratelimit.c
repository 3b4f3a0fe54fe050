/*
 * ratelimit.c
 *		Rate counters in shared memory: one GCRA cell per key.
 *
 * Each key (a tenant, or a scope plus a key such as a client address) holds
 * one theoretical arrival time (TAT).  With T = period / limit and a burst
 * of B requests, a request at `now` is allowed when
 *		max(TAT, now) + T - now <= B * T
 * and then moves TAT to max(TAT, now) + T.  That is exact (the B-th request
 * of a burst is allowed, the B+1-th refused), O(1), and needs no table write.
 *
 * Locking: one LWLock (tranche "lattice_rate") guards the hash table, the LRU
 * list and every entry.  A check holds it exclusively for a hash probe and a
 * few integer operations (well under a microsecond); partitioned locks would
 * not pay for themselves below many cores, and the LRU list needs one lock.
 *
 * Full table: the table is fixed at lattice.rate_table_size keys (set at
 * server start).  A new key when it is full evicts the least recently used
 * key, so service is never refused because of the table; the evicted key
 * starts again with a full allowance if it comes back (fail-open), and its
 * usage not yet rolled up is lost.
 *
 * Restart: counters live only in shared memory.  After a server restart every
 * key starts with a full allowance; hourly usage already rolled into
 * lattice.usage_hourly survives, the part of the last interval does not.
 *
 * Without shared_preload_libraries there is no shared memory: every function
 * that needs counters raises an error naming the setting.
 */
#include "ratelimit.h"

#include <sodium.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

RateShared *rate_shared = NULL;
HTAB *rate_hash = NULL;

int rate_table_size = 65536;
int rate_tenant_per_hour = 1000;
int rate_tenant_burst = 0;
int rate_dashboard_burst = 600;
int rate_ingest_burst = 120;
int rate_signup_per_hour = 20;
int rate_login_per_hour = 100;
int rate_webhook_per_hour = 3600;
int rate_health_per_hour = 3600;
int rate_address_burst = 0;
int rate_plan_cache_ms = 10000;
int rate_test_clock_offset = 0;
int rate_usage_interval = 60;
bool rate_limits_enabled = true;
char *rate_database = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
rate_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(RateShared)),
					hash_estimate_size(rate_table_size, sizeof(RateEntry)));
}

static void
rate_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(rate_shmem_size());
	RequestNamedLWLockTranche("lattice_rate", 1);
}

static void
rate_shmem_startup(void)
{
	HASHCTL info;
	bool found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	rate_shared = ShmemInitStruct("lattice rate state", sizeof(RateShared), &found);
	if (!found)
	{
		rate_shared->lock = &(GetNamedLWLockTranche("lattice_rate"))->lock;
		dlist_init(&rate_shared->lru);
		rate_shared->evictions = 0;
	}
	info.keysize = sizeof(RateKey);
	info.entrysize = sizeof(RateEntry);
	/* every entry allocated up front: a full table never asks for more */
	rate_hash = ShmemInitHash("lattice rate counters", rate_table_size, rate_table_size, &info,
							  HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

static void
rate_define_gucs(void)
{
	/*
	 * Server-start settings exist only when preloaded: PostgreSQL refuses
	 * to define them in a backend that loads the library later.
	 */
	if (process_shared_preload_libraries_in_progress)
	{
		DefineCustomIntVariable(
			"lattice.rate_table_size",
			"Keys the shared rate-counter table holds (least recently used evicted beyond).", NULL,
			&rate_table_size, 65536, 64, 10 * 1000 * 1000, PGC_POSTMASTER, 0, NULL, NULL, NULL);
		DefineCustomStringVariable("lattice.rate_database",
								   "Database whose lattice.usage_hourly the roll-up worker writes.",
								   NULL, &rate_database, "lattice", PGC_POSTMASTER, 0, NULL, NULL, NULL);
	}
	DefineCustomBoolVariable(
		"lattice.rate_limits_enabled",
		"Whether tenant quotas are checked at all (off only to measure their cost, or in an emergency).",
		NULL, &rate_limits_enabled, true, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_tenant_per_hour",
							"Requests per hour of a tenant whose plan cannot be read.", NULL,
							&rate_tenant_per_hour, 1000, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_tenant_burst",
							"Requests a tenant may send at once; 0 means its whole hourly limit.", NULL,
							&rate_tenant_burst, 0, 0, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_dashboard_burst",
							"Dashboard requests (session cookie) an account may send at once.", NULL,
							&rate_dashboard_burst, 600, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable(
		"lattice.rate_ingest_burst",
		"Ingest requests one service may send at once (its account's ceiling: this times max_services).",
		NULL, &rate_ingest_burst, 120, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_signup_per_hour", "Sign-ups per client address per hour.",
							NULL, &rate_signup_per_hour, 20, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_login_per_hour", "Login attempts per client address per hour.",
							NULL, &rate_login_per_hour, 100, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_webhook_per_hour",
							"Webhook calls per client address per hour.", NULL, &rate_webhook_per_hour,
							3600, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_health_per_hour", "Health checks per client address per hour.",
							NULL, &rate_health_per_hour, 3600, 1, INT_MAX, PGC_SUSET, 0, NULL, NULL,
							NULL);
	DefineCustomIntVariable(
		"lattice.rate_address_burst",
		"Requests an address may send at once per route class; 0 means the class's hourly limit.", NULL,
		&rate_address_burst, 0, 0, INT_MAX, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_plan_cache_ms",
							"How long a backend reuses a tenant's plan limit before reading it again.",
							NULL, &rate_plan_cache_ms, 10000, 0, 3600 * 1000, PGC_SUSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.rate_test_clock_offset",
							"Tests only: seconds added to this backend's rate clock.", NULL,
							&rate_test_clock_offset, 0, -315360000, 315360000, PGC_SUSET,
							GUC_UNIT_S | GUC_NOT_IN_SAMPLE, NULL, NULL, NULL);
	DefineCustomIntVariable(
		"lattice.rate_usage_interval",
		"Seconds between roll-ups of hourly usage into lattice.usage_hourly; 0 disables the worker.",
		NULL, &rate_usage_interval, 60, 0, 3600, PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
}

void
lattice_rate_init(void)
{
	rate_define_gucs();

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = rate_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = rate_shmem_startup;
}

/* Raises the no-preload error for functions that need the counters. */
void
rate_require_shmem(const char *caller)
{
	if (rate_hash == NULL || rate_shared == NULL)
		ereport(
			ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("%s: rate counters need lattice in shared_preload_libraries", caller),
			 errhint(
				 "Add lattice to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* The rate clock: real time plus the superuser-only test offset. */
TimestampTz
rate_now(void)
{
	return GetCurrentTimestamp() + (int64) rate_test_clock_offset * USECS_PER_SEC;
}

int64
rate_ceil_seconds(int64 usecs)
{
	return usecs <= 0 ? 0 : (usecs + USECS_PER_SEC - 1) / USECS_PER_SEC;
}

/* A key of the given kind: BLAKE2b-128 of prefix then name */
static void
rate_hashed_key(uint32 kind, const void *prefix, size_t prefix_len, const char *name, RateKey *out)
{
	crypto_generichash_state st;

	memset(out, 0, sizeof(*out));
	out->kind = kind;
	crypto_generichash_init(&st, NULL, 0, sizeof(out->id));
	crypto_generichash_update(&st, prefix, prefix_len);
	crypto_generichash_update(&st, (const unsigned char *) name, strlen(name));
	crypto_generichash_final(&st, out->id, sizeof(out->id));
}

/* A scoped key: BLAKE2b-128 of scope NUL key, so any key length fits. */
void
rate_scoped_key(const char *scope, const char *key, RateKey *out)
{
	rate_hashed_key(RATE_KIND_SCOPED, scope, strlen(scope) + 1, key, out);
}

/* The key of a tenant's class counter (api, dashboard, ingest ceiling). */
void
rate_tenant_key(uint32 kind, const pg_uuid_t *tenant, RateKey *out)
{
	memset(out, 0, sizeof(*out));
	out->kind = kind;
	memcpy(out->id, tenant->data, sizeof(out->id));
}

/* The key of one service's ingest budget: BLAKE2b-128(tenant, name). */
void
rate_service_key(const pg_uuid_t *tenant, const char *service, RateKey *out)
{
	rate_hashed_key(RATE_KIND_INGEST, tenant->data, sizeof(tenant->data), service, out);
}

/* The quota class a kind counts, for usage; NULL when it is none. */
const char *
rate_kind_class(uint32 kind)
{
	switch (kind)
	{
		case RATE_KIND_TENANT:
			return "api";
		case RATE_KIND_DASHBOARD:
			return "dashboard";
		case RATE_KIND_INGEST:
			return "ingest";
		default:
			return NULL;
	}
}

static inline int64
rate_interval(int64 limit, int64 period_us)
{
	return Max(period_us / limit, 1);
}

/* Remaining allowance and seconds until it is whole, without counting. */
void
rate_entry_state(const RateEntry *e, TimestampTz now, int64 *remaining, int64 *reset_seconds)
{
	int64 t = rate_interval(e->limit, e->period_us);
	int64 backlog = Max(e->tat, now) - now;

	*remaining = Max((t * e->burst - backlog) / t, 0);
	*reset_seconds = rate_ceil_seconds(backlog);
}

/* Finds the key's entry or makes one, evicting the LRU key when full. */
static RateEntry *
rate_entry_get(const RateKey *key, bool *is_new)
{
	RateEntry *e;
	bool found;

	e = hash_search(rate_hash, key, HASH_FIND, NULL);
	if (e)
	{
		dlist_move_head(&rate_shared->lru, &e->lru);
		*is_new = false;
		return e;
	}
	if (hash_get_num_entries(rate_hash) >= rate_table_size && !dlist_is_empty(&rate_shared->lru))
	{
		/* cppcheck-suppress nullPointer ; offsetof-style container macro */
		RateEntry *victim = dlist_tail_element(RateEntry, lru, &rate_shared->lru);

		dlist_delete(&victim->lru);
		hash_search(rate_hash, &victim->key, HASH_REMOVE, NULL);
		rate_shared->evictions++;
	}
	e = hash_search(rate_hash, key, HASH_ENTER_NULL, &found);
	if (e == NULL)
		return NULL;
	memset((char *) e + sizeof(RateKey), 0, sizeof(RateEntry) - sizeof(RateKey));
	dlist_push_head(&rate_shared->lru, &e->lru);
	*is_new = true;
	return e;
}

/* Counts one request in the entry's hour, keeping the turned hour's rest. */
static inline void
rate_count(RateEntry *e, int64 hour, bool allowed)
{
	if (e->hour != hour)
	{
		int64 da = e->allowed - e->flushed_allowed;
		int64 dr = e->refused - e->flushed_refused;

		if (da != 0 || dr != 0)
		{
			e->prev_hour = e->hour;
			e->prev_allowed = da;
			e->prev_refused = dr;
			e->prev_dirty = true;
		}
		e->hour = hour;
		e->allowed = e->refused = e->flushed_allowed = e->flushed_refused = 0;
	}
	if (allowed)
		e->allowed++;
	else
		e->refused++;
}

/*
 * The GCRA step of one cell against its entry, without moving it: whether a
 * request now fits, and the figures of the answer either way.
 */
static bool
rate_cell_step(RateEntry *e, TimestampTz now, int64 t, int64 tau, LatticeRateResult *out)
{
	TimestampTz tat = Max(e->tat, now);
	int64 backlog = tat + t - now;

	if (backlog > tau)
	{
		out->allowed = false;
		out->remaining = 0;
		out->reset_seconds = rate_ceil_seconds(tat - now);
		out->retry_after_seconds = Max(rate_ceil_seconds(backlog - tau), 1);
		return false;
	}
	out->allowed = true;
	out->remaining = (tau - backlog) / t;
	out->reset_seconds = rate_ceil_seconds(backlog);
	out->retry_after_seconds = 0;
	return true;
}

/*
 * Checks and counts one request against every cell, under one lock hold:
 * allowed only when each cell allows it, and then each moves on; refused
 * otherwise, and then none does (a refusal by a tenant's ceiling costs its
 * service nothing).  Each cell counts the request, allowed or refused, in
 * its hour.  *out is the first cell's answer when allowed, else that of the
 * refusing cell with the longest wait; returns the index of that cell.
 * burst is clamped to [1, limit] so the tolerance never exceeds one period.
 */
#define RATE_CELLS_MAX 4

int
rate_check_cells(const RateCell *cells, int ncells, LatticeRateResult *out)
{
	TimestampTz real_now = GetCurrentTimestamp();
	TimestampTz now = real_now + (int64) rate_test_clock_offset * USECS_PER_SEC;
	RateEntry *entries[RATE_CELLS_MAX];
	int64 ts[RATE_CELLS_MAX];
	LatticeRateResult results[RATE_CELLS_MAX] = {0};
	bool allowed = true;
	int answer = 0;

	if (ncells < 1 || ncells > RATE_CELLS_MAX)
		elog(ERROR, "lattice: %d rate cells in one check", ncells);
	LWLockAcquire(rate_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < ncells; i++)
	{
		const RateCell *c = &cells[i];
		int64 period_us = c->period_seconds * USECS_PER_SEC;
		int64 t = rate_interval(c->limit, period_us);
		int64 burst = Min(Max(c->burst, 1), c->limit);
		bool is_new;
		RateEntry *e = rate_entry_get(&c->key, &is_new);

		ts[i] = t;
		entries[i] = e;
		results[i].limit = c->limit;
		results[i].period_seconds = c->period_seconds;
		if (e == NULL)
		{
			/* cannot happen with a preallocated table; never refuse for it */
			results[i].allowed = true;
			results[i].remaining = burst - 1;
			results[i].reset_seconds = rate_ceil_seconds(t);
			results[i].retry_after_seconds = 0;
			continue;
		}
		if (is_new)
		{
			e->tat = now;
			strlcpy(e->scope, c->scope, sizeof(e->scope));
			if (c->label)
				strlcpy(e->label, c->label, sizeof(e->label));
			if (c->tenant)
			{
				e->has_tenant = true;
				e->tenant = *c->tenant;
			}
		}
		else if ((e->limit != c->limit || e->period_us != period_us) && e->tat > now)
		{
			/* a changed limit (a new plan) keeps the requests already used */
			double used = (double) (e->tat - now) / rate_interval(e->limit, e->period_us);

			e->tat = now + (int64) (used * t);
		}
		e->limit = c->limit;
		e->period_us = period_us;
		e->burst = burst;
		e->last_used = now;
		if (!rate_cell_step(e, now, t, t * burst, &results[i]))
		{
			if (allowed || results[i].retry_after_seconds > results[answer].retry_after_seconds)
				answer = i;
			allowed = false;
		}
	}
	for (int i = 0; i < ncells; i++)
	{
		if (entries[i] == NULL)
			continue;
		if (allowed)
			entries[i]->tat = Max(entries[i]->tat, now) + ts[i];
		rate_count(entries[i], real_now / USECS_PER_HOUR, allowed);
	}
	LWLockRelease(rate_shared->lock);
	*out = results[answer];
	return answer;
}

/* Checks and counts one request for one key (no tenant). */
void
rate_check_key(const RateKey *key, const char *scope, const char *label, int64 limit,
			   int64 period_seconds, int64 burst, LatticeRateResult *out)
{
	RateCell cell;

	cell.key = *key;
	cell.scope = scope;
	cell.label = label;
	cell.tenant = NULL;
	cell.limit = limit;
	cell.period_seconds = period_seconds;
	cell.burst = burst;
	rate_check_cells(&cell, 1, out);
}

bool
lattice_rate_check(const char *scope, const char *key, int64 limit, int64 period_seconds,
				   LatticeRateResult *out)
{
	RateKey k;

	rate_require_shmem("lattice.rate_check");
	if (limit < 1 || period_seconds < 1 || period_seconds > RATE_PERIOD_MAX_DAYS * SECS_PER_DAY)
		ereport(
			ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg(
				 "lattice.rate_check: limit must be positive and the period between 1 second and %d days",
				 RATE_PERIOD_MAX_DAYS)));
	rate_scoped_key(scope, key, &k);
	rate_check_key(&k, scope, key, limit, period_seconds, limit, out);
	return out->allowed;
}
