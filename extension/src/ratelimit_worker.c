/*
 * ratelimit_worker.c
 *		Rolls tenants' hourly usage from shared memory into
 *		lattice.usage_hourly: one row write per tenant per interval with
 *		activity, never one per request.
 *
 * Each entry remembers how much of its hour is already written
 * (flushed_allowed, flushed_refused); a roll-up takes the difference under
 * the lock, marks it written and adds it to the row afterwards.  Adding
 * deltas keeps the table right across server restarts, when the counters
 * start again from zero.  A roll-up that fails loses its deltas (at most one
 * interval of usage); the counters themselves are unaffected.
 *
 * Each roll-up also writes the identity writes that wait (deferred.c).
 * The worker is registered when lattice is preloaded and
 * lattice.rate_usage_interval > 0.  It connects to lattice.rate_database
 * and does nothing while that database has no lattice extension.
 */
#include "ratelimit.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

PGDLLEXPORT void lattice_rate_worker_main(Datum main_arg);

void
rate_worker_register(void)
{
	BackgroundWorker worker;

	if (rate_usage_interval <= 0)
		return;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 60;
	strlcpy(worker.bgw_library_name, "lattice", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "lattice_rate_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "lattice usage roll-up", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "lattice usage roll-up", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* One (tenant, hour) delta taken from the table for writing. */
typedef struct UsageDelta
{
	pg_uuid_t	user_id;		/* with hour: the key of the written set */
	int64		hour;
	int64		allowed;
	int64		refused;
} UsageDelta;

/* Takes every tenant's unwritten usage and marks it written. */
static int
rate_take_deltas(UsageDelta **out)
{
	HASH_SEQ_STATUS seq;
	RateEntry  *e;
	long		cap;
	int			n = 0;
	UsageDelta *d;

	LWLockAcquire(rate_shared->lock, LW_EXCLUSIVE);
	cap = 2 * Max(hash_get_num_entries(rate_hash), 1);
	d = palloc(sizeof(UsageDelta) * cap);
	hash_seq_init(&seq, rate_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.kind != RATE_KIND_TENANT)
			continue;
		if (e->prev_dirty && n < cap)
		{
			memcpy(d[n].user_id.data, e->key.id, sizeof(d[n].user_id.data));
			d[n].hour = e->prev_hour;
			d[n].allowed = e->prev_allowed;
			d[n].refused = e->prev_refused;
			e->prev_dirty = false;
			n++;
		}
		if ((e->allowed != e->flushed_allowed || e->refused != e->flushed_refused) && n < cap)
		{
			memcpy(d[n].user_id.data, e->key.id, sizeof(d[n].user_id.data));
			d[n].hour = e->hour;
			d[n].allowed = e->allowed - e->flushed_allowed;
			d[n].refused = e->refused - e->flushed_refused;
			e->flushed_allowed = e->allowed;
			e->flushed_refused = e->refused;
			n++;
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
	RateKey		key;
	RateEntry  *e;

	memset(&key, 0, sizeof(key));
	key.kind = RATE_KIND_TENANT;
	memcpy(key.id, d->user_id.data, sizeof(key.id));
	LWLockAcquire(rate_shared->lock, LW_EXCLUSIVE);
	e = hash_search(rate_hash, &key, HASH_FIND, NULL);
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

/*
 * Adds every tenant's unwritten usage to lattice.usage_hourly in one
 * statement.  The caller has SPI connected inside a transaction and runs as a
 * role that may write the table (the worker's superuser, or the owner through
 * SECURITY DEFINER).  Returns the rows written.
 */
int64
rate_flush_usage(void)
{
	UsageDelta *d;
	int			n = rate_take_deltas(&d);
	Datum	   *users;
	Datum	   *hours;
	Datum	   *allowed;
	Datum	   *refused;
	Oid			argtypes[4] = {UUIDARRAYOID, TIMESTAMPTZARRAYOID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		args[4];
	int			ret;
	HTAB	   *written;
	HASHCTL		ctl;
	int64		rows;

	if (n == 0)
		return 0;
	users = palloc(sizeof(Datum) * n);
	hours = palloc(sizeof(Datum) * n);
	allowed = palloc(sizeof(Datum) * n);
	refused = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		users[i] = UUIDPGetDatum(&d[i].user_id);
		hours[i] = TimestampTzGetDatum(d[i].hour * USECS_PER_HOUR);
		allowed[i] = Int64GetDatum(d[i].allowed);
		refused[i] = Int64GetDatum(d[i].refused);
	}
	args[0] = PointerGetDatum(construct_array(users, n, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
	args[1] = PointerGetDatum(construct_array(hours, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[2] = PointerGetDatum(construct_array(allowed, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(refused, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	ret = SPI_execute_with_args(
		"INSERT INTO lattice.usage_hourly AS h (user_id, hour, requests, refused)"
		" SELECT x.user_id, x.hour, x.requests, x.refused"
		"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
		"                  pg_catalog.unnest($3), pg_catalog.unnest($4)) AS x(user_id, hour, requests, refused)"
		"  WHERE EXISTS (SELECT FROM lattice.users u WHERE u.id OPERATOR(pg_catalog.=) x.user_id)"
		" ON CONFLICT (user_id, hour) DO UPDATE"
		"    SET requests = h.requests OPERATOR(pg_catalog.+) excluded.requests,"
		"        refused = h.refused OPERATOR(pg_catalog.+) excluded.refused,"
		"        updated_at = pg_catalog.now()"
		" RETURNING h.user_id, h.hour",
		4, argtypes, args, NULL, false, 0);
	if (ret != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "lattice usage roll-up: insert failed: %s", SPI_result_code_string(ret));
	rows = (int64) SPI_processed;
	if (rows == n)
		return rows;

	/* some tenants were not visible: give their deltas back */
	ctl.keysize = offsetof(UsageDelta, allowed);
	ctl.entrysize = sizeof(UsageDelta);
	ctl.hcxt = CurrentMemoryContext;
	written = hash_create("lattice usage written", Max(rows, 16), &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		UsageDelta	k;
		bool		isnull;

		memset(&k, 0, sizeof(k));
		memcpy(&k.user_id, DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[i],
													   SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(k.user_id));
		k.hour = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[i],
												   SPI_tuptable->tupdesc, 2, &isnull)) / USECS_PER_HOUR;
		hash_search(written, &k, HASH_ENTER, NULL);
	}
	for (int i = 0; i < n; i++)
	{
		if (!hash_search(written, &d[i], HASH_FIND, NULL))
			rate_give_back(&d[i]);
	}
	hash_destroy(written);
	return rows;
}

/* One roll-up in its own transaction, if the database has the extension. */
static void
rate_worker_cycle(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "lattice usage roll-up: SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "lattice usage roll-up");
	if (OidIsValid(get_extension_oid("lattice", true)))
	{
		rate_flush_usage();
		lattice_deferred_flush();	/* touches and audit rows that wait */
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
}

void
lattice_rate_worker_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* give the server's start scripts time to create the database */
	{
		TimestampTz start = GetCurrentTimestamp();
		long		wait_ms = Max(rate_usage_interval, 1) * 1000L;

		while (!TimestampDifferenceExceeds(start, GetCurrentTimestamp(), wait_ms))
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}

	BackgroundWorkerInitializeConnection(rate_database, NULL, 0);

	for (;;)
	{
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (rate_usage_interval > 0)
			rate_worker_cycle();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(rate_usage_interval, 1) * 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
