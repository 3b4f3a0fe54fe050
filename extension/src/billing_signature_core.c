/*
 * billing_signature_core.c
 *		Parsing and checking Stripe's webhook signature header.
 *
 * Stripe signs "<t>.<raw body>" with HMAC-SHA256 under the endpoint secret
 * and sends `Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]`.  Any v1
 * may match any active secret (both sides rotate), the timestamp must lie
 * within the tolerance of now (replays of old deliveries are refused), and
 * every comparison is constant-time.  Schemes other than v1 (v0 is Stripe's
 * test scheme) are ignored, as Stripe's own libraries do.
 *
 * No PostgreSQL here (billing_signature.c wraps it for SQL), so the fuzz
 * target in tests/fuzz/ runs this very code.
 */
#include "billing_signature_core.h"

#include <string.h>

/*
 * Parses "k=v,k=v,..." into the header struct.  Returns false when the header
 * is malformed (no timestamp, a timestamp that is not a plain integer, a v1
 * value that is not 64 hex digits, too many v1 values).
 */
bool
stripe_signature_parse(const char *header, size_t len, StripeSignatureHeader *out)
{
	size_t pos = 0;

	memset(out, 0, sizeof(*out));
	while (pos < len)
	{
		size_t end = pos;
		size_t eq;
		const char *key;
		size_t key_len;
		const char *val;
		size_t val_len;

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
			int64_t t = 0;
			size_t i;

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
			size_t bin_len = 0;

			if (out->n_v1 >= STRIPE_SIGNATURE_MAX_V1 || val_len != 2 * crypto_auth_hmacsha256_BYTES)
				return false;
			if (sodium_hex2bin(out->v1[out->n_v1], crypto_auth_hmacsha256_BYTES, val, val_len, NULL,
							   &bin_len, NULL) != 0 ||
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
void
stripe_signature_mac(const char *secret, size_t secret_len, const StripeSignatureHeader *sig,
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
 * The verdict on a parsed header with at least one v1.  The timestamp is
 * checked before any HMAC, and every v1 is compared with every secret's MAC
 * without an early exit, so timing reveals neither which signature nor which
 * secret matched.  NULL or empty secrets are skipped.
 */
StripeSignatureVerdict
stripe_signature_check(const StripeSignatureHeader *sig, const char *const *secrets,
					   const size_t *secret_lens, int n_secrets, const char *payload, size_t payload_len,
					   int64_t tolerance, int64_t at_unix)
{
	int matched = 0;
	int usable = 0;

	if (sig->t_value < at_unix - tolerance || sig->t_value > at_unix + tolerance)
		return STRIPE_SIGNATURE_OUT_OF_TOLERANCE;

	for (int i = 0; i < n_secrets; i++)
	{
		unsigned char mac[crypto_auth_hmacsha256_BYTES];

		if (secrets[i] == NULL || secret_lens[i] == 0)
			continue;
		usable++;
		stripe_signature_mac(secrets[i], secret_lens[i], sig, payload, payload_len, mac);
		for (int j = 0; j < sig->n_v1; j++)
			matched |= (sodium_memcmp(mac, sig->v1[j], sizeof(mac)) == 0);
		sodium_memzero(mac, sizeof(mac));
	}
	if (usable == 0)
		return STRIPE_SIGNATURE_NO_SECRET;
	return matched ? STRIPE_SIGNATURE_VALID : STRIPE_SIGNATURE_MISMATCH;
}

const char *
stripe_signature_verdict_name(StripeSignatureVerdict v)
{
	switch (v)
	{
		case STRIPE_SIGNATURE_VALID:
			return "valid";
		case STRIPE_SIGNATURE_NO_SECRET:
			return "no_secret";
		case STRIPE_SIGNATURE_OUT_OF_TOLERANCE:
			return "timestamp_out_of_tolerance";
		case STRIPE_SIGNATURE_MISMATCH:
			return "signature_mismatch";
	}
	return "signature_mismatch";
}
