/*
 * billing_signature.c
 *		Verification of Stripe's webhook signature header.
 *
 * Stripe signs "<t>.<raw body>" with HMAC-SHA256 under the endpoint secret
 * and sends `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]`.  Any v1
 * may match any active secret (both sides rotate), the timestamp must lie
 * within the tolerance of now (replays of old deliveries are refused), and
 * every comparison is constant-time.  Schemes other than v1 (v0 is Stripe's
 * test scheme) are ignored, as Stripe's own libraries do.
 */
#include "lattice.h"

#include <sodium.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

/* A header longer than this is not from Stripe; refuse it before parsing. */
#define STRIPE_SIGNATURE_MAX_HEADER 4096
/* Bounds the work per request: signatures x secrets HMAC computations. */
#define STRIPE_SIGNATURE_MAX_V1 8
#define STRIPE_SIGNATURE_MAX_SECRETS 8

typedef struct StripeSignatureHeader
{
	const char *t;				/* the timestamp exactly as sent */
	size_t		t_len;
	int64		t_value;
	int			n_v1;
	unsigned char v1[STRIPE_SIGNATURE_MAX_V1][crypto_auth_hmacsha256_BYTES];
} StripeSignatureHeader;

/*
 * Parses "k=v,k=v,..." into the header struct.  Returns false when the header
 * is malformed (no timestamp, a timestamp that is not a plain integer, a v1
 * value that is not 64 hex digits, too many v1 values).
 */
static bool
stripe_signature_parse(const char *header, size_t len, StripeSignatureHeader *out)
{
	size_t		pos = 0;

	memset(out, 0, sizeof(*out));
	while (pos < len)
	{
		size_t		end = pos;
		size_t		eq;
		const char *key;
		size_t		key_len;
		const char *val;
		size_t		val_len;

		while (end < len && header[end] != ',')
			end++;
		for (eq = pos; eq < end && header[eq] != '='; eq++)
			;
		if (eq == end)
			return false;
		key = header + pos;
		key_len = eq - pos;
		val = header + eq + 1;
		val_len = end - eq - 1;

		if (key_len == 1 && key[0] == 't')
		{
			int64		t = 0;
			size_t		i;

			if (out->t != NULL || val_len == 0 || val_len > 12)
				return false;
			for (i = 0; i < val_len; i++)
			{
				if (val[i] < '0' || val[i] > '9')
					return false;
				t = t * 10 + (val[i] - '0');
			}
			out->t = val;
			out->t_len = val_len;
			out->t_value = t;
		}
		else if (key_len == 2 && key[0] == 'v' && key[1] == '1')
		{
			size_t		bin_len = 0;

			if (out->n_v1 >= STRIPE_SIGNATURE_MAX_V1 ||
				val_len != 2 * crypto_auth_hmacsha256_BYTES)
				return false;
			if (sodium_hex2bin(out->v1[out->n_v1], crypto_auth_hmacsha256_BYTES,
							   val, val_len, NULL, &bin_len, NULL) != 0 ||
				bin_len != crypto_auth_hmacsha256_BYTES)
				return false;
			out->n_v1++;
		}
		/* other schemes (v0, future ones) are ignored */
		pos = end + 1;
	}
	return out->t != NULL;
}

/* HMAC-SHA256 of "<t>.<payload>" under secret, into mac. */
static void
stripe_signature_mac(const char *secret, size_t secret_len,
					 const StripeSignatureHeader *sig,
					 const char *payload, size_t payload_len,
					 unsigned char mac[crypto_auth_hmacsha256_BYTES])
{
	crypto_auth_hmacsha256_state state;

	crypto_auth_hmacsha256_init(&state, (const unsigned char *) secret, secret_len);
	crypto_auth_hmacsha256_update(&state, (const unsigned char *) sig->t, sig->t_len);
	crypto_auth_hmacsha256_update(&state, (const unsigned char *) ".", 1);
	crypto_auth_hmacsha256_update(&state, (const unsigned char *) payload, payload_len);
	crypto_auth_hmacsha256_final(&state, mac);
	sodium_memzero(&state, sizeof(state));
}

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
	text	   *header_t;
	text	   *payload_t;
	ArrayType  *secrets_a;
	int32		tolerance;
	TimestampTz at;
	StripeSignatureHeader sig;
	Datum	   *secrets;
	bool	   *secret_nulls;
	int			n_secrets;
	int64		at_unix;
	int			matched = 0;
	int			i;

	if (PG_ARGISNULL(0))
		PG_RETURN_TEXT_P(cstring_to_text("no_signature"));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(3) || PG_ARGISNULL(4))
		ereport(ERROR,
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
	deconstruct_array(secrets_a, TEXTOID, -1, false, TYPALIGN_INT,
					  &secrets, &secret_nulls, &n_secrets);
	if (n_secrets > STRIPE_SIGNATURE_MAX_SECRETS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("lattice.stripe_signature_verdict: at most %d active secrets",
						STRIPE_SIGNATURE_MAX_SECRETS)));

	at_unix = (int64) timestamptz_to_time_t(at);
	if (sig.t_value < at_unix - tolerance || sig.t_value > at_unix + tolerance)
		PG_RETURN_TEXT_P(cstring_to_text("timestamp_out_of_tolerance"));

	{
		int			usable = 0;

		for (i = 0; i < n_secrets; i++)
		{
			text	   *secret;
			unsigned char mac[crypto_auth_hmacsha256_BYTES];
			int			j;

			if (secret_nulls[i])
				continue;
			secret = DatumGetTextPP(secrets[i]);
			if (VARSIZE_ANY_EXHDR(secret) == 0)
				continue;
			usable++;
			stripe_signature_mac(VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret), &sig,
								 VARDATA_ANY(payload_t), VARSIZE_ANY_EXHDR(payload_t), mac);
			for (j = 0; j < sig.n_v1; j++)
				matched |= (sodium_memcmp(mac, sig.v1[j], sizeof(mac)) == 0);
			sodium_memzero(mac, sizeof(mac));
		}
		if (usable == 0)
			PG_RETURN_TEXT_P(cstring_to_text("no_secret"));
	}

	PG_RETURN_TEXT_P(cstring_to_text(matched ? "valid" : "signature_mismatch"));
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
	text	   *payload_t = PG_GETARG_TEXT_PP(0);
	text	   *secret_t = PG_GETARG_TEXT_PP(1);
	TimestampTz at = PG_GETARG_TIMESTAMPTZ(2);
	StripeSignatureHeader sig;
	char		t_buf[32];
	unsigned char mac[crypto_auth_hmacsha256_BYTES];
	char		hex[2 * crypto_auth_hmacsha256_BYTES + 1];

	memset(&sig, 0, sizeof(sig));
	snprintf(t_buf, sizeof(t_buf), INT64_FORMAT, (int64) timestamptz_to_time_t(at));
	sig.t = t_buf;
	sig.t_len = strlen(t_buf);
	stripe_signature_mac(VARDATA_ANY(secret_t), VARSIZE_ANY_EXHDR(secret_t), &sig,
						 VARDATA_ANY(payload_t), VARSIZE_ANY_EXHDR(payload_t), mac);
	sodium_bin2hex(hex, sizeof(hex), mac, sizeof(mac));
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("t=%s,v1=%s", t_buf, hex)));
}
