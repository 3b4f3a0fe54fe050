/*
 * graph_cache.c
 *		Loads a tenant's graph into CSR arrays and keeps it per backend.
 *
 * The graph is read through SPI as the calling role, so row-level security
 * decides what is visible; the explicit user_id predicate only lets the
 * planner use the tenant's index.  Each entry is keyed by (tenant, version,
 * xmin of the version row): lattice.bump_graph_version() moves the version on
 * every change of topology or node state, and the xmin tells a rolled-back
 * bump from a later one that reached the same number.  Entries live in their
 * own memory contexts under one long-lived parent; the least recently used
 * are dropped when lattice.graph_cache_size would be exceeded.
 */
#include "graph.h"
#include "common.h"
#include "lattice.h"
#include "tenant.h"

#include <limits.h>

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/memutils.h"

int lattice_graph_max_depth = 100;
int lattice_graph_max_results = 100000;
int lattice_graph_max_paths = 10;
int lattice_graph_cache_kb = 262144;
int lattice_graph_stats_max_age = 60;

#define GRAPH_CACHE_SLOTS 64
#define GRAPH_FETCH_BATCH 10000

static MemoryContext graph_cache_cxt = NULL;
static LatticeGraph *graph_cache[GRAPH_CACHE_SLOTS];
static int graph_cache_count = 0;
static uint64 graph_cache_tick = 0;

static SPIPlanPtr version_plan = NULL;
static SPIPlanPtr nodes_plan = NULL;
static SPIPlanPtr edges_plan = NULL;

/*
 * Defines the graph GUCs, once: from _PG_init, and again harmlessly from the
 * graph entry points; values set earlier as placeholders are taken over by
 * the definition.
 */
void
lattice_graph_guc_init(void)
{
	static bool done = false;

	if (done)
		return;
	done = true;
	DefineCustomIntVariable("lattice.graph_max_depth", "Deepest hop count a graph traversal follows.",
							"Deeper requests are cut to it and the answer says so.",
							&lattice_graph_max_depth, 100, 1, 1000000, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.graph_max_results", "Most services or rows one graph answer lists.",
							"Longer answers are cut to it and say so.", &lattice_graph_max_results,
							100000, 1, 100000000, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.graph_max_paths", "Most shortest paths lattice.graph_paths lists.",
							NULL, &lattice_graph_max_paths, 10, 1, 100000, PGC_SUSET, 0, NULL, NULL,
							NULL);
	DefineCustomIntVariable(
		"lattice.graph_stats_max_age",
		"Seconds a cached graph's call figures are reused before it is loaded again.",
		"0 reloads only when the topology or a service's state changes.", &lattice_graph_stats_max_age,
		60, 0, 86400, PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.graph_cache_size",
							"Memory this backend may keep for cached tenant graphs.",
							"A tenant graph larger than this is refused.", &lattice_graph_cache_kb,
							262144, 1024, INT_MAX, PGC_SUSET, GUC_UNIT_KB, NULL, NULL, NULL);
}

static void
graph_prepare_all(void)
{
	Oid argtypes[1] = {UUIDOID};

	lattice_spi_prepare_kept(
		&version_plan,
		"SELECT version, xmin::text::bigint FROM lattice.graph_versions WHERE user_id = $1", 1,
		argtypes);
	lattice_spi_prepare_kept(
		&nodes_plan,
		"SELECT id, name, environment, status, version, framework, language, is_external, last_seen,"
		"       CASE WHEN is_external AND kind = 'service' THEN 'external' ELSE kind END"
		"  FROM lattice.services WHERE user_id = $1 ORDER BY id",
		1, argtypes);
	lattice_spi_prepare_kept(&edges_plan,
							 "SELECT source_service_id, target_service_id, call_count, error_count,"
							 "       total_duration_ms, last_seen, declared, latency_hist"
							 "  FROM lattice.connections WHERE user_id = $1",
							 1, argtypes);
}

static int
uuid_compare(const pg_uuid_t *a, const pg_uuid_t *b)
{
	return memcmp(a->data, b->data, UUID_LEN);
}

/* Index of the service with this id in g, or -1. */
int32
lattice_graph_find(const LatticeGraph *g, const pg_uuid_t *id)
{
	int32 lo = 0, hi = g->n - 1;

	while (lo <= hi)
	{
		int32 mid = lo + (hi - lo) / 2;
		int c = uuid_compare(&g->nodes[mid].id, id);

		if (c == 0)
			return mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/*
 * Index of the service id, or 404 not_found.  An id of another tenant is
 * simply absent from this tenant's graph.
 */
int32
lattice_graph_require(const LatticeGraph *g, Datum id)
{
	int32 v = lattice_graph_find(g, DatumGetUUIDP(id));

	if (v < 0)
		lattice_raise_http(404, "not_found", "no such service", NULL, NULL);
	return v;
}

/* A fresh visited-mark for one traversal, without clearing n entries. */
uint32
lattice_graph_new_epoch(LatticeGraph *g)
{
	if (++g->epoch == 0)
	{
		memset(g->mark, 0, sizeof(uint32) * Max(g->n, 1));
		g->epoch = 1;
	}
	return g->epoch;
}

/*
 * Allocations of the cached graph name its context: every SPI call returns
 * with SPI's procedure context current, which SPI_finish frees.
 */
static void *
graph_alloc(LatticeGraph *g, Size size, bool zero)
{
	return MemoryContextAllocExtended(g->cxt, Max(size, 1),
									  MCXT_ALLOC_HUGE | (zero ? MCXT_ALLOC_ZERO : 0));
}

static uint32
graph_intern(StringInfo strings, HeapTuple tup, TupleDesc desc, int col)
{
	bool isnull;
	Datum d = SPI_getbinval(tup, desc, col, &isnull);
	text *t;
	uint32 off;

	if (isnull)
		return GRAPH_NO_STR;
	t = DatumGetTextPP(d);
	off = (uint32) strings->len;
	appendBinaryStringInfo(strings, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	appendStringInfoChar(strings, '\0');
	return off;
}

static void
graph_check_size(Size bytes, int64 n, int64 m)
{
	if (bytes > (Size) lattice_graph_cache_kb * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("lattice: the graph of this tenant does not fit in lattice.graph_cache_size"),
				 errdetail("At least %lld services and %lld connections need more than %d kB.",
						   (long long) n, (long long) m, lattice_graph_cache_kb)));
}

/* Rough bytes per service and per connection, for the early size check. */
#define NODE_BYTES (sizeof(GraphNode) + 2 * sizeof(int32) + sizeof(uint32) + sizeof(int32) + 32)
#define EDGE_BYTES \
	(sizeof(GraphEdge) + 3 * sizeof(int32) + 2 * sizeof(int32) + sizeof(int64) + sizeof(double))

static void
graph_load_nodes(LatticeGraph *g, Datum tenant, StringInfo strings)
{
	Datum args[1] = {tenant};
	Portal portal = SPI_cursor_open(NULL, nodes_plan, args, NULL, true);
	int32 cap = 1024;

	g->nodes = graph_alloc(g, sizeof(GraphNode) * cap, false);
	g->n = 0;
	for (;;)
	{
		uint64 i;

		SPI_cursor_fetch(portal, true, GRAPH_FETCH_BATCH);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple tup = SPI_tuptable->vals[i];
			TupleDesc desc = SPI_tuptable->tupdesc;
			GraphNode *node;
			bool isnull;

			if (g->n == cap)
			{
				cap *= 2;
				g->nodes = repalloc_huge(g->nodes, sizeof(GraphNode) * cap);
			}
			node = &g->nodes[g->n++];
			memcpy(&node->id, DatumGetUUIDP(SPI_getbinval(tup, desc, 1, &isnull)), sizeof(pg_uuid_t));
			node->name = graph_intern(strings, tup, desc, 2);
			node->environment = graph_intern(strings, tup, desc, 3);
			node->status = graph_intern(strings, tup, desc, 4);
			node->version = graph_intern(strings, tup, desc, 5);
			node->framework = graph_intern(strings, tup, desc, 6);
			node->language = graph_intern(strings, tup, desc, 7);
			node->is_external = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
			node->last_seen = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));
			node->kind = graph_intern(strings, tup, desc, 10);
		}
		SPI_freetuptable(SPI_tuptable);
		graph_check_size((Size) g->n * NODE_BYTES + strings->len, g->n, 0);
	}
	SPI_cursor_close(portal);
}

/*
 * Reads the connections and builds both CSR indexes with counting sorts:
 * O(V + E) after the fetch, each endpoint found by binary search.
 */
static void
graph_load_edges(LatticeGraph *g, Datum tenant, MemoryContext scratch)
{
	Datum args[1] = {tenant};
	Portal portal = SPI_cursor_open(NULL, edges_plan, args, NULL, true);
	int64 cap = 1024, m = 0, k;
	int32 *src, *dst, *fill;
	GraphEdge *tmp;

	src = MemoryContextAllocHuge(scratch, sizeof(int32) * cap);
	dst = MemoryContextAllocHuge(scratch, sizeof(int32) * cap);
	tmp = MemoryContextAllocHuge(scratch, sizeof(GraphEdge) * cap);

	for (;;)
	{
		uint64 i;

		SPI_cursor_fetch(portal, true, GRAPH_FETCH_BATCH);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple tup = SPI_tuptable->vals[i];
			TupleDesc desc = SPI_tuptable->tupdesc;
			bool isnull;
			int32 s = lattice_graph_find(g, DatumGetUUIDP(SPI_getbinval(tup, desc, 1, &isnull)));
			int32 t = lattice_graph_find(g, DatumGetUUIDP(SPI_getbinval(tup, desc, 2, &isnull)));
			GraphEdge *e;
			Datum d;

			if (s < 0 || t < 0)
				continue; /* an endpoint this role cannot see */
			if (m == cap)
			{
				cap *= 2;
				src = repalloc_huge(src, sizeof(int32) * cap);
				dst = repalloc_huge(dst, sizeof(int32) * cap);
				tmp = repalloc_huge(tmp, sizeof(GraphEdge) * cap);
			}
			src[m] = s;
			dst[m] = t;
			e = &tmp[m++];
			e->calls = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
			e->errors = DatumGetInt64(SPI_getbinval(tup, desc, 4, &isnull));
			e->total_ms = DatumGetFloat8(SPI_getbinval(tup, desc, 5, &isnull));
			e->last_seen = DatumGetTimestampTz(SPI_getbinval(tup, desc, 6, &isnull));
			e->declared = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
			d = SPI_getbinval(tup, desc, 8, &isnull);
			if (isnull ||
				!lattice_hist_quantile(DatumGetArrayTypeP(d), 0.95, "lattice.graph", &e->p95_ms))
				e->p95_ms = get_float8_nan();
		}
		SPI_freetuptable(SPI_tuptable);
		graph_check_size((Size) g->n * NODE_BYTES + (Size) m * EDGE_BYTES, g->n, m);
	}
	SPI_cursor_close(portal);
	if (m > INT_MAX / 2)
		graph_check_size(SIZE_MAX, g->n, m);
	g->m = (int32) m;

	g->out_off = graph_alloc(g, sizeof(int32) * (g->n + 1), true);
	g->in_off = graph_alloc(g, sizeof(int32) * (g->n + 1), true);
	g->out_adj = graph_alloc(g, sizeof(int32) * m, false);
	g->edges = graph_alloc(g, sizeof(GraphEdge) * m, false);
	g->in_adj = graph_alloc(g, sizeof(int32) * m, false);
	g->in_edge = graph_alloc(g, sizeof(int32) * m, false);
	g->in_calls = graph_alloc(g, sizeof(int64) * m, false);
	g->in_error_rate = graph_alloc(g, sizeof(double) * m, false);

	for (k = 0; k < m; k++)
	{
		g->out_off[src[k] + 1]++;
		g->in_off[dst[k] + 1]++;
	}
	for (k = 0; k < g->n; k++)
	{
		g->out_off[k + 1] += g->out_off[k];
		g->in_off[k + 1] += g->in_off[k];
	}
	fill = MemoryContextAllocHuge(scratch, sizeof(int32) * (g->n + 1));
	memcpy(fill, g->out_off, sizeof(int32) * (g->n + 1));
	for (k = 0; k < m; k++)
	{
		int32 pos = fill[src[k]]++;

		g->out_adj[pos] = dst[k];
		g->edges[pos] = tmp[k];
		dst[k] = pos; /* remember where edge k went */
	}
	memcpy(fill, g->in_off, sizeof(int32) * (g->n + 1));
	for (k = 0; k < m; k++)
	{
		int32 t = g->out_adj[dst[k]];
		int32 pos = fill[t]++;

		g->in_adj[pos] = src[k];
		g->in_edge[pos] = dst[k];
		g->in_calls[pos] = g->edges[dst[k]].calls;
		g->in_error_rate[pos] = graph_error_rate(&g->edges[dst[k]]);
	}
	MemoryContextReset(scratch);
}

static void
graph_cache_remove(int slot)
{
	MemoryContextDelete(graph_cache[slot]->cxt);
	graph_cache[slot] = graph_cache[--graph_cache_count];
}

/* Drops least recently used graphs until `incoming` more bytes fit. */
static void
graph_cache_make_room(Size incoming)
{
	for (;;)
	{
		Size total = incoming;
		int i, lru = -1;

		for (i = 0; i < graph_cache_count; i++)
		{
			total += graph_cache[i]->bytes;
			if (lru < 0 || graph_cache[i]->last_used < graph_cache[lru]->last_used)
				lru = i;
		}
		if (lru < 0 ||
			(total <= (Size) lattice_graph_cache_kb * 1024 && graph_cache_count < GRAPH_CACHE_SLOTS))
			return;
		graph_cache_remove(lru);
	}
}

static LatticeGraph *
graph_load(const pg_uuid_t *tenant, int64 version, TransactionId xmin)
{
	/* built under the caller's context: an error mid-way frees it all */
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "lattice tenant graph",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext scratch = AllocSetContextCreate(CurrentMemoryContext, "lattice graph load",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	LatticeGraph *g = palloc0(sizeof(LatticeGraph));
	StringInfoData strings;
	Datum tenant_datum = UUIDPGetDatum(unconstify(pg_uuid_t *, tenant));

	g->tenant = *tenant;
	g->version = version;
	g->version_xmin = xmin;
	g->loaded_at = lattice_clock_now();
	g->cxt = cxt;
	initStringInfo(&strings);
	graph_load_nodes(g, tenant_datum, &strings);
	graph_load_edges(g, tenant_datum, scratch);
	g->strings = strings.data;
	g->mark = graph_alloc(g, sizeof(uint32) * g->n, true);
	g->dist = graph_alloc(g, sizeof(int32) * g->n, false);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(scratch);

	g->bytes = MemoryContextMemAllocated(cxt, true);
	graph_check_size(g->bytes, g->n, g->m);
	graph_cache_make_room(g->bytes);
	MemoryContextSetParent(cxt, graph_cache_cxt);
	graph_cache[graph_cache_count++] = g;
	return g;
}

/*
 * Only topology and service state bump the version; calls, errors and
 * latency move with every trace batch.  So that answers do not show them
 * frozen at the last bump, a graph older than lattice.graph_stats_max_age
 * is loaded again (0: only a bump reloads).
 */
static bool
graph_stats_too_old(const LatticeGraph *g)
{
	return lattice_graph_stats_max_age > 0 &&
		lattice_clock_now() - g->loaded_at >= (int64) lattice_graph_stats_max_age * USECS_PER_SEC;
}

/*
 * The current tenant's graph at its current version, loaded when missing or
 * stale.  Raises an error without a tenant.
 */
LatticeGraph *
lattice_graph_current(const char *caller)
{
	pg_uuid_t tenant;
	Datum args[1];
	int64 version = 0;
	TransactionId xmin = InvalidTransactionId;
	LatticeGraph *g = NULL;
	int i, rc;

	lattice_graph_guc_init();
	if (!lattice_get_tenant(&tenant))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("%s: no authenticated tenant", caller)));
	if (graph_cache_cxt == NULL)
		graph_cache_cxt = AllocSetContextCreate(TopMemoryContext, "lattice graph cache",
												ALLOCSET_SMALL_SIZES);

	lattice_spi_connect(caller);
	graph_prepare_all();
	args[0] = UUIDPGetDatum(&tenant);
	rc = SPI_execute_plan(version_plan, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "%s: reading the graph version failed: %s", caller, SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		bool isnull;

		version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		xmin = (TransactionId) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
														   2, &isnull));
	}

	for (i = 0; i < graph_cache_count; i++)
	{
		if (uuid_compare(&graph_cache[i]->tenant, &tenant) != 0)
			continue;
		if (graph_cache[i]->version == version && graph_cache[i]->version_xmin == xmin &&
			!graph_stats_too_old(graph_cache[i]))
			g = graph_cache[i];
		else
			graph_cache_remove(i);
		break;
	}
	if (g == NULL)
		g = graph_load(&tenant, version, xmin);
	SPI_finish();
	g->last_used = ++graph_cache_tick;
	return g;
}

/*
 * lattice.graph_cache_info() -> (version, services, connections, bytes):
 * the current tenant's graph in this backend's cache, loading it if needed.
 */
PG_FUNCTION_INFO_V1(lattice_graph_cache_info);
Datum
lattice_graph_cache_info(PG_FUNCTION_ARGS)
{
	LatticeGraph *g = lattice_graph_current("lattice.graph_cache_info");
	TupleDesc desc;
	Datum values[4];
	bool nulls[4] = {false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.graph_cache_info: return type must be a row type");
	values[0] = Int64GetDatum(g->version);
	values[1] = Int32GetDatum(g->n);
	values[2] = Int32GetDatum(g->m);
	values[3] = Int64GetDatum((int64) g->bytes);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
