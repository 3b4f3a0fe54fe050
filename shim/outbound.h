/*
 * outbound.h
 *		Outbound calls of the shim: Stripe's API, SMTP e-mail and alert
 *		webhooks, drained from the extension's outbox (lattice.outbox) with
 *		libcurl.
 *
 * No call ever runs inside a database transaction: a job is claimed through
 * lattice_worker.outbox_claim*() (autocommit), performed with no transaction
 * open, and its result recorded through lattice_worker.outbox_complete().
 *
 *   outbound_start()   once at start-up: libcurl, then the worker thread that
 *                      sends background jobs (e-mail) with retries, and the
 *                      webhook thread that keeps many webhook deliveries in
 *                      flight at once (libcurl multi)
 *   outbound_stop()    once at shutdown: stops and joins both threads
 *   outbound_run_job() for the dispatcher: a route flagged `outbound` whose
 *                      SQL answer carries `Lattice-Outbox-Job: <id>` runs that
 *                      job (and the jobs it chains) right after its COMMIT and
 *                      answers with what outbox_complete returns
 */
#ifndef LATTICE_OUTBOUND_H
#define LATTICE_OUTBOUND_H

#include <libpq-fe.h>
#include <stdbool.h>

/*
 * Configuration.  NULL / 0 fields fall back to the environment variable in
 * brackets, then to the default.
 */
struct outbound_config {
    const char *conninfo;          /* libpq conninfo of the worker [LATTICE_DB] */
    const char *stripe_api_base;   /* [LATTICE_STRIPE_API_BASE] https://api.stripe.com */
    const char *stripe_secret_key; /* [LATTICE_STRIPE_SECRET_KEY] sk_... */
    const char *stripe_version;    /* [LATTICE_STRIPE_VERSION] optional Stripe-Version */
    long stripe_timeout_ms;        /* [LATTICE_STRIPE_TIMEOUT_MS] per attempt, 10000 */
    const char *smtp_url;          /* [LATTICE_SMTP_URL] smtp://127.0.0.1:25 or smtps://... */
    const char *smtp_username;     /* [LATTICE_SMTP_USERNAME] */
    const char *smtp_password;     /* [LATTICE_SMTP_PASSWORD] */
    const char *smtp_tls;     /* [LATTICE_SMTP_TLS] none | starttls | required (default starttls if offered: "try") */
    const char *mail_from;    /* [LATTICE_MAIL_FROM] Lattice <billing@localhost> */
    long smtp_timeout_ms;     /* [LATTICE_SMTP_TIMEOUT_MS] 15000 */
    long poll_interval_ms;    /* [LATTICE_OUTBOX_POLL_MS] 1000 */
    long webhook_concurrency; /* [LATTICE_WEBHOOK_CONCURRENCY] deliveries in flight, 16 */
    long webhook_timeout_ms;  /* [LATTICE_WEBHOOK_TIMEOUT_MS] per delivery, 10000 */
};

/* Starts the threads; 0 on success, -1 (logged to stderr) on failure. */
extern int outbound_start(const struct outbound_config *config);

/*
 * Stops the threads and waits for them; a no-op when they never started.
 * Webhook deliveries still in flight are abandoned and recorded as
 * interrupted (the extension retries them).
 */
extern void outbound_stop(void);

/* The answer for the client of an interactive job; strings are malloc'd. */
struct outbound_answer {
    int status;
    char *headers_json; /* a JSON object, never NULL on success */
    char *body;         /* JSON text, may be NULL */
};

/*
 * Runs interactive job job_id (and the jobs it chains) on conn, which must be
 * idle (no transaction open).  Fills answer; returns 0, or -1 when the
 * database failed (answer then holds a 503).  Free with outbound_answer_free.
 */
extern int outbound_run_job(PGconn *conn, long long job_id, struct outbound_answer *answer);
extern void outbound_answer_free(struct outbound_answer *answer);

/* For /metrics: webhook deliveries in flight now, and attempts ended by outcome. */
struct outbound_webhook_stats {
    long in_flight;
    unsigned long delivered; /* a 2xx answer */
    unsigned long not_2xx;   /* any other answer (a redirect too) */
    unsigned long refused;   /* by the address or scheme rules: nothing sent */
    unsigned long failed;    /* no answer: connection, TLS, timeout, stopped */
};
extern void outbound_webhook_stats(struct outbound_webhook_stats *stats);

/*
 * For dispatch.c, on a route flagged R_OUTBOUND after the call's COMMIT:
 * when *row (status, headers, body, tenant, rate state) carries
 * Lattice-Outbox-Job, runs that job on conn and replaces *row with the job's
 * answer in the same shape.  Leaves *row alone otherwise.  False when the
 * database failed on the way: conn may then be out of step with its answers
 * and is to be closed.
 */
extern bool outbound_follow(PGconn *conn, PGresult **row);

#endif /* LATTICE_OUTBOUND_H */
