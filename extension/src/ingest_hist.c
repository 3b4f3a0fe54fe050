/*
 * ingest_hist.c
 *		Latency histograms: fixed, roughly logarithmic buckets in milliseconds.
 *
 * Route statistics and edges keep a bigint[] of HIST_BUCKETS counts instead
 * of one row per trace; histograms add element-wise, so any time range or
 * set of routes aggregates exactly, and p50/p95/p99 are read back with
 * linear interpolation inside the bucket (error bounded by the bucket width).
 */
#include "lattice.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"

/* upper bounds (exclusive) of every bucket but the last, which is open */
static const double hist_bounds[] = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

#define HIST_BUCKETS ((int) lengthof(hist_bounds) + 1)

static int
bucket_of(double ms)
{
	int b = 0;

	while (b < (int) lengthof(hist_bounds) && ms >= hist_bounds[b])
		b++;
	return b;
}

static ArrayType *
make_hist(const int64 *counts)
{
	Datum d[HIST_BUCKETS];

	for (int i = 0; i < HIST_BUCKETS; i++)
		d[i] = Int64GetDatum(counts[i]);
	return construct_array(d, HIST_BUCKETS, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

/* Reads a histogram array into counts; refuses a malformed one. */
static void
read_hist(ArrayType *a, int64 *counts, const char *fn)
{
	Datum *elems;
	int n;

	if (ARR_NDIM(a) != 1 || ARR_DIMS(a)[0] != HIST_BUCKETS || ARR_HASNULL(a) ||
		ARR_ELEMTYPE(a) != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s: a histogram is a bigint[] of %d counts", fn, HIST_BUCKETS)));
	deconstruct_array(a, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, NULL, &n);
	for (int i = 0; i < HIST_BUCKETS; i++)
		counts[i] = DatumGetInt64(elems[i]);
}

/* lattice.hist_empty() -> bigint[]: all zeros. */
PG_FUNCTION_INFO_V1(lattice_hist_empty);
Datum
lattice_hist_empty(PG_FUNCTION_ARGS)
{
	int64 counts[HIST_BUCKETS] = {0};

	PG_RETURN_ARRAYTYPE_P(make_hist(counts));
}

/* lattice.hist_of(durations float8[]) -> bigint[]: the histogram of durations. */
PG_FUNCTION_INFO_V1(lattice_hist_of);
Datum
lattice_hist_of(PG_FUNCTION_ARGS)
{
	ArrayType *a = PG_GETARG_ARRAYTYPE_P(0);
	int64 counts[HIST_BUCKETS] = {0};
	Datum *elems;
	bool *nulls;
	int n;

	deconstruct_array(a, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls,
					  &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i])
			counts[bucket_of(DatumGetFloat8(elems[i]))]++;
	PG_RETURN_ARRAYTYPE_P(make_hist(counts));
}

/*
 * lattice.hist_add(a bigint[], b bigint[]) -> bigint[]: element-wise sum; a
 * NULL side counts as empty (the state function of lattice.hist_sum).
 */
PG_FUNCTION_INFO_V1(lattice_hist_add);
Datum
lattice_hist_add(PG_FUNCTION_ARGS)
{
	int64 a[HIST_BUCKETS] = {0};
	int64 b[HIST_BUCKETS] = {0};

	if (PG_ARGISNULL(0) && PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (!PG_ARGISNULL(0))
		read_hist(PG_GETARG_ARRAYTYPE_P(0), a, "lattice.hist_add");
	if (!PG_ARGISNULL(1))
		read_hist(PG_GETARG_ARRAYTYPE_P(1), b, "lattice.hist_add");
	for (int i = 0; i < HIST_BUCKETS; i++)
		a[i] += b[i];
	PG_RETURN_ARRAYTYPE_P(make_hist(a));
}

/*
 * The q-quantile (0 < q <= 1) of histogram h in milliseconds; false for an
 * empty histogram.  Shared by lattice.hist_percentile() and the graph loader.
 */
bool
lattice_hist_quantile(ArrayType *h, double q, const char *fn, double *out)
{
	int64 c[HIST_BUCKETS];
	int64 total = 0;
	double rank, seen = 0;

	read_hist(h, c, fn);
	for (int i = 0; i < HIST_BUCKETS; i++)
		total += c[i];
	if (total == 0)
		return false;
	rank = q * (double) total;
	for (int i = 0; i < HIST_BUCKETS; i++)
	{
		double lo = i == 0 ? 0 : hist_bounds[i - 1];

		if (c[i] > 0 && seen + (double) c[i] >= rank)
		{
			/* the open last bucket answers its lower bound */
			*out = i == HIST_BUCKETS - 1 ? lo :
										   lo + (hist_bounds[i] - lo) * (rank - seen) / (double) c[i];
			return true;
		}
		seen += (double) c[i];
	}
	*out = hist_bounds[lengthof(hist_bounds) - 1];
	return true;
}

/*
 * lattice.hist_percentile(h bigint[], q float8) -> float8: the q-quantile
 * (0 < q <= 1) in milliseconds, NULL for an empty histogram.
 */
PG_FUNCTION_INFO_V1(lattice_hist_percentile);
Datum
lattice_hist_percentile(PG_FUNCTION_ARGS)
{
	double q = PG_GETARG_FLOAT8(1);
	double result;

	if (!(q > 0 && q <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.hist_percentile: q must be in (0, 1]")));
	if (!lattice_hist_quantile(PG_GETARG_ARRAYTYPE_P(0), q, "lattice.hist_percentile", &result))
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(result);
}
