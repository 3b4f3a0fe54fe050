/*
 * common.h
 *		What every concern uses and that depends on nothing else of ours:
 *		the clock (common.c), request fields (common.c), SPI helpers
 *		(common.c), the audit-row insert (common.c) and the error that
 *		becomes an HTTP answer (http.c).
 *
 * Nothing declared here calls back into another file of the extension, so
 * every other file may include it; see docs/design.md for the layering.
 */
#ifndef LATTICE_COMMON_H
#define LATTICE_COMMON_H

#include "postgres.h"

#include "access/xact.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

/*
 * The clock every validity check uses.  Superusers may pin it for the rest
 * of a transaction (lattice.test_set_clock); the transaction's end unpins it.
 */
extern void lattice_common_init(void);
extern TimestampTz lattice_clock_now(void);

/*
 * Transaction-scoped state lives in C variables that a transaction callback
 * clears when this says the transaction has ended (commit, abort, prepare).
 */
extern bool lattice_xact_ended(XactEvent event);

/* Members of the request object the shim passes (NULL / false when absent) */
extern char *lattice_req_text(Jsonb *req, const char *key);
extern bool lattice_req_bool(Jsonb *req, const char *key);

/* A uuid as palloc'd text */
extern char *lattice_uuid_text(const pg_uuid_t *id);

/*
 * SPI: connect or raise, and a plan prepared once per backend and kept
 * (needs executor/spi.h for SPIPlanPtr).
 */
struct _SPI_plan;
extern void lattice_spi_connect(const char *caller);
extern struct _SPI_plan *lattice_spi_prepare_kept(struct _SPI_plan **cache, const char *sql, int nargs,
												  Oid *types);

/*
 * One row through lattice.audit(), as the current role, now.  A read-only
 * transaction cannot write: lattice_audit() (audit.c) decides.
 */
extern void lattice_audit_insert(const char *action, const pg_uuid_t *user_id, const char *target,
								 const char *details_json, Jsonb *req);

/* Session user is a superuser or a member of lattice_admin */
extern bool lattice_caller_is_privileged(void);
/* The transaction cannot write (read-only, or a standby) */
extern bool lattice_xact_read_only(void);
/* The owner of schema lattice: the role that reads what no API role may */
extern Oid lattice_schema_owner(void);

/* http.c: raise an error the shim turns into an HTTP answer (PTnnn SQLSTATE) */
extern void lattice_raise_http(int status, const char *code, const char *message,
							   const char *details_json, const char *headers_json)
	pg_attribute_noreturn();

/* true when lattice is loaded through shared_preload_libraries (lattice.c) */
extern bool lattice_preloaded;

#endif /* LATTICE_COMMON_H */
