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
 * Bounds: the wire nesting and protobuf-c's memory (otlp_guard.c) and the
 * JSON's size (otlp_writer.c).
 */
#define PROTOBUF_C__NO_DEPRECATED /* instrumentation_library_spans is read on purpose */

#include "otlp_json.h"
#include "otlp_guard.h"
#include "otlp_writer.h"

#include <inttypes.h>
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

/* ---- attributes ---- */

static void kvs(struct ow_out *o, PbKeyValue *const *kv, size_t n, int depth);

static void any(struct ow_out *o, const PbAnyValue *v, int depth)
{
    bool first = true;
    char buf[32];
    if (depth > OTLP_ANY_DEPTH_MAX) {
        ow_fault(o, OW_FAULT_DEPTH);
        return;
    }
    ow_put(o, "{", 1);
    switch (v ? v->value_case : OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE__NOT_SET) {
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE:
        ow_key_str(o, &first, "stringValue", v->string_value);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE:
        ow_key(o, &first, "boolValue");
        ow_puts(o, v->bool_value ? "true" : "false");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE:
        ow_key(o, &first, "intValue");
        snprintf(buf, sizeof(buf), "\"%" PRId64 "\"", v->int_value);
        ow_puts(o, buf);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE:
        ow_key(o, &first, "doubleValue");
        ow_number(o, v->double_value);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE:
        ow_key(o, &first, "arrayValue");
        ow_puts(o, "{\"values\":[");
        for (size_t i = 0; v->array_value && i < v->array_value->n_values; i++) {
            if (i)
                ow_put(o, ",", 1);
            any(o, v->array_value->values[i], depth + 1);
        }
        ow_puts(o, "]}");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE:
        ow_key(o, &first, "kvlistValue");
        ow_puts(o, "{\"values\":");
        kvs(o, v->kvlist_value ? v->kvlist_value->values : NULL, v->kvlist_value ? v->kvlist_value->n_values : 0,
            depth + 1);
        ow_put(o, "}", 1);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE:
        ow_key(o, &first, "bytesValue");
        ow_base64(o, v->bytes_value.data, v->bytes_value.len);
        break;
    default: /* not set: an empty value */ break;
    }
    ow_put(o, "}", 1);
}

/* [{"key":..,"value":{..}}, ..]; depth is that of the values */
static void kvs(struct ow_out *o, PbKeyValue *const *kv, size_t n, int depth)
{
    ow_put(o, "[", 1);
    for (size_t i = 0; i < n; i++) {
        bool first = true;
        ow_put(o, i ? ",{" : "{", i ? 2 : 1);
        ow_key_str(o, &first, "key", kv[i]->key);
        ow_key(o, &first, "value");
        any(o, kv[i]->value, depth);
        ow_put(o, "}", 1);
    }
    ow_put(o, "]", 1);
}

static void opt_attrs(struct ow_out *o, bool *first, PbKeyValue *const *kv, size_t n, uint32_t dropped)
{
    if (n) {
        ow_key(o, first, "attributes");
        kvs(o, kv, n, 1);
    }
    ow_opt_uint(o, first, "droppedAttributesCount", dropped);
}

/* ---- spans ---- */

static void event(struct ow_out *o, const PbEvent *e)
{
    bool first = true;
    ow_put(o, "{", 1);
    ow_key_u64(o, &first, "timeUnixNano", e->time_unix_nano);
    ow_key_str(o, &first, "name", e->name);
    opt_attrs(o, &first, e->attributes, e->n_attributes, e->dropped_attributes_count);
    ow_put(o, "}", 1);
}

static void span_link(struct ow_out *o, const PbLink *l)
{
    bool first = true;
    ow_put(o, "{", 1);
    ow_opt_hex(o, &first, "traceId", l->trace_id.data, l->trace_id.len);
    ow_opt_hex(o, &first, "spanId", l->span_id.data, l->span_id.len);
    ow_opt_str(o, &first, "traceState", l->trace_state);
    opt_attrs(o, &first, l->attributes, l->n_attributes, l->dropped_attributes_count);
    ow_put(o, "}", 1);
}

static void span(struct ow_out *o, const PbSpan *s)
{
    bool first = true;
    ow_put(o, "{", 1);
    ow_opt_hex(o, &first, "traceId", s->trace_id.data, s->trace_id.len);
    ow_opt_hex(o, &first, "spanId", s->span_id.data, s->span_id.len);
    ow_opt_str(o, &first, "traceState", s->trace_state);
    ow_opt_hex(o, &first, "parentSpanId", s->parent_span_id.data, s->parent_span_id.len);
    ow_key_str(o, &first, "name", s->name);
    ow_key_int(o, &first, "kind", (int) s->kind);
    ow_key_u64(o, &first, "startTimeUnixNano", s->start_time_unix_nano);
    ow_key_u64(o, &first, "endTimeUnixNano", s->end_time_unix_nano);
    opt_attrs(o, &first, s->attributes, s->n_attributes, s->dropped_attributes_count);
    if (s->n_events) {
        ow_key(o, &first, "events");
        for (size_t i = 0; i < s->n_events; i++) {
            ow_put(o, i ? "," : "[", 1);
            event(o, s->events[i]);
        }
        ow_put(o, "]", 1);
    }
    ow_opt_uint(o, &first, "droppedEventsCount", s->dropped_events_count);
    if (s->n_links) {
        ow_key(o, &first, "links");
        for (size_t i = 0; i < s->n_links; i++) {
            ow_put(o, i ? "," : "[", 1);
            span_link(o, s->links[i]);
        }
        ow_put(o, "]", 1);
    }
    ow_opt_uint(o, &first, "droppedLinksCount", s->dropped_links_count);
    ow_key(o, &first, "status");
    bool sfirst = true;
    ow_put(o, "{", 1);
    ow_key_int(o, &sfirst, "code", s->status ? (int) s->status->code : 0);
    if (s->status)
        ow_opt_str(o, &sfirst, "message", s->status->message);
    ow_put(o, "}}", 2);
}

/* ---- a conversion: what was written, what was dropped ---- */

struct conv {
    struct ow_out o;
    long spans, rejected_utf8, rejected_depth;
};

/* Starts an element of an array (a span, scope or resource): its mark */
static size_t element_start(struct conv *c, bool *first)
{
    size_t mark = c->o.len;
    c->o.fault = OW_FAULT_NONE;
    if (!*first)
        ow_put(&c->o, ",", 1);
    return mark;
}

/* Ends it: kept (true), or cut off and its n spans counted as rejected. */
static bool element_end(struct conv *c, bool *first, size_t mark, long n)
{
    enum ow_fault f = c->o.fault;
    c->o.fault = OW_FAULT_NONE;
    if (f == OW_FAULT_NONE) {
        *first = false;
        return true;
    }
    c->o.len = mark;
    if (c->o.buf)
        c->o.buf[mark] = '\0';
    if (f == OW_FAULT_UTF8)
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
    struct ow_out *o = &c->o;
    size_t mark = element_start(c, first);
    bool f = true;
    ow_put(o, "{", 1);
    if (v->present) {
        bool sf = true;
        ow_key(o, &f, "scope");
        ow_put(o, "{", 1);
        ow_opt_str(o, &sf, "name", v->name);
        ow_opt_str(o, &sf, "version", v->version);
        opt_attrs(o, &sf, v->attrs, v->n_attrs, v->dropped);
        ow_put(o, "}", 1);
    }
    ow_opt_str(o, &f, "schemaUrl", v->schema_url);
    if (!element_end(c, first, mark, (long) v->n_spans))
        return;
    if (v->n_spans) {
        bool sfirst = true;
        ow_key(o, &f, "spans");
        ow_put(o, "[", 1);
        for (size_t i = 0; i < v->n_spans; i++) {
            size_t smark = element_start(c, &sfirst);
            span(o, v->spans[i]);
            if (element_end(c, &sfirst, smark, 1))
                c->spans++;
        }
        ow_put(o, "]", 1);
    }
    ow_put(o, "}", 1);
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
    struct ow_out *o = &c->o;
    size_t mark = element_start(c, first);
    bool f = true;
    ow_put(o, "{", 1);
    if (rs->resource) {
        bool rf = true;
        ow_key(o, &f, "resource");
        ow_put(o, "{", 1);
        opt_attrs(o, &rf, rs->resource->attributes, rs->resource->n_attributes, rs->resource->dropped_attributes_count);
        ow_put(o, "}", 1);
    }
    ow_opt_str(o, &f, "schemaUrl", rs->schema_url);
    if (!element_end(c, first, mark, spans_of(rs)))
        return;
    if (rs->n_scope_spans || rs->n_instrumentation_library_spans) {
        bool sfirst = true;
        ow_key(o, &f, "scopeSpans");
        ow_put(o, "[", 1);
        for (size_t i = 0; i < rs->n_scope_spans; i++) {
            const Opentelemetry__Proto__Trace__V1__ScopeSpans *ss = rs->scope_spans[i];
            const Opentelemetry__Proto__Common__V1__InstrumentationScope *sc = ss->scope;
            struct scope_view v = { .present = sc != NULL,
                                    .spans = ss->spans,
                                    .n_spans = ss->n_spans,
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
            const Opentelemetry__Proto__Trace__V1__InstrumentationLibrarySpans *ls =
                rs->instrumentation_library_spans[i];
            const Opentelemetry__Proto__Common__V1__InstrumentationLibrary *lib = ls->instrumentation_library;
            struct scope_view v = { .present = lib != NULL,
                                    .spans = ls->spans,
                                    .n_spans = ls->n_spans,
                                    .schema_url = ls->schema_url };
            if (lib) {
                v.name = lib->name;
                v.version = lib->version;
            }
            scope_spans(c, &sfirst, &v);
        }
        ow_put(o, "]", 1);
    }
    ow_put(o, "}", 1);
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
    enum otlp_decode_status st = otlp_wire_depth_ok(&REQUEST_DESCRIPTOR, pb, len);
    if (st != OTLP_DECODED)
        return st;

    struct otlp_budget b = { .max = len > (SIZE_MAX - (1u << 20)) / OTLP_DECODE_MEM_FACTOR
                                        ? SIZE_MAX
                                        : len * OTLP_DECODE_MEM_FACTOR + (1u << 20) };
    ProtobufCAllocator pa = { .alloc = otlp_budget_alloc, .free = otlp_budget_free, .allocator_data = &b };
    PbRequest *req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(&pa, len, pb);
    if (!req)
        return b.nomem ? OTLP_NO_MEMORY : b.exhausted ? OTLP_TOO_LARGE : OTLP_MALFORMED;

    struct conv c = { .o = { .max = json_max } };
    bool first = true, rfirst = true;
    ow_put(&c.o, "{", 1);
    if (req->n_resource_spans) {
        ow_key(&c.o, &first, "resourceSpans");
        ow_put(&c.o, "[", 1);
        for (size_t i = 0; i < req->n_resource_spans; i++)
            resource_spans(&c, &rfirst, req->resource_spans[i]);
        ow_put(&c.o, "]", 1);
    }
    ow_put(&c.o, "}", 1);
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
