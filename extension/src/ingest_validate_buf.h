/*
 * ingest_validate_buf.h
 *		A growing string (malloc'd) for ingest validation.
 */
#ifndef LATTICE_INGEST_VALIDATE_BUF_H
#define LATTICE_INGEST_VALIDATE_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

/* A growing string; oom is set (and appends stop) when malloc fails. */
typedef struct IngestBuf
{
	char *data;
	size_t len;
	size_t cap;
	bool oom;
} IngestBuf;

/* Appends; data stays NUL-terminated. */
extern void ingest_buf_str(IngestBuf *b, const char *s);
extern void ingest_buf_char(IngestBuf *b, char ch);
extern void ingest_buf_vprintf(IngestBuf *b, const char *fmt, va_list args)
	__attribute__((format(printf, 2, 0)));
extern void ingest_buf_printf(IngestBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A JSON string, escaped as PostgreSQL's escape_json() does (up to a NUL). */
extern void ingest_buf_json_string(IngestBuf *b, const char *s);

/* Cuts back to len bytes (nothing when longer); reset cuts to none. */
extern void ingest_buf_truncate(IngestBuf *b, size_t len);
extern void ingest_buf_reset(IngestBuf *b);

/* Releases the memory; b is empty again. */
extern void ingest_buf_free(IngestBuf *b);

#endif /* LATTICE_INGEST_VALIDATE_BUF_H */
