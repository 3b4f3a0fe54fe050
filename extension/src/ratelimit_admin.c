/*
 * ratelimit_admin.c
 *		What a DBA sees of the counters, and the benchmark loop.
 */
#include "common.h"
#include "ratelimit.h"

#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

static void
rate_require_admin(const char *caller)
{
	Oid admin = get_role_oid("lattice_admin", true);

	if (superuser())
		return;
	if (!OidIsValid(admin) || !has_privs_of_role(GetUserId(), admin))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE), errmsg("%s: permission denied", caller),
				 errdetail("Only members of lattice_admin may read every counter.")));
}

/*
 * lattice.rate_counters_all() -> SETOF record: every key of the table, for
 * the lattice.rate_counters view (lattice_admin only).  Entries are copied
 * under a shared lock and turned into rows after it is released.
 */
PG_FUNCTION_INFO_V1(lattice_rate_counters_all);
Datum
lattice_rate_counters_all(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	RateEntry *copy;
	HASH_SEQ_STATUS seq;
	RateEntry *e;
	long n = 0;
	long cap;
	TimestampTz now = rate_now();
	int64 hour = GetCurrentTimestamp() / USECS_PER_HOUR;

	rate_require_admin("lattice.rate_counters_all");
	rate_require_shmem("lattice.rate_counters_all");
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(rate_shared->lock, LW_SHARED);
	cap = Max(hash_get_num_entries(rate_hash), 1);
	copy = palloc(sizeof(RateEntry) * cap);
	hash_seq_init(&seq, rate_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (n < cap)
			copy[n++] = *e;
	}
	LWLockRelease(rate_shared->lock);

	for (long i = 0; i < n; i++)
	{
		Datum values[11];
		bool nulls[11] = {false};
		int64 remaining;
		int64 reset;
		bool this_hour = copy[i].hour == hour;

		e = &copy[i];
		rate_entry_state(e, now, &remaining, &reset);
		values[0] = CStringGetTextDatum(e->scope);
		if (e->has_tenant)
		{
			/* a class counter: the tenant, and the service for ingest */
			char *tenant = lattice_uuid_text(&e->tenant);

			values[1] = CStringGetTextDatum(e->key.kind == RATE_KIND_INGEST ?
												psprintf("%s/%s", tenant, e->label) :
												tenant);
		}
		else
			values[1] = CStringGetTextDatum(e->label);
		values[2] = Int64GetDatum(e->limit);
		values[3] = Int64GetDatum(e->period_us / USECS_PER_SEC);
		values[4] = Int64GetDatum(e->burst);
		values[5] = Int64GetDatum(remaining);
		values[6] = Int64GetDatum(reset);
		values[7] = Int64GetDatum(this_hour ? e->allowed : 0);
		values[8] = Int64GetDatum(this_hour ? e->refused : 0);
		values[9] = TimestampTzGetDatum(hour * USECS_PER_HOUR);
		values[10] = TimestampTzGetDatum(e->last_used);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * lattice.rate_memory() -> record: the table's size and its shared memory
 * per key, as PostgreSQL's own estimate for a hash of that many entries.
 */
PG_FUNCTION_INFO_V1(lattice_rate_memory);
Datum
lattice_rate_memory(PG_FUNCTION_ARGS)
{
	TupleDesc tupdesc;
	Datum values[6];
	bool nulls[6] = {false};
	Size total = hash_estimate_size(rate_table_size, sizeof(RateEntry));
	Size for100k = hash_estimate_size(100000, sizeof(RateEntry));
	int64 entries = 0;
	int64 evictions = 0;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.rate_memory: called in a wrong context");
	if (rate_hash)
	{
		LWLockAcquire(rate_shared->lock, LW_SHARED);
		entries = hash_get_num_entries(rate_hash);
		evictions = rate_shared->evictions;
		LWLockRelease(rate_shared->lock);
	}
	values[0] = Int32GetDatum(rate_table_size);
	values[1] = Int64GetDatum(entries);
	values[2] = Int64GetDatum(evictions);
	values[3] = Int32GetDatum((int32) sizeof(RateEntry));
	values[4] = Int64GetDatum((int64) total);
	values[5] = Int64GetDatum((int64) for100k);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * lattice.rate_bench(iterations bigint, keys integer) -> float8 checks/s
 * Superuser only: loops the tenant check (lock, probe, GCRA, count) in C
 * over `keys` distinct bench keys, so the figure is the check alone.
 */
PG_FUNCTION_INFO_V1(lattice_rate_bench);
Datum
lattice_rate_bench(PG_FUNCTION_ARGS)
{
	int64 iterations = PG_GETARG_INT64(0);
	int32 keys = PG_GETARG_INT32(1);
	RateKey key;
	LatticeRateResult r;
	instr_time start;
	instr_time elapsed;

	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.rate_bench: permission denied"),
				 errdetail("Only superusers may run the benchmark loop.")));
	if (iterations < 1 || keys < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.rate_bench: iterations and keys must be positive")));
	rate_require_shmem("lattice.rate_bench");

	memset(&key, 0, sizeof(key));
	key.kind = RATE_KIND_BENCH;
	INSTR_TIME_SET_CURRENT(start);
	for (int64 i = 0; i < iterations; i++)
	{
		uint32 k = (uint32) (i % keys);

		memcpy(key.id, &k, sizeof(k));
		rate_check_key(&key, "bench", NULL, 1000000000, 3600, 1000000000, &r);
		if ((i & 0xffff) == 0)
			CHECK_FOR_INTERRUPTS();
	}
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);

	/* leave the table to real keys */
	for (int32 k = 0; k < keys; k++)
	{
		RateEntry *e;

		memcpy(key.id, &k, sizeof(k));
		LWLockAcquire(rate_shared->lock, LW_EXCLUSIVE);
		e = hash_search(rate_hash, &key, HASH_FIND, NULL);
		if (e)
		{
			dlist_delete(&e->lru);
			hash_search(rate_hash, &key, HASH_REMOVE, NULL);
		}
		LWLockRelease(rate_shared->lock);
	}
	PG_RETURN_FLOAT8((double) iterations / Max(INSTR_TIME_GET_DOUBLE(elapsed), 1e-9));
}

/*
 * lattice.rate_flush_usage() -> bigint: rolls the tenants' unflushed usage
 * into lattice.usage_hourly now (what the worker does every interval).
 */
PG_FUNCTION_INFO_V1(lattice_rate_flush_usage);
Datum
lattice_rate_flush_usage(PG_FUNCTION_ARGS)
{
	int64 rows;

	rate_require_shmem("lattice.rate_flush_usage");
	lattice_spi_connect("lattice.rate_flush_usage");
	rows = rate_flush_usage();
	SPI_finish();
	PG_RETURN_INT64(rows);
}

/*
 * lattice.rate_class_totals() -> SETOF (class text, used bigint, refused
 * bigint): this hour's requests allowed and refused, summed over every key
 * of each quota class (api, dashboard, ingest per service, address), for
 * /metrics.  No key, tenant or address leaves the function; without the
 * shared table every figure is 0.  The ingest ceiling of an account counts
 * the same requests as its services, so it is not added again.
 */
PG_FUNCTION_INFO_V1(lattice_rate_class_totals);
Datum
lattice_rate_class_totals(PG_FUNCTION_ARGS)
{
	static const char *const classes[] = {"api", "dashboard", "ingest", "address"};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64 used[4] = {0};
	int64 refused[4] = {0};
	int64 hour = GetCurrentTimestamp() / USECS_PER_HOUR;

	InitMaterializedSRF(fcinfo, 0);
	if (rate_hash)
	{
		HASH_SEQ_STATUS seq;
		RateEntry *e;

		LWLockAcquire(rate_shared->lock, LW_SHARED);
		hash_seq_init(&seq, rate_hash);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			int c;

			if (e->hour != hour)
				continue;
			switch (e->key.kind)
			{
				case RATE_KIND_TENANT:
					c = 0;
					break;
				case RATE_KIND_DASHBOARD:
					c = 1;
					break;
				case RATE_KIND_INGEST:
					c = 2;
					break;
				case RATE_KIND_SCOPED:
					c = strncmp(e->scope, "addr_", 5) == 0 ? 3 : -1;
					break;
				default:
					c = -1;
			}
			if (c < 0)
				continue;
			used[c] += e->allowed;
			refused[c] += e->refused;
		}
		LWLockRelease(rate_shared->lock);
	}
	for (int c = 0; c < 4; c++)
	{
		Datum values[3];
		bool nulls[3] = {false};

		values[0] = CStringGetTextDatum(classes[c]);
		values[1] = Int64GetDatum(used[c]);
		values[2] = Int64GetDatum(refused[c]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
