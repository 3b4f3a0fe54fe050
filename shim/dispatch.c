/*
 * One API request: read the body (capped), build `req` (docs/http-contract.md),
 * call lattice_http.<function> in one transaction on a pooled connection and
 * write its answer out as it is.
 *
 * The transaction is one pipeline, one round trip:
 *   tx_ro|tx_rw   set_config(transaction_read_only, statement_timeout) LOCAL
 *   [Parse rN]    the route's statement, the first time on this connection
 *   Execute rN    SELECT status, headers, body, tenant, rate state FROM lattice_http.fn($1, $2)
 *   Sync          commits the implicit transaction, or rolls it back on error
 *
 * A streamed route (R_STREAM) runs the same pipeline with its Execute in
 * single-row mode: the first row decides, and a 200 is then written as the
 * rows come (stream.c) while the connection stays taken.
 */
#include "shim.h"
#include "outbound.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define EXTRA_HEADERS_MAX 8192
#define ROW_FIELDS 5 /* status, headers, body, tenant, rate state (outbound.h keeps the shape) */

/* ---- the request ---- */

static void add_str(json_object *o, const char *key, const char *val)
{
    if (val)
        json_object_object_add(o, key, json_object_new_string(val));
}

static void add_cookie(json_object *o, const char *key, const char *cookies, const char *name)
{
    char buf[1024];
    if (cookie_value(cookies, name, buf, sizeof(buf)))
        add_str(o, key, buf);
}

/* The extra headers a route forwards, lower-case names, comma-separated. */
static json_object *forwarded_headers(struct mg_connection *conn, const char *list)
{
    json_object *h = json_object_new_object();
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t) (e - p) : strlen(p);
        char name[64];
        if (len > 0 && len < sizeof(name)) {
            memcpy(name, p, len);
            name[len] = '\0';
            add_str(h, name, mg_get_header(conn, name));
        }
        p += len + (e ? 1 : 0);
    }
    return h;
}

static char *build_req(struct mg_connection *conn, const struct route *rt, const struct route_match *m,
                       const struct reply *r, const struct otlp_req *otlp)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    json_object *req = json_object_new_object();
    add_str(req, "method", ri->request_method);
    add_str(req, "path", ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri);
    add_str(req, "route", rt->pattern);

    json_object *params = json_object_new_object();
    for (int i = 0; i < m->nparams; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int) m->params[i].name_len, m->params[i].name);
        json_object_object_add(params, name,
                               json_object_new_string_len(m->params[i].value, (int) m->params[i].value_len));
    }
    json_object_object_add(req, "params", params);
    json_object_object_add(req, "query", query_object(ri->query_string));

    add_str(req, "api_key", mg_get_header(conn, "X-Lattice-API-Key"));
    add_str(req, "bearer", bearer_token(mg_get_header(conn, "Authorization")));
    const char *cookies = mg_get_header(conn, "Cookie");
    add_cookie(req, "session", cookies, "lattice_session");
    add_cookie(req, "csrf_cookie", cookies, "lattice_csrf");
    add_str(req, "csrf_header", mg_get_header(conn, "X-CSRF-Token"));
    add_str(req, "content_type", mg_get_header(conn, "Content-Type"));
    add_str(req, "client_addr", r->client ? r->client : ri->remote_addr); /* behind a trusted proxy: its client */
    add_str(req, "request_id", r->request_id);
    json_object_object_add(req, "tls", json_object_new_boolean(r->tls));
    add_str(req, "user_agent", mg_get_header(conn, "User-Agent"));
    if (rt->headers)
        json_object_object_add(req, "headers", forwarded_headers(conn, rt->headers));

    if (otlp)
        json_object_object_add(req, "otlp", otlp_req_json(otlp));
    char *out = strdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(req);
    return out;
}

/* Reads the body, refusing more than body_max (413) before reading when the
   length is announced, and while reading when it is chunked.  Returns 0 and
   *out (NULL when empty), or an HTTP status already answered. */
static int read_body(struct mg_connection *conn, struct reply *r, char **out, size_t *out_len)
{
    const struct mg_request_info *ri = mg_get_request_info(conn);
    *out = NULL;
    *out_len = 0;
    long long announced = ri->content_length;
    if (announced > cfg.body_max) {
        r->close = true; /* the body stays unread */
        reply_error(r, 413, "too_large", "request body too large", NULL, NULL);
        return 413;
    }
    size_t cap = announced >= 0 ? (size_t) announced : 16384;
    size_t len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        reply_error(r, 503, "unavailable", "out of memory", NULL, "Retry-After: 1\r\n");
        return 503;
    }
    for (;;) {
        if (len == cap) {
            if (announced >= 0 || cap >= (size_t) cfg.body_max + 1)
                break;
            size_t ncap = cap * 2 > (size_t) cfg.body_max + 1 ? (size_t) cfg.body_max + 1 : cap * 2;
            char *nb = realloc(buf, ncap + 1);
            if (!nb)
                break;
            buf = nb;
            cap = ncap;
        }
        int n = mg_read(conn, buf + len, cap - len);
        if (n <= 0)
            break;
        len += (size_t) n;
    }
    if (len > (size_t) cfg.body_max) {
        free(buf);
        r->close = true;
        reply_error(r, 413, "too_large", "request body too large", NULL, NULL);
        return 413;
    }
    if (announced >= 0 && len < (size_t) announced) {
        free(buf);
        r->close = true;
        reply_error(r, 400, "incomplete_body", "request body shorter than Content-Length", NULL, NULL);
        return 400;
    }
    if (len == 0) {
        free(buf);
        return 0;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* ---- the call ---- */

/* CALL_STREAM: the first row of a single-row call is in row, the rest is
   still to be read from the connection. */
enum call_outcome { CALL_OK, CALL_ERROR, CALL_BROKEN, CALL_STREAM };

struct call {
    PGresult *row; /* the function's answer */
    PGresult *err; /* the first error */
    int err_stage; /* 0 = tx settings, 1 = prepare, 2 = execute */
};

static enum call_outcome run_call(struct pooled *p, int idx, bool read_only, int timeout_ms, const char *req,
                                  const char *body, bool single_row, struct call *out)
{
    PGconn *c = p->conn;
    const struct route *rt = &routes[idx];
    char stmt[16], timeout[16];
    snprintf(stmt, sizeof(stmt), "r%d", idx);
    snprintf(timeout, sizeof(timeout), "%d", timeout_ms);
    bool named = cfg.prepared_statements;
    bool prepare = named && !p->prepared[idx];
    const char *tparams[1] = { timeout };
    const char *params[2] = { req, body };
    char sql[320];
    snprintf(sql, sizeof(sql),
             "SELECT r.status, r.headers::text, r.body, lattice_http.tenant_id()::text, "
             "lattice_http.rate_state() FROM lattice_http.%s($1::jsonb, $2::text) r",
             rt->function);
    memset(out, 0, sizeof(*out));

    if (!(named ? PQsendQueryPrepared(c, read_only ? "tx_ro" : "tx_rw", 1, tparams, NULL, NULL, 0)
                : PQsendQueryParams(c, read_only ? SQL_TX_RO : SQL_TX_RW, 1, NULL, tparams, NULL, NULL, 0)))
        return CALL_BROKEN;
    if (prepare && !PQsendPrepare(c, stmt, sql, 2, NULL))
        return CALL_BROKEN;
    if (!(named ? PQsendQueryPrepared(c, stmt, 2, params, NULL, NULL, 0)
                : PQsendQueryParams(c, sql, 2, NULL, params, NULL, NULL, 0)) ||
        !PQpipelineSync(c))
        return CALL_BROKEN;

    static const int stages_with_prepare[] = { 0, 1, 2 }, stages_without[] = { 0, 2 };
    const int *stages = prepare ? stages_with_prepare : stages_without;
    int nstages = prepare ? 3 : 2;
    for (int k = 0; k < nstages; k++) {
        /* the Execute is the command being read now: one row per result
           (unless an earlier error aborted it: its result is already here) */
        if (single_row && stages[k] == 2 && PQpipelineStatus(c) != PQ_PIPELINE_ABORTED && !PQsetSingleRowMode(c)) {
            log_error(NULL, "dispatch: single-row mode refused for lattice_http.%s", rt->function);
            return CALL_BROKEN;
        }
        PGresult *res = PQgetResult(c);
        if (!res)
            return CALL_BROKEN;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_FATAL_ERROR) {
            if (!out->err) {
                out->err = res;
                out->err_stage = stages[k];
                /* unnamed: an error with a position in our statement is its parse */
                if (!named && stages[k] == 2 && PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION))
                    out->err_stage = 1;
            } else
                PQclear(res);
            if (PQstatus(c) == CONNECTION_BAD)
                return CALL_BROKEN;
        } else if (stages[k] == 2 && st == PGRES_SINGLE_TUPLE) {
            out->row = res;
            if (prepare)
                p->prepared[idx] = 1;
            return CALL_STREAM;
        } else if (stages[k] == 2 && st == PGRES_TUPLES_OK) {
            out->row = res; /* single-row mode: no row at all */
        } else
            PQclear(res);
        /* each command's results end with a NULL */
        PGresult *end = PQgetResult(c);
        if (end) {
            PQclear(end);
            return CALL_BROKEN;
        }
    }
    PGresult *sync = PQgetResult(c);
    bool synced = sync && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
    PQclear(sync);
    if (!synced)
        return CALL_BROKEN;
    if (prepare && !(out->err && out->err_stage == 1))
        p->prepared[idx] = 1;
    return out->err ? CALL_ERROR : CALL_OK;
}

static void call_clear(struct call *c)
{
    PQclear(c->row);
    PQclear(c->err);
    c->row = c->err = NULL;
}

/* A streamed call whose first row is no 200: read to its end, then it is
   answered like any route's (its first row, or the error that came). */
static enum call_outcome call_finish(PGconn *c, struct call *out)
{
    if (!stream_drain(c, &out->err))
        return CALL_BROKEN;
    if (!out->err)
        return CALL_OK;
    out->err_stage = 2;
    return CALL_ERROR;
}

static bool first_row_streams(const PGresult *row)
{
    return PQntuples(row) == 1 && PQnfields(row) == ROW_FIELDS && !PQgetisnull(row, 0, 0) &&
           atoi(PQgetvalue(row, 0, 0)) == 200;
}

/* ---- the answer ---- */

static bool header_name_ok(const char *s)
{
    if (!*s || strlen(s) > 64)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char) *s) && *s != '-' && *s != '_')
            return false;
    return true;
}

static bool header_value_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char) *s < 0x20 && *s != '\t')
            return false;
    return true;
}

static bool hop_by_hop(const char *name)
{
    static const char *const refused[] = { "connection", "content-length", "transfer-encoding", "keep-alive", "upgrade",
                                           "te",         "trailer",        "x-request-id",      "date" };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (strcasecmp(name, refused[i]) == 0)
            return true;
    return false;
}

static void append_header(char *buf, size_t *len, const char *name, const char *value, const char *request_id)
{
    if (!header_name_ok(name) || !header_value_ok(value) || hop_by_hop(name)) {
        log_error(request_id, "dispatch: dropped response header %.64s", name);
        return;
    }
    int n = snprintf(buf + *len, EXTRA_HEADERS_MAX - *len, "%s: %s\r\n", name, value);
    if (n < 0 || (size_t) n >= EXTRA_HEADERS_MAX - *len) {
        buf[*len] = '\0';
        log_error(request_id, "dispatch: response headers over %d bytes, dropped %.64s", EXTRA_HEADERS_MAX, name);
        return;
    }
    *len += (size_t) n;
}

/* {"Name": "v" | ["v1", "v2"]} -> "Name: v\r\n" lines in buf. */
static void headers_from_json(json_object *obj, char *buf, size_t *len, const char *request_id)
{
    if (!obj || !json_object_is_type(obj, json_type_object))
        return;
    json_object_object_foreach(obj, key, val) {
        if (json_object_is_type(val, json_type_array)) {
            size_t n = json_object_array_length(val);
            for (size_t i = 0; i < n; i++) {
                json_object *v = json_object_array_get_idx(val, i);
                if (json_object_is_type(v, json_type_string))
                    append_header(buf, len, key, json_object_get_string(v), request_id);
            }
        } else if (json_object_is_type(val, json_type_string) || json_object_is_type(val, json_type_int))
            append_header(buf, len, key, json_object_get_string(val), request_id);
    }
}

static void cors_headers(struct mg_connection *conn, const struct route *rt, char *buf, size_t *len)
{
    const char *origin = mg_get_header(conn, "Origin");
    if (!(rt->flags & R_CORS) || !origin || !cfg.cors_origins[0] || !config_list_has(cfg.cors_origins, origin) ||
        !header_value_ok(origin) || strlen(origin) > 256)
        return;
    int n = snprintf(buf + *len, EXTRA_HEADERS_MAX - *len,
                     "Access-Control-Allow-Origin: %s\r\nVary: Origin\r\nAccess-Control-Expose-Headers: "
                     "X-Request-Id, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, Retry-After\r\n",
                     origin);
    if (n > 0 && (size_t) n < EXTRA_HEADERS_MAX - *len)
        *len += (size_t) n;
    else
        buf[*len] = '\0';
}

/* An error answer of the function itself (not raised): add request_id. */
static char *with_request_id(const char *body, const char *request_id)
{
    json_object *root = json_tokener_parse(body);
    json_object *err = NULL;
    char *out = NULL;
    if (root && json_object_object_get_ex(root, "error", &err) && json_object_is_type(err, json_type_object) &&
        !json_object_object_get_ex(err, "request_id", NULL)) {
        json_object_object_add(err, "request_id", json_object_new_string(request_id));
        out = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    json_object_put(root);
    return out;
}

/* The function wrote RateLimit headers itself: they win over rate_state(). */
static bool has_rate_headers(json_object *h)
{
    if (!h || !json_object_is_type(h, json_type_object))
        return false;
    json_object_object_foreach(h, key, val) {
        (void) val;
        if (strncasecmp(key, "RateLimit-", 10) == 0 || strncasecmp(key, "X-RateLimit-", 12) == 0)
            return true;
    }
    return false;
}

/* An answer row's headers, its rate state's RateLimit headers and the CORS
   headers, as "Name: value\r\n" lines in extra (EXTRA_HEADERS_MAX bytes). */
static void row_headers(struct mg_connection *conn, const struct reply *r, const struct route *rt, const PGresult *row,
                        char *extra)
{
    size_t elen = 0;
    extra[0] = '\0';
    json_object *h = PQgetisnull(row, 0, 1) ? NULL : json_tokener_parse(PQgetvalue(row, 0, 1));
    headers_from_json(h, extra, &elen, r->request_id);
    if (!PQgetisnull(row, 0, 4) && !has_rate_headers(h) &&
        !rate_headers_append(PQgetvalue(row, 0, 4), (int64_t) time(NULL), extra, &elen, EXTRA_HEADERS_MAX))
        log_error(r->request_id, "dispatch: ignored rate state \"%.64s\" of lattice_http.%s", PQgetvalue(row, 0, 4),
                  rt->function);
    json_object_put(h);
    cors_headers(conn, rt, extra, &elen);
}

static void answer_row(struct mg_connection *conn, struct reply *r, const struct route *rt, PGresult *row,
                       struct request_log *log)
{
    if (PQntuples(row) != 1 || PQnfields(row) != ROW_FIELDS || PQgetisnull(row, 0, 0)) {
        log_error(r->request_id, "dispatch: lattice_http.%s returned no status", rt->function);
        reply_error(r, 500, "internal", "internal error", NULL, NULL);
        return;
    }
    int status = atoi(PQgetvalue(row, 0, 0));
    if (status < 200 || status > 599) {
        log_error(r->request_id, "dispatch: lattice_http.%s returned status %d", rt->function, status);
        reply_error(r, 500, "internal", "internal error", NULL, NULL);
        return;
    }
    if (!PQgetisnull(row, 0, 3))
        snprintf(log->tenant, sizeof(log->tenant), "%s", PQgetvalue(row, 0, 3));
    if ((rt->flags & R_EVENTS) && status == 200) { /* authenticated: the stream (events.c) */
        events_serve(conn, r, PQgetisnull(row, 0, 2) ? NULL : PQgetvalue(row, 0, 2));
        return;
    }

    char extra[EXTRA_HEADERS_MAX];
    row_headers(conn, r, rt, row, extra);

    const char *body = PQgetisnull(row, 0, 2) ? NULL : PQgetvalue(row, 0, 2);
    if (r->otlp_proto) { /* a protobuf export: a protobuf answer */
        otlp_reply_answer(r, status, body, extra);
        return;
    }
    char *patched = status >= 400 && body ? with_request_id(body, r->request_id) : NULL;
    if (patched)
        body = patched;
    reply_send(r, status, body ? "application/json" : NULL, extra, body ? body : "", body ? strlen(body) : 0, false);
    free(patched);
}

/* A raised error: PTnnn carries status, code, details and headers (in the
   DETAIL as JSON); other SQLSTATEs go through the contract's table. */
static void answer_error(struct mg_connection *conn, struct reply *r, const struct route *rt, const struct call *call)
{
    PGresult *e = call->err;
    const char *state = PQresultErrorField(e, PG_DIAG_SQLSTATE);
    metrics_statement_error(state);
    const char *msg = PQresultErrorField(e, PG_DIAG_MESSAGE_PRIMARY);
    const char *detail = PQresultErrorField(e, PG_DIAG_MESSAGE_DETAIL);
    char extra[EXTRA_HEADERS_MAX];
    size_t elen = 0;
    extra[0] = '\0';
    cors_headers(conn, rt, extra, &elen);

    if (state && state[0] == 'P' && state[1] == 'T' && isdigit((unsigned char) state[2]) &&
        isdigit((unsigned char) state[3]) && isdigit((unsigned char) state[4]) && atoi(state + 2) >= 400) {
        int status = atoi(state + 2);
        json_object *d = detail ? json_tokener_parse(detail) : NULL;
        json_object *code = NULL, *details = NULL, *headers = NULL;
        if (d) {
            json_object_object_get_ex(d, "code", &code);
            json_object_object_get_ex(d, "details", &details);
            json_object_object_get_ex(d, "headers", &headers);
        }
        headers_from_json(headers, extra, &elen, r->request_id);
        reply_error(r, status,
                    code && json_object_is_type(code, json_type_string) ? json_object_get_string(code) : "error", msg,
                    details ? json_object_to_json_string_ext(details, JSON_C_TO_STRING_PLAIN) : NULL, extra);
        json_object_put(d);
        return;
    }
    if (call->err_stage == 1 && state && (!strcmp(state, "42883") || !strcmp(state, "3F000"))) {
        log_error(r->request_id, "dispatch: lattice_http.%s is not installed (%s)", rt->function, msg ? msg : "");
        if (elen + 20 < sizeof(extra))
            strcat(extra, "Retry-After: 5\r\n");
        reply_error(r, 503, "unavailable", "this endpoint is not available", NULL, extra);
        return;
    }
    struct http_error he = error_from_sqlstate(state);
    if (he.status >= 500)
        log_error(r->request_id, "dispatch: lattice_http.%s failed: %s %s", rt->function, state ? state : "-",
                  msg ? msg : PQresultErrorMessage(e));
    if (he.retry_after && elen + 20 < sizeof(extra))
        strcat(extra, "Retry-After: 1\r\n");
    const char *shown = he.status < 500    ? msg
                        : he.status == 504 ? "the request took too long"
                        : he.status == 503 ? "the database is unavailable"
                                           : "internal error";
    reply_error(r, he.status, he.code, shown, NULL, extra);
}

/* A streamed route's 200: its first row is in row and the statement still
   runs on p, which this gives back to the pool. */
static void answer_stream(struct mg_connection *conn, struct reply *r, const struct route *rt, struct pooled *p,
                          const PGresult *row, struct request_log *log)
{
    if (!PQgetisnull(row, 0, 3))
        snprintf(log->tenant, sizeof(log->tenant), "%s", PQgetvalue(row, 0, 3));
    char extra[EXTRA_HEADERS_MAX];
    row_headers(conn, r, rt, row, extra);
    if (!stream_serve(r, p->conn, row, extra, rt->function)) {
        bool down = PQstatus(p->conn) == CONNECTION_BAD;
        log_error(r->request_id, "dispatch: connection dropped after a stream: %s", PQerrorMessage(p->conn));
        pool_discard(p);
        if (down)
            pool_drop_idle();
        return;
    }
    pool_release(p);
}

/* ---- shim-local answers ---- */

static void answer_health(struct reply *r)
{
    char ts[40], body[256];
    iso8601_now(ts, sizeof(ts));
    int n = snprintf(body, sizeof(body),
                     "{\"status\":\"ok\",\"version\":\"%s\",\"schemaVersion\":\"%s\",\"timestamp\":\"%s\"}",
                     SHIM_VERSION, SHIM_SCHEMA_VERSION, ts);
    reply_send(r, 200, "application/json", NULL, body, (size_t) n, false);
}

void dispatch_api(struct mg_connection *conn, struct reply *r, const struct route_match *m, struct request_log *log)
{
    const struct route *rt = &routes[m->index];
    const struct mg_request_info *ri = mg_get_request_info(conn);
    if (rt->flags & R_LOCAL_HEALTH) {
        answer_health(r);
        return;
    }
    if (rt->flags & R_LOCAL_METRICS) {
        /* the TCP peer, never a forwarded address: metrics stay local to the host */
        if (!config_list_has(cfg.metrics_allow, ri->remote_addr))
            reply_error(r, 403, "forbidden", "metrics are not served to this address", NULL, NULL);
        else
            metrics_serve(r);
        return;
    }

    /* HTTP/1.0 has no chunks: a cut answer would look complete */
    if ((rt->flags & R_STREAM) && (!ri->http_version || strcmp(ri->http_version, "1.1") != 0)) {
        r->close = true;
        reply_error(r, 426, "upgrade_required", "this answer is streamed and needs HTTP/1.1", NULL,
                    "Upgrade: HTTP/1.1\r\n");
        return;
    }
    char *body = NULL;
    size_t body_len = 0;
    if (read_body(conn, r, &body, &body_len) != 0)
        return;
    struct otlp_req otlp;
    if ((rt->flags & R_OTLP) && otlp_prepare(conn, r, &body, &body_len, &otlp) != 0)
        return;
    if (body && (rt->flags & R_JSON) && !is_json_type(mg_get_header(conn, "Content-Type"))) {
        reply_error(r, 415, "unsupported_media_type", "the body must be application/json", NULL, NULL);
        free(body);
        return;
    }
    if (body && !utf8_valid(body, body_len)) {
        reply_error(r, 400, "invalid_utf8", "the body is not valid UTF-8", NULL, NULL);
        free(body);
        return;
    }
    char *req = build_req(conn, rt, m, r, rt->flags & R_OTLP ? &otlp : NULL);
    bool read_only = strcmp(ri->request_method, "GET") == 0 || strcmp(ri->request_method, "HEAD") == 0;

    struct call call = { 0 };
    enum call_outcome outcome = CALL_BROKEN;
    struct pooled *streaming = NULL; /* taken until its stream ends */
    for (int attempt = 0; attempt < 2; attempt++) {
        struct pooled *p;
        enum pool_status ps = pool_acquire(&p);
        if (ps != POOL_OK) {
            reply_error(r, 503, "unavailable",
                        ps == POOL_TIMEOUT ? "the server is busy" : "the database is unavailable", NULL,
                        "Retry-After: 1\r\n");
            free(req);
            free(body);
            return;
        }
        outcome = run_call(p, m->index, read_only, cfg.statement_timeout_ms[rt->timeout], req, body,
                           (rt->flags & R_STREAM) != 0, &call);
        if (outcome == CALL_STREAM && !first_row_streams(call.row))
            outcome = call_finish(p->conn, &call);
        if (outcome == CALL_STREAM) {
            streaming = p;
            break;
        }
        /* after COMMIT, see outbound.h; a connection the job left out of step is not reused */
        bool out_of_step = outcome == CALL_OK && (rt->flags & R_OUTBOUND) && !outbound_follow(p->conn, &call.row);
        bool nothing_ran = outcome == CALL_BROKEN && (!call.err || call.err_stage == 0) && !call.row;
        if (outcome == CALL_BROKEN)
            log_error(r->request_id, "dispatch: connection lost: %s", PQerrorMessage(p->conn));
        if (outcome == CALL_BROKEN || out_of_step)
            pool_discard(p);
        else
            pool_release(p);
        if (outcome == CALL_BROKEN)
            pool_drop_idle();
        /* A connection that died while idle (a database restart) ran nothing
           of ours: try once more on a fresh one. */
        if (outcome != CALL_BROKEN || !nothing_ran || attempt == 1)
            break;
        call_clear(&call);
    }
    free(req);
    free(body);

    if (outcome == CALL_STREAM)
        answer_stream(conn, r, rt, streaming, call.row, log);
    else if (outcome == CALL_OK)
        answer_row(conn, r, rt, call.row, log);
    else if (outcome == CALL_ERROR)
        answer_error(conn, r, rt, &call);
    else {
        if (call.err) /* e.g. 57P01: the server ended the session */
            metrics_statement_error(PQresultErrorField(call.err, PG_DIAG_SQLSTATE));
        atomic_fetch_add(&m_pool_errors, 1);
        reply_error(r, 503, "unavailable", "the database is unavailable", NULL, "Retry-After: 1\r\n");
    }
    call_clear(&call);
}
