/*
 * lattice-shim: start, serve, stop.
 *
 *   lattice-shim [--config FILE]      (or LATTICE_SHIM_CONFIG=FILE)
 *
 * Every request goes through handle(): request id, the client (behind a
 * trusted proxy: forwarded.c), connection caps, URI cap, then the route
 * table (API), or the static web root.  SIGTERM/SIGINT
 * stop accepting, let in-flight requests finish (shutdown_timeout_ms at
 * most) and close the pool.
 */
#include "shim.h"
#include "outbound.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- per-address connection cap ---- */

struct conn_state {
    bool counted; /* holds a slot in addr_counts */
    char addr[48];
    double idle_since; /* connection opened or last answer written */
};

static pthread_mutex_t addr_mu = PTHREAD_MUTEX_INITIALIZER;
struct addr_count {
    char addr[48];
    int count;
};
static struct addr_count *addr_counts;
static int addr_slots;

/* Counts this connection against its address; false when over the cap. */
static bool addr_admit(struct conn_state *cs, const char *addr)
{
    if (cs->counted || cfg.per_address_max <= 0)
        return true;
    bool ok = false;
    pthread_mutex_lock(&addr_mu);
    int free_slot = -1, found = -1;
    for (int i = 0; i < addr_slots; i++) {
        if (addr_counts[i].count > 0 && strcmp(addr_counts[i].addr, addr) == 0) {
            found = i;
            break;
        }
        if (addr_counts[i].count == 0 && free_slot < 0)
            free_slot = i;
    }
    if (found < 0 && free_slot >= 0) {
        found = free_slot;
        snprintf(addr_counts[found].addr, sizeof(addr_counts[found].addr), "%s", addr);
    }
    if (found >= 0 && addr_counts[found].count < cfg.per_address_max) {
        addr_counts[found].count++;
        cs->counted = true;
        snprintf(cs->addr, sizeof(cs->addr), "%s", addr);
        ok = true;
    }
    pthread_mutex_unlock(&addr_mu);
    return ok;
}

static void addr_release(struct conn_state *cs)
{
    if (!cs->counted)
        return;
    pthread_mutex_lock(&addr_mu);
    for (int i = 0; i < addr_slots; i++)
        if (addr_counts[i].count > 0 && strcmp(addr_counts[i].addr, cs->addr) == 0) {
            addr_counts[i].count--;
            break;
        }
    pthread_mutex_unlock(&addr_mu);
    cs->counted = false;
}

static int on_init_connection(const struct mg_connection *conn, void **conn_data)
{
    (void) conn;
    struct conn_state *cs = calloc(1, sizeof(struct conn_state));
    if (cs)
        cs->idle_since = now_seconds();
    *conn_data = cs;
    atomic_fetch_add(&m_connections_open, 1);
    return 0;
}

static void on_connection_close(const struct mg_connection *conn)
{
    struct conn_state *cs = mg_get_user_connection_data(conn);
    if (cs) {
        addr_release(cs);
        free(cs);
        mg_set_user_connection_data(conn, NULL);
    }
    atomic_fetch_sub(&m_connections_open, 1);
}

/* ---- requests ---- */

/* civetweb stops writing answers once mg_stop begins, so shutdown first
   drains: new requests get 503 + close, in-flight ones finish. */
static atomic_bool draining;
static atomic_int in_flight;

static void request_id_of(struct mg_connection *conn, char rid[REQUEST_ID_MAX + 1])
{
    const char *given = mg_get_header(conn, "X-Request-Id");
    if (request_id_sane(given))
        snprintf(rid, REQUEST_ID_MAX + 1, "%s", given);
    else
        request_id_generate(rid);
}

static void preflight(struct mg_connection *conn, struct reply *r, const char *path, const char *allow)
{
    const char *origin = mg_get_header(conn, "Origin");
    if (!(route_path_flags(path) & R_CORS) || !origin || !config_list_has(cfg.cors_origins, origin) ||
        strlen(origin) > 256 || strpbrk(origin, "\r\n")) {
        reply_error(r, 403, "cors_forbidden", "this origin may not call this endpoint", NULL, NULL);
        return;
    }
    char h[1024];
    snprintf(h, sizeof(h),
             "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\nAccess-Control-Allow-Methods: %s\r\n"
             "Access-Control-Allow-Headers: Content-Type, X-Lattice-API-Key, X-Request-Id\r\n"
             "Access-Control-Max-Age: 600\r\nAllow: %s, OPTIONS\r\n",
             origin, allow, allow);
    reply_send(r, 204, NULL, h, NULL, 0, false);
}

static void method_not_allowed(struct reply *r, const char *allow)
{
    char h[300];
    snprintf(h, sizeof(h), "Allow: %s\r\n", allow);
    reply_error(r, 405, "method_not_allowed", "this method is not allowed here", NULL, h);
}

static int handle(struct mg_connection *conn, void *cbdata)
{
    (void) cbdata;
    double t0 = now_seconds();
    const struct mg_request_info *ri = mg_get_request_info(conn);
    const char *method = ri->request_method;
    const char *path = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
    char rid[REQUEST_ID_MAX + 1];
    request_id_of(conn, rid);
    struct client_origin client = { .tls = false };
    char why[160] = "";
    bool forwarding_ok = origin_of(ri->remote_addr, ri->is_ssl, ri->http_headers, ri->num_headers, &client, why,
                                   sizeof(why)) == 0;
    struct reply r = { .conn = conn,
                       .request_id = rid,
                       .client = client.addr,
                       .tls = client.tls,
                       .head = strcmp(method, "HEAD") == 0,
                       .otlp_proto = otlp_wants_proto(conn, path) };
    struct request_log log = { .route = ROUTE_UNMATCHED };
    struct conn_state *cs = mg_get_user_connection_data(conn);
    size_t uri_len = (path ? strlen(path) : 0) + (ri->query_string ? strlen(ri->query_string) + 1 : 0);

    atomic_fetch_add(&in_flight, 1);
    if (atomic_load(&draining)) {
        r.close = true;
        reply_error(&r, 503, "shutting_down", "the server is shutting down", NULL, "Retry-After: 1\r\n");
    } else if (cfg.max_connections > 0 && atomic_load(&m_connections_open) > cfg.max_connections) {
        atomic_fetch_add(&m_connections_refused, 1);
        r.close = true;
        reply_error(&r, 503, "too_many_connections", "the server has too many connections", NULL, "Retry-After: 1\r\n");
    } else if (cs && !client.via_proxy && !addr_admit(cs, ri->remote_addr)) {
        /* a TCP-level cap: a proxy's connections carry many clients */
        atomic_fetch_add(&m_connections_refused, 1);
        r.close = true;
        reply_error(&r, 429, "too_many_connections", "too many connections from this address", NULL,
                    "Retry-After: 1\r\n");
    } else if (!forwarding_ok) {
        reply_error(&r, 400, "bad_forwarding_header", why, NULL, NULL);
    } else if (!path || uri_len > (size_t) cfg.uri_max) {
        r.close = true;
        reply_error(&r, 414, "uri_too_long", "the request URI is too long", NULL, NULL);
    } else if (!utf8_valid(path, strlen(path))) {
        reply_error(&r, 400, "invalid_utf8", "the path is not valid UTF-8", NULL, NULL);
    } else {
        struct route_match m;
        char allow[128];
        int found = route_find(method, path, &m, allow, sizeof(allow));
        if (found == 1) {
            log.route = m.index;
            dispatch_api(conn, &r, &m, &log);
        } else if (found == -1 && strcmp(method, "OPTIONS") == 0) {
            preflight(conn, &r, path, allow);
        } else if (found == -1) {
            method_not_allowed(&r, allow);
        } else if (strncmp(path, "/api/", 5) == 0 || strcmp(path, "/api") == 0) {
            reply_error(&r, 404, "not_found", "no such endpoint", NULL, NULL);
        } else if (strcmp(method, "GET") == 0 || r.head) {
            log.route = ROUTE_STATIC;
            static_serve(conn, &r, path);
        } else {
            method_not_allowed(&r, "GET, HEAD");
        }
    }
    double dt = now_seconds() - t0;
    if (cs)
        cs->idle_since = t0 + dt;
    metrics_request(log.route, r.status, dt);
    log_access(ri, client.addr, rid, route_label(log.route), r.status, r.bytes, dt, log.tenant);
    atomic_fetch_sub(&in_flight, 1);
    /* The value is only civetweb's log status; 401 would make it drop
       keep-alive (it assumes an auth handshake), so report it as handled. */
    return r.status == 401 || r.status == 0 ? 1 : r.status;
}

/* civetweb's own refusals (malformed request, header too large, ...) in
   the contract's JSON shape. */
static int on_http_error(struct mg_connection *conn, int status, const char *msg)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (getenv("SHIM_DEBUG"))
        log_info("civetweb error %d: %s", status, msg);
    char rid[REQUEST_ID_MAX + 1];
    request_id_generate(rid);
    struct reply r = { .conn = conn, .request_id = rid, .tls = ri && ri->is_ssl, .close = true };
    /* civetweb 1.15 says 400 "Malformed message" both for a header over
       max_request_size and for one cut off by request_timeout_ms (a slow
       client): the time spent tells them apart. */
    struct conn_state *cs = mg_get_user_connection_data(conn);
    bool incomplete = status == 413 || (status == 400 && msg && strstr(msg, "Malformed"));
    bool slow = cs && (now_seconds() - cs->idle_since) * 1000.0 >= cfg.request_timeout_ms * 0.9;
    if (incomplete && slow)
        reply_error(&r, 408, "timeout", "the request took too long to arrive", NULL, NULL);
    else if (incomplete)
        reply_error(&r, 431, "headers_too_large", "the request headers are too large", NULL, NULL);
    else
        reply_error(&r, status, status >= 500 ? "internal" : "bad_request",
                    status >= 500 ? "internal error" : "malformed request", NULL, NULL);
    metrics_request(ROUTE_UNMATCHED, r.status, 0);
    if (ri) {
        /* the request did not parse: its method and path may point into the
           receive buffer without a terminating NUL, so they are not logged */
        struct mg_request_info unparsed = *ri;
        unparsed.request_method = NULL;
        unparsed.local_uri = unparsed.local_uri_raw = NULL;
        log_access(&unparsed, NULL, rid, "unmatched", r.status, r.bytes, 0, NULL);
    }
    return 0;
}

/* ---- start and stop ---- */

static struct mg_context *ctx;
static pthread_mutex_t stop_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stop_cv = PTHREAD_COND_INITIALIZER;
static bool stopped;

static void *stopper(void *arg)
{
    (void) arg;
    mg_stop(ctx);
    pthread_mutex_lock(&stop_mu);
    stopped = true;
    pthread_cond_signal(&stop_cv);
    pthread_mutex_unlock(&stop_mu);
    return NULL;
}

static bool stop_server(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, stopper, NULL) != 0)
        return false;
    pthread_detach(t);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += cfg.shutdown_timeout_ms / 1000;
    deadline.tv_nsec += (long) (cfg.shutdown_timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&stop_mu);
    while (!stopped)
        if (pthread_cond_timedwait(&stop_cv, &stop_mu, &deadline) != 0)
            break;
    bool ok = stopped;
    pthread_mutex_unlock(&stop_mu);
    return ok;
}

int main(int argc, char **argv)
{
    const char *config_path = getenv("LATTICE_SHIM_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config_path = argv[++i];
        else if (strcmp(argv[i], "--version") == 0) {
            printf("lattice-shim %s (civetweb %s)\n", SHIM_VERSION, mg_version());
            return 0;
        } else {
            fprintf(stderr, "usage: lattice-shim [--config FILE] [--version]\n");
            return 2;
        }
    }
    char err[512];
    if (config_load(config_path, err, sizeof(err)) != 0 || proxies_load(cfg.trusted_proxies, err, sizeof(err)) != 0) {
        fprintf(stderr, "lattice-shim: %s\n", err);
        return 2;
    }
    addr_slots = cfg.threads * 2 + 16;
    addr_counts = calloc((size_t) addr_slots, sizeof(*addr_counts));
    crash_report_install();
    if (!addr_counts || log_init() != 0 || metrics_init() != 0 || pool_init() != 0 || static_init() != 0)
        return 1;
    struct outbound_config outbound = { .conninfo = cfg.conninfo }; /* the rest: LATTICE_STRIPE_*, LATTICE_SMTP_* */
    if (outbound_start(&outbound) != 0)
        return 1;
    if (events_start() != 0)
        return 1;

    /* Signals go to this thread only (sigwait below); threads inherit the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    bool tls = cfg.tls_cert[0] != '\0';
    mg_init_library(tls ? MG_FEATURES_TLS : 0);
    char ports[128], threads[16], req_to[16], ka_to[16], hdr_max[16];
    snprintf(ports, sizeof(ports), strchr(cfg.listen, ':') ? "[%s]:%d%s" : "%s:%d%s", cfg.listen, cfg.port,
             tls ? "s" : "");
    snprintf(threads, sizeof(threads), "%d", cfg.threads);
    snprintf(req_to, sizeof(req_to), "%d", cfg.request_timeout_ms);
    snprintf(ka_to, sizeof(ka_to), "%d", cfg.keepalive_timeout_ms);
    snprintf(hdr_max, sizeof(hdr_max), "%d", cfg.header_max);
    const char *options[32];
    int n = 0;
    /* one option and its value a line */
    /* clang-format off */
    options[n++] = "listening_ports"; options[n++] = ports;
    options[n++] = "num_threads"; options[n++] = threads;
    options[n++] = "request_timeout_ms"; options[n++] = req_to;
    options[n++] = "keep_alive_timeout_ms"; options[n++] = ka_to;
    options[n++] = "enable_keep_alive"; options[n++] = "yes";
    options[n++] = "tcp_nodelay"; options[n++] = "1";  /* else ~40 ms per response (Nagle + delayed ACK) */
    options[n++] = "max_request_size"; options[n++] = hdr_max;
    options[n++] = "listen_backlog"; options[n++] = "512";
    options[n++] = "connection_queue"; options[n++] = "256";
    options[n++] = "enable_auth_domain_check"; options[n++] = "no";
    /* civetweb answers CORS preflights itself with "*" by default: off, the
       shim's allow-list decides */
    options[n++] = "access_control_allow_origin"; options[n++] = "";
    options[n++] = "access_control_allow_methods"; options[n++] = "";
    options[n++] = "access_control_allow_headers"; options[n++] = "";
    if (tls) {
        options[n++] = "ssl_certificate"; options[n++] = cfg.tls_cert;
        options[n++] = "ssl_protocol_version"; options[n++] = "4"; /* TLS 1.2 and later */
    }
    /* clang-format on */
    options[n] = NULL;

    struct mg_callbacks callbacks = { 0 };
    callbacks.init_connection = on_init_connection;
    callbacks.connection_close = on_connection_close;
    callbacks.http_error = on_http_error;
    unsigned code = 0;
    char start_err[256] = "";
    struct mg_init_data init = { .callbacks = &callbacks, .configuration_options = options };
    struct mg_error_data error = { .code = &code, .text = start_err, .text_buffer_size = sizeof(start_err) };
    ctx = mg_start2(&init, &error);
    if (!ctx) {
        log_error(NULL, "main: cannot start on %s: %s", ports, start_err);
        return 1;
    }
    mg_set_request_handler(ctx, "/", handle, NULL);
    log_info("listening on %s://%s (pool %d, threads %d)", tls ? "https" : "http", ports, cfg.pool_size, cfg.threads);

    int sig = 0;
    sigwait(&sigs, &sig);
    log_info("signal %d: stopping, finishing requests in flight", sig);
    atomic_store(&draining, true);
    events_close_streams(); /* event streams would hold the drain below */
    int64_t drain_until = now_ms() + cfg.shutdown_timeout_ms;
    while (atomic_load(&in_flight) > 0 && now_ms() < drain_until) {
        struct timespec tick = { 0, 10 * 1000000L };
        nanosleep(&tick, NULL);
    }
    if (stop_server()) {
        outbound_stop();
        events_stop();
        pool_close();
        log_info("stopped");
    } else
        log_error(NULL, "main: requests still running after %d ms; exiting anyway", cfg.shutdown_timeout_ms);
    mg_exit_library();
    free(addr_counts);
    return 0;
}
