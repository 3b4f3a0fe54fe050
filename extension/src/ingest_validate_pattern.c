/*
 * ingest_validate_pattern.c
 *		The C fast path of the frequent patterns of ingest validation.
 *
 * The patterns are EREs (ingest_validate_pattern.h).  The frequent ones
 * (dozens per body) are checked by the small C functions below, recognised
 * by address; the rare ones (semver, URIs) go to the caller's regex hook
 * (PostgreSQL's regex engine in the backend, which caches the compiled
 * expression).  The fuzz target checks that both agree.
 */
#include "ingest_validate_pattern.h"

#include <stddef.h>

const char ingest_re_service_id[] = "^[a-z0-9]+$";
const char ingest_re_service_name[] = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const char ingest_re_environment[] = "^[A-Za-z0-9][A-Za-z0-9_.-]*$";
const char ingest_re_date_time[] =
	"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$";
const char ingest_re_http_method[] = "^[A-Z]{1,16}$";
const char ingest_re_absolute_path[] = "^/";

const char *const ingest_fast_patterns[] = {ingest_re_service_id,
											ingest_re_service_name,
											ingest_re_environment,
											ingest_re_date_time,
											ingest_re_http_method,
											ingest_re_absolute_path,
											NULL};

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
	int i = 19;

	if (len < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
		!digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !digits(s + 11, 2) ||
		s[13] != ':' || !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
		return false;
	if (s[i] == '.')
	{
		int start = ++i;

		while (i < len && is_digit(s[i]))
			i++;
		if (i == start)
			return false;
	}
	if (i == len - 1)
		return s[i] == 'Z' || s[i] == 'z';
	return i == len - 6 && (s[i] == '+' || s[i] == '-') && digits(s + i + 1, 2) && s[i + 3] == ':' &&
		digits(s + i + 4, 2);
}

/* The C form of the frequent patterns; false in *handled for the others. */
bool
ingest_fast_match(const char *s, int len, const char *pattern, bool *handled)
{
	*handled = true;
	if (pattern == ingest_re_date_time)
		return is_date_time(s, len);
	if (pattern == ingest_re_absolute_path)
		return len > 0 && s[0] == '/';
	if (pattern == ingest_re_service_id)
	{
		for (int i = 0; i < len; i++)
			if (!is_lower_alnum(s[i]))
				return false;
		return len > 0;
	}
	if (pattern == ingest_re_service_name)
	{
		if (len == 0 || !is_lower_alnum(s[0]) || !is_lower_alnum(s[len - 1]))
			return false;
		for (int i = 0; i < len; i++)
			if (!is_lower_alnum(s[i]) && s[i] != '-')
				return false;
		return true;
	}
	if (pattern == ingest_re_environment)
	{
		if (len == 0 ||
			!(is_digit(s[0]) || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
			return false;
		for (int i = 0; i < len; i++)
			if (!(is_digit(s[i]) || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
				  s[i] == '_' || s[i] == '.' || s[i] == '-'))
				return false;
		return true;
	}
	if (pattern == ingest_re_http_method)
	{
		for (int i = 0; i < len; i++)
			if (s[i] < 'A' || s[i] > 'Z')
				return false;
		return len >= 1 && len <= 16;
	}
	*handled = false;
	return false;
}
