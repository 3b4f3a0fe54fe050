/*
 * libFuzzer target: the OTLP/JSON span checker and flattener
 * (extension/src/otlp_flatten_core.c), as lattice.otlp_flatten runs it.
 *
 * Input: an export request in OTLP/JSON (seeds: the real SDK's requests in
 * tests/fixtures/otlp/ and the shim's protobuf decoding of them).
 * Properties: a refused document says where; an accepted one flattens to
 * JSON whose every span has ids of the right length in hex, a start inside
 * the window and a duration of at most a day, and whose rejected count is
 * never negative; the stack-trace reader survives any text too.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "otlp_flatten_core.h"

#define NOT_BEFORE INT64_C(1700000000000000000)
#define NOT_AFTER  INT64_C(1900000000000000000)

static const char *
str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

static void
check_hex(const char *s, size_t len)
{
	if (s == NULL || strlen(s) != len || strspn(s, "0123456789abcdefABCDEF") != len)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	char *flat = otlp_flatten((const char *) data, size, NOT_BEFORE, NOT_AFTER, err, sizeof(err));
	struct json_object *doc, *spans, *v;
	char *text;

	if (flat == NULL)
	{
		if (strstr(err, ": ") == NULL)
			abort();
	}
	else
	{
		doc = json_tokener_parse(flat);
		if (doc == NULL || !json_object_object_get_ex(doc, "spans", &spans) ||
			!json_object_object_get_ex(doc, "rejected", &v) || json_object_get_int(v) < 0)
			abort();
		for (size_t i = 0; i < json_object_array_length(spans); i++)
		{
			struct json_object *s = json_object_array_get_idx(spans, i);
			double start, ms;

			check_hex(str(s, "trace"), 32);
			check_hex(str(s, "span"), 16);
			if (str(s, "parent"))
				check_hex(str(s, "parent"), 16);
			if (str(s, "service") == NULL || strlen(str(s, "service")) > OTLP_MAX_SERVICE)
				abort();
			json_object_object_get_ex(s, "start", &v);
			start = json_object_get_double(v);
			json_object_object_get_ex(s, "ms", &v);
			ms = json_object_get_double(v);
			if (start < NOT_BEFORE / 1e9 - 1 || start > NOT_AFTER / 1e9 + 1 || ms < 0 || ms > 86400e3)
				abort();
		}
		json_object_put(doc);
		free(flat);
	}

	/* the stack-trace reader, on the input as text */
	text = malloc(size + 1);
	if (text == NULL)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	flat = otlp_stack_frames(text);
	if (flat == NULL || (doc = json_tokener_parse(flat)) == NULL ||
		!json_object_is_type(doc, json_type_array))
		abort();
	json_object_put(doc);
	free(flat);
	free(text);
	return 0;
}
