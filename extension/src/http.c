/*
 * http.c
 *		Errors that the shim turns into HTTP answers.
 *
 * SQLSTATE PTnnn carries the HTTP status (PostgREST's convention); the DETAIL
 * is a JSON object {"code", "details", "headers"} and the message stays the
 * message.  See docs/http-contract.md.
 */
#include "lattice.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"

void
lattice_raise_http(int status, const char *code, const char *message,
				   const char *details_json, const char *headers_json)
{
	StringInfoData detail;
	char		state[6];

	Assert(status >= 400 && status <= 599);
	snprintf(state, sizeof(state), "PT%03d", status);

	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"code\":");
	escape_json(&detail, code);
	if (details_json)
		appendStringInfo(&detail, ",\"details\":%s", details_json);
	if (headers_json)
		appendStringInfo(&detail, ",\"headers\":%s", headers_json);
	appendStringInfoChar(&detail, '}');

	ereport(ERROR,
			(errcode(MAKE_SQLSTATE(state[0], state[1], state[2], state[3], state[4])),
			 errmsg_internal("%s", message),
			 errdetail_internal("%s", detail.data)));
	pg_unreachable();
}
