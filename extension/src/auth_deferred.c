/*
 * auth_deferred.c
 *		Identity writes a transaction cannot make itself: a key's last_used,
 *		a session's sliding expiry (both stale after a minute) and the audit
 *		row of a revoked key's use.
 *
 * A GET runs in a read-only transaction, and a refusal rolls its transaction
 * back, yet these must be kept.  They wait in a queue and are written by the
 * next writing authentication of any backend, by the usage worker at each
 * roll-up (worker.c), or by lattice.flush_deferred().  With lattice
 * preloaded the queue is in shared memory, so a dashboard that only reads
 * still slides its session and a key used only for GETs still shows when it
 * was used; without preloading it is this backend's own.
 *
 * A writer claims entries, writes them in its transaction and removes them
 * when that transaction commits; an abort gives them back.  A full queue
 * drops touches (they are hints) and keeps audit events in the server log,
 * where each is also written at once.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"

#include <arpa/inet.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/resowner.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#define DEFERRED_MAX 1024

typedef struct Deferred
{
	char kind; /* 'k' key touch, 's' session touch, 'a' audit */
	bool has_id;
	int claimed_by;	 /* pid of the writer, 0 when waiting */
	Oid dbid;		 /* written only by a backend of this database */
	pg_uuid_t id;	 /* key or session; audit: the account */
	pg_uuid_t owner; /* touch: the account of the key or session */
	TimestampTz at;
	char action[48];
	char target[40];
	char client_addr[64];
	char request_id[72];
} Deferred;

typedef struct DeferredQueue
{
	LWLock *lock; /* NULL for the backend-local queue */
	int count;
	Deferred items[DEFERRED_MAX];
} DeferredQueue;

static DeferredQueue *shared_queue = NULL;
static DeferredQueue *local_queue = NULL;
static bool claimed_any = false; /* entries of ours wait for our commit */
static bool callback_registered = false;

/* the last touch this backend queued: a busy key is queued once a minute */
static char last_kind;
static pg_uuid_t last_id;
static TimestampTz last_at = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
deferred_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(DeferredQueue)));
	RequestNamedLWLockTranche("lattice_deferred", 1);
}

static void
deferred_shmem_startup(void)
{
	bool found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	shared_queue = ShmemInitStruct("lattice deferred writes", sizeof(DeferredQueue), &found);
	if (!found)
	{
		memset(shared_queue, 0, sizeof(DeferredQueue));
		shared_queue->lock = &(GetNamedLWLockTranche("lattice_deferred"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
}

void
lattice_deferred_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = deferred_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = deferred_shmem_startup;
}

static DeferredQueue *
queue(void)
{
	if (shared_queue)
		return shared_queue;
	if (local_queue == NULL)
		local_queue = MemoryContextAllocZero(TopMemoryContext, sizeof(DeferredQueue));
	return local_queue;
}

static void
queue_lock(DeferredQueue *q)
{
	if (q->lock)
		LWLockAcquire(q->lock, LW_EXCLUSIVE);
}

static void
queue_unlock(DeferredQueue *q)
{
	if (q->lock)
		LWLockRelease(q->lock);
}

/* At commit our claimed entries are written: remove them; at abort, free them. */
static void
deferred_xact_callback(XactEvent event, void *arg)
{
	DeferredQueue *q;
	int kept = 0;

	if (!claimed_any ||
		!(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		  event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT))
		return;
	claimed_any = false;
	q = queue();
	queue_lock(q);
	for (int i = 0; i < q->count; i++)
	{
		Deferred *d = &q->items[i];

		if (d->claimed_by == MyProcPid)
		{
			if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
				continue;
			d->claimed_by = 0;
		}
		if (kept != i)
			q->items[kept] = *d;
		kept++;
	}
	q->count = kept;
	queue_unlock(q);
}

static void
copy_field(char *dst, size_t size, const char *src)
{
	if (src)
		strlcpy(dst, src, size);
	else
		dst[0] = '\0';
}

/* inet accepts it (the shim sends its peer's address; SQL callers anything) */
static bool
address_valid(const char *addr)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, addr, buf) == 1 || inet_pton(AF_INET6, addr, buf) == 1;
}

void
lattice_defer_touch(const char *what, const pg_uuid_t *owner, const pg_uuid_t *id)
{
	char kind = strcmp(what, "session") == 0 ? 's' : 'k';
	TimestampTz now = lattice_clock_now();
	DeferredQueue *q;
	Deferred *d = NULL;

	if (kind == last_kind && memcmp(&last_id, id, sizeof(pg_uuid_t)) == 0 && now >= last_at &&
		now - last_at < USECS_PER_MINUTE)
		return;
	q = queue();
	queue_lock(q);
	for (int i = 0; i < q->count && d == NULL; i++)
		if (q->items[i].kind == kind && q->items[i].claimed_by == 0 &&
			q->items[i].dbid == MyDatabaseId && memcmp(&q->items[i].id, id, sizeof(pg_uuid_t)) == 0)
			d = &q->items[i];
	if (d == NULL && q->count < DEFERRED_MAX)
	{
		d = &q->items[q->count++];
		memset(d, 0, sizeof(*d));
		d->kind = kind;
		d->dbid = MyDatabaseId;
		d->id = *id;
		d->owner = *owner;
		d->has_id = true;
	}
	if (d && d->at < now)
		d->at = now;
	queue_unlock(q);
	/* a touch is only a hint: a full queue drops it */
	last_kind = kind;
	last_id = *id;
	last_at = now;
}

/*
 * Records that a key or session was used (the caller found its time a
 * minute old): at once when this transaction may write -- as the tenant's
 * role when owner is the tenant (tenant.c says why) -- else queued.  A row
 * another request is touching right now is skipped, not waited for.
 */
void
lattice_credential_touch(const char *what, const pg_uuid_t *owner, const pg_uuid_t *id)
{
	static SPIPlanPtr key_plan = NULL;
	static SPIPlanPtr session_plan = NULL;
	bool session = strcmp(what, "session") == 0;
	LatticeRoleSwitch sw;
	Datum v[4];

	if (lattice_xact_read_only())
	{
		lattice_defer_touch(what, owner, id);
		return;
	}
	v[0] = UUIDPGetDatum(id);
	v[1] = TimestampTzGetDatum(lattice_clock_now());
	v[2] = UUIDPGetDatum(owner);
	v[3] = Int32GetDatum(LATTICE_SESSION_IDLE_SECONDS);
	lattice_as_tenant_role(owner, &sw);
	lattice_spi_connect("lattice");
	if (session)
		lattice_spi_prepare_kept(&session_plan,
								 "UPDATE lattice.sessions SET last_seen_at = $2,"
								 "   idle_expires_at = LEAST($2 + $4 * interval '1 second', expires_at)"
								 " WHERE user_id = $3 AND id = (SELECT id FROM lattice.sessions"
								 "   WHERE user_id = $3 AND id = $1 FOR UPDATE SKIP LOCKED)",
								 4, (Oid[]) {UUIDOID, TIMESTAMPTZOID, UUIDOID, INT4OID});
	else
		lattice_spi_prepare_kept(&key_plan,
								 "UPDATE lattice.api_keys SET last_used = $2"
								 " WHERE user_id = $3 AND id = (SELECT id FROM lattice.api_keys"
								 "   WHERE user_id = $3 AND id = $1 FOR UPDATE SKIP LOCKED)",
								 3, (Oid[]) {UUIDOID, TIMESTAMPTZOID, UUIDOID});
	if (SPI_execute_plan(session ? session_plan : key_plan, v, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice: recording the use of a credential failed");
	SPI_finish();
	lattice_restore_role(&sw);
}

void
lattice_defer_audit(const char *action, const pg_uuid_t *user_id, const char *target, Jsonb *req)
{
	char *addr = lattice_req_text(req, "client_addr");
	char *request_id = lattice_req_text(req, "request_id");
	DeferredQueue *q = queue();
	Deferred *d = NULL;

	ereport(LOG,
			(errmsg("lattice audit: %s target=%s addr=%s request_id=%s", action, target ? target : "",
					addr ? addr : "", request_id ? request_id : "")));
	queue_lock(q);
	if (q->count < DEFERRED_MAX)
	{
		d = &q->items[q->count++];
		memset(d, 0, sizeof(*d));
		d->kind = 'a';
		d->dbid = MyDatabaseId;
		if (user_id)
		{
			d->id = *user_id;
			d->has_id = true;
		}
		d->at = lattice_clock_now();
		copy_field(d->action, sizeof(d->action), action);
		copy_field(d->target, sizeof(d->target), target);
		if (addr && address_valid(addr))
			copy_field(d->client_addr, sizeof(d->client_addr), addr);
		copy_field(d->request_id, sizeof(d->request_id), request_id);
	}
	queue_unlock(q);
	if (d == NULL)
		ereport(WARNING,
				(errmsg("lattice: deferred write queue full, audit event kept in the server log only")));
}

static int
write_one(const Deferred *d)
{
	Datum v[6];
	char nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	v[0] = UUIDPGetDatum(&d->id);
	v[1] = TimestampTzGetDatum(d->at);
	if (d->kind == 'k')
	{
		v[2] = UUIDPGetDatum(&d->owner);
		return SPI_execute_with_args("UPDATE lattice.api_keys SET last_used = $2"
									 " WHERE user_id = $3 AND id = $1"
									 "   AND (last_used IS NULL OR last_used < $2)",
									 3, (Oid[]) {UUIDOID, TIMESTAMPTZOID, UUIDOID}, v, NULL, false, 0);
	}
	if (d->kind == 's')
	{
		v[2] = Int32GetDatum(LATTICE_SESSION_IDLE_SECONDS);
		v[3] = UUIDPGetDatum(&d->owner);
		return SPI_execute_with_args(
			"UPDATE lattice.sessions SET last_seen_at = $2,"
			"   idle_expires_at = LEAST($2 + $3 * interval '1 second', expires_at)"
			" WHERE user_id = $4 AND id = $1 AND last_seen_at < $2"
			"   AND revoked_at IS NULL AND idle_expires_at > $2",
			4, (Oid[]) {UUIDOID, TIMESTAMPTZOID, INT4OID, UUIDOID}, v, NULL, false, 0);
	}
	v[2] = CStringGetTextDatum(d->action);
	v[3] = CStringGetTextDatum(d->target);
	v[4] = CStringGetTextDatum(d->client_addr);
	v[5] = CStringGetTextDatum(d->request_id);
	if (!d->has_id)
		return SPI_execute_with_args("INSERT INTO lattice.audit_unattributed"
									 " (at, action, target, client_addr, request_id, details)"
									 " VALUES ($1, $2, NULLIF($3, ''), CAST(NULLIF($4, '') AS inet),"
									 "         NULLIF($5, ''), '{\"deferred\": true}')",
									 5, (Oid[]) {TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID},
									 v + 1, NULL, false, 0);
	return SPI_execute_with_args("INSERT INTO lattice.audit_log"
								 " (user_id, at, action, target, client_addr, request_id, details)"
								 " VALUES ($1, $2, $3, NULLIF($4, ''), CAST(NULLIF($5, '') AS inet),"
								 "         NULLIF($6, ''), '{\"deferred\": true}')",
								 6,
								 (Oid[]) {UUIDOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID},
								 v, nulls, false, 0);
}

/*
 * Writes claimed entries in a subtransaction: the request that happens to
 * carry them must never fail for them.  A batch that cannot be written (a
 * row gone, say) is dropped with a WARNING -- touches are hints, and audit
 * events are in the server log already.
 */
static void
write_claimed(const Deferred *mine, int n)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		lattice_spi_connect("lattice.flush_deferred");
		for (int i = 0; i < n; i++)
			if (write_one(&mine[i]) < 0)
				elog(ERROR, "lattice: writing deferred identity state failed");
		SPI_finish();
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(WARNING, (errmsg("lattice: %d deferred identity writes dropped: %s", n, e->message)));
		FreeErrorData(e);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
}

/*
 * Claims what waits and writes it in the current transaction (which must be
 * able to write the identity tables: the extension owner or the worker);
 * returns how many.  Nothing in a read-only transaction.
 */
int
lattice_deferred_flush(void)
{
	DeferredQueue *q = queue();
	TimestampTz now = lattice_clock_now();
	Deferred *mine;
	int room;
	int n = 0;
	int kept = 0;

	/* an unlocked look: most writing requests find nothing to do */
	room = q->count;
	if (room == 0 || lattice_xact_read_only())
		return 0;
	mine = palloc(sizeof(Deferred) * room);
	if (!callback_registered)
	{
		RegisterXactCallback(deferred_xact_callback, NULL);
		callback_registered = true;
	}
	queue_lock(q);
	for (int i = 0; i < q->count; i++)
	{
		Deferred *d = &q->items[i];

		/* another database's entries nobody wrote for an hour (it was dropped) */
		if (d->dbid != MyDatabaseId && d->claimed_by == 0 && now - d->at > USECS_PER_HOUR)
			continue;
		if (d->dbid == MyDatabaseId && d->claimed_by == 0 && n < room)
		{
			d->claimed_by = MyProcPid;
			mine[n++] = *d;
		}
		if (kept != i)
			q->items[kept] = *d;
		kept++;
	}
	q->count = kept;
	claimed_any = claimed_any || n > 0;
	queue_unlock(q);

	if (n > 0)
		write_claimed(mine, n);
	pfree(mine);
	return n;
}

/* lattice.flush_deferred() -> integer: writes what waits now (tests, DBAs) */
PG_FUNCTION_INFO_V1(lattice_flush_deferred);
Datum
lattice_flush_deferred(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(lattice_deferred_flush());
}
