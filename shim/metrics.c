/*
 * Prometheus text exposition at GET /metrics: requests by route, method and
 * status, a latency histogram per route, the pool (size, in use, waiting,
 * healthy, errors, timeouts, reconnects) and connections.  Counters are
 * lock-free atomics, so recording costs a few nanoseconds per request.
 */
#include "shim.h"

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
    atomic_ulong bucket[NBUCKETS];  /* non-cumulative; summed on output */
    atomic_ulong count;
    atomic_ulong sum_us;
};

static struct route_metrics *rm;
atomic_long m_connections_open, m_connections_refused;

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
                put(&o, "lattice_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} %lu\n",
                    route_label(i), method_of(i), s + STATUS_MIN, v);
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
        put(&o, "lattice_http_request_duration_seconds_bucket{route=\"%s\",method=\"%s\",le=\"+Inf\"} %lu\n"
                "lattice_http_request_duration_seconds_sum{route=\"%s\",method=\"%s\"} %.6f\n"
                "lattice_http_request_duration_seconds_count{route=\"%s\",method=\"%s\"} %lu\n",
            route_label(i), method_of(i), count, route_label(i), method_of(i),
            (double) atomic_load_explicit(&rm[i].sum_us, memory_order_relaxed) / 1e6, route_label(i),
            method_of(i), count);
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
    char events[2048];
    events_metrics(events, sizeof(events));
    put(&o, "%s", events);
    reply_send(r, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, o.buf, o.len, false);
    free(o.buf);
}
