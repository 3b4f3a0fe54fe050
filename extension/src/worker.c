/*
 * worker.c
 *		The background worker: runs the extension's periodic jobs, each in a
 *		transaction of its own.
 *
 *   every lattice.rate_usage_interval seconds
 *       the usage roll-up (ratelimit_usage.c), the identity writes that wait
 *       (auth_deferred.c), and the expiry of unmatched OpenTelemetry spans
 *   every lattice.alert_interval seconds
 *       the alert rules' tick and housekeeping (alert_webhook.c, SQL)
 *   once an hour
 *       the account lifecycle's tick (notices and purges, SQL)
 *
 * The worker is registered when lattice is preloaded and
 * lattice.rate_usage_interval > 0 (its shown name stays "lattice usage
 * roll-up").  It connects to lattice.rate_database and does nothing while
 * that database has no lattice extension.
 */
#include "common.h"
#include "auth.h"
#include "lattice.h"
#include "ratelimit.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PGDLLEXPORT void lattice_worker_main(Datum main_arg);

/* Registered when lattice is preloaded and lattice.rate_usage_interval > 0 */
void
lattice_worker_register(void)
{
	BackgroundWorker worker;

	if (rate_usage_interval <= 0)
		return;
	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 60;
	strlcpy(worker.bgw_library_name, "lattice", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "lattice_worker_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "lattice usage roll-up", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "lattice usage roll-up", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/*
 * Runs work in a transaction of its own, reported as activity, when the
 * database has the extension.  An error is logged and rolled back: it
 * leaves the other cycles, and the worker, alone.
 */
static void
worker_transaction(const char *activity, void (*work)(void))
{
	MemoryContext outer = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		lattice_spi_connect(activity);
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
		elog(ERROR, "lattice: the lifecycle tick failed");
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
		elog(ERROR, "lattice: the alert tick failed");
}

/*
 * OpenTelemetry client spans whose server half never came: their external
 * edges (extension/sql/36_ingest_otlp.sql), with every roll-up.
 */
static void
otlp_work(void)
{
	if (SPI_execute("SELECT lattice.otlp_expire_all()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "lattice: the OTLP expiry failed");
}

void
lattice_worker_main(Datum main_arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* give the server's start scripts time to create the database */
	{
		TimestampTz start = GetCurrentTimestamp();
		long wait_ms = Max(rate_usage_interval, 1) * 1000L;

		while (!TimestampDifferenceExceeds(start, GetCurrentTimestamp(), wait_ms))
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms,
							 PG_WAIT_EXTENSION);
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
		long wait_ms;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (rate_usage_interval > 0 &&
			TimestampDifferenceExceeds(last_rate, GetCurrentTimestamp(),
									   rate_usage_interval * 1000 - 100))
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
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, wait_ms,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}
