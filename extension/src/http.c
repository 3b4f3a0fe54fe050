/*
 * http.c
 *		The one way an error reaches a client as an answer it can act on.
 *
 * The rule (docs/http-contract.md, "How errors reach the client"):
 *
 * - A refusal the client caused and can act on -- bad input, a bad, expired
 *   or revoked credential, a missing scope, a quota, a conflict, something
 *   not found -- is raised here: SQLSTATE PTnnn carries the HTTP status
 *   (PostgREST's convention), the DETAIL a JSON object {"code", "details",
 *   "headers"}, and the message is a plain sentence shown to people.
 * - Every other error keeps a standard SQLSTATE through ereport(): a SQL
 *   caller's misuse (a NULL the HTTP functions never pass, a privileged
 *   function called without the privilege) or an internal fault.  The shim
 *   maps those through its fixed table; no client input may rely on it.
 *   Their messages start with the SQL function the caller called,
 *   "lattice.<function>: ", or "lattice: " in code that serves no single
 *   function.
 */
#include "common.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"

void
lattice_raise_http(int status, const char *code, const char *message, const char *details_json,
				   const char *headers_json)
{
	StringInfoData detail;
	char state[6];

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
			 errmsg_internal("%s", message), errdetail_internal("%s", detail.data)));
	pg_unreachable();
}
