/*
 * billing_settings.c
 *		Billing's settings and the per-address limit of the Stripe webhook.
 *
 * Settings are GUCs that only superusers change (PGC_SUSET), so a tenant
 * cannot widen its own grace period with SET.  SQL reads them through
 * lattice.billing_setting(name), which knows the defaults.
 */
#include "common.h"
#include "lattice.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

static int billing_past_due_grace_days = 7;
static int billing_webhook_tolerance_seconds = 300;
static int billing_webhook_max_bytes = 262144;
static int billing_webhook_per_minute = 600;
static int billing_retention_days = 365;
static int billing_retained_invoice_years = 10;
static char *billing_public_origin = NULL;

void
lattice_billing_init(void)
{
	DefineCustomIntVariable("lattice.billing_past_due_grace_days",
							"Days a past_due subscription keeps ingesting.", NULL,
							&billing_past_due_grace_days, 7, 0, 365, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.billing_webhook_tolerance",
							"Largest age (either way) of a Stripe-Signature timestamp.", NULL,
							&billing_webhook_tolerance_seconds, 300, 1, 3600, PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.billing_webhook_max_bytes", "Largest Stripe webhook body accepted.",
							NULL, &billing_webhook_max_bytes, 262144, 1024, 16777216, PGC_SUSET,
							GUC_UNIT_BYTE, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.billing_webhook_per_minute",
							"Webhook deliveries accepted per client address and minute.", NULL,
							&billing_webhook_per_minute, 600, 1, 1000000, PGC_SUSET, 0, NULL, NULL,
							NULL);
	DefineCustomIntVariable("lattice.billing_retention_days",
							"Days a lapsed account's data is kept, read-only.", NULL,
							&billing_retention_days, 365, 1, 36500, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("lattice.billing_retained_invoice_years",
							"Years the invoices of a deleted account are kept for accounting.", NULL,
							&billing_retained_invoice_years, 10, 1, 100, PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("lattice.billing_public_origin",
							   "Origin of the dashboard that Stripe sends the browser back to.", NULL,
							   &billing_public_origin, "http://localhost:8080", PGC_SUSET, 0, NULL, NULL,
							   NULL);
}

/*
 * lattice.billing_setting(name text) -> integer: one of the settings above
 * by its short name ('past_due_grace_days', 'webhook_tolerance', ...).
 */
PG_FUNCTION_INFO_V1(lattice_billing_setting);
Datum
lattice_billing_setting(PG_FUNCTION_ARGS)
{
	char *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (strcmp(name, "past_due_grace_days") == 0)
		PG_RETURN_INT32(billing_past_due_grace_days);
	if (strcmp(name, "webhook_tolerance") == 0)
		PG_RETURN_INT32(billing_webhook_tolerance_seconds);
	if (strcmp(name, "webhook_max_bytes") == 0)
		PG_RETURN_INT32(billing_webhook_max_bytes);
	if (strcmp(name, "webhook_per_minute") == 0)
		PG_RETURN_INT32(billing_webhook_per_minute);
	if (strcmp(name, "retention_days") == 0)
		PG_RETURN_INT32(billing_retention_days);
	if (strcmp(name, "retained_invoice_years") == 0)
		PG_RETURN_INT32(billing_retained_invoice_years);
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("lattice.billing_setting: unknown setting \"%s\"", name)));
	PG_RETURN_NULL();
}

/*
 * lattice.billing_webhook_rate(client_addr text) -> void: counts one webhook
 * delivery from this address; raises PT429 rate_limited with Retry-After
 * when the address is over its limit.  The webhook has no tenant, so the
 * address is the only thing to count by.
 */
PG_FUNCTION_INFO_V1(lattice_billing_webhook_rate);
Datum
lattice_billing_webhook_rate(PG_FUNCTION_ARGS)
{
	const char *addr = PG_ARGISNULL(0) ? "unknown" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	LatticeRateResult r;

	if (!lattice_rate_check("addr_stripe_webhook", addr, billing_webhook_per_minute, 60, &r))
		lattice_raise_http(429, "rate_limited", "too many webhook deliveries from this address", NULL,
						   psprintf("{\"Retry-After\":\"" INT64_FORMAT "\"}",
									r.retry_after_seconds > 0 ? r.retry_after_seconds : 1));
	PG_RETURN_VOID();
}
