/*
 * billing_signature_core.h
 *		The Stripe-Signature header parser and verdict, without PostgreSQL.
 *
 * Plain C + libsodium so that the fuzz target (tests/fuzz/) calls exactly the
 * code the extension runs; billing_signature.c is the SQL wrapper.
 */
#ifndef LATTICE_BILLING_SIGNATURE_CORE_H
#define LATTICE_BILLING_SIGNATURE_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

/* A header longer than this is not from Stripe; refuse it before parsing. */
#define STRIPE_SIGNATURE_MAX_HEADER	 4096
/* Bounds the work per request: signatures x secrets HMAC computations. */
#define STRIPE_SIGNATURE_MAX_V1		 8
#define STRIPE_SIGNATURE_MAX_SECRETS 8

typedef struct StripeSignatureHeader
{
	const char *t; /* the timestamp exactly as sent */
	size_t t_len;
	int64_t t_value;
	int n_v1;
	unsigned char v1[STRIPE_SIGNATURE_MAX_V1][crypto_auth_hmacsha256_BYTES];
} StripeSignatureHeader;

typedef enum StripeSignatureVerdict
{
	STRIPE_SIGNATURE_VALID,
	STRIPE_SIGNATURE_NO_SECRET,
	STRIPE_SIGNATURE_OUT_OF_TOLERANCE,
	STRIPE_SIGNATURE_MISMATCH
} StripeSignatureVerdict;

extern bool stripe_signature_parse(const char *header, size_t len, StripeSignatureHeader *out);
extern void stripe_signature_mac(const char *secret, size_t secret_len, const StripeSignatureHeader *sig,
								 const char *payload, size_t payload_len,
								 unsigned char mac[crypto_auth_hmacsha256_BYTES]);
extern StripeSignatureVerdict stripe_signature_check(const StripeSignatureHeader *sig,
													 const char *const *secrets,
													 const size_t *secret_lens, int n_secrets,
													 const char *payload, size_t payload_len,
													 int64_t tolerance, int64_t at_unix);
extern const char *stripe_signature_verdict_name(StripeSignatureVerdict v);

#endif /* LATTICE_BILLING_SIGNATURE_CORE_H */
