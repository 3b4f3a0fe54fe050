/*
 * libFuzzer target: the HS256 token reader (extension/src/auth_jwt_token.c and
 * auth_jwt_json.c), as the extension runs them.
 *
 * Input: a token.  It is parsed and verified under a fixed key as it is;
 * then, since a fuzzer cannot forge an HMAC, the same header and payload are
 * signed with that key and verified again, so the claims parser and the time
 * checks see every mutation too.  Properties: a token verified OK is within
 * its validity window, and its scope claim (0.2.0), when it has one, was a
 * string that fit: NUL-terminated inside JwtToken.scope, at most
 * JWT_TOKEN_SCOPE_MAX bytes.  The seeds (seeds.py) carry scopes as
 * lattice.jwt_issue writes them and shapes that must not verify.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "auth_jwt_token.h"

static const unsigned char key[JWT_TOKEN_KEY_BYTES] = "fuzz-key-0123456789abcdef-012345";
#define NOW		1800000000
#define MAX_TTL 3600
#define SKEW	30

static void
check(const char *token, size_t len)
{
	JwtToken t;

	if (jwt_token_parse(token, len, &t) != JWT_TOKEN_OK)
		return;
	if (jwt_token_verify(&t, key, NOW, MAX_TTL, SKEW) != JWT_TOKEN_OK)
		return;
	if (strlen(t.sub) != 36 || NOW > t.exp + SKEW || NOW + SKEW < t.iat)
		abort();
	if (t.has_scope && memchr(t.scope, '\0', sizeof(t.scope)) == NULL)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char token[JWT_TOKEN_MAX_LEN + 64];
	const char *dot1;
	const char *dot2;
	size_t signed_len;
	unsigned char mac[crypto_auth_hmacsha256_BYTES];

	if (size > JWT_TOKEN_MAX_LEN + 1)
		return 0;
	check((const char *) data, size);

	/* the same header.payload, signed with the key */
	dot1 = memchr(data, '.', size);
	dot2 = dot1 ? memchr(dot1 + 1, '.', size - (dot1 + 1 - (const char *) data)) : NULL;
	signed_len = dot2 ? (size_t) (dot2 - (const char *) data) : size;
	if (signed_len + 1 + 43 + 1 > sizeof(token))
		return 0;
	memcpy(token, data, signed_len);
	crypto_auth_hmacsha256(mac, (const unsigned char *) token, signed_len, key);
	token[signed_len] = '.';
	sodium_bin2base64(token + signed_len + 1, sizeof(token) - signed_len - 1, mac, sizeof(mac),
					  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	check(token, strlen(token));
	return 0;
}
