/*
 * ingest_validate_core.h
 *		Validation of the plugins' ingest bodies, without PostgreSQL.
 *
 * Plain C and json-c, so that the fuzz target (tests/fuzz/
 * fuzz_ingest_validate.c) runs in its own process the very code the
 * extension runs; ingest_validate.c is the SQL wrapper, which turns the
 * outcome into the PTnnn answer.  The code is in the ingest_validate_*.c
 * files, one concern each: the entry points (_core.c), the rules of each
 * kind (_schema.c), the checks they are written with (_check.c), the
 * patterns' C fast path (_pattern.c), UTF-8 (_utf8.c) and growing strings
 * (_buf.c).
 *
 * What the core needs from PostgreSQL comes through two hooks the caller
 * gives (IngestHooks): the regular expressions without a C fast path, and
 * PostgreSQL's JSON lexer, which has the last word on what is JSON.  The
 * backend passes textregexeq and pg_parse_json; the fuzz target passes POSIX
 * <regex.h> (the patterns are EREs, with the same meaning in both engines)
 * and pg_parse_json from the frontend libpgcommon.a.  The rest is written
 * out, small and exact: the UTF-8 check is PostgreSQL's definition of valid
 * UTF-8, characters are counted as in a UTF8 database, and JSON strings are
 * escaped as escape_json() does.
 *
 * Memory: json-c's and the core's own, all malloc'd and reachable from the
 * IngestValidation until ingest_validation_free(), so a caller whose hooks
 * can raise (ereport) releases everything from a PG_CATCH.
 */
#ifndef LATTICE_INGEST_VALIDATE_CORE_H
#define LATTICE_INGEST_VALIDATE_CORE_H

#include <stdbool.h>
#include <stddef.h>

#include "ingest_validate_buf.h"

#define INGEST_MAX_BODY		(2 * 1024 * 1024)
#define INGEST_MAX_DEPTH	32
#define INGEST_MAX_PROBLEMS 50

typedef struct IngestHooks
{
	/*
	 * Whether s matches the ERE pattern (anchored with ^ and $).  s holds
	 * len bytes of valid UTF-8 without NUL, and s[len] is NUL.
	 */
	bool (*regex_match)(const char *s, int len, const char *pattern);

	/*
	 * PostgreSQL's JSON lexer over the whole body (already accepted by
	 * json-c, so nested at most INGEST_MAX_DEPTH deep): NULL when it accepts
	 * it, else why not.  The core copies the text at once.
	 */
	const char *(*json_error)(const char *data, size_t len);
} IngestHooks;

typedef enum IngestOutcome
{
	INGEST_OK = 0,
	INGEST_EMPTY,		 /* 400 validation_failed: no body */
	INGEST_TOO_LARGE,	 /* 413 too_large */
	INGEST_INVALID_JSON, /* 400 invalid_json */
	INGEST_INVALID,		 /* 400 validation_failed: problems listed */
	INGEST_UNKNOWN_KIND, /* the caller's mistake, not the body's */
	INGEST_OUT_OF_MEMORY
} IngestOutcome;

typedef struct IngestValidation
{
	/* the answer, when outcome is neither INGEST_OK nor INGEST_UNKNOWN_KIND */
	IngestOutcome outcome;
	int status;		   /* HTTP status: 400 or 413 */
	const char *code;  /* "validation_failed", "invalid_json", ... */
	char message[64];  /* the answer's message */
	IngestBuf details; /* the answer's details: JSON text */
	int nproblems;	   /* all problems, listed or not */

	/* the work: the caller leaves these alone */
	const IngestHooks *hooks;
	struct json_object *root;
	IngestBuf path;		/* JSON path of the value being checked */
	IngestBuf problems; /* JSON array text, without the brackets */
	IngestBuf msg;		/* a problem's message, being written */
} IngestValidation;

extern void ingest_validation_init(IngestValidation *v, const IngestHooks *hooks);

/*
 * Validates body (len bytes; NULL when absent) as a document of kind:
 * metadata, traces, errors, error (one browser error), breadcrumbs or
 * metrics (legacy).  Fills v and returns v->outcome.
 */
extern IngestOutcome ingest_validate(IngestValidation *v, const char *kind, const char *body,
									 size_t len);

/* Releases everything v holds; v can be validated with again after init. */
extern void ingest_validation_free(IngestValidation *v);

#endif /* LATTICE_INGEST_VALIDATE_CORE_H */
