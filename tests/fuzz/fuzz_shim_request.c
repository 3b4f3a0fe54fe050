/*
 * libFuzzer target: what the shim reads from a request itself (shim/):
 * the route matcher (routes.c), the path and body UTF-8 check and the
 * request-id check (util.c), the CORS origin list (config.c), the query
 * string, the bearer token, the session and CSRF cookies and the JSON
 * content type (request_fields.c), as the shim runs them.
 *
 * Input: "<method>\n<path>\n<query>\n<authorization>\n<cookie>\n
 * <content-type>\n<x-request-id>\n<origin>", each line NUL-terminated the
 * way civetweb hands them over.  Properties: a matched route's parameters
 * point into the path; a bearer token points into the header.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim.h"

#define FIELDS 8

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];

	(void) argc;
	(void) argv;
	if (config_load(NULL, err, sizeof(err)) != 0)
	{
		fprintf(stderr, "config_load: %s\n", err);
		abort();
	}
	cfg.test_routes = true; /* the test lines are matched too */
	snprintf(cfg.cors_origins, sizeof(cfg.cors_origins), "https://app.example, http://127.0.0.1:5173");
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1);
	char *field[FIELDS];
	char *p = copy;
	struct route_match m;
	char allow[128];
	char cookie[1024];
	const char *path;

	if (!copy)
		return 0;
	memcpy(copy, data, size);
	copy[size] = '\0';
	for (int i = 0; i < FIELDS; i++)
	{
		char *nl = p ? strchr(p, '\n') : NULL;

		field[i] = p ? p : "";
		if (nl)
		{
			*nl = '\0';
			p = nl + 1;
		}
		else
			p = NULL;
	}
	path = field[1];

	if (utf8_valid(path, strlen(path)))
	{
		int found = route_find(field[0], path, &m, allow, sizeof(allow));

		if (found == 1)
		{
			if (m.index < 0 || m.index >= nroutes || m.nparams > ROUTE_PARAMS_MAX)
				abort();
			for (int i = 0; i < m.nparams; i++)
				if (m.params[i].value < path ||
					m.params[i].value + m.params[i].value_len > path + strlen(path))
					abort();
		}
		if (strlen(allow) >= sizeof(allow))
			abort();
		(void) route_path_flags(path);
		(void) route_label(found == 1 ? m.index : ROUTE_UNMATCHED);
	}
	json_object_put(query_object(field[2]));
	{
		const char *tok = bearer_token(field[3]);

		if (tok && (tok < field[3] || tok >= field[3] + strlen(field[3]) || !*tok))
			abort();
	}
	if (cookie_value(field[4], "lattice_session", cookie, sizeof(cookie)) &&
		strlen(cookie) >= sizeof(cookie))
		abort();
	(void) cookie_value(field[4], "lattice_csrf", cookie, sizeof(cookie));
	(void) is_json_type(field[5]);
	(void) request_id_sane(field[6]);
	(void) config_list_has(cfg.cors_origins, field[7]);
	(void) utf8_valid((const char *) data, size);
	free(copy);
	return 0;
}
