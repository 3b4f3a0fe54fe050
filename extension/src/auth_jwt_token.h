/*
 * auth_jwt_token.h
 *		Reading and checking an HS256 access token, without PostgreSQL.
 *
 * Plain C + libsodium + json-c so that the fuzz target (tests/fuzz/) calls
 * exactly the code the extension runs; auth_jwt.c looks the key up, maps each
 * status to its 401 and checks the account.
 */
#ifndef LATTICE_AUTH_JWT_TOKEN_H
#define LATTICE_AUTH_JWT_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JWT_TOKEN_MAX_LEN	4096
#define JWT_TOKEN_KID_MAX	32 /* LATTICE_KID_MAX */
#define JWT_TOKEN_KEY_BYTES 32 /* HMAC-SHA256 key, LATTICE_SECRET_BYTES */
#define JWT_TOKEN_MAC_BYTES 32
#define JWT_TOKEN_ISSUER	"lattice"
#define JWT_TOKEN_SCOPE_MAX 64

typedef enum JwtTokenStatus
{
	JWT_TOKEN_OK,
	JWT_TOKEN_MALFORMED,
	JWT_TOKEN_HEADER_MALFORMED,
	JWT_TOKEN_UNSUPPORTED_ALG,
	JWT_TOKEN_NO_KID,
	JWT_TOKEN_SIGNATURE_MALFORMED,
	JWT_TOKEN_SIGNATURE_INVALID,
	JWT_TOKEN_PAYLOAD_MALFORMED,
	JWT_TOKEN_CLAIMS_INVALID,
	JWT_TOKEN_EXPIRED,
	JWT_TOKEN_NOT_YET_VALID
} JwtTokenStatus;

typedef struct JwtToken
{
	const char *token;
	size_t len;
	size_t signed_len;	 /* "<header>.<payload>" */
	const char *payload; /* base64url, not decoded yet */
	size_t payload_len;
	char kid[JWT_TOKEN_KID_MAX + 1];
	unsigned char sig[JWT_TOKEN_MAC_BYTES];
	/* claims, set by jwt_token_verify */
	char sub[40];
	int64_t exp;
	int64_t iat;
	int64_t nbf;
	bool has_nbf;
	char scope[JWT_TOKEN_SCOPE_MAX + 1]; /* space-separated, as OAuth's */
	bool has_scope;
} JwtToken;

/* Shape, header (alg HS256, a kid) and signature encoding; no key needed. */
extern JwtTokenStatus jwt_token_parse(const char *token, size_t len, JwtToken *out);

/* Signature under key, then claims and times against now (unix seconds). */
extern JwtTokenStatus jwt_token_verify(JwtToken *t, const unsigned char key[JWT_TOKEN_KEY_BYTES],
									   int64_t now, int64_t max_ttl, int64_t skew);

/* auth_jwt_json.c: json-c in strict mode; false when not one JSON object */
extern bool jwt_json_parse_header(const char *json, size_t len, char *alg, size_t alg_size,
								  bool *has_alg, char *kid, size_t kid_size, bool *has_kid);
extern bool jwt_json_parse_claims(const char *json, size_t len, char *sub, size_t sub_size, char *iss,
								  size_t iss_size, int64_t *exp, int64_t *iat, int64_t *nbf,
								  bool *has_nbf, char *scope, size_t scope_size, bool *has_scope,
								  bool *complete);

#endif /* LATTICE_AUTH_JWT_TOKEN_H */
