/*
 * The RateLimit headers of an answer, written by the shim from one text
 * column (lattice_http.rate_state(), docs/http-contract.md) instead of being
 * merged into every function's headers jsonb in SQL.
 *
 *   "api 1000 997 11 3600"  ->  RateLimit-Limit: 1000, RateLimit-Remaining: 997,
 *   RateLimit-Reset: 11, RateLimit-Policy: 1000;w=3600, RateLimit-Class: api,
 *   X-RateLimit-Limit, X-RateLimit-Remaining (the same), X-RateLimit-Reset:
 *   now + 11 as Unix seconds (GitHub's convention).
 *
 * The text is parsed strictly; anything else writes nothing.
 */
#include "shim.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define CLASS_MAX 32
#define DIGITS_MAX 15 /* keeps now + reset far from overflow */

/* A non-negative decimal ending at a space or the end; advances *p. */
static bool number(const char **p, int64_t *out)
{
    const char *s = *p;
    int64_t v = 0;
    int n = 0;
    while (*s >= '0' && *s <= '9') {
        if (++n > DIGITS_MAX)
            return false;
        v = v * 10 + (*s++ - '0');
    }
    if (n == 0 || (*s != ' ' && *s != '\0'))
        return false;
    *out = v;
    *p = s;
    return true;
}

bool rate_headers_append(const char *state, int64_t now, char *buf, size_t *len, size_t cap)
{
    if (!state || *len >= cap)
        return false;
    const char *p = state;
    size_t clen = 0;
    while ((p[clen] >= 'a' && p[clen] <= 'z') || p[clen] == '_')
        clen++;
    if (clen == 0 || clen > CLASS_MAX || p[clen] != ' ')
        return false;
    p += clen;
    int64_t f[4]; /* limit, remaining, reset, period */
    for (int i = 0; i < 4; i++) {
        if (*p++ != ' ' || !number(&p, &f[i]))
            return false;
    }
    if (*p != '\0' || f[0] <= 0 || f[3] <= 0)
        return false;
    int n = snprintf(buf + *len, cap - *len,
                     "RateLimit-Limit: %" PRId64 "\r\nRateLimit-Remaining: %" PRId64 "\r\nRateLimit-Reset: %" PRId64
                     "\r\nRateLimit-Policy: %" PRId64 ";w=%" PRId64 "\r\nRateLimit-Class: %.*s\r\n"
                     "X-RateLimit-Limit: %" PRId64 "\r\nX-RateLimit-Remaining: %" PRId64
                     "\r\nX-RateLimit-Reset: %" PRId64 "\r\n",
                     f[0], f[1], f[2], f[0], f[3], (int) clen, state, f[0], f[1], now + f[2]);
    if (n < 0 || (size_t) n >= cap - *len) {
        buf[*len] = '\0';
        return false;
    }
    *len += (size_t) n;
    return true;
}
