/*
 * lattice.h
 *		Shared declarations of the lattice extension.
 *
 * Each concern has its own file in src/: tenant.c holds the transaction's
 * tenant, the others build on it.  Functions exported to SQL are declared
 * with PG_FUNCTION_INFO_V1 next to their definitions.
 */
#ifndef LATTICE_H
#define LATTICE_H

#include "postgres.h"
#include "utils/uuid.h"

/* tenant.c: the authenticated tenant of the current transaction */
extern void lattice_tenant_init(void);
extern void lattice_set_tenant(const pg_uuid_t *user_id);
extern bool lattice_get_tenant(pg_uuid_t *user_id);
extern void lattice_clear_tenant(void);

/* true when lattice is loaded through shared_preload_libraries */
extern bool lattice_preloaded;

#endif							/* LATTICE_H */
