/*
 * ingest_validate_buf.c
 *		The growing strings of ingest validation: its path, its problems and
 *		its answer.
 *
 * Plain malloc, no PostgreSQL: when an allocation fails the buffer is marked
 * (oom) and further appends do nothing, so the validation runs to its end
 * and reports out of memory once.  JSON strings are escaped as PostgreSQL's
 * escape_json() does, so the answer reads as the backend would write it.
 */
#include "ingest_validate_buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool
buf_reserve(IngestBuf *b, size_t more)
{
	size_t need;
	size_t cap;
	char *p;

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

void
ingest_buf_str(IngestBuf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void
ingest_buf_char(IngestBuf *b, char ch)
{
	if (!buf_reserve(b, 1))
		return;
	b->data[b->len++] = ch;
	b->data[b->len] = '\0';
}

void
ingest_buf_truncate(IngestBuf *b, size_t len)
{
	if (b->data == NULL || len > b->len)
		return;
	b->len = len;
	b->data[len] = '\0';
}

void
ingest_buf_reset(IngestBuf *b)
{
	ingest_buf_truncate(b, 0);
}

void
ingest_buf_vprintf(IngestBuf *b, const char *fmt, va_list args)
{
	size_t avail;
	int n;
	va_list copy;

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

void
ingest_buf_printf(IngestBuf *b, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	ingest_buf_vprintf(b, fmt, args);
	va_end(args);
}

/* A JSON string, escaped as PostgreSQL's escape_json() does (up to a NUL). */
void
ingest_buf_json_string(IngestBuf *b, const char *s)
{
	ingest_buf_char(b, '"');
	for (const char *p = s; *p; p++)
	{
		switch (*p)
		{
			case '\b':
				ingest_buf_str(b, "\\b");
				break;
			case '\f':
				ingest_buf_str(b, "\\f");
				break;
			case '\n':
				ingest_buf_str(b, "\\n");
				break;
			case '\r':
				ingest_buf_str(b, "\\r");
				break;
			case '\t':
				ingest_buf_str(b, "\\t");
				break;
			case '"':
				ingest_buf_str(b, "\\\"");
				break;
			case '\\':
				ingest_buf_str(b, "\\\\");
				break;
			default:
				if ((unsigned char) *p < ' ')
					ingest_buf_printf(b, "\\u%04x", (int) *p);
				else
					ingest_buf_char(b, *p);
				break;
		}
	}
	ingest_buf_char(b, '"');
}

void
ingest_buf_free(IngestBuf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}
