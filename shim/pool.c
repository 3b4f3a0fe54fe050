/*
 * A fixed-size libpq pool.
 *
 * Slots are connected lazily and replaced when broken.  After a failed
 * connect, new connects wait out an exponential backoff (100 ms .. 5 s) and
 * requests that would need one fail fast with POOL_DOWN instead of piling
 * onto a database that is not there; healthy slots keep serving meanwhile.
 * Waiting for a busy pool is bounded by pool_wait_ms (POOL_TIMEOUT).
 *
 * Each connection lives in pipeline mode: dispatch.c sends a request's whole
 * transaction in one round trip.  The two statements every request needs are
 * prepared at connect time; route statements lazily (pooled.prepared).
 */
#include "shim.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct slot {
    struct pooled p;
    bool busy;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct slot *slots;
    int size;
    int in_use;
    int waiting;
    int failures;     /* consecutive failed connects */
    int64_t retry_at; /* no new connect before (ms) */
} pool = { .mu = PTHREAD_MUTEX_INITIALIZER };

atomic_long m_pool_errors, m_pool_timeouts, m_pool_reconnects;
/* requests that queued for a connection, and their summed wait (µs) */
atomic_long m_pool_waits, m_pool_wait_us;

/* The two statements of every request, see dispatch.c. */
const char *const SQL_TX_RO = "SELECT pg_catalog.set_config('transaction_read_only', 'on', true), "
                              "pg_catalog.set_config('statement_timeout', $1, true)";
const char *const SQL_TX_RW = "SELECT pg_catalog.set_config('statement_timeout', $1, true)";

int pool_init(void)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&pool.cv, &attr);
    pthread_condattr_destroy(&attr);
    pool.size = cfg.pool_size;
    pool.slots = calloc((size_t) pool.size, sizeof(struct slot));
    if (!pool.slots)
        return -1;
    for (int i = 0; i < pool.size; i++) {
        pool.slots[i].p.slot = i;
        pool.slots[i].p.prepared = calloc((size_t) nroutes, 1);
        if (!pool.slots[i].p.prepared)
            return -1;
    }
    return 0;
}

static bool prepare_sync(PGconn *c, const char *name, const char *sql, int nparams)
{
    PGresult *res = PQprepare(c, name, sql, nparams, NULL);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        log_error(NULL, "pool: prepare %s failed: %s", name, PQresultErrorMessage(res));
    PQclear(res);
    return ok;
}

/* Opens a connection ready for dispatch: pipeline mode, base statements. */
static PGconn *connect_one(void)
{
    const char *kw[] = { "dbname", "application_name", "connect_timeout", NULL };
    const char *val[] = { cfg.conninfo, "lattice-shim", "3", NULL };
    PGconn *c = PQconnectdbParams(kw, val, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        log_error(NULL, "pool: connect failed: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    /* Behind a transaction pooler a named statement would live on one server
       connection and be called on another: then every statement is unnamed. */
    if ((cfg.prepared_statements &&
         (!prepare_sync(c, "tx_ro", SQL_TX_RO, 1) || !prepare_sync(c, "tx_rw", SQL_TX_RW, 1))) ||
        PQenterPipelineMode(c) != 1) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

static void deadline_after(struct timespec *ts, int ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long) (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Connects a slot taken without a connection; POOL_DOWN (and backoff) on failure. */
static enum pool_status connect_slot(struct slot *take)
{
    pthread_mutex_lock(&pool.mu);
    bool backing_off = now_ms() < pool.retry_at;
    pthread_mutex_unlock(&pool.mu);
    if (backing_off) { /* a slot handed over while the database is down */
        pool_release(&take->p);
        atomic_fetch_add(&m_pool_errors, 1);
        return POOL_DOWN;
    }
    PGconn *c = connect_one();
    pthread_mutex_lock(&pool.mu);
    if (!c) {
        pool.failures++;
        int backoff = 100 << (pool.failures < 6 ? pool.failures - 1 : 5);
        pool.retry_at = now_ms() + (backoff > 5000 ? 5000 : backoff);
        pthread_mutex_unlock(&pool.mu);
        pool_release(&take->p);
        atomic_fetch_add(&m_pool_errors, 1);
        return POOL_DOWN;
    }
    pool.failures = 0;
    pool.retry_at = 0;
    take->p.conn = c;
    memset(take->p.prepared, 0, (size_t) nroutes);
    pthread_mutex_unlock(&pool.mu);
    atomic_fetch_add(&m_pool_reconnects, 1);
    return POOL_OK;
}

/* Waiters queue in arrival order and a released slot is handed to the
   oldest one directly: a newcomer can never overtake, so the wait stays
   short and fair under load (p99 ~ p50 instead of starving a few). */
struct waiter {
    struct waiter *next;
    struct slot *given;
    pthread_cond_t cv;
};
static struct waiter *queue_head, *queue_tail;

enum pool_status pool_acquire(struct pooled **out)
{
    pthread_mutex_lock(&pool.mu);
    struct slot *take = NULL, *empty = NULL;
    if (!queue_head)
        for (int i = 0; i < pool.size; i++) {
            struct slot *sl = &pool.slots[i];
            if (sl->busy)
                continue;
            if (sl->p.conn) {
                take = sl;
                break;
            }
            if (!empty)
                empty = sl;
        }
    if (!take && empty) {
        if (now_ms() < pool.retry_at) {
            pthread_mutex_unlock(&pool.mu);
            atomic_fetch_add(&m_pool_errors, 1);
            return POOL_DOWN;
        }
        take = empty;
    }
    if (take) {
        take->busy = true;
        pool.in_use++;
    } else {
        struct waiter w = { NULL, NULL, PTHREAD_COND_INITIALIZER };
        pthread_condattr_t attr;
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&w.cv, &attr);
        pthread_condattr_destroy(&attr);
        if (queue_tail)
            queue_tail->next = &w;
        else
            queue_head = &w;
        queue_tail = &w;
        pool.waiting++;
        double wait_start = now_seconds();
        struct timespec deadline;
        deadline_after(&deadline, cfg.pool_wait_ms);
        while (!w.given)
            if (pthread_cond_timedwait(&w.cv, &pool.mu, &deadline) == ETIMEDOUT)
                break;
        pool.waiting--;
        atomic_fetch_add(&m_pool_waits, 1);
        atomic_fetch_add(&m_pool_wait_us, (long) ((now_seconds() - wait_start) * 1e6));
        if (!w.given) {
            /* unlink ourselves */
            struct waiter **pp = &queue_head, *prev = NULL;
            while (*pp && *pp != &w) {
                prev = *pp;
                pp = &(*pp)->next;
            }
            if (*pp)
                *pp = w.next;
            if (queue_tail == &w)
                queue_tail = prev;
        }
        pthread_cond_destroy(&w.cv);
        if (!w.given) {
            pthread_mutex_unlock(&pool.mu);
            atomic_fetch_add(&m_pool_timeouts, 1);
            return POOL_TIMEOUT;
        }
        take = w.given; /* still busy and counted in use: handed over */
    }
    pthread_mutex_unlock(&pool.mu);
    if (!take->p.conn && connect_slot(take) != POOL_OK)
        return POOL_DOWN;
    *out = &take->p;
    return POOL_OK;
}

/* Returns a connection; one that broke (or is mid-transaction after an
   error we could not clean up) is closed so the slot reconnects. */
void pool_release(struct pooled *p)
{
    struct slot *sl = &pool.slots[p->slot];
    if (p->conn && (PQstatus(p->conn) != CONNECTION_OK || PQtransactionStatus(p->conn) != PQTRANS_IDLE)) {
        pool_discard(p);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    struct waiter *w = queue_head;
    if (w) {
        queue_head = w->next;
        if (!queue_head)
            queue_tail = NULL;
        w->given = sl;
        pthread_cond_signal(&w->cv);
    } else {
        sl->busy = false;
        pool.in_use--;
    }
    pthread_mutex_unlock(&pool.mu);
}

void pool_discard(struct pooled *p)
{
    PQfinish(p->conn);
    p->conn = NULL;
    pool_release(p);
}

/* After a connection is found dead (a database restart kills them all),
   close the idle ones too, so the next requests reconnect instead of each
   discovering a stale connection the hard way. */
void pool_drop_idle(void)
{
    pthread_mutex_lock(&pool.mu);
    for (int i = 0; i < pool.size; i++)
        if (pool.slots[i].p.conn && !pool.slots[i].busy) {
            PQfinish(pool.slots[i].p.conn);
            pool.slots[i].p.conn = NULL;
        }
    pthread_mutex_unlock(&pool.mu);
}

void pool_close(void)
{
    pthread_mutex_lock(&pool.mu);
    for (int i = 0; i < pool.size; i++) {
        if (pool.slots[i].p.conn && !pool.slots[i].busy) {
            PQfinish(pool.slots[i].p.conn);
            pool.slots[i].p.conn = NULL;
        }
        free(pool.slots[i].p.prepared);
        pool.slots[i].p.prepared = NULL;
    }
    free(pool.slots);
    pool.slots = NULL;
    pool.size = 0;
    pthread_mutex_unlock(&pool.mu);
}

void pool_stats(int *size, int *in_use, int *waiting, int *healthy)
{
    pthread_mutex_lock(&pool.mu);
    *size = pool.size;
    *in_use = pool.in_use;
    *waiting = pool.waiting;
    *healthy = 0;
    for (int i = 0; i < pool.size; i++)
        if (pool.slots[i].p.conn)
            (*healthy)++;
    pthread_mutex_unlock(&pool.mu);
}
