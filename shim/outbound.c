/*
 * outbound.c
 *		Stripe API calls, SMTP e-mail and alert webhooks for the extension's
 *		outbox.
 *
 * The extension decides what to send (lattice.outbox); this file only moves
 * bytes: it form-encodes a Stripe request from [key, value] pairs, sends it
 * with the secret key and the job's Idempotency-Key, and hands Stripe's
 * status and body back to lattice_worker.outbox_complete(), which interprets
 * them.  E-mail goes out over SMTP with a plain-text and an HTML part.
 *
 * Every database call here is a single autocommit statement: no outbound I/O
 * ever happens while a transaction is open.  Retries of e-mail (backoff, at
 * least once) are the extension's; this file retries a Stripe request once,
 * with the same Idempotency-Key, on a network error or a 5xx.
 *
 * Webhooks (docs/alerts.md) have a thread of their own: one libcurl multi
 * handle keeps up to LATTICE_WEBHOOK_CONCURRENCY deliveries in flight and
 * records each as soon as it ends, so a receiver that hangs holds one slot
 * until its timeout and delays neither the other receivers nor e-mail.  A
 * delivery is a POST of the job's body with the headers the extension
 * computed for this attempt; no redirect is followed, no proxy is used, the
 * answer is read up to 64 KiB, and every address a connection is about to
 * use is checked by outbound_address_refusal() (the extension's own rule,
 * extension/src/outbound_address_core.c), so a name that resolves to a
 * private or loopback address is refused whenever it does.
 */
#include "outbound.h"
#include "outbound_address_core.h"
#include "shim.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define OUTBOUND_MAX_RESPONSE (256 * 1024) /* Stripe objects are far smaller */
#define OUTBOUND_MAX_FORM (64 * 1024)
#define OUTBOUND_MAX_CHAIN 4 /* checkout: customer, then session */
#define OUTBOUND_BATCH 20

#define WEBHOOK_READ_MAX (64 * 1024) /* an answer is read this far */
#define WEBHOOK_KEEP_MAX 1024        /* and its start recorded */
#define WEBHOOK_HEADER_MAX 4096      /* one "Name: value" line */
#define WEBHOOK_CONNECT_MS 5000
#define WEBHOOK_CLAIM_MAX 100 /* outbox_claim_due's own cap */
#define WEBHOOK_CONCURRENCY_MAX 256
#define WEBHOOK_TIMEOUT_MAX_MS 60000 /* well inside the claim's 2-minute lease */

struct outbound_settings {
    char *conninfo;
    char *stripe_api_base;
    char *stripe_secret_key;
    char *stripe_version;
    long stripe_timeout_ms;
    char *smtp_url;
    char *smtp_username;
    char *smtp_password;
    char *smtp_tls;
    char *mail_from;
    long smtp_timeout_ms;
    long poll_interval_ms;
    long webhook_concurrency;
    long webhook_timeout_ms;
};

static struct outbound_settings settings;
static pthread_t worker_thread;
static bool worker_running = false;
static bool worker_stop = false;
static pthread_mutex_t worker_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t worker_wake = PTHREAD_COND_INITIALIZER;

/* The webhook thread; outbound_stop wakes it through its multi handle. */
static pthread_t webhook_thread;
static bool webhook_running = false;
static atomic_bool webhook_stop = false;
static CURLM *webhook_multi = NULL;

/* /metrics figures (outbound_webhook_stats) */
static atomic_long webhook_in_flight = 0;
static atomic_ulong webhook_delivered = 0;
static atomic_ulong webhook_not_2xx = 0;
static atomic_ulong webhook_refused = 0;
static atomic_ulong webhook_failed = 0;

/* A job as lattice_worker.job returns it. */
struct outbound_job {
    long long id;
    const char *kind;
    const char *method;
    const char *path;
    const char *params;
    const char *idempotency_key;
    const char *mail_to;
    const char *mail_subject;
    const char *mail_text;
    const char *mail_html;
    const char *url;
    const char *body;
    const char *headers; /* JSON object: header name -> value */
    bool allow_loopback;
};

/* What a call produced, for outbox_complete. */
struct outbound_result {
    long status;                      /* HTTP status / SMTP reply code, 0 when none */
    char *body;                       /* response body (Stripe), malloc'd */
    char error[CURL_ERROR_SIZE + 64]; /* transport error, "" when none */
};

static char *setting(const char *given, const char *env, const char *fallback)
{
    const char *v = (given && *given) ? given : getenv(env);

    if (!v || !*v)
        v = fallback;
    return v ? strdup(v) : NULL;
}

static long setting_long(long given, const char *env, long fallback)
{
    const char *v = getenv(env);

    if (given > 0)
        return given;
    if (v && *v) {
        long n = strtol(v, NULL, 10);

        if (n > 0)
            return n;
    }
    return fallback;
}

/* ---- Stripe ------------------------------------------------------------ */

struct response_buffer {
    char *data;
    size_t len;
    bool overflow;
};

static size_t response_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct response_buffer *buf = userdata;
    size_t n = size * nmemb;
    char *grown;

    if (buf->len + n > OUTBOUND_MAX_RESPONSE) {
        buf->overflow = true;
        return 0; /* makes curl fail the transfer */
    }
    grown = realloc(buf->data, buf->len + n + 1);
    if (!grown)
        return 0;
    buf->data = grown;
    memcpy(buf->data + buf->len, ptr, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return n;
}

/*
 * Form-encodes a JSON array of [key, value] string pairs with curl's escaping
 * into out (size outsz).  Returns false when the params are not such an
 * array or do not fit.
 */
static bool form_encode(CURL *curl, const char *params_json, char *out, size_t outsz)
{
    struct json_object *arr = json_tokener_parse(params_json ? params_json : "[]");
    size_t used = 0;
    size_t i;
    bool ok = true;

    out[0] = '\0';
    if (!arr || !json_object_is_type(arr, json_type_array)) {
        json_object_put(arr);
        return false;
    }
    for (i = 0; ok && i < json_object_array_length(arr); i++) {
        struct json_object *pair = json_object_array_get_idx(arr, i);
        char *k;
        char *v;
        int n;

        if (!json_object_is_type(pair, json_type_array) || json_object_array_length(pair) != 2 ||
            !json_object_is_type(json_object_array_get_idx(pair, 0), json_type_string) ||
            !json_object_is_type(json_object_array_get_idx(pair, 1), json_type_string)) {
            ok = false;
            break;
        }
        k = curl_easy_escape(curl, json_object_get_string(json_object_array_get_idx(pair, 0)), 0);
        v = curl_easy_escape(curl, json_object_get_string(json_object_array_get_idx(pair, 1)), 0);
        if (!k || !v)
            ok = false;
        else {
            n = snprintf(out + used, outsz - used, "%s%s=%s", used ? "&" : "", k, v);
            if (n < 0 || (size_t) n >= outsz - used)
                ok = false;
            else
                used += (size_t) n;
        }
        curl_free(k);
        curl_free(v);
    }
    json_object_put(arr);
    return ok;
}

static bool transient_status(long status)
{
    return status == 500 || status == 502 || status == 503 || status == 504;
}

/* Sends one Stripe request, retrying once on a network error or a 5xx. */
static void stripe_call(const struct outbound_job *job, struct outbound_result *res)
{
    CURL *curl = curl_easy_init();
    char *form = malloc(OUTBOUND_MAX_FORM);
    char url[2048];
    char auth[512];
    char idem[320];
    char version[128];
    int attempt;

    res->status = 0;
    res->body = NULL;
    res->error[0] = '\0';
    if (!curl || !form) {
        snprintf(res->error, sizeof(res->error), "out of memory");
        goto done;
    }
    if (!settings.stripe_secret_key) {
        snprintf(res->error, sizeof(res->error), "no Stripe secret key configured");
        goto done;
    }
    if (!form_encode(curl, job->params, form, OUTBOUND_MAX_FORM)) {
        snprintf(res->error, sizeof(res->error), "job params are not [key, value] pairs or too long");
        goto done;
    }
    if (strcmp(job->method, "GET") == 0 && form[0])
        snprintf(url, sizeof(url), "%s%s?%s", settings.stripe_api_base, job->path, form);
    else
        snprintf(url, sizeof(url), "%s%s", settings.stripe_api_base, job->path);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", settings.stripe_secret_key);
    snprintf(idem, sizeof(idem), "Idempotency-Key: %s", job->idempotency_key);

    for (attempt = 0; attempt < 2; attempt++) {
        struct curl_slist *headers = NULL;
        struct response_buffer buf = { NULL, 0, false };
        char errbuf[CURL_ERROR_SIZE] = "";
        CURLcode rc;

        curl_easy_reset(curl);
        headers = curl_slist_append(headers, auth);
        headers = curl_slist_append(headers, idem);
        headers = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
        headers = curl_slist_append(headers, "Accept: application/json");
        if (settings.stripe_version) {
            snprintf(version, sizeof(version), "Stripe-Version: %s", settings.stripe_version);
            headers = curl_slist_append(headers, version);
        }
        curl_easy_setopt(curl, CURLOPT_URL, url);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_USERAGENT, "lattice-shim");
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS,
                         settings.stripe_timeout_ms < 5000 ? settings.stripe_timeout_ms : 5000L);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, settings.stripe_timeout_ms);
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, response_write);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
        if (strcmp(job->method, "POST") == 0) {
            curl_easy_setopt(curl, CURLOPT_POST, 1L);
            curl_easy_setopt(curl, CURLOPT_POSTFIELDS, form);
            curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(form));
        } else if (strcmp(job->method, "DELETE") == 0)
            curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "DELETE");

        rc = curl_easy_perform(curl);
        curl_slist_free_all(headers);
        free(res->body);
        res->body = buf.data;
        res->status = 0;
        res->error[0] = '\0';
        if (rc == CURLE_OK)
            curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &res->status);
        else
            snprintf(res->error, sizeof(res->error), "%s",
                     buf.overflow ? "response too large" : (errbuf[0] ? errbuf : curl_easy_strerror(rc)));
        if (rc == CURLE_OK && !transient_status(res->status))
            break;
        if (buf.overflow)
            break;
        if (attempt == 0)
            usleep(200 * 1000); /* one bounded retry, same Idempotency-Key */
    }

done:
    free(form);
    if (curl)
        curl_easy_cleanup(curl);
}

/* ---- SMTP -------------------------------------------------------------- */

static bool header_safe(const char *s)
{
    return s && !strpbrk(s, "\r\n");
}

/* The address inside "Name <addr>", or the whole string. */
static void bare_address(const char *from, char *out, size_t outsz)
{
    const char *lt = strchr(from, '<');
    const char *gt = lt ? strchr(lt, '>') : NULL;

    if (lt && gt && gt > lt + 1)
        snprintf(out, outsz, "<%.*s>", (int) (gt - lt - 1), lt + 1);
    else
        snprintf(out, outsz, "<%s>", from);
}

static void smtp_send(const struct outbound_job *job, struct outbound_result *res)
{
    CURL *curl = curl_easy_init();
    curl_mime *mime = NULL;
    curl_mime *alt = NULL;
    curl_mimepart *part;
    struct curl_slist *headers = NULL;
    struct curl_slist *rcpt = NULL;
    struct curl_slist *inline_hdr = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    char line[1024];
    char from_addr[320];
    char to_addr[320];
    char date[64];
    time_t now = time(NULL);
    struct tm tm_utc;
    CURLcode rc;

    res->status = 0;
    res->body = NULL;
    res->error[0] = '\0';
    if (!curl) {
        snprintf(res->error, sizeof(res->error), "out of memory");
        return;
    }
    if (!settings.smtp_url) {
        snprintf(res->error, sizeof(res->error), "no SMTP server configured");
        curl_easy_cleanup(curl);
        return;
    }
    if (!header_safe(job->mail_to) || !header_safe(job->mail_subject) || !header_safe(settings.mail_from)) {
        snprintf(res->error, sizeof(res->error), "refused: a header value contains a line break");
        curl_easy_cleanup(curl);
        return;
    }

    bare_address(settings.mail_from, from_addr, sizeof(from_addr));
    snprintf(to_addr, sizeof(to_addr), "<%s>", job->mail_to);
    rcpt = curl_slist_append(rcpt, to_addr);

    gmtime_r(&now, &tm_utc);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm_utc);
    snprintf(line, sizeof(line), "Date: %s", date);
    headers = curl_slist_append(headers, line);
    snprintf(line, sizeof(line), "From: %s", settings.mail_from);
    headers = curl_slist_append(headers, line);
    snprintf(line, sizeof(line), "To: %s", job->mail_to);
    headers = curl_slist_append(headers, line);
    snprintf(line, sizeof(line), "Subject: %s", job->mail_subject);
    headers = curl_slist_append(headers, line);
    /* the job id makes the Message-ID stable across retries */
    snprintf(line, sizeof(line), "Message-ID: <outbox-%lld@lattice>", job->id);
    headers = curl_slist_append(headers, line);
    headers = curl_slist_append(headers, "Auto-Submitted: auto-generated");

    /* multipart/alternative: plain text first, HTML preferred by clients that can */
    mime = curl_mime_init(curl);
    alt = curl_mime_init(curl);
    part = curl_mime_addpart(alt);
    curl_mime_data(part, job->mail_text, CURL_ZERO_TERMINATED);
    curl_mime_type(part, "text/plain; charset=utf-8");
    curl_mime_encoder(part, "quoted-printable");
    part = curl_mime_addpart(alt);
    curl_mime_data(part, job->mail_html, CURL_ZERO_TERMINATED);
    curl_mime_type(part, "text/html; charset=utf-8");
    curl_mime_encoder(part, "quoted-printable");
    part = curl_mime_addpart(mime);
    curl_mime_subparts(part, alt);
    curl_mime_type(part, "multipart/alternative");
    inline_hdr = curl_slist_append(inline_hdr, "Content-Disposition: inline");
    curl_mime_headers(part, inline_hdr, 1);

    curl_easy_setopt(curl, CURLOPT_URL, settings.smtp_url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(curl, CURLOPT_MAIL_FROM, from_addr);
    curl_easy_setopt(curl, CURLOPT_MAIL_RCPT, rcpt);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, settings.smtp_timeout_ms);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, settings.smtp_timeout_ms);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    if (settings.smtp_username)
        curl_easy_setopt(curl, CURLOPT_USERNAME, settings.smtp_username);
    if (settings.smtp_password)
        curl_easy_setopt(curl, CURLOPT_PASSWORD, settings.smtp_password);
    if (strcmp(settings.smtp_tls, "required") == 0)
        curl_easy_setopt(curl, CURLOPT_USE_SSL, (long) CURLUSESSL_ALL);
    else if (strcmp(settings.smtp_tls, "none") == 0)
        curl_easy_setopt(curl, CURLOPT_USE_SSL, (long) CURLUSESSL_NONE);
    else
        curl_easy_setopt(curl, CURLOPT_USE_SSL, (long) CURLUSESSL_TRY);

    rc = curl_easy_perform(curl);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &res->status);
        if (res->status < 200 || res->status > 299)
            res->status = 250; /* curl reports success only after 250 */
    } else {
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &res->status);
        snprintf(res->error, sizeof(res->error), "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    }

    curl_slist_free_all(rcpt);
    curl_slist_free_all(headers);
    curl_mime_free(mime); /* frees alt as its subparts */
    curl_easy_cleanup(curl);
}

/* ---- Webhooks ---------------------------------------------------------- */

/* One delivery: its easy handle and what the handle reads and writes. */
struct webhook_transfer {
    CURL *curl;
    long long job_id;
    bool allow_loopback;
    char *body; /* the request body, sent from here */
    struct curl_slist *headers;
    size_t received; /* answer bytes read */
    size_t kept;     /* of which the first are in answer */
    bool truncated;  /* reading stopped at WEBHOOK_READ_MAX */
    char answer[WEBHOOK_KEEP_MAX];
    char refusal[128]; /* "refused: <address> is <reason>" */
    char errbuf[CURL_ERROR_SIZE];
    struct webhook_transfer *next; /* the webhook thread's list in flight */
};

/* Keeps the start of the answer; stops reading after WEBHOOK_READ_MAX bytes. */
static size_t webhook_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct webhook_transfer *t = userdata;
    size_t n = size * nmemb;
    size_t room = sizeof(t->answer) - t->kept;
    size_t keep = n < room ? n : room;

    memcpy(t->answer + t->kept, ptr, keep);
    t->kept += keep;
    if (n > WEBHOOK_READ_MAX - t->received) {
        t->truncated = true;
        return 0; /* makes curl end the transfer */
    }
    t->received += n;
    return n;
}

static void address_text(const struct sockaddr *sa, char *out, size_t outsz)
{
    const void *addr = NULL;

    if (sa->sa_family == AF_INET)
        addr = &((const struct sockaddr_in *) sa)->sin_addr;
    else if (sa->sa_family == AF_INET6)
        addr = &((const struct sockaddr_in6 *) sa)->sin6_addr;
    if (!addr || !inet_ntop(sa->sa_family, addr, out, (socklen_t) outsz))
        snprintf(out, outsz, "(address family %d)", (int) sa->sa_family);
}

/*
 * curl's open-socket callback: every connection a delivery opens, to
 * whichever address its host resolved to this time, is checked here first.
 */
static curl_socket_t webhook_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
    struct webhook_transfer *t = clientp;
    const char *why = outbound_address_refusal(&address->addr, t->allow_loopback);

    (void) purpose;
    if (why) {
        char text[INET6_ADDRSTRLEN + 32];

        address_text(&address->addr, text, sizeof(text));
        if (!t->refusal[0])
            snprintf(t->refusal, sizeof(t->refusal), "refused: %s is %s", text, why);
        return CURL_SOCKET_BAD;
    }
    return socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
}

/* An HTTP header name: a token (RFC 9110). */
static bool header_name_valid(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char) *s) && !strchr("!#$%&'*+-.^_`|~", *s))
            return false;
    return true;
}

/* A header value: no control character but tab. */
static bool header_value_valid(const char *s)
{
    for (; *s; s++)
        if (((unsigned char) *s < 0x20 && *s != '\t') || *s == 0x7f)
            return false;
    return true;
}

static void webhook_free(struct webhook_transfer *t)
{
    if (!t)
        return;
    if (t->curl)
        curl_easy_cleanup(t->curl);
    curl_slist_free_all(t->headers);
    free(t->body);
    free(t);
}

/*
 * Adds the job's headers (a JSON object of name -> value) to t, and empty
 * ones that keep curl from adding its own; false, with the reason in error,
 * when one is not a valid header.
 */
static bool webhook_headers(struct webhook_transfer *t, const char *headers_json, char *error, size_t errorsz)
{
    struct json_object *headers = NULL;
    bool content_type = false;
    bool accept = false;
    bool expect = false;
    bool ok = true;

    if (headers_json && *headers_json) {
        headers = json_tokener_parse(headers_json);
        if (!headers || !json_object_is_type(headers, json_type_object)) {
            json_object_put(headers);
            snprintf(error, errorsz, "the job's headers are not a JSON object");
            return false;
        }
    }
    if (headers) {
        json_object_object_foreach(headers, name, value) {
            const char *v = json_object_get_string(value);
            char line[WEBHOOK_HEADER_MAX];
            struct curl_slist *grown;
            int n;

            if (!json_object_is_type(value, json_type_string) || !header_name_valid(name) || !header_value_valid(v)) {
                snprintf(error, errorsz, "the job's header \"%.64s\" is not valid", name);
                ok = false;
                break;
            }
            /* "Name;" is curl's way to send a header with an empty value */
            n = *v ? snprintf(line, sizeof(line), "%s: %s", name, v) : snprintf(line, sizeof(line), "%s;", name);
            if (n < 0 || (size_t) n >= sizeof(line)) {
                snprintf(error, errorsz, "the job's header \"%.64s\" is too long", name);
                ok = false;
                break;
            }
            grown = curl_slist_append(t->headers, line);
            if (!grown) {
                snprintf(error, errorsz, "out of memory");
                ok = false;
                break;
            }
            t->headers = grown;
            content_type = content_type || strcasecmp(name, "Content-Type") == 0;
            accept = accept || strcasecmp(name, "Accept") == 0;
            expect = expect || strcasecmp(name, "Expect") == 0;
        }
    }
    json_object_put(headers);
    if (!ok)
        return false;

    /* "Name:" removes a header curl would add by itself: only the job's go out */
    if (!content_type)
        t->headers = curl_slist_append(t->headers, "Content-Type:");
    if (t->headers && !accept)
        t->headers = curl_slist_append(t->headers, "Accept:");
    if (t->headers && !expect)
        t->headers = curl_slist_append(t->headers, "Expect:");
    if (!t->headers) {
        snprintf(error, errorsz, "out of memory");
        return false;
    }
    return true;
}

/*
 * A transfer that POSTs job's body to its url with exactly the job's
 * headers, under every rule of a delivery: the address check, https only
 * (http too when the extension allows loopback), no redirect, no proxy,
 * bounded time and answer.  NULL, with the reason in error, when the job
 * cannot be sent.  The interactive path and the webhook thread both use it.
 */
static struct webhook_transfer *webhook_prepare(const struct outbound_job *job, char *error, size_t errorsz)
{
    struct webhook_transfer *t = calloc(1, sizeof(*t));
    const char *protocols = job->allow_loopback ? "http,https" : "https";
    long connect_ms = settings.webhook_timeout_ms < WEBHOOK_CONNECT_MS ? settings.webhook_timeout_ms
                                                                       : WEBHOOK_CONNECT_MS;
    CURLcode rc = CURLE_OK;

    if (!t || !(t->curl = curl_easy_init())) {
        snprintf(error, errorsz, "out of memory");
        goto fail;
    }
    t->job_id = job->id;
    t->allow_loopback = job->allow_loopback;
    if (!job->url || !*job->url || !job->body) {
        snprintf(error, errorsz, "the job has no url or no body");
        goto fail;
    }
    if (!(t->body = strdup(job->body))) {
        snprintf(error, errorsz, "out of memory");
        goto fail;
    }
    if (!webhook_headers(t, job->headers, error, errorsz))
        goto fail;

#define WEBHOOK_SET(option, value)                         \
    do {                                                   \
        if (rc == CURLE_OK)                                \
            rc = curl_easy_setopt(t->curl, option, value); \
    } while (0)
    WEBHOOK_SET(CURLOPT_URL, job->url);
    WEBHOOK_SET(CURLOPT_PROTOCOLS_STR, protocols);
    WEBHOOK_SET(CURLOPT_FOLLOWLOCATION, 0L);
    /* no proxy, whatever the environment says */
    WEBHOOK_SET(CURLOPT_PROXY, "");
    WEBHOOK_SET(CURLOPT_NOPROXY, "*");
    WEBHOOK_SET(CURLOPT_OPENSOCKETFUNCTION, webhook_open_socket);
    WEBHOOK_SET(CURLOPT_OPENSOCKETDATA, t);
    /*
	 * A connection of its own each time: a cached one would skip the address
	 * check of this delivery (and outlive a change of allow_loopback).
	 */
    WEBHOOK_SET(CURLOPT_FRESH_CONNECT, 1L);
    WEBHOOK_SET(CURLOPT_FORBID_REUSE, 1L);
    WEBHOOK_SET(CURLOPT_NOSIGNAL, 1L);
    WEBHOOK_SET(CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    WEBHOOK_SET(CURLOPT_TIMEOUT_MS, settings.webhook_timeout_ms);
    WEBHOOK_SET(CURLOPT_POST, 1L);
    WEBHOOK_SET(CURLOPT_POSTFIELDS, t->body);
    WEBHOOK_SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen(t->body));
    WEBHOOK_SET(CURLOPT_HTTPHEADER, t->headers);
    WEBHOOK_SET(CURLOPT_WRITEFUNCTION, webhook_write);
    WEBHOOK_SET(CURLOPT_WRITEDATA, t);
    WEBHOOK_SET(CURLOPT_ERRORBUFFER, t->errbuf);
    WEBHOOK_SET(CURLOPT_PRIVATE, t);
#undef WEBHOOK_SET
    if (rc != CURLE_OK) {
        snprintf(error, errorsz, "the delivery could not be set up: %s", curl_easy_strerror(rc));
        goto fail;
    }
    return t;

fail:
    webhook_free(t);
    return NULL;
}

/*
 * The outcome of a finished transfer for outbox_complete: the receiver's
 * status, the start of its answer, and an error only when the exchange did
 * not complete (a non-2xx is an answer, not an error).
 */
static void webhook_result(struct webhook_transfer *t, CURLcode rc, struct outbound_result *res)
{
    size_t i;

    res->status = 0;
    res->body = NULL;
    res->error[0] = '\0';
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &res->status);
    if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && t->truncated && res->status > 0))
        res->error[0] = '\0'; /* answered: one longer than WEBHOOK_READ_MAX too */
    else if (rc == CURLE_COULDNT_CONNECT && t->refusal[0])
        snprintf(res->error, sizeof(res->error), "%s", t->refusal);
    else if (rc == CURLE_UNSUPPORTED_PROTOCOL)
        snprintf(res->error, sizeof(res->error), "refused: %s",
                 t->allow_loopback ? "not an http or https URL" : "not an https URL");
    else
        snprintf(res->error, sizeof(res->error), "%s", t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));

    /* a text parameter must be valid UTF-8 without NUL: printable ASCII only */
    if (t->kept > 0 && (res->body = malloc(t->kept + 1)) != NULL) {
        for (i = 0; i < t->kept; i++) {
            unsigned char c = (unsigned char) t->answer[i];

            res->body[i] = (c >= 0x20 && c < 0x7f) ? (char) c : '?';
        }
        res->body[t->kept] = '\0';
    }
}

/* Counts an attempt's outcome for /metrics. */
static void webhook_count(const struct outbound_result *res)
{
    if (strncmp(res->error, "refused: ", 9) == 0)
        atomic_fetch_add(&webhook_refused, 1);
    else if (res->error[0])
        atomic_fetch_add(&webhook_failed, 1);
    else if (res->status >= 200 && res->status <= 299)
        atomic_fetch_add(&webhook_delivered, 1);
    else
        atomic_fetch_add(&webhook_not_2xx, 1);
}

void outbound_webhook_stats(struct outbound_webhook_stats *stats)
{
    stats->in_flight = atomic_load(&webhook_in_flight);
    stats->delivered = atomic_load(&webhook_delivered);
    stats->not_2xx = atomic_load(&webhook_not_2xx);
    stats->refused = atomic_load(&webhook_refused);
    stats->failed = atomic_load(&webhook_failed);
}

/* One delivery right away, on the calling thread (a channel's "send test"). */
static void webhook_send(const struct outbound_job *job, struct outbound_result *res)
{
    struct webhook_transfer *t;

    res->status = 0;
    res->body = NULL;
    res->error[0] = '\0';
    t = webhook_prepare(job, res->error, sizeof(res->error));
    if (t) {
        atomic_fetch_add(&webhook_in_flight, 1);
        webhook_result(t, curl_easy_perform(t->curl), res);
        atomic_fetch_sub(&webhook_in_flight, 1);
    }
    webhook_free(t);
    webhook_count(res);
}

/* ---- The outbox -------------------------------------------------------- */

/* lattice_worker.job: id .. mail_html (10 columns), then url, body, headers,
   allow_loopback (webhooks; absent from an older extension) */
#define JOB_FIELDS_MIN 10
#define JOB_FIELDS_WEBHOOK 14

/* A claim's answer has the job's shape; else (an error, or an extension
   older than this shim) it counts as the database failing. */
static bool claimed_ok(PGresult *r)
{
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        metrics_statement_error(PQresultErrorField(r, PG_DIAG_SQLSTATE));
        return false;
    }
    if (PQnfields(r) < JOB_FIELDS_MIN) {
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"outbox: a claimed job has %d columns, not %d or more\"}\n",
                PQnfields(r), JOB_FIELDS_MIN);
        return false;
    }
    return true;
}

/* Only for a result claimed_ok() accepted. */
static void job_from_row(PGresult *r, int row, struct outbound_job *job)
{
    job->id = strtoll(PQgetvalue(r, row, 0), NULL, 10);
    job->kind = PQgetvalue(r, row, 1);
    job->method = PQgetvalue(r, row, 2);
    job->path = PQgetvalue(r, row, 3);
    job->params = PQgetvalue(r, row, 4);
    job->idempotency_key = PQgetvalue(r, row, 5);
    job->mail_to = PQgetvalue(r, row, 6);
    job->mail_subject = PQgetvalue(r, row, 7);
    job->mail_text = PQgetvalue(r, row, 8);
    job->mail_html = PQgetvalue(r, row, 9);
    job->url = NULL;
    job->body = NULL;
    job->headers = NULL;
    job->allow_loopback = false;
    if (PQnfields(r) >= JOB_FIELDS_WEBHOOK) {
        job->url = PQgetisnull(r, row, 10) ? NULL : PQgetvalue(r, row, 10);
        job->body = PQgetisnull(r, row, 11) ? NULL : PQgetvalue(r, row, 11);
        job->headers = PQgetisnull(r, row, 12) ? NULL : PQgetvalue(r, row, 12);
        job->allow_loopback = !PQgetisnull(r, row, 13) && strcmp(PQgetvalue(r, row, 13), "t") == 0;
    }
}

static void perform(const struct outbound_job *job, struct outbound_result *res)
{
    if (strcmp(job->kind, "email") == 0)
        smtp_send(job, res);
    else if (strcmp(job->kind, "webhook") == 0)
        webhook_send(job, res);
    else
        stripe_call(job, res);
}

/*
 * Records a result; returns the PGresult of outbox_complete (status,
 * headers, body, next_job) or NULL when the database failed.
 */
static PGresult *record(PGconn *conn, long long job_id, const struct outbound_result *res)
{
    char id_text[32];
    char status_text[32];
    const char *values[5];
    PGresult *r;

    snprintf(id_text, sizeof(id_text), "%lld", job_id);
    snprintf(status_text, sizeof(status_text), "%ld", res->status);
    values[0] = id_text;
    values[1] = res->status > 0 ? status_text : NULL;
    values[2] = res->body;
    values[3] = res->error[0] ? res->error : NULL;
    r = PQexecParams(conn,
                     "SELECT status, headers, body, next_job "
                     "FROM lattice_worker.outbox_complete($1::bigint, $2::integer, $3::text, $4::text)",
                     4, NULL, values, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        char msg[256];
        char *p;

        metrics_statement_error(PQresultErrorField(r, PG_DIAG_SQLSTATE));

        /* one line of the server's message, safe inside a JSON string */
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        for (p = msg; *p; p++)
            if (*p == '"' || *p == '\\' || (unsigned char) *p < 0x20)
                *p = ' ';
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"outbox_complete failed\",\"job\":%lld,\"error\":\"%s\"}\n",
                job_id, msg);
        PQclear(r);
        return NULL;
    }
    return r;
}

static void answer_set(struct outbound_answer *a, int status, const char *headers, const char *body)
{
    a->status = status;
    a->headers_json = strdup(headers ? headers : "{}");
    a->body = body ? strdup(body) : NULL;
}

int outbound_run_job(PGconn *conn, long long job_id, struct outbound_answer *answer)
{
    int step;

    memset(answer, 0, sizeof(*answer));
    for (step = 0; step < OUTBOUND_MAX_CHAIN; step++) {
        char id_text[32];
        const char *values[1];
        PGresult *claimed;
        PGresult *done;
        struct outbound_job job;
        struct outbound_result res;

        snprintf(id_text, sizeof(id_text), "%lld", job_id);
        values[0] = id_text;
        claimed = PQexecParams(conn, "SELECT * FROM lattice_worker.outbox_claim($1::bigint)", 1, NULL, values, NULL,
                               NULL, 0);
        if (!claimed_ok(claimed)) {
            PQclear(claimed);
            answer_set(answer, 503, "{\"Retry-After\":\"1\"}",
                       "{\"error\":{\"code\":\"unavailable\",\"message\":\"the database is unavailable\"}}");
            return -1;
        }
        if (PQntuples(claimed) != 1) {
            PQclear(claimed);
            answer_set(answer, 409, "{}",
                       "{\"error\":{\"code\":\"job_gone\",\"message\":\"the outbound job is no longer pending\"}}");
            return 0;
        }
        job_from_row(claimed, 0, &job);
        perform(&job, &res); /* no transaction is open here */
        PQclear(claimed);

        done = record(conn, job_id, &res);
        free(res.body);
        if (!done) {
            answer_set(answer, 503, "{\"Retry-After\":\"1\"}",
                       "{\"error\":{\"code\":\"unavailable\",\"message\":\"the database is unavailable\"}}");
            return -1;
        }
        if (PQntuples(done) == 1 && !PQgetisnull(done, 0, 3)) {
            job_id = strtoll(PQgetvalue(done, 0, 3), NULL, 10);
            PQclear(done);
            continue;
        }
        if (PQntuples(done) == 1 && !PQgetisnull(done, 0, 0))
            answer_set(answer, atoi(PQgetvalue(done, 0, 0)), PQgetisnull(done, 0, 1) ? "{}" : PQgetvalue(done, 0, 1),
                       PQgetisnull(done, 0, 2) ? NULL : PQgetvalue(done, 0, 2));
        else
            answer_set(answer, 500, "{}",
                       "{\"error\":{\"code\":\"internal\",\"message\":\"the outbound job gave no answer\"}}");
        PQclear(done);
        return 0;
    }
    answer_set(answer, 500, "{}",
               "{\"error\":{\"code\":\"internal\",\"message\":\"the outbound job chain is too long\"}}");
    return 0;
}

void outbound_answer_free(struct outbound_answer *answer)
{
    free(answer->headers_json);
    free(answer->body);
    answer->headers_json = NULL;
    answer->body = NULL;
}

bool outbound_follow(PGconn *conn, PGresult **row)
{
    struct json_object *headers;
    struct json_object *job_header = NULL;
    struct outbound_answer answer;
    char status_text[16];
    const char *values[5];
    long long job_id = 0;
    PGresult *replaced;
    bool pipelined;
    bool ran;

    if (!*row || PQntuples(*row) != 1 || PQnfields(*row) != 5 || PQgetisnull(*row, 0, 1))
        return true;
    headers = json_tokener_parse(PQgetvalue(*row, 0, 1));
    if (headers && json_object_object_get_ex(headers, "Lattice-Outbox-Job", &job_header) &&
        json_object_is_type(job_header, json_type_string))
        job_id = strtoll(json_object_get_string(job_header), NULL, 10);
    json_object_put(headers);
    if (job_id <= 0)
        return true;

    /* the pool keeps connections in pipeline mode; the job's statements are synchronous */
    pipelined = PQpipelineStatus(conn) != PQ_PIPELINE_OFF;
    if (pipelined && PQexitPipelineMode(conn) != 1)
        return false; /* answers left unread: leave the 202, the job stays pending */
    ran = outbound_run_job(conn, job_id, &answer) == 0;
    snprintf(status_text, sizeof(status_text), "%d", answer.status);
    values[0] = status_text;
    values[1] = answer.headers_json;
    values[2] = answer.body;
    values[3] = PQgetisnull(*row, 0, 3) ? NULL : PQgetvalue(*row, 0, 3);
    values[4] = PQgetisnull(*row, 0, 4) ? NULL : PQgetvalue(*row, 0, 4); /* the request's rate count */
    /* the answer in the row shape dispatch.c writes out (no transaction: one SELECT) */
    replaced = PQexecParams(conn, "SELECT $1::integer, $2::jsonb - 'Lattice-Outbox-Job', $3::text, $4::text, $5::text",
                            5, NULL, values, NULL, NULL, 0);
    outbound_answer_free(&answer);
    if (PQresultStatus(replaced) == PGRES_TUPLES_OK) {
        PQclear(*row);
        *row = replaced;
    } else {
        /* leave the 202 (the job's own answer is recorded); the client may retry */
        PQclear(replaced);
    }
    if (pipelined && PQenterPipelineMode(conn) != 1)
        return false;
    return ran;
}

/* One log line for a background job's attempt. */
static void log_job(long long job_id, const char *kind, const struct outbound_result *res)
{
    fprintf(stderr,
            "{\"level\":\"info\",\"msg\":\"outbox job\",\"job\":%lld,\"kind\":\"%s\",\"status\":%ld,\"ok\":%s}\n",
            job_id, kind, res->status, res->error[0] ? "false" : "true");
}

/*
 * Claims up to max_jobs due background jobs of kinds (a text[] literal);
 * NULL when the database failed.
 */
static PGresult *claim_due(PGconn *conn, long max_jobs, const char *kinds)
{
    char max_text[32];
    const char *values[2];
    PGresult *claimed;

    snprintf(max_text, sizeof(max_text), "%ld", max_jobs);
    values[0] = max_text;
    values[1] = kinds;
    claimed = PQexecParams(conn, "SELECT * FROM lattice_worker.outbox_claim_due($1::integer, $2::text[])", 2, NULL,
                           values, NULL, NULL, 0);
    if (!claimed_ok(claimed)) {
        PQclear(claimed);
        return NULL;
    }
    return claimed;
}

/*
 * Claims due background jobs (Stripe, e-mail: webhooks have their own
 * thread) and performs them; returns how many.
 */
static int drain_once(PGconn *conn)
{
    PGresult *claimed = claim_due(conn, OUTBOUND_BATCH, "{stripe,email}");
    int n;
    int i;

    if (!claimed)
        return -1;
    n = PQntuples(claimed);
    for (i = 0; i < n; i++) {
        struct outbound_job job;
        struct outbound_result res;
        PGresult *done;

        job_from_row(claimed, i, &job);
        perform(&job, &res);
        done = record(conn, job.id, &res);
        log_job(job.id, job.kind, &res);
        free(res.body);
        if (!done) {
            PQclear(claimed);
            return -1; /* the lease runs out and the job comes back */
        }
        PQclear(done);
    }
    PQclear(claimed);
    return n;
}

static void *worker_main(void *arg)
{
    PGconn *conn = NULL;

    (void) arg;
    pthread_mutex_lock(&worker_lock);
    while (!worker_stop) {
        struct timespec until;
        int n = 0;

        pthread_mutex_unlock(&worker_lock);
        if (!conn || PQstatus(conn) != CONNECTION_OK) {
            PQfinish(conn);
            conn = PQconnectdb(settings.conninfo);
            if (PQstatus(conn) != CONNECTION_OK)
                fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"outbox worker cannot connect\"}\n");
        }
        if (PQstatus(conn) == CONNECTION_OK)
            n = drain_once(conn);
        if (n < 0) {
            /* after a failed statement the connection may be out of step
               with its answers: the next round starts on a fresh one */
            PQfinish(conn);
            conn = NULL;
        }
        pthread_mutex_lock(&worker_lock);
        if (n > 0 || worker_stop)
            continue; /* more may be due right away */
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += settings.poll_interval_ms / 1000;
        until.tv_nsec += (settings.poll_interval_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&worker_wake, &worker_lock, &until);
    }
    pthread_mutex_unlock(&worker_lock);
    PQfinish(conn);
    return NULL;
}

/* ---- The webhook thread ------------------------------------------------ */

/* What the webhook thread holds. */
struct webhook_state {
    PGconn *conn;         /* its own connection */
    int64_t next_connect; /* no new attempt before (monotonic ms) */
    struct webhook_transfer *in_flight;
    long count; /* transfers in in_flight */
};

static int64_t monotonic_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* True when the thread's connection is usable; reconnects once a poll interval at most. */
static bool webhook_connected(struct webhook_state *st)
{
    if (st->conn && PQstatus(st->conn) == CONNECTION_OK)
        return true;
    if (monotonic_ms() < st->next_connect)
        return false;
    PQfinish(st->conn);
    st->conn = PQconnectdb(settings.conninfo);
    if (PQstatus(st->conn) == CONNECTION_OK)
        return true;
    fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"webhook worker cannot connect\"}\n");
    st->next_connect = monotonic_ms() + settings.poll_interval_ms;
    return false;
}

/* After a failed statement the connection may be out of step with its
   answers: the next statement starts on a fresh one. */
static void webhook_disconnect(struct webhook_state *st)
{
    PQfinish(st->conn);
    st->conn = NULL;
}

/*
 * Records a delivery's outcome.  When the database cannot take it, the job's
 * lease runs out and it is claimed again: at least once, never lost.
 */
static void webhook_record(struct webhook_state *st, long long job_id, const struct outbound_result *res)
{
    PGresult *done = NULL;

    webhook_count(res);
    if (webhook_connected(st)) {
        done = record(st->conn, job_id, res);
        if (!done)
            webhook_disconnect(st);
    } else
        fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"webhook result not recorded: no database\",\"job\":%lld}\n",
                job_id);
    log_job(job_id, "webhook", res);
    PQclear(done);
}

/*
 * Claims up to max_jobs due webhook jobs and puts them in flight; returns how
 * many were claimed, or -1 when the database failed.
 */
static int webhook_claim(struct webhook_state *st, long max_jobs)
{
    PGresult *claimed = claim_due(st->conn, max_jobs, "{webhook}");
    int n;
    int i;

    if (!claimed) {
        webhook_disconnect(st);
        return -1;
    }
    n = PQntuples(claimed);
    for (i = 0; i < n; i++) {
        struct outbound_job job;
        struct outbound_result res;
        struct webhook_transfer *t = NULL;

        memset(&res, 0, sizeof(res));
        job_from_row(claimed, i, &job);
        if (strcmp(job.kind, "webhook") != 0)
            snprintf(res.error, sizeof(res.error), "not a webhook job");
        else
            t = webhook_prepare(&job, res.error, sizeof(res.error));
        if (t && curl_multi_add_handle(webhook_multi, t->curl) != CURLM_OK) {
            snprintf(res.error, sizeof(res.error), "the delivery could not be started");
            webhook_free(t);
            t = NULL;
        }
        if (!t) {
            webhook_record(st, job.id, &res); /* never sent; the extension decides */
            continue;
        }
        t->next = st->in_flight;
        st->in_flight = t;
        st->count++;
        atomic_fetch_add(&webhook_in_flight, 1);
    }
    PQclear(claimed);
    return n;
}

/* Records every delivery that ended and frees its slot. */
static void webhook_reap(struct webhook_state *st)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(webhook_multi, &left)) != NULL) {
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        struct webhook_transfer **p;
        struct webhook_transfer *t = NULL;
        struct outbound_result res;

        if (msg->msg != CURLMSG_DONE)
            continue;
        /* msg is gone once its handle leaves the multi handle */
        curl_multi_remove_handle(webhook_multi, easy);
        for (p = &st->in_flight; *p; p = &(*p)->next)
            if ((*p)->curl == easy) {
                t = *p;
                *p = t->next;
                st->count--;
                atomic_fetch_sub(&webhook_in_flight, 1);
                break;
            }
        if (!t)
            continue; /* not one of ours: cannot happen */
        webhook_result(t, rc, &res);
        webhook_record(st, t->job_id, &res);
        free(res.body);
        webhook_free(t);
    }
}

/*
 * The webhook thread: up to webhook_concurrency deliveries in flight on one
 * multi handle.  Free slots are filled from the outbox right away after a
 * claim that found as many jobs as it asked for (more may be due), else at
 * the next poll interval; each delivery is recorded the moment it ends.
 */
static void *webhook_main(void *arg)
{
    struct webhook_state st;
    int64_t next_claim = 0;

    (void) arg;
    memset(&st, 0, sizeof(st));
    while (!atomic_load(&webhook_stop)) {
        long free_slots = settings.webhook_concurrency - st.count;
        int64_t now = monotonic_ms();
        int64_t wait_ms;
        int running;

        if (free_slots > 0 && now >= next_claim) {
            long want = free_slots < WEBHOOK_CLAIM_MAX ? free_slots : WEBHOOK_CLAIM_MAX;
            int got = webhook_connected(&st) ? webhook_claim(&st, want) : -1;

            next_claim = got == want ? now : now + settings.poll_interval_ms;
        }
        curl_multi_perform(webhook_multi, &running);
        webhook_reap(&st);

        /* until curl has work, a claim is due or outbound_stop wakes us */
        now = monotonic_ms();
        wait_ms = settings.poll_interval_ms;
        if (st.count < settings.webhook_concurrency && next_claim - now < wait_ms)
            wait_ms = next_claim > now ? next_claim - now : 0;
        curl_multi_poll(webhook_multi, NULL, 0, (int) wait_ms, NULL);
    }

    /*
	 * Stopping: what is still in flight is abandoned, and recorded as such
	 * when the connection is up (no new one: stopping must not wait on it).
	 */
    st.next_connect = INT64_MAX;
    while (st.in_flight) {
        struct webhook_transfer *t = st.in_flight;
        struct outbound_result res;

        st.in_flight = t->next;
        atomic_fetch_sub(&webhook_in_flight, 1);
        curl_multi_remove_handle(webhook_multi, t->curl);
        memset(&res, 0, sizeof(res));
        snprintf(res.error, sizeof(res.error), "interrupted: the shim stopped before an answer");
        webhook_record(&st, t->job_id, &res);
        webhook_free(t);
    }
    PQfinish(st.conn);
    return NULL;
}

/* A thread that leaves SIGTERM and SIGINT to main()'s sigwait. */
static int start_thread(pthread_t *thread, void *(*main_fn)(void *) )
{
    sigset_t block;
    sigset_t old;
    int rc;

    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    rc = pthread_create(thread, NULL, main_fn, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int outbound_start(const struct outbound_config *config)
{
    struct outbound_config none;
    const struct outbound_config *c = config;

    if (!c) {
        memset(&none, 0, sizeof(none));
        c = &none;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"libcurl could not be initialised\"}\n");
        return -1;
    }
    settings.conninfo = setting(c->conninfo, "LATTICE_DB", "dbname=lattice");
    settings.stripe_api_base = setting(c->stripe_api_base, "LATTICE_STRIPE_API_BASE", "https://api.stripe.com");
    settings.stripe_secret_key = setting(c->stripe_secret_key, "LATTICE_STRIPE_SECRET_KEY", NULL);
    settings.stripe_version = setting(c->stripe_version, "LATTICE_STRIPE_VERSION", NULL);
    settings.stripe_timeout_ms = setting_long(c->stripe_timeout_ms, "LATTICE_STRIPE_TIMEOUT_MS", 10000);
    settings.smtp_url = setting(c->smtp_url, "LATTICE_SMTP_URL", NULL);
    settings.smtp_username = setting(c->smtp_username, "LATTICE_SMTP_USERNAME", NULL);
    settings.smtp_password = setting(c->smtp_password, "LATTICE_SMTP_PASSWORD", NULL);
    settings.smtp_tls = setting(c->smtp_tls, "LATTICE_SMTP_TLS", "try");
    settings.mail_from = setting(c->mail_from, "LATTICE_MAIL_FROM", "Lattice <billing@localhost>");
    settings.smtp_timeout_ms = setting_long(c->smtp_timeout_ms, "LATTICE_SMTP_TIMEOUT_MS", 15000);
    settings.poll_interval_ms = setting_long(c->poll_interval_ms, "LATTICE_OUTBOX_POLL_MS", 1000);
    settings.webhook_concurrency = setting_long(c->webhook_concurrency, "LATTICE_WEBHOOK_CONCURRENCY", 16);
    settings.webhook_timeout_ms = setting_long(c->webhook_timeout_ms, "LATTICE_WEBHOOK_TIMEOUT_MS", 10000);
    if (settings.webhook_concurrency > WEBHOOK_CONCURRENCY_MAX)
        settings.webhook_concurrency = WEBHOOK_CONCURRENCY_MAX;
    if (settings.webhook_timeout_ms > WEBHOOK_TIMEOUT_MAX_MS)
        settings.webhook_timeout_ms = WEBHOOK_TIMEOUT_MAX_MS;
    /* a trailing slash would double the one every path starts with */
    if (settings.stripe_api_base) {
        size_t len = strlen(settings.stripe_api_base);

        while (len > 0 && settings.stripe_api_base[len - 1] == '/')
            settings.stripe_api_base[--len] = '\0';
    }
    if (!settings.stripe_secret_key)
        fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"no Stripe secret key: billing calls will fail\"}\n");
    if (!settings.smtp_url)
        fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"no SMTP server: e-mail stays queued\"}\n");

    worker_stop = false;
    if (start_thread(&worker_thread, worker_main) != 0) {
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"outbox worker could not start\"}\n");
        return -1;
    }
    worker_running = true;

    /* one connection at a time on a connection: no HTTP/2 multiplexing of deliveries */
    webhook_multi = curl_multi_init();
    if (webhook_multi)
        curl_multi_setopt(webhook_multi, CURLMOPT_PIPELINING, (long) CURLPIPE_NOTHING);
    atomic_store(&webhook_stop, false);
    if (!webhook_multi || start_thread(&webhook_thread, webhook_main) != 0) {
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"webhook worker could not start\"}\n");
        if (webhook_multi)
            curl_multi_cleanup(webhook_multi);
        webhook_multi = NULL;
        return -1;
    }
    webhook_running = true;
    return 0;
}

void outbound_stop(void)
{
    if (!worker_running && !webhook_running)
        return;
    /* both at once: the webhook thread ends at once, the worker after its current job */
    if (webhook_running) {
        atomic_store(&webhook_stop, true);
        curl_multi_wakeup(webhook_multi);
    }
    if (worker_running) {
        pthread_mutex_lock(&worker_lock);
        worker_stop = true;
        pthread_cond_signal(&worker_wake);
        pthread_mutex_unlock(&worker_lock);
    }
    if (webhook_running)
        pthread_join(webhook_thread, NULL);
    if (worker_running)
        pthread_join(worker_thread, NULL);
    webhook_running = false;
    worker_running = false;
    if (webhook_multi)
        curl_multi_cleanup(webhook_multi);
    webhook_multi = NULL;
    free(settings.conninfo);
    free(settings.stripe_api_base);
    free(settings.stripe_secret_key);
    free(settings.stripe_version);
    free(settings.smtp_url);
    free(settings.smtp_username);
    free(settings.smtp_password);
    free(settings.smtp_tls);
    free(settings.mail_from);
    memset(&settings, 0, sizeof(settings));
    curl_global_cleanup();
}
