/*
 * The client behind a reverse proxy: trusted_proxies (CIDRs) and the
 * forwarding headers of a trusted peer (RFC 7239 Forwarded, else
 * X-Forwarded-For; X-Forwarded-Proto).
 *
 * Headers from any other peer are ignored: anyone can send them.  From a
 * trusted peer the chain is walked from the right, skipping trusted hops;
 * the first untrusted address is the client (all trusted: the left-most).
 * An `unknown` or obfuscated identifier (`_x`) hides the client: the walk
 * stops there and takes the nearest known address, the hop that reported it.
 *
 * Plain functions of strings and header arrays (no connection), so that the
 * parsing can be fuzzed on its own.
 */
#include "shim.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define PROXIES_MAX 64
#define CHAIN_MAX 32          /* hops in one header */
#define HEADER_VALUE_MAX 1024 /* one forwarding header's value */
#define VALUE_MAX 256         /* one Forwarded parameter's value */

struct ip {
    int family;          /* AF_INET or AF_INET6 */
    unsigned char a[16]; /* IPv4 in the first 4 bytes */
};

struct net {
    struct ip ip;
    int bits;
};

static struct net proxies[PROXIES_MAX];
static int nproxies;

enum proto { P_NONE = -1, P_HTTP = 0, P_HTTPS = 1 };

struct hop {
    bool hidden; /* unknown, obfuscated, or no for= at all */
    struct ip ip;
    enum proto proto;
};

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Narrows [*b, *e) to leave out blanks on both sides. */
static void trim(const char **b, const char **e)
{
    while (*b < *e && is_ows(**b))
        (*b)++;
    while (*e > *b && is_ows((*e)[-1]))
        (*e)--;
}

/* An IPv4 or IPv6 literal of len bytes; IPv4-mapped IPv6 becomes IPv4, so
   both spellings of one peer match the same CIDRs. */
static bool ip_parse(const char *s, size_t len, struct ip *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof(buf))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, buf, out->a) == 1) {
        out->family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, buf, out->a) != 1)
        return false;
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(out->a, mapped, sizeof(mapped)) == 0) {
        memmove(out->a, out->a + 12, 4);
        memset(out->a + 4, 0, 12);
        out->family = AF_INET;
    } else
        out->family = AF_INET6;
    return true;
}

static bool ip_equal(const struct ip *x, const struct ip *y)
{
    return x->family == y->family && memcmp(x->a, y->a, sizeof(x->a)) == 0;
}

static bool net_has(const struct net *n, const struct ip *ip)
{
    if (n->ip.family != ip->family)
        return false;
    int full = n->bits / 8, rest = n->bits % 8;
    if (memcmp(n->ip.a, ip->a, (size_t) full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char) (0xff << (8 - rest));
    return (n->ip.a[full] & mask) == (ip->a[full] & mask);
}

static bool ip_trusted(const struct ip *ip)
{
    for (int i = 0; i < nproxies; i++)
        if (net_has(&proxies[i], ip))
            return true;
    return false;
}

/* One entry of trusted_proxies: "addr" or "addr/bits". */
static bool net_parse(const char *s, size_t len, struct net *n, const char **why)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t) (slash - s) : len;
    if (!ip_parse(s, alen, &n->ip)) {
        *why = "not an IPv4 or IPv6 address";
        return false;
    }
    /* "::ffff:a.b.c.d/nn" was read as IPv4: its prefix counts from bit 96 */
    bool mapped = n->ip.family == AF_INET && memchr(s, ':', alen) != NULL;
    int max = n->ip.family == AF_INET ? 32 : 128;
    if (!slash) {
        n->bits = max;
        return true;
    }
    const char *d = slash + 1;
    size_t dlen = len - alen - 1;
    int bits = 0;
    if (dlen == 0 || dlen > 3) {
        *why = "the prefix length is not a number";
        return false;
    }
    for (size_t i = 0; i < dlen; i++) {
        if (!isdigit((unsigned char) d[i])) {
            *why = "the prefix length is not a number";
            return false;
        }
        bits = bits * 10 + (d[i] - '0');
    }
    if (mapped)
        bits -= 96;
    if (bits < 0 || bits > max) {
        *why = max == 32 ? "prefix length out of range (0-32 for IPv4)" : "prefix length out of range (0-128 for IPv6)";
        return false;
    }
    n->bits = bits;
    return true;
}

int proxies_load(const char *list, char *err, size_t errlen)
{
    nproxies = 0;
    if (!list || strspn(list, " \t") == strlen(list))
        return 0;
    for (const char *p = list;;) {
        const char *e = strchr(p, ',');
        const char *end = e ? e : p + strlen(p);
        trim(&p, &end);
        size_t len = (size_t) (end - p);
        const char *why = NULL;
        if (len == 0)
            why = "empty entry";
        else if (nproxies == PROXIES_MAX)
            why = "too many entries (at most 64)";
        else if (net_parse(p, len, &proxies[nproxies], &why))
            nproxies++;
        if (why) {
            int shown = len > 80 ? 80 : (int) len;
            snprintf(err, errlen, "config: trusted_proxies: bad entry \"%.*s\": %s", shown, p, why);
            nproxies = 0;
            return -1;
        }
        if (!e)
            return 0;
        p = e + 1;
    }
}

bool proxy_trusted(const char *addr)
{
    struct ip ip;
    return addr && nproxies > 0 && ip_parse(addr, strlen(addr), &ip) && ip_trusted(&ip);
}

/* ---- the headers ---- */

/* RFC 7230 tchar */
static bool is_tchar(char c)
{
    return isalnum((unsigned char) c) || (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool all_of(const char *s, size_t len, const char *extra)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char) s[i]) && !strchr(extra, s[i]))
            return false;
    return true;
}

/* A port after a node: 1-5 digits, or obfuscated "_x". */
static bool port_ok(const char *s, size_t len)
{
    if (len > 0 && s[0] == '_')
        return all_of(s + 1, len - 1, "._-");
    if (len == 0 || len > 5)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isdigit((unsigned char) s[i]))
            return false;
    return true;
}

/* A hop as both headers spell it: "unknown", "_obfuscated" (Forwarded
   only), IPv4[:port], [IPv6][:port], or (X-Forwarded-For only) bare IPv6. */
static bool node_parse(const char *s, size_t len, bool rfc7239, struct hop *h)
{
    h->hidden = false;
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        size_t inner = close ? (size_t) (close - s - 1) : 0;
        if (!close || !memchr(s + 1, ':', inner) || !ip_parse(s + 1, inner, &h->ip))
            return false; /* brackets hold IPv6 only */
        size_t rest = len - (size_t) (close - s) - 1;
        return rest == 0 || (close[1] == ':' && port_ok(close + 2, rest - 1));
    }
    const char *colon = memchr(s, ':', len);
    if (colon && memchr(colon + 1, ':', len - (size_t) (colon - s) - 1)) /* two colons: bare IPv6 */
        return !rfc7239 && ip_parse(s, len, &h->ip);
    size_t nlen = colon ? (size_t) (colon - s) : len;
    if (colon && !port_ok(colon + 1, len - nlen - 1))
        return false;
    h->hidden = (nlen == 7 && strncasecmp(s, "unknown", 7) == 0) || (rfc7239 && nlen > 0 && s[0] == '_');
    if (h->hidden)
        return s[0] != '_' || all_of(s + 1, nlen - 1, "._-");
    return ip_parse(s, nlen, &h->ip) && h->ip.family == AF_INET;
}

static void quote_for_message(char *out, size_t outlen, const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 4 < outlen && i < 40; i++)
        out[n++] = isprint((unsigned char) s[i]) && s[i] != '"' ? s[i] : '?';
    if (len > 40 && n + 4 < outlen) {
        out[n++] = '.';
        out[n++] = '.';
        out[n++] = '.';
    }
    out[n] = '\0';
}

/* why: <where>"<s>" is not <isnt>; returns -1. */
static int chain_error(char *why, size_t whylen, const char *where, const char *s, size_t len, const char *isnt)
{
    char shown[64];
    quote_for_message(shown, sizeof(shown), s, len);
    snprintf(why, whylen, "%s\"%s\" is not %s", where, shown, isnt);
    return -1;
}

/* X-Forwarded-For: addresses separated by commas. */
static int parse_xff(const char *v, struct hop *hops, int *n, char *why, size_t whylen)
{
    *n = 0;
    const char *p = v;
    for (;;) {
        const char *e = strchr(p, ',');
        const char *end = e ? e : p + strlen(p);
        const char *b = p;
        trim(&b, &end);
        if (*n == CHAIN_MAX) {
            snprintf(why, whylen, "X-Forwarded-For has more than %d hops", CHAIN_MAX);
            return -1;
        }
        struct hop *h = &hops[*n];
        h->proto = P_NONE;
        if (!node_parse(b, (size_t) (end - b), false, h))
            return chain_error(why, whylen, "X-Forwarded-For: ", b, (size_t) (end - b), "an address");
        (*n)++;
        if (!e)
            return 0;
        p = e + 1;
    }
}

/* A token or a quoted-string (backslash escapes undone) into out. */
static const char *forwarded_value(const char *p, char *out, size_t outlen, bool *ok)
{
    size_t n = 0;
    *ok = false;
    if (*p != '"') {
        while (is_tchar(*p)) {
            if (n + 1 >= outlen)
                return p;
            out[n++] = *p++;
        }
        out[n] = '\0';
        *ok = n > 0;
        return p;
    }
    for (p++; *p && *p != '"'; p++) {
        if (*p == '\\' && p[1])
            p++;
        if ((unsigned char) *p < 0x20 && *p != '\t')
            return p;
        if (n + 1 >= outlen)
            return p;
        out[n++] = *p;
    }
    if (*p != '"')
        return p;
    out[n] = '\0';
    *ok = true;
    return p + 1;
}

static bool scheme_ok(const char *s)
{
    if (!isalpha((unsigned char) s[0]))
        return false;
    for (const char *c = s; *c; c++)
        if (!isalnum((unsigned char) *c) && *c != '+' && *c != '-' && *c != '.')
            return false;
    return true;
}

/* Forwarded: elements separated by commas, pairs by semicolons (RFC 7239). */
static int parse_forwarded(const char *v, struct hop *hops, int *n, char *why, size_t whylen)
{
    *n = 0;
    const char *p = v;
    bool element_open = false, seen_for = false, seen_proto = false, seen_by = false, seen_host = false;
    struct hop cur = { .hidden = true, .proto = P_NONE };
    for (;;) {
        while (is_ows(*p))
            p++;
        if (*p == ';') {
            p++;
            continue;
        }
        if (*p == ',' || *p == '\0') {
            if (element_open) { /* an empty list element is no hop (RFC 7230 #rule) */
                if (*n == CHAIN_MAX) {
                    snprintf(why, whylen, "Forwarded has more than %d hops", CHAIN_MAX);
                    return -1;
                }
                hops[(*n)++] = cur;
            }
            if (*p == '\0')
                break;
            p++;
            element_open = seen_for = seen_proto = seen_by = seen_host = false;
            cur = (struct hop) { .hidden = true, .proto = P_NONE };
            continue;
        }
        const char *name = p;
        while (is_tchar(*p))
            p++;
        size_t nlen = (size_t) (p - name);
        char value[VALUE_MAX];
        bool ok = false;
        if (nlen > 0 && *p == '=')
            p = forwarded_value(p + 1, value, sizeof(value), &ok);
        if (!ok) {
            snprintf(why, whylen, "Forwarded is malformed");
            return -1;
        }
        while (is_ows(*p))
            p++;
        if (*p != ';' && *p != ',' && *p != '\0') {
            snprintf(why, whylen, "Forwarded is malformed");
            return -1;
        }
        element_open = true;
        bool *seen = nlen == 3 && !strncasecmp(name, "for", 3)     ? &seen_for
                     : nlen == 5 && !strncasecmp(name, "proto", 5) ? &seen_proto
                     : nlen == 2 && !strncasecmp(name, "by", 2)    ? &seen_by
                     : nlen == 4 && !strncasecmp(name, "host", 4)  ? &seen_host
                                                                   : NULL;
        if (seen && *seen) {
            snprintf(why, whylen, "Forwarded repeats %.*s= in one element", (int) nlen, name);
            return -1;
        }
        if (seen)
            *seen = true;
        if (seen == &seen_for && !node_parse(value, strlen(value), true, &cur))
            return chain_error(why, whylen, "Forwarded: for=", value, strlen(value), "an address");
        if (seen == &seen_proto) {
            if (!scheme_ok(value))
                return chain_error(why, whylen, "Forwarded: proto=", value, strlen(value), "a scheme");
            cur.proto = strcasecmp(value, "https") == 0 ? P_HTTPS : P_HTTP;
        }
    }
    if (*n == 0) {
        snprintf(why, whylen, "Forwarded is empty");
        return -1;
    }
    return 0;
}

/* The client of a chain and the proto its hop reported (see the top). */
static void walk(const struct hop *h, int n, const struct ip *peer, struct ip *client, enum proto *proto)
{
    for (int i = n - 1; i >= 0; i--) {
        if (h[i].hidden) {
            *client = i == n - 1 ? *peer : h[i + 1].ip;
            *proto = h[i].proto;
            return;
        }
        if (!ip_trusted(&h[i].ip)) {
            *client = h[i].ip;
            *proto = h[i].proto;
            return;
        }
    }
    *client = h[0].ip;
    *proto = h[0].proto;
}

/* The one header line of a name; -1 (why) when sent more than once. */
static int single(const struct mg_header *hs, int nh, const char *name, const char **value, char *why, size_t whylen)
{
    *value = NULL;
    for (int i = 0; i < nh; i++) {
        if (!hs[i].name || strcasecmp(hs[i].name, name) != 0)
            continue;
        if (*value) {
            snprintf(why, whylen, "more than one %s header", name);
            return -1;
        }
        *value = hs[i].value ? hs[i].value : "";
    }
    if (*value && strlen(*value) > HEADER_VALUE_MAX) {
        snprintf(why, whylen, "the %s header is over %d bytes", name, HEADER_VALUE_MAX);
        return -1;
    }
    return 0;
}

static int origin_from_headers(const struct ip *peer, const struct mg_header *hs, int nh, struct ip *client,
                               enum proto *proto, char *why, size_t whylen)
{
    const char *fwd, *xff, *xfp;
    if (single(hs, nh, "Forwarded", &fwd, why, whylen) != 0 ||
        single(hs, nh, "X-Forwarded-For", &xff, why, whylen) != 0 ||
        single(hs, nh, "X-Forwarded-Proto", &xfp, why, whylen) != 0)
        return -1;
    struct hop hops[CHAIN_MAX];
    int n;
    struct ip from_fwd = *peer, from_xff = *peer;
    enum proto fwd_proto = P_NONE, xff_proto = P_NONE, xfp_proto = P_NONE;
    if (fwd) {
        if (parse_forwarded(fwd, hops, &n, why, whylen) != 0)
            return -1;
        walk(hops, n, peer, &from_fwd, &fwd_proto);
    }
    if (xff) {
        if (parse_xff(xff, hops, &n, why, whylen) != 0)
            return -1;
        walk(hops, n, peer, &from_xff, &xff_proto);
    }
    if (fwd && xff && !ip_equal(&from_fwd, &from_xff)) {
        snprintf(why, whylen, "Forwarded and X-Forwarded-For name different clients");
        return -1;
    }
    if (xfp) {
        const char *b = xfp, *e = xfp + strlen(xfp);
        trim(&b, &e);
        size_t len = (size_t) (e - b);
        if (len == 5 && strncasecmp(b, "https", 5) == 0)
            xfp_proto = P_HTTPS;
        else if (len == 4 && strncasecmp(b, "http", 4) == 0)
            xfp_proto = P_HTTP;
        else
            return chain_error(why, whylen, "X-Forwarded-Proto: ", b, len, "http or https");
    }
    if (fwd_proto != P_NONE && xfp_proto != P_NONE && fwd_proto != xfp_proto) {
        snprintf(why, whylen, "Forwarded proto= and X-Forwarded-Proto disagree");
        return -1;
    }
    *client = fwd ? from_fwd : from_xff;
    *proto = fwd_proto != P_NONE ? fwd_proto : xfp_proto;
    return 0;
}

int origin_of(const char *peer, bool peer_tls, const struct mg_header *hs, int nh, struct client_origin *o, char *why,
              size_t whylen)
{
    snprintf(o->addr, sizeof(o->addr), "%s", peer ? peer : "");
    o->tls = peer_tls;
    o->via_proxy = false;
    struct ip p;
    if (!peer || nproxies == 0 || !ip_parse(peer, strlen(peer), &p) || !ip_trusted(&p))
        return 0;
    o->via_proxy = true;
    struct ip client;
    enum proto proto;
    if (origin_from_headers(&p, hs, nh, &client, &proto, why, whylen) != 0)
        return -1;
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(client.family, client.a, text, sizeof(text)))
        snprintf(o->addr, sizeof(o->addr), "%s", text);
    o->tls = peer_tls || proto == P_HTTPS;
    return 0;
}
