/*
 * Writing answers: status line, the headers every answer carries (security
 * headers, X-Request-Id, Date, HSTS under TLS) and the body, in one write;
 * or, for a streamed answer, the head alone with chunked framing.
 */
#include "shim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define API_CSP "default-src 'none'; frame-ancestors 'none'"

static const char *http_date(void)
{
    static __thread char buf[40];
    static __thread time_t cached;
    time_t now = time(NULL);
    if (now != cached) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached = now;
    }
    return buf;
}

static bool has_header(const char *lines, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = lines; p && *p;) {
        if (strncasecmp(p, name, n) == 0 && p[n] == ':')
            return true;
        p = strstr(p, "\r\n");
        if (p)
            p += 2;
    }
    return false;
}

/* The status line, the headers every answer carries, extra and the framing
   line ("Content-Length: n\r\n", "Transfer-Encoding: chunked\r\n" or
   nothing), ending with the empty line.  The length written, or -1 when it
   does not fit in cap. */
static int head_format(char *buf, size_t cap, const struct reply *r, int status, const char *content_type,
                       const char *extra, bool page, const char *framing)
{
    bool no_body = status == 204 || status == 304;
    bool typed = content_type && !no_body && !has_header(extra, "Content-Type");
    int n = snprintf(buf, cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Date: %s\r\n"
                     "X-Request-Id: %s\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "Referrer-Policy: no-referrer\r\n"
                     "X-Frame-Options: DENY\r\n"
                     "Content-Security-Policy: %s\r\n"
                     "%s"
                     "%s"
                     "%s%s%s%s"
                     "%s%s\r\n",
                     status, mg_get_response_code_text(r->conn, status), http_date(),
                     r->request_id ? r->request_id : "-", page ? cfg.csp_page : API_CSP,
                     r->tls ? "Strict-Transport-Security: max-age=31536000; includeSubDomains\r\n" : "",
                     has_header(extra, "Cache-Control") ? "" : "Cache-Control: no-store\r\n",
                     r->close ? "Connection: close\r\n" : "", typed ? "Content-Type: " : "", typed ? content_type : "",
                     typed ? "\r\n" : "", framing, extra);
    return n < 0 || (size_t) n >= cap ? -1 : n;
}

void reply_send(struct reply *r, int status, const char *content_type, const char *extra_headers, const char *body,
                size_t body_len, bool page)
{
    const char *extra = extra_headers ? extra_headers : "";
    bool no_body = status == 204 || status == 304;
    size_t cap = 1536 + strlen(extra) + strlen(cfg.csp_page) + (r->head || no_body || !body ? 0 : body_len);
    char *buf = malloc(cap);
    if (!buf)
        return;
    char framing[48] = "";
    if (!no_body)
        snprintf(framing, sizeof(framing), "Content-Length: %zu\r\n", body_len);
    int n = head_format(buf, cap, r, status, content_type, extra, page, framing);
    if (n < 0) {
        free(buf);
        return;
    }
    size_t len = (size_t) n;
    if (!r->head && !no_body && body_len && body) { /* body NULL: the caller streams it */
        memcpy(buf + len, body, body_len);
        len += body_len;
    }
    if (r->close)
        mg_disable_connection_keep_alive(r->conn);
    mg_write(r->conn, buf, len);
    free(buf);
    r->status = status;
    r->bytes = r->head || no_body ? 0 : body_len;
}

bool reply_start_chunked(struct reply *r, int status, const char *content_type, const char *extra_headers)
{
    const char *extra = extra_headers ? extra_headers : "";
    size_t cap = 1536 + strlen(extra);
    char *buf = malloc(cap);
    if (!buf)
        return false;
    int n = head_format(buf, cap, r, status, content_type, extra, false, "Transfer-Encoding: chunked\r\n");
    if (r->close)
        mg_disable_connection_keep_alive(r->conn);
    bool ok = n > 0 && mg_write(r->conn, buf, (size_t) n) == n;
    free(buf);
    r->status = status;
    r->bytes = 0;
    return ok;
}

void reply_error(struct reply *r, int status, const char *code, const char *message, const char *details_json,
                 const char *extra_headers)
{
    if (r->otlp_proto) {
        otlp_reply_status(r, status, code, message, extra_headers);
        return;
    }
    char *body = error_body(code, message, details_json, r->request_id);
    reply_send(r, status, "application/json", extra_headers, body, body ? strlen(body) : 0, false);
    free(body);
}
