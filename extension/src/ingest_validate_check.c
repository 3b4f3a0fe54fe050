/*
 * ingest_validate_check.c
 *		The checks ingest_validate_schema.c is written with: a field's
 *		presence, type, length, range and pattern, and the problems found,
 *		each at its JSON path.
 *
 * They work on the validation itself (IngestValidation, as Checker): the
 * path of the value being checked, the problems listed so far (at most
 * INGEST_MAX_PROBLEMS, the rest counted) and the caller's regex hook.  Every
 * string that reaches the database is checked to be valid UTF-8 without NUL
 * and bounded in characters.
 */
#include "ingest_validate_check.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "ingest_validate_pattern.h"
#include "ingest_validate_utf8.h"

/* ---------- problems and paths ---------- */

/* Adds one problem at the current path: {"path": ..., "message": msg}. */
static void
problem_text(Checker *c, const char *msg)
{
	c->nproblems++;
	if (c->nproblems > INGEST_MAX_PROBLEMS)
		return;
	if (c->problems.len > 0)
		ingest_buf_char(&c->problems, ',');
	ingest_buf_str(&c->problems, "{\"path\":");
	ingest_buf_json_string(&c->problems, c->path.len > 0 ? c->path.data : "body");
	ingest_buf_str(&c->problems, ",\"message\":");
	ingest_buf_json_string(&c->problems, msg);
	ingest_buf_char(&c->problems, '}');
}

static void problem(Checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
problem(Checker *c, const char *fmt, ...)
{
	va_list args;

	if (c->nproblems >= INGEST_MAX_PROBLEMS)
	{
		c->nproblems++; /* counted, not listed: no need for the text */
		return;
	}
	ingest_buf_reset(&c->msg);
	va_start(args, fmt);
	ingest_buf_vprintf(&c->msg, fmt, args);
	va_end(args);
	problem_text(c, c->msg.data ? c->msg.data : "");
}

size_t
ingest_push_key(Checker *c, const char *key)
{
	size_t saved = c->path.len;

	if (c->path.len > 0)
		ingest_buf_char(&c->path, '.');
	ingest_buf_str(&c->path, key);
	return saved;
}

size_t
ingest_push_index(Checker *c, size_t i)
{
	size_t saved = c->path.len;

	ingest_buf_printf(&c->path, "[%zu]", i);
	return saved;
}

void
ingest_pop(Checker *c, size_t saved)
{
	ingest_buf_truncate(&c->path, saved);
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
	bool handled;
	bool r = ingest_fast_match(s, len, pattern, &handled);

	if (handled)
		return r;
	return c->hooks->regex_match(s, len, pattern);
}

/* Every string that reaches the database: valid UTF-8, no NUL, bounded. */
static bool
check_text(Checker *c, const char *s, int len, int maxlen)
{
	int chars;

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
void
ingest_check_any(Checker *c, struct json_object *v)
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
				size_t n = json_object_array_length(v);

				for (size_t i = 0; i < n; i++)
				{
					size_t s = ingest_push_index(c, i);

					ingest_check_any(c, json_object_array_get_idx(v, i));
					ingest_pop(c, s);
				}
				break;
			}
		case json_type_object:
			{
				json_object_object_foreach(v, key, val)
				{
					size_t s = ingest_push_key(c, key);

					check_text(c, key, strlen(key), INGEST_MAX_STR);
					ingest_check_any(c, val);
					ingest_pop(c, s);
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
struct json_object *
ingest_field(Checker *c, struct json_object *obj, const char *key, json_type want, bool required)
{
	struct json_object *v = NULL;
	int s;
	json_type t;

	if (!json_object_object_get_ex(obj, key, &v) || v == NULL)
	{
		if (required)
		{
			s = ingest_push_key(c, key);
			problem(c, "is required");
			ingest_pop(c, s);
		}
		return NULL;
	}
	t = json_object_get_type(v);
	if (want == json_type_double && (t == json_type_int || t == json_type_double))
		return v;
	if (t != want)
	{
		s = ingest_push_key(c, key);
		problem(c, "must be %s, not %s", type_name(want), type_name(t));
		ingest_pop(c, s);
		return NULL;
	}
	return v;
}

const char *
ingest_str_field(Checker *c, struct json_object *obj, const char *key, bool required, int minlen,
				 int maxlen, const char *pattern, const char *pattern_desc)
{
	struct json_object *v = ingest_field(c, obj, key, json_type_string, required);
	const char *s;
	int len;
	size_t saved;
	bool ok = true;

	if (v == NULL)
		return NULL;
	s = json_object_get_string(v);
	len = json_object_get_string_len(v);
	saved = ingest_push_key(c, key);
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
	ingest_pop(c, saved);
	return ok ? s : NULL;
}

const char *
ingest_enum_field(Checker *c, struct json_object *obj, const char *key, bool required,
				  const char *const *allowed)
{
	struct json_object *v = ingest_field(c, obj, key, json_type_string, required);
	const char *s;
	size_t saved;

	if (v == NULL)
		return NULL;
	s = json_object_get_string(v);
	for (int i = 0; allowed[i]; i++)
		if (strcmp(s, allowed[i]) == 0 && strlen(s) == (size_t) json_object_get_string_len(v))
			return s;
	ingest_buf_reset(&c->msg);
	ingest_buf_str(&c->msg, "must be one of ");
	for (int i = 0; allowed[i]; i++)
	{
		if (i > 0)
			ingest_buf_str(&c->msg, ", ");
		ingest_buf_str(&c->msg, allowed[i]);
	}
	saved = ingest_push_key(c, key);
	problem_text(c, c->msg.data ? c->msg.data : "");
	ingest_pop(c, saved);
	return NULL;
}

/* An integer in [min, max]; floats with a fraction and huge values refused. */
void
ingest_int_field(Checker *c, struct json_object *obj, const char *key, bool required, int64_t min,
				 int64_t max)
{
	struct json_object *v = ingest_field(c, obj, key, json_type_double, required);
	size_t saved;

	if (v == NULL)
		return;
	saved = ingest_push_key(c, key);
	if (json_object_get_type(v) == json_type_double)
	{
		double d = json_object_get_double(v);

		if (!isfinite(d) || d != floor(d) || d < (double) min || d > (double) max)
			problem(c, "must be an integer between %" PRId64 " and %" PRId64, min, max);
	}
	else
	{
		int64_t i;

		errno = 0;
		i = json_object_get_int64(v);
		/* json-c saturates out-of-range integers at INT64_MIN/MAX */
		if (i < min || i > max || i == INT64_MAX || i == INT64_MIN)
			problem(c, "must be an integer between %" PRId64 " and %" PRId64, min, max);
	}
	ingest_pop(c, saved);
}

void
ingest_num_field(Checker *c, struct json_object *obj, const char *key, bool required, double min,
				 double max)
{
	struct json_object *v = ingest_field(c, obj, key, json_type_double, required);
	size_t saved;
	double d;

	if (v == NULL)
		return;
	saved = ingest_push_key(c, key);
	if (json_object_get_type(v) == json_type_int)
	{
		int64_t i = json_object_get_int64(v);

		d = (i == INT64_MAX || i == INT64_MIN) ? INFINITY : (double) i;
	}
	else
		d = json_object_get_double(v);
	if (!isfinite(d) || d < min || d > max)
		problem(c, "must be a number between %g and %g", min, max);
	ingest_pop(c, saved);
}

void
ingest_obj_any_field(Checker *c, struct json_object *obj, const char *key, json_type want)
{
	struct json_object *v = ingest_field(c, obj, key, want, false);
	size_t saved;

	if (v == NULL)
		return;
	saved = ingest_push_key(c, key);
	ingest_check_any(c, v);
	ingest_pop(c, saved);
}

void
ingest_datetime_field(Checker *c, struct json_object *obj, const char *key, bool required)
{
	ingest_str_field(c, obj, key, required, 1, 64, ingest_re_date_time, "must be an ISO-8601 date-time");
}

/* An array field with a cap on its length; returns it, or NULL. */
struct json_object *
ingest_array_field(Checker *c, struct json_object *obj, const char *key, bool required, size_t minitems,
				   size_t maxitems)
{
	struct json_object *v = ingest_field(c, obj, key, json_type_array, required);
	size_t n;
	size_t saved;

	if (v == NULL)
		return NULL;
	n = json_object_array_length(v);
	if (n < minitems || n > maxitems)
	{
		saved = ingest_push_key(c, key);
		if (n < minitems)
			problem(c, "must have at least %zu item%s", minitems, minitems == 1 ? "" : "s");
		else
			problem(c, "must have at most %zu items", maxitems);
		ingest_pop(c, saved);
		return NULL;
	}
	return v;
}

void
ingest_string_list_field(Checker *c, struct json_object *obj, const char *key, int maxlen)
{
	struct json_object *arr = ingest_array_field(c, obj, key, false, 0, INGEST_MAX_LIST);
	size_t saved;

	if (arr == NULL)
		return;
	saved = ingest_push_key(c, key);
	for (size_t i = 0; i < json_object_array_length(arr); i++)
	{
		struct json_object *e = json_object_array_get_idx(arr, i);
		size_t s = ingest_push_index(c, i);

		if (json_object_get_type(e) != json_type_string)
			problem(c, "must be a string, not %s", type_name(json_object_get_type(e)));
		else
			check_text(c, json_object_get_string(e), json_object_get_string_len(e), maxlen);
		ingest_pop(c, s);
	}
	ingest_pop(c, saved);
}

/* Requires the value at the current path to be an object. */
bool
ingest_is_object(Checker *c, struct json_object *v)
{
	if (json_object_get_type(v) != json_type_object)
	{
		problem(c, "must be an object, not %s", type_name(json_object_get_type(v)));
		return false;
	}
	return true;
}

/* Checks each element of an array of objects with fn. */
void
ingest_check_items(Checker *c, struct json_object *arr, const char *key,
				   void (*fn)(Checker *, struct json_object *))
{
	size_t saved = ingest_push_key(c, key);

	for (size_t i = 0; i < json_object_array_length(arr); i++)
	{
		struct json_object *e = json_object_array_get_idx(arr, i);
		size_t s = ingest_push_index(c, i);

		if (ingest_is_object(c, e))
			fn(c, e);
		ingest_pop(c, s);
	}
	ingest_pop(c, saved);
}
