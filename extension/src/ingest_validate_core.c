/*
 * ingest_validate_core.c
 *		Validation of the plugins' ingest bodies, before anything is written:
 *		the rules of ingest_validate.c without PostgreSQL, so that the fuzz
 *		target (tests/fuzz/fuzz_ingest_validate.c) runs this very code.
 *
 * Bodies are parsed with json-c (strict mode, UTF-8 validated, bounded depth,
 * size capped before parsing, trailing bytes refused), then by PostgreSQL's
 * lexer (a hook), and checked by the rules of their kind
 * (ingest_validate_schema.c).  Every problem is collected with its JSON path;
 * the outcome says how the request is answered (ingest_validate_core.h).
 */
#include "ingest_validate_core.h"

#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "ingest_validate_check.h"
#include "ingest_validate_schema.h"

/* Sets the answer: status, code, message and details. */
static IngestOutcome
answer(Checker *c, IngestOutcome outcome, int status, const char *code, const char *message)
{
	c->outcome = outcome;
	c->status = status;
	c->code = code;
	snprintf(c->message, sizeof(c->message), "%s", message);
	return outcome;
}

/* 400 invalid_json with one problem at "body": "is not valid JSON: <why>". */
static IngestOutcome
invalid_json(Checker *c)
{
	ingest_buf_reset(&c->details);
	ingest_buf_str(&c->details, "[{\"path\":\"body\",\"message\":");
	ingest_buf_json_string(&c->details, c->msg.data ? c->msg.data : "");
	ingest_buf_str(&c->details, "}]");
	return answer(c, INGEST_INVALID_JSON, 400, "invalid_json", "the request body is not valid JSON");
}

/*
 * Parses body with json-c under Lattice's limits, then has PostgreSQL's
 * lexer (what the body will be cast with) confirm it.  Sets c->root, or
 * answers (400, 413) when the body is not one acceptable JSON document.
 */
static bool
parse_body(Checker *c, const char *data, size_t len)
{
	struct json_tokener *tok;
	enum json_tokener_error jerr;
	size_t end;
	const char *why;

	if (data == NULL || len == 0)
	{
		ingest_buf_str(&c->details, "[{\"path\":\"body\",\"message\":\"is required\"}]");
		answer(c, INGEST_EMPTY, 400, "validation_failed", "the request body is empty");
		return false;
	}
	if (len > INGEST_MAX_BODY)
	{
		ingest_buf_printf(&c->details, "{\"max_bytes\":%d}", INGEST_MAX_BODY);
		answer(c, INGEST_TOO_LARGE, 413, "too_large", "the request body is too large");
		return false;
	}

	tok = json_tokener_new_ex(INGEST_MAX_DEPTH);
	if (tok == NULL)
	{
		c->outcome = INGEST_OUT_OF_MEMORY;
		return false;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	c->root = json_tokener_parse_ex(tok, data, (int) len);
	jerr = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);

	if (jerr == json_tokener_continue)
		jerr = json_tokener_error_parse_eof;
	if (jerr != json_tokener_success || c->root == NULL || end != len)
	{
		if (c->root)
			json_object_put(c->root);
		c->root = NULL;
		if (jerr == json_tokener_error_depth)
			why = "nesting is deeper than 32 levels";
		else if (jerr == json_tokener_error_parse_utf8_string)
			why = "is not valid UTF-8";
		else if (jerr != json_tokener_success)
			why = json_tokener_error_desc(jerr);
		else
			why = "has bytes after the JSON document";
		ingest_buf_reset(&c->msg);
		ingest_buf_printf(&c->msg, "is not valid JSON: %s (at byte %zu)", why, end);
		invalid_json(c);
		return false;
	}

	/*
	 * json-c tolerates some non-JSON even in strict mode (single quotes) and
	 * replaces lone surrogates; PostgreSQL's lexer is RFC 8259 to the letter
	 * and is what the body will be cast with, so it has the last word.  It
	 * runs second: json-c has already bounded the depth it recurses to.
	 */
	why = c->hooks->json_error(data, len);
	if (why != NULL)
	{
		json_object_put(c->root);
		c->root = NULL;
		ingest_buf_reset(&c->msg);
		ingest_buf_printf(&c->msg, "is not valid JSON: %s", why);
		invalid_json(c);
		return false;
	}
	return true;
}

static bool
any_oom(const Checker *c)
{
	return c->details.oom || c->path.oom || c->problems.oom || c->msg.oom;
}

void
ingest_validation_init(IngestValidation *v, const IngestHooks *hooks)
{
	memset(v, 0, sizeof(*v));
	v->hooks = hooks;
}

IngestOutcome
ingest_validate(IngestValidation *v, const char *kind, const char *body, size_t len)
{
	Checker *c = v;
	bool known;

	if (!parse_body(c, body, len))
		return any_oom(c) ? (c->outcome = INGEST_OUT_OF_MEMORY) : c->outcome;

	known = ingest_check_kind(c, kind, c->root);
	/* json-c allocates with malloc: the tree goes as soon as it is checked */
	json_object_put(c->root);
	c->root = NULL;

	if (any_oom(c))
		return c->outcome = INGEST_OUT_OF_MEMORY;
	if (!known)
		return c->outcome = INGEST_UNKNOWN_KIND;
	if (c->nproblems == 0)
		return c->outcome = INGEST_OK;

	ingest_buf_printf(&c->details, "[%s", c->problems.data);
	if (c->nproblems > INGEST_MAX_PROBLEMS)
		ingest_buf_printf(&c->details,
						  ",{\"path\":\"body\",\"message\":\"%d more problems not listed\"}",
						  c->nproblems - INGEST_MAX_PROBLEMS);
	ingest_buf_char(&c->details, ']');
	if (any_oom(c))
		return c->outcome = INGEST_OUT_OF_MEMORY;
	answer(c, INGEST_INVALID, 400, "validation_failed", "");
	snprintf(c->message, sizeof(c->message), "the request body is invalid (%d problem%s)", c->nproblems,
			 c->nproblems == 1 ? "" : "s");
	return c->outcome;
}

void
ingest_validation_free(IngestValidation *v)
{
	if (v->root)
		json_object_put(v->root);
	v->root = NULL;
	ingest_buf_free(&v->details);
	ingest_buf_free(&v->path);
	ingest_buf_free(&v->problems);
	ingest_buf_free(&v->msg);
}
