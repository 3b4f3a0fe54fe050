/*
 * A bounded, growing JSON text in the OTLP/JSON encodings (otlp_writer.c),
 * for otlp_json.c.  Every append stops once the text is over max bytes
 * (over), out of memory (nomem) or faulty (fault): a string that is not
 * UTF-8, or the caller's own reason.  The caller clears a fault and cuts the
 * faulty element off.  Object members take a `first` flag that places the
 * commas.
 */
#ifndef LATTICE_OTLP_WRITER_H
#define LATTICE_OTLP_WRITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What is wrong with the element being written: one of its strings is not
   UTF-8 (the writer's), or a value nested too deep (the caller's). */
enum ow_fault { OW_FAULT_NONE, OW_FAULT_UTF8, OW_FAULT_DEPTH };

struct ow_out {
    char *buf;
    size_t len, cap, max;
    bool over, nomem;
    enum ow_fault fault; /* of the element being written */
};

/* Appends n bytes, or s. */
void ow_put(struct ow_out *o, const char *s, size_t n);
void ow_puts(struct ow_out *o, const char *s);

/* Sets the fault unless one is set. */
void ow_fault(struct ow_out *o, enum ow_fault f);

/* "name": after a comma unless it is the object's first */
void ow_key(struct ow_out *o, bool *first, const char *name);

/* A JSON string ("" for NULL); OW_FAULT_UTF8 when s is not UTF-8. */
void ow_str(struct ow_out *o, const char *s);

/* Members: "name":value.  opt_ ones are left out when empty or 0. */
void ow_key_str(struct ow_out *o, bool *first, const char *name, const char *s);
void ow_opt_str(struct ow_out *o, bool *first, const char *name, const char *s);
void ow_opt_uint(struct ow_out *o, bool *first, const char *name, uint32_t v);
void ow_key_int(struct ow_out *o, bool *first, const char *name, int v);
void ow_key_u64(struct ow_out *o, bool *first, const char *name, uint64_t v); /* as a string */
void ow_opt_hex(struct ow_out *o, bool *first, const char *name, const uint8_t *data, size_t len);

/* Values: bytes as a base64 string; a double, NaN and infinities as strings. */
void ow_base64(struct ow_out *o, const uint8_t *data, size_t len);
void ow_number(struct ow_out *o, double d);

#endif
