/*
 * lattice-shim: a thin HTTP front for the lattice extension.
 *
 * One request = one route-table line = one SQL function called in one
 * transaction on a pooled libpq connection (docs/http-contract.md).  The
 * shim holds no business rule; this header is what its files share.
 */
#ifndef LATTICE_SHIM_H
#define LATTICE_SHIM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <civetweb.h>
#include <json-c/json.h>
#include <libpq-fe.h>

#include "utf8.h"

#define SHIM_VERSION "0.1.0"
#define SHIM_SCHEMA_VERSION "1.0.0" /* the plugins' wire protocol */
#define REQUEST_ID_MAX 64

/* ---- config.c ---------------------------------------------------------- */

enum timeout_class { T_FAST, T_NORMAL, T_SLOW, T_NCLASSES };

struct shim_config {
    char listen[64];
    int port;
    char conninfo[512];
    int pool_size;
    int pool_wait_ms;
    int threads;
    long body_max;
    long otlp_inflated_max; /* an OTLP body once inflated (otlp.c) */
    int header_max;
    int uri_max;
    int request_timeout_ms;
    int keepalive_timeout_ms;
    int max_connections;
    int per_address_max;
    int statement_timeout_ms[T_NCLASSES];
    int shutdown_timeout_ms;
    char web_root[512];
    char tls_cert[512];
    char cors_origins[1024];
    char access_log[512];
    char metrics_allow[256];
    char trusted_proxies[2048]; /* CIDRs whose forwarding headers count (forwarded.c) */
    char csp_page[512];
    bool test_routes;
    bool prepared_statements; /* off behind a transaction pooler (PgBouncer < 1.21) */
    /* live changes (events.c) */
    int events_max; /* SSE streams in all; 0 = threads / 2 */
    int events_per_address_max;
    int events_heartbeat_ms;
    int events_merge_ms;
    char events_conninfo[512]; /* the LISTEN connection; empty = conninfo */
};

extern struct shim_config cfg;

/* Loads defaults, then the file (may be NULL), then LATTICE_SHIM_* env. */
int config_load(const char *path, char *err, size_t errlen);
bool config_list_has(const char *list, const char *item);

/* ---- routes.c ---------------------------------------------------------- */

enum route_flags {
    R_JSON = 1 << 0,         /* a body, when sent, must be application/json */
    R_CORS = 1 << 1,         /* reachable from browsers on the CORS allow-list */
    R_TEST = 1 << 2,         /* only with test_routes = 1 (the HTTP suite) */
    R_LOCAL_HEALTH = 1 << 3, /* answered by the shim, no database */
    R_LOCAL_METRICS = 1 << 4,
    R_OUTBOUND = 1 << 5, /* runs the outbox job its answer names, after COMMIT (outbound.h) */
    R_EVENTS = 1 << 6,   /* a 200 answer becomes a Server-Sent Events stream (events.c) */
    R_STREAM = 1 << 7,   /* SETOF rows read one by one; a 200 is written as they come (stream.c) */
    R_OTLP = 1 << 8,     /* OTLP/HTTP: gzip, protobuf or JSON in, protobuf answers to protobuf (otlp.c) */
};

struct route {
    const char *method;
    const char *pattern;  /* literal segments and {name} parameters */
    const char *function; /* lattice_http.<function>; NULL when local */
    unsigned flags;
    enum timeout_class timeout;
    const char *headers; /* extra request headers passed in req.headers */
};

#define ROUTE_PARAMS_MAX 8

struct route_match {
    int index; /* into routes[], or -1 */
    int nparams;
    struct {
        const char *name;
        size_t name_len;
        const char *value;
        size_t value_len;
    } params[ROUTE_PARAMS_MAX];
};

extern const struct route routes[];
extern const int nroutes;

/* Pseudo-route indexes for metrics and logs of requests outside the table. */
#define ROUTE_UNMATCHED (nroutes)
#define ROUTE_STATIC (nroutes + 1)
#define ROUTE_SLOTS (nroutes + 2)

bool route_enabled(int i);
/* 1 = matched, 0 = no pattern matches, -1 = pattern matches but not method
   (allow then lists the methods, comma separated). */
int route_find(const char *method, const char *path, struct route_match *m, char *allow, size_t allowlen);
const char *route_label(int i);
unsigned route_path_flags(const char *path);

/* ---- pool.c ------------------------------------------------------------ */

struct pooled {
    PGconn *conn;
    unsigned char *prepared; /* per route: statement prepared on this conn */
    int slot;
};

enum pool_status { POOL_OK, POOL_TIMEOUT, POOL_DOWN };

/* The two statements every request starts with (prepared as tx_ro / tx_rw). */
extern const char *const SQL_TX_RO, *const SQL_TX_RW;

int pool_init(void);
enum pool_status pool_acquire(struct pooled **out);
void pool_release(struct pooled *p);
/* Gives p back with its connection closed (broken, or out of step with its
   answers): the slot reconnects when next taken. */
void pool_discard(struct pooled *p);
void pool_close(void);
void pool_drop_idle(void);
void pool_stats(int *size, int *in_use, int *waiting, int *healthy);

/* ---- errors.c ---------------------------------------------------------- */

struct http_error {
    int status;
    const char *code;
    int retry_after; /* seconds, 0 = no header */
};

/* Maps a SQLSTATE of an error not raised through lattice.raise_http. */
struct http_error error_from_sqlstate(const char *sqlstate);
/* Builds the error JSON body; details_json may be NULL. Caller frees. */
char *error_body(const char *code, const char *message, const char *details_json, const char *request_id);

/* ---- respond.c --------------------------------------------------------- */

struct reply {
    struct mg_connection *conn;
    const char *request_id;
    const char *client; /* the client's address (forwarded.c), NULL = the peer */
    bool head;          /* HEAD: headers only */
    bool tls;           /* the client's scheme is https: HSTS */
    bool close;         /* Connection: close */
    bool otlp_proto;    /* an OTLP protobuf export: errors are google.rpc.Status (otlp.c) */
    int status;
    size_t bytes;
};

/* Writes a complete response.  extra_headers: "Name: value\r\n" lines or NULL. */
void reply_send(struct reply *r, int status, const char *content_type, const char *extra_headers, const char *body,
                size_t body_len, bool page);
/* The head of a streamed answer: no Content-Length, Transfer-Encoding:
   chunked; false when the write failed. */
bool reply_start_chunked(struct reply *r, int status, const char *content_type, const char *extra_headers);
/* A JSON error answer in the contract's shape (request_id added). */
void reply_error(struct reply *r, int status, const char *code, const char *message, const char *details_json,
                 const char *extra_headers);

/* ---- dispatch.c -------------------------------------------------------- */

struct request_log {
    int route;
    char tenant[40];
};

void dispatch_api(struct mg_connection *conn, struct reply *r, const struct route_match *m, struct request_log *log);

/* ---- otlp.c ----------------------------------------------------------- */

struct otlp_req {
    bool proto;          /* the body was protobuf, now its OTLP/JSON */
    long rejected_spans; /* dropped by the decoder (otlp_json.h) */
    char rejected_message[192];
};

/* The request is a protobuf export to an R_OTLP route: its answers, errors
   included, are protobuf (r->otlp_proto). */
bool otlp_wants_proto(struct mg_connection *conn, const char *path);
/* After the body is read: inflates it, checks its type, decodes protobuf
   into OTLP/JSON; *body then holds the text for SQL ("{}" when empty).
   0, or an HTTP status already answered (*body freed). */
int otlp_prepare(struct mg_connection *conn, struct reply *r, char **body, size_t *len, struct otlp_req *o);
/* req.otlp: {"encoding", "rejectedSpans", "rejectedMessage"?} */
json_object *otlp_req_json(const struct otlp_req *o);
/* reply_error of a protobuf export: a google.rpc.Status. */
void otlp_reply_status(struct reply *r, int status, const char *code, const char *message, const char *extra_headers);
/* The function's answer to a protobuf export: an ExportTraceServiceResponse,
   or a google.rpc.Status when status >= 400. */
void otlp_reply_answer(struct reply *r, int status, const char *body, const char *extra_headers);

/* ---- stream.c --------------------------------------------------------- */

/* Reads what is left of a request's pipeline up to its Sync, dropping rows;
   the first error, when err is not NULL and *err is, goes to *err.  false
   when the connection broke or the pipeline did not end as it should. */
bool stream_drain(PGconn *c, PGresult **err);
/* Writes a 200 as it is read: the head (extra_headers, chunked), the body
   of first and of every row still to come on c (single-row mode), then the
   last chunk once the transaction committed.  An error or a client gone
   cuts the answer (no last chunk, connection closed).  Returns true when c
   is idle again, false when it must be dropped. */
bool stream_serve(struct reply *r, PGconn *c, const PGresult *first, const char *extra_headers, const char *function);

/* ---- events.c ---------------------------------------------------------- */

/* Starts the one LISTEN connection's thread. */
int events_start(void);
/* Holds the connection as an SSE stream for the tenant the subscribe
   function answered with (its JSON body); returns when the stream ends. */
void events_serve(struct mg_connection *conn, struct reply *r, const char *body);
/* SIGTERM: every stream ends now (handlers return); then events_stop()
   joins the listener and closes its connection. */
void events_close_streams(void);
void events_stop(void);
/* Prometheus lines for metrics.c; returns bytes written (< cap). */
size_t events_metrics(char *buf, size_t cap);

/* ---- forwarded.c ------------------------------------------------------- */

struct client_origin {
    char addr[48];  /* the client: the peer, or what a trusted proxy forwarded */
    bool tls;       /* the client spoke https (to the shim or to the proxy) */
    bool via_proxy; /* the peer is in trusted_proxies */
};

/* Parses trusted_proxies (comma-separated CIDRs); -1 with err naming the entry. */
int proxies_load(const char *list, char *err, size_t errlen);
bool proxy_trusted(const char *addr);
/* The client of a request from peer (whose connection is TLS or not) with
   these header lines; -1 with why (400 bad_forwarding_header) when a trusted
   peer's forwarding headers are unusable, o then describes the peer. */
int origin_of(const char *peer, bool peer_tls, const struct mg_header *hs, int nh, struct client_origin *o, char *why,
              size_t whylen);

/* ---- rate_headers.c ---------------------------------------------------- */

/* Appends the RateLimit headers of lattice_http.rate_state()'s answer
   ("<class> <limit> <remaining> <reset_seconds> <period_seconds>") as
   "Name: value\r\n" lines to buf (length *len, capacity cap); false, and
   nothing written, when state is malformed or does not fit. */
bool rate_headers_append(const char *state, int64_t now, char *buf, size_t *len, size_t cap);

/* ---- request_fields.c -------------------------------------------------- */

json_object *query_object(const char *qs);
const char *bearer_token(const char *auth);
bool cookie_value(const char *cookies, const char *name, char *buf, size_t buflen);
bool is_json_type(const char *ct);

/* ---- static.c ---------------------------------------------------------- */

int static_init(void);
void static_serve(struct mg_connection *conn, struct reply *r, const char *path);

/* ---- metrics.c --------------------------------------------------------- */

int metrics_init(void);
void metrics_request(int route, int status, double seconds);
void metrics_serve(struct reply *r);
/* A PostgreSQL error the shim got back: counted by SQLSTATE class (its first
   two characters; PTnnn, the extension's HTTP errors, are class PT). */
void metrics_statement_error(const char *sqlstate);
extern atomic_long m_connections_open, m_connections_refused, m_pool_errors, m_pool_timeouts, m_pool_reconnects,
    m_pool_waits, m_pool_wait_us;

/* ---- crash.c ----------------------------------------------------------- */

/* A fatal signal writes its backtrace to stderr (JSON lines), then kills. */
void crash_report_install(void);

/* ---- log.c ------------------------------------------------------------- */

int log_init(void);
/* client: the derived client address (NULL = the peer); the peer is logged
   too when it differs. */
void log_access(const struct mg_request_info *ri, const char *client, const char *request_id, const char *route,
                int status, size_t bytes, double seconds, const char *tenant);
void log_error(const char *request_id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* An info line about one request. */
void log_request_info(const char *request_id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- util.c ------------------------------------------------------------ */

bool request_id_sane(const char *s);
void request_id_generate(char out[REQUEST_ID_MAX + 1]);
double now_seconds(void);
int64_t now_ms(void);
void iso8601_now(char *buf, size_t len);

#endif
