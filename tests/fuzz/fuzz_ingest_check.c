/*
 * libFuzzer target: ingest validation (extension/src/ingest_validate.c) as it
 * runs, inside a real PostgreSQL backend: each input is one call of
 * lattice.ingest_check(kind, body) over libpq on the test cluster (PGHOST
 * etc., as tests/run.sh exports them).  The backend is not instrumented,
 * so coverage feedback stops at this file and the run is a mutation fuzzer
 * over the captured bodies.  The rules themselves are fuzzed with coverage, in process, by
 * fuzz_ingest_validate.c (the core, ingest_validate_*.c); this target
 * stays for what only the backend has: PostgreSQL's text input, regex
 * engine and error texts, the PTnnn answer, and releasing the core's memory
 * on every way out.
 *
 * Input: one byte choosing the kind, then the body.  Every answer must be
 * success or a clean refusal (PT400, PT413, or 22021 for bytes that are not
 * UTF-8, refused before the call); a lost connection (a backend that
 * crashed) or any other error aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

static const char *const kinds[] = {"metadata", "traces", "errors", "error", "breadcrumbs", "metrics"};
static PGconn *conn;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	PGresult *r;

	(void) argc;
	(void) argv;
	conn = PQconnectdb("application_name=fuzz_ingest_check");
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "fuzz_ingest_check: %s", PQerrorMessage(conn));
		exit(2);
	}
	r = PQprepare(conn, "check", "SELECT lattice.ingest_check($1, $2)", 2, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
	{
		fprintf(stderr, "fuzz_ingest_check: %s", PQerrorMessage(conn));
		exit(2);
	}
	PQclear(r);
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *body;
	const char *values[2];
	int lengths[2];
	int formats[2] = {0, 1}; /* the body as bytes: NULs reach the server */
	PGresult *r;
	const char *state;

	if (size < 1 || size > 3 * 1024 * 1024)
		return 0;
	body = malloc(size);
	if (!body)
		return 0;
	memcpy(body, data + 1, size - 1);
	values[0] = kinds[data[0] % 6];
	values[1] = body;
	lengths[0] = 0;
	lengths[1] = (int) size - 1;
	r = PQexecPrepared(conn, "check", 2, values, lengths, formats, 0);
	state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "fuzz_ingest_check: the connection was lost: %s", PQerrorMessage(conn));
		abort();
	}
	if (PQresultStatus(r) != PGRES_TUPLES_OK &&
		!(state &&
		  (strcmp(state, "PT400") == 0 || strcmp(state, "PT413") == 0 || strcmp(state, "22021") == 0 ||
		   strcmp(state, "22P05") == 0)))
	{
		fprintf(stderr, "fuzz_ingest_check: unexpected %s: %s", state ? state : "-",
				PQresultErrorMessage(r));
		abort();
	}
	PQclear(r);
	free(body);
	return 0;
}
