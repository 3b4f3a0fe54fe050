/*
 * ratelimit_usage.c
 *		Rolls tenants' hourly usage from shared memory into
 *		lattice.usage_hourly: one row per tenant, class and subject (the
 *		service, for ingest) per interval with activity, never one per
 *		request.
 *
 * Each entry remembers how much of its hour is already written
 * (flushed_allowed, flushed_refused); a roll-up takes the difference under
 * the lock, marks it written and adds it to the row afterwards.  Adding
 * deltas keeps the table right across server restarts, when the counters
 * start again from zero.  A roll-up that fails loses its deltas (at most one
 * interval of usage); the counters themselves are unaffected.
 *
 * The background worker (worker.c) runs the roll-up every
 * lattice.rate_usage_interval seconds; lattice.rate_flush_usage() runs it on
 * demand (ratelimit_admin.c).
 */
#include "ratelimit.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/* One (tenant, class, subject, hour) delta taken from the table for writing. */
typedef struct UsageDelta
{
	RateKey key; /* the entry it came from */
	pg_uuid_t user_id;
	const char *klass; /* a static string of rate_kind_class() */
	char subject[RATE_LABEL_LEN];
	int64 hour;
	int64 allowed;
	int64 refused;
} UsageDelta;

static void
rate_delta_of(const RateEntry *e, const char *klass, int64 hour, int64 allowed, int64 refused,
			  UsageDelta *d)
{
	d->key = e->key;
	d->user_id = e->tenant;
	d->klass = klass;
	if (e->key.kind == RATE_KIND_INGEST)
		strlcpy(d->subject, e->label, sizeof(d->subject));
	else
		d->subject[0] = '\0';
	d->hour = hour;
	d->allowed = allowed;
	d->refused = refused;
}

/* Takes every tenant's unwritten usage of every class and marks it written. */
static int
rate_take_deltas(UsageDelta **out)
{
	HASH_SEQ_STATUS seq;
	RateEntry *e;
	long cap;
	int n = 0;
	UsageDelta *d;

	LWLockAcquire(rate_shared->lock, LW_EXCLUSIVE);
	cap = 2 * Max(hash_get_num_entries(rate_hash), 1);
	d = palloc(sizeof(UsageDelta) * cap);
	hash_seq_init(&seq, rate_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		const char *klass = rate_kind_class(e->key.kind);

		if (klass == NULL || !e->has_tenant)
			continue;
		if (e->prev_dirty && n < cap)
		{
			rate_delta_of(e, klass, e->prev_hour, e->prev_allowed, e->prev_refused, &d[n++]);
			e->prev_dirty = false;
		}
		if ((e->allowed != e->flushed_allowed || e->refused != e->flushed_refused) && n < cap)
		{
			rate_delta_of(e, klass, e->hour, e->allowed - e->flushed_allowed,
						  e->refused - e->flushed_refused, &d[n++]);
			e->flushed_allowed = e->allowed;
			e->flushed_refused = e->refused;
		}
	}
	LWLockRelease(rate_shared->lock);
	*out = d;
	return n;
}

/*
 * Gives back the deltas of tenants the roll-up could not see (a user not yet
 * committed, or gone), so a later roll-up writes them if the user appears.
 */
static void
rate_give_back(const UsageDelta *d)
{
	RateEntry *e;

	LWLockAcquire(rate_shared->lock, LW_EXCLUSIVE);
	e = hash_search(rate_hash, &d->key, HASH_FIND, NULL);
	if (e && e->hour == d->hour)
	{
		e->flushed_allowed -= d->allowed;
		e->flushed_refused -= d->refused;
	}
	else if (e && !e->prev_dirty)
	{
		e->prev_hour = d->hour;
		e->prev_allowed = d->allowed;
		e->prev_refused = d->refused;
		e->prev_dirty = true;
	}
	LWLockRelease(rate_shared->lock);
}

static int
uuid_order(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(pg_uuid_t));
}

/*
 * Adds every tenant's unwritten usage to lattice.usage_hourly.  The caller
 * has SPI connected inside a transaction and runs as a role that may write
 * the table (the worker's superuser, or the owner through
 * SECURITY DEFINER).  Returns the rows written.
 */
int64
rate_flush_usage(void)
{
	UsageDelta *d;
	int n = rate_take_deltas(&d);
	Datum *users;
	Datum *classes;
	Datum *subjects;
	Datum *hours;
	Datum *allowed;
	Datum *refused;
	Oid argtypes[6] = {UUIDARRAYOID,		TEXTARRAYOID, TEXTARRAYOID,
					   TIMESTAMPTZARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
	Datum args[6];
	int ret;
	pg_uuid_t *known;
	int nknown;
	int kept = 0;

	if (n == 0)
		return 0;
	users = palloc(sizeof(Datum) * n);
	classes = palloc(sizeof(Datum) * n);
	subjects = palloc(sizeof(Datum) * n);
	hours = palloc(sizeof(Datum) * n);
	allowed = palloc(sizeof(Datum) * n);
	refused = palloc(sizeof(Datum) * n);

	/*
	 * The tenants that exist (a delta of one not yet committed, or gone,
	 * goes back), then one INSERT of the others.  Two plain statements that
	 * Citus runs as they are: a look-up by the distribution column, and an
	 * INSERT ... SELECT whose ON CONFLICT takes its rows to the shards as
	 * an INSERT.
	 */
	for (int i = 0; i < n; i++)
		users[i] = UUIDPGetDatum(&d[i].user_id);
	args[0] = PointerGetDatum(construct_array(users, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
	ret = SPI_execute_with_args(
		"SELECT u.id FROM lattice.users u WHERE u.id OPERATOR(pg_catalog.=) ANY ($1)", 1, argtypes, args,
		NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "lattice: usage roll-up: reading the accounts failed: %s",
			 SPI_result_code_string(ret));
	nknown = (int) SPI_processed;
	known = palloc(sizeof(pg_uuid_t) * Max(nknown, 1));
	for (int r = 0; r < nknown; r++)
	{
		bool isnull;

		memcpy(&known[r],
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
	}
	qsort(known, nknown, sizeof(pg_uuid_t), uuid_order);

	for (int i = 0; i < n; i++)
	{
		if (bsearch(&d[i].user_id, known, nknown, sizeof(pg_uuid_t), uuid_order) == NULL)
		{
			rate_give_back(&d[i]);
			continue;
		}
		users[kept] = UUIDPGetDatum(&d[i].user_id);
		classes[kept] = CStringGetTextDatum(d[i].klass);
		subjects[kept] = CStringGetTextDatum(d[i].subject);
		hours[kept] = TimestampTzGetDatum(d[i].hour * USECS_PER_HOUR);
		allowed[kept] = Int64GetDatum(d[i].allowed);
		refused[kept] = Int64GetDatum(d[i].refused);
		kept++;
	}
	if (kept == 0)
		return 0;
	args[0] = PointerGetDatum(construct_array(users, kept, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
	args[1] = PointerGetDatum(construct_array(classes, kept, TEXTOID, -1, false, TYPALIGN_INT));
	args[2] = PointerGetDatum(construct_array(subjects, kept, TEXTOID, -1, false, TYPALIGN_INT));
	args[3] = PointerGetDatum(construct_array(hours, kept, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	args[4] = PointerGetDatum(construct_array(allowed, kept, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	args[5] = PointerGetDatum(construct_array(refused, kept, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	ret = SPI_execute_with_args(
		"INSERT INTO lattice.usage_hourly AS h (user_id, class, subject, hour, requests, refused, updated_at)"
		" SELECT x.user_id, x.class, x.subject, x.hour, x.requests, x.refused, pg_catalog.now()"
		"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		"                   pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6))"
		"        AS x(user_id, class, subject, hour, requests, refused)"
		" ON CONFLICT (user_id, class, subject, hour) DO UPDATE"
		"    SET requests = h.requests OPERATOR(pg_catalog.+) excluded.requests,"
		"        refused = h.refused OPERATOR(pg_catalog.+) excluded.refused,"
		"        updated_at = excluded.updated_at",
		6, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "lattice: usage roll-up: insert failed: %s", SPI_result_code_string(ret));
	return kept;
}
