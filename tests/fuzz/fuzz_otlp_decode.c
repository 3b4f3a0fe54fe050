/*
 * libFuzzer target: the OTLP protobuf decoder (shim/otlp_json.c) and the
 * answer packers (shim/otlp_answer.c), as the shim runs them.
 *
 * Input: an ExportTraceServiceRequest body (seeds: the OpenTelemetry SDK's
 * recorded exports, tests/fixtures/otlp).  Properties, when it decodes: the
 * JSON is NUL-terminated, within its bound and parses with json-c (to its
 * end); the spans it holds are the spans counted written, and those plus the
 * rejected ones are the request's spans as protobuf-c counts them; the
 * rejection reasons add up; the message is empty exactly when nothing was
 * rejected.  The same bytes, as text, go through otlp_response_pack, and a
 * google.rpc.Status packed from them reads back the same.
 */
#define PROTOBUF_C__NO_DEPRECATED /* the deprecated spans are counted too */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "otlp_json.h"
#include "google/rpc/status.pb-c.h"
#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"

/* the spans of a request, as protobuf-c reads it */
static long
spans_in(const uint8_t *data, size_t size)
{
	Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest *req;
	long n = 0;

	req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(NULL, size,
																						   data);
	if (!req)
		abort(); /* it decoded in otlp_traces_to_json */
	for (size_t i = 0; i < req->n_resource_spans; i++)
	{
		Opentelemetry__Proto__Trace__V1__ResourceSpans *rs = req->resource_spans[i];

		for (size_t j = 0; j < rs->n_scope_spans; j++)
			n += (long) rs->scope_spans[j]->n_spans;
		for (size_t j = 0; j < rs->n_instrumentation_library_spans; j++)
			n += (long) rs->instrumentation_library_spans[j]->n_spans;
	}
	opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req, NULL);
	return n;
}

/* the spans of the JSON: resourceSpans[].scopeSpans[].spans[] */
static long
spans_out(json_object *root)
{
	json_object *rss, *sss, *spans;
	long n = 0;

	if (!json_object_object_get_ex(root, "resourceSpans", &rss))
		return 0;
	for (size_t i = 0; i < json_object_array_length(rss); i++)
	{
		if (!json_object_object_get_ex(json_object_array_get_idx(rss, i), "scopeSpans", &sss))
			continue;
		for (size_t j = 0; j < json_object_array_length(sss); j++)
			if (json_object_object_get_ex(json_object_array_get_idx(sss, j), "spans", &spans))
				n += (long) json_object_array_length(spans);
	}
	return n;
}

static void
check_decoded(const uint8_t *data, size_t size, size_t json_max, const struct otlp_decoded *d)
{
	json_tokener *tok;
	json_object *root;

	if (!d->json || strlen(d->json) != d->len || d->len > json_max)
		abort();
	if (d->rejected_spans != d->rejected_utf8 + d->rejected_depth || d->rejected_spans < 0 ||
		d->spans < 0)
		abort();
	if ((d->rejected_spans == 0) != (d->message[0] == '\0'))
		abort();

	/* nesting: 4 levels per AnyValue level, and the span's own */
	tok = json_tokener_new_ex(4 * OTLP_ANY_DEPTH_MAX + 32);
	root = json_tokener_parse_ex(tok, d->json, (int) d->len + 1);
	if (!root || json_tokener_get_error(tok) != json_tokener_success ||
		!json_object_is_type(root, json_type_object))
	{
		fprintf(stderr, "not JSON: %s\n%.2000s\n", json_tokener_error_desc(json_tokener_get_error(tok)),
				d->json);
		abort();
	}
	if (spans_out(root) != d->spans || d->spans + d->rejected_spans != spans_in(data, size))
		abort();
	json_object_put(root);
	json_tokener_free(tok);
}

static void
check_status(const uint8_t *data, size_t size)
{
	char message[256];
	size_t n = size < 200 ? size : 200, len;
	uint8_t *pb;
	Google__Rpc__Status *st;

	memcpy(message, data, n);
	message[n] = '\0';
	pb = otlp_status_pack(400 + (size % 200), "fuzz_code", message, &len);
	if (!pb)
		return;
	st = google__rpc__status__unpack(NULL, len, pb);
	if (!st || st->code != otlp_grpc_code(400 + (int) (size % 200)) ||
		strncmp(st->message, "fuzz_code: ", 11) != 0 || strcmp(st->message + 11, message) != 0)
		abort();
	google__rpc__status__free_unpacked(st, NULL);
	free(pb);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct otlp_decoded d;
	size_t json_max = 4 * size + 64; /* some inputs hit the bound */
	char *text;
	size_t len;
	bool shape_ok;
	uint8_t *pb;

	if (otlp_traces_to_json(data, size, json_max, &d) == OTLP_DECODED)
	{
		check_decoded(data, size, json_max, &d);
		free(d.json);
	}
	else if (d.json)
		abort();

	text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	pb = otlp_response_pack(text, &len, &shape_ok);
	if (pb)
	{
		Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse *resp =
			opentelemetry__proto__collector__trace__v1__export_trace_service_response__unpack(NULL, len,
																							  pb);

		if (!resp)
			abort();
		opentelemetry__proto__collector__trace__v1__export_trace_service_response__free_unpacked(resp,
																								 NULL);
		free(pb);
	}
	free(text);
	check_status(data, size);
	return 0;
}
