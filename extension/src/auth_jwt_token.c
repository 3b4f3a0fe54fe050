/*
 * auth_jwt_token.c
 *		The steps of HS256 verification that need no database: the token's
 *		shape, its header, its signature under a given key, its claims.
 *
 * Verification accepts exactly alg HS256 (so never "none"), a valid
 * signature, and exp/nbf/iat within the skew; each refusal has its own
 * status, which auth_jwt.c turns into its 401.  Segments are decoded with
 * libsodium's strict base64url into bounded stack buffers (a token is at
 * most JWT_TOKEN_MAX_LEN bytes) and parsed by auth_jwt_json.c.
 */
#include "auth_jwt_token.h"

#include <string.h>

#include <sodium.h>

/* Strict base64url (no padding) of one segment, NUL-terminated in out. */
static bool
b64url_decode(const char *s, size_t len, unsigned char out[JWT_TOKEN_MAX_LEN + 1], size_t *out_len)
{
	const char *end;

	if (sodium_base642bin(out, len + 1, s, len, NULL, out_len, &end,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
		end != s + len)
		return false;
	out[*out_len] = '\0';
	return true;
}

JwtTokenStatus
jwt_token_parse(const char *token, size_t len, JwtToken *out)
{
	const char *dot1;
	const char *dot2;
	unsigned char buf[JWT_TOKEN_MAX_LEN + 1];
	size_t buf_len;
	char alg[16];
	bool has_alg;
	bool has_kid;

	memset(out, 0, sizeof(*out));
	if (len == 0 || len > JWT_TOKEN_MAX_LEN || memchr(token, '\0', len) != NULL)
		return JWT_TOKEN_MALFORMED;
	dot1 = memchr(token, '.', len);
	dot2 = dot1 ? memchr(dot1 + 1, '.', len - (dot1 + 1 - token)) : NULL;
	if (dot1 == NULL || dot2 == NULL || memchr(dot2 + 1, '.', len - (dot2 + 1 - token)) != NULL)
		return JWT_TOKEN_MALFORMED;
	out->token = token;
	out->len = len;
	out->signed_len = dot2 - token;
	out->payload = dot1 + 1;
	out->payload_len = dot2 - dot1 - 1;

	if (!b64url_decode(token, dot1 - token, buf, &buf_len) ||
		!jwt_json_parse_header((char *) buf, buf_len, alg, sizeof(alg), &has_alg, out->kid,
							   sizeof(out->kid), &has_kid))
		return JWT_TOKEN_HEADER_MALFORMED;
	if (!has_alg || strcmp(alg, "HS256") != 0)
		return JWT_TOKEN_UNSUPPORTED_ALG;
	if (!has_kid)
		return JWT_TOKEN_NO_KID;

	if (!b64url_decode(dot2 + 1, len - (dot2 + 1 - token), buf, &buf_len) ||
		buf_len != JWT_TOKEN_MAC_BYTES)
		return JWT_TOKEN_SIGNATURE_MALFORMED;
	memcpy(out->sig, buf, JWT_TOKEN_MAC_BYTES);
	return JWT_TOKEN_OK;
}

JwtTokenStatus
jwt_token_verify(JwtToken *t, const unsigned char key[JWT_TOKEN_KEY_BYTES], int64_t now, int64_t max_ttl,
				 int64_t skew)
{
	unsigned char buf[JWT_TOKEN_MAX_LEN + 1];
	size_t buf_len;
	char iss[16];
	bool complete;

	if (crypto_auth_hmacsha256_verify(t->sig, (const unsigned char *) t->token, t->signed_len, key) != 0)
		return JWT_TOKEN_SIGNATURE_INVALID;

	/* signed by us from here on; still parse defensively */
	t->exp = t->iat = t->nbf = 0;
	if (!b64url_decode(t->payload, t->payload_len, buf, &buf_len) ||
		!jwt_json_parse_claims((char *) buf, buf_len, t->sub, sizeof(t->sub), iss, sizeof(iss), &t->exp,
							   &t->iat, &t->nbf, &t->has_nbf, t->scope, sizeof(t->scope), &t->has_scope,
							   &complete))
		return JWT_TOKEN_PAYLOAD_MALFORMED;
	/* exp and iat may be any int64: compare without overflowing (UBSan found it) */
	if (!complete || strcmp(iss, JWT_TOKEN_ISSUER) != 0 || strlen(t->sub) != 36 || t->exp <= t->iat ||
		(uint64_t) t->exp - (uint64_t) t->iat > (uint64_t) max_ttl)
		return JWT_TOKEN_CLAIMS_INVALID;

	if (now - skew > t->exp)
		return JWT_TOKEN_EXPIRED;
	if ((t->has_nbf && now + skew < t->nbf) || now + skew < t->iat)
		return JWT_TOKEN_NOT_YET_VALID;
	return JWT_TOKEN_OK;
}
