/*
 * graph.h
 *		The per-tenant dependency graph held in compact arrays (CSR).
 *
 * graph_cache.c loads one tenant's services and connections through SPI (as
 * the caller, so row-level security applies) and keeps the result per
 * backend, keyed by (tenant, graph version); graph_traverse.c, graph_scc.c and
 * graph_json.c answer questions from it.  Nodes are sorted by uuid, so an id
 * is found by binary search; edges are stored in source order (out-CSR) with
 * a second index by target (in-CSR).
 */
#ifndef LATTICE_GRAPH_H
#define LATTICE_GRAPH_H

#include "postgres.h"

#include "utils/uuid.h"

#include "lib/stringinfo.h"
#include "utils/timestamp.h"

#define GRAPH_NO_STR ((uint32) 0xFFFFFFFF)

typedef struct GraphNode
{
	pg_uuid_t id;
	uint32 name; /* offsets into LatticeGraph.strings */
	uint32 environment;
	uint32 status;
	uint32 version;
	uint32 framework;
	uint32 language;
	uint32 kind; /* service, external, database or queue */
	bool is_external;
	TimestampTz last_seen;
} GraphNode;

typedef struct GraphEdge
{
	int64 calls;
	int64 errors;
	double total_ms;
	double p95_ms; /* from the edge's latency histogram; NaN if empty */
	TimestampTz last_seen;
	bool declared;
} GraphEdge;

typedef struct LatticeGraph
{
	pg_uuid_t tenant;
	int64 version;
	TransactionId version_xmin; /* tells a rolled-back bump from its retry */
	TimestampTz loaded_at;		/* edge figures are as of this time */
	MemoryContext cxt;
	Size bytes;
	uint64 last_used;

	int32 n;		  /* services */
	int32 m;		  /* connections */
	GraphNode *nodes; /* sorted by id */
	char *strings;
	int32 *out_off;		   /* n + 1; edges [out_off[u], out_off[u+1]) */
	int32 *out_adj;		   /* m; target of edge k */
	GraphEdge *edges;	   /* m; in out-CSR order */
	int32 *in_off;		   /* n + 1 */
	int32 *in_adj;		   /* m; source */
	int32 *in_edge;		   /* m; index into edges */
	int64 *in_calls;	   /* m; the edge's figures in in-CSR order, so an */
	double *in_error_rate; /* upstream walk reads them sequentially */

	/* scratch for one traversal at a time: mark[v] == epoch means visited */
	uint32 *mark;
	uint32 epoch;
	int32 *dist;
} LatticeGraph;

/* graph_cache.c */
extern int lattice_graph_max_depth;
extern int lattice_graph_max_results;
extern int lattice_graph_max_paths;
extern int lattice_graph_cache_kb;
extern int lattice_graph_stats_max_age;

extern void lattice_graph_guc_init(void);
extern LatticeGraph *lattice_graph_current(const char *caller);
extern int32 lattice_graph_find(const LatticeGraph *g, const pg_uuid_t *id);
extern int32 lattice_graph_require(const LatticeGraph *g, Datum id);
extern uint32 lattice_graph_new_epoch(LatticeGraph *g);

static inline const char *
graph_str(const LatticeGraph *g, uint32 off)
{
	return off == GRAPH_NO_STR ? NULL : g->strings + off;
}

static inline double
graph_error_rate(const GraphEdge *e)
{
	return e->calls > 0 ? (double) e->errors / (double) e->calls : 0.0;
}

/* graph_json.c: JSON writers shared by the emitters */
extern void graph_json_uuid(StringInfo buf, const pg_uuid_t *id);
extern void graph_json_str(StringInfo buf, const char *s);
extern void graph_json_node_open(StringInfo buf, const LatticeGraph *g, const GraphNode *node);
extern void graph_json_ts(StringInfo buf, TimestampTz t);
extern void graph_json_float(StringInfo buf, double v);
extern void graph_json_node_brief(StringInfo buf, const LatticeGraph *g, int32 v);
extern Datum graph_json_result(StringInfo buf);

#endif /* LATTICE_GRAPH_H */
