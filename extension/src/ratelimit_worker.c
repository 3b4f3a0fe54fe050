/*
 * ratelimit_worker.c
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
 * Each roll-up also writes the identity writes that wait (deferred.c), and
 * once an hour the worker runs the account lifecycle's tick.
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
#include "utils/builtins.h"
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

/* One (tenant, class, subject, hour) delta taken from the table for writing. */
typedef struct UsageDelta
{
	RateKey		key;			/* the entry it came from */
	pg_uuid_t	user_id;
	const char *klass;			/* a static string of rate_kind_class() */
	char		subject[RATE_LABEL_LEN];
	int64		hour;
	int64		allowed;
	int64		refused;
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
	RateEntry  *e;

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
 * Adds every tenant's unwritten usage to lattice.usage_hourly.  The caller has SPI connected inside a transaction and runs as a
 * role that may write the table (the worker's superuser, or the owner through
 * SECURITY DEFINER).  Returns the rows written.
 */
int64
rate_flush_usage(void)
{
	UsageDelta *d;
	int			n = rate_take_deltas(&d);
	Datum	   *users;
	Datum	   *classes;
	Datum	   *subjects;
	Datum	   *hours;
	Datum	   *allowed;
	Datum	   *refused;
	Oid			argtypes[6] = {UUIDARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
	INT8ARRAYOID, INT8ARRAYOID};
	Datum		args[6];
	int			ret;
	pg_uuid_t  *known;
	int			nknown;
	int			kept = 0;

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
	ret = SPI_execute_with_args("SELECT u.id FROM lattice.users u WHERE u.id OPERATOR(pg_catalog.=) ANY ($1)",
								1, argtypes, args, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "lattice usage roll-up: reading the accounts failed: %s", SPI_result_code_string(ret));
	nknown = (int) SPI_processed;
	known = palloc(sizeof(pg_uuid_t) * Max(nknown, 1));
	for (int r = 0; r < nknown; r++)
	{
		bool		isnull;

		memcpy(&known[r], DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1, &isnull)),
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
	args[3] = PointerGetDatum(construct_array(hours, kept, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[4] = PointerGetDatum(construct_array(allowed, kept, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[5] = PointerGetDatum(construct_array(refused, kept, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
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
		elog(ERROR, "lattice usage roll-up: insert failed: %s", SPI_result_code_string(ret));
	return kept;
}

/*
 * Runs work in a transaction of its own, reported as activity, when the
 * database has the extension.  An error is logged and rolled back: it
 * leaves the other cycles, and the worker, alone.
 */
static void
worker_transaction(const char *activity, void (*work) (void))
{
	MemoryContext outer = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "%s: SPI_connect failed", activity);
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, activity);
		if (OidIsValid(get_extension_oid("lattice", true)))
			work();
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(outer);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	pgstat_report_stat(true);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* The usage roll-up, and the touches and audit rows that wait */
static void
rate_work(void)
{
	rate_flush_usage();
	lattice_deferred_flush();
}

/*
 * The account lifecycle's tick (extension/sql/86_account.sql), once an hour:
 * its notices and purges.
 */
#define LIFECYCLE_INTERVAL_MS (3600 * 1000L)

static void
lifecycle_work(void)
{
	if (SPI_execute("SELECT lattice.lifecycle_tick()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "lattice lifecycle: the tick failed");
}

/*
 * The alert rules' tick (extension/sql/88_alerts.sql) every
 * lattice.alert_interval seconds, and their housekeeping with it.
 */
static void
alert_work(void)
{
	if (SPI_execute("SELECT lattice.alert_tick()", false, 0) != SPI_OK_SELECT ||
		SPI_execute("SELECT lattice.alert_prune()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "lattice alerts: the tick failed");
}

/*
 * OpenTelemetry client spans whose server half never came: their external
 * edges (extension/sql/36_ingest_otlp.sql), with every roll-up.
 */
static void
otlp_work(void)
{
	if (SPI_execute("SELECT lattice.otlp_expire_all()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "lattice otlp: the expiry failed");
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
		static TimestampTz last_lifecycle = 0;
		static TimestampTz last_alert = 0;
		static TimestampTz last_rate = 0;
		long		wait_ms;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (rate_usage_interval > 0 &&
			TimestampDifferenceExceeds(last_rate, GetCurrentTimestamp(), rate_usage_interval * 1000 - 100))
		{
			worker_transaction("lattice usage roll-up", rate_work);
			worker_transaction("lattice otlp expiry", otlp_work);
			last_rate = GetCurrentTimestamp();
		}
		if (TimestampDifferenceExceeds(last_lifecycle, GetCurrentTimestamp(), LIFECYCLE_INTERVAL_MS))
		{
			worker_transaction("lattice lifecycle tick", lifecycle_work);
			last_lifecycle = GetCurrentTimestamp();
		}
		if (lattice_alert_interval > 0 &&
			TimestampDifferenceExceeds(last_alert, GetCurrentTimestamp(), lattice_alert_interval * 1000))
		{
			worker_transaction("lattice alert tick", alert_work);
			last_alert = GetCurrentTimestamp();
		}
		wait_ms = Max(rate_usage_interval, 1) * 1000L;
		if (lattice_alert_interval > 0)
			wait_ms = Min(wait_ms, lattice_alert_interval * 1000L);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
