/*
 * lattice.c
 *		Module entry point: libsodium, GUCs and hooks of every concern.
 */
#include "common.h"
#include "auth.h"
#include "lattice.h"
#include "tenant.h"
#include "graph.h"

#include <sodium.h>

#include "fmgr.h"

#include "miscadmin.h"

PG_MODULE_MAGIC;

bool lattice_preloaded = false;

void _PG_init(void);

/*
 * Runs once per backend (or once in the postmaster when preloaded).  Every
 * concern registers its GUCs and callbacks from here so the order is explicit.
 */
void
_PG_init(void)
{
	if (sodium_init() < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("lattice: libsodium could not be initialised")));

	lattice_preloaded = process_shared_preload_libraries_in_progress;

	lattice_common_init();
	lattice_tenant_init();
	lattice_tenant_token_init();
	lattice_rate_init();
	lattice_rate_enforce_init();
	lattice_deferred_init();
	lattice_billing_init();
	lattice_graph_guc_init();
	lattice_alert_init();
	/* after the GUCs it reads (lattice.rate_usage_interval, rate_database) */
	if (lattice_preloaded)
		lattice_worker_register();
}
