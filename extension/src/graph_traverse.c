/*
 * graph_traverse.c
 *		Breadth-first answers over the cached graph: neighbours, dependencies
 *		(downstream), dependents (upstream), impact, shortest paths.
 *
 * Each walk visits only what it reaches: visited marks are epoch-stamped in
 * the cached graph, so a 3-hop question on a 100k-service graph touches the
 * few hundred nodes it finds, not 100k.  Bounds come from the GUCs
 * lattice.graph_max_depth and lattice.graph_max_results; SQL answers raise a
 * NOTICE when a bound cut them, JSON answers say so in "truncated".
 */
#include "graph.h"

#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

/*
 * One walk's result: visited services in BFS order (the start excluded) and,
 * per visited service, the weakest edge over its shortest paths: the largest
 * bottleneck call count and the smallest worst error rate among the shortest
 * paths that reach it.
 */
typedef struct GraphReach
{
	int32 start;
	bool downstream;
	bool stats;			   /* compute the weakest-edge figures */
	int32 requested_depth; /* -1: as deep as allowed */
	int32 depth;		   /* the depth actually followed */
	int32 count;
	int32 *order;
	int32 *pos;			  /* node -> index in order (valid when marked) */
	int64 *weakest_calls; /* by index in order */
	double *worst_error;
	int32 max_distance;
	bool beyond_depth; /* services exist past `depth` */
	bool results_cut;
} GraphReach;

static int32
graph_depth_arg(FunctionCallInfo fcinfo, int argno, const char *caller)
{
	int32 depth;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return -1;
	depth = PG_GETARG_INT32(argno);
	if (depth < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: depth must be at least 1", caller)));
	return depth;
}

static void
graph_reach(LatticeGraph *g, GraphReach *r)
{
	uint32 epoch = lattice_graph_new_epoch(g);
	const int32 *off = r->downstream ? g->out_off : g->in_off;
	const int32 *adj = r->downstream ? g->out_adj : g->in_adj;
	int32 head = 0;
	int64 start_weakest = PG_INT64_MAX;
	double start_worst = 0.0;

	r->depth = (r->requested_depth < 0 || r->requested_depth > lattice_graph_max_depth) ?
		lattice_graph_max_depth :
		r->requested_depth;
	r->count = 0;
	r->max_distance = 0;
	r->beyond_depth = false;
	r->results_cut = false;
	r->order = palloc(sizeof(int32) * Max(g->n, 1));
	r->pos = palloc(sizeof(int32) * Max(g->n, 1));
	r->weakest_calls = palloc(sizeof(int64) * Max(g->n, 1));
	r->worst_error = palloc(sizeof(double) * Max(g->n, 1));

	g->mark[r->start] = epoch;
	g->dist[r->start] = 0;

	/* the start is processed first, then the queue (r->order) */
	for (head = -1; head < r->count; head++)
	{
		int32 u = head < 0 ? r->start : r->order[head];
		int32 du = g->dist[u];
		int64 wu = head < 0 ? start_weakest : r->weakest_calls[head];
		double eu = head < 0 ? start_worst : r->worst_error[head];
		int32 k;

		for (k = off[u]; k < off[u + 1]; k++)
		{
			int32 w = adj[k];
			int64 cw = 0;
			double ce = 0.0;

			if (r->stats)
			{
				int64 calls;
				double rate;

				if (r->downstream)
				{
					calls = g->edges[k].calls;
					rate = graph_error_rate(&g->edges[k]);
				}
				else
				{
					calls = g->in_calls[k];
					rate = g->in_error_rate[k];
				}
				cw = Min(wu, calls);
				ce = Max(eu, rate);
			}
			if (g->mark[w] == epoch)
			{
				/* another shortest path to w: keep the better weakest link */
				if (r->stats && g->dist[w] == du + 1)
				{
					int32 p = r->pos[w];

					r->weakest_calls[p] = Max(r->weakest_calls[p], cw);
					r->worst_error[p] = Min(r->worst_error[p], ce);
				}
				continue;
			}
			if (du >= r->depth)
			{
				r->beyond_depth = true;
				break;
			}
			if (r->count >= lattice_graph_max_results)
			{
				r->results_cut = true;
				return;
			}
			g->mark[w] = epoch;
			g->dist[w] = du + 1;
			r->pos[w] = r->count;
			r->order[r->count] = w;
			r->weakest_calls[r->count] = cw;
			r->worst_error[r->count] = ce;
			r->count++;
			r->max_distance = du + 1;
		}
	}
}

/* A bound (not the caller's own depth) cut the answer. */
static bool
graph_reach_truncated(const GraphReach *r)
{
	return r->results_cut ||
		(r->beyond_depth && (r->requested_depth < 0 || r->requested_depth > r->depth));
}

static void
graph_reach_notice(const GraphReach *r, const char *caller)
{
	if (r->results_cut)
		ereport(NOTICE,
				(errmsg("%s: answer cut at %d services", caller, r->count),
				 errhint("Raise lattice.graph_max_results to see more.")));
	else if (graph_reach_truncated(r))
		ereport(NOTICE,
				(errmsg("%s: answer cut at depth %d", caller, r->depth),
				 errhint("Raise lattice.graph_max_depth to see more.")));
}

/* Rows (service_id, name, environment, distance, weakest_calls, worst_error_rate). */
static Datum
graph_reach_srf(FunctionCallInfo fcinfo, bool downstream, bool unbounded, const char *caller)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LatticeGraph *g;
	GraphReach r = {0};
	int32 i;

	InitMaterializedSRF(fcinfo, 0);
	g = lattice_graph_current(caller);
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	r.start = lattice_graph_require(g, PG_GETARG_DATUM(0));
	r.downstream = downstream;
	r.stats = true;
	r.requested_depth = unbounded ? -1 : graph_depth_arg(fcinfo, 1, caller);
	graph_reach(g, &r);
	for (i = 0; i < r.count; i++)
	{
		int32 v = r.order[i];
		const GraphNode *node = &g->nodes[v];
		Datum values[6];
		bool nulls[6] = {false, false, false, false, false, false};

		values[0] = UUIDPGetDatum(unconstify(pg_uuid_t *, &node->id));
		values[1] = CStringGetTextDatum(graph_str(g, node->name));
		values[2] = CStringGetTextDatum(graph_str(g, node->environment));
		values[3] = Int32GetDatum(g->dist[v]);
		values[4] = Int64GetDatum(r.weakest_calls[i]);
		values[5] = Float8GetDatum(r.worst_error[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	graph_reach_notice(&r, caller);
	return (Datum) 0;
}

/* lattice.graph_dependencies(service_id uuid, depth integer): what it calls, to depth hops. */
PG_FUNCTION_INFO_V1(lattice_graph_dependencies);
Datum
lattice_graph_dependencies(PG_FUNCTION_ARGS)
{
	return graph_reach_srf(fcinfo, true, false, "lattice.graph_dependencies");
}

/* lattice.graph_dependents(service_id uuid, depth integer): what calls it, to depth hops. */
PG_FUNCTION_INFO_V1(lattice_graph_dependents);
Datum
lattice_graph_dependents(PG_FUNCTION_ARGS)
{
	return graph_reach_srf(fcinfo, false, false, "lattice.graph_dependents");
}

/* lattice.graph_impact(service_id uuid): everything that transitively depends on it. */
PG_FUNCTION_INFO_V1(lattice_graph_impact);
Datum
lattice_graph_impact(PG_FUNCTION_ARGS)
{
	return graph_reach_srf(fcinfo, false, true, "lattice.graph_impact");
}

/*
 * lattice.graph_impact_summary(service_id uuid) -> (services, max_distance,
 * truncated): the size of the blast radius without listing it.
 */
PG_FUNCTION_INFO_V1(lattice_graph_impact_summary);
Datum
lattice_graph_impact_summary(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_impact_summary";
	LatticeGraph *g = lattice_graph_current(caller);
	GraphReach r = {0};
	TupleDesc desc;
	Datum values[3];
	bool nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "%s: return type must be a row type", caller);
	r.start = lattice_graph_require(g, PG_GETARG_DATUM(0));
	r.downstream = false;
	r.stats = false;
	r.requested_depth = -1;
	graph_reach(g, &r);
	values[0] = Int32GetDatum(r.count);
	values[1] = Int32GetDatum(r.max_distance);
	values[2] = BoolGetDatum(graph_reach_truncated(&r));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * lattice.graph_reach_json(service_id uuid, direction text, depth integer) -> json
 *		direction: 'dependencies' (downstream), 'dependents' or 'impact'
 *		(upstream; impact ignores depth).
 *		{"service", "direction", "depth", "requested_depth", "count",
 *		 "services": [{id, name, environment, status, kind, is_external, distance,
 *		 weakest_calls, worst_error_rate}], "more_beyond_depth", "truncated"}
 */
PG_FUNCTION_INFO_V1(lattice_graph_reach_json);
Datum
lattice_graph_reach_json(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_reach_json";
	LatticeGraph *g = lattice_graph_current(caller);
	char *direction = PG_ARGISNULL(1) ? "dependents" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	bool impact = strcmp(direction, "impact") == 0;
	GraphReach r = {0};
	StringInfoData buf;
	int32 i;

	if (!impact && strcmp(direction, "dependents") != 0 && strcmp(direction, "dependencies") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: direction must be dependencies, dependents or impact", caller)));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s: service id must not be null", caller)));
	r.start = lattice_graph_require(g, PG_GETARG_DATUM(0));
	r.downstream = strcmp(direction, "dependencies") == 0;
	r.stats = true;
	r.requested_depth = impact ? -1 : graph_depth_arg(fcinfo, 2, caller);
	graph_reach(g, &r);

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"service\":");
	graph_json_node_brief(&buf, g, r.start);
	appendStringInfoString(&buf, ",\"direction\":");
	graph_json_str(&buf, direction);
	appendStringInfo(&buf, ",\"depth\":%d,\"requested_depth\":", r.depth);
	if (r.requested_depth < 0)
		appendStringInfoString(&buf, "null");
	else
		appendStringInfo(&buf, "%d", r.requested_depth);
	appendStringInfo(&buf, ",\"count\":%d,\"max_distance\":%d,\"services\":[", r.count, r.max_distance);
	for (i = 0; i < r.count; i++)
	{
		int32 v = r.order[i];
		const GraphNode *node = &g->nodes[v];

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		graph_json_node_open(&buf, g, node);
		appendStringInfoString(&buf, ",\"status\":");
		graph_json_str(&buf, graph_str(g, node->status));
		appendStringInfoString(&buf, ",\"kind\":");
		graph_json_str(&buf, graph_str(g, node->kind));
		appendStringInfo(&buf,
						 ",\"is_external\":%s,\"distance\":%d,\"weakest_calls\":" INT64_FORMAT
						 ",\"worst_error_rate\":",
						 node->is_external ? "true" : "false", g->dist[v], r.weakest_calls[i]);
		graph_json_float(&buf, r.worst_error[i]);
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfo(&buf,
					 "],\"more_beyond_depth\":%s,\"truncated\":%s,\"max_depth\":%d,\"max_results\":%d}",
					 r.beyond_depth ? "true" : "false", graph_reach_truncated(&r) ? "true" : "false",
					 lattice_graph_max_depth, lattice_graph_max_results);
	PG_RETURN_DATUM(graph_json_result(&buf));
}

/*
 * lattice.graph_neighbours(service_id uuid) -> rows (direction, service_id,
 * name, environment, call_count, error_count, avg_duration_ms, last_seen):
 * one hop both ways with the connection's figures.
 */
PG_FUNCTION_INFO_V1(lattice_graph_neighbours);
Datum
lattice_graph_neighbours(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_neighbours";
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LatticeGraph *g;
	int32 v, pass;

	InitMaterializedSRF(fcinfo, 0);
	g = lattice_graph_current(caller);
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	v = lattice_graph_require(g, PG_GETARG_DATUM(0));
	for (pass = 0; pass < 2; pass++)
	{
		bool out = pass == 0;
		const int32 *off = out ? g->out_off : g->in_off;
		const int32 *adj = out ? g->out_adj : g->in_adj;
		int32 k;

		for (k = off[v]; k < off[v + 1]; k++)
		{
			const GraphNode *node = &g->nodes[adj[k]];
			const GraphEdge *e = &g->edges[out ? k : g->in_edge[k]];
			Datum values[8];
			bool nulls[8] = {false, false, false, false, false, false, false, false};

			values[0] = CStringGetTextDatum(out ? "dependency" : "dependent");
			values[1] = UUIDPGetDatum(unconstify(pg_uuid_t *, &node->id));
			values[2] = CStringGetTextDatum(graph_str(g, node->name));
			values[3] = CStringGetTextDatum(graph_str(g, node->environment));
			values[4] = Int64GetDatum(e->calls);
			values[5] = Int64GetDatum(e->errors);
			nulls[6] = e->calls == 0;
			values[6] = Float8GetDatum(e->calls > 0 ? e->total_ms / (double) e->calls : 0.0);
			values[7] = TimestampTzGetDatum(e->last_seen);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}

/*
 * Shortest paths from -> to along calls: a BFS from `from` that stops once
 * `to`'s level is settled, then an iterative walk back over predecessors one
 * level closer, listing at most max_paths paths.  paths[i] holds distance+1
 * node indexes from `from` to `to`.
 */
typedef struct GraphPaths
{
	int32 from;
	int32 to;
	int32 distance; /* -1: not reachable within the depth bound */
	int32 npaths;
	int32 **paths;
	bool more_paths;
	bool depth_cut;
} GraphPaths;

static void
graph_paths(LatticeGraph *g, GraphPaths *p, int32 max_paths)
{
	uint32 epoch = lattice_graph_new_epoch(g);
	int32 *queue = palloc(sizeof(int32) * Max(g->n, 1));
	int32 head = 0, tail = 0;
	int32 *stack, *cursor;
	int32 top;

	p->distance = -1;
	p->npaths = 0;
	p->more_paths = false;
	p->depth_cut = false;
	p->paths = palloc(sizeof(int32 *) * max_paths);

	g->mark[p->from] = epoch;
	g->dist[p->from] = 0;
	queue[tail++] = p->from;
	while (head < tail && g->mark[p->to] != epoch)
	{
		int32 u = queue[head++];
		int32 k;

		for (k = g->out_off[u]; k < g->out_off[u + 1]; k++)
		{
			int32 w = g->out_adj[k];

			if (g->mark[w] == epoch)
				continue;
			if (g->dist[u] >= lattice_graph_max_depth)
			{
				p->depth_cut = true;
				break;
			}
			g->mark[w] = epoch;
			g->dist[w] = g->dist[u] + 1;
			queue[tail++] = w;
		}
	}
	if (g->mark[p->to] != epoch)
		return;
	p->distance = g->dist[p->to];

	/* walk back from `to`: stack[i] is the node at distance `distance - i` */
	stack = palloc(sizeof(int32) * (p->distance + 1));
	cursor = palloc(sizeof(int32) * (p->distance + 1));
	top = 0;
	stack[0] = p->to;
	cursor[0] = g->in_off[p->to];
	while (top >= 0)
	{
		int32 v = stack[top];

		if (v == p->from)
		{
			int32 i;

			if (p->npaths == max_paths)
			{
				p->more_paths = true;
				break;
			}
			p->paths[p->npaths] = palloc(sizeof(int32) * (p->distance + 1));
			for (i = 0; i <= p->distance; i++)
				p->paths[p->npaths][i] = stack[p->distance - i];
			p->npaths++;
			top--;
			continue;
		}
		if (cursor[top] < g->in_off[v + 1])
		{
			int32 u = g->in_adj[cursor[top]++];

			if (g->mark[u] == epoch && g->dist[u] == g->dist[v] - 1)
			{
				top++;
				stack[top] = u;
				cursor[top] = g->in_off[u];
			}
		}
		else
			top--;
	}
}

static int32
graph_max_paths_arg(FunctionCallInfo fcinfo, int argno, const char *caller)
{
	int32 n;

	if (PG_ARGISNULL(argno))
		return 1;
	n = PG_GETARG_INT32(argno);
	if (n < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: max_paths must be at least 1", caller)));
	return Min(n, lattice_graph_max_paths);
}

/*
 * lattice.graph_paths(from_id uuid, to_id uuid, max_paths integer) -> rows
 * (path_no, hop, service_id, name, environment): the shortest paths along
 * calls, hop 0 being from_id.  No rows when to_id is not reachable.
 */
PG_FUNCTION_INFO_V1(lattice_graph_paths);
Datum
lattice_graph_paths(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_paths";
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LatticeGraph *g;
	GraphPaths p = {0};
	int32 i, h;

	InitMaterializedSRF(fcinfo, 0);
	g = lattice_graph_current(caller);
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		return (Datum) 0;
	p.from = lattice_graph_require(g, PG_GETARG_DATUM(0));
	p.to = lattice_graph_require(g, PG_GETARG_DATUM(1));
	graph_paths(g, &p, graph_max_paths_arg(fcinfo, 2, caller));
	for (i = 0; i < p.npaths; i++)
		for (h = 0; h <= p.distance; h++)
		{
			const GraphNode *node = &g->nodes[p.paths[i][h]];
			Datum values[5];
			bool nulls[5] = {false, false, false, false, false};

			values[0] = Int32GetDatum(i + 1);
			values[1] = Int32GetDatum(h);
			values[2] = UUIDPGetDatum(unconstify(pg_uuid_t *, &node->id));
			values[3] = CStringGetTextDatum(graph_str(g, node->name));
			values[4] = CStringGetTextDatum(graph_str(g, node->environment));
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	if (p.more_paths)
		ereport(NOTICE, (errmsg("%s: more shortest paths exist than the %d listed", caller, p.npaths)));
	if (p.distance < 0 && p.depth_cut)
		ereport(NOTICE, (errmsg("%s: search cut at depth %d", caller, lattice_graph_max_depth)));
	return (Datum) 0;
}

/*
 * lattice.graph_paths_json(from_id uuid, to_id uuid, max_paths integer) -> json
 *		{"from", "to", "distance", "paths": [[{id, name, environment}, ...]],
 *		 "more_paths", "truncated"}
 */
PG_FUNCTION_INFO_V1(lattice_graph_paths_json);
Datum
lattice_graph_paths_json(PG_FUNCTION_ARGS)
{
	const char *caller = "lattice.graph_paths_json";
	LatticeGraph *g = lattice_graph_current(caller);
	GraphPaths p = {0};
	StringInfoData buf;
	int32 i, h;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s: from and to must not be null", caller)));
	p.from = lattice_graph_require(g, PG_GETARG_DATUM(0));
	p.to = lattice_graph_require(g, PG_GETARG_DATUM(1));
	graph_paths(g, &p, graph_max_paths_arg(fcinfo, 2, caller));

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"from\":");
	graph_json_node_brief(&buf, g, p.from);
	appendStringInfoString(&buf, ",\"to\":");
	graph_json_node_brief(&buf, g, p.to);
	if (p.distance < 0)
		appendStringInfoString(&buf, ",\"distance\":null,\"paths\":[");
	else
		appendStringInfo(&buf, ",\"distance\":%d,\"paths\":[", p.distance);
	for (i = 0; i < p.npaths; i++)
	{
		if (i > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoChar(&buf, '[');
		for (h = 0; h <= p.distance; h++)
		{
			if (h > 0)
				appendStringInfoChar(&buf, ',');
			graph_json_node_brief(&buf, g, p.paths[i][h]);
		}
		appendStringInfoChar(&buf, ']');
	}
	appendStringInfo(&buf, "],\"more_paths\":%s,\"truncated\":%s}", p.more_paths ? "true" : "false",
					 (p.more_paths || (p.distance < 0 && p.depth_cut)) ? "true" : "false");
	PG_RETURN_DATUM(graph_json_result(&buf));
}
