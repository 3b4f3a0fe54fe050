/*
 * ingest_validate_schema.c
 *		What each kind of ingest body must hold: its fields, their types,
 *		lengths, ranges and patterns.
 *
 * metadata is the plugins' ServiceMetadataSubmission, whose JSON Schema is
 * tests/fixtures/schema-v1.json; Lattice adds limits on array lengths,
 * string lengths and number ranges, and takes any environment name.  The
 * other kinds (traces, errors, error, breadcrumbs, legacy metrics) have no
 * schema file: the checks below define them, and tests/fixtures/captured/
 * holds bodies a plugin sent.
 */
#include "ingest_validate_schema.h"

#include <stdint.h>
#include <string.h>

#include <json-c/json.h>

#include "ingest_validate_check.h"
#include "ingest_validate_pattern.h"

#define MAX_ROUTES		 2000
#define MAX_DEPENDENCIES 2000
#define MAX_BATCH		 500
#define MAX_BREADCRUMBS	 200
#define MAX_FRAMES		 100
#define MAX_TEXT		 8192 /* messages, descriptions */
#define MAX_PATH		 2048
#define MAX_DURATION_MS	 86400000.0 /* one day */

static const char *const route_methods[] = {"GET",	"POST",	   "PUT", "PATCH", "DELETE",
											"HEAD", "OPTIONS", "ALL", NULL};
static const char *const service_statuses[] = {"active", "inactive", "unknown", NULL};
static const char *const deployment_types[] = {"kubernetes", "docker", "serverless", "bare-metal", NULL};
static const char *const param_types[] = {"string", "number", "boolean", "object", "array", NULL};
static const char *const dependency_types[] = {"direct", "transitive", "peer", "dev", NULL};
static const char *const severities[] = {"critical", "high", "medium", "low", NULL};
static const char *const operation_types[] = {"http_request", "db_query", "external_call", "custom",
											  NULL};
static const char *const crumb_categories[] = {"navigation",   "user_action", "http", "console",
											   "state_change", "custom",	  NULL};
static const char *const crumb_levels[] = {"debug", "info", "warning", "error", NULL};

/* ---------- schema-v1: ServiceMetadataSubmission ---------- */

static void
check_service(Checker *c, struct json_object *svc)
{
	struct json_object *by;

	ingest_str_field(c, svc, "id", true, 1, 128, ingest_re_service_id, "must match ^[a-z0-9]+$");
	ingest_str_field(c, svc, "name", true, 2, 63, ingest_re_service_name,
					 "must be lower-case letters, digits and inner hyphens (DNS label)");
	ingest_str_field(c, svc, "version", false, 1, 128, INGEST_RE_SEMVER,
					 "must be a semantic version (e.g. 1.2.3)");
	/* any environment name (the original accepted only three) */
	ingest_str_field(c, svc, "environment", false, 1, 64, ingest_re_environment,
					 "must be letters, digits, '.', '_' or '-'");
	ingest_enum_field(c, svc, "deploymentType", false, deployment_types);
	ingest_str_field(c, svc, "language", true, 0, 64, NULL, NULL);
	ingest_str_field(c, svc, "framework", true, 0, 64, NULL, NULL);
	ingest_str_field(c, svc, "runtime", false, 0, 128, NULL, NULL);
	ingest_str_field(c, svc, "description", false, 0, MAX_TEXT, NULL, NULL);
	ingest_str_field(c, svc, "repository", false, 1, MAX_PATH, INGEST_RE_URI, "must be a URI");
	ingest_str_field(c, svc, "healthCheckUrl", false, 0, MAX_PATH, INGEST_RE_URI_REF,
					 "must be a URI reference");
	ingest_enum_field(c, svc, "status", true, service_statuses);
	ingest_datetime_field(c, svc, "firstSeen", false);
	ingest_datetime_field(c, svc, "lastSeen", false);
	by = ingest_field(c, svc, "discoveredBy", json_type_object, true);
	if (by)
	{
		size_t s = ingest_push_key(c, "discoveredBy");

		ingest_str_field(c, by, "pluginName", true, 0, 256, NULL, NULL);
		ingest_str_field(c, by, "pluginVersion", true, 0, 128, NULL, NULL);
		ingest_str_field(c, by, "schemaVersion", true, 0, 128, NULL, NULL);
		ingest_pop(c, s);
	}
	ingest_obj_any_field(c, svc, "metadata", json_type_object);
}

static void
check_parameters(Checker *c, struct json_object *route, const char *key)
{
	struct json_object *arr = ingest_array_field(c, route, key, false, 0, INGEST_MAX_LIST);
	size_t saved;

	if (arr == NULL)
		return;
	saved = ingest_push_key(c, key);
	for (size_t i = 0; i < json_object_array_length(arr); i++)
	{
		struct json_object *p = json_object_array_get_idx(arr, i);
		size_t s = ingest_push_index(c, i);

		if (ingest_is_object(c, p))
		{
			ingest_str_field(c, p, "name", true, 1, 256, NULL, NULL);
			ingest_field(c, p, "required", json_type_boolean, true);
			ingest_enum_field(c, p, "type", false, param_types);
			ingest_str_field(c, p, "description", false, 0, MAX_TEXT, NULL, NULL);
			if (json_object_object_get_ex(p, "example", NULL))
			{
				struct json_object *ex = json_object_object_get(p, "example");
				size_t s2 = ingest_push_key(c, "example");

				ingest_check_any(c, ex);
				ingest_pop(c, s2);
			}
		}
		ingest_pop(c, s);
	}
	ingest_pop(c, saved);
}

static void
check_route(Checker *c, struct json_object *r)
{
	struct json_object *loc;

	ingest_str_field(c, r, "id", true, 0, 128, NULL, NULL);
	ingest_str_field(c, r, "serviceId", true, 0, 128, NULL, NULL);
	ingest_enum_field(c, r, "method", true, route_methods);
	ingest_str_field(c, r, "path", true, 1, MAX_PATH, ingest_re_absolute_path, "must start with /");
	ingest_string_list_field(c, r, "middlewareChain", 256);
	loc = ingest_field(c, r, "handlerLocation", json_type_object, false);
	if (loc)
	{
		size_t s = ingest_push_key(c, "handlerLocation");

		ingest_str_field(c, loc, "file", false, 0, MAX_PATH, NULL, NULL);
		ingest_int_field(c, loc, "line", false, 1, INT32_MAX);
		ingest_str_field(c, loc, "function", false, 0, 512, NULL, NULL);
		ingest_pop(c, s);
	}
	check_parameters(c, r, "pathParameters");
	check_parameters(c, r, "queryParameters");
	ingest_obj_any_field(c, r, "requestSchema", json_type_object);
	ingest_obj_any_field(c, r, "responseSchema", json_type_object);
	ingest_obj_any_field(c, r, "metadata", json_type_object);
	ingest_str_field(c, r, "description", false, 0, MAX_TEXT, NULL, NULL);
	ingest_string_list_field(c, r, "tags", 128);
	ingest_num_field(c, r, "avgResponseTimeMs", false, 0, 1e12);
	ingest_num_field(c, r, "callFrequency", false, 0, 1e15);
	ingest_num_field(c, r, "errorRate", false, 0, 100);
	ingest_datetime_field(c, r, "firstSeen", false);
	ingest_datetime_field(c, r, "lastSeen", false);
}

static void
check_dependency(Checker *c, struct json_object *d)
{
	ingest_str_field(c, d, "id", true, 0, 128, NULL, NULL);
	ingest_str_field(c, d, "serviceId", true, 0, 128, NULL, NULL);
	ingest_str_field(c, d, "packageName", true, 1, 214, NULL, NULL);
	/* may be empty or odd: the plugin strips one range character */
	ingest_str_field(c, d, "version", true, 0, 256, NULL, NULL);
	ingest_str_field(c, d, "versionRange", false, 0, 256, NULL, NULL);
	ingest_enum_field(c, d, "dependencyType", true, dependency_types);
	ingest_str_field(c, d, "scope", false, 0, 214, NULL, NULL);
	ingest_int_field(c, d, "installedSize", false, 0, (int64_t) 1 << 50);
	ingest_int_field(c, d, "publishSize", false, 0, (int64_t) 1 << 50);
	ingest_int_field(c, d, "fileCount", false, 0, INT32_MAX);
	ingest_field(c, d, "hasVulnerabilities", json_type_boolean, false);
	ingest_int_field(c, d, "vulnerabilityCount", false, 0, INT32_MAX);
	ingest_enum_field(c, d, "highestSeverity", false, severities);
	ingest_str_field(c, d, "description", false, 0, MAX_TEXT, NULL, NULL);
	ingest_str_field(c, d, "license", false, 0, 256, NULL, NULL);
	ingest_str_field(c, d, "repository", false, 1, MAX_PATH, INGEST_RE_URI, "must be a URI");
	ingest_str_field(c, d, "homepage", false, 1, MAX_PATH, INGEST_RE_URI, "must be a URI");
	ingest_datetime_field(c, d, "firstSeen", false);
	ingest_datetime_field(c, d, "lastSeen", false);
	ingest_obj_any_field(c, d, "metadata", json_type_object);
}

static void
check_metadata(Checker *c, struct json_object *root)
{
	struct json_object *svc = ingest_field(c, root, "service", json_type_object, true);
	struct json_object *arr;

	if (svc)
	{
		size_t s = ingest_push_key(c, "service");

		check_service(c, svc);
		ingest_pop(c, s);
	}
	if ((arr = ingest_array_field(c, root, "routes", false, 0, MAX_ROUTES)))
		ingest_check_items(c, arr, "routes", check_route);
	if ((arr = ingest_array_field(c, root, "dependencies", false, 0, MAX_DEPENDENCIES)))
		ingest_check_items(c, arr, "dependencies", check_dependency);
}

/* ---------- traces, errors, breadcrumbs, legacy metrics ---------- */

static void
check_trace(Checker *c, struct json_object *t)
{
	ingest_str_field(c, t, "service_id", true, 1, 128, NULL, NULL);
	ingest_str_field(c, t, "id", false, 0, 128, NULL, NULL);
	ingest_str_field(c, t, "operation_name", false, 0, MAX_PATH + 32, NULL, NULL);
	ingest_enum_field(c, t, "operation_type", false, operation_types);
	ingest_datetime_field(c, t, "start_time", false);
	ingest_datetime_field(c, t, "timestamp", false);
	ingest_num_field(c, t, "duration_ms", true, 0, MAX_DURATION_MS);
	ingest_int_field(c, t, "status_code", false, 0, 999);
	ingest_str_field(c, t, "method", false, 1, 16, ingest_re_http_method,
					 "must be an upper-case HTTP method");
	ingest_str_field(c, t, "path", false, 1, MAX_PATH, ingest_re_absolute_path, "must start with /");
	ingest_str_field(c, t, "caller_service", false, 1, 128, NULL, NULL);
	ingest_str_field(c, t, "user_agent", false, 0, INGEST_MAX_STR, NULL, NULL);
	ingest_str_field(c, t, "session_id", false, 0, 128, NULL, NULL);
	ingest_obj_any_field(c, t, "breakdown", json_type_object);
	ingest_obj_any_field(c, t, "metadata", json_type_object);
}

static void
check_frame(Checker *c, struct json_object *f)
{
	ingest_str_field(c, f, "filename", false, 0, MAX_PATH, NULL, NULL);
	ingest_int_field(c, f, "line_number", false, 0, INT32_MAX);
	ingest_int_field(c, f, "column_number", false, 0, INT32_MAX);
	ingest_str_field(c, f, "function_name", false, 0, INGEST_MAX_STR, NULL, NULL);
}

static void
check_error(Checker *c, struct json_object *e)
{
	struct json_object *frames;

	ingest_str_field(c, e, "service_id", true, 1, 128, NULL, NULL);
	ingest_str_field(c, e, "environment", true, 1, 64, ingest_re_environment,
					 "must be letters, digits, '.', '_' or '-'");
	ingest_str_field(c, e, "error_type", true, 1, 256, NULL, NULL);
	ingest_str_field(c, e, "message", true, 0, MAX_TEXT, NULL, NULL);
	if ((frames = ingest_array_field(c, e, "stack_trace", false, 0, MAX_FRAMES)))
		ingest_check_items(c, frames, "stack_trace", check_frame);
	ingest_str_field(c, e, "raw_stack", false, 0, 65536, NULL, NULL);
	ingest_obj_any_field(c, e, "context", json_type_object);
	ingest_datetime_field(c, e, "timestamp", false);
	ingest_str_field(c, e, "session_id", false, 1, 128, NULL, NULL);
	ingest_str_field(c, e, "id", false, 0, 128, NULL, NULL);
}

static void
check_breadcrumb(Checker *c, struct json_object *b)
{
	ingest_str_field(c, b, "session_id", true, 1, 128, NULL, NULL);
	ingest_enum_field(c, b, "category", true, crumb_categories);
	ingest_str_field(c, b, "message", true, 0, 4096, NULL, NULL);
	ingest_enum_field(c, b, "level", true, crumb_levels);
	if (json_object_object_get_ex(b, "data", NULL))
	{
		size_t s = ingest_push_key(c, "data");

		ingest_check_any(c, json_object_object_get(b, "data"));
		ingest_pop(c, s);
	}
	ingest_datetime_field(c, b, "timestamp", false);
}

static void
check_legacy_metric(Checker *c, struct json_object *m)
{
	struct json_object *ts;

	ingest_str_field(c, m, "method", true, 1, 16, ingest_re_http_method,
					 "must be an upper-case HTTP method");
	ingest_str_field(c, m, "path", true, 1, MAX_PATH, ingest_re_absolute_path, "must start with /");
	ingest_int_field(c, m, "statusCode", true, 0, 999);
	ingest_num_field(c, m, "responseTime", true, 0, MAX_DURATION_MS);
	ingest_str_field(c, m, "callerServiceName", false, 1, 128, NULL, NULL);
	/* the old tracker sent either an ISO string or epoch milliseconds */
	if (json_object_object_get_ex(m, "timestamp", &ts) && ts != NULL &&
		json_object_get_type(ts) == json_type_string)
		ingest_datetime_field(c, m, "timestamp", false);
	else
		ingest_num_field(c, m, "timestamp", false, 0, 1e14);
}

static void
check_batch(Checker *c, struct json_object *root, const char *key, size_t max,
			void (*fn)(Checker *, struct json_object *))
{
	struct json_object *arr = ingest_array_field(c, root, key, true, 1, max);

	if (arr)
		ingest_check_items(c, arr, key, fn);
}

/* Validates root as `kind`; problems are collected in c.  False: no such kind. */
bool
ingest_check_kind(Checker *c, const char *kind, struct json_object *root)
{
	if (strcmp(kind, "error") != 0 && !ingest_is_object(c, root))
		return true;
	if (strcmp(kind, "metadata") == 0)
		check_metadata(c, root);
	else if (strcmp(kind, "traces") == 0)
		check_batch(c, root, "traces", MAX_BATCH, check_trace);
	else if (strcmp(kind, "errors") == 0)
		check_batch(c, root, "errors", MAX_BATCH, check_error);
	else if (strcmp(kind, "error") == 0)
	{
		if (ingest_is_object(c, root))
			check_error(c, root);
	}
	else if (strcmp(kind, "breadcrumbs") == 0)
		check_batch(c, root, "breadcrumbs", MAX_BREADCRUMBS, check_breadcrumb);
	else if (strcmp(kind, "metrics") == 0)
	{
		ingest_str_field(c, root, "serviceName", true, 1, 128, NULL, NULL);
		check_batch(c, root, "metrics", MAX_BATCH, check_legacy_metric);
	}
	else
		return false;
	return true;
}
