/*
 * Streamed answers (R_STREAM): a route's function returns SETOF
 * lattice.http_response and dispatch.c reads it in single-row mode.  When
 * the first row says 200, the answer goes out as it is read: the head with
 * chunked framing, then the body column of every row, so a large document
 * never sits whole in the shim (one row and one chunk buffer at a time).
 *
 * The last (zero-length) chunk is written only once the statement's
 * transaction has committed.  An error after the head cannot change the
 * status any more: the connection is closed without that chunk, so the
 * client sees a truncated answer, never a complete-looking one.  A client
 * that goes away gets its query cancelled.  Either way the database
 * connection is read up to its Sync (where the implicit transaction rolls
 * back after an error or a cancel) before it goes back to the pool.
 */
#include "shim.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_MAX (64 * 1024) /* body bytes per chunk */
#define CHUNK_HEAD 8          /* room for "<hex length>\r\n" before them */

struct chunker {
    struct reply *r;
    char *buf; /* CHUNK_HEAD + CHUNK_MAX + 2 bytes */
    size_t len;
};

/* Writes what is buffered as one chunk, in one write; false when the
   client is gone. */
static bool chunk_flush(struct chunker *k)
{
    if (k->len == 0) /* a zero-length chunk would end the answer */
        return true;
    char head[CHUNK_HEAD + 1];
    int n = snprintf(head, sizeof(head), "%zx\r\n", k->len);
    char *start = k->buf + CHUNK_HEAD - n;
    memcpy(start, head, (size_t) n);
    memcpy(k->buf + CHUNK_HEAD + k->len, "\r\n", 2);
    size_t total = (size_t) n + k->len + 2;
    if (mg_write(k->r->conn, start, total) != (int) total)
        return false;
    k->r->bytes += k->len;
    k->len = 0;
    return true;
}

static bool chunk_add(struct chunker *k, const char *s, size_t n)
{
    while (n > 0) {
        size_t take = CHUNK_MAX - k->len < n ? CHUNK_MAX - k->len : n;
        memcpy(k->buf + CHUNK_HEAD + k->len, s, take);
        k->len += take;
        s += take;
        n -= take;
        if (k->len == CHUNK_MAX && !chunk_flush(k))
            return false;
    }
    return true;
}

static bool add_body(struct chunker *k, const PGresult *row)
{
    if (PQntuples(row) != 1 || PQnfields(row) < 3 || PQgetisnull(row, 0, 2))
        return true;
    return chunk_add(k, PQgetvalue(row, 0, 2), (size_t) PQgetlength(row, 0, 2));
}

/* The next row would come without waiting: libpq holds it already, or the
   socket has data.  Never PQconsumeInput here: reading ahead would pile the
   socket's data up in libpq's buffer faster than rows are taken out. */
static bool row_at_hand(PGconn *c)
{
    if (!PQisBusy(c))
        return true;
    struct pollfd p = { .fd = PQsocket(c), .events = POLLIN };
    return poll(&p, 1, 0) > 0;
}

bool stream_drain(PGconn *c, PGresult **err)
{
    bool after_end = false; /* a NULL just ended a command: the Sync comes next */
    for (;;) {
        PGresult *res = PQgetResult(c);
        if (!res) {
            if (after_end || PQstatus(c) == CONNECTION_BAD)
                return false;
            after_end = true;
            continue;
        }
        after_end = false;
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            return PQstatus(c) == CONNECTION_OK;
        }
        if (st == PGRES_FATAL_ERROR && err && !*err)
            *err = res;
        else
            PQclear(res);
        if (PQstatus(c) == CONNECTION_BAD)
            return false;
    }
}

/* Stops the statement (HEAD, or the client left) and reads to the Sync. */
static bool abandon(PGconn *c, const char *request_id)
{
    PGcancel *cancel = PQgetCancel(c);
    char why[256] = "no cancel handle";
    if (!cancel || !PQcancel(cancel, why, sizeof(why)))
        log_error(request_id, "stream: cancel failed: %s", why);
    if (cancel)
        PQfreeCancel(cancel);
    PGresult *err = NULL; /* 57014, our own cancel, or nothing when it came too late */
    bool clean = stream_drain(c, &err);
    PQclear(err);
    return clean;
}

/* After the head: the client can only be told by a close without the last
   chunk. */
static void cut(struct reply *r)
{
    r->close = true;
    mg_disable_connection_keep_alive(r->conn);
}

bool stream_serve(struct reply *r, PGconn *c, const PGresult *first, const char *extra_headers, const char *function)
{
    struct chunker k = { .r = r, .buf = malloc(CHUNK_HEAD + CHUNK_MAX + 2) };
    if (!k.buf) {
        reply_error(r, 503, "unavailable", "out of memory", NULL, "Retry-After: 1\r\n");
        return abandon(c, r->request_id);
    }
    bool started = reply_start_chunked(r, 200, "application/json", extra_headers);
    if (!started || r->head) {
        if (!started)
            cut(r);
        free(k.buf);
        return abandon(c, r->request_id);
    }

    PGresult *err = NULL;
    bool clean = false, complete = false, client_left = !add_body(&k, first);
    while (!client_left) {
        if (k.len > 0 && !row_at_hand(c) && !chunk_flush(&k)) {
            client_left = true;
            break;
        }
        PGresult *res = PQgetResult(c);
        ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        if (st == PGRES_SINGLE_TUPLE) {
            client_left = !add_body(&k, res);
            PQclear(res);
            continue;
        }
        if (st == PGRES_TUPLES_OK) { /* the last row was read: commit (the Sync) */
            PQclear(res);
            clean = stream_drain(c, &err);
            complete = clean && !err;
        } else if (res && st == PGRES_FATAL_ERROR) {
            err = res;
            clean = stream_drain(c, NULL);
        } else { /* NULL (the connection broke) or a result out of place */
            PQclear(res);
            clean = stream_drain(c, &err);
        }
        break;
    }

    if (client_left) {
        log_request_info(r->request_id, "stream: the client left after %zu bytes of lattice_http.%s; query cancelled",
                         r->bytes, function);
        cut(r);
        clean = abandon(c, r->request_id);
    } else if (complete && chunk_flush(&k) && mg_write(r->conn, "0\r\n\r\n", 5) == 5) {
        /* done: the answer is whole */
    } else if (complete) {
        log_request_info(r->request_id, "stream: the client left at the end of lattice_http.%s", function);
        cut(r);
    } else {
        const char *state = err ? PQresultErrorField(err, PG_DIAG_SQLSTATE) : NULL;
        const char *msg = err ? PQresultErrorField(err, PG_DIAG_MESSAGE_PRIMARY) : PQerrorMessage(c);
        if (err)
            metrics_statement_error(state);
        log_error(r->request_id, "stream: lattice_http.%s failed after %zu bytes, answer cut: %s %s", function,
                  r->bytes, state ? state : "-", msg ? msg : "");
        cut(r);
    }
    PQclear(err);
    free(k.buf);
    return clean;
}
