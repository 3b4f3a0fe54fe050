/*
 * Logs: one JSON line per request on the access log (time, request id,
 * method, route pattern, path, status, bytes, duration, client, peer when a
 * proxy forwarded the client, tenant when known; never a credential, never
 * the query string), and JSON lines for errors on stderr.  Each line is one
 * write(2), so lines never interleave.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int access_fd = -1;

int log_init(void)
{
    if (strcmp(cfg.access_log, "off") == 0)
        access_fd = -1;
    else if (strcmp(cfg.access_log, "-") == 0 || !cfg.access_log[0])
        access_fd = STDOUT_FILENO;
    else {
        access_fd = open(cfg.access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (access_fd < 0) {
            fprintf(stderr, "lattice-shim: cannot open access_log %s: %s\n", cfg.access_log, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static void write_line(int fd, json_object *o)
{
    size_t len;
    const char *s = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
    char buf[4096];
    if (len + 1 < sizeof(buf)) {
        memcpy(buf, s, len);
        buf[len] = '\n';
        ssize_t n = write(fd, buf, len + 1);
        (void) n;
    }
}

static json_object *str_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

void log_access(const struct mg_request_info *ri, const char *client, const char *request_id, const char *route,
                int status, size_t bytes, double seconds, const char *tenant)
{
    if (access_fd < 0)
        return;
    char ts[40];
    iso8601_now(ts, sizeof(ts));
    const char *path = ri->local_uri_raw ? ri->local_uri_raw : ri->local_uri;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "time", json_object_new_string(ts));
    json_object_object_add(o, "request_id", str_or_null(request_id));
    json_object_object_add(o, "method", str_or_null(ri->request_method));
    json_object_object_add(o, "route", str_or_null(route));
    json_object_object_add(
        o, "path", path && utf8_valid(path, strlen(path)) && strlen(path) <= 512 ? json_object_new_string(path) : NULL);
    json_object_object_add(o, "status", json_object_new_int(status));
    json_object_object_add(o, "bytes", json_object_new_int64((int64_t) bytes));
    json_object_object_add(o, "duration_ms", json_object_new_double(seconds * 1000.0));
    bool forwarded = client && strcmp(client, ri->remote_addr) != 0;
    json_object_object_add(o, "client", json_object_new_string(forwarded ? client : ri->remote_addr));
    if (forwarded)
        json_object_object_add(o, "peer", json_object_new_string(ri->remote_addr));
    json_object_object_add(o, "tenant", tenant && *tenant ? json_object_new_string(tenant) : NULL);
    write_line(access_fd, o);
    json_object_put(o);
}

static void log_line(const char *level, const char *request_id, const char *fmt, va_list ap)
{
    char msg[1024], ts[40];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    iso8601_now(ts, sizeof(ts));
    json_object *o = json_object_new_object();
    json_object_object_add(o, "time", json_object_new_string(ts));
    json_object_object_add(o, "level", json_object_new_string(level));
    if (request_id)
        json_object_object_add(o, "request_id", json_object_new_string(request_id));
    json_object_object_add(o, "message", json_object_new_string(utf8_valid(msg, strlen(msg)) ? msg : "(not utf-8)"));
    write_line(STDERR_FILENO, o);
    json_object_put(o);
}

void log_error(const char *request_id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line("error", request_id, fmt, ap);
    va_end(ap);
}

void log_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line("info", NULL, fmt, ap);
    va_end(ap);
}

void log_request_info(const char *request_id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_line("info", request_id, fmt, ap);
    va_end(ap);
}
