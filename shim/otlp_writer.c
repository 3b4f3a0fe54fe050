/*
 * The JSON text of an OTLP conversion (otlp_json.c), written piece by piece:
 * bounded (over) and growing (nomem when realloc fails), in the OTLP/JSON
 * encodings: strings escaped, ids as lowercase hex, bytes as base64, 64-bit
 * integers as decimal strings, doubles as the proto3 JSON mapping writes
 * them.  A string that is not UTF-8 (PostgreSQL text refuses it) sets a
 * fault instead of being written.
 */
#include "otlp_writer.h"
#include "utf8.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ow_put(struct ow_out *o, const char *s, size_t n)
{
    if (o->over || o->nomem || o->fault)
        return;
    if (n > o->max - o->len) {
        o->over = true;
        return;
    }
    if (o->len + n + 1 > o->cap) {
        size_t ncap = o->cap ? o->cap : 4096;
        while (ncap < o->len + n + 1)
            ncap *= 2;
        if (ncap > o->max + 1)
            ncap = o->max + 1;
        char *nb = realloc(o->buf, ncap);
        if (!nb) {
            o->nomem = true;
            return;
        }
        o->buf = nb;
        o->cap = ncap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

void ow_puts(struct ow_out *o, const char *s)
{
    ow_put(o, s, strlen(s));
}

void ow_fault(struct ow_out *o, enum ow_fault f)
{
    if (!o->fault)
        o->fault = f;
}

/* "key": after a comma unless it is the object's first */
void ow_key(struct ow_out *o, bool *first, const char *name)
{
    if (!*first)
        ow_put(o, ",", 1);
    *first = false;
    ow_put(o, "\"", 1);
    ow_puts(o, name);
    ow_put(o, "\":", 2);
}

void ow_str(struct ow_out *o, const char *s)
{
    if (!s) /* protobuf-c sets every string; unset would be empty */
        s = "";
    size_t n = strlen(s);
    if (!utf8_valid(s, n)) {
        ow_fault(o, OW_FAULT_UTF8);
        return;
    }
    ow_put(o, "\"", 1);
    size_t run = 0; /* bytes written as they are, not yet put */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        ow_put(o, s + i - run, run);
        run = 0;
        char esc[8];
        switch (c) {
        case '"': ow_puts(o, "\\\""); break;
        case '\\': ow_puts(o, "\\\\"); break;
        case '\n': ow_puts(o, "\\n"); break;
        case '\r': ow_puts(o, "\\r"); break;
        case '\t': ow_puts(o, "\\t"); break;
        default: snprintf(esc, sizeof(esc), "\\u%04x", c); ow_puts(o, esc);
        }
    }
    ow_put(o, s + n - run, run);
    ow_put(o, "\"", 1);
}

void ow_key_str(struct ow_out *o, bool *first, const char *name, const char *s)
{
    ow_key(o, first, name);
    ow_str(o, s);
}

/* a string field: left out when empty */
void ow_opt_str(struct ow_out *o, bool *first, const char *name, const char *s)
{
    if (s && *s)
        ow_key_str(o, first, name, s);
}

void ow_opt_uint(struct ow_out *o, bool *first, const char *name, uint32_t v)
{
    char buf[16];
    if (!v)
        return;
    ow_key(o, first, name);
    snprintf(buf, sizeof(buf), "%" PRIu32, v);
    ow_puts(o, buf);
}

void ow_key_int(struct ow_out *o, bool *first, const char *name, int v)
{
    char buf[16];
    ow_key(o, first, name);
    snprintf(buf, sizeof(buf), "%d", v);
    ow_puts(o, buf);
}

/* 64-bit integers are strings in OTLP/JSON (JavaScript's numbers lose them) */
void ow_key_u64(struct ow_out *o, bool *first, const char *name, uint64_t v)
{
    char buf[32];
    ow_key(o, first, name);
    snprintf(buf, sizeof(buf), "\"%" PRIu64 "\"", v);
    ow_puts(o, buf);
}

/* an id: lowercase hex, left out when empty */
void ow_opt_hex(struct ow_out *o, bool *first, const char *name, const uint8_t *data, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (!len)
        return;
    ow_key(o, first, name);
    ow_put(o, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        char pair[2] = { hex[data[i] >> 4], hex[data[i] & 15] };
        ow_put(o, pair, 2);
    }
    ow_put(o, "\"", 1);
}

void ow_base64(struct ow_out *o, const uint8_t *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    ow_put(o, "\"", 1);
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t) data[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t) data[i + 1] << 8;
        if (i + 2 < len)
            v |= data[i + 2];
        char q[4] = { tab[v >> 18], tab[(v >> 12) & 63], i + 1 < len ? tab[(v >> 6) & 63] : '=',
                      i + 2 < len ? tab[v & 63] : '=' };
        ow_put(o, q, 4);
    }
    ow_put(o, "\"", 1);
}

/* the shortest text that reads back the same; NaN and infinities as the
   proto3 JSON mapping writes them */
void ow_number(struct ow_out *o, double d)
{
    char buf[40];
    if (isnan(d)) {
        ow_puts(o, "\"NaN\"");
        return;
    }
    if (isinf(d)) {
        ow_puts(o, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        return;
    }
    snprintf(buf, sizeof(buf), "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, sizeof(buf), "%.17g", d);
    ow_puts(o, buf);
}
