/*
 * otlp_flatten.c
 *		lattice.otlp_flatten(body text, not_before timestamptz,
 *		not_after timestamptz) -> jsonb
 *
 * The SQL face of otlp_flatten_core.c: an OTLP/JSON trace export request
 * in, its good spans flattened (and the rejected ones counted) out, for
 * lattice.ingest_otlp to map.  A document that is not an export request at
 * all is a 400 invalid_otlp naming where it went wrong.
 */
#include "common.h"
#include "otlp_flatten_core.h"

#include <stdlib.h>

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

static int64
unix_nanoseconds(TimestampTz t)
{
	int64 us;

	if (TIMESTAMP_NOT_FINITE(t))
		return TIMESTAMP_IS_NOBEGIN(t) ? PG_INT64_MIN : PG_INT64_MAX;
	us = t + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC;
	return us * 1000;
}

PG_FUNCTION_INFO_V1(lattice_otlp_flatten);
Datum
lattice_otlp_flatten(PG_FUNCTION_ARGS)
{
	text *body = PG_GETARG_TEXT_PP(0);
	int64 not_before = unix_nanoseconds(PG_GETARG_TIMESTAMPTZ(1));
	int64 not_after = unix_nanoseconds(PG_GETARG_TIMESTAMPTZ(2));
	char err[256];
	char *flat;
	char *copy;

	flat = otlp_flatten(VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), not_before, not_after, err,
						sizeof(err));
	if (flat == NULL)
	{
		char *colon = strstr(err, ": ");

		if (colon)
			*colon = '\0';
		lattice_raise_http(400, "invalid_otlp", colon ? colon + 2 : err,
						   colon ? psprintf("{\"path\": \"%s\"}", err) : NULL, NULL);
	}
	copy = pstrdup(flat);
	free(flat);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(copy)));
}
