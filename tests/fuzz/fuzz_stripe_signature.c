/*
 * libFuzzer target: the Stripe-Signature parser and verdict
 * (extension/src/billing_signature_core.c), as the extension runs them.
 *
 * Input: "<header>\n<payload>".  Beyond "no crash", two properties: a header
 * that parses is judged within tolerance of its own timestamp without error,
 * and a header rebuilt with the right MAC for the payload is always "valid"
 * while a wrong secret is always "signature_mismatch".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billing_signature_core.h"

static const char *const secrets[] = {"whsec_fuzz_one", NULL, "", "whsec_fuzz_two"};
static const size_t secret_lens[] = {14, 0, 0, 14};

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *) data;
	const char *nl = memchr(in, '\n', size);
	size_t header_len = nl ? (size_t) (nl - in) : size;
	const char *payload = nl ? nl + 1 : "";
	size_t payload_len = nl ? size - header_len - 1 : 0;
	StripeSignatureHeader sig;
	StripeSignatureHeader good;
	unsigned char mac[crypto_auth_hmacsha256_BYTES];
	char header[64 + 2 * crypto_auth_hmacsha256_BYTES];
	StripeSignatureVerdict v;

	if (header_len > STRIPE_SIGNATURE_MAX_HEADER || !stripe_signature_parse(in, header_len, &sig))
		return 0;
	if (sig.n_v1 > 0)
	{
		v = stripe_signature_check(&sig, secrets, secret_lens, 4, payload, payload_len, 300,
								   sig.t_value);
		if (v == STRIPE_SIGNATURE_OUT_OF_TOLERANCE || v == STRIPE_SIGNATURE_NO_SECRET)
			abort();
		if (stripe_signature_check(&sig, secrets, secret_lens, 4, payload, payload_len, 300,
								   sig.t_value + 301) != STRIPE_SIGNATURE_OUT_OF_TOLERANCE)
			abort();
	}

	/* the header Stripe would send for this payload and timestamp */
	stripe_signature_mac(secrets[3], secret_lens[3], &sig, payload, payload_len, mac);
	snprintf(header, sizeof(header), "t=%.*s,v1=", (int) sig.t_len, sig.t);
	sodium_bin2hex(header + strlen(header), 2 * crypto_auth_hmacsha256_BYTES + 1, mac, sizeof(mac));
	if (!stripe_signature_parse(header, strlen(header), &good) || good.n_v1 != 1 ||
		stripe_signature_check(&good, secrets, secret_lens, 4, payload, payload_len, 300,
							   good.t_value) != STRIPE_SIGNATURE_VALID ||
		stripe_signature_check(&good, secrets, secret_lens, 1, payload, payload_len, 300,
							   good.t_value) != STRIPE_SIGNATURE_MISMATCH)
		abort();
	return 0;
}
