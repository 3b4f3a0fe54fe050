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
 */
#include "lattice.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"

#define MAX_SEGMENTS 64

typedef struct Segments
{
	int			n;
	const char *s[MAX_SEGMENTS];
	int			len[MAX_SEGMENTS];
} Segments;

/* Splits a path on '/', skipping empty segments; false when too many. */
static bool
split_path(const char *p, int plen, Segments *out)
{
	int			i = 0;

	out->n = 0;
	while (i < plen)
	{
		int			start;

		while (i < plen && p[i] == '/')
			i++;
		if (i >= plen)
			break;
		start = i;
		while (i < plen && p[i] != '/' && p[i] != '?')
			i++;
		if (out->n == MAX_SEGMENTS)
			return false;
		out->s[out->n] = p + start;
		out->len[out->n] = i - start;
		out->n++;
		if (i < plen && p[i] == '?')
			break;
	}
	return true;
}

static inline bool
is_param(const Segments *t, int i)
{
	return t->len[i] > 0 && t->s[i][0] == ':';
}

static inline bool
is_star(const Segments *t, int i)
{
	return t->len[i] == 1 && t->s[i][0] == '*';
}

static inline bool
seg_equal(const Segments *a, int i, const Segments *b, int j)
{
	return a->len[i] == b->len[j] && memcmp(a->s[i], b->s[j], a->len[i]) == 0;
}

/*
 * Does template t[from..] match raw r entirely?  Counts literal segments
 * matched into *literals.
 */
static bool
match_from(const Segments *t, int from, const Segments *r, int *literals)
{
	int			ti = from,
				ri = 0;

	*literals = 0;
	while (ti < t->n)
	{
		if (is_star(t, ti))
			return true;		/* the rest, possibly nothing */
		if (ri >= r->n)
			return false;
		if (is_param(t, ti))
			;
		else if (seg_equal(t, ti, r, ri))
			(*literals)++;
		else
			return false;
		ti++;
		ri++;
	}
	return ri == r->n;
}

static bool
all_literal(const Segments *t, int upto)
{
	for (int i = 0; i < upto; i++)
		if (is_param(t, i) || is_star(t, i))
			return false;
	return true;
}

/* Splits "METHOD /path" into its parts. */
static bool
split_template(const char *tpl, int tlen, const char **method, int *mlen,
			   const char **path, int *plen)
{
	const char *sp = memchr(tpl, ' ', tlen);

	if (sp == NULL)
		return false;
	*method = tpl;
	*mlen = sp - tpl;
	*path = sp + 1;
	*plen = tlen - (*mlen + 1);
	return true;
}

/*
 * lattice.ingest_match_route(templates text[], method text, path text) -> int:
 * the 1-based position of the template ("METHOD /path") the raw path belongs
 * to, or NULL when none fits or a router-relative match is ambiguous.
 */
PG_FUNCTION_INFO_V1(lattice_ingest_match_route);
Datum
lattice_ingest_match_route(PG_FUNCTION_ARGS)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	text	   *method_t;
	text	   *path_t;
	const char *method;
	int			method_len;
	Segments	raw;
	int			best = 0,
				best_score = -1;
	int			rel = 0,
				rel_count = 0;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	arr = PG_GETARG_ARRAYTYPE_P(0);
	path_t = PG_GETARG_TEXT_PP(2);
	method_t = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	method = method_t ? VARDATA_ANY(method_t) : "";
	method_len = method_t ? VARSIZE_ANY_EXHDR(method_t) : 0;

	if (!split_path(VARDATA_ANY(path_t), VARSIZE_ANY_EXHDR(path_t), &raw))
		PG_RETURN_NULL();
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);

	for (int i = 0; i < n; i++)
	{
		text	   *tt;
		const char *tm,
				   *tp;
		int			tmlen,
					tplen,
					literals;
		bool		exact,
					any;
		Segments	tpl;

		if (nulls[i])
			continue;
		tt = DatumGetTextPP(elems[i]);
		if (!split_template(VARDATA_ANY(tt), VARSIZE_ANY_EXHDR(tt), &tm, &tmlen, &tp, &tplen))
			continue;
		exact = (tmlen == method_len && memcmp(tm, method, tmlen) == 0);
		any = (tmlen == 3 && memcmp(tm, "ALL", 3) == 0);
		if (!exact && !any)
			continue;
		if (!split_path(tp, tplen, &tpl))
			continue;

		if (match_from(&tpl, 0, &raw, &literals))
		{
			/* more literal segments first, then fewer segments, then exact method */
			int			score = literals * 256 + (MAX_SEGMENTS - tpl.n) * 2 + (exact ? 1 : 0);

			if (score > best_score)
			{
				best_score = score;
				best = i + 1;
			}
		}
		else if (best == 0 && tpl.n > raw.n)
		{
			int			mount = tpl.n - raw.n;

			if (all_literal(&tpl, mount) && match_from(&tpl, mount, &raw, &literals))
			{
				rel_count++;
				rel = i + 1;
			}
		}
	}
	if (best > 0)
		PG_RETURN_INT32(best);
	if (rel_count == 1)
		PG_RETURN_INT32(rel);
	PG_RETURN_NULL();
}

/* An id-like segment: digits, a UUID, long hex, or a long token with digits. */
static bool
id_like(const char *s, int len)
{
	int			digits = 0,
				hex = 0,
				alnum = 0;

	for (int i = 0; i < len; i++)
	{
		unsigned char ch = (unsigned char) s[i];

		if (ch >= '0' && ch <= '9')
			digits++;
		if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') || ch == '-')
			hex++;
		if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			ch == '-' || ch == '_')
			alnum++;
	}
	if (digits == len)
		return true;
	if (hex == len && len >= 8 && digits > 0)
		return true;
	return alnum == len && len >= 16 && digits > 0;
}

/*
 * lattice.ingest_normalise_path(path text) -> text: the raw path with its
 * id-like segments replaced by :id and the query string dropped.
 */
PG_FUNCTION_INFO_V1(lattice_ingest_normalise_path);
Datum
lattice_ingest_normalise_path(PG_FUNCTION_ARGS)
{
	text	   *path_t = PG_GETARG_TEXT_PP(0);
	Segments	seg;
	StringInfoData out;

	if (!split_path(VARDATA_ANY(path_t), VARSIZE_ANY_EXHDR(path_t), &seg))
		PG_RETURN_TEXT_P(cstring_to_text("/:too-deep"));
	initStringInfo(&out);
	for (int i = 0; i < seg.n; i++)
	{
		appendStringInfoChar(&out, '/');
		if (id_like(seg.s[i], seg.len[i]))
			appendStringInfoString(&out, ":id");
		else
			appendBinaryStringInfo(&out, seg.s[i], seg.len[i]);
	}
	if (out.len == 0)
		appendStringInfoChar(&out, '/');
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
