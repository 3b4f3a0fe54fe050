/*
 * ratelimit.c
 *		Rate counters in shared memory.
 *
 * Placeholder until the rate-counter issue lands: allows everything and
 * reports the plan's limit as untouched.
 */
#include "lattice.h"

void
lattice_rate_init(void)
{
}

void
lattice_rate_enforce_tenant(const pg_uuid_t *user_id, LatticeRateResult *out)
{
	out->allowed = true;
	out->limit = 1000;
	out->remaining = 1000;
	out->reset_seconds = 0;
	out->retry_after_seconds = 0;
}

bool
lattice_rate_check(const char *scope, const char *key, int64 limit,
				   int64 period_seconds, LatticeRateResult *out)
{
	out->allowed = true;
	out->limit = limit;
	out->remaining = limit;
	out->reset_seconds = 0;
	out->retry_after_seconds = 0;
	return true;
}
