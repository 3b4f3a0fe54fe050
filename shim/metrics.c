/*
 * Prometheus text exposition at GET /metrics: requests by route, method and
 * status, a latency histogram per route, the pool (size, in use, waiting,
 * healthy, errors, timeouts, reconnects, waits) and connections, statement
 * errors by SQLSTATE class, alert webhook deliveries.  Counters are
 * lock-free atomics, so recording costs a few nanoseconds per request.
 *
 * The database side (outbox, Stripe events, quota classes, rate table) is
 * read with one statement, lattice_http.metrics_db(), on a pooled connection
 * under a short statement_timeout, at most once a second however many
 * scrapes arrive (the others get the cached series); when it cannot be read
 * the shim's own series are still served, with lattice_db_up 0.
 */
#include "shim.h"
#include "outbound.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATUS_MIN 100
#define STATUS_SLOTS 500 /* 100..599 */
#define METRICS_MAX (1 << 20)

static const double buckets[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 };
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

struct route_metrics {
    atomic_ulong status[STATUS_SLOTS];
    atomic_ulong bucket[NBUCKETS]; /* non-cumulative; summed on output */
    atomic_ulong count;
    atomic_ulong sum_us;
};

static struct route_metrics *rm;
atomic_long m_connections_open, m_connections_refused;

/* Statement errors by SQLSTATE class: two characters of [0-9A-Z]. */
#define CLASS_CHARS 36
static atomic_ulong stmt_errors[CLASS_CHARS * CLASS_CHARS];

static int class_index(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'Z')
        return 10 + c - 'A';
    return -1;
}

static char class_char(int i)
{
    return (char) (i < 10 ? '0' + i : 'A' + i - 10);
}

void metrics_statement_error(const char *sqlstate)
{
    if (!sqlstate || !sqlstate[0])
        return;
    int a = class_index(sqlstate[0]), b = class_index(sqlstate[1]);
    if (a < 0 || b < 0)
        return;
    atomic_fetch_add_explicit(&stmt_errors[a * CLASS_CHARS + b], 1, memory_order_relaxed);
}

int metrics_init(void)
{
    rm = calloc((size_t) ROUTE_SLOTS, sizeof(*rm));
    return rm ? 0 : -1;
}

void metrics_request(int route, int status, double seconds)
{
    if (!rm || route < 0 || route >= ROUTE_SLOTS)
        return;
    struct route_metrics *m = &rm[route];
    if (status >= STATUS_MIN && status < STATUS_MIN + STATUS_SLOTS)
        atomic_fetch_add_explicit(&m->status[status - STATUS_MIN], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < NBUCKETS && seconds > buckets[b])
        b++;
    if (b < NBUCKETS)
        atomic_fetch_add_explicit(&m->bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->sum_us, (unsigned long) (seconds * 1e6), memory_order_relaxed);
}

struct out {
    char *buf;
    size_t len, cap;
    bool full;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct out *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t) n < o->cap - o->len) {
            o->len += (size_t) n;
            return;
        }
        if (o->cap * 2 > METRICS_MAX) {
            o->full = true;
            o->buf[o->len] = '\0';
            return;
        }
        char *nb = realloc(o->buf, o->cap * 2);
        if (!nb) {
            o->full = true;
            return;
        }
        o->buf = nb;
        o->cap *= 2;
    }
}

/* ---- the database side ---- */

#define DB_CACHE_MS 1000
#define DB_TIMEOUT_MS 1000 /* statement_timeout of the read (or statement_timeout_fast_ms, if lower) */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool fetching;      /* one read at a time; other scrapes wait for it */
    int64_t fetched_ms; /* 0 = never */
    bool up;
    double seconds; /* how long the last read took */
    char *series;   /* the figures as exposition lines, "" when down */
} db = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* One pipeline on a pooled connection: the read-only, short-timeout
   transaction setup and the call.  Returns the jsonb text (caller frees) or
   NULL; *nothing_ran when the connection was lost before anything ran. */
static char *db_call(bool *nothing_ran)
{
    struct pooled *p;
    *nothing_ran = false;
    if (pool_acquire(&p) != POOL_OK)
        return NULL;
    PGconn *c = p->conn;
    char timeout[16];
    int ms = cfg.statement_timeout_ms[T_FAST] < DB_TIMEOUT_MS ? cfg.statement_timeout_ms[T_FAST] : DB_TIMEOUT_MS;
    snprintf(timeout, sizeof(timeout), "%d", ms);
    const char *tparams[1] = { timeout };
    char *out = NULL;
    bool broken = !PQsendQueryParams(c, SQL_TX_RO, 1, NULL, tparams, NULL, NULL, 0) ||
                  !PQsendQueryParams(c, "SELECT lattice_http.metrics_db()::text", 0, NULL, NULL, NULL, NULL, 0) ||
                  !PQpipelineSync(c);
    bool ran = false;
    for (int k = 0; k < 2 && !broken; k++) {
        PGresult *res = PQgetResult(c);
        if (!res) {
            broken = true;
            break;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR) {
            const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
            metrics_statement_error(state);
            if (state)
                ran = true;
            log_error(NULL, "metrics: lattice_http.metrics_db failed: %s %s", state ? state : "-",
                      PQresultErrorMessage(res));
            if (PQstatus(c) == CONNECTION_BAD)
                broken = true;
        } else if (k == 1 && st == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
            out = strdup(PQgetvalue(res, 0, 0));
            ran = true;
        } else if (st != PGRES_PIPELINE_ABORTED)
            ran = true;
        PQclear(res);
        PGresult *end = broken ? NULL : PQgetResult(c);
        if (end) {
            PQclear(end);
            broken = true;
        }
    }
    if (!broken) {
        PGresult *sync = PQgetResult(c);
        broken = !sync || PQresultStatus(sync) != PGRES_PIPELINE_SYNC;
        PQclear(sync);
    }
    if (!broken) {
        pool_release(p);
        return out;
    }
    free(out);
    *nothing_ran = !ran;
    pool_discard(p);
    pool_drop_idle();
    return NULL;
}

/* A label value from the database: only [a-z0-9_] is written out. */
static bool label_ok(const char *s)
{
    if (!*s || strlen(s) > 32)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

static bool number_of(json_object *o, const char *key, double *v)
{
    json_object *x;
    if (!o || !json_object_object_get_ex(o, key, &x) ||
        !(json_object_is_type(x, json_type_int) || json_object_is_type(x, json_type_double)))
        return false;
    *v = json_object_get_double(x);
    return true;
}

static json_object *object_of(json_object *o, const char *key)
{
    json_object *x;
    return o && json_object_object_get_ex(o, key, &x) && json_object_is_type(x, json_type_object) ? x : NULL;
}

/* {"label value": number, ...} as one series per key. */
static void put_labelled(struct out *o, json_object *obj, const char *name, const char *labels_before,
                         const char *label)
{
    if (!obj)
        return;
    json_object_object_foreach(obj, key, val) {
        if (!label_ok(key) || !(json_object_is_type(val, json_type_int) || json_object_is_type(val, json_type_double)))
            continue;
        put(o, "%s{%s%s=\"%s\"} %.17g\n", name, labels_before, label, key, json_object_get_double(val));
    }
}

/* The figures of lattice_http.metrics_db() as exposition lines. */
static void db_format(struct out *o, json_object *f)
{
    double v;
    put(o, "# HELP lattice_outbox_jobs Outbox jobs not done, by kind and state.\n"
           "# TYPE lattice_outbox_jobs gauge\n");
    json_object *outbox = object_of(f, "outbox");
    if (outbox) {
        json_object_object_foreach(outbox, kind, states) {
            if (!label_ok(kind) || !json_object_is_type(states, json_type_object))
                continue;
            char before[64];
            snprintf(before, sizeof(before), "kind=\"%s\",", kind);
            put_labelled(o, states, "lattice_outbox_jobs", before, "state");
        }
    }
    if (number_of(f, "outbox_oldest_pending_seconds", &v))
        put(o,
            "# HELP lattice_outbox_oldest_pending_seconds Age of the oldest outbox job not finished (pending or running); 0 when none.\n"
            "# TYPE lattice_outbox_oldest_pending_seconds gauge\n"
            "lattice_outbox_oldest_pending_seconds %.3f\n",
            v);
    put(o, "# HELP lattice_stripe_webhook_events Stripe webhook events stored, by outcome.\n"
           "# TYPE lattice_stripe_webhook_events gauge\n");
    put_labelled(o, object_of(f, "stripe_events"), "lattice_stripe_webhook_events", "", "outcome");
    json_object *classes = object_of(f, "rate_classes");
    static const char *const what[2][3] = {
        { "used", "lattice_rate_used_this_hour",
          "Requests allowed this hour (real clock), summed over every key of a quota class." },
        { "refused", "lattice_rate_refused_this_hour",
          "Requests refused (429) this hour (real clock), summed over every key of a quota class." },
    };
    for (int w = 0; w < 2; w++) {
        put(o, "# HELP %s %s\n# TYPE %s gauge\n", what[w][1], what[w][2], what[w][1]);
        if (!classes)
            continue;
        json_object_object_foreach(classes, cls, counts) {
            if (label_ok(cls) && number_of(counts, what[w][0], &v))
                put(o, "%s{class=\"%s\"} %.17g\n", what[w][1], cls, v);
        }
    }
    json_object *table = object_of(f, "rate_table");
    if (number_of(table, "size", &v))
        put(o,
            "# HELP lattice_rate_table_size Keys the shared rate table holds (lattice.rate_table_size).\n"
            "# TYPE lattice_rate_table_size gauge\nlattice_rate_table_size %.17g\n",
            v);
    if (number_of(table, "entries", &v))
        put(o,
            "# HELP lattice_rate_table_entries Keys in use in the shared rate table.\n"
            "# TYPE lattice_rate_table_entries gauge\nlattice_rate_table_entries %.17g\n",
            v);
    if (number_of(table, "evictions", &v))
        put(o,
            "# HELP lattice_rate_table_evictions_total Keys evicted from the full rate table since PostgreSQL started.\n"
            "# TYPE lattice_rate_table_evictions_total counter\nlattice_rate_table_evictions_total %.17g\n",
            v);
}

/* Reads the database figures unless a read less than DB_CACHE_MS old (or
   under way) answers; appends lattice_db_* and the figures to o. */
static void db_series(struct out *o)
{
    pthread_mutex_lock(&db.mu);
    while (db.fetching)
        pthread_cond_wait(&db.cv, &db.mu);
    if (!db.fetched_ms || now_ms() - db.fetched_ms >= DB_CACHE_MS) {
        db.fetching = true;
        pthread_mutex_unlock(&db.mu);

        double start = now_seconds();
        bool nothing_ran;
        char *json = db_call(&nothing_ran);
        if (!json && nothing_ran) /* a connection that died idle (a restart): once more */
            json = db_call(&nothing_ran);
        double took = now_seconds() - start;
        json_object *f = json ? json_tokener_parse(json) : NULL;
        struct out s = { malloc(4096), 0, 4096, false };
        if (s.buf) {
            s.buf[0] = '\0';
            if (f)
                db_format(&s, f);
        }
        json_object_put(f);
        free(json);

        pthread_mutex_lock(&db.mu);
        free(db.series);
        db.series = s.buf && !s.full ? s.buf : NULL;
        if (!db.series)
            free(s.buf);
        db.up = f && db.series;
        db.seconds = took;
        db.fetched_ms = now_ms();
        db.fetching = false;
        pthread_cond_broadcast(&db.cv);
    }
    put(o,
        "# HELP lattice_db_up 1 when the last read of the database figures (lattice_http.metrics_db) answered.\n"
        "# TYPE lattice_db_up gauge\nlattice_db_up %d\n"
        "# HELP lattice_db_scrape_duration_seconds Time the last read of the database figures took.\n"
        "# TYPE lattice_db_scrape_duration_seconds gauge\nlattice_db_scrape_duration_seconds %.6f\n",
        db.up ? 1 : 0, db.seconds);
    if (db.up)
        put(o, "%s", db.series);
    pthread_mutex_unlock(&db.mu);
}

static const char *method_of(int i)
{
    return i < nroutes ? routes[i].method : "ANY";
}

void metrics_serve(struct reply *r)
{
    struct out o = { malloc(16384), 0, 16384, false };
    if (!o.buf) {
        reply_error(r, 503, "unavailable", "out of memory", NULL, NULL);
        return;
    }
    o.buf[0] = '\0';
    put(&o, "# HELP lattice_http_requests_total HTTP requests answered, by route pattern, method and status.\n"
            "# TYPE lattice_http_requests_total counter\n");
    for (int i = 0; i < ROUTE_SLOTS && !o.full; i++)
        for (int s = 0; s < STATUS_SLOTS; s++) {
            unsigned long v = atomic_load_explicit(&rm[i].status[s], memory_order_relaxed);
            if (v)
                put(&o, "lattice_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %lu\n", route_label(i),
                    method_of(i), s + STATUS_MIN, v);
        }
    put(&o, "# HELP lattice_http_request_duration_seconds Time from request parsed to answer written.\n"
            "# TYPE lattice_http_request_duration_seconds histogram\n");
    for (int i = 0; i < ROUTE_SLOTS && !o.full; i++) {
        unsigned long count = atomic_load_explicit(&rm[i].count, memory_order_relaxed);
        if (!count)
            continue;
        unsigned long cum = 0;
        for (size_t b = 0; b < NBUCKETS; b++) {
            cum += atomic_load_explicit(&rm[i].bucket[b], memory_order_relaxed);
            put(&o, "lattice_http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"%g\"} %lu\n",
                route_label(i), method_of(i), buckets[b], cum);
        }
        put(&o,
            "lattice_http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"+Inf\"} %lu\n"
            "lattice_http_request_duration_seconds_sum{route=\"%s\",method=\"%s\"} %.6f\n"
            "lattice_http_request_duration_seconds_count{route=\"%s\",method=\"%s\"} %lu\n",
            route_label(i), method_of(i), count, route_label(i), method_of(i),
            (double) atomic_load_explicit(&rm[i].sum_us, memory_order_relaxed) / 1e6, route_label(i), method_of(i),
            count);
    }
    int size, in_use, waiting, healthy;
    pool_stats(&size, &in_use, &waiting, &healthy);
    put(&o,
        "# HELP lattice_pool_size Configured database connections.\n# TYPE lattice_pool_size gauge\nlattice_pool_size %d\n"
        "# HELP lattice_pool_in_use Connections serving a request.\n# TYPE lattice_pool_in_use gauge\nlattice_pool_in_use %d\n"
        "# HELP lattice_pool_waiting Requests waiting for a connection.\n# TYPE lattice_pool_waiting gauge\nlattice_pool_waiting %d\n"
        "# HELP lattice_pool_connected Slots holding an open connection.\n# TYPE lattice_pool_connected gauge\nlattice_pool_connected %d\n"
        "# HELP lattice_pool_errors_total Requests answered 503 because the database was unreachable.\n# TYPE lattice_pool_errors_total counter\nlattice_pool_errors_total %ld\n"
        "# HELP lattice_pool_timeouts_total Requests answered 503 after waiting pool_wait_ms.\n# TYPE lattice_pool_timeouts_total counter\nlattice_pool_timeouts_total %ld\n"
        "# HELP lattice_pool_connects_total Database connections opened.\n# TYPE lattice_pool_connects_total counter\nlattice_pool_connects_total %ld\n"
        "# HELP lattice_http_connections_open Client connections being served.\n# TYPE lattice_http_connections_open gauge\nlattice_http_connections_open %ld\n"
        "# HELP lattice_http_connections_refused_total Client connections refused by a connection cap.\n# TYPE lattice_http_connections_refused_total counter\nlattice_http_connections_refused_total %ld\n",
        size, in_use, waiting, healthy, atomic_load(&m_pool_errors), atomic_load(&m_pool_timeouts),
        atomic_load(&m_pool_reconnects), atomic_load(&m_connections_open), atomic_load(&m_connections_refused));
    put(&o,
        "# HELP lattice_pool_waits_total Requests that waited for a pooled connection (served or timed out).\n"
        "# TYPE lattice_pool_waits_total counter\nlattice_pool_waits_total %ld\n"
        "# HELP lattice_pool_wait_seconds_total Time those requests waited, summed.\n"
        "# TYPE lattice_pool_wait_seconds_total counter\nlattice_pool_wait_seconds_total %.6f\n",
        atomic_load(&m_pool_waits), (double) atomic_load(&m_pool_wait_us) / 1e6);
    put(&o,
        "# HELP lattice_statement_errors_total Errors PostgreSQL returned to the shim, by SQLSTATE class (its first two characters; PT = the extension's HTTP errors, PTnnn).\n"
        "# TYPE lattice_statement_errors_total counter\n");
    for (int a = 0; a < CLASS_CHARS; a++)
        for (int b = 0; b < CLASS_CHARS; b++) {
            unsigned long v = atomic_load_explicit(&stmt_errors[a * CLASS_CHARS + b], memory_order_relaxed);
            if (v)
                put(&o, "lattice_statement_errors_total{class=\"%c%c\"} %lu\n", class_char(a), class_char(b), v);
        }
    struct outbound_webhook_stats wh;
    outbound_webhook_stats(&wh);
    put(&o,
        "# HELP lattice_webhook_deliveries_in_flight Alert webhook deliveries under way (the webhook thread's and \"send test\").\n"
        "# TYPE lattice_webhook_deliveries_in_flight gauge\nlattice_webhook_deliveries_in_flight %ld\n"
        "# HELP lattice_webhook_attempts_total Alert webhook delivery attempts this shim ended, by outcome.\n"
        "# TYPE lattice_webhook_attempts_total counter\n"
        "lattice_webhook_attempts_total{outcome=\"delivered\"} %lu\n"
        "lattice_webhook_attempts_total{outcome=\"not_2xx\"} %lu\n"
        "lattice_webhook_attempts_total{outcome=\"refused\"} %lu\n"
        "lattice_webhook_attempts_total{outcome=\"failed\"} %lu\n",
        wh.in_flight, wh.delivered, wh.not_2xx, wh.refused, wh.failed);
    char events[2048];
    events_metrics(events, sizeof(events));
    put(&o, "%s", events);
    db_series(&o);
    reply_send(r, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, o.buf, o.len, false);
    free(o.buf);
}
