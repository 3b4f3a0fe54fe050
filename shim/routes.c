/*
 * THE route table: method + path pattern -> lattice_http.<function>.
 *
 * Adding an endpoint = one SQL function (docs/http-contract.md) + one line
 * below.  A function that does not exist yet is harmless: statements are
 * prepared lazily per connection, and a missing one answers a JSON 503.
 *
 *   flags    R_JSON  a body, when sent, must be application/json (else 415)
 *            R_CORS  browsers on cfg.cors_origins may call it (the SDK's)
 *            R_STREAM  the function returns SETOF rows, read one at a time; a
 *                    first row with 200 is written as the rows come (chunked)
 *            R_OTLP  OTLP/HTTP: a gzip, protobuf or JSON body reaches SQL as
 *                    OTLP/JSON; protobuf requests get protobuf answers (otlp.c)
 *   timeout  T_FAST / T_NORMAL / T_SLOW: statement_timeout_<class>_ms
 *   headers  extra request headers copied into req.headers (lower-case,
 *            comma separated), e.g. "stripe-signature,idempotency-key"
 *
 * Patterns: literal segments and {name} segments (one whole segment each).
 * A literal segment beats a parameter when two lines match the same path.
 * HEAD is served by the GET line.
 */
#include "shim.h"

#include <string.h>

const struct route routes[] = {
    /*  method    pattern                              function           flags           timeout  headers */
    { "GET", "/api/v1/health", NULL, R_LOCAL_HEALTH, T_FAST, NULL },
    { "GET", "/metrics", NULL, R_LOCAL_METRICS, T_FAST, NULL },
    { "GET", "/ready", "ready", 0, T_FAST, NULL },
    { "GET", "/api/v1/usage", "usage", 0, T_FAST, NULL },
    /* identity: extension/sql/65_http_auth.sql */
    { "POST", "/api/v1/auth/signup", "auth_signup", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/auth/login", "auth_login", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/auth/logout", "auth_logout", 0, T_FAST, NULL },
    { "GET", "/api/v1/auth/me", "auth_me", 0, T_FAST, NULL },
    { "GET", "/api/v1/auth/sessions", "auth_sessions", 0, T_FAST, NULL },
    { "DELETE", "/api/v1/auth/sessions/{id}", "auth_session_revoke", 0, T_FAST, NULL },
    { "POST", "/api/v1/auth/token", "auth_token", R_JSON, T_FAST, NULL },
    { "GET", "/api/v1/keys", "keys_list", 0, T_FAST, NULL },
    { "POST", "/api/v1/keys", "keys_create", R_JSON, T_FAST, NULL },
    { "POST", "/api/v1/keys/{id}/rotate", "keys_rotate", R_JSON, T_FAST, NULL },
    { "DELETE", "/api/v1/keys/{id}", "keys_revoke", 0, T_FAST, NULL },

    /* graph: extension/sql/75_http_graph.sql */
    { "GET", "/api/v1/graph", "graph", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/graph/dependencies/{id}", "graph_dependencies", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/graph/dependents/{id}", "graph_dependents", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/services/{id}/impact", "service_impact", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/graph/path", "graph_path", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/graph/cycles", "graph_cycles", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/graph/order", "graph_order", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/graph/diff", "graph_diff", 0, T_NORMAL, NULL },

    /* live changes: Server-Sent Events, shim/events.c + extension/sql/76_http_events.sql */
    { "GET", "/api/v1/events", "events_subscribe", R_EVENTS, T_FAST, NULL },

    /* Billing (docs/http-contract.md, "Outbound routes") */
    { "GET", "/api/v1/billing", "billing_get", 0, T_FAST, NULL },
    { "GET", "/api/v1/billing/invoices", "billing_invoices", 0, T_FAST, NULL },
    { "POST", "/api/v1/billing/checkout", "billing_checkout", R_JSON | R_OUTBOUND, T_NORMAL, NULL },
    { "POST", "/api/v1/billing/portal", "billing_portal", R_JSON | R_OUTBOUND, T_NORMAL, NULL },
    { "POST", "/api/v1/billing/cancel", "billing_cancel", R_JSON | R_OUTBOUND, T_NORMAL, NULL },
    { "POST", "/api/v1/billing/resume", "billing_resume", R_JSON | R_OUTBOUND, T_NORMAL, NULL },
    { "POST", "/api/v1/webhooks/stripe", "stripe_webhook", R_JSON, T_NORMAL, "stripe-signature" },

    /* Ingest: extension/sql/67_http_ingest.sql */
    { "POST", "/api/v1/ingest/metadata", "ingest_metadata", R_JSON, T_NORMAL, NULL },
    { "POST", "/api/v1/performance/traces/batch", "ingest_traces", R_JSON, T_NORMAL, NULL },
    { "POST", "/api/v1/errors/batch", "ingest_errors", R_JSON, T_NORMAL, NULL },
    { "POST", "/api/v1/errors", "ingest_error", R_JSON | R_CORS, T_NORMAL, NULL },
    { "POST", "/api/v1/breadcrumbs", "ingest_breadcrumbs", R_JSON | R_CORS, T_NORMAL, NULL },
    { "POST", "/api/v1/metrics", "ingest_legacy_metrics", R_JSON, T_NORMAL, NULL },
    { "GET", "/api/v1/services", "services_list", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/services/{id}", "service_get", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/services/{id}/changes", "service_changes", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/errors", "errors_list", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/errors/{id}", "error_get", 0, T_NORMAL, NULL },
    { "PATCH", "/api/v1/errors/{id}", "error_update", R_JSON, T_NORMAL, NULL },
    { "GET", "/api/v1/performance/metrics", "performance_metrics", 0, T_SLOW, NULL },

    /* OpenTelemetry OTLP/HTTP (shim/otlp.c, docs/shim.md "OTLP traces") */
    { "POST", "/otlp/v1/traces", "otlp_traces", R_OTLP, T_NORMAL, NULL },

    /* alerts: extension/sql/89_http_alerts.sql, docs/alerts.md */
    { "GET", "/api/v1/alerts/rules", "alert_rules_get", 0, T_FAST, NULL },
    { "PUT", "/api/v1/alerts/rules", "alert_rules_put", R_JSON, T_NORMAL, NULL },
    { "GET", "/api/v1/alerts/channels", "alert_channels_list", 0, T_FAST, NULL },
    { "POST", "/api/v1/alerts/channels", "alert_channel_create", R_JSON, T_SLOW, NULL },
    { "PATCH", "/api/v1/alerts/channels/{id}", "alert_channel_update", R_JSON, T_NORMAL, NULL },
    { "DELETE", "/api/v1/alerts/channels/{id}", "alert_channel_delete", 0, T_NORMAL, NULL },
    { "POST", "/api/v1/alerts/channels/{id}/test", "alert_channel_test", R_OUTBOUND, T_NORMAL, NULL },
    { "POST", "/api/v1/alerts/channels/{id}/secret", "alert_channel_secret", 0, T_NORMAL, NULL },
    { "GET", "/api/v1/alerts/channels/{id}/deliveries", "alert_channel_deliveries", 0, T_FAST, NULL },
    { "POST", "/api/v1/alerts/recipients/verify", "alert_recipient_verify", R_JSON, T_NORMAL, NULL },
    { "GET", "/api/v1/alerts/incidents", "alert_incidents_list", 0, T_NORMAL, NULL },
    { "POST", "/api/v1/alerts/incidents/{id}/acknowledge", "alert_incident_acknowledge", 0, T_FAST, NULL },
    { "POST", "/api/v1/alerts/incidents/{id}/mute", "alert_incident_mute", R_JSON, T_FAST, NULL },

    /* account lifecycle: extension/sql/87_http_account.sql, docs/account.md */
    { "POST", "/api/v1/auth/password/forgot", "auth_password_forgot", R_JSON, T_NORMAL, NULL },
    { "POST", "/api/v1/auth/password/reset", "auth_password_reset", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/auth/email/verify", "auth_email_verify", R_JSON, T_NORMAL, NULL },
    { "GET", "/api/v1/account", "account_get", 0, T_FAST, NULL },
    { "DELETE", "/api/v1/account", "account_delete", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/account/email/verify", "account_verification_resend", R_JSON, T_NORMAL, NULL },
    { "POST", "/api/v1/account/password", "account_password_change", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/account/email", "account_email_change", R_JSON, T_SLOW, NULL },
    { "GET", "/api/v1/account/audit", "account_audit", 0, T_NORMAL, NULL },
    { "POST", "/api/v1/account/2fa/setup", "account_mfa_setup", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/account/2fa/enable", "account_mfa_enable", R_JSON, T_NORMAL, NULL },
    { "POST", "/api/v1/account/2fa/disable", "account_mfa_disable", R_JSON, T_SLOW, NULL },
    { "POST", "/api/v1/account/2fa/recovery-codes", "account_recovery_codes", R_JSON, T_SLOW, NULL },
    { "GET", "/api/v1/account/export", "account_export", R_STREAM, T_SLOW, NULL },

    /* Test-only lines (test_routes = 1); tests/http creates these functions. */
    { "GET", "/api/v1/_test/echo/{id}/items/{item}", "_test_echo", R_TEST, T_NORMAL, "x-test-one,x-test-two" },
    { "GET", "/api/v1/_test/echo/{id}/items/fixed", "_test_fixed", R_TEST, T_NORMAL, NULL },
    { "POST", "/api/v1/_test/echo", "_test_echo", R_TEST | R_JSON | R_CORS, T_NORMAL, NULL },
    { "PUT", "/api/v1/_test/echo", "_test_echo", R_TEST, T_NORMAL, NULL },
    { "GET", "/api/v1/_test/fail", "_test_fail", R_TEST, T_NORMAL, NULL },
    { "POST", "/api/v1/_test/fail", "_test_fail", R_TEST, T_NORMAL, NULL },
    { "GET", "/api/v1/_test/sleep", "_test_sleep", R_TEST, T_FAST, NULL },
    { "GET", "/api/v1/_test/write", "_test_write", R_TEST, T_NORMAL, NULL },
    { "POST", "/api/v1/_test/write", "_test_write", R_TEST, T_NORMAL, NULL },
    { "GET", "/api/v1/_test/missing", "_test_missing", R_TEST, T_NORMAL, NULL },
    { "GET", "/api/v1/_test/stream", "_test_stream", R_TEST | R_STREAM, T_SLOW, NULL },
    { "POST", "/api/v1/_test/otlp", "_test_otlp", R_TEST | R_OTLP, T_NORMAL, NULL },
};

const int nroutes = (int) (sizeof(routes) / sizeof(routes[0]));

bool route_enabled(int i)
{
    return !(routes[i].flags & R_TEST) || cfg.test_routes;
}

const char *route_label(int i)
{
    if (i >= 0 && i < nroutes)
        return routes[i].pattern;
    return i == ROUTE_STATIC ? "static" : "unmatched";
}

/* Matches path against pattern; returns the number of literal segments
   (higher = more specific) or -1.  Parameters point into path. */
static int match_pattern(const char *pattern, const char *path, struct route_match *m)
{
    const char *p = pattern, *s = path;
    int literals = 0;
    m->nparams = 0;
    while (*p == '/' && *s == '/') {
        p++;
        s++;
        const char *pe = strchr(p, '/');
        const char *se = strchr(s, '/');
        size_t plen = pe ? (size_t) (pe - p) : strlen(p);
        size_t slen = se ? (size_t) (se - s) : strlen(s);
        if (plen > 2 && p[0] == '{' && p[plen - 1] == '}') {
            if (slen == 0 || m->nparams >= ROUTE_PARAMS_MAX)
                return -1;
            m->params[m->nparams].name = p + 1;
            m->params[m->nparams].name_len = plen - 2;
            m->params[m->nparams].value = s;
            m->params[m->nparams].value_len = slen;
            m->nparams++;
        } else {
            if (plen != slen || memcmp(p, s, plen) != 0)
                return -1;
            literals++;
        }
        p += plen;
        s += slen;
    }
    return (*p == '\0' && *s == '\0') ? literals : -1;
}

static bool method_matches(const char *route_method, const char *method)
{
    return strcmp(route_method, method) == 0 || (strcmp(method, "HEAD") == 0 && strcmp(route_method, "GET") == 0);
}

int route_find(const char *method, const char *path, struct route_match *m, char *allow, size_t allowlen)
{
    struct route_match cand;
    int best = -1, best_score = -1;
    bool path_known = false;
    size_t alen = 0;
    if (allowlen)
        allow[0] = '\0';
    m->index = -1;
    m->nparams = 0;
    for (int i = 0; i < nroutes; i++) {
        if (!route_enabled(i))
            continue;
        int score = match_pattern(routes[i].pattern, path, &cand);
        if (score < 0)
            continue;
        path_known = true;
        if (method_matches(routes[i].method, method)) {
            if (score > best_score) {
                best = i;
                best_score = score;
                *m = cand;
                m->index = i;
            }
        } else if (alen + strlen(routes[i].method) + 8 < allowlen && !strstr(allow, routes[i].method)) {
            alen += (size_t) snprintf(allow + alen, allowlen - alen, "%s%s", alen ? ", " : "", routes[i].method);
            if (strcmp(routes[i].method, "GET") == 0)
                alen += (size_t) snprintf(allow + alen, allowlen - alen, ", HEAD");
        }
    }
    if (best >= 0)
        return 1;
    return path_known ? -1 : 0;
}

/* The union of the flags of every enabled line whose pattern matches path. */
unsigned route_path_flags(const char *path)
{
    struct route_match cand;
    unsigned flags = 0;
    for (int i = 0; i < nroutes; i++)
        if (route_enabled(i) && match_pattern(routes[i].pattern, path, &cand) >= 0)
            flags |= routes[i].flags;
    return flags;
}
