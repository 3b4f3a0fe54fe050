/*
 * Bounds for protobuf-c (otlp_guard.c): the nesting of a message on the wire,
 * checked before decoding, and an allocator that keeps the decoded message's
 * live bytes under a budget.
 */
#ifndef LATTICE_OTLP_GUARD_H
#define LATTICE_OTLP_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "otlp_json.h"

/* OTLP_DECODED when the message of type desc in p (len bytes) nests at most
   OTLP_WIRE_DEPTH_MAX deep, OTLP_TOO_DEEP when deeper, OTLP_MALFORMED when its
   wire format is broken on the way. */
enum otlp_decode_status otlp_wire_depth_ok(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len);

/* ProtobufCAllocator.alloc and .free, with a struct otlp_budget as
   allocator_data: an allocation past max live bytes fails (exhausted), as
   does one malloc refuses (nomem). */
struct otlp_budget {
    size_t used, max;
    bool exhausted, nomem;
};
void *otlp_budget_alloc(void *data, size_t size);
void otlp_budget_free(void *data, void *ptr);

#endif
