/*
 * Configuration: built-in defaults, then an optional file of "key = value"
 * lines, then LATTICE_SHIM_<KEY> environment variables (the last word wins,
 * so containers can override a shipped file).  docs/shim.md lists the keys.
 */
#include "shim.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct shim_config cfg;

enum kind { K_INT, K_LONG, K_STR, K_BOOL };

struct key {
    const char *name;
    enum kind kind;
    void *ptr;
    size_t size;   /* for strings */
    long min, max; /* for numbers */
};

/* table rows, one a line */
/* clang-format off */
#define INT(n, f, lo, hi) { n, K_INT, &cfg.f, 0, lo, hi }
#define LONG(n, f, lo, hi) { n, K_LONG, &cfg.f, 0, lo, hi }
#define STR(n, f) { n, K_STR, cfg.f, sizeof(cfg.f), 0, 0 }
#define BOOL(n, f) { n, K_BOOL, &cfg.f, 0, 0, 1 }
/* clang-format on */

static const struct key keys[] = {
    STR("listen", listen),
    INT("port", port, 0, 65535),
    STR("conninfo", conninfo),
    INT("pool_size", pool_size, 1, 1000),
    INT("pool_wait_ms", pool_wait_ms, 1, 600000),
    INT("threads", threads, 1, 2000),
    LONG("body_max", body_max, 0, 1L << 30),
    LONG("otlp_inflated_max", otlp_inflated_max, 0, 1L << 30),
    INT("header_max", header_max, 1024, 1 << 20),
    INT("uri_max", uri_max, 64, 1 << 20),
    INT("request_timeout_ms", request_timeout_ms, 100, 3600000),
    INT("keepalive_timeout_ms", keepalive_timeout_ms, 0, 3600000),
    INT("max_connections", max_connections, 0, 1000000),
    INT("per_address_max", per_address_max, 0, 1000000),
    INT("statement_timeout_fast_ms", statement_timeout_ms[T_FAST], 1, 3600000),
    INT("statement_timeout_normal_ms", statement_timeout_ms[T_NORMAL], 1, 3600000),
    INT("statement_timeout_slow_ms", statement_timeout_ms[T_SLOW], 1, 3600000),
    INT("shutdown_timeout_ms", shutdown_timeout_ms, 0, 3600000),
    STR("web_root", web_root),
    STR("tls_cert", tls_cert),
    STR("cors_origins", cors_origins),
    STR("access_log", access_log),
    STR("metrics_allow", metrics_allow),
    STR("trusted_proxies", trusted_proxies),
    STR("csp_page", csp_page),
    BOOL("test_routes", test_routes),
    BOOL("prepared_statements", prepared_statements),
    INT("events_max", events_max, 0, 100000),
    INT("events_per_address_max", events_per_address_max, 1, 100000),
    INT("events_heartbeat_ms", events_heartbeat_ms, 100, 3600000),
    INT("events_merge_ms", events_merge_ms, 0, 60000),
    STR("events_conninfo", events_conninfo),
};

static void defaults(void)
{
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.listen, sizeof(cfg.listen), "127.0.0.1");
    cfg.port = 8080;
    snprintf(cfg.conninfo, sizeof(cfg.conninfo), "dbname=lattice user=lattice_shim");
    cfg.pool_size = 8;
    cfg.pool_wait_ms = 2000;
    cfg.threads = 64;
    cfg.body_max = 1L << 20;
    cfg.otlp_inflated_max = 8L << 20;
    cfg.header_max = 16384;
    cfg.uri_max = 4096;
    cfg.request_timeout_ms = 10000;
    cfg.keepalive_timeout_ms = 5000;
    cfg.max_connections = 0;
    cfg.per_address_max = 32;
    cfg.statement_timeout_ms[T_FAST] = 2000;
    cfg.statement_timeout_ms[T_NORMAL] = 5000;
    cfg.statement_timeout_ms[T_SLOW] = 30000;
    cfg.shutdown_timeout_ms = 10000;
    cfg.prepared_statements = true;
    cfg.events_per_address_max = 8;
    cfg.events_heartbeat_ms = 15000;
    cfg.events_merge_ms = 200;
    snprintf(cfg.access_log, sizeof(cfg.access_log), "-");
    snprintf(cfg.metrics_allow, sizeof(cfg.metrics_allow), "127.0.0.1,::1");
    snprintf(cfg.csp_page, sizeof(cfg.csp_page),
             "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
             "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
             "form-action 'self'; frame-ancestors 'none'");
}

static int set_key(const char *name, const char *value, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        const struct key *k = &keys[i];
        if (strcmp(k->name, name) != 0)
            continue;
        if (k->kind == K_STR) {
            if (strlen(value) >= k->size) {
                snprintf(err, errlen, "config: %s is too long", name);
                return -1;
            }
            snprintf(k->ptr, k->size, "%s", value);
            return 0;
        }
        if (k->kind == K_BOOL) {
            if (!strcmp(value, "1") || !strcasecmp(value, "true") || !strcasecmp(value, "yes") ||
                !strcasecmp(value, "on"))
                *(bool *) k->ptr = true;
            else if (!strcmp(value, "0") || !strcasecmp(value, "false") || !strcasecmp(value, "no") ||
                     !strcasecmp(value, "off"))
                *(bool *) k->ptr = false;
            else {
                snprintf(err, errlen, "config: %s must be a boolean", name);
                return -1;
            }
            return 0;
        }
        char *end;
        errno = 0;
        long v = strtol(value, &end, 10);
        if (errno || end == value || *end || v < k->min || v > k->max) {
            snprintf(err, errlen, "config: %s must be an integer in [%ld, %ld]", name, k->min, k->max);
            return -1;
        }
        if (k->kind == K_INT)
            *(int *) k->ptr = (int) v;
        else
            *(long *) k->ptr = v;
        return 0;
    }
    snprintf(err, errlen, "config: unknown key %s", name);
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char) *s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char) e[-1]))
        *--e = '\0';
    return s;
}

static int load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "config: cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (rc == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            snprintf(err, errlen, "config: %s:%d: line longer than %zu bytes", path, lineno, sizeof(line) - 2);
            rc = -1;
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#')
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            snprintf(err, errlen, "config: %s:%d: expected key = value", path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        rc = set_key(trim(s), trim(eq + 1), err, errlen);
    }
    fclose(f);
    return rc;
}

int config_load(const char *path, char *err, size_t errlen)
{
    defaults();
    if (path && *path && load_file(path, err, errlen) != 0)
        return -1;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        char env[96] = "LATTICE_SHIM_";
        size_t n = strlen(env);
        for (const char *c = keys[i].name; *c && n + 1 < sizeof(env); c++)
            env[n++] = (char) toupper((unsigned char) *c);
        env[n] = '\0';
        const char *v = getenv(env);
        if (v && set_key(keys[i].name, v, err, errlen) != 0)
            return -1;
    }
    /* each SSE stream holds a worker thread: leave some for requests */
    if (cfg.events_max == 0)
        cfg.events_max = cfg.threads / 2; /* threads = 1: no stream at all */
    else if (cfg.events_max >= cfg.threads) {
        snprintf(err, errlen, "config: events_max must be below threads (each stream holds a worker thread)");
        return -1;
    }
    if (cfg.uri_max >= cfg.header_max) {
        snprintf(err, errlen, "config: uri_max must be below header_max");
        return -1;
    }
    return 0;
}

/* Exact membership in a comma-separated list ("*" matches anything). */
bool config_list_has(const char *list, const char *item)
{
    size_t ilen = strlen(item);
    const char *p = list;
    while (*p) {
        while (*p == ',' || *p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ')
            e++;
        size_t len = (size_t) (e - p);
        if ((len == 1 && *p == '*') || (len == ilen && len > 0 && memcmp(p, item, len) == 0))
            return true;
        p = e;
    }
    return false;
}
