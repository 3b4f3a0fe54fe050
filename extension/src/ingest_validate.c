/*
 * ingest_validate.c
 *		Validation of the plugins' ingest bodies, before anything is written.
 *
 * Bodies are parsed with json-c (strict mode, UTF-8 validated, bounded depth,
 * size capped before parsing, trailing bytes refused) and checked against
 * the rules of their kind (metadata: the JSON Schema of
 * tests/fixtures/schema-v1.json) plus Lattice's limits on array lengths,
 * string lengths and number ranges.  Every problem is collected with its JSON
 * path; if there is any, the request is refused as a whole with one PT400
 * whose details list them all, so nothing is written.
 *
 * The rules are in the ingest_validate_*.c files (no PostgreSQL, fuzzed as
 * they are; ingest_validate_core.h); this file is their SQL face and gives
 * the core PostgreSQL's regex engine and JSON lexer.  The periodic re-send
 * of an unchanged snapshot is recognised without this validation, by its
 * digest (ingest_digest.c).
 */
#include "common.h"

#include "ingest_validate_core.h"

#include "catalog/pg_collation.h"
#include "common/jsonapi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

/* The patterns without a C fast path, with PostgreSQL's regex engine. */
static bool
pg_regex_match(const char *s, int len, const char *pattern)
{
	text *t = cstring_to_text_with_len(s, len);
	bool r;

	r = DatumGetBool(DirectFunctionCall2Coll(textregexeq, C_COLLATION_OID, PointerGetDatum(t),
											 CStringGetTextDatum(pattern)));
	pfree(t);
	return r;
}

/* PostgreSQL's JSON lexer: NULL when it accepts the body, else why not. */
static const char *
pg_json_error(const char *data, size_t len)
{
	JsonLexContext *lex = makeJsonLexContextCstringLen((char *) data, (int) len, PG_UTF8, true);
	JsonParseErrorType perr = pg_parse_json(lex, &nullSemAction);

	return perr == JSON_SUCCESS ? NULL : json_errdetail(perr, lex);
}

static const IngestHooks pg_hooks = {
	.regex_match = pg_regex_match,
	.json_error = pg_json_error,
};

/*
 * lattice.ingest_check(kind text, body text) -> void: refuses (PT400, PT413)
 * a body that is not a valid `kind` document: metadata, traces, errors,
 * error (one browser error), breadcrumbs or metrics (legacy).
 */
PG_FUNCTION_INFO_V1(lattice_ingest_check);
Datum
lattice_ingest_check(PG_FUNCTION_ARGS)
{
	char *kind;
	text *body;
	IngestValidation *v;
	int status;
	char *code;
	char *message;
	char *details;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("lattice.ingest_check: kind must not be null")));
	kind = text_to_cstring(PG_GETARG_TEXT_PP(0));
	body = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);

	/* the core's memory is malloc'd: released on every way out */
	v = palloc(sizeof(IngestValidation));
	ingest_validation_init(v, &pg_hooks);
	PG_TRY();
	{
		ingest_validate(v, kind, body ? VARDATA_ANY(body) : NULL, body ? VARSIZE_ANY_EXHDR(body) : 0);
	}
	PG_CATCH();
	{
		ingest_validation_free(v);
		PG_RE_THROW();
	}
	PG_END_TRY();

	switch (v->outcome)
	{
		case INGEST_OK:
			ingest_validation_free(v);
			PG_RETURN_VOID();
		case INGEST_UNKNOWN_KIND:
			ingest_validation_free(v);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("lattice.ingest_check: unknown kind \"%s\"", kind)));
			break;
		case INGEST_OUT_OF_MEMORY:
			ingest_validation_free(v);
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY), errmsg("lattice.ingest_check: out of memory")));
			break;
		default:
			break;
	}
	status = v->status;
	code = pstrdup(v->code);
	message = pstrdup(v->message);
	details = pstrdup(v->details.data);
	ingest_validation_free(v);
	lattice_raise_http(status, code, message, details, NULL);
}
