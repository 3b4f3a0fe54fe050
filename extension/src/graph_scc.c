/*
 * graph_scc.c
 *		Cycles (strongly connected components, Tarjan) and a deploy order
 *		(topological layers of the component graph).
 *
 * Tarjan's algorithm is written with an explicit stack: a recursive version
 * would overflow the C stack on a 100k-service chain.  It numbers components
 * in the order they complete, and a component completes only after every
 * component it reaches, so that order already is a topological order with
 * dependencies first: layers follow in one more O(V + E) pass.
 */
#include "graph.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

typedef struct GraphComponents
{
	int32 count;
	int32 *comp;	 /* node -> component, in completion order */
	int32 *start;	 /* count + 1; members[start[c] .. start[c+1]) */
	int32 *members;	 /* nodes grouped by component, in id order */
	int32 *cycle_no; /* component -> 1.. for components of 2+ nodes, else 0 */
	int32 cycles;
} GraphComponents;

static void
graph_components(const LatticeGraph *g, GraphComponents *gc)
{
	int32 n = g->n;
	int32 *index = palloc(sizeof(int32) * Max(n, 1));
	int32 *low = palloc(sizeof(int32) * Max(n, 1));
	bool *on_stack = palloc0(sizeof(bool) * Max(n, 1));
	int32 *stack = palloc(sizeof(int32) * Max(n, 1));
	int32 *call_node = palloc(sizeof(int32) * Max(n, 1));
	int32 *call_edge = palloc(sizeof(int32) * Max(n, 1));
	int32 next_index = 0, sp = 0, c, root, v;

	gc->comp = palloc(sizeof(int32) * Max(n, 1));
	gc->count = 0;
	for (v = 0; v < n; v++)
		index[v] = -1;

	for (root = 0; root < n; root++)
	{
		int32 depth = 0;

		if (index[root] >= 0)
			continue;
		index[root] = low[root] = next_index++;
		stack[sp++] = root;
		on_stack[root] = true;
		call_node[0] = root;
		call_edge[0] = g->out_off[root];
		depth = 1;
		while (depth > 0)
		{
			int32 u = call_node[depth - 1];

			if (call_edge[depth - 1] < g->out_off[u + 1])
			{
				int32 w = g->out_adj[call_edge[depth - 1]++];

				if (index[w] < 0)
				{
					index[w] = low[w] = next_index++;
					stack[sp++] = w;
					on_stack[w] = true;
					call_node[depth] = w;
					call_edge[depth] = g->out_off[w];
					depth++;
				}
				else if (on_stack[w])
					low[u] = Min(low[u], index[w]);
				continue;
			}
			if (low[u] == index[u])
			{
				int32 w;

				do
				{
					w = stack[--sp];
					on_stack[w] = false;
					gc->comp[w] = gc->count;
				} while (w != u);
				gc->count++;
			}
			depth--;
			if (depth > 0)
			{
				int32 parent = call_node[depth - 1];

				low[parent] = Min(low[parent], low[u]);
			}
		}
	}

	/* group members by component (a counting sort keeps id order inside) */
	gc->start = palloc0(sizeof(int32) * (gc->count + 1));
	gc->members = palloc(sizeof(int32) * Max(n, 1));
	for (v = 0; v < n; v++)
		gc->start[gc->comp[v] + 1]++;
	for (c = 0; c < gc->count; c++)
		gc->start[c + 1] += gc->start[c];
	memcpy(low, gc->start, sizeof(int32) * Min(gc->count, n)); /* fill cursor */
	for (v = 0; v < n; v++)
		gc->members[low[gc->comp[v]]++] = v;

	gc->cycle_no = palloc0(sizeof(int32) * Max(gc->count, 1));
	gc->cycles = 0;
	for (c = 0; c < gc->count; c++)
		if (gc->start[c + 1] - gc->start[c] > 1)
			gc->cycle_no[c] = ++gc->cycles;

	pfree(index);
	pfree(low);
	pfree(on_stack);
	pfree(stack);
	pfree(call_node);
	pfree(call_edge);
}

/*
 * lattice.graph_cycles() -> rows (cycle_no, size, service_ids uuid[],
 * names text[]): every strongly connected component of two or more
 * services.  At most lattice.graph_max_results services are listed.
 */
PG_FUNCTION_INFO_V1(lattice_graph_cycles);
Datum
lattice_graph_cycles(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_cycles";
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LatticeGraph *g;
	GraphComponents gc = {0};
	int32 c, listed = 0;

	InitMaterializedSRF(fcinfo, 0);
	g = lattice_graph_current(caller);
	graph_components(g, &gc);
	for (c = 0; c < gc.count; c++)
	{
		int32 size = gc.start[c + 1] - gc.start[c];
		Datum *ids, *names;
		Datum values[4];
		bool nulls[4] = {false, false, false, false};
		int32 i;

		if (gc.cycle_no[c] == 0)
			continue;
		if (listed + size > lattice_graph_max_results)
		{
			ereport(NOTICE,
					(errmsg("%s: answer cut at %d services", caller, listed),
					 errhint("Raise lattice.graph_max_results to see more.")));
			break;
		}
		listed += size;
		ids = palloc(sizeof(Datum) * size);
		names = palloc(sizeof(Datum) * size);
		for (i = 0; i < size; i++)
		{
			const GraphNode *node = &g->nodes[gc.members[gc.start[c] + i]];

			ids[i] = UUIDPGetDatum(unconstify(pg_uuid_t *, &node->id));
			names[i] = CStringGetTextDatum(graph_str(g, node->name));
		}
		values[0] = Int32GetDatum(gc.cycle_no[c]);
		values[1] = Int32GetDatum(size);
		values[2] = PointerGetDatum(construct_array(ids, size, UUIDOID, UUID_LEN, false, TYPALIGN_CHAR));
		values[3] = PointerGetDatum(construct_array(names, size, TEXTOID, -1, false, TYPALIGN_INT));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * lattice.graph_cycles_json() -> json
 *		{"count", "cycles": [{"cycle", "size", "services": [...]}], "truncated"}
 */
PG_FUNCTION_INFO_V1(lattice_graph_cycles_json);
Datum
lattice_graph_cycles_json(PG_FUNCTION_ARGS)
{
	LatticeGraph *g = lattice_graph_current("lattice.graph_cycles_json");
	GraphComponents gc = {0};
	StringInfoData buf;
	int32 c, listed = 0;
	bool first = true, truncated = false;

	graph_components(g, &gc);
	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"count\":%d,\"cycles\":[", gc.cycles);
	for (c = 0; c < gc.count; c++)
	{
		int32 size = gc.start[c + 1] - gc.start[c];
		int32 i;

		if (gc.cycle_no[c] == 0)
			continue;
		if (listed + size > lattice_graph_max_results)
		{
			truncated = true;
			break;
		}
		listed += size;
		if (!first)
			appendStringInfoChar(&buf, ',');
		first = false;
		appendStringInfo(&buf, "{\"cycle\":%d,\"size\":%d,\"services\":[", gc.cycle_no[c], size);
		for (i = 0; i < size; i++)
		{
			if (i > 0)
				appendStringInfoChar(&buf, ',');
			graph_json_node_brief(&buf, g, gc.members[gc.start[c] + i]);
		}
		appendStringInfoString(&buf, "]}");
	}
	appendStringInfo(&buf, "],\"truncated\":%s}", truncated ? "true" : "false");
	PG_RETURN_DATUM(graph_json_result(&buf));
}

/*
 * Layer of each component: 0 for services that call nothing, else one more
 * than the highest layer among what they call.  Members of one cycle share a
 * layer.  Deploying layer by layer deploys dependencies first.
 */
static int32 *
graph_layers(const LatticeGraph *g, const GraphComponents *gc)
{
	int32 *layer = palloc0(sizeof(int32) * Max(gc->count, 1));
	int32 c;

	for (c = 0; c < gc->count; c++)
	{
		int32 i;

		for (i = gc->start[c]; i < gc->start[c + 1]; i++)
		{
			int32 u = gc->members[i];
			int32 k;

			for (k = g->out_off[u]; k < g->out_off[u + 1]; k++)
			{
				int32 d = gc->comp[g->out_adj[k]];

				if (d != c)
					layer[c] = Max(layer[c], layer[d] + 1);
			}
		}
	}
	return layer;
}

typedef struct OrderSortArg
{
	const LatticeGraph *g;
	const GraphComponents *gc;
	const int32 *layer;
} OrderSortArg;

static int
graph_order_cmp(const void *a, const void *b, void *arg)
{
	const OrderSortArg *s = arg;
	int32 u = *(const int32 *) a, v = *(const int32 *) b;
	int32 lu = s->layer[s->gc->comp[u]], lv = s->layer[s->gc->comp[v]];
	const char *nu, *nv;
	int r;

	if (lu != lv)
		return lu < lv ? -1 : 1;
	nu = graph_str(s->g, s->g->nodes[u].name);
	nv = graph_str(s->g, s->g->nodes[v].name);
	r = strcmp(nu ? nu : "", nv ? nv : "");
	if (r != 0)
		return r;
	return u < v ? -1 : (u > v ? 1 : 0);
}

/* Nodes sorted by (layer, name, id), at most lattice.graph_max_results. */
static int32 *
graph_order(const LatticeGraph *g, GraphComponents *gc, int32 **layer_out)
{
	int32 *order = palloc(sizeof(int32) * Max(g->n, 1));
	OrderSortArg arg;
	int32 v;

	graph_components(g, gc);
	arg.g = g;
	arg.gc = gc;
	arg.layer = graph_layers(g, gc);
	for (v = 0; v < g->n; v++)
		order[v] = v;
	qsort_arg(order, g->n, sizeof(int32), graph_order_cmp, &arg);
	*layer_out = unconstify(int32 *, arg.layer);
	return order;
}

/*
 * lattice.graph_order() -> rows (layer, service_id, name, environment, cycle):
 * a deploy order; cycle names the graph_cycles() cycle a service is part of
 * (NULL when none): a cycle is reported, not an error.
 */
PG_FUNCTION_INFO_V1(lattice_graph_order);
Datum
lattice_graph_order(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_order";
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LatticeGraph *g;
	GraphComponents gc = {0};
	int32 *layer, *order;
	int32 i;

	InitMaterializedSRF(fcinfo, 0);
	g = lattice_graph_current(caller);
	order = graph_order(g, &gc, &layer);
	for (i = 0; i < g->n; i++)
	{
		int32 v = order[i];
		const GraphNode *node = &g->nodes[v];
		int32 c = gc.comp[v];
		Datum values[5];
		bool nulls[5] = {false, false, false, false, false};

		if (i >= lattice_graph_max_results)
		{
			ereport(NOTICE,
					(errmsg("%s: answer cut at %d services", caller, i),
					 errhint("Raise lattice.graph_max_results to see more.")));
			break;
		}
		values[0] = Int32GetDatum(layer[c]);
		values[1] = UUIDPGetDatum(unconstify(pg_uuid_t *, &node->id));
		values[2] = CStringGetTextDatum(graph_str(g, node->name));
		values[3] = CStringGetTextDatum(graph_str(g, node->environment));
		values[4] = Int32GetDatum(gc.cycle_no[c]);
		nulls[4] = gc.cycle_no[c] == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * lattice.graph_order_json() -> json
 *		{"layers": [{"layer", "services": [{id, name, environment, cycle}]}],
 *		 "cycles", "acyclic", "truncated"}
 */
PG_FUNCTION_INFO_V1(lattice_graph_order_json);
Datum
lattice_graph_order_json(PG_FUNCTION_ARGS)
{
	LatticeGraph *g = lattice_graph_current("lattice.graph_order_json");
	GraphComponents gc = {0};
	int32 *layer, *order;
	int32 i, current = -1;
	bool truncated = false;
	StringInfoData buf;

	order = graph_order(g, &gc, &layer);
	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"layers\":[");
	for (i = 0; i < g->n; i++)
	{
		int32 v = order[i];
		int32 c = gc.comp[v];
		const GraphNode *node = &g->nodes[v];

		if (i >= lattice_graph_max_results)
		{
			truncated = true;
			break;
		}
		if (layer[c] != current)
		{
			if (current >= 0)
				appendStringInfoString(&buf, "]},");
			current = layer[c];
			appendStringInfo(&buf, "{\"layer\":%d,\"services\":[", current);
		}
		else
			appendStringInfoChar(&buf, ',');
		graph_json_node_open(&buf, g, node);
		if (gc.cycle_no[c] > 0)
			appendStringInfo(&buf, ",\"cycle\":%d}", gc.cycle_no[c]);
		else
			appendStringInfoString(&buf, ",\"cycle\":null}");
	}
	if (current >= 0)
		appendStringInfoString(&buf, "]}");
	appendStringInfo(&buf, "],\"cycles\":%d,\"acyclic\":%s,\"truncated\":%s}", gc.cycles,
					 gc.cycles == 0 ? "true" : "false", truncated ? "true" : "false");
	PG_RETURN_DATUM(graph_json_result(&buf));
}
