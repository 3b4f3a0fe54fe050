/*
 * billing_signature.c
 *		Verification of Stripe's webhook signature header.
 *
 * Stripe signs "<t>.<raw body>" with HMAC-SHA256 under the endpoint secret
 * and sends `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]`.  Any v1
 * may match any active secret (both sides rotate), the timestamp must lie
 * within the tolerance of now (replays of old deliveries are refused), and
 * every comparison is constant-time.  Schemes other than v1 (v0 is Stripe's
 * test scheme) are ignored, as Stripe's own libraries do.  The parser and the
 * check live in billing_signature_core.c (no PostgreSQL, so the fuzz target
 * runs the same code); this file is their SQL face.
 */
#include "lattice.h"

#include "billing_signature_core.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/*
 * lattice.stripe_signature_verdict(header text, payload text, secrets text[],
 *                                  tolerance_seconds integer, at timestamptz)
 *   -> text
 *
 * 'valid', or why not: 'malformed_header', 'no_signature', 'no_secret',
 * 'timestamp_out_of_tolerance', 'signature_mismatch'.  A verdict rather than
 * an error so that callers choose the answer and tests see the reason.  The
 * timestamp is checked before any HMAC, and every v1 is compared with every
 * secret's MAC without an early exit, so timing reveals neither which
 * signature nor which secret matched.
 */
PG_FUNCTION_INFO_V1(lattice_stripe_signature_verdict);
Datum
lattice_stripe_signature_verdict(PG_FUNCTION_ARGS)
{
	text *header_t;
	text *payload_t;
	ArrayType *secrets_a;
	int32 tolerance;
	TimestampTz at;
	StripeSignatureHeader sig;
	Datum *secrets;
	bool *secret_nulls;
	int n_secrets;
	const char **secret_ptrs;
	size_t *secret_lens;
	int64 at_unix;
	StripeSignatureVerdict verdict;
	int i;

	if (PG_ARGISNULL(0))
		PG_RETURN_TEXT_P(cstring_to_text("no_signature"));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		ereport(
			ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("lattice.stripe_signature_verdict: payload, tolerance and time must not be null")));
	header_t = PG_GETARG_TEXT_PP(0);
	payload_t = PG_GETARG_TEXT_PP(1);
	tolerance = PG_GETARG_INT32(3);
	at = PG_GETARG_TIMESTAMPTZ(4);
	if (tolerance <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.stripe_signature_verdict: tolerance must be positive")));

	if (VARSIZE_ANY_EXHDR(header_t) > STRIPE_SIGNATURE_MAX_HEADER ||
		!stripe_signature_parse(VARDATA_ANY(header_t), VARSIZE_ANY_EXHDR(header_t), &sig))
		PG_RETURN_TEXT_P(cstring_to_text("malformed_header"));
	if (sig.n_v1 == 0)
		PG_RETURN_TEXT_P(cstring_to_text("no_signature"));

	if (PG_ARGISNULL(2))
		PG_RETURN_TEXT_P(cstring_to_text("no_secret"));
	secrets_a = PG_GETARG_ARRAYTYPE_P(2);
	if (ARR_NDIM(secrets_a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("lattice.stripe_signature_verdict: secrets must be a one-dimensional array")));
	deconstruct_array(secrets_a, TEXTOID, -1, false, TYPALIGN_INT, &secrets, &secret_nulls, &n_secrets);
	if (n_secrets > STRIPE_SIGNATURE_MAX_SECRETS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("lattice.stripe_signature_verdict: at most %d active secrets",
						STRIPE_SIGNATURE_MAX_SECRETS)));

	secret_ptrs = palloc0(sizeof(char *) * Max(n_secrets, 1));
	secret_lens = palloc0(sizeof(size_t) * Max(n_secrets, 1));
	for (i = 0; i < n_secrets; i++)
	{
		text *secret;

		if (secret_nulls[i])
			continue;
		secret = DatumGetTextPP(secrets[i]);
		secret_ptrs[i] = VARDATA_ANY(secret);
		secret_lens[i] = VARSIZE_ANY_EXHDR(secret);
	}
	at_unix = (int64) timestamptz_to_time_t(at);
	verdict = stripe_signature_check(&sig, (const char *const *) secret_ptrs, secret_lens, n_secrets,
									 VARDATA_ANY(payload_t), VARSIZE_ANY_EXHDR(payload_t), tolerance,
									 at_unix);
	PG_RETURN_TEXT_P(cstring_to_text(stripe_signature_verdict_name(verdict)));
}

/*
 * "t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t.payload)>", palloc'd:
 * Stripe's scheme, which alert webhooks sign with too (alert_webhook.c).
 */
char *
lattice_signature_header(const char *secret, size_t secret_len, const char *payload, size_t payload_len,
						 TimestampTz at)
{
	StripeSignatureHeader sig;
	char t_buf[32];
	unsigned char mac[crypto_auth_hmacsha256_BYTES];
	char hex[2 * crypto_auth_hmacsha256_BYTES + 1];

	memset(&sig, 0, sizeof(sig));
	snprintf(t_buf, sizeof(t_buf), INT64_FORMAT, (int64) timestamptz_to_time_t(at));
	sig.t = t_buf;
	sig.t_len = strlen(t_buf);
	stripe_signature_mac(secret, secret_len, &sig, payload, payload_len, mac);
	sodium_bin2hex(hex, sizeof(hex), mac, sizeof(mac));
	sodium_memzero(mac, sizeof(mac));
	return psprintf("t=%s,v1=%s", t_buf, hex);
}

/*
 * lattice.stripe_signature_header(payload text, secret text, at timestamptz)
 *   -> text
 *
 * Builds a header the way Stripe does ("t=<at>,v1=<hex>").  For tests and for
 * admins checking a secret; it needs the secret, so it proves nothing to
 * someone who lacks it.
 */
PG_FUNCTION_INFO_V1(lattice_stripe_signature_header);
Datum
lattice_stripe_signature_header(PG_FUNCTION_ARGS)
{
	text *payload_t = PG_GETARG_TEXT_PP(0);
	text *secret_t = PG_GETARG_TEXT_PP(1);

	PG_RETURN_TEXT_P(cstring_to_text(lattice_signature_header(VARDATA_ANY(secret_t),
															  VARSIZE_ANY_EXHDR(secret_t),
															  VARDATA_ANY(payload_t),
															  VARSIZE_ANY_EXHDR(payload_t),
															  PG_GETARG_TIMESTAMPTZ(2))));
}
