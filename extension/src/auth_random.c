/*
 * auth_random.c
 *		Random tokens from libsodium, their base64url text and the hash a
 *		high-entropy token is stored as.
 */
#include "auth.h"

#include <sodium.h>

char *
lattice_b64url_encode(const uint8 *bin, size_t len)
{
	size_t outlen = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	char *out = palloc(outlen);

	sodium_bin2base64(out, outlen, bin, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	return out;
}

/*
 * The unkeyed BLAKE2b-256 of a high-entropy secret (a session token, a link
 * token, a recovery code) as bytea, as it is stored: 256 random bits need no
 * pepper, and a look-up by hash then needs no secret.
 */
bytea *
lattice_secret_hash(const char *s, size_t len)
{
	bytea *b = palloc(VARHDRSZ + LATTICE_SECRET_HASH_BYTES);

	SET_VARSIZE(b, VARHDRSZ + LATTICE_SECRET_HASH_BYTES);
	crypto_generichash((unsigned char *) VARDATA(b), LATTICE_SECRET_HASH_BYTES,
					   (const unsigned char *) s, len, NULL, 0);
	return b;
}

/* nbytes of libsodium randomness as base64url text */
char *
lattice_random_token(size_t nbytes)
{
	uint8 buf[64];
	char *out;

	Assert(nbytes <= sizeof(buf));
	randombytes_buf(buf, nbytes);
	out = lattice_b64url_encode(buf, nbytes);
	sodium_memzero(buf, sizeof(buf));
	return out;
}
