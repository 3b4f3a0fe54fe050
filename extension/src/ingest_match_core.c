/*
 * ingest_match_core.c
 *		Matching raw request paths to route templates, and normalising the
 *		ones that match nothing: the algorithm of ingest_match.c without
 *		PostgreSQL, so that the fuzz target (tests/fuzz/) runs this very code.
 */
#include "ingest_match_core.h"

#include <stddef.h>
#include <string.h>

/* Segments point into p; the query string, if any, ends the path. */
bool
ingest_split_path(const char *p, int plen, IngestSegments *out)
{
	int i = 0;

	out->n = 0;
	while (i < plen)
	{
		int start;

		while (i < plen && p[i] == '/')
			i++;
		if (i >= plen)
			break;
		start = i;
		while (i < plen && p[i] != '/' && p[i] != '?')
			i++;
		/* "/?page=2": the query string begins, not an empty segment (fuzzing found it) */
		if (i == start)
			break;
		if (out->n == INGEST_MATCH_MAX_SEGMENTS)
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
is_param(const IngestSegments *t, int i)
{
	return t->len[i] > 0 && t->s[i][0] == ':';
}

static inline bool
is_star(const IngestSegments *t, int i)
{
	return t->len[i] == 1 && t->s[i][0] == '*';
}

static inline bool
seg_equal(const IngestSegments *a, int i, const IngestSegments *b, int j)
{
	return a->len[i] == b->len[j] && memcmp(a->s[i], b->s[j], a->len[i]) == 0;
}

/*
 * Does template t[from..] match raw r entirely?  Counts literal segments
 * matched into *literals.
 */
static bool
match_from(const IngestSegments *t, int from, const IngestSegments *r, int *literals)
{
	int ti = from, ri = 0;

	*literals = 0;
	while (ti < t->n)
	{
		if (is_star(t, ti))
			return true; /* the rest, possibly nothing */
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
all_literal(const IngestSegments *t, int upto)
{
	for (int i = 0; i < upto; i++)
		if (is_param(t, i) || is_star(t, i))
			return false;
	return true;
}

/* Splits "METHOD /path" into its parts. */
static bool
split_template(const char *tpl, int tlen, const char **method, int *mlen, const char **path, int *plen)
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
 * First as a full path (the most specific template wins: more literal
 * segments, then an exact method over ALL); failing that as a router-relative
 * path, accepted only when exactly one template fits.
 */
int
ingest_match_templates(const char *const *templates, const int *template_lens, int n, const char *method,
					   int method_len, const IngestSegments *raw)
{
	int best = 0, best_score = -1;
	int rel = 0, rel_count = 0;

	for (int i = 0; i < n; i++)
	{
		const char *tm, *tp;
		int tmlen, tplen, literals;
		bool exact, any;
		IngestSegments tpl;

		if (templates[i] == NULL)
			continue;
		if (!split_template(templates[i], template_lens[i], &tm, &tmlen, &tp, &tplen))
			continue;
		exact = (tmlen == method_len && memcmp(tm, method, tmlen) == 0);
		any = (tmlen == 3 && memcmp(tm, "ALL", 3) == 0);
		if (!exact && !any)
			continue;
		if (!ingest_split_path(tp, tplen, &tpl))
			continue;

		if (match_from(&tpl, 0, raw, &literals))
		{
			/* more literal segments first, then fewer segments, then exact method */
			int score = literals * 256 + (INGEST_MATCH_MAX_SEGMENTS - tpl.n) * 2 + (exact ? 1 : 0);

			if (score > best_score)
			{
				best_score = score;
				best = i + 1;
			}
		}
		else if (best == 0 && tpl.n > raw->n)
		{
			int mount = tpl.n - raw->n;

			if (all_literal(&tpl, mount) && match_from(&tpl, mount, raw, &literals))
			{
				rel_count++;
				rel = i + 1;
			}
		}
	}
	if (best > 0)
		return best;
	if (rel_count == 1)
		return rel;
	return 0;
}

bool
ingest_id_like(const char *s, int len)
{
	int digits = 0, hex = 0, alnum = 0;

	for (int i = 0; i < len; i++)
	{
		unsigned char ch = (unsigned char) s[i];

		if (ch >= '0' && ch <= '9')
			digits++;
		if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
			ch == '-')
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
