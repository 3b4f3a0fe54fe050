/*
 * ingest_validate_core.c
 *		Validation of the plugins' ingest bodies, before anything is written:
 *		the rules of ingest_validate.c without PostgreSQL, so that the fuzz
 *		target (tests/fuzz/fuzz_ingest_validate.c) runs this very code.
 *
 * Bodies are parsed with json-c (strict mode, UTF-8 validated, bounded depth,
 * size capped before parsing, trailing bytes refused), then by PostgreSQL's
 * lexer (a hook), and checked against schema-v1 (protocol/schema-v1.json)
 * plus Lattice's limits on array lengths, string lengths and number ranges.
 * Every problem is collected with its JSON path; the outcome says how the
 * request is answered (ingest_validate_core.h).
 */
#include "ingest_validate_core.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#define MAX_ROUTES				2000
#define MAX_DEPENDENCIES		2000
#define MAX_BATCH				500
#define MAX_BREADCRUMBS			200
#define MAX_FRAMES				100
#define MAX_LIST				200		/* middlewareChain, tags, parameters */
#define MAX_STR					1024	/* default string cap */
#define MAX_TEXT				8192	/* messages, descriptions */
#define MAX_PATH				2048
#define MAX_DURATION_MS			86400000.0	/* one day */

/* The walk works on the validation itself: path, problems, hooks. */
typedef IngestValidation Checker;

/* ---------- growing strings (malloc; an allocation failure sets oom) ---------- */

static bool
buf_reserve(IngestBuf *b, size_t more)
{
	size_t		need;
	size_t		cap;
	char	   *p;

	if (b->oom)
		return false;
	need = b->len + more + 1;
	if (need <= b->cap)
		return true;
	cap = b->cap ? b->cap : 64;
	while (cap < need)
		cap *= 2;
	p = realloc(b->data, cap);
	if (p == NULL)
	{
		b->oom = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

static void
buf_append(IngestBuf *b, const char *s, size_t n)
{
	if (!buf_reserve(b, n))
		return;
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = '\0';
}

static void
buf_str(IngestBuf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

static void
buf_char(IngestBuf *b, char ch)
{
	if (!buf_reserve(b, 1))
		return;
	b->data[b->len++] = ch;
	b->data[b->len] = '\0';
}

static void
buf_truncate(IngestBuf *b, size_t len)
{
	if (b->data == NULL || len > b->len)
		return;
	b->len = len;
	b->data[len] = '\0';
}

static void
buf_reset(IngestBuf *b)
{
	buf_truncate(b, 0);
}

static void
buf_vprintf(IngestBuf *b, const char *fmt, va_list args)
	__attribute__((format(printf, 2, 0)));

static void
buf_vprintf(IngestBuf *b, const char *fmt, va_list args)
{
	size_t		avail;
	int			n;
	va_list		copy;

	if (!buf_reserve(b, 32))
		return;
	avail = b->cap - b->len;
	va_copy(copy, args);
	n = vsnprintf(b->data + b->len, avail, fmt, copy);
	va_end(copy);
	if (n >= 0 && (size_t) n >= avail && buf_reserve(b, (size_t) n))
		n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, args);
	if (n < 0 || b->oom)
	{
		b->oom = true;
		b->data[b->len] = '\0';
		return;
	}
	b->len += (size_t) n;
}

static void
buf_printf(IngestBuf *b, const char *fmt,...)
	__attribute__((format(printf, 2, 3)));

static void
buf_printf(IngestBuf *b, const char *fmt,...)
{
	va_list		args;

	va_start(args, fmt);
	buf_vprintf(b, fmt, args);
	va_end(args);
}

/* A JSON string, escaped as PostgreSQL's escape_json() does (up to a NUL). */
static void
buf_json_string(IngestBuf *b, const char *s)
{
	buf_char(b, '"');
	for (const char *p = s; *p; p++)
	{
		switch (*p)
		{
			case '\b':
				buf_str(b, "\\b");
				break;
			case '\f':
				buf_str(b, "\\f");
				break;
			case '\n':
				buf_str(b, "\\n");
				break;
			case '\r':
				buf_str(b, "\\r");
				break;
			case '\t':
				buf_str(b, "\\t");
				break;
			case '"':
				buf_str(b, "\\\"");
				break;
			case '\\':
				buf_str(b, "\\\\");
				break;
			default:
				if ((unsigned char) *p < ' ')
					buf_printf(b, "\\u%04x", (int) *p);
				else
					buf_char(b, *p);
				break;
		}
	}
	buf_char(b, '"');
}

static void
buf_free(IngestBuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* ---------- UTF-8 ---------- */

/*
 * Characters in s, or -1 when it is not well-formed UTF-8 (Unicode's table
 * 3-7, which PostgreSQL's pg_utf8_islegal() implements).
 */
int
ingest_utf8_chars(const char *s, int len)
{
	const unsigned char *p = (const unsigned char *) s;
	const unsigned char *end = p + len;
	int			chars = 0;

	while (p < end)
	{
		unsigned char b = *p;
		unsigned char lo = 0x80;	/* the range of the second byte */
		unsigned char hi = 0xBF;
		int			n;

		chars++;
		if (b < 0x80)
		{
			p++;
			continue;
		}
		if (b >= 0xC2 && b <= 0xDF)
			n = 2;
		else if (b >= 0xE0 && b <= 0xEF)
		{
			n = 3;
			if (b == 0xE0)
				lo = 0xA0;		/* overlong */
			else if (b == 0xED)
				hi = 0x9F;		/* surrogates */
		}
		else if (b >= 0xF0 && b <= 0xF4)
		{
			n = 4;
			if (b == 0xF0)
				lo = 0x90;		/* overlong */
			else if (b == 0xF4)
				hi = 0x8F;		/* above U+10FFFF */
		}
		else
			return -1;
		if (end - p < n || p[1] < lo || p[1] > hi)
			return -1;
		for (int i = 2; i < n; i++)
			if ((p[i] & 0xC0) != 0x80)
				return -1;
		p += n;
	}
	return chars;
}

static const char *const route_methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ALL", NULL};
static const char *const service_statuses[] = {"active", "inactive", "unknown", NULL};
static const char *const deployment_types[] = {"kubernetes", "docker", "serverless", "bare-metal", NULL};
static const char *const param_types[] = {"string", "number", "boolean", "object", "array", NULL};
static const char *const dependency_types[] = {"direct", "transitive", "peer", "dev", NULL};
static const char *const severities[] = {"critical", "high", "medium", "low", NULL};
static const char *const operation_types[] = {"http_request", "db_query", "external_call", "custom", NULL};
static const char *const crumb_categories[] = {"navigation", "user_action", "http", "console", "state_change", "custom", NULL};
static const char *const crumb_levels[] = {"debug", "info", "warning", "error", NULL};

/*
 * Patterns.  The frequent ones (dozens per body) are checked by the small C
 * functions below, recognised by address; the rare ones (semver, URIs) go to
 * the regex hook (PostgreSQL's regex engine in the backend, which caches the
 * compiled expression).
 */
static const char RE_SERVICE_ID[] = "^[a-z0-9]+$";
static const char RE_SERVICE_NAME[] = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
static const char RE_ENVIRONMENT[] = "^[A-Za-z0-9][A-Za-z0-9_.-]*$";
static const char RE_DATE_TIME[] = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$";
static const char RE_HTTP_METHOD[] = "^[A-Z]{1,16}$";
static const char RE_ABSOLUTE_PATH[] = "^/";
#define RE_SEMVER		"^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)" \
	"(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?" \
	"(\\+([0-9a-zA-Z-]+(\\.[0-9a-zA-Z-]+)*))?$"
#define RE_URI			"^[A-Za-z][A-Za-z0-9+.-]*:[^[:space:]]+$"
#define RE_URI_REF		"^[^[:space:]]*$"

const char *const ingest_fast_patterns[] = {
	RE_SERVICE_ID, RE_SERVICE_NAME, RE_ENVIRONMENT, RE_DATE_TIME, RE_HTTP_METHOD, RE_ABSOLUTE_PATH, NULL
};

static inline bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static inline bool
is_lower_alnum(char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'z');
}

static bool
digits(const char *s, int n)
{
	for (int i = 0; i < n; i++)
		if (!is_digit(s[i]))
			return false;
	return true;
}

/* RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM) */
static bool
is_date_time(const char *s, int len)
{
	int			i = 19;

	if (len < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
		!digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
		!digits(s + 11, 2) || s[13] != ':' || !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
		return false;
	if (s[i] == '.')
	{
		int			start = ++i;

		while (i < len && is_digit(s[i]))
			i++;
		if (i == start)
			return false;
	}
	if (i == len - 1)
		return s[i] == 'Z' || s[i] == 'z';
	return i == len - 6 && (s[i] == '+' || s[i] == '-') && digits(s + i + 1, 2) &&
		s[i + 3] == ':' && digits(s + i + 4, 2);
}

/* The C form of the frequent patterns; false in *handled for the others. */
bool
ingest_fast_match(const char *s, int len, const char *pattern, bool *handled)
{
	*handled = true;
	if (pattern == RE_DATE_TIME)
		return is_date_time(s, len);
	if (pattern == RE_ABSOLUTE_PATH)
		return len > 0 && s[0] == '/';
	if (pattern == RE_SERVICE_ID)
	{
		for (int i = 0; i < len; i++)
			if (!is_lower_alnum(s[i]))
				return false;
		return len > 0;
	}
	if (pattern == RE_SERVICE_NAME)
	{
		if (len == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[len - 1]))
			return false;
		for (int i = 0; i < len; i++)
			if (!is_lower_alnum(s[i]) && s[i] != '-')
				return false;
		return true;
	}
	if (pattern == RE_ENVIRONMENT)
	{
		if (len == 0 || !(is_digit(s[0]) || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
			return false;
		for (int i = 0; i < len; i++)
			if (!(is_digit(s[i]) || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
				  s[i] == '_' || s[i] == '.' || s[i] == '-'))
				return false;
		return true;
	}
	if (pattern == RE_HTTP_METHOD)
	{
		for (int i = 0; i < len; i++)
			if (s[i] < 'A' || s[i] > 'Z')
				return false;
		return len >= 1 && len <= 16;
	}
	*handled = false;
	return false;
}

/* ---------- problems and paths ---------- */

/* Adds one problem at the current path: {"path": ..., "message": msg}. */
static void
problem_text(Checker *c, const char *msg)
{
	c->nproblems++;
	if (c->nproblems > INGEST_MAX_PROBLEMS)
		return;
	if (c->problems.len > 0)
		buf_char(&c->problems, ',');
	buf_str(&c->problems, "{\"path\":");
	buf_json_string(&c->problems, c->path.len > 0 ? c->path.data : "body");
	buf_str(&c->problems, ",\"message\":");
	buf_json_string(&c->problems, msg);
	buf_char(&c->problems, '}');
}

static void
problem(Checker *c, const char *fmt,...)
	__attribute__((format(printf, 2, 3)));

static void
problem(Checker *c, const char *fmt,...)
{
	va_list		args;

	if (c->nproblems >= INGEST_MAX_PROBLEMS)
	{
		c->nproblems++;			/* counted, not listed: no need for the text */
		return;
	}
	buf_reset(&c->msg);
	va_start(args, fmt);
	buf_vprintf(&c->msg, fmt, args);
	va_end(args);
	problem_text(c, c->msg.data ? c->msg.data : "");
}

static size_t
push_key(Checker *c, const char *key)
{
	size_t		saved = c->path.len;

	if (c->path.len > 0)
		buf_char(&c->path, '.');
	buf_str(&c->path, key);
	return saved;
}

static size_t
push_index(Checker *c, size_t i)
{
	size_t		saved = c->path.len;

	buf_printf(&c->path, "[%zu]", i);
	return saved;
}

static void
pop(Checker *c, size_t saved)
{
	buf_truncate(&c->path, saved);
}

static const char *
type_name(json_type t)
{
	switch (t)
	{
		case json_type_null:
			return "null";
		case json_type_boolean:
			return "a boolean";
		case json_type_double:
		case json_type_int:
			return "a number";
		case json_type_object:
			return "an object";
		case json_type_array:
			return "an array";
		case json_type_string:
			return "a string";
	}
	return "unknown";
}

/* ---------- scalar checks, on the value at the current path ---------- */

static bool
matches(Checker *c, const char *s, int len, const char *pattern)
{
	bool		handled;
	bool		r = ingest_fast_match(s, len, pattern, &handled);

	if (handled)
		return r;
	return c->hooks->regex_match(s, len, pattern);
}

/* Every string that reaches the database: valid UTF-8, no NUL, bounded. */
static bool
check_text(Checker *c, const char *s, int len, int maxlen)
{
	int			chars;

	if (memchr(s, '\0', len) != NULL)
	{
		problem(c, "must not contain NUL characters");
		return false;
	}
	chars = ingest_utf8_chars(s, len);
	if (chars < 0)
	{
		problem(c, "must be valid UTF-8");
		return false;
	}
	if (maxlen > 0 && chars > maxlen)
	{
		problem(c, "must be at most %d characters", maxlen);
		return false;
	}
	return true;
}

/*
 * Walks a free-form value (metadata, schemas, context, examples): every
 * string and key is checked, every number must be finite.
 */
static void
check_any(Checker *c, struct json_object *v)
{
	switch (json_object_get_type(v))
	{
		case json_type_string:
			check_text(c, json_object_get_string(v), json_object_get_string_len(v), 0);
			break;
		case json_type_double:
			if (!isfinite(json_object_get_double(v)))
				problem(c, "must be a finite number");
			break;
		case json_type_array:
			{
				size_t		n = json_object_array_length(v);

				for (size_t i = 0; i < n; i++)
				{
					size_t		s = push_index(c, i);

					check_any(c, json_object_array_get_idx(v, i));
					pop(c, s);
				}
				break;
			}
		case json_type_object:
			{
				json_object_object_foreach(v, key, val)
				{
					size_t		s = push_key(c, key);

					check_text(c, key, strlen(key), MAX_STR);
					check_any(c, val);
					pop(c, s);
				}
				break;
			}
		default:
			break;
	}
}

/*
 * Looks up `key` in obj, checks its type; reports a missing required field
 * or a wrong type.  Returns NULL when absent (or JSON null when optional) or
 * wrong.  The path is left pointing at the field while *saved is set.
 */
static struct json_object *
field(Checker *c, struct json_object *obj, const char *key, json_type want, bool required)
{
	struct json_object *v = NULL;
	int			s;
	json_type	t;

	if (!json_object_object_get_ex(obj, key, &v) || v == NULL)
	{
		if (required)
		{
			s = push_key(c, key);
			problem(c, "is required");
			pop(c, s);
		}
		return NULL;
	}
	t = json_object_get_type(v);
	if (want == json_type_double && (t == json_type_int || t == json_type_double))
		return v;
	if (t != want)
	{
		s = push_key(c, key);
		problem(c, "must be %s, not %s", type_name(want), type_name(t));
		pop(c, s);
		return NULL;
	}
	return v;
}

static const char *
str_field(Checker *c, struct json_object *obj, const char *key, bool required,
		  int minlen, int maxlen, const char *pattern, const char *pattern_desc)
{
	struct json_object *v = field(c, obj, key, json_type_string, required);
	const char *s;
	int			len;
	size_t		saved;
	bool		ok = true;

	if (v == NULL)
		return NULL;
	s = json_object_get_string(v);
	len = json_object_get_string_len(v);
	saved = push_key(c, key);
	if (!check_text(c, s, len, maxlen))
		ok = false;
	else if (len < minlen)
	{
		problem(c, "must be at least %d characters", minlen);
		ok = false;
	}
	else if (pattern && !matches(c, s, len, pattern))
	{
		problem(c, "%s", pattern_desc);
		ok = false;
	}
	pop(c, saved);
	return ok ? s : NULL;
}

static const char *
enum_field(Checker *c, struct json_object *obj, const char *key, bool required,
		   const char *const *allowed)
{
	struct json_object *v = field(c, obj, key, json_type_string, required);
	const char *s;
	size_t		saved;

	if (v == NULL)
		return NULL;
	s = json_object_get_string(v);
	for (int i = 0; allowed[i]; i++)
		if (strcmp(s, allowed[i]) == 0 && strlen(s) == (size_t) json_object_get_string_len(v))
			return s;
	buf_reset(&c->msg);
	buf_str(&c->msg, "must be one of ");
	for (int i = 0; allowed[i]; i++)
	{
		if (i > 0)
			buf_str(&c->msg, ", ");
		buf_str(&c->msg, allowed[i]);
	}
	saved = push_key(c, key);
	problem_text(c, c->msg.data ? c->msg.data : "");
	pop(c, saved);
	return NULL;
}

/* An integer in [min, max]; floats with a fraction and huge values refused. */
static void
int_field(Checker *c, struct json_object *obj, const char *key, bool required,
		  int64_t min, int64_t max)
{
	struct json_object *v = field(c, obj, key, json_type_double, required);
	size_t		saved;

	if (v == NULL)
		return;
	saved = push_key(c, key);
	if (json_object_get_type(v) == json_type_double)
	{
		double		d = json_object_get_double(v);

		if (!isfinite(d) || d != floor(d) || d < (double) min || d > (double) max)
			problem(c, "must be an integer between %" PRId64 " and %" PRId64, min, max);
	}
	else
	{
		int64_t		i;

		errno = 0;
		i = json_object_get_int64(v);
		/* json-c saturates out-of-range integers at INT64_MIN/MAX */
		if (i < min || i > max || i == INT64_MAX || i == INT64_MIN)
			problem(c, "must be an integer between %" PRId64 " and %" PRId64, min, max);
	}
	pop(c, saved);
}

static void
num_field(Checker *c, struct json_object *obj, const char *key, bool required,
		  double min, double max)
{
	struct json_object *v = field(c, obj, key, json_type_double, required);
	size_t		saved;
	double		d;

	if (v == NULL)
		return;
	saved = push_key(c, key);
	if (json_object_get_type(v) == json_type_int)
	{
		int64_t		i = json_object_get_int64(v);

		d = (i == INT64_MAX || i == INT64_MIN) ? INFINITY : (double) i;
	}
	else
		d = json_object_get_double(v);
	if (!isfinite(d) || d < min || d > max)
		problem(c, "must be a number between %g and %g", min, max);
	pop(c, saved);
}

static void
obj_any_field(Checker *c, struct json_object *obj, const char *key, json_type want)
{
	struct json_object *v = field(c, obj, key, want, false);
	size_t		saved;

	if (v == NULL)
		return;
	saved = push_key(c, key);
	check_any(c, v);
	pop(c, saved);
}

static void
datetime_field(Checker *c, struct json_object *obj, const char *key, bool required)
{
	str_field(c, obj, key, required, 1, 64, RE_DATE_TIME, "must be an ISO-8601 date-time");
}

/* An array field with a cap on its length; returns it, or NULL. */
static struct json_object *
array_field(Checker *c, struct json_object *obj, const char *key, bool required,
			size_t minitems, size_t maxitems)
{
	struct json_object *v = field(c, obj, key, json_type_array, required);
	size_t		n;
	size_t		saved;

	if (v == NULL)
		return NULL;
	n = json_object_array_length(v);
	if (n < minitems || n > maxitems)
	{
		saved = push_key(c, key);
		if (n < minitems)
			problem(c, "must have at least %zu item%s", minitems, minitems == 1 ? "" : "s");
		else
			problem(c, "must have at most %zu items", maxitems);
		pop(c, saved);
		return NULL;
	}
	return v;
}

static void
string_list_field(Checker *c, struct json_object *obj, const char *key, int maxlen)
{
	struct json_object *arr = array_field(c, obj, key, false, 0, MAX_LIST);
	size_t		saved;

	if (arr == NULL)
		return;
	saved = push_key(c, key);
	for (size_t i = 0; i < json_object_array_length(arr); i++)
	{
		struct json_object *e = json_object_array_get_idx(arr, i);
		size_t		s = push_index(c, i);

		if (json_object_get_type(e) != json_type_string)
			problem(c, "must be a string, not %s", type_name(json_object_get_type(e)));
		else
			check_text(c, json_object_get_string(e), json_object_get_string_len(e), maxlen);
		pop(c, s);
	}
	pop(c, saved);
}

/* Requires the value at the current path to be an object. */
static bool
is_object(Checker *c, struct json_object *v)
{
	if (json_object_get_type(v) != json_type_object)
	{
		problem(c, "must be an object, not %s", type_name(json_object_get_type(v)));
		return false;
	}
	return true;
}

/* ---------- schema-v1: ServiceMetadataSubmission ---------- */

static void
check_service(Checker *c, struct json_object *svc)
{
	struct json_object *by;

	str_field(c, svc, "id", true, 1, 128, RE_SERVICE_ID, "must match ^[a-z0-9]+$");
	str_field(c, svc, "name", true, 2, 63, RE_SERVICE_NAME,
			  "must be lower-case letters, digits and inner hyphens (DNS label)");
	str_field(c, svc, "version", false, 1, 128, RE_SEMVER, "must be a semantic version (e.g. 1.2.3)");
	/* any environment name (the original accepted only three) */
	str_field(c, svc, "environment", false, 1, 64, RE_ENVIRONMENT,
			  "must be letters, digits, '.', '_' or '-'");
	enum_field(c, svc, "deploymentType", false, deployment_types);
	str_field(c, svc, "language", true, 0, 64, NULL, NULL);
	str_field(c, svc, "framework", true, 0, 64, NULL, NULL);
	str_field(c, svc, "runtime", false, 0, 128, NULL, NULL);
	str_field(c, svc, "description", false, 0, MAX_TEXT, NULL, NULL);
	str_field(c, svc, "repository", false, 1, MAX_PATH, RE_URI, "must be a URI");
	str_field(c, svc, "healthCheckUrl", false, 0, MAX_PATH, RE_URI_REF, "must be a URI reference");
	enum_field(c, svc, "status", true, service_statuses);
	datetime_field(c, svc, "firstSeen", false);
	datetime_field(c, svc, "lastSeen", false);
	by = field(c, svc, "discoveredBy", json_type_object, true);
	if (by)
	{
		size_t		s = push_key(c, "discoveredBy");

		str_field(c, by, "pluginName", true, 0, 256, NULL, NULL);
		str_field(c, by, "pluginVersion", true, 0, 128, NULL, NULL);
		str_field(c, by, "schemaVersion", true, 0, 128, NULL, NULL);
		pop(c, s);
	}
	obj_any_field(c, svc, "metadata", json_type_object);
}

static void
check_parameters(Checker *c, struct json_object *route, const char *key)
{
	struct json_object *arr = array_field(c, route, key, false, 0, MAX_LIST);
	size_t		saved;

	if (arr == NULL)
		return;
	saved = push_key(c, key);
	for (size_t i = 0; i < json_object_array_length(arr); i++)
	{
		struct json_object *p = json_object_array_get_idx(arr, i);
		size_t		s = push_index(c, i);

		if (is_object(c, p))
		{
			str_field(c, p, "name", true, 1, 256, NULL, NULL);
			field(c, p, "required", json_type_boolean, true);
			enum_field(c, p, "type", false, param_types);
			str_field(c, p, "description", false, 0, MAX_TEXT, NULL, NULL);
			if (json_object_object_get_ex(p, "example", NULL))
			{
				struct json_object *ex = json_object_object_get(p, "example");
				size_t		s2 = push_key(c, "example");

				check_any(c, ex);
				pop(c, s2);
			}
		}
		pop(c, s);
	}
	pop(c, saved);
}

static void
check_route(Checker *c, struct json_object *r)
{
	struct json_object *loc;

	str_field(c, r, "id", true, 0, 128, NULL, NULL);
	str_field(c, r, "serviceId", true, 0, 128, NULL, NULL);
	enum_field(c, r, "method", true, route_methods);
	str_field(c, r, "path", true, 1, MAX_PATH, RE_ABSOLUTE_PATH, "must start with /");
	string_list_field(c, r, "middlewareChain", 256);
	loc = field(c, r, "handlerLocation", json_type_object, false);
	if (loc)
	{
		size_t		s = push_key(c, "handlerLocation");

		str_field(c, loc, "file", false, 0, MAX_PATH, NULL, NULL);
		int_field(c, loc, "line", false, 1, INT32_MAX);
		str_field(c, loc, "function", false, 0, 512, NULL, NULL);
		pop(c, s);
	}
	check_parameters(c, r, "pathParameters");
	check_parameters(c, r, "queryParameters");
	obj_any_field(c, r, "requestSchema", json_type_object);
	obj_any_field(c, r, "responseSchema", json_type_object);
	obj_any_field(c, r, "metadata", json_type_object);
	str_field(c, r, "description", false, 0, MAX_TEXT, NULL, NULL);
	string_list_field(c, r, "tags", 128);
	num_field(c, r, "avgResponseTimeMs", false, 0, 1e12);
	num_field(c, r, "callFrequency", false, 0, 1e15);
	num_field(c, r, "errorRate", false, 0, 100);
	datetime_field(c, r, "firstSeen", false);
	datetime_field(c, r, "lastSeen", false);
}

static void
check_dependency(Checker *c, struct json_object *d)
{
	str_field(c, d, "id", true, 0, 128, NULL, NULL);
	str_field(c, d, "serviceId", true, 0, 128, NULL, NULL);
	str_field(c, d, "packageName", true, 1, 214, NULL, NULL);
	/* may be empty or odd: the plugin strips one range character */
	str_field(c, d, "version", true, 0, 256, NULL, NULL);
	str_field(c, d, "versionRange", false, 0, 256, NULL, NULL);
	enum_field(c, d, "dependencyType", true, dependency_types);
	str_field(c, d, "scope", false, 0, 214, NULL, NULL);
	int_field(c, d, "installedSize", false, 0, (int64_t) 1 << 50);
	int_field(c, d, "publishSize", false, 0, (int64_t) 1 << 50);
	int_field(c, d, "fileCount", false, 0, INT32_MAX);
	field(c, d, "hasVulnerabilities", json_type_boolean, false);
	int_field(c, d, "vulnerabilityCount", false, 0, INT32_MAX);
	enum_field(c, d, "highestSeverity", false, severities);
	str_field(c, d, "description", false, 0, MAX_TEXT, NULL, NULL);
	str_field(c, d, "license", false, 0, 256, NULL, NULL);
	str_field(c, d, "repository", false, 1, MAX_PATH, RE_URI, "must be a URI");
	str_field(c, d, "homepage", false, 1, MAX_PATH, RE_URI, "must be a URI");
	datetime_field(c, d, "firstSeen", false);
	datetime_field(c, d, "lastSeen", false);
	obj_any_field(c, d, "metadata", json_type_object);
}

/* Checks each element of an array of objects with fn. */
static void
check_items(Checker *c, struct json_object *arr, const char *key,
			void (*fn) (Checker *, struct json_object *))
{
	size_t		saved = push_key(c, key);

	for (size_t i = 0; i < json_object_array_length(arr); i++)
	{
		struct json_object *e = json_object_array_get_idx(arr, i);
		size_t		s = push_index(c, i);

		if (is_object(c, e))
			fn(c, e);
		pop(c, s);
	}
	pop(c, saved);
}

static void
check_metadata(Checker *c, struct json_object *root)
{
	struct json_object *svc = field(c, root, "service", json_type_object, true);
	struct json_object *arr;

	if (svc)
	{
		size_t		s = push_key(c, "service");

		check_service(c, svc);
		pop(c, s);
	}
	if ((arr = array_field(c, root, "routes", false, 0, MAX_ROUTES)))
		check_items(c, arr, "routes", check_route);
	if ((arr = array_field(c, root, "dependencies", false, 0, MAX_DEPENDENCIES)))
		check_items(c, arr, "dependencies", check_dependency);
}

/* ---------- traces, errors, breadcrumbs, legacy metrics ---------- */

static void
check_trace(Checker *c, struct json_object *t)
{
	str_field(c, t, "service_id", true, 1, 128, NULL, NULL);
	str_field(c, t, "id", false, 0, 128, NULL, NULL);
	str_field(c, t, "operation_name", false, 0, MAX_PATH + 32, NULL, NULL);
	enum_field(c, t, "operation_type", false, operation_types);
	datetime_field(c, t, "start_time", false);
	datetime_field(c, t, "timestamp", false);
	num_field(c, t, "duration_ms", true, 0, MAX_DURATION_MS);
	int_field(c, t, "status_code", false, 0, 999);
	str_field(c, t, "method", false, 1, 16, RE_HTTP_METHOD, "must be an upper-case HTTP method");
	str_field(c, t, "path", false, 1, MAX_PATH, RE_ABSOLUTE_PATH, "must start with /");
	str_field(c, t, "caller_service", false, 1, 128, NULL, NULL);
	str_field(c, t, "user_agent", false, 0, MAX_STR, NULL, NULL);
	str_field(c, t, "session_id", false, 0, 128, NULL, NULL);
	obj_any_field(c, t, "breakdown", json_type_object);
	obj_any_field(c, t, "metadata", json_type_object);
}

static void
check_frame(Checker *c, struct json_object *f)
{
	str_field(c, f, "filename", false, 0, MAX_PATH, NULL, NULL);
	int_field(c, f, "line_number", false, 0, INT32_MAX);
	int_field(c, f, "column_number", false, 0, INT32_MAX);
	str_field(c, f, "function_name", false, 0, MAX_STR, NULL, NULL);
}

static void
check_error(Checker *c, struct json_object *e)
{
	struct json_object *frames;

	str_field(c, e, "service_id", true, 1, 128, NULL, NULL);
	str_field(c, e, "environment", true, 1, 64, RE_ENVIRONMENT,
			  "must be letters, digits, '.', '_' or '-'");
	str_field(c, e, "error_type", true, 1, 256, NULL, NULL);
	str_field(c, e, "message", true, 0, MAX_TEXT, NULL, NULL);
	if ((frames = array_field(c, e, "stack_trace", false, 0, MAX_FRAMES)))
		check_items(c, frames, "stack_trace", check_frame);
	str_field(c, e, "raw_stack", false, 0, 65536, NULL, NULL);
	obj_any_field(c, e, "context", json_type_object);
	datetime_field(c, e, "timestamp", false);
	str_field(c, e, "session_id", false, 1, 128, NULL, NULL);
	str_field(c, e, "id", false, 0, 128, NULL, NULL);
}

static void
check_breadcrumb(Checker *c, struct json_object *b)
{
	str_field(c, b, "session_id", true, 1, 128, NULL, NULL);
	enum_field(c, b, "category", true, crumb_categories);
	str_field(c, b, "message", true, 0, 4096, NULL, NULL);
	enum_field(c, b, "level", true, crumb_levels);
	if (json_object_object_get_ex(b, "data", NULL))
	{
		size_t		s = push_key(c, "data");

		check_any(c, json_object_object_get(b, "data"));
		pop(c, s);
	}
	datetime_field(c, b, "timestamp", false);
}

static void
check_legacy_metric(Checker *c, struct json_object *m)
{
	struct json_object *ts;

	str_field(c, m, "method", true, 1, 16, RE_HTTP_METHOD, "must be an upper-case HTTP method");
	str_field(c, m, "path", true, 1, MAX_PATH, RE_ABSOLUTE_PATH, "must start with /");
	int_field(c, m, "statusCode", true, 0, 999);
	num_field(c, m, "responseTime", true, 0, MAX_DURATION_MS);
	str_field(c, m, "callerServiceName", false, 1, 128, NULL, NULL);
	/* the old tracker sent either an ISO string or epoch milliseconds */
	if (json_object_object_get_ex(m, "timestamp", &ts) && ts != NULL &&
		json_object_get_type(ts) == json_type_string)
		datetime_field(c, m, "timestamp", false);
	else
		num_field(c, m, "timestamp", false, 0, 1e14);
}

static void
check_batch(Checker *c, struct json_object *root, const char *key, size_t max,
			void (*fn) (Checker *, struct json_object *))
{
	struct json_object *arr = array_field(c, root, key, true, 1, max);

	if (arr)
		check_items(c, arr, key, fn);
}

/* ---------- parsing and the entry points ---------- */

/* Sets the answer: status, code, message and details. */
static IngestOutcome
answer(Checker *c, IngestOutcome outcome, int status, const char *code, const char *message)
{
	c->outcome = outcome;
	c->status = status;
	c->code = code;
	snprintf(c->message, sizeof(c->message), "%s", message);
	return outcome;
}

/* 400 invalid_json with one problem at "body": "is not valid JSON: <why>". */
static IngestOutcome
invalid_json(Checker *c)
{
	buf_reset(&c->details);
	buf_str(&c->details, "[{\"path\":\"body\",\"message\":");
	buf_json_string(&c->details, c->msg.data ? c->msg.data : "");
	buf_str(&c->details, "}]");
	return answer(c, INGEST_INVALID_JSON, 400, "invalid_json", "the request body is not valid JSON");
}

/*
 * Parses body with json-c under Lattice's limits, then has PostgreSQL's
 * lexer (what the body will be cast with) confirm it.  Sets c->root, or
 * answers (400, 413) when the body is not one acceptable JSON document.
 */
static bool
parse_body(Checker *c, const char *data, size_t len)
{
	struct json_tokener *tok;
	enum json_tokener_error jerr;
	size_t		end;
	const char *why;

	if (data == NULL || len == 0)
	{
		buf_str(&c->details, "[{\"path\":\"body\",\"message\":\"is required\"}]");
		answer(c, INGEST_EMPTY, 400, "validation_failed", "the request body is empty");
		return false;
	}
	if (len > INGEST_MAX_BODY)
	{
		buf_printf(&c->details, "{\"max_bytes\":%d}", INGEST_MAX_BODY);
		answer(c, INGEST_TOO_LARGE, 413, "too_large", "the request body is too large");
		return false;
	}

	tok = json_tokener_new_ex(INGEST_MAX_DEPTH);
	if (tok == NULL)
	{
		c->outcome = INGEST_OUT_OF_MEMORY;
		return false;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	c->root = json_tokener_parse_ex(tok, data, (int) len);
	jerr = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);

	if (jerr == json_tokener_continue)
		jerr = json_tokener_error_parse_eof;
	if (jerr != json_tokener_success || c->root == NULL || end != len)
	{
		if (c->root)
			json_object_put(c->root);
		c->root = NULL;
		if (jerr == json_tokener_error_depth)
			why = "nesting is deeper than 32 levels";
		else if (jerr == json_tokener_error_parse_utf8_string)
			why = "is not valid UTF-8";
		else if (jerr != json_tokener_success)
			why = json_tokener_error_desc(jerr);
		else
			why = "has bytes after the JSON document";
		buf_reset(&c->msg);
		buf_printf(&c->msg, "is not valid JSON: %s (at byte %zu)", why, end);
		invalid_json(c);
		return false;
	}

	/*
	 * json-c tolerates some non-JSON even in strict mode (single quotes) and
	 * replaces lone surrogates; PostgreSQL's lexer is RFC 8259 to the letter
	 * and is what the body will be cast with, so it has the last word.  It
	 * runs second: json-c has already bounded the depth it recurses to.
	 */
	why = c->hooks->json_error(data, len);
	if (why != NULL)
	{
		json_object_put(c->root);
		c->root = NULL;
		buf_reset(&c->msg);
		buf_printf(&c->msg, "is not valid JSON: %s", why);
		invalid_json(c);
		return false;
	}
	return true;
}

/* Validates root as `kind`; problems are collected in c.  False: no such kind. */
static bool
check_kind(Checker *c, const char *kind, struct json_object *root)
{
	if (strcmp(kind, "error") != 0 && !is_object(c, root))
		return true;
	if (strcmp(kind, "metadata") == 0)
		check_metadata(c, root);
	else if (strcmp(kind, "traces") == 0)
		check_batch(c, root, "traces", MAX_BATCH, check_trace);
	else if (strcmp(kind, "errors") == 0)
		check_batch(c, root, "errors", MAX_BATCH, check_error);
	else if (strcmp(kind, "error") == 0)
	{
		if (is_object(c, root))
			check_error(c, root);
	}
	else if (strcmp(kind, "breadcrumbs") == 0)
		check_batch(c, root, "breadcrumbs", MAX_BREADCRUMBS, check_breadcrumb);
	else if (strcmp(kind, "metrics") == 0)
	{
		str_field(c, root, "serviceName", true, 1, 128, NULL, NULL);
		check_batch(c, root, "metrics", MAX_BATCH, check_legacy_metric);
	}
	else
		return false;
	return true;
}

static bool
any_oom(const Checker *c)
{
	return c->details.oom || c->path.oom || c->problems.oom || c->msg.oom;
}

void
ingest_validation_init(IngestValidation *v, const IngestHooks *hooks)
{
	memset(v, 0, sizeof(*v));
	v->hooks = hooks;
}

IngestOutcome
ingest_validate(IngestValidation *v, const char *kind, const char *body, size_t len)
{
	Checker    *c = v;
	bool		known;

	if (!parse_body(c, body, len))
		return any_oom(c) ? (c->outcome = INGEST_OUT_OF_MEMORY) : c->outcome;

	known = check_kind(c, kind, c->root);
	/* json-c allocates with malloc: the tree goes as soon as it is checked */
	json_object_put(c->root);
	c->root = NULL;

	if (any_oom(c))
		return c->outcome = INGEST_OUT_OF_MEMORY;
	if (!known)
		return c->outcome = INGEST_UNKNOWN_KIND;
	if (c->nproblems == 0)
		return c->outcome = INGEST_OK;

	buf_printf(&c->details, "[%s", c->problems.data);
	if (c->nproblems > INGEST_MAX_PROBLEMS)
		buf_printf(&c->details, ",{\"path\":\"body\",\"message\":\"%d more problems not listed\"}",
				   c->nproblems - INGEST_MAX_PROBLEMS);
	buf_char(&c->details, ']');
	if (any_oom(c))
		return c->outcome = INGEST_OUT_OF_MEMORY;
	answer(c, INGEST_INVALID, 400, "validation_failed", "");
	snprintf(c->message, sizeof(c->message), "the request body is invalid (%d problem%s)",
			 c->nproblems, c->nproblems == 1 ? "" : "s");
	return c->outcome;
}

void
ingest_validation_free(IngestValidation *v)
{
	if (v->root)
		json_object_put(v->root);
	v->root = NULL;
	buf_free(&v->details);
	buf_free(&v->path);
	buf_free(&v->problems);
	buf_free(&v->msg);
}
