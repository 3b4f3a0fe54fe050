/*
 * Bounds on what protobuf-c is given to decode: the wire's nesting and the
 * memory of the decoded message.
 *
 * protobuf-c's unpack recurses once per nested message and has no limit: a
 * few MB of nested AnyValues overflow the thread's stack.  otlp_wire_depth_ok
 * walks the wire format first, iteratively (tags and lengths only; which
 * length-delimited field is a message comes from the generated descriptors)
 * and refuses nesting deeper than OTLP_WIRE_DEPTH_MAX.  Decoding is left to
 * protobuf-c.
 */
#include "otlp_guard.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* ---- the wire's nesting ---- */

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

enum otlp_decode_status otlp_wire_depth_ok(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len)
{
    struct {
        const ProtobufCMessageDescriptor *desc;
        size_t end;
    } st[OTLP_WIRE_DEPTH_MAX];
    int top = 0;
    size_t pos = 0;
    st[0].desc = desc;
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
            const ProtobufCFieldDescriptor *f = tag >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(
                                                                             st[top].desc, (unsigned) (tag >> 3))
                                                                       : NULL;
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
        default: /* groups (3, 4) and the undefined 6, 7: protobuf-c refuses them too */ return OTLP_MALFORMED;
        }
    }
}

/* ---- protobuf-c's memory: live bytes bounded, each block with its size ---- */

#define BLOCK_HEAD alignof(max_align_t)

void *otlp_budget_alloc(void *data, size_t size)
{
    struct otlp_budget *b = data;
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

void otlp_budget_free(void *data, void *ptr)
{
    struct otlp_budget *b = data;
    if (!ptr)
        return;
    unsigned char *p = (unsigned char *) ptr - BLOCK_HEAD;
    size_t size;
    memcpy(&size, p, sizeof(size));
    b->used -= size;
    free(p);
}
