/*
 * ingest_match.c
 *		Matching the raw request paths of traces to a service's route templates.
 *
 * Traces carry Express's req.path: the raw path (/users/42), and for routes
 * of a mounted router the path relative to the mount point (/orders/o1 is
 * seen as /o1).  A raw path is matched against "METHOD /template" strings:
 * first as a full path (the most specific template wins: more literal
 * segments, then an exact method over ALL); failing that as a router-relative
 * path, accepted only when exactly one template fits (a literal mount prefix
 * followed by segments that match), since a guess would misattribute traffic.
 * Paths that match nothing are normalised (id-like segments become :id) so
 * that unmatched traffic still aggregates into a bounded set of keys.
 *
 * The algorithm is in ingest_match_core.c (no PostgreSQL, fuzzed as it is);
 * this file is its SQL face.
 */

#include "postgres.h"

#include "ingest_match_core.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"

/*
 * lattice.ingest_match_route(templates text[], method text, path text) -> int:
 * the 1-based position of the template ("METHOD /path") the raw path belongs
 * to, or NULL when none fits or a router-relative match is ambiguous.
 */
PG_FUNCTION_INFO_V1(lattice_ingest_match_route);
Datum
lattice_ingest_match_route(PG_FUNCTION_ARGS)
{
	ArrayType *arr;
	Datum *elems;
	bool *nulls;
	int n;
	text *method_t;
	text *path_t;
	const char *method;
	int method_len;
	IngestSegments raw;
	const char **templates;
	int *template_lens;
	int pos;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(0);
	path_t = PG_GETARG_TEXT_PP(2);
	method_t = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	method = method_t ? VARDATA_ANY(method_t) : "";
	method_len = method_t ? VARSIZE_ANY_EXHDR(method_t) : 0;

	if (!ingest_split_path(VARDATA_ANY(path_t), VARSIZE_ANY_EXHDR(path_t), &raw))
		PG_RETURN_NULL();
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);

	templates = palloc0(sizeof(char *) * Max(n, 1));
	template_lens = palloc0(sizeof(int) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		text *tt;

		if (nulls[i])
			continue;
		tt = DatumGetTextPP(elems[i]);
		templates[i] = VARDATA_ANY(tt);
		template_lens[i] = VARSIZE_ANY_EXHDR(tt);
	}
	pos = ingest_match_templates((const char *const *) templates, template_lens, n, method, method_len,
								 &raw);
	if (pos == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT32(pos);
}

/*
 * lattice.ingest_normalise_path(path text) -> text: the raw path with its
 * id-like segments replaced by :id and the query string dropped.
 */
PG_FUNCTION_INFO_V1(lattice_ingest_normalise_path);
Datum
lattice_ingest_normalise_path(PG_FUNCTION_ARGS)
{
	text *path_t = PG_GETARG_TEXT_PP(0);
	IngestSegments seg;
	StringInfoData out;

	if (!ingest_split_path(VARDATA_ANY(path_t), VARSIZE_ANY_EXHDR(path_t), &seg))
		PG_RETURN_TEXT_P(cstring_to_text("/:too-deep"));
	initStringInfo(&out);
	for (int i = 0; i < seg.n; i++)
	{
		appendStringInfoChar(&out, '/');
		if (ingest_id_like(seg.s[i], seg.len[i]))
			appendStringInfoString(&out, ":id");
		else
			appendBinaryStringInfo(&out, seg.s[i], seg.len[i]);
	}
	if (out.len == 0)
		appendStringInfoChar(&out, '/');
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
