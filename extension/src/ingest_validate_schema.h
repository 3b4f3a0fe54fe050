/*
 * ingest_validate_schema.h
 *		The rules of each kind of ingest body.
 */
#ifndef LATTICE_INGEST_VALIDATE_SCHEMA_H
#define LATTICE_INGEST_VALIDATE_SCHEMA_H

#include <stdbool.h>

#include "ingest_validate_core.h"

/*
 * Checks root (a parsed body) as a document of kind, collecting the problems
 * in v; false when there is no such kind.
 */
extern bool ingest_check_kind(IngestValidation *v, const char *kind, struct json_object *root);

#endif /* LATTICE_INGEST_VALIDATE_SCHEMA_H */
