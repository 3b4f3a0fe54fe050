/*
 * graph_json.c
 *		The whole or a filtered graph as JSON for the dashboard, and the JSON
 *		writers the other graph answers share.
 *
 * JSON is written straight from the cached arrays into one buffer and
 * returned as `json` (text, no re-parse): on a 1,000 service / 10,000
 * connection graph this is a few milliseconds, where jsonb_agg over the
 * tables costs tens.
 */
#include "graph.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"

void
graph_json_uuid(StringInfo buf, const pg_uuid_t *id)
{
	static const char hex[] = "0123456789abcdef";
	char out[39];
	int i, j = 0;

	out[j++] = '"';
	for (i = 0; i < UUID_LEN; i++)
	{
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[j++] = '-';
		out[j++] = hex[id->data[i] >> 4];
		out[j++] = hex[id->data[i] & 0x0F];
	}
	out[j++] = '"';
	appendBinaryStringInfo(buf, out, j);
}

void
graph_json_str(StringInfo buf, const char *s)
{
	if (s == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, s);
}

/* A node's object up to its environment: {"id":…,"name":…,"environment":… */
void
graph_json_node_open(StringInfo buf, const LatticeGraph *g, const GraphNode *node)
{
	appendStringInfoString(buf, "{\"id\":");
	graph_json_uuid(buf, &node->id);
	appendStringInfoString(buf, ",\"name\":");
	graph_json_str(buf, graph_str(g, node->name));
	appendStringInfoString(buf, ",\"environment\":");
	graph_json_str(buf, graph_str(g, node->environment));
}

void
graph_json_ts(StringInfo buf, TimestampTz t)
{
	char out[MAXDATELEN + 1];

	if (TIMESTAMP_NOT_FINITE(t))
	{
		appendStringInfoString(buf, "null");
		return;
	}
	JsonEncodeDateTime(out, TimestampTzGetDatum(t), TIMESTAMPTZOID, NULL);
	appendStringInfoChar(buf, '"');
	appendStringInfoString(buf, out);
	appendStringInfoChar(buf, '"');
}

void
graph_json_float(StringInfo buf, double v)
{
	if (isnan(v) || isinf(v))
		appendStringInfoString(buf, "null");
	else
		appendStringInfo(buf, "%.6g", v);
}

/* {"id", "name", "environment"} of one service. */
void
graph_json_node_brief(StringInfo buf, const LatticeGraph *g, int32 v)
{
	graph_json_node_open(buf, g, &g->nodes[v]);
	appendStringInfoChar(buf, '}');
}

Datum
graph_json_result(StringInfo buf)
{
	return PointerGetDatum(cstring_to_text_with_len(buf->data, buf->len));
}

typedef struct GraphFilter
{
	const char *environment; /* NULL: any */
	bool active_only;
	int64 min_calls;
	bool has_since;
	TimestampTz since;
} GraphFilter;

static bool
graph_keep_node(const LatticeGraph *g, int32 v, const GraphFilter *f)
{
	const GraphNode *node = &g->nodes[v];
	const char *env = graph_str(g, node->environment);
	const char *status = graph_str(g, node->status);

	if (f->environment && (env == NULL || strcmp(env, f->environment) != 0))
		return false;
	if (f->active_only && (status == NULL || strcmp(status, "active") != 0))
		return false;
	if (f->has_since && node->last_seen < f->since)
		return false;
	return true;
}

static bool
graph_keep_edge(const GraphEdge *e, const GraphFilter *f)
{
	return e->calls >= f->min_calls && (!f->has_since || e->last_seen >= f->since);
}

/*
 * lattice.graph_json(environment text, active_only boolean, min_calls bigint,
 * since timestamptz) -> json
 *		{"version", "nodes": [...], "edges": [...], "truncated", "max_results"}
 * A connection is listed when both its services are; node counts are over
 * the listed connections.  At most lattice.graph_max_results nodes and as
 * many edges.
 */
PG_FUNCTION_INFO_V1(lattice_graph_json);
Datum
lattice_graph_json(PG_FUNCTION_ARGS)
{
	LatticeGraph *g = lattice_graph_current("lattice.graph_json");
	GraphFilter f;
	bool *keep;
	int32 *deg_in, *deg_out;
	int64 *calls_in, *calls_out;
	int32 v, listed = 0, edges_listed = 0;
	bool truncated = false, first;
	StringInfoData buf;

	f.environment = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	f.active_only = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);
	f.min_calls = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2);
	f.has_since = !PG_ARGISNULL(3);
	f.since = f.has_since ? PG_GETARG_TIMESTAMPTZ(3) : 0;

	keep = palloc(sizeof(bool) * Max(g->n, 1));
	deg_in = palloc0(sizeof(int32) * Max(g->n, 1));
	deg_out = palloc0(sizeof(int32) * Max(g->n, 1));
	calls_in = palloc0(sizeof(int64) * Max(g->n, 1));
	calls_out = palloc0(sizeof(int64) * Max(g->n, 1));
	for (v = 0; v < g->n; v++)
	{
		keep[v] = graph_keep_node(g, v, &f) && listed < lattice_graph_max_results;
		if (keep[v])
			listed++;
		else if (graph_keep_node(g, v, &f))
			truncated = true;
	}
	for (v = 0; v < g->n; v++)
	{
		int32 k;

		if (!keep[v])
			continue;
		for (k = g->out_off[v]; k < g->out_off[v + 1]; k++)
		{
			int32 w = g->out_adj[k];

			if (!keep[w] || !graph_keep_edge(&g->edges[k], &f))
				continue;
			deg_out[v]++;
			deg_in[w]++;
			calls_out[v] += g->edges[k].calls;
			calls_in[w] += g->edges[k].calls;
		}
	}

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"version\":" INT64_FORMAT ",\"nodes\":[", g->version);
	first = true;
	for (v = 0; v < g->n; v++)
	{
		const GraphNode *node = &g->nodes[v];

		if (!keep[v])
			continue;
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		graph_json_node_open(&buf, g, node);
		appendStringInfoString(&buf, ",\"status\":");
		graph_json_str(&buf, graph_str(g, node->status));
		appendStringInfoString(&buf, ",\"version\":");
		graph_json_str(&buf, graph_str(g, node->version));
		appendStringInfoString(&buf, ",\"framework\":");
		graph_json_str(&buf, graph_str(g, node->framework));
		appendStringInfoString(&buf, ",\"language\":");
		graph_json_str(&buf, graph_str(g, node->language));
		appendStringInfoString(&buf, ",\"kind\":");
		graph_json_str(&buf, graph_str(g, node->kind));
		appendStringInfo(&buf,
						 ",\"is_external\":%s,\"last_seen\":", node->is_external ? "true" : "false");
		graph_json_ts(&buf, node->last_seen);
		appendStringInfo(&buf,
						 ",\"dependencies\":%d,\"dependents\":%d,\"calls_out\":" INT64_FORMAT
						 ",\"calls_in\":" INT64_FORMAT "}",
						 deg_out[v], deg_in[v], calls_out[v], calls_in[v]);
	}
	appendStringInfoString(&buf, "],\"edges\":[");
	first = true;
	for (v = 0; v < g->n; v++)
	{
		int32 k;

		if (!keep[v])
			continue;
		for (k = g->out_off[v]; k < g->out_off[v + 1]; k++)
		{
			const GraphEdge *e = &g->edges[k];
			int32 w = g->out_adj[k];

			if (!keep[w] || !graph_keep_edge(e, &f))
				continue;
			if (edges_listed >= lattice_graph_max_results)
			{
				truncated = true;
				break;
			}
			edges_listed++;
			if (!first)
				appendStringInfoChar(&buf, ',');
			first = false;
			appendStringInfoString(&buf, "{\"source\":");
			graph_json_uuid(&buf, &g->nodes[v].id);
			appendStringInfoString(&buf, ",\"target\":");
			graph_json_uuid(&buf, &g->nodes[w].id);
			appendStringInfo(&buf,
							 ",\"calls\":" INT64_FORMAT ",\"errors\":" INT64_FORMAT ",\"error_rate\":",
							 e->calls, e->errors);
			graph_json_float(&buf, graph_error_rate(e));
			appendStringInfoString(&buf, ",\"avg_duration_ms\":");
			if (e->calls > 0)
				graph_json_float(&buf, e->total_ms / (double) e->calls);
			else
				appendStringInfoString(&buf, "null");
			appendStringInfoString(&buf, ",\"p95_ms\":");
			graph_json_float(&buf, e->p95_ms);
			appendStringInfoString(&buf, ",\"last_seen\":");
			graph_json_ts(&buf, e->last_seen);
			appendStringInfo(&buf, ",\"declared\":%s}", e->declared ? "true" : "false");
		}
	}
	appendStringInfo(&buf, "],\"truncated\":%s,\"max_results\":%d}", truncated ? "true" : "false",
					 lattice_graph_max_results);
	PG_RETURN_DATUM(graph_json_result(&buf));
}
