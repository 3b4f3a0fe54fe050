/*
 * otlp_flatten_core.h
 *		OTLP/JSON trace export requests, checked and flattened into the few
 *		fields the mapping reads (docs/opentelemetry.md).
 *
 * Pure C on json-c, nothing of PostgreSQL: tests/fuzz/ links it as it is.
 */
#ifndef OTLP_FLATTEN_CORE_H
#define OTLP_FLATTEN_CORE_H

#include <stddef.h>
#include <stdint.h>

/* Limits; a span beyond one is rejected (counted), the rest accepted. */
#define OTLP_MAX_SPANS		  10000 /* per request */
#define OTLP_MAX_ATTRIBUTES	  128	/* per span, per resource */
#define OTLP_MAX_SERVICE	  128	/* bytes, as the plugin's service names */
#define OTLP_MAX_ENVIRONMENT  64
#define OTLP_MAX_NAME		  1024 /* span name, route, path */
#define OTLP_MAX_PEER		  255  /* peer, database, queue names */
#define OTLP_MAX_SHORT		  64   /* method, versions, languages, systems */
#define OTLP_MAX_EXCEPTIONS	  16   /* exception events read per span */
#define OTLP_MAX_MESSAGE	  4096 /* exception messages are cut here */
#define OTLP_MAX_STACK_FRAMES 64
#define OTLP_MAX_DURATION_NS  (INT64_C(86400) * 1000000000)
#define OTLP_MAX_DEPTH		  32 /* JSON nesting */

/*
 * Flattens one ExportTraceServiceRequest in OTLP/JSON.  Spans are kept when
 * their start lies in [not_before_ns, not_after_ns] (Unix nanoseconds).
 * Returns malloc'd JSON text:
 *   {"spans": [{i (1, 2, ...), service, environment, version, language, runtime, kind,
 *               trace, span, parent, name, start (Unix seconds), ms,
 *               status (HTTP), failed, method, route, target, peer, db,
 *               db_name, mq, destination, exceptions: [{type, message,
 *               frames, at}]}],
 *    "rejected": n, "message": first reason or null}
 * or NULL when the document itself is unusable, with a reason ("<path>:
 * <message>") in err.
 */
extern char *otlp_flatten(const char *json, size_t len, int64_t not_before_ns, int64_t not_after_ns,
						  char *err, size_t errlen);

/*
 * A stack trace as text (Node.js, Java, Python) -> JSON array text of
 * frames {function_name, filename, lineno}, at most OTLP_MAX_STACK_FRAMES;
 * malloc'd, "[]" when no line is recognised.
 */
extern char *otlp_stack_frames(const char *stack);

#endif
