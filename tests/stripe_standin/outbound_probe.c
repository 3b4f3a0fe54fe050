/*
 * TEST CODE: drives shim/outbound.c directly, so the billing tests exercise
 * the real outbound code against the Stripe stand-in and a real SMTP server.
 *
 *   outbound_probe job CONNINFO JOB_ID   run an interactive job chain, print
 *                                        "status\nheaders\nbody"
 *   outbound_probe drain MILLISECONDS    run the worker thread that long
 *                                        (configuration from LATTICE_* env)
 */
#include "outbound.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The shim's /metrics is not linked in: its statement-error counter is a no-op here. */
void		metrics_statement_error(const char *sqlstate);

void
metrics_statement_error(const char *sqlstate)
{
	(void) sqlstate;
}

int
main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "job") == 0)
	{
		PGconn	   *conn = PQconnectdb(argv[2]);
		struct outbound_answer answer;
		int			rc;

		if (PQstatus(conn) != CONNECTION_OK)
		{
			fprintf(stderr, "%s", PQerrorMessage(conn));
			PQfinish(conn);
			return 2;
		}
		/* settings only: keep the background worker away from the database */
		setenv("LATTICE_DB", "host=/nonexistent-outbound-probe dbname=none connect_timeout=1", 1);
		if (outbound_start(NULL) != 0)
			return 2;
		rc = outbound_run_job(conn, strtoll(argv[3], NULL, 10), &answer);
		printf("%d\n%s\n%s\n", answer.status, answer.headers_json ? answer.headers_json : "",
			   answer.body ? answer.body : "");
		outbound_answer_free(&answer);
		outbound_stop();
		PQfinish(conn);
		return rc == 0 ? 0 : 1;
	}
	if (argc == 3 && strcmp(argv[1], "drain") == 0)
	{
		if (outbound_start(NULL) != 0)
			return 2;
		usleep((useconds_t) strtol(argv[2], NULL, 10) * 1000);
		outbound_stop();
		return 0;
	}
	fprintf(stderr, "usage: outbound_probe job CONNINFO JOB_ID | drain MILLISECONDS\n");
	return 2;
}
