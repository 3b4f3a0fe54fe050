/*
 * The answers of an OTLP/HTTP protobuf export, packed with protobuf-c: an
 * ExportTraceServiceResponse (partial_success from the function's JSON
 * answer) or, for an error, a google.rpc.Status whose code is the gRPC code
 * the HTTP status stands for.
 */
#include "otlp_json.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/rpc/status.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

/* gRPC codes (google.rpc.Code) */
enum {
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_NOT_FOUND = 5,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_ABORTED = 10,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
    GRPC_UNAUTHENTICATED = 16,
};

int otlp_grpc_code(int http_status)
{
    switch (http_status) {
    case 401: return GRPC_UNAUTHENTICATED;
    case 402: /* the plan does not allow it: a permission, not a bad request */
    case 403: return GRPC_PERMISSION_DENIED;
    case 404: return GRPC_NOT_FOUND;
    case 405: return GRPC_UNIMPLEMENTED;
    case 408: return GRPC_DEADLINE_EXCEEDED;
    case 409: return GRPC_ABORTED;
    case 413: /* gRPC's own code for a message over the receiver's limit */
    case 429: return GRPC_RESOURCE_EXHAUSTED;
    case 501: return GRPC_UNIMPLEMENTED;
    case 502:
    case 503: return GRPC_UNAVAILABLE;
    case 504: return GRPC_DEADLINE_EXCEEDED;
    default: return http_status >= 500 ? GRPC_INTERNAL : GRPC_INVALID_ARGUMENT;
    }
}

/* A packed message in a malloc'd buffer of at least one byte (an empty
   message packs to nothing). */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (buf)
        protobuf_c_message_pack(m, buf);
    return buf;
}

uint8_t *otlp_status_pack(int http_status, const char *code, const char *message, size_t *len)
{
    size_t n = strlen(code ? code : "error") + strlen(message ? message : "") + 3;
    char *text = malloc(n);
    if (!text)
        return NULL;
    snprintf(text, n, "%s: %s", code ? code : "error", message ? message : "");
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    st.code = otlp_grpc_code(http_status);
    st.message = text;
    uint8_t *out = pack(&st.base, len);
    free(text);
    return out;
}

/* rejectedSpans: an int64, as a decimal string (OTLP/JSON) or a number */
static bool int64_of(json_object *v, int64_t *out)
{
    if (json_object_is_type(v, json_type_int)) {
        *out = json_object_get_int64(v);
        return true;
    }
    if (!json_object_is_type(v, json_type_string))
        return false;
    const char *s = json_object_get_string(v);
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return false;
    *out = n;
    return true;
}

uint8_t *otlp_response_pack(const char *json, size_t *len, bool *shape_ok)
{
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    Opentelemetry__Proto__Collector__Trace__V1__ExportTracePartialSuccess partial =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    json_object *root = json ? json_tokener_parse(json) : NULL;
    json_object *ps = NULL, *v;
    *shape_ok = !json || (root && json_object_is_type(root, json_type_object)); /* no body: {} */
    if (*shape_ok && json_object_object_get_ex(root, "partialSuccess", &ps)) {
        if (!json_object_is_type(ps, json_type_object))
            *shape_ok = false;
        else {
            if (json_object_object_get_ex(ps, "rejectedSpans", &v) && !int64_of(v, &partial.rejected_spans))
                *shape_ok = false;
            if (json_object_object_get_ex(ps, "errorMessage", &v)) {
                if (json_object_is_type(v, json_type_string))
                    partial.error_message = (char *) json_object_get_string(v);
                else
                    *shape_ok = false;
            }
            resp.partial_success = &partial;
        }
    }
    uint8_t *out = pack(&resp.base, len);
    json_object_put(root);
    return out;
}
