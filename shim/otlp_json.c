/*
 * An OTLP ExportTraceServiceRequest (protobuf) to its OTLP/JSON text, the
 * OTLP spec's JSON encoding: lowerCamelCase field names, trace and span ids
 * as lowercase hex, 64-bit integers as decimal strings, enums as integers,
 * bytes as base64.  Defaults are left out as in the proto3 JSON mapping,
 * except a span's name, kind, times and status code and an event's name and
 * time, always written; arrayValue and kvlistValue always carry "values".
 * The deprecated instrumentation_library_spans become scopeSpans.
 *
 * A span JSON cannot carry is dropped and counted: one of its strings is not
 * UTF-8 (PostgreSQL text refuses it), or an attribute value is nested deeper
 * than OTLP_ANY_DEPTH_MAX.  A resource or scope with such a string or value
 * drops all its spans.  Each span (scope, resource) is written, then cut off
 * again when it turned out faulty.  protobuf-c cuts a string at a NUL byte,
 * so such a string arrives shortened (PostgreSQL could not store it whole).
 *
 * Bounds: the wire nesting (wire_depth_ok), protobuf-c's memory (struct
 * budget) and the JSON's size (struct out).
 */
#define PROTOBUF_C__NO_DEPRECATED /* instrumentation_library_spans is read on purpose */

#include "otlp_json.h"
#include "utf8.h"

#include <inttypes.h>
#include <math.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest PbRequest;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans PbResourceSpans;
typedef Opentelemetry__Proto__Trace__V1__Span PbSpan;
typedef Opentelemetry__Proto__Trace__V1__Span__Event PbEvent;
typedef Opentelemetry__Proto__Trace__V1__Span__Link PbLink;
typedef Opentelemetry__Proto__Common__V1__KeyValue PbKeyValue;
typedef Opentelemetry__Proto__Common__V1__AnyValue PbAnyValue;

#define REQUEST_DESCRIPTOR opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor

/* ---- the wire's nesting ----
 * protobuf-c's unpack recurses once per nested message and has no limit: a
 * few MB of nested AnyValues overflow the thread's stack.  This walks the
 * wire format first, iteratively (tags and lengths only; which
 * length-delimited field is a message comes from the generated descriptors)
 * and refuses nesting deeper than OTLP_WIRE_DEPTH_MAX.  Decoding is left to
 * protobuf-c. */

static bool varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *pos < end; shift += 7) {
        uint8_t b = p[(*pos)++];
        *v |= (uint64_t) (b & 0x7f) << shift;
        if (!(b & 0x80))
            return true;
    }
    return false;
}

static enum otlp_decode_status wire_depth_ok(const uint8_t *p, size_t len)
{
    struct { const ProtobufCMessageDescriptor *desc; size_t end; } st[OTLP_WIRE_DEPTH_MAX];
    int top = 0;
    size_t pos = 0;
    st[0].desc = &REQUEST_DESCRIPTOR;
    st[0].end = len;
    for (;;) {
        while (pos == st[top].end) {
            if (top == 0)
                return OTLP_DECODED;
            top--;
        }
        uint64_t tag, n;
        if (!varint(p, st[top].end, &pos, &tag))
            return OTLP_MALFORMED;
        size_t room = st[top].end - pos;
        switch (tag & 7) {
        case 0:
            if (!varint(p, st[top].end, &pos, &n))
                return OTLP_MALFORMED;
            break;
        case 1:
        case 5:
            if (room < ((tag & 7) == 1 ? 8u : 4u))
                return OTLP_MALFORMED;
            pos += (tag & 7) == 1 ? 8 : 4;
            break;
        case 2: {
            if (!varint(p, st[top].end, &pos, &n) || n > st[top].end - pos)
                return OTLP_MALFORMED;
            const ProtobufCFieldDescriptor *f =
                tag >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(st[top].desc, (unsigned) (tag >> 3)) : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (top + 1 == OTLP_WIRE_DEPTH_MAX)
                    return OTLP_TOO_DEEP;
                top++;
                st[top].desc = f->descriptor;
                st[top].end = pos + (size_t) n;
            } else
                pos += (size_t) n;
            break;
        }
        default: /* groups (3, 4) and the undefined 6, 7: protobuf-c refuses them too */
            return OTLP_MALFORMED;
        }
    }
}

/* ---- protobuf-c's memory: live bytes bounded, each block with its size ---- */

struct budget {
    size_t used, max;
    bool exhausted, nomem;
};

#define BLOCK_HEAD alignof(max_align_t)

static void *budget_alloc(void *data, size_t size)
{
    struct budget *b = data;
    if (size > b->max - b->used || size > SIZE_MAX - BLOCK_HEAD) {
        b->exhausted = true;
        return NULL;
    }
    unsigned char *p = malloc(BLOCK_HEAD + size);
    if (!p) {
        b->nomem = true;
        return NULL;
    }
    memcpy(p, &size, sizeof(size));
    b->used += size;
    return p + BLOCK_HEAD;
}

static void budget_free(void *data, void *ptr)
{
    struct budget *b = data;
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *) ptr - BLOCK_HEAD;
    size_t size;
    memcpy(&size, p, sizeof(size));
    b->used -= size;
    free(p);
}

/* ---- the JSON text: bounded, growing ---- */

enum fault { FAULT_NONE, FAULT_UTF8, FAULT_DEPTH };

struct out {
    char *buf;
    size_t len, cap, max;
    bool over, nomem;
    enum fault fault;  /* of the span (scope, resource) being written */
};

static void put(struct out *o, const char *s, size_t n)
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

static void put_s(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void set_fault(struct out *o, enum fault f)
{
    if (!o->fault)
        o->fault = f;
}

/* "key": after a comma unless it is the object's first */
static void key(struct out *o, bool *first, const char *name)
{
    if (!*first)
        put(o, ",", 1);
    *first = false;
    put(o, "\"", 1);
    put_s(o, name);
    put(o, "\":", 2);
}

static void str(struct out *o, const char *s)
{
    if (!s) /* protobuf-c sets every string; unset would be empty */
        s = "";
    size_t n = strlen(s);
    if (!utf8_valid(s, n)) {
        set_fault(o, FAULT_UTF8);
        return;
    }
    put(o, "\"", 1);
    size_t run = 0; /* bytes written as they are, not yet put */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        put(o, s + i - run, run);
        run = 0;
        char esc[8];
        switch (c) {
        case '"': put_s(o, "\\\""); break;
        case '\\': put_s(o, "\\\\"); break;
        case '\n': put_s(o, "\\n"); break;
        case '\r': put_s(o, "\\r"); break;
        case '\t': put_s(o, "\\t"); break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put_s(o, esc);
        }
    }
    put(o, s + n - run, run);
    put(o, "\"", 1);
}

static void key_str(struct out *o, bool *first, const char *name, const char *s)
{
    key(o, first, name);
    str(o, s);
}

/* a string field: left out when empty */
static void opt_str(struct out *o, bool *first, const char *name, const char *s)
{
    if (s && *s)
        key_str(o, first, name, s);
}

static void opt_uint(struct out *o, bool *first, const char *name, uint32_t v)
{
    char buf[16];
    if (!v)
        return;
    key(o, first, name);
    snprintf(buf, sizeof(buf), "%" PRIu32, v);
    put_s(o, buf);
}

static void key_int(struct out *o, bool *first, const char *name, int v)
{
    char buf[16];
    key(o, first, name);
    snprintf(buf, sizeof(buf), "%d", v);
    put_s(o, buf);
}

/* 64-bit integers are strings in OTLP/JSON (JavaScript's numbers lose them) */
static void key_u64(struct out *o, bool *first, const char *name, uint64_t v)
{
    char buf[32];
    key(o, first, name);
    snprintf(buf, sizeof(buf), "\"%" PRIu64 "\"", v);
    put_s(o, buf);
}

/* an id: lowercase hex, left out when empty */
static void opt_id(struct out *o, bool *first, const char *name, const ProtobufCBinaryData *id)
{
    static const char hex[] = "0123456789abcdef";
    if (!id->len)
        return;
    key(o, first, name);
    put(o, "\"", 1);
    for (size_t i = 0; i < id->len; i++) {
        char pair[2] = { hex[id->data[i] >> 4], hex[id->data[i] & 15] };
        put(o, pair, 2);
    }
    put(o, "\"", 1);
}

static void base64(struct out *o, const ProtobufCBinaryData *b)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    put(o, "\"", 1);
    for (size_t i = 0; i < b->len; i += 3) {
        uint32_t v = (uint32_t) b->data[i] << 16;
        if (i + 1 < b->len)
            v |= (uint32_t) b->data[i + 1] << 8;
        if (i + 2 < b->len)
            v |= b->data[i + 2];
        char q[4] = { tab[v >> 18], tab[(v >> 12) & 63], i + 1 < b->len ? tab[(v >> 6) & 63] : '=',
                      i + 2 < b->len ? tab[v & 63] : '=' };
        put(o, q, 4);
    }
    put(o, "\"", 1);
}

/* the shortest text that reads back the same; NaN and infinities as the
   proto3 JSON mapping writes them */
static void number(struct out *o, double d)
{
    char buf[40];
    if (isnan(d)) {
        put_s(o, "\"NaN\"");
        return;
    }
    if (isinf(d)) {
        put_s(o, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
        return;
    }
    snprintf(buf, sizeof(buf), "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, sizeof(buf), "%.17g", d);
    put_s(o, buf);
}

/* ---- attributes ---- */

static void kvs(struct out *o, PbKeyValue *const *kv, size_t n, int depth);

static void any(struct out *o, const PbAnyValue *v, int depth)
{
    bool first = true;
    char buf[32];
    if (depth > OTLP_ANY_DEPTH_MAX) {
        set_fault(o, FAULT_DEPTH);
        return;
    }
    put(o, "{", 1);
    switch (v ? v->value_case : OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE__NOT_SET) {
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE:
        key_str(o, &first, "stringValue", v->string_value);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE:
        key(o, &first, "boolValue");
        put_s(o, v->bool_value ? "true" : "false");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE:
        key(o, &first, "intValue");
        snprintf(buf, sizeof(buf), "\"%" PRId64 "\"", v->int_value);
        put_s(o, buf);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE:
        key(o, &first, "doubleValue");
        number(o, v->double_value);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE:
        key(o, &first, "arrayValue");
        put_s(o, "{\"values\":[");
        for (size_t i = 0; v->array_value && i < v->array_value->n_values; i++) {
            if (i)
                put(o, ",", 1);
            any(o, v->array_value->values[i], depth + 1);
        }
        put_s(o, "]}");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE:
        key(o, &first, "kvlistValue");
        put_s(o, "{\"values\":");
        kvs(o, v->kvlist_value ? v->kvlist_value->values : NULL, v->kvlist_value ? v->kvlist_value->n_values : 0,
            depth + 1);
        put(o, "}", 1);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE:
        key(o, &first, "bytesValue");
        base64(o, &v->bytes_value);
        break;
    default: /* not set: an empty value */
        break;
    }
    put(o, "}", 1);
}

/* [{"key":..,"value":{..}}, ..]; depth is that of the values */
static void kvs(struct out *o, PbKeyValue *const *kv, size_t n, int depth)
{
    put(o, "[", 1);
    for (size_t i = 0; i < n; i++) {
        bool first = true;
        put(o, i ? ",{" : "{", i ? 2 : 1);
        key_str(o, &first, "key", kv[i]->key);
        key(o, &first, "value");
        any(o, kv[i]->value, depth);
        put(o, "}", 1);
    }
    put(o, "]", 1);
}

static void opt_attrs(struct out *o, bool *first, PbKeyValue *const *kv, size_t n, uint32_t dropped)
{
    if (n) {
        key(o, first, "attributes");
        kvs(o, kv, n, 1);
    }
    opt_uint(o, first, "droppedAttributesCount", dropped);
}

/* ---- spans ---- */

static void event(struct out *o, const PbEvent *e)
{
    bool first = true;
    put(o, "{", 1);
    key_u64(o, &first, "timeUnixNano", e->time_unix_nano);
    key_str(o, &first, "name", e->name);
    opt_attrs(o, &first, e->attributes, e->n_attributes, e->dropped_attributes_count);
    put(o, "}", 1);
}

static void span_link(struct out *o, const PbLink *l)
{
    bool first = true;
    put(o, "{", 1);
    opt_id(o, &first, "traceId", &l->trace_id);
    opt_id(o, &first, "spanId", &l->span_id);
    opt_str(o, &first, "traceState", l->trace_state);
    opt_attrs(o, &first, l->attributes, l->n_attributes, l->dropped_attributes_count);
    put(o, "}", 1);
}

static void span(struct out *o, const PbSpan *s)
{
    bool first = true;
    put(o, "{", 1);
    opt_id(o, &first, "traceId", &s->trace_id);
    opt_id(o, &first, "spanId", &s->span_id);
    opt_str(o, &first, "traceState", s->trace_state);
    opt_id(o, &first, "parentSpanId", &s->parent_span_id);
    key_str(o, &first, "name", s->name);
    key_int(o, &first, "kind", (int) s->kind);
    key_u64(o, &first, "startTimeUnixNano", s->start_time_unix_nano);
    key_u64(o, &first, "endTimeUnixNano", s->end_time_unix_nano);
    opt_attrs(o, &first, s->attributes, s->n_attributes, s->dropped_attributes_count);
    if (s->n_events) {
        key(o, &first, "events");
        for (size_t i = 0; i < s->n_events; i++) {
            put(o, i ? "," : "[", 1);
            event(o, s->events[i]);
        }
        put(o, "]", 1);
    }
    opt_uint(o, &first, "droppedEventsCount", s->dropped_events_count);
    if (s->n_links) {
        key(o, &first, "links");
        for (size_t i = 0; i < s->n_links; i++) {
            put(o, i ? "," : "[", 1);
            span_link(o, s->links[i]);
        }
        put(o, "]", 1);
    }
    opt_uint(o, &first, "droppedLinksCount", s->dropped_links_count);
    key(o, &first, "status");
    bool sfirst = true;
    put(o, "{", 1);
    key_int(o, &sfirst, "code", s->status ? (int) s->status->code : 0);
    if (s->status)
        opt_str(o, &sfirst, "message", s->status->message);
    put(o, "}}", 2);
}

/* ---- a conversion: what was written, what was dropped ---- */

struct conv {
    struct out o;
    long spans, rejected_utf8, rejected_depth;
};

/* Starts an element of an array (a span, scope or resource): its mark */
static size_t element_start(struct conv *c, bool *first)
{
    size_t mark = c->o.len;
    c->o.fault = FAULT_NONE;
    if (!*first)
        put(&c->o, ",", 1);
    return mark;
}

/* Ends it: kept (true), or cut off and its n spans counted as rejected. */
static bool element_end(struct conv *c, bool *first, size_t mark, long n)
{
    enum fault f = c->o.fault;
    c->o.fault = FAULT_NONE;
    if (f == FAULT_NONE) {
        *first = false;
        return true;
    }
    c->o.len = mark;
    if (c->o.buf)
        c->o.buf[mark] = '\0';
    if (f == FAULT_UTF8)
        c->rejected_utf8 += n;
    else
        c->rejected_depth += n;
    return false;
}

/* A scope's spans: ScopeSpans, or the deprecated InstrumentationLibrarySpans
   (its library has a name and a version only). */
struct scope_view {
    bool present;
    const char *name, *version;
    PbKeyValue *const *attrs;
    size_t n_attrs;
    uint32_t dropped;
    PbSpan *const *spans;
    size_t n_spans;
    const char *schema_url;
};

static void scope_spans(struct conv *c, bool *first, const struct scope_view *v)
{
    struct out *o = &c->o;
    size_t mark = element_start(c, first);
    bool f = true;
    put(o, "{", 1);
    if (v->present) {
        bool sf = true;
        key(o, &f, "scope");
        put(o, "{", 1);
        opt_str(o, &sf, "name", v->name);
        opt_str(o, &sf, "version", v->version);
        opt_attrs(o, &sf, v->attrs, v->n_attrs, v->dropped);
        put(o, "}", 1);
    }
    opt_str(o, &f, "schemaUrl", v->schema_url);
    if (!element_end(c, first, mark, (long) v->n_spans))
        return;
    if (v->n_spans) {
        bool sfirst = true;
        key(o, &f, "spans");
        put(o, "[", 1);
        for (size_t i = 0; i < v->n_spans; i++) {
            size_t smark = element_start(c, &sfirst);
            span(o, v->spans[i]);
            if (element_end(c, &sfirst, smark, 1))
                c->spans++;
        }
        put(o, "]", 1);
    }
    put(o, "}", 1);
}

static long spans_of(const PbResourceSpans *rs)
{
    long n = 0;
    for (size_t i = 0; i < rs->n_scope_spans; i++)
        n += (long) rs->scope_spans[i]->n_spans;
    for (size_t i = 0; i < rs->n_instrumentation_library_spans; i++)
        n += (long) rs->instrumentation_library_spans[i]->n_spans;
    return n;
}

static void resource_spans(struct conv *c, bool *first, const PbResourceSpans *rs)
{
    struct out *o = &c->o;
    size_t mark = element_start(c, first);
    bool f = true;
    put(o, "{", 1);
    if (rs->resource) {
        bool rf = true;
        key(o, &f, "resource");
        put(o, "{", 1);
        opt_attrs(o, &rf, rs->resource->attributes, rs->resource->n_attributes, rs->resource->dropped_attributes_count);
        put(o, "}", 1);
    }
    opt_str(o, &f, "schemaUrl", rs->schema_url);
    if (!element_end(c, first, mark, spans_of(rs)))
        return;
    if (rs->n_scope_spans || rs->n_instrumentation_library_spans) {
        bool sfirst = true;
        key(o, &f, "scopeSpans");
        put(o, "[", 1);
        for (size_t i = 0; i < rs->n_scope_spans; i++) {
            const Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = rs->scope_spans[i];
            const Opentelemetry__Proto__Common__V1__InstrumentationScope *sc = ss->scope;
            struct scope_view v = { .present = sc != NULL, .spans = ss->spans, .n_spans = ss->n_spans,
                                    .schema_url = ss->schema_url };
            if (sc) {
                v.name = sc->name;
                v.version = sc->version;
                v.attrs = sc->attributes;
                v.n_attrs = sc->n_attributes;
                v.dropped = sc->dropped_attributes_count;
            }
            scope_spans(c, &sfirst, &v);
        }
        for (size_t i = 0; i < rs->n_instrumentation_library_spans; i++) {
            const Opentelemetry__Proto__Trace__V1__InstrumentationLibrarySpans *ls = rs->instrumentation_library_spans[i];
            const Opentelemetry__Proto__Common__V1__InstrumentationLibrary *lib = ls->instrumentation_library;
            struct scope_view v = { .present = lib != NULL, .spans = ls->spans, .n_spans = ls->n_spans,
                                    .schema_url = ls->schema_url };
            if (lib) {
                v.name = lib->name;
                v.version = lib->version;
            }
            scope_spans(c, &sfirst, &v);
        }
        put(o, "]", 1);
    }
    put(o, "}", 1);
}

static void explain(struct otlp_decoded *d)
{
    d->message[0] = '\0';
    if (!d->rejected_spans)
        return;
    int n = snprintf(d->message, sizeof(d->message), "%ld span%s dropped by the receiver:", d->rejected_spans,
                     d->rejected_spans == 1 ? "" : "s");
    if (n > 0 && d->rejected_utf8 && (size_t) n < sizeof(d->message))
        n += snprintf(d->message + n, sizeof(d->message) - (size_t) n, " %ld with a string that is not valid UTF-8%s",
                      d->rejected_utf8, d->rejected_depth ? ";" : "");
    if (n > 0 && d->rejected_depth && (size_t) n < sizeof(d->message))
        snprintf(d->message + n, sizeof(d->message) - (size_t) n, " %ld with an attribute value nested deeper than %d",
                 d->rejected_depth, OTLP_ANY_DEPTH_MAX);
}

enum otlp_decode_status otlp_traces_to_json(const uint8_t *pb, size_t len, size_t json_max, struct otlp_decoded *out)
{
    memset(out, 0, sizeof(*out));
    enum otlp_decode_status st = wire_depth_ok(pb, len);
    if (st != OTLP_DECODED)
        return st;

    struct budget b = { .max = len > (SIZE_MAX - (1u << 20)) / OTLP_DECODE_MEM_FACTOR
                                   ? SIZE_MAX
                                   : len * OTLP_DECODE_MEM_FACTOR + (1u << 20) };
    ProtobufCAllocator pa = { .alloc = budget_alloc, .free = budget_free, .allocator_data = &b };
    PbRequest *req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(&pa, len, pb);
    if (!req)
        return b.nomem ? OTLP_NO_MEMORY : b.exhausted ? OTLP_TOO_LARGE : OTLP_MALFORMED;

    struct conv c = { .o = { .max = json_max } };
    bool first = true, rfirst = true;
    put(&c.o, "{", 1);
    if (req->n_resource_spans) {
        key(&c.o, &first, "resourceSpans");
        put(&c.o, "[", 1);
        for (size_t i = 0; i < req->n_resource_spans; i++)
            resource_spans(&c, &rfirst, req->resource_spans[i]);
        put(&c.o, "]", 1);
    }
    put(&c.o, "}", 1);
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, &pa);

    if (c.o.over || c.o.nomem) {
        free(c.o.buf);
        return c.o.over ? OTLP_TOO_LARGE : OTLP_NO_MEMORY;
    }
    out->json = c.o.buf;
    out->len = c.o.len;
    out->spans = c.spans;
    out->rejected_utf8 = c.rejected_utf8;
    out->rejected_depth = c.rejected_depth;
    out->rejected_spans = c.rejected_utf8 + c.rejected_depth;
    explain(out);
    return OTLP_DECODED;
}
