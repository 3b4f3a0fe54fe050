/*
 * ingest_validate_pattern.h
 *		The patterns ingest bodies are checked with, and their C fast path.
 *
 * Each is an ERE anchored with ^ and $, with the same meaning in PostgreSQL's
 * regex engine and in POSIX <regex.h>.  The ones with a C fast path are
 * arrays, recognised by address; the others are plain strings for the
 * caller's regex hook (IngestHooks.regex_match).
 */
#ifndef LATTICE_INGEST_VALIDATE_PATTERN_H
#define LATTICE_INGEST_VALIDATE_PATTERN_H

#include <stdbool.h>

/* With a C fast path */
extern const char ingest_re_service_id[];
extern const char ingest_re_service_name[];
extern const char ingest_re_environment[];
extern const char ingest_re_date_time[];
extern const char ingest_re_http_method[];
extern const char ingest_re_absolute_path[];

/* Without */
#define INGEST_RE_SEMVER \
	"^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)" \
	"(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?" \
	"(\\+([0-9a-zA-Z-]+(\\.[0-9a-zA-Z-]+)*))?$"
#define INGEST_RE_URI	  "^[A-Za-z][A-Za-z0-9+.-]*:[^[:space:]]+$"
#define INGEST_RE_URI_REF "^[^[:space:]]*$"

/* The patterns with a C fast path, NULL-terminated, and that fast path. */
extern const char *const ingest_fast_patterns[];
extern bool ingest_fast_match(const char *s, int len, const char *pattern, bool *handled);

#endif /* LATTICE_INGEST_VALIDATE_PATTERN_H */
