/*
 * otlp_flatten_core.c
 *		Checks an OTLP/JSON ExportTraceServiceRequest span by span and keeps,
 *		of each good span, what the mapping in sql/36_ingest_otlp.sql reads.
 *
 * The document must be a JSON object whose resourceSpans, when present, is
 * an array; otherwise the request is refused whole.  Below that, anything
 * wrong with one span (ids, times, kinds, types, sizes) rejects that span
 * alone: it is counted and the first reason kept for the answer's
 * partial_success, as OTLP asks.  Attribute names follow the semantic
 * conventions, current names first and their older spellings after.
 */
#include "otlp_flatten_core.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

typedef struct Flattener
{
	int64_t not_before_ns;
	int64_t not_after_ns;
	int seen; /* spans looked at */
	int rejected;
	char reason[256]; /* the first rejection's */
	struct json_object *spans;
} Flattener;

/* The resource's fields every span of it carries. */
typedef struct Resource
{
	const char *service;
	const char *environment;
	const char *version;
	const char *language;
	const char *runtime_name;
	const char *runtime_version;
	char runtime[2 * OTLP_MAX_SHORT + 2]; /* name and version */
	const char *bad;					  /* why all its spans are rejected, or NULL */
} Resource;

/* What a span's attributes say, as far as the mapping reads them. */
typedef struct SpanAttrs
{
	const char *route;
	const char *method;
	const char *target;
	const char *peer_service;
	const char *address;
	const char *url; /* url.full / http.url: the host when nothing else names it */
	int64_t port;
	int64_t status;
	const char *db;
	const char *db_name;
	bool db_query; /* a statement or operation: a call, not a pool's connect */
	const char *mq;
	const char *destination;
	const char *rpc_system;
	const char *rpc_service;
	const char *rpc_method;
	const char *bad;
} SpanAttrs;

static void
reject(Flattener *f, const char *why)
{
	f->rejected++;
	if (f->reason[0] == '\0')
		snprintf(f->reason, sizeof(f->reason), "%s", why);
}

static struct json_object *
member(struct json_object *obj, const char *key)
{
	struct json_object *v = NULL;

	if (obj == NULL || !json_object_is_type(obj, json_type_object) ||
		!json_object_object_get_ex(obj, key, &v) || json_object_is_type(v, json_type_null))
		return NULL;
	return v;
}

/* A string member, or NULL; *bad when present but not a string */
static const char *
string_member(struct json_object *obj, const char *key, bool *bad)
{
	struct json_object *v = member(obj, key);

	if (v == NULL)
		return NULL;
	if (!json_object_is_type(v, json_type_string))
	{
		*bad = true;
		return NULL;
	}
	return json_object_get_string(v);
}

/*
 * A 64-bit integer as OTLP/JSON writes it: a decimal string or a number.
 * False when it is neither or out of range.
 */
static bool
int64_value(struct json_object *v, int64_t *out)
{
	if (json_object_is_type(v, json_type_int))
	{
		errno = 0;
		*out = json_object_get_int64(v);
		return errno == 0;
	}
	if (json_object_is_type(v, json_type_double))
	{
		double d = json_object_get_double(v);

		if (!(d >= -9.2e18 && d <= 9.2e18) || d != (double) (int64_t) d)
			return false;
		*out = (int64_t) d;
		return true;
	}
	if (json_object_is_type(v, json_type_string))
	{
		const char *s = json_object_get_string(v);
		char *end;
		long long n;

		if (*s == '\0' || !(isdigit((unsigned char) *s) || *s == '-'))
			return false;
		errno = 0;
		n = strtoll(s, &end, 10);
		if (errno != 0 || *end != '\0')
			return false;
		*out = n;
		return true;
	}
	return false;
}

/* Lower-case hex of exactly len digits, not all zero (an invalid id in OTLP) */
static bool
hex_id(const char *s, size_t len)
{
	bool nonzero = false;

	if (s == NULL || strlen(s) != len)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (!isxdigit((unsigned char) s[i]))
			return false;
		if (s[i] != '0')
			nonzero = true;
	}
	return nonzero;
}

static bool
too_long(const char *s, size_t max)
{
	return s != NULL && strlen(s) > max;
}

/*
 * Walks an attribute list, calling take() for each key with its AnyValue.
 * False (with *why) when the list is not a list of {key, value} or too long.
 */
typedef void (*AttrFn)(void *ctx, const char *key, struct json_object *value);

static bool
each_attribute(struct json_object *list, AttrFn take, void *ctx, const char **why)
{
	size_t n;

	if (list == NULL)
		return true;
	if (!json_object_is_type(list, json_type_array))
	{
		*why = "attributes is not an array";
		return false;
	}
	n = json_object_array_length(list);
	if (n > OTLP_MAX_ATTRIBUTES)
	{
		*why = "more than 128 attributes";
		return false;
	}
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *kv = json_object_array_get_idx(list, i);
		bool bad = false;
		const char *key = string_member(kv, "key", &bad);

		if (bad || key == NULL || !json_object_is_type(kv, json_type_object))
		{
			*why = "an attribute without a string key";
			return false;
		}
		take(ctx, key, member(kv, "value"));
	}
	return true;
}

/* The string inside an AnyValue, or NULL */
static const char *
any_string(struct json_object *value)
{
	struct json_object *s = member(value, "stringValue");

	return s && json_object_is_type(s, json_type_string) ? json_object_get_string(s) : NULL;
}

/* The integer inside an AnyValue (intValue, or a string of digits) */
static bool
any_int(struct json_object *value, int64_t *out)
{
	struct json_object *v = member(value, "intValue");

	if (v == NULL)
		v = member(value, "stringValue");
	return v != NULL && int64_value(v, out);
}

static void
resource_attr(void *ctx, const char *key, struct json_object *value)
{
	Resource *r = ctx;
	const char *s = any_string(value);

	if (strcmp(key, "service.name") == 0)
		r->service = s;
	else if (strcmp(key, "deployment.environment.name") == 0 ||
			 (strcmp(key, "deployment.environment") == 0 && r->environment == NULL))
		r->environment = s;
	else if (strcmp(key, "service.version") == 0)
		r->version = s;
	else if (strcmp(key, "telemetry.sdk.language") == 0)
		r->language = s;
	else if (strcmp(key, "process.runtime.name") == 0)
		r->runtime_name = s;
	else if (strcmp(key, "process.runtime.version") == 0)
		r->runtime_version = s;
}

/* Sets *slot from the first of several spellings that is present. */
static void
prefer(const char **slot, bool current, const char *s)
{
	if (s != NULL && (current || *slot == NULL))
		*slot = s;
}

static void
span_attr(void *ctx, const char *key, struct json_object *value)
{
	SpanAttrs *a = ctx;
	const char *s = any_string(value);

	if (strcmp(key, "http.route") == 0)
		a->route = s;
	else if (strcmp(key, "http.request.method") == 0)
		prefer(&a->method, true, s);
	else if (strcmp(key, "http.method") == 0)
		prefer(&a->method, false, s);
	else if (strcmp(key, "url.path") == 0)
		prefer(&a->target, true, s);
	else if (strcmp(key, "http.target") == 0)
		prefer(&a->target, false, s);
	else if (strcmp(key, "peer.service") == 0)
		a->peer_service = s;
	else if (strcmp(key, "url.full") == 0)
		prefer(&a->url, true, s);
	else if (strcmp(key, "http.url") == 0)
		prefer(&a->url, false, s);
	else if (strcmp(key, "server.address") == 0)
		prefer(&a->address, true, s);
	else if (strcmp(key, "net.peer.name") == 0)
		prefer(&a->address, false, s);
	else if (strcmp(key, "server.port") == 0 || (strcmp(key, "net.peer.port") == 0 && a->port == 0))
	{
		if (!any_int(value, &a->port) || a->port < 0 || a->port > 65535)
			a->port = 0;
	}
	else if (strcmp(key, "http.response.status_code") == 0 ||
			 (strcmp(key, "http.status_code") == 0 && a->status == 0))
	{
		if (!any_int(value, &a->status) || a->status < 100 || a->status > 599)
			a->status = 0;
	}
	else if (strcmp(key, "db.system.name") == 0)
		prefer(&a->db, true, s);
	else if (strcmp(key, "db.system") == 0)
		prefer(&a->db, false, s);
	else if (strcmp(key, "db.query.text") == 0 || strcmp(key, "db.statement") == 0 ||
			 strcmp(key, "db.operation.name") == 0 || strcmp(key, "db.operation") == 0)
		a->db_query = true;
	else if (strcmp(key, "db.namespace") == 0)
		prefer(&a->db_name, true, s);
	else if (strcmp(key, "db.name") == 0)
		prefer(&a->db_name, false, s);
	else if (strcmp(key, "messaging.system") == 0)
		a->mq = s;
	else if (strcmp(key, "messaging.destination.name") == 0)
		prefer(&a->destination, true, s);
	else if (strcmp(key, "messaging.destination") == 0)
		prefer(&a->destination, false, s);
	else if (strcmp(key, "rpc.system") == 0)
		a->rpc_system = s;
	else if (strcmp(key, "rpc.service") == 0)
		a->rpc_service = s;
	else if (strcmp(key, "rpc.method") == 0)
		a->rpc_method = s;
}

static void
add_string(struct json_object *o, const char *key, const char *s)
{
	if (s != NULL && *s != '\0')
		json_object_object_add(o, key, json_object_new_string(s));
}

/* At most max bytes of s[0..len), not cutting a UTF-8 sequence */
static struct json_object *
cut_bytes(const char *s, size_t len, size_t max)
{
	if (len > max)
	{
		len = max;
		while (len > 0 && ((unsigned char) s[len] & 0xC0) == 0x80)
			len--;
	}
	return json_object_new_string_len(s, (int) len);
}

typedef struct ExceptionAttrs
{
	const char *type;
	const char *message;
	const char *stack;
} ExceptionAttrs;

static void
exception_attr(void *ctx, const char *key, struct json_object *value)
{
	ExceptionAttrs *e = ctx;

	if (strcmp(key, "exception.type") == 0)
		e->type = any_string(value);
	else if (strcmp(key, "exception.message") == 0)
		e->message = any_string(value);
	else if (strcmp(key, "exception.stacktrace") == 0)
		e->stack = any_string(value);
}

static struct json_object *frames_of(const char *stack);

/* The span's "exception" events, or NULL when there are none */
static struct json_object *
exceptions_of(struct json_object *events, int64_t span_start)
{
	struct json_object *out = NULL;
	size_t n;

	if (events == NULL || !json_object_is_type(events, json_type_array))
		return NULL;
	n = json_object_array_length(events);
	for (size_t i = 0; i < n; i++)
	{
		struct json_object *ev = json_object_array_get_idx(events, i);
		struct json_object *x;
		ExceptionAttrs e = {0};
		bool bad = false;
		const char *name = string_member(ev, "name", &bad);
		const char *why = NULL;
		int64_t at = 0;

		if (name == NULL || strcmp(name, "exception") != 0 ||
			!each_attribute(member(ev, "attributes"), exception_attr, &e, &why) ||
			(e.type == NULL && e.message == NULL))
			continue;
		if (member(ev, "timeUnixNano") == NULL || !int64_value(member(ev, "timeUnixNano"), &at) ||
			at <= 0)
			at = span_start;
		x = json_object_new_object();
		if (e.type == NULL)
			e.type = "Error";
		if (e.message == NULL)
			e.message = "";
		json_object_object_add(x, "type", cut_bytes(e.type, strlen(e.type), OTLP_MAX_PEER));
		json_object_object_add(x, "message", cut_bytes(e.message, strlen(e.message), OTLP_MAX_MESSAGE));
		json_object_object_add(x, "frames", frames_of(e.stack));
		json_object_object_add(x, "at", json_object_new_double((double) (at / 1000) / 1e6));
		if (out == NULL)
			out = json_object_new_array();
		json_object_array_add(out, x);
		if (json_object_array_length(out) >= OTLP_MAX_EXCEPTIONS)
			break;
	}
	return out;
}

/* The peer a client span calls, for an unmatched call: "host[:port]" */
static void
peer_of(const SpanAttrs *a, char *buf, size_t len)
{
	buf[0] = '\0';
	if (a->peer_service && *a->peer_service)
		snprintf(buf, len, "%s", a->peer_service);
	else if (a->address && *a->address && a->port > 0)
		snprintf(buf, len, "%s:%lld", a->address, (long long) a->port);
	else if (a->address && *a->address)
		snprintf(buf, len, "%s", a->address);
	else if (a->url && strstr(a->url, "://"))
	{
		/* scheme://[userinfo@]host[:port][/?#...] */
		const char *host = strstr(a->url, "://") + 3;
		size_t n = strcspn(host, "/?#");
		const char *at = memchr(host, '@', n);

		if (at)
		{
			n -= (size_t) (at + 1 - host);
			host = at + 1;
		}
		if (n > 0 && n < len)
			snprintf(buf, len, "%.*s", (int) n, host);
	}
}

/* The kind, as an integer or its enum name (both are valid OTLP/JSON) */
static int
kind_of(struct json_object *v)
{
	static const char *const names[] = {"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL",
										"SPAN_KIND_SERVER",		 "SPAN_KIND_CLIENT",
										"SPAN_KIND_PRODUCER",	 "SPAN_KIND_CONSUMER"};
	int64_t k;

	if (v == NULL)
		return 0;
	if (json_object_is_type(v, json_type_string))
	{
		for (int i = 0; i < 6; i++)
			if (strcmp(json_object_get_string(v), names[i]) == 0)
				return i;
		return -1;
	}
	if (!json_object_is_type(v, json_type_int) || !int64_value(v, &k) || k < 0 || k > 5)
		return -1;
	return (int) k;
}

static const char *
check_strings(const SpanAttrs *a, const char *name)
{
	if (too_long(name, OTLP_MAX_NAME) || too_long(a->route, OTLP_MAX_NAME) ||
		too_long(a->target, OTLP_MAX_NAME))
		return "span name, http.route or url.path longer than 1024 bytes";
	if (too_long(a->method, OTLP_MAX_SHORT) || too_long(a->db, OTLP_MAX_SHORT) ||
		too_long(a->mq, OTLP_MAX_SHORT) || too_long(a->rpc_system, OTLP_MAX_SHORT))
		return "http.request.method, db.system or messaging.system longer than 64 bytes";
	if (too_long(a->peer_service, OTLP_MAX_PEER) || too_long(a->address, OTLP_MAX_PEER) ||
		too_long(a->db_name, OTLP_MAX_PEER) || too_long(a->destination, OTLP_MAX_PEER) ||
		too_long(a->rpc_service, OTLP_MAX_PEER) || too_long(a->rpc_method, OTLP_MAX_PEER))
		return "a peer, database or destination name longer than 255 bytes";
	return NULL;
}

static void
flatten_span(Flattener *f, const Resource *r, struct json_object *span)
{
	SpanAttrs a = {0};
	bool bad = false;
	const char *trace, *id, *parent, *name, *why = NULL;
	int64_t start = 0, end = 0;
	int kind;
	struct json_object *o, *status, *exceptions;
	int64_t code = 0;
	char peer[OTLP_MAX_PEER + 8];
	char rpc_route[2 * OTLP_MAX_PEER + 2];

	if (++f->seen > OTLP_MAX_SPANS)
	{
		reject(f, "more than 10000 spans in one request");
		return;
	}
	if (r->bad)
	{
		reject(f, r->bad);
		return;
	}
	if (!json_object_is_type(span, json_type_object))
	{
		reject(f, "a span is not an object");
		return;
	}
	trace = string_member(span, "traceId", &bad);
	id = string_member(span, "spanId", &bad);
	parent = string_member(span, "parentSpanId", &bad);
	name = string_member(span, "name", &bad);
	if (bad || !hex_id(trace, 32) || !hex_id(id, 16) || (parent && *parent && !hex_id(parent, 16)))
	{
		reject(f, "traceId must be 16 bytes and spanId, parentSpanId 8 bytes, in hex, not zero");
		return;
	}
	if (member(span, "startTimeUnixNano") == NULL || member(span, "endTimeUnixNano") == NULL ||
		!int64_value(member(span, "startTimeUnixNano"), &start) ||
		!int64_value(member(span, "endTimeUnixNano"), &end))
	{
		reject(f, "startTimeUnixNano and endTimeUnixNano are required integers");
		return;
	}
	if (start < f->not_before_ns || start > f->not_after_ns || end < start ||
		end - start > OTLP_MAX_DURATION_NS)
	{
		reject(f, "a span starts outside the retention window or lasts less than 0 or more than a day");
		return;
	}
	kind = kind_of(member(span, "kind"));
	if (kind < 0)
	{
		reject(f, "kind must be a SpanKind (0 to 5)");
		return;
	}
	if (!each_attribute(member(span, "attributes"), span_attr, &a, &why) ||
		(why = check_strings(&a, name)) != NULL)
	{
		reject(f, why);
		return;
	}
	/* a database span that names neither a database nor a query (a pool
	   handing out a connection) is work inside the service, not a call */
	if (a.db && !a.db_name && !a.db_query)
	{
		a.db = NULL;
		kind = 1;
	}
	status = member(span, "status");
	if (status && member(status, "code") && !int64_value(member(status, "code"), &code))
	{
		reject(f, "status.code must be an integer");
		return;
	}

	/*
	 * Work inside a service (INTERNAL, UNSPECIFIED) shows on the map only
	 * as a database call or an exception: the rest is accepted and dropped.
	 */
	exceptions = exceptions_of(member(span, "events"), start);
	if (kind <= 1 && a.db == NULL && a.mq == NULL && exceptions == NULL)
		return;

	o = json_object_new_object();
	json_object_object_add(o, "i", json_object_new_int((int) json_object_array_length(f->spans) + 1));
	add_string(o, "service", r->service);
	add_string(o, "environment", r->environment);
	add_string(o, "version", r->version);
	add_string(o, "language", r->language);
	add_string(o, "runtime", r->runtime);
	json_object_object_add(o, "kind", json_object_new_int(kind));
	add_string(o, "trace", trace);
	add_string(o, "span", id);
	add_string(o, "parent", parent);
	add_string(o, "name", name);
	json_object_object_add(o, "start", json_object_new_double((double) (start / 1000) / 1e6));
	json_object_object_add(o, "ms", json_object_new_double((double) (end - start) / 1e6));
	if (a.status)
		json_object_object_add(o, "status", json_object_new_int((int) a.status));
	json_object_object_add(o, "failed", json_object_new_boolean(code == 2));
	if (a.rpc_system && a.rpc_service && a.rpc_method && !a.method)
	{
		snprintf(rpc_route, sizeof(rpc_route), "%s/%s", a.rpc_service, a.rpc_method);
		add_string(o, "method", a.rpc_system);
		add_string(o, "route", rpc_route);
	}
	else
	{
		add_string(o, "method", a.method);
		add_string(o, "route", a.route);
	}
	add_string(o, "target", a.target);
	peer_of(&a, peer, sizeof(peer));
	add_string(o, "peer", peer);
	add_string(o, "db", a.db);
	add_string(o, "db_name", a.db_name);
	add_string(o, "mq", a.mq);
	add_string(o, "destination", a.destination);
	if (exceptions)
		json_object_object_add(o, "exceptions", exceptions);
	json_object_array_add(f->spans, o);
}

/* A resource's identity, or the reason all its spans are rejected */
static void
read_resource(struct json_object *rs, Resource *r)
{
	const char *why = NULL;

	memset(r, 0, sizeof(*r));
	if (!each_attribute(member(member(rs, "resource"), "attributes"), resource_attr, r, &why))
		r->bad = why;
	else if (r->service == NULL || *r->service == '\0')
		r->bad = "the resource has no service.name";
	else if (too_long(r->service, OTLP_MAX_SERVICE))
		r->bad = "service.name longer than 128 bytes";
	else if (r->environment &&
			 (*r->environment == '\0' || too_long(r->environment, OTLP_MAX_ENVIRONMENT)))
		r->bad = "deployment.environment.name empty or longer than 64 bytes";
	else if (too_long(r->version, OTLP_MAX_SHORT) || too_long(r->language, OTLP_MAX_SHORT) ||
			 too_long(r->runtime_name, OTLP_MAX_SHORT) || too_long(r->runtime_version, OTLP_MAX_SHORT))
		r->bad = "service.version, telemetry.sdk.language or process.runtime.* longer than 64 bytes";
	else if (r->runtime_name)
		snprintf(r->runtime, sizeof(r->runtime), "%s%s%s", r->runtime_name,
				 r->runtime_version ? " " : "", r->runtime_version ? r->runtime_version : "");
}

static bool
flatten_resource(Flattener *f, struct json_object *rs, char *err, size_t errlen, size_t ri)
{
	Resource r;
	struct json_object *scopes = member(rs, "scopeSpans");

	if (scopes == NULL)
		scopes = member(rs, "instrumentationLibrarySpans");
	if (scopes == NULL)
		return true;
	if (!json_object_is_type(rs, json_type_object) || !json_object_is_type(scopes, json_type_array))
	{
		snprintf(err, errlen, "resourceSpans[%zu].scopeSpans: must be an array", ri);
		return false;
	}
	read_resource(rs, &r);
	for (size_t i = 0; i < json_object_array_length(scopes); i++)
	{
		struct json_object *ss = json_object_array_get_idx(scopes, i);
		struct json_object *spans = member(ss, "spans");

		if (spans == NULL)
			continue;
		if (!json_object_is_type(spans, json_type_array))
		{
			snprintf(err, errlen, "resourceSpans[%zu].scopeSpans[%zu].spans: must be an array", ri, i);
			return false;
		}
		for (size_t j = 0; j < json_object_array_length(spans); j++)
			flatten_span(f, &r, json_object_array_get_idx(spans, j));
	}
	return true;
}

char *
otlp_flatten(const char *json, size_t len, int64_t not_before_ns, int64_t not_after_ns, char *err,
			 size_t errlen)
{
	struct json_tokener *tok;
	struct json_object *doc, *list, *out;
	Flattener f = {0};
	char *text = NULL;

	err[0] = '\0';
	if (len > INT_MAX || (tok = json_tokener_new_ex(OTLP_MAX_DEPTH)) == NULL)
	{
		snprintf(err, errlen, "$: the document is too large");
		return NULL;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	doc = json_tokener_parse_ex(tok, json, (int) len);
	if (doc == NULL || json_tokener_get_error(tok) != json_tokener_success ||
		json_tokener_get_parse_end(tok) != len)
	{
		snprintf(err, errlen, "$: not valid JSON (%s)",
				 json_tokener_error_desc(json_tokener_get_error(tok)));
		json_object_put(doc);
		json_tokener_free(tok);
		return NULL;
	}
	json_tokener_free(tok);
	if (!json_object_is_type(doc, json_type_object))
	{
		snprintf(err, errlen, "$: must be an ExportTraceServiceRequest object");
		json_object_put(doc);
		return NULL;
	}
	list = member(doc, "resourceSpans");
	if (list != NULL && !json_object_is_type(list, json_type_array))
	{
		snprintf(err, errlen, "resourceSpans: must be an array");
		json_object_put(doc);
		return NULL;
	}

	f.not_before_ns = not_before_ns;
	f.not_after_ns = not_after_ns;
	f.spans = json_object_new_array();
	for (size_t i = 0; list && i < json_object_array_length(list); i++)
	{
		if (!flatten_resource(&f, json_object_array_get_idx(list, i), err, errlen, i))
		{
			json_object_put(f.spans);
			json_object_put(doc);
			return NULL;
		}
	}
	out = json_object_new_object();
	json_object_object_add(out, "spans", f.spans);
	json_object_object_add(out, "rejected", json_object_new_int(f.rejected));
	json_object_object_add(out, "message", f.reason[0] ? json_object_new_string(f.reason) : NULL);
	text = strdup(json_object_to_json_string_ext(out,
												 JSON_C_TO_STRING_PLAIN |
													 JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(out);
	json_object_put(doc);
	if (text == NULL)
		snprintf(err, errlen, "$: out of memory");
	return text;
}

/* ---- stack traces ---- */

static void
add_frame(struct json_object *frames, const char *fn, size_t fn_len, const char *file, size_t file_len,
		  long line)
{
	struct json_object *fr = json_object_new_object();

	if (fn_len > 0)
		json_object_object_add(fr, "function_name", cut_bytes(fn, fn_len, OTLP_MAX_PEER));
	json_object_object_add(fr, "filename", cut_bytes(file, file_len, OTLP_MAX_NAME));
	if (line > 0)
		json_object_object_add(fr, "lineno", json_object_new_int64(line));
	json_object_array_add(frames, fr);
}

/* Finds needle in [p, end), or NULL */
static const char *
find(const char *p, const char *end, const char *needle)
{
	size_t n = strlen(needle);

	for (; p + n <= end; p++)
		if (memcmp(p, needle, n) == 0)
			return p;
	return NULL;
}

/* "file:line[:col]" -> the length of file and the line (0 when absent) */
static size_t
split_location(const char *loc, const char *end, long *line)
{
	const char *p = end;
	const char *cut = end;

	*line = 0;
	for (int parts = 0; parts < 2; parts++)
	{
		const char *colon = p;

		while (colon > loc && colon[-1] != ':')
			colon--;
		if (colon == loc || colon == p || !isdigit((unsigned char) *colon))
			break;
		*line = strtol(colon, NULL, 10);
		cut = p = colon - 1;
	}
	return (size_t) (cut - loc);
}

/*
 * One line of a stack trace:
 *   Node.js  "    at fn (file:line:col)" or "    at file:line:col"
 *   Java     "\tat pkg.Class.method(File.java:12)"
 *   Python   '  File "file", line 12, in fn'
 */
static void
parse_frame(struct json_object *frames, const char *l, const char *end)
{
	long line;

	while (l < end && (*l == ' ' || *l == '\t'))
		l++;
	if (end - l > 3 && strncmp(l, "at ", 3) == 0)
	{
		const char *fn = l + 3;
		const char *open = memchr(fn, '(', (size_t) (end - fn));

		if (open && end[-1] == ')')
		{
			size_t fn_len = (size_t) (open - fn);
			size_t file_len = split_location(open + 1, end - 1, &line);

			while (fn_len > 0 && fn[fn_len - 1] == ' ')
				fn_len--;
			add_frame(frames, fn, fn_len, open + 1, file_len, line);
		}
		else
		{
			size_t file_len = split_location(fn, end, &line);

			add_frame(frames, NULL, 0, fn, file_len, line);
		}
	}
	else if (end - l > 6 && strncmp(l, "File \"", 6) == 0)
	{
		const char *file = l + 6;
		const char *q = memchr(file, '"', (size_t) (end - file));
		const char *in;

		if (q == NULL)
			return;
		line = end - q > 8 && strncmp(q, "\", line ", 8) == 0 ? strtol(q + 8, NULL, 10) : 0;
		in = find(q, end, ", in ");
		add_frame(frames, in ? in + 5 : NULL, in ? (size_t) (end - in - 5) : 0, file,
				  (size_t) (q - file), line);
	}
}

static struct json_object *
frames_of(const char *stack)
{
	struct json_object *frames = json_object_new_array();
	const char *p = stack;

	while (p && *p && json_object_array_length(frames) < OTLP_MAX_STACK_FRAMES)
	{
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t) (nl - p) : strlen(p);

		if (len > 0 && p[len - 1] == '\r')
			len--;
		parse_frame(frames, p, p + len);
		p = nl ? nl + 1 : NULL;
	}
	return frames;
}

char *
otlp_stack_frames(const char *stack)
{
	struct json_object *frames = frames_of(stack);
	char *text = strdup(json_object_to_json_string_ext(frames, JSON_C_TO_STRING_PLAIN));

	json_object_put(frames);
	return text;
}
