/*
 * libFuzzer target: ingest validation in process, with coverage feedback.
 * It calls the core the extension runs (extension/src/ingest_validate_*.c,
 * entry points in ingest_validate_core.h) with the hooks a backend would
 * give it, taken from outside the backend:
 * PostgreSQL's JSON lexer from the frontend libpgcommon.a (the same
 * pg_parse_json; only json_errdetail() is backend-only, so a refusal's text
 * differs) and POSIX <regex.h> for the EREs without a C fast path.
 *
 * Input: one byte choosing the kind (as fuzz_ingest_check.c), then the body.
 * Besides ASan and UBSan, each run checks:
 *   - the outcome is a clean answer (never unknown kind or out of memory),
 *     with the status, code and message that go with it;
 *   - for a body PostgreSQL would take as text (valid UTF-8, no NUL), the
 *     details are one JSON document of the right shape: a 400 lists
 *     min(problems, 50) {path, message} objects, plus one "more problems"
 *     entry beyond that;
 *   - the core's UTF-8 check and character count agree with PostgreSQL's
 *     (pg_encoding_verifymbstr, pg_encoding_mblen) on the body;
 *   - the C fast paths agree with the EREs they stand for, on the body.
 */
#include "postgres_fe.h"

#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "ingest_validate_core.h"
#include "ingest_validate_pattern.h"
#include "ingest_validate_utf8.h"

static const char *const kinds[] = {"metadata", "traces", "errors", "error", "breadcrumbs", "metrics"};

#define MAX_PATTERNS 16
static struct
{
	const char *pattern;
	regex_t re;
} compiled[MAX_PATTERNS];
static int ncompiled;

static void
fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_ingest_validate: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

/* The ERE, compiled once (C locale: bytes, as PostgreSQL's C collation). */
static const regex_t *
compile(const char *pattern)
{
	char err[256];
	int rc;

	for (int i = 0; i < ncompiled; i++)
		if (strcmp(compiled[i].pattern, pattern) == 0)
			return &compiled[i].re;
	if (ncompiled == MAX_PATTERNS)
		fail("too many patterns", pattern);
	rc = regcomp(&compiled[ncompiled].re, pattern, REG_EXTENDED | REG_NOSUB);
	if (rc != 0)
	{
		regerror(rc, &compiled[ncompiled].re, err, sizeof(err));
		fail(err, pattern);
	}
	compiled[ncompiled].pattern = pattern;
	return &compiled[ncompiled++].re;
}

static bool
posix_regex_match(const char *s, int len, const char *pattern)
{
	if ((int) strlen(s) != len)
		fail("the regex hook got a string with a NUL or without its terminator", pattern);
	return regexec(compile(pattern), s, 0, NULL, 0) == 0;
}

static const char *
frontend_json_error(const char *data, size_t len)
{
	static char why[64];
	JsonLexContext *lex = makeJsonLexContextCstringLen((char *) data, (int) len, PG_UTF8, true);
	JsonParseErrorType perr = pg_parse_json(lex, &nullSemAction);

	pfree(lex->strval->data);
	pfree(lex->strval);
	pfree(lex);
	if (perr == JSON_SUCCESS)
		return NULL;
	snprintf(why, sizeof(why), "PostgreSQL's lexer refuses it (error %d)", (int) perr);
	return why;
}

static const IngestHooks hooks = {
	.regex_match = posix_regex_match,
	.json_error = frontend_json_error,
};

static struct json_object *
parse_json(const char *text)
{
	struct json_tokener *tok = json_tokener_new();
	struct json_object *o;

	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, text, (int) strlen(text));
	if (json_tokener_get_error(tok) != json_tokener_success ||
		json_tokener_get_parse_end(tok) != strlen(text))
	{
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

/* A {path, message} object with nothing else. */
static bool
is_problem(struct json_object *p)
{
	struct json_object *path;
	struct json_object *msg;

	return json_object_get_type(p) == json_type_object && json_object_object_length(p) == 2 &&
		json_object_object_get_ex(p, "path", &path) && json_object_get_type(path) == json_type_string &&
		json_object_object_get_ex(p, "message", &msg) && json_object_get_type(msg) == json_type_string &&
		json_object_get_string_len(path) > 0 && json_object_get_string_len(msg) > 0;
}

static void
check_answer(const IngestValidation *v, bool text_ok)
{
	struct json_object *d;
	char expect[64];
	size_t n;

	switch (v->outcome)
	{
		case INGEST_OK:
			if (v->status != 0 || v->details.len != 0 || v->nproblems != 0)
				fail("ok with an answer", v->details.data);
			return;
		case INGEST_EMPTY:
			if (v->status != 400 || strcmp(v->code, "validation_failed") != 0)
				fail("empty body answered wrongly", v->code);
			break;
		case INGEST_TOO_LARGE:
			if (v->status != 413 || strcmp(v->code, "too_large") != 0)
				fail("large body answered wrongly", v->code);
			break;
		case INGEST_INVALID_JSON:
			if (v->status != 400 || strcmp(v->code, "invalid_json") != 0)
				fail("invalid JSON answered wrongly", v->code);
			break;
		case INGEST_INVALID:
			snprintf(expect, sizeof(expect), "the request body is invalid (%d problem%s)", v->nproblems,
					 v->nproblems == 1 ? "" : "s");
			if (v->status != 400 || strcmp(v->code, "validation_failed") != 0 || v->nproblems < 1 ||
				strcmp(v->message, expect) != 0)
				fail("invalid body answered wrongly", v->message);
			break;
		case INGEST_UNKNOWN_KIND:
			fail("a known kind taken for unknown", NULL);
			break;
		case INGEST_OUT_OF_MEMORY:
			fail("out of memory", NULL);
			break;
	}
	if (!text_ok)
		return;
	/* a body PostgreSQL takes as text: the details must be JSON */
	d = parse_json(v->details.data);
	if (d == NULL)
		fail("details are not JSON", v->details.data);
	if (v->outcome == INGEST_TOO_LARGE)
	{
		if (json_object_get_type(d) != json_type_object)
			fail("413 details are not an object", v->details.data);
		json_object_put(d);
		return;
	}
	if (json_object_get_type(d) != json_type_array)
		fail("details are not an array", v->details.data);
	n = json_object_array_length(d);
	for (size_t i = 0; i < n; i++)
		if (!is_problem(json_object_array_get_idx(d, i)))
			fail("a problem is not {path, message}", v->details.data);
	if (v->outcome == INGEST_INVALID ?
			n != (size_t) (v->nproblems > INGEST_MAX_PROBLEMS ? INGEST_MAX_PROBLEMS + 1 : v->nproblems) :
			n != 1)
		fail("details list the wrong number of problems", v->details.data);
	json_object_put(d);
}

/* The core's UTF-8 check against PostgreSQL's, on NUL-free bytes. */
static bool
check_utf8(const char *s, int len)
{
	int chars = ingest_utf8_chars(s, len);
	bool pg_ok = pg_encoding_verifymbstr(PG_UTF8, s, len) == len;
	int pg_chars = 0;

	if ((chars >= 0) != pg_ok)
		fail(pg_ok ? "valid UTF-8 refused" : "invalid UTF-8 accepted", NULL);
	if (!pg_ok)
		return false;
	for (int i = 0; i < len; i += pg_encoding_mblen(PG_UTF8, s + i))
		pg_chars++;
	if (chars != pg_chars)
		fail("UTF-8 characters miscounted", NULL);
	return true;
}

/* The fast paths against the EREs they replace. */
static void
check_fast_paths(const char *s, int len)
{
	for (int i = 0; ingest_fast_patterns[i]; i++)
	{
		const char *p = ingest_fast_patterns[i];
		bool handled;
		bool fast = ingest_fast_match(s, len, p, &handled);

		if (!handled)
			fail("a fast pattern not handled", p);
		if (fast != (regexec(compile(p), s, 0, NULL, 0) == 0))
			fail(fast ? "the fast path accepts what the ERE refuses" :
						"the fast path refuses what the ERE accepts",
				 p);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	IngestValidation v;
	char *body;
	int len;
	bool text_ok;

	if (size < 1 || size > INGEST_MAX_BODY + 2)
		return 0;
	len = (int) size - 1;
	/*
	 * The core reads libFuzzer's exact-size buffer (ASan sees any read past
	 * the end); the cross-checks read a terminated copy.
	 */
	body = malloc(len + 1);
	if (body == NULL)
		return 0;
	memcpy(body, data + 1, len);
	body[len] = '\0';

	ingest_validation_init(&v, &hooks);
	ingest_validate(&v, kinds[data[0] % 6], (const char *) data + 1, (size_t) len);

	text_ok = memchr(body, '\0', len) == NULL && check_utf8(body, len);
	check_answer(&v, text_ok);
	if (text_ok)
		check_fast_paths(body, len);

	ingest_validation_free(&v);
	free(body);
	return 0;
}
