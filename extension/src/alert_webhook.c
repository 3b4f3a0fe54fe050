/*
 * alert_webhook.c
 *		Webhook channels of alerts: where they may point, their signing
 *		secrets, and the headers of each delivery (docs/alerts.md).
 *
 * A webhook URL is checked when it is saved: https, a plain host, and every
 * address the host resolves to must be public (outbound_address_core.c).
 * The shim checks the same rule again on the address of every connection it
 * opens, so a name that later resolves elsewhere is still refused.
 *
 * A generic webhook's signing secret is shown to the customer once and kept
 * sealed under the pepper (auth_seal.c); each delivery attempt is signed
 * when the shim claims it, with Stripe's scheme, so the receiver can verify
 * the body and its age.
 */
#include "common.h"
#include "auth.h"
#include "lattice.h"
#include "outbound_address_core.h"

#include <netdb.h>
#include <sodium.h>
#include <sys/socket.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"

#define WEBHOOK_URL_MAX		  2048
#define WEBHOOK_HOST_MAX	  253
#define WEBHOOK_SECRET_BYTES  32
#define WEBHOOK_SECRET_PREFIX "whsec_"
#define WEBHOOK_SECRET_MAX	  96 /* the prefix and base64url of the bytes */

static const char seal_context[] = "lattice webhook v1";

static bool outbound_allow_loopback = false;
int lattice_alert_interval = 60;

void
lattice_alert_init(void)
{
	DefineCustomIntVariable("lattice.alert_interval",
							"Seconds between two evaluations of the alert rules (0: none).", NULL,
							&lattice_alert_interval, 60, 0, 86400, PGC_SIGHUP, GUC_UNIT_S, NULL, NULL,
							NULL);
	DefineCustomBoolVariable("lattice.outbound_allow_loopback",
							 "Lets webhooks reach loopback addresses over http (development and tests).",
							 NULL, &outbound_allow_loopback, false, PGC_SUSET, 0, NULL, NULL, NULL);
}

/*
 * Splits url into its scheme (https or http) and host; NULL when it is
 * well formed, else the reason.  The host is a name of letters, digits,
 * dots and hyphens, or an address in brackets (IPv6) or dotted (IPv4).
 */
static const char *
url_host(const char *url, bool *https, char host[WEBHOOK_HOST_MAX + 1])
{
	const char *p;
	const char *end;
	size_t len = strlen(url);

	if (len > WEBHOOK_URL_MAX)
		return "too_long";
	for (p = url; *p; p++)
		if ((unsigned char) *p <= 0x20 || (unsigned char) *p >= 0x7f || *p == '\\')
			return "malformed";
	if (pg_strncasecmp(url, "https://", 8) == 0)
	{
		*https = true;
		p = url + 8;
	}
	else if (pg_strncasecmp(url, "http://", 7) == 0)
	{
		*https = false;
		p = url + 7;
	}
	else
		return "scheme";
	end = p + strcspn(p, "/?#");
	if (*end == '#' || strchr(end, '#'))
		return "malformed";
	if (memchr(p, '@', end - p))
		return "credentials";
	if (*p == '[')
	{
		const char *close = memchr(p, ']', end - p);

		if (!close || close - p - 1 < 2 || close - p - 1 > 45)
			return "malformed";
		memcpy(host, p + 1, close - p - 1);
		host[close - p - 1] = '\0';
		if (strspn(host, "0123456789abcdefABCDEF:.") != strlen(host))
			return "malformed";
		p = close + 1;
	}
	else
	{
		size_t n = strcspn(p, ":/?#");

		if (n == 0 || n > WEBHOOK_HOST_MAX || p + n > end)
			return "malformed";
		memcpy(host, p, n);
		host[n] = '\0';
		if (strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != n ||
			host[0] == '.' || host[0] == '-')
			return "malformed";
		p += n;
	}
	if (p < end)
	{
		long port;
		char *after;

		if (*p != ':' || p + 1 == end)
			return "malformed";
		port = strtol(p + 1, &after, 10);
		if (after != end || port < 1 || port > 65535)
			return "malformed";
	}
	return NULL;
}

/*
 * lattice.outbound_url_check(url text) -> text
 *
 * NULL when url may be a webhook's address; otherwise why not: too_long,
 * malformed, scheme, credentials, unresolvable, or "blocked:<reason>:<address>"
 * (reason from outbound_address_refusal).  Plain http is accepted only
 * under lattice.outbound_allow_loopback, to a host that is all loopback.
 */
PG_FUNCTION_INFO_V1(lattice_outbound_url_check);
Datum
lattice_outbound_url_check(PG_FUNCTION_ARGS)
{
	char *url = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char host[WEBHOOK_HOST_MAX + 1];
	bool https = false;
	bool all_loopback = true;
	const char *bad;
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	struct addrinfo *ai;
	char *verdict = NULL;

	bad = url_host(url, &https, host);
	if (!bad && !https && !outbound_allow_loopback)
		bad = "scheme";
	if (bad)
		PG_RETURN_TEXT_P(cstring_to_text(bad));

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
		PG_RETURN_TEXT_P(cstring_to_text("unresolvable"));
	for (ai = res; ai && !verdict; ai = ai->ai_next)
	{
		const char *refusal = outbound_address_refusal(ai->ai_addr, outbound_allow_loopback);
		const char *strict = outbound_address_refusal(ai->ai_addr, false);
		char addr[NI_MAXHOST];

		all_loopback = all_loopback && strict && strcmp(strict, "loopback") == 0;
		if (refusal)
		{
			if (getnameinfo(ai->ai_addr, ai->ai_addrlen, addr, sizeof(addr), NULL, 0, NI_NUMERICHOST) !=
				0)
				strlcpy(addr, "?", sizeof(addr));
			verdict = psprintf("blocked:%s:%s", refusal, addr);
		}
	}
	freeaddrinfo(res);
	if (!verdict && !https && !(outbound_allow_loopback && all_loopback))
		verdict = "scheme";
	if (verdict)
		PG_RETURN_TEXT_P(cstring_to_text(verdict));
	PG_RETURN_NULL();
}

/*
 * lattice.webhook_secret_new() -> (secret text, sealed bytea)
 *
 * A new signing secret: "whsec_" and 32 random bytes in base64url, for the
 * customer once, and sealed for the channel's row.
 */
PG_FUNCTION_INFO_V1(lattice_webhook_secret_new);
Datum
lattice_webhook_secret_new(PG_FUNCTION_ARGS)
{
	uint8 raw[WEBHOOK_SECRET_BYTES];
	char *encoded;
	char *secret;
	TupleDesc desc;
	Datum out[2];
	bool out_nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.webhook_secret_new: must return a record");
	randombytes_buf(raw, sizeof(raw));
	encoded = lattice_b64url_encode(raw, sizeof(raw));
	sodium_memzero(raw, sizeof(raw));
	secret = psprintf("%s%s", WEBHOOK_SECRET_PREFIX, encoded);
	out[0] = CStringGetTextDatum(secret);
	out[1] = PointerGetDatum(lattice_seal(seal_context, (const uint8 *) secret, strlen(secret)));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, out_nulls)));
}

static void
header_add(StringInfo buf, const char *name, const char *value)
{
	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	escape_json(buf, name);
	appendStringInfoChar(buf, ':');
	escape_json(buf, value);
}

/*
 * lattice.alert_webhook_headers(job bigint, account uuid, channel uuid,
 *                               body text) -> jsonb
 *
 * The request headers of one delivery attempt of outbox job `job`: the
 * delivery id (the same on every retry) and, for a generic webhook, the
 * signature of body at this moment under the channel's secret.  The owner's
 * (the outbox claim calls it); a channel deleted meanwhile signs nothing.
 */
PG_FUNCTION_INFO_V1(lattice_alert_webhook_headers);
Datum
lattice_alert_webhook_headers(PG_FUNCTION_ARGS)
{
	int64 job = PG_GETARG_INT64(0);
	text *body = PG_GETARG_TEXT_PP(3);
	StringInfoData buf;
	char *kind = NULL;
	bytea *sealed = NULL;

	if (!PG_ARGISNULL(1) && !PG_ARGISNULL(2))
	{
		lattice_spi_connect("lattice.alert_webhook_headers");
		if (SPI_execute_with_args("SELECT kind, secret_sealed FROM lattice.alert_channels"
								  " WHERE user_id = $1 AND id = $2",
								  2, (Oid[]) {UUIDOID, UUIDOID},
								  (Datum[]) {PG_GETARG_DATUM(1), PG_GETARG_DATUM(2)}, NULL, true,
								  1) != SPI_OK_SELECT)
			elog(ERROR, "lattice.alert_webhook_headers: reading the channel failed");
		if (SPI_processed == 1)
		{
			bool isnull;
			Datum d;
			char *k = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			/* copied out of SPI's memory, which SPI_finish frees */
			if (k)
				kind = strcpy(SPI_palloc(strlen(k) + 1), k);
			d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
			if (!isnull)
				sealed = (bytea *) SPI_datumTransfer(d, false, -1);
		}
		SPI_finish();
	}

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	header_add(&buf, "Content-Type", "application/json");
	header_add(&buf, "User-Agent", "Lattice-Alerts/1");
	header_add(&buf, "Lattice-Delivery", psprintf(INT64_FORMAT, job));
	if (kind && strcmp(kind, "webhook") == 0 && sealed)
	{
		uint8 secret[WEBHOOK_SECRET_MAX];
		size_t len = lattice_unseal(seal_context, sealed, secret, sizeof(secret));

		header_add(&buf, "Lattice-Signature",
				   lattice_signature_header((const char *) secret, len, VARDATA_ANY(body),
											VARSIZE_ANY_EXHDR(body), lattice_clock_now()));
		sodium_memzero(secret, sizeof(secret));
	}
	appendStringInfoChar(&buf, '}');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
