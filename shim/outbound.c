/*
 * outbound.c
 *		Stripe API calls and SMTP e-mail for the extension's outbox.
 *
 * The extension decides what to send (lattice.outbox); this file only moves
 * bytes: it form-encodes a Stripe request from [key, value] pairs, sends it
 * with the secret key and the job's Idempotency-Key, and hands Stripe's
 * status and body back to lattice_worker.outbox_complete(), which interprets
 * them.  E-mail goes out over SMTP with a plain-text and an HTML part.
 *
 * Every database call here is a single autocommit statement: no outbound I/O
 * ever happens while a transaction is open.  Retries of e-mail (backoff, at
 * least once) are the extension's; this file retries a Stripe request once,
 * with the same Idempotency-Key, on a network error or a 5xx.
 */
#include "outbound.h"
#include "shim.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define OUTBOUND_MAX_RESPONSE	(256 * 1024)	/* Stripe objects are far smaller */
#define OUTBOUND_MAX_FORM		(64 * 1024)
#define OUTBOUND_MAX_CHAIN		4	/* checkout: customer, then session */
#define OUTBOUND_BATCH			20

struct outbound_settings
{
	char	   *conninfo;
	char	   *stripe_api_base;
	char	   *stripe_secret_key;
	char	   *stripe_version;
	long		stripe_timeout_ms;
	char	   *smtp_url;
	char	   *smtp_username;
	char	   *smtp_password;
	char	   *smtp_tls;
	char	   *mail_from;
	long		smtp_timeout_ms;
	long		poll_interval_ms;
};

static struct outbound_settings settings;
static pthread_t worker_thread;
static bool worker_running = false;
static bool worker_stop = false;
static pthread_mutex_t worker_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t worker_wake = PTHREAD_COND_INITIALIZER;

/* A job as lattice_worker.job returns it. */
struct outbound_job
{
	long long	id;
	const char *kind;
	const char *method;
	const char *path;
	const char *params;
	const char *idempotency_key;
	const char *mail_to;
	const char *mail_subject;
	const char *mail_text;
	const char *mail_html;
};

/* What a call produced, for outbox_complete. */
struct outbound_result
{
	long		status;			/* HTTP status / SMTP reply code, 0 when none */
	char	   *body;			/* response body (Stripe), malloc'd */
	char		error[CURL_ERROR_SIZE + 64];	/* transport error, "" when none */
};

static char *
setting(const char *given, const char *env, const char *fallback)
{
	const char *v = (given && *given) ? given : getenv(env);

	if (!v || !*v)
		v = fallback;
	return v ? strdup(v) : NULL;
}

static long
setting_long(long given, const char *env, long fallback)
{
	const char *v = getenv(env);

	if (given > 0)
		return given;
	if (v && *v)
	{
		long		n = strtol(v, NULL, 10);

		if (n > 0)
			return n;
	}
	return fallback;
}

/* ---- Stripe ------------------------------------------------------------ */

struct response_buffer
{
	char	   *data;
	size_t		len;
	bool		overflow;
};

static size_t
response_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	struct response_buffer *buf = userdata;
	size_t		n = size * nmemb;
	char	   *grown;

	if (buf->len + n > OUTBOUND_MAX_RESPONSE)
	{
		buf->overflow = true;
		return 0;				/* makes curl fail the transfer */
	}
	grown = realloc(buf->data, buf->len + n + 1);
	if (!grown)
		return 0;
	buf->data = grown;
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

/*
 * Form-encodes a JSON array of [key, value] string pairs with curl's escaping
 * into out (size outsz).  Returns false when the params are not such an
 * array or do not fit.
 */
static bool
form_encode(CURL *curl, const char *params_json, char *out, size_t outsz)
{
	struct json_object *arr = json_tokener_parse(params_json ? params_json : "[]");
	size_t		used = 0;
	size_t		i;
	bool		ok = true;

	out[0] = '\0';
	if (!arr || !json_object_is_type(arr, json_type_array))
	{
		json_object_put(arr);
		return false;
	}
	for (i = 0; ok && i < json_object_array_length(arr); i++)
	{
		struct json_object *pair = json_object_array_get_idx(arr, i);
		char	   *k;
		char	   *v;
		int			n;

		if (!json_object_is_type(pair, json_type_array) || json_object_array_length(pair) != 2 ||
			!json_object_is_type(json_object_array_get_idx(pair, 0), json_type_string) ||
			!json_object_is_type(json_object_array_get_idx(pair, 1), json_type_string))
		{
			ok = false;
			break;
		}
		k = curl_easy_escape(curl, json_object_get_string(json_object_array_get_idx(pair, 0)), 0);
		v = curl_easy_escape(curl, json_object_get_string(json_object_array_get_idx(pair, 1)), 0);
		if (!k || !v)
			ok = false;
		else
		{
			n = snprintf(out + used, outsz - used, "%s%s=%s", used ? "&" : "", k, v);
			if (n < 0 || (size_t) n >= outsz - used)
				ok = false;
			else
				used += (size_t) n;
		}
		curl_free(k);
		curl_free(v);
	}
	json_object_put(arr);
	return ok;
}

static bool
transient_status(long status)
{
	return status == 500 || status == 502 || status == 503 || status == 504;
}

/* Sends one Stripe request, retrying once on a network error or a 5xx. */
static void
stripe_call(const struct outbound_job *job, struct outbound_result *res)
{
	CURL	   *curl = curl_easy_init();
	char	   *form = malloc(OUTBOUND_MAX_FORM);
	char		url[2048];
	char		auth[512];
	char		idem[320];
	char		version[128];
	int			attempt;

	res->status = 0;
	res->body = NULL;
	res->error[0] = '\0';
	if (!curl || !form)
	{
		snprintf(res->error, sizeof(res->error), "out of memory");
		goto done;
	}
	if (!settings.stripe_secret_key)
	{
		snprintf(res->error, sizeof(res->error), "no Stripe secret key configured");
		goto done;
	}
	if (!form_encode(curl, job->params, form, OUTBOUND_MAX_FORM))
	{
		snprintf(res->error, sizeof(res->error), "job params are not [key, value] pairs or too long");
		goto done;
	}
	if (strcmp(job->method, "GET") == 0 && form[0])
		snprintf(url, sizeof(url), "%s%s?%s", settings.stripe_api_base, job->path, form);
	else
		snprintf(url, sizeof(url), "%s%s", settings.stripe_api_base, job->path);
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", settings.stripe_secret_key);
	snprintf(idem, sizeof(idem), "Idempotency-Key: %s", job->idempotency_key);

	for (attempt = 0; attempt < 2; attempt++)
	{
		struct curl_slist *headers = NULL;
		struct response_buffer buf = {NULL, 0, false};
		char		errbuf[CURL_ERROR_SIZE] = "";
		CURLcode	rc;

		curl_easy_reset(curl);
		headers = curl_slist_append(headers, auth);
		headers = curl_slist_append(headers, idem);
		headers = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
		headers = curl_slist_append(headers, "Accept: application/json");
		if (settings.stripe_version)
		{
			snprintf(version, sizeof(version), "Stripe-Version: %s", settings.stripe_version);
			headers = curl_slist_append(headers, version);
		}
		curl_easy_setopt(curl, CURLOPT_URL, url);
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(curl, CURLOPT_USERAGENT, "lattice-shim");
		curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, settings.stripe_timeout_ms < 5000 ? settings.stripe_timeout_ms : 5000L);
		curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, settings.stripe_timeout_ms);
		curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
		curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
		curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, response_write);
		curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
		if (strcmp(job->method, "POST") == 0)
		{
			curl_easy_setopt(curl, CURLOPT_POST, 1L);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDS, form);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(form));
		}
		else if (strcmp(job->method, "DELETE") == 0)
			curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "DELETE");

		rc = curl_easy_perform(curl);
		curl_slist_free_all(headers);
		free(res->body);
		res->body = buf.data;
		res->status = 0;
		res->error[0] = '\0';
		if (rc == CURLE_OK)
			curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &res->status);
		else
			snprintf(res->error, sizeof(res->error), "%s", buf.overflow ? "response too large"
					 : (errbuf[0] ? errbuf : curl_easy_strerror(rc)));
		if (rc == CURLE_OK && !transient_status(res->status))
			break;
		if (buf.overflow)
			break;
		if (attempt == 0)
			usleep(200 * 1000);	/* one bounded retry, same Idempotency-Key */
	}

done:
	free(form);
	if (curl)
		curl_easy_cleanup(curl);
}

/* ---- SMTP -------------------------------------------------------------- */

static bool
header_safe(const char *s)
{
	return s && !strpbrk(s, "\r\n");
}

/* The address inside "Name <addr>", or the whole string. */
static void
bare_address(const char *from, char *out, size_t outsz)
{
	const char *lt = strchr(from, '<');
	const char *gt = lt ? strchr(lt, '>') : NULL;

	if (lt && gt && gt > lt + 1)
		snprintf(out, outsz, "<%.*s>", (int) (gt - lt - 1), lt + 1);
	else
		snprintf(out, outsz, "<%s>", from);
}

static void
smtp_send(const struct outbound_job *job, struct outbound_result *res)
{
	CURL	   *curl = curl_easy_init();
	curl_mime  *mime = NULL;
	curl_mime  *alt = NULL;
	curl_mimepart *part;
	struct curl_slist *headers = NULL;
	struct curl_slist *rcpt = NULL;
	struct curl_slist *inline_hdr = NULL;
	char		errbuf[CURL_ERROR_SIZE] = "";
	char		line[1024];
	char		from_addr[320];
	char		to_addr[320];
	char		date[64];
	time_t		now = time(NULL);
	struct tm	tm_utc;
	CURLcode	rc;

	res->status = 0;
	res->body = NULL;
	res->error[0] = '\0';
	if (!curl)
	{
		snprintf(res->error, sizeof(res->error), "out of memory");
		return;
	}
	if (!settings.smtp_url)
	{
		snprintf(res->error, sizeof(res->error), "no SMTP server configured");
		curl_easy_cleanup(curl);
		return;
	}
	if (!header_safe(job->mail_to) || !header_safe(job->mail_subject) || !header_safe(settings.mail_from))
	{
		snprintf(res->error, sizeof(res->error), "refused: a header value contains a line break");
		curl_easy_cleanup(curl);
		return;
	}

	bare_address(settings.mail_from, from_addr, sizeof(from_addr));
	snprintf(to_addr, sizeof(to_addr), "<%s>", job->mail_to);
	rcpt = curl_slist_append(rcpt, to_addr);

	gmtime_r(&now, &tm_utc);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm_utc);
	snprintf(line, sizeof(line), "Date: %s", date);
	headers = curl_slist_append(headers, line);
	snprintf(line, sizeof(line), "From: %s", settings.mail_from);
	headers = curl_slist_append(headers, line);
	snprintf(line, sizeof(line), "To: %s", job->mail_to);
	headers = curl_slist_append(headers, line);
	snprintf(line, sizeof(line), "Subject: %s", job->mail_subject);
	headers = curl_slist_append(headers, line);
	/* the job id makes the Message-ID stable across retries */
	snprintf(line, sizeof(line), "Message-ID: <outbox-%lld@lattice>", job->id);
	headers = curl_slist_append(headers, line);
	headers = curl_slist_append(headers, "Auto-Submitted: auto-generated");

	/* multipart/alternative: plain text first, HTML preferred by clients that can */
	mime = curl_mime_init(curl);
	alt = curl_mime_init(curl);
	part = curl_mime_addpart(alt);
	curl_mime_data(part, job->mail_text, CURL_ZERO_TERMINATED);
	curl_mime_type(part, "text/plain; charset=utf-8");
	curl_mime_encoder(part, "quoted-printable");
	part = curl_mime_addpart(alt);
	curl_mime_data(part, job->mail_html, CURL_ZERO_TERMINATED);
	curl_mime_type(part, "text/html; charset=utf-8");
	curl_mime_encoder(part, "quoted-printable");
	part = curl_mime_addpart(mime);
	curl_mime_subparts(part, alt);
	curl_mime_type(part, "multipart/alternative");
	inline_hdr = curl_slist_append(inline_hdr, "Content-Disposition: inline");
	curl_mime_headers(part, inline_hdr, 1);

	curl_easy_setopt(curl, CURLOPT_URL, settings.smtp_url);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
	curl_easy_setopt(curl, CURLOPT_MAIL_FROM, from_addr);
	curl_easy_setopt(curl, CURLOPT_MAIL_RCPT, rcpt);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_MIMEPOST, mime);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, settings.smtp_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, settings.smtp_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	if (settings.smtp_username)
		curl_easy_setopt(curl, CURLOPT_USERNAME, settings.smtp_username);
	if (settings.smtp_password)
		curl_easy_setopt(curl, CURLOPT_PASSWORD, settings.smtp_password);
	if (strcmp(settings.smtp_tls, "required") == 0)
		curl_easy_setopt(curl, CURLOPT_USE_SSL, (long) CURLUSESSL_ALL);
	else if (strcmp(settings.smtp_tls, "none") == 0)
		curl_easy_setopt(curl, CURLOPT_USE_SSL, (long) CURLUSESSL_NONE);
	else
		curl_easy_setopt(curl, CURLOPT_USE_SSL, (long) CURLUSESSL_TRY);

	rc = curl_easy_perform(curl);
	if (rc == CURLE_OK)
	{
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &res->status);
		if (res->status < 200 || res->status > 299)
			res->status = 250;	/* curl reports success only after 250 */
	}
	else
	{
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &res->status);
		snprintf(res->error, sizeof(res->error), "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
	}

	curl_slist_free_all(rcpt);
	curl_slist_free_all(headers);
	curl_mime_free(mime);		/* frees alt as its subparts */
	curl_easy_cleanup(curl);
}

/* ---- The outbox -------------------------------------------------------- */

static void
job_from_row(PGresult *r, int row, struct outbound_job *job)
{
	job->id = strtoll(PQgetvalue(r, row, 0), NULL, 10);
	job->kind = PQgetvalue(r, row, 1);
	job->method = PQgetvalue(r, row, 2);
	job->path = PQgetvalue(r, row, 3);
	job->params = PQgetvalue(r, row, 4);
	job->idempotency_key = PQgetvalue(r, row, 5);
	job->mail_to = PQgetvalue(r, row, 6);
	job->mail_subject = PQgetvalue(r, row, 7);
	job->mail_text = PQgetvalue(r, row, 8);
	job->mail_html = PQgetvalue(r, row, 9);
}

static void
perform(const struct outbound_job *job, struct outbound_result *res)
{
	if (strcmp(job->kind, "email") == 0)
		smtp_send(job, res);
	else
		stripe_call(job, res);
}

/*
 * Records a result; returns the PGresult of outbox_complete (status,
 * headers, body, next_job) or NULL when the database failed.
 */
static PGresult *
record(PGconn *conn, long long job_id, const struct outbound_result *res)
{
	char		id_text[32];
	char		status_text[32];
	const char *values[5];
	PGresult   *r;

	snprintf(id_text, sizeof(id_text), "%lld", job_id);
	snprintf(status_text, sizeof(status_text), "%ld", res->status);
	values[0] = id_text;
	values[1] = res->status > 0 ? status_text : NULL;
	values[2] = res->body;
	values[3] = res->error[0] ? res->error : NULL;
	r = PQexecParams(conn,
					 "SELECT status, headers, body, next_job "
					 "FROM lattice_worker.outbox_complete($1::bigint, $2::integer, $3::text, $4::text)",
					 4, NULL, values, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
	{
		char		msg[256];
		char	   *p;

		metrics_statement_error(PQresultErrorField(r, PG_DIAG_SQLSTATE));

		/* one line of the server's message, safe inside a JSON string */
		snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
		for (p = msg; *p; p++)
			if (*p == '"' || *p == '\\' || (unsigned char) *p < 0x20)
				*p = ' ';
		fprintf(stderr, "{\"level\":\"error\",\"msg\":\"outbox_complete failed\",\"job\":%lld,\"error\":\"%s\"}\n",
				job_id, msg);
		PQclear(r);
		return NULL;
	}
	return r;
}

static void
answer_set(struct outbound_answer *a, int status, const char *headers, const char *body)
{
	a->status = status;
	a->headers_json = strdup(headers ? headers : "{}");
	a->body = body ? strdup(body) : NULL;
}

int
outbound_run_job(PGconn *conn, long long job_id, struct outbound_answer *answer)
{
	int			step;

	memset(answer, 0, sizeof(*answer));
	for (step = 0; step < OUTBOUND_MAX_CHAIN; step++)
	{
		char		id_text[32];
		const char *values[1];
		PGresult   *claimed;
		PGresult   *done;
		struct outbound_job job;
		struct outbound_result res;

		snprintf(id_text, sizeof(id_text), "%lld", job_id);
		values[0] = id_text;
		claimed = PQexecParams(conn, "SELECT * FROM lattice_worker.outbox_claim($1::bigint)",
							   1, NULL, values, NULL, NULL, 0);
		if (PQresultStatus(claimed) != PGRES_TUPLES_OK)
		{
			metrics_statement_error(PQresultErrorField(claimed, PG_DIAG_SQLSTATE));
			PQclear(claimed);
			answer_set(answer, 503, "{\"Retry-After\":\"1\"}",
					   "{\"error\":{\"code\":\"unavailable\",\"message\":\"the database is unavailable\"}}");
			return -1;
		}
		if (PQntuples(claimed) != 1)
		{
			PQclear(claimed);
			answer_set(answer, 409, "{}",
					   "{\"error\":{\"code\":\"job_gone\",\"message\":\"the outbound job is no longer pending\"}}");
			return 0;
		}
		job_from_row(claimed, 0, &job);
		perform(&job, &res);	/* no transaction is open here */
		PQclear(claimed);

		done = record(conn, job_id, &res);
		free(res.body);
		if (!done)
		{
			answer_set(answer, 503, "{\"Retry-After\":\"1\"}",
					   "{\"error\":{\"code\":\"unavailable\",\"message\":\"the database is unavailable\"}}");
			return -1;
		}
		if (PQntuples(done) == 1 && !PQgetisnull(done, 0, 3))
		{
			job_id = strtoll(PQgetvalue(done, 0, 3), NULL, 10);
			PQclear(done);
			continue;
		}
		if (PQntuples(done) == 1 && !PQgetisnull(done, 0, 0))
			answer_set(answer, atoi(PQgetvalue(done, 0, 0)),
					   PQgetisnull(done, 0, 1) ? "{}" : PQgetvalue(done, 0, 1),
					   PQgetisnull(done, 0, 2) ? NULL : PQgetvalue(done, 0, 2));
		else
			answer_set(answer, 500, "{}",
					   "{\"error\":{\"code\":\"internal\",\"message\":\"the outbound job gave no answer\"}}");
		PQclear(done);
		return 0;
	}
	answer_set(answer, 500, "{}",
			   "{\"error\":{\"code\":\"internal\",\"message\":\"the outbound job chain is too long\"}}");
	return 0;
}

void
outbound_answer_free(struct outbound_answer *answer)
{
	free(answer->headers_json);
	free(answer->body);
	answer->headers_json = NULL;
	answer->body = NULL;
}

void
outbound_follow(PGconn *conn, PGresult **row)
{
	struct json_object *headers;
	struct json_object *job_header = NULL;
	struct outbound_answer answer;
	char		status_text[16];
	const char *values[5];
	long long	job_id = 0;
	PGresult   *replaced;
	bool		pipelined;

	if (!*row || PQntuples(*row) != 1 || PQnfields(*row) != 5 || PQgetisnull(*row, 0, 1))
		return;
	headers = json_tokener_parse(PQgetvalue(*row, 0, 1));
	if (headers && json_object_object_get_ex(headers, "Lattice-Outbox-Job", &job_header) &&
		json_object_is_type(job_header, json_type_string))
		job_id = strtoll(json_object_get_string(job_header), NULL, 10);
	json_object_put(headers);
	if (job_id <= 0)
		return;

	/* the pool keeps connections in pipeline mode; the job's statements are synchronous */
	pipelined = PQpipelineStatus(conn) != PQ_PIPELINE_OFF;
	if (pipelined && PQexitPipelineMode(conn) != 1)
		return;					/* not idle: leave the 202, the job stays pending */
	outbound_run_job(conn, job_id, &answer);
	snprintf(status_text, sizeof(status_text), "%d", answer.status);
	values[0] = status_text;
	values[1] = answer.headers_json;
	values[2] = answer.body;
	values[3] = PQgetisnull(*row, 0, 3) ? NULL : PQgetvalue(*row, 0, 3);
	values[4] = PQgetisnull(*row, 0, 4) ? NULL : PQgetvalue(*row, 0, 4);	/* the request's rate count */
	/* the answer in the row shape dispatch.c writes out (no transaction: one SELECT) */
	replaced = PQexecParams(conn, "SELECT $1::integer, $2::jsonb - 'Lattice-Outbox-Job', $3::text, $4::text, $5::text",
							5, NULL, values, NULL, NULL, 0);
	outbound_answer_free(&answer);
	if (PQresultStatus(replaced) == PGRES_TUPLES_OK)
	{
		PQclear(*row);
		*row = replaced;
	}
	else
	{
		/* leave the 202 (the job's own answer is recorded); the client may retry */
		PQclear(replaced);
	}
	if (pipelined)
		PQenterPipelineMode(conn);
}

/* Claims due background jobs and performs them; returns how many. */
static int
drain_once(PGconn *conn)
{
	char		batch[16];
	const char *values[1];
	PGresult   *claimed;
	int			n;
	int			i;

	snprintf(batch, sizeof(batch), "%d", OUTBOUND_BATCH);
	values[0] = batch;
	claimed = PQexecParams(conn, "SELECT * FROM lattice_worker.outbox_claim_due($1::integer)",
						   1, NULL, values, NULL, NULL, 0);
	if (PQresultStatus(claimed) != PGRES_TUPLES_OK)
	{
		metrics_statement_error(PQresultErrorField(claimed, PG_DIAG_SQLSTATE));
		PQclear(claimed);
		return -1;
	}
	n = PQntuples(claimed);
	for (i = 0; i < n; i++)
	{
		struct outbound_job job;
		struct outbound_result res;
		PGresult   *done;

		job_from_row(claimed, i, &job);
		perform(&job, &res);
		done = record(conn, job.id, &res);
		fprintf(stderr, "{\"level\":\"info\",\"msg\":\"outbox job\",\"job\":%lld,\"kind\":\"%s\",\"status\":%ld,\"ok\":%s}\n",
				job.id, job.kind, res.status, res.error[0] ? "false" : "true");
		free(res.body);
		if (!done)
		{
			PQclear(claimed);
			return -1;			/* the lease runs out and the job comes back */
		}
		PQclear(done);
	}
	PQclear(claimed);
	return n;
}

static void *
worker_main(void *arg)
{
	PGconn	   *conn = NULL;

	(void) arg;
	pthread_mutex_lock(&worker_lock);
	while (!worker_stop)
	{
		struct timespec until;
		int			n = 0;

		pthread_mutex_unlock(&worker_lock);
		if (!conn || PQstatus(conn) != CONNECTION_OK)
		{
			PQfinish(conn);
			conn = PQconnectdb(settings.conninfo);
			if (PQstatus(conn) != CONNECTION_OK)
				fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"outbox worker cannot connect\"}\n");
		}
		if (PQstatus(conn) == CONNECTION_OK)
			n = drain_once(conn);
		pthread_mutex_lock(&worker_lock);
		if (n > 0 || worker_stop)
			continue;			/* more may be due right away */
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += settings.poll_interval_ms / 1000;
		until.tv_nsec += (settings.poll_interval_ms % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L)
		{
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&worker_wake, &worker_lock, &until);
	}
	pthread_mutex_unlock(&worker_lock);
	PQfinish(conn);
	return NULL;
}

int
outbound_start(const struct outbound_config *config)
{
	struct outbound_config none;
	const struct outbound_config *c = config;

	if (!c)
	{
		memset(&none, 0, sizeof(none));
		c = &none;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
	{
		fprintf(stderr, "{\"level\":\"error\",\"msg\":\"libcurl could not be initialised\"}\n");
		return -1;
	}
	settings.conninfo = setting(c->conninfo, "LATTICE_DB", "dbname=lattice");
	settings.stripe_api_base = setting(c->stripe_api_base, "LATTICE_STRIPE_API_BASE", "https://api.stripe.com");
	settings.stripe_secret_key = setting(c->stripe_secret_key, "LATTICE_STRIPE_SECRET_KEY", NULL);
	settings.stripe_version = setting(c->stripe_version, "LATTICE_STRIPE_VERSION", NULL);
	settings.stripe_timeout_ms = setting_long(c->stripe_timeout_ms, "LATTICE_STRIPE_TIMEOUT_MS", 10000);
	settings.smtp_url = setting(c->smtp_url, "LATTICE_SMTP_URL", NULL);
	settings.smtp_username = setting(c->smtp_username, "LATTICE_SMTP_USERNAME", NULL);
	settings.smtp_password = setting(c->smtp_password, "LATTICE_SMTP_PASSWORD", NULL);
	settings.smtp_tls = setting(c->smtp_tls, "LATTICE_SMTP_TLS", "try");
	settings.mail_from = setting(c->mail_from, "LATTICE_MAIL_FROM", "Lattice <billing@localhost>");
	settings.smtp_timeout_ms = setting_long(c->smtp_timeout_ms, "LATTICE_SMTP_TIMEOUT_MS", 15000);
	settings.poll_interval_ms = setting_long(c->poll_interval_ms, "LATTICE_OUTBOX_POLL_MS", 1000);
	/* a trailing slash would double the one every path starts with */
	if (settings.stripe_api_base)
	{
		size_t		len = strlen(settings.stripe_api_base);

		while (len > 0 && settings.stripe_api_base[len - 1] == '/')
			settings.stripe_api_base[--len] = '\0';
	}
	if (!settings.stripe_secret_key)
		fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"no Stripe secret key: billing calls will fail\"}\n");
	if (!settings.smtp_url)
		fprintf(stderr, "{\"level\":\"warn\",\"msg\":\"no SMTP server: e-mail stays queued\"}\n");

	worker_stop = false;
	if (pthread_create(&worker_thread, NULL, worker_main, NULL) != 0)
	{
		fprintf(stderr, "{\"level\":\"error\",\"msg\":\"outbox worker could not start\"}\n");
		return -1;
	}
	worker_running = true;
	return 0;
}

void
outbound_stop(void)
{
	if (!worker_running)
		return;
	pthread_mutex_lock(&worker_lock);
	worker_stop = true;
	pthread_cond_signal(&worker_wake);
	pthread_mutex_unlock(&worker_lock);
	pthread_join(worker_thread, NULL);
	worker_running = false;
	free(settings.conninfo);
	free(settings.stripe_api_base);
	free(settings.stripe_secret_key);
	free(settings.stripe_version);
	free(settings.smtp_url);
	free(settings.smtp_username);
	free(settings.smtp_password);
	free(settings.smtp_tls);
	free(settings.mail_from);
	memset(&settings, 0, sizeof(settings));
	curl_global_cleanup();
}
