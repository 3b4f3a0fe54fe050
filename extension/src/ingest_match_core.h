/*
 * ingest_match_core.h
 *		Raw request paths against route templates, without PostgreSQL.
 *
 * Plain C so that the fuzz target (tests/fuzz/) calls exactly the code the
 * extension runs; ingest_match.c is the SQL wrapper.
 */
#ifndef LATTICE_INGEST_MATCH_CORE_H
#define LATTICE_INGEST_MATCH_CORE_H

#include <stdbool.h>

#define INGEST_MATCH_MAX_SEGMENTS 64

typedef struct IngestSegments
{
	int n;
	const char *s[INGEST_MATCH_MAX_SEGMENTS];
	int len[INGEST_MATCH_MAX_SEGMENTS];
} IngestSegments;

/* Splits a path on '/', skipping empty segments; false when too many. */
extern bool ingest_split_path(const char *p, int plen, IngestSegments *out);

/*
 * The 1-based position among templates ("METHOD /path"; NULL ones skipped)
 * that the raw path belongs to, or 0 when none fits or a router-relative
 * match is ambiguous.
 */
extern int ingest_match_templates(const char *const *templates, const int *template_lens, int n,
								  const char *method, int method_len, const IngestSegments *raw);

/* An id-like segment: digits, a UUID, long hex, or a long token with digits. */
extern bool ingest_id_like(const char *s, int len);

#endif /* LATTICE_INGEST_MATCH_CORE_H */
