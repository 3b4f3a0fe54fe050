/*
 * Live changes: GET /api/v1/events as Server-Sent Events.
 *
 * ONE thread holds ONE libpq connection that LISTENs on lattice_graph (the
 * payload '<user_id>:<version>' is sent by lattice.graph_bump at commit,
 * extension/sql/70_graph.sql) and reconnects with backoff (100 ms .. 5 s)
 * when PostgreSQL goes away.  Notifications sent while it was away are lost,
 * so after every (re)connect each open stream gets `event: refetch`.
 *
 * A stream is a civetweb handler that does not return.  dispatch.c has
 * already authenticated it on the pool through lattice_http.events_subscribe
 * (extension/sql/76_http_events.sql, answer {userId, graphVersion}) and
 * released the database connection; events_serve() then holds the client,
 * outside any transaction, sleeping in poll() on an eventfd the listener
 * signals and on the client's socket (to see it leave at once).  Each stream
 * therefore occupies one worker thread: events_max < threads.
 *
 * Bursts are merged: the first change for a stream opens a window of
 * events_merge_ms, and one `graph` event with the latest version closes it.
 *
 * Locking: ev.mu guards the stream table, every stream's pending state and
 * the ring of recent notifications.  Only a stream's own thread writes to its
 * client.
 */
#include "shim.h"

#include <dirent.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHANNEL "lattice_graph"
#define UUID_LEN 36
#define RING_SIZE 1024 /* recent notifications, see catch_up() */
#define RETRY_MS 3000  /* the browser's reconnect delay (SSE `retry:`) */

struct stream {
    char tenant[UUID_LEN + 1];
    char addr[48];
    int efd;         /* eventfd the listener signals */
    int64_t sent;    /* last version the client knows of */
    int64_t pending; /* newest version not sent yet, 0 = none */
    int64_t due_ms;  /* when the merged event goes out */
    bool refetch;    /* the listener reconnected: notifications were lost */
};

struct recent {
    char tenant[UUID_LEN + 1];
    int64_t version;
};

static struct {
    pthread_mutex_t mu;
    struct stream **slots; /* cfg.events_max of them */
    int count;
    bool closing;
    struct recent ring[RING_SIZE];
    unsigned long ring_next;
} ev = { .mu = PTHREAD_MUTEX_INITIALIZER };

static pthread_t listener;
static bool listener_started;
static int wake_fd = -1; /* stops the listener */
static atomic_bool stopping, listener_up;
static atomic_long m_notifications, m_delivered, m_refused, m_reconnects;

static void signal_fd(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof(one)) < 0) {
        /* EAGAIN: already signalled */
    }
}

static void drain_fd(int fd)
{
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0) {
        /* EAGAIN: nothing to drain */
    }
}

/* ---- the listener ---- */

/* '<uuid>:<version>' as lattice.graph_bump writes it. */
static bool parse_payload(const char *p, char tenant[UUID_LEN + 1], int64_t *version)
{
    if (strlen(p) < UUID_LEN + 2 || strlen(p) > UUID_LEN + 19 || p[UUID_LEN] != ':')
        return false;
    for (int i = 0; i < UUID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? p[i] != '-' : !((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return false;
    }
    int64_t v = 0;
    for (const char *d = p + UUID_LEN + 1; *d; d++) {
        if (*d < '0' || *d > '9')
            return false;
        v = v * 10 + (*d - '0');
    }
    memcpy(tenant, p, UUID_LEN);
    tenant[UUID_LEN] = '\0';
    *version = v;
    return v > 0;
}

/* Caller holds ev.mu.  Opens a merge window when none is open. */
static void offer(struct stream *s, int64_t version, int64_t now)
{
    if (version <= s->sent || version <= s->pending)
        return;
    bool opens = s->pending == 0;
    s->pending = version;
    if (opens) {
        s->due_ms = now + cfg.events_merge_ms;
        signal_fd(s->efd);
    }
}

static void on_notify(const char *payload)
{
    char tenant[UUID_LEN + 1];
    int64_t version;
    if (!parse_payload(payload, tenant, &version)) {
        log_error(NULL, "events: ignored notification %.80s", payload);
        return;
    }
    atomic_fetch_add(&m_notifications, 1);
    int64_t now = now_ms();
    pthread_mutex_lock(&ev.mu);
    struct recent *slot = &ev.ring[ev.ring_next++ % RING_SIZE];
    memcpy(slot->tenant, tenant, sizeof(slot->tenant));
    slot->version = version;
    for (int i = 0; i < cfg.events_max; i++)
        if (ev.slots[i] && strcmp(ev.slots[i]->tenant, tenant) == 0)
            offer(ev.slots[i], version, now);
    pthread_mutex_unlock(&ev.mu);
}

static void refetch_all(void)
{
    pthread_mutex_lock(&ev.mu);
    for (int i = 0; i < cfg.events_max; i++)
        if (ev.slots[i]) {
            ev.slots[i]->refetch = true;
            signal_fd(ev.slots[i]->efd);
        }
    pthread_mutex_unlock(&ev.mu);
}

/* Waits ms, or less when stopping. */
static void pause_ms(int ms)
{
    struct pollfd p = { .fd = wake_fd, .events = POLLIN };
    if (!atomic_load(&stopping))
        (void) poll(&p, 1, ms);
}

/* libpq would print the server's notices (e.g. the FATAL of a shutdown) as
   plain text on stderr, where every line is JSON. */
static void quiet_notice(void *arg, const char *message)
{
    (void) arg;
    log_info("events: server notice: %.200s", message);
}

/* Connects without blocking the stop: PQconnectPoll against the wake fd. */
static PGconn *listener_connect(void)
{
    const char *kw[] = { "dbname",          "application_name",    "connect_timeout",  "keepalives",
                         "keepalives_idle", "keepalives_interval", "keepalives_count", NULL };
    const char *val[] = { cfg.events_conninfo[0] ? cfg.events_conninfo : cfg.conninfo,
                          "lattice-shim-events",
                          "5",
                          "1",
                          "10",
                          "5",
                          "3",
                          NULL };
    PGconn *c = PQconnectStartParams(kw, val, 1);
    if (!c)
        return NULL;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    int64_t deadline = now_ms() + 5000;
    while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int64_t left = deadline - now_ms();
        if (left <= 0 || atomic_load(&stopping))
            break;
        struct pollfd p[2] = { { .fd = PQsocket(c), .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT },
                               { .fd = wake_fd, .events = POLLIN } };
        if (poll(p, 2, (int) left) > 0 && p[0].revents)
            st = PQconnectPoll(c);
    }
    if (st != PGRES_POLLING_OK || PQstatus(c) != CONNECTION_OK) {
        log_error(NULL, "events: listener connect failed: %s", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    PGresult *res = PQexec(c, "LISTEN " CHANNEL);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        log_error(NULL, "events: LISTEN failed: %s", PQresultErrorMessage(res));
    PQclear(res);
    if (!ok) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Reads notifications until the connection dies or the shim stops. */
static void listen_until_lost(PGconn *c)
{
    while (!atomic_load(&stopping)) {
        struct pollfd p[2] = { { .fd = PQsocket(c), .events = POLLIN }, { .fd = wake_fd, .events = POLLIN } };
        if (poll(p, 2, -1) < 0)
            continue;
        if (!p[0].revents)
            continue;
        if (!PQconsumeInput(c)) {
            log_error(NULL, "events: listener connection lost: %s", PQerrorMessage(c));
            return;
        }
        PGnotify *n;
        while ((n = PQnotifies(c)) != NULL) {
            on_notify(n->extra);
            PQfreemem(n);
        }
        /* anything else the server sends here (a NOTICE, a termination) ends up as a result */
        PGresult *res;
        while (!PQisBusy(c) && (res = PQgetResult(c)) != NULL)
            PQclear(res);
        if (PQstatus(c) == CONNECTION_BAD) {
            log_error(NULL, "events: listener connection lost: %s", PQerrorMessage(c));
            return;
        }
    }
}

static void *listener_main(void *arg)
{
    (void) arg;
    int failures = 0;
    bool connected_before = false;
    while (!atomic_load(&stopping)) {
        PGconn *c = listener_connect();
        if (!c) {
            failures++;
            int backoff = 100 << (failures < 6 ? failures - 1 : 5);
            pause_ms(backoff > 5000 ? 5000 : backoff);
            continue;
        }
        failures = 0;
        if (connected_before) {
            atomic_fetch_add(&m_reconnects, 1);
            log_info("events: listener reconnected; streams told to refetch");
        }
        connected_before = true;
        atomic_store(&listener_up, true);
        refetch_all(); /* whatever changed while nobody listened */
        listen_until_lost(c);
        atomic_store(&listener_up, false);
        PQfinish(c);
        if (!atomic_load(&stopping))
            pause_ms(100);
    }
    return NULL;
}

int events_start(void)
{
    ev.slots = calloc(cfg.events_max > 0 ? (size_t) cfg.events_max : 1, sizeof(*ev.slots));
    wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!ev.slots || wake_fd < 0) {
        log_error(NULL, "events: cannot allocate the stream table");
        return -1;
    }
    if (pthread_create(&listener, NULL, listener_main, NULL) != 0) {
        log_error(NULL, "events: cannot start the listener thread");
        return -1;
    }
    listener_started = true;
    return 0;
}

void events_close_streams(void)
{
    pthread_mutex_lock(&ev.mu);
    ev.closing = true;
    for (int i = 0; i < cfg.events_max; i++)
        if (ev.slots[i])
            signal_fd(ev.slots[i]->efd);
    pthread_mutex_unlock(&ev.mu);
}

void events_stop(void)
{
    events_close_streams();
    atomic_store(&stopping, true);
    if (listener_started) {
        signal_fd(wake_fd);
        pthread_join(listener, NULL);
        listener_started = false;
    }
    if (wake_fd >= 0)
        close(wake_fd);
    wake_fd = -1;
    free(ev.slots);
    ev.slots = NULL;
}

/* ---- streams ---- */

/* A change committed between the subscribe call and admit() was announced
   before this stream was in the table: find it among the recent ones.
   Caller holds ev.mu. */
static void catch_up(struct stream *s, int64_t now)
{
    unsigned long n = ev.ring_next < RING_SIZE ? ev.ring_next : RING_SIZE;
    for (unsigned long i = 0; i < n; i++)
        if (strcmp(ev.ring[i].tenant, s->tenant) == 0)
            offer(s, ev.ring[i].version, now);
}

/* 0, or the HTTP status refusing the stream. */
static int admit(struct stream *s)
{
    int status = 0, free_slot = -1, same_addr = 0;
    pthread_mutex_lock(&ev.mu);
    for (int i = 0; i < cfg.events_max; i++) {
        if (!ev.slots[i]) {
            if (free_slot < 0)
                free_slot = i;
        } else if (strcmp(ev.slots[i]->addr, s->addr) == 0)
            same_addr++;
    }
    if (ev.closing || free_slot < 0)
        status = 503;
    else if (same_addr >= cfg.events_per_address_max)
        status = 429;
    else {
        ev.slots[free_slot] = s;
        ev.count++;
        catch_up(s, now_ms());
    }
    pthread_mutex_unlock(&ev.mu);
    return status;
}

static void leave(struct stream *s)
{
    pthread_mutex_lock(&ev.mu);
    for (int i = 0; i < cfg.events_max; i++)
        if (ev.slots[i] == s) {
            ev.slots[i] = NULL;
            ev.count--;
            break;
        }
    pthread_mutex_unlock(&ev.mu);
}

/* civetweb does not expose a connection's socket; this one is found by its
   addresses so that poll() can see the client leave (POLLRDHUP) instead of
   waiting for a heartbeat write to fail.  -1 when not found: heartbeats
   then notice.  Only polled, never read or written. */
static int client_socket(const struct mg_request_info *ri)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        struct stat st;
        if (*end || end == e->d_name || fd == dirfd(d) || fstat((int) fd, &st) != 0 || !S_ISSOCK(st.st_mode))
            continue;
        struct sockaddr_storage peer, self;
        socklen_t plen = sizeof(peer), slen = sizeof(self);
        char host[64], port[16], sport[16];
        if (getpeername((int) fd, (struct sockaddr *) &peer, &plen) != 0 ||
            getsockname((int) fd, (struct sockaddr *) &self, &slen) != 0 ||
            getnameinfo((struct sockaddr *) &peer, plen, host, sizeof(host), port, sizeof(port),
                        NI_NUMERICHOST | NI_NUMERICSERV) != 0 ||
            getnameinfo((struct sockaddr *) &self, slen, NULL, 0, sport, sizeof(sport), NI_NUMERICSERV) != 0)
            continue;
        if (atoi(port) == ri->remote_port && atoi(sport) == ri->server_port && strcmp(host, ri->remote_addr) == 0)
            found = (int) fd;
    }
    closedir(d);
    return found;
}

static bool put(struct reply *r, const char *s, size_t n)
{
    if (mg_write(r->conn, s, n) != (int) n)
        return false;
    r->bytes += n;
    return true;
}

static bool put_headers(struct reply *r)
{
    char date[40], head[1024];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    /* The security headers of respond.c; no Content-Length: the stream
       ends when the connection closes. */
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\n"
                     "Date: %s\r\n"
                     "X-Request-Id: %s\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "Referrer-Policy: no-referrer\r\n"
                     "X-Frame-Options: DENY\r\n"
                     "Content-Security-Policy: default-src 'none'; frame-ancestors 'none'\r\n"
                     "%s"
                     "Cache-Control: no-store\r\n"
                     "Content-Type: text/event-stream; charset=utf-8\r\n"
                     "X-Accel-Buffering: no\r\n"
                     "Connection: close\r\n\r\n",
                     date, r->request_id ? r->request_id : "-",
                     r->tls ? "Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n" : "");
    mg_disable_connection_keep_alive(r->conn);
    r->status = 200;
    r->close = true;
    bool ok = n > 0 && (size_t) n < sizeof(head) && mg_write(r->conn, head, (size_t) n) == n;
    r->bytes = 0;
    return ok;
}

static bool put_event(struct reply *r, const char *name, const char *data)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "event: %s\ndata: %s\n\n", name, data);
    return n > 0 && (size_t) n < sizeof(buf) && put(r, buf, (size_t) n);
}

/* userId and graphVersion from lattice_http.events_subscribe's answer. */
static bool read_subscription(const char *body, struct stream *s)
{
    json_object *root = body ? json_tokener_parse(body) : NULL, *uid, *ver;
    bool ok = root && json_object_object_get_ex(root, "userId", &uid) && json_object_is_type(uid, json_type_string) &&
              json_object_get_string_len(uid) == UUID_LEN && json_object_object_get_ex(root, "graphVersion", &ver) &&
              json_object_is_type(ver, json_type_int);
    if (ok) {
        memcpy(s->tenant, json_object_get_string(uid), UUID_LEN + 1);
        s->sent = json_object_get_int64(ver);
    }
    json_object_put(root);
    return ok;
}

/* The stream's life: wait for the listener, the client leaving, the next
   heartbeat or the end of a merge window; write what is due. */
static void stream_loop(struct reply *r, struct stream *s, int client_fd)
{
    int64_t next_beat = now_ms() + cfg.events_heartbeat_ms;
    for (;;) {
        int64_t now = now_ms();
        pthread_mutex_lock(&ev.mu);
        bool closing = ev.closing, refetch = s->refetch;
        int64_t version = s->pending, due = s->due_ms;
        bool send = version > 0 && now >= due;
        s->refetch = false;
        if (send) {
            s->pending = 0;
            s->sent = version;
        }
        pthread_mutex_unlock(&ev.mu);
        if (closing)
            return;
        if (refetch && !put_event(r, "refetch", "{\"reason\":\"reconnected\"}"))
            return;
        if (send) {
            char data[64];
            snprintf(data, sizeof(data), "{\"version\":%lld}", (long long) version);
            if (!put_event(r, "graph", data))
                return;
            atomic_fetch_add(&m_delivered, 1);
        }
        if (now >= next_beat) {
            if (!put(r, ": heartbeat\n\n", 13))
                return;
            next_beat = now + cfg.events_heartbeat_ms;
        }
        int64_t wait = next_beat - now;
        if (version > 0 && !send && due - now < wait)
            wait = due - now;
        struct pollfd p[2] = { { .fd = s->efd, .events = POLLIN }, { .fd = client_fd, .events = POLLRDHUP } };
        if (poll(p, client_fd >= 0 ? 2 : 1, (int) (wait > 0 ? wait : 0)) < 0)
            continue;
        if (p[0].revents & POLLIN)
            drain_fd(s->efd);
        if (client_fd >= 0 && (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR)))
            return; /* the client left */
        if (client_fd >= 0 && (p[1].revents & POLLIN))
            client_fd = -1; /* it sent bytes (never read here): leave it to the heartbeats */
    }
}

void events_serve(struct mg_connection *conn, struct reply *r, const char *body)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    struct stream *s = calloc(1, sizeof(*s));
    if (!s || !read_subscription(body, s)) {
        log_error(r->request_id, "events: lattice_http.events_subscribe answered no tenant");
        reply_error(r, 500, "internal", "internal error", NULL, NULL);
        free(s);
        return;
    }
    if (r->head) { /* the headers a GET would get, and no stream */
        free(s);
        r->close = true;
        reply_send(r, 200, "text/event-stream; charset=utf-8", NULL, NULL, 0, false);
        return;
    }
    if (!atomic_load(&listener_up)) {
        free(s);
        atomic_fetch_add(&m_refused, 1);
        reply_error(r, 503, "events_unavailable", "live changes are not available now; poll instead", NULL,
                    "Retry-After: 5\r\n");
        return;
    }
    snprintf(s->addr, sizeof(s->addr), "%s", r->client ? r->client : ri->remote_addr); /* behind a proxy: its client */
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int refused = s->efd < 0 ? 503 : admit(s);
    if (refused) {
        if (s->efd >= 0)
            close(s->efd);
        free(s);
        atomic_fetch_add(&m_refused, 1);
        r->close = true;
        reply_error(r, refused, "too_many_streams",
                    refused == 429 ? "too many event streams from this address" : "too many event streams", NULL,
                    "Retry-After: 5\r\n");
        return;
    }
    char hello[128];
    int n = snprintf(hello, sizeof(hello), "retry: %d\nevent: ready\ndata: {\"version\":%lld}\n\n", RETRY_MS,
                     (long long) s->sent);
    if (put_headers(r) && put(r, hello, (size_t) n))
        stream_loop(r, s, client_socket(ri));
    leave(s);
    close(s->efd);
    free(s);
}

size_t events_metrics(char *buf, size_t cap)
{
    pthread_mutex_lock(&ev.mu);
    int streams = ev.count;
    pthread_mutex_unlock(&ev.mu);
    int n = snprintf(
        buf, cap,
        "# HELP lattice_events_streams Open Server-Sent Events streams.\n# TYPE lattice_events_streams gauge\nlattice_events_streams %d\n"
        "# HELP lattice_events_streams_max Configured events_max.\n# TYPE lattice_events_streams_max gauge\nlattice_events_streams_max %d\n"
        "# HELP lattice_events_listener_connected 1 while the LISTEN connection is up.\n# TYPE lattice_events_listener_connected gauge\nlattice_events_listener_connected %d\n"
        "# HELP lattice_events_listener_reconnects_total LISTEN connections re-established.\n# TYPE lattice_events_listener_reconnects_total counter\nlattice_events_listener_reconnects_total %ld\n"
        "# HELP lattice_events_notifications_total Graph notifications received.\n# TYPE lattice_events_notifications_total counter\nlattice_events_notifications_total %ld\n"
        "# HELP lattice_events_delivered_total Graph events written to streams (after merging).\n# TYPE lattice_events_delivered_total counter\nlattice_events_delivered_total %ld\n"
        "# HELP lattice_events_refused_total Streams refused (limits, listener down).\n# TYPE lattice_events_refused_total counter\nlattice_events_refused_total %ld\n",
        streams, cfg.events_max, atomic_load(&listener_up) ? 1 : 0, atomic_load(&m_reconnects),
        atomic_load(&m_notifications), atomic_load(&m_delivered), atomic_load(&m_refused));
    if (n < 0 || (size_t) n >= cap) {
        if (cap)
            buf[0] = '\0';
        return 0;
    }
    return (size_t) n;
}
