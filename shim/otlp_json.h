/*
 * OTLP traces without HTTP: an ExportTraceServiceRequest (protobuf) to its
 * OTLP/JSON text (otlp_json.c, with otlp_guard.c and otlp_writer.c), and the
 * answers to protobuf: the ExportTraceServiceResponse of a JSON answer, the
 * google.rpc.Status of an error (otlp_answer.c).  protobuf-c and json-c
 * only, no civetweb: the shim's otlp.c and tests/fuzz/fuzz_otlp_decode.c
 * share it.
 */
#ifndef LATTICE_OTLP_JSON_H
#define LATTICE_OTLP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OTLP_ANY_DEPTH_MAX 8      /* AnyValue nesting; deeper: the span holding it is rejected */
#define OTLP_WIRE_DEPTH_MAX 64    /* message nesting on the wire; deeper: the request is refused */
#define OTLP_DECODE_MEM_FACTOR 16 /* protobuf-c may hold this many bytes per input byte, plus 1 MiB */

enum otlp_decode_status {
    OTLP_DECODED,
    OTLP_MALFORMED, /* not an ExportTraceServiceRequest */
    OTLP_TOO_DEEP,  /* messages nested deeper than OTLP_WIRE_DEPTH_MAX */
    OTLP_TOO_LARGE, /* the decoded message or the JSON over its bound */
    OTLP_NO_MEMORY,
};

struct otlp_decoded {
    char *json; /* malloc'd, NUL-terminated; NULL unless OTLP_DECODED */
    size_t len;
    long spans;          /* spans written */
    long rejected_spans; /* spans dropped: rejected_utf8 + rejected_depth */
    long rejected_utf8;  /* a string of theirs (or of their resource or scope) is not UTF-8 */
    long rejected_depth; /* an attribute value nested deeper than OTLP_ANY_DEPTH_MAX */
    char message[192];   /* why, for partial success; "" when nothing was rejected */
};

/* Decodes pb (len bytes) into out; the JSON is at most json_max bytes
   (OTLP_TOO_LARGE beyond).  On any status but OTLP_DECODED out->json is
   NULL and nothing is left to free. */
enum otlp_decode_status otlp_traces_to_json(const uint8_t *pb, size_t len, size_t json_max, struct otlp_decoded *out);

/* The gRPC status code an HTTP status stands for (docs/shim.md has the table). */
int otlp_grpc_code(int http_status);

/* A google.rpc.Status {code, "<code>: <message>"}, malloc'd (*len bytes, may
   be 0); NULL when out of memory. */
uint8_t *otlp_status_pack(int http_status, const char *code, const char *message, size_t *len);

/* The ExportTraceServiceResponse of a function's JSON answer, {} or
   {"partialSuccess":{"rejectedSpans":"<n>"|n,"errorMessage":"..."}}, or
   NULL (= {}); malloc'd (*len bytes, may be 0).  *shape_ok is false when
   json is not of that shape (what could be read is packed); NULL when out of
   memory. */
uint8_t *otlp_response_pack(const char *json, size_t *len, bool *shape_ok);

#endif
