/*
 * auth_jwt.c
 *		HS256 access tokens: issued and verified in C.
 *
 * The signing key is a server secret (auth_secret.c) with a kid in the header, so
 * it can rotate: tokens signed with a retired key keep verifying until the
 * longest one could have expired.  Verification accepts exactly alg HS256
 * (so never "none"), a known kid, a valid signature, and exp/nbf/iat within
 * 30 s of skew; each refusal has its own 401 code.  Reading and checking
 * the token needs no database and lives in auth_jwt_token.c and auth_jwt_json.c
 * (libsodium's strict base64url, json-c in strict mode; fuzzed as they are
 * in tests/fuzz/); this file finds the key, maps each status to its 401 and
 * checks that the account still exists.
 */
#include "common.h"
#include "auth.h"
#include "tenant.h"
#include "auth_jwt_token.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define JWT_ISSUER JWT_TOKEN_ISSUER

StaticAssertDecl(JWT_TOKEN_KID_MAX == LATTICE_KID_MAX, "kid sizes agree");
StaticAssertDecl(JWT_TOKEN_KEY_BYTES == LATTICE_SECRET_BYTES, "key sizes agree");

static int64
unix_seconds(TimestampTz t)
{
	return t / USECS_PER_SEC + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
}

static TimestampTz
from_unix_seconds(int64 s)
{
	return (s - (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY) * USECS_PER_SEC;
}

static void
refuse(const char *code, const char *message)
{
	lattice_raise_http(401, code, message, NULL, "{\"WWW-Authenticate\": \"Bearer\"}");
}

/* The 401 of each refusal: code and message */
static void
refuse_status(JwtTokenStatus status)
{
	switch (status)
	{
		case JWT_TOKEN_OK:
			return;
		case JWT_TOKEN_MALFORMED:
			refuse("invalid_token", "the token is malformed");
			break;
		case JWT_TOKEN_HEADER_MALFORMED:
			refuse("invalid_token", "the token header is malformed");
			break;
		case JWT_TOKEN_UNSUPPORTED_ALG:
			refuse("unsupported_alg", "only HS256 tokens are accepted");
			break;
		case JWT_TOKEN_NO_KID:
			refuse("invalid_token", "the token names no key");
			break;
		case JWT_TOKEN_SIGNATURE_MALFORMED:
			refuse("invalid_token", "the token signature is malformed");
			break;
		case JWT_TOKEN_SIGNATURE_INVALID:
			refuse("invalid_token", "the token signature is not valid");
			break;
		case JWT_TOKEN_PAYLOAD_MALFORMED:
			refuse("invalid_token", "the token payload is malformed");
			break;
		case JWT_TOKEN_CLAIMS_INVALID:
			refuse("invalid_token", "the token claims are not valid");
			break;
		case JWT_TOKEN_EXPIRED:
			refuse("token_expired", "the token has expired");
			break;
		case JWT_TOKEN_NOT_YET_VALID:
			refuse("token_not_yet_valid", "the token is not valid yet");
			break;
	}
	refuse("invalid_token", "the token is malformed");
}

/*
 * Verifies a token and returns its account (which must still exist); raises
 * 401 invalid_token, unsupported_alg, token_expired or token_not_yet_valid.
 */
void
lattice_jwt_verify_cstr(const char *token, pg_uuid_t *user_id, int *scopes)
{
	JwtToken jwt;
	uint8 key[LATTICE_SECRET_BYTES];
	JwtTokenStatus status;
	Datum uuid_d;

	refuse_status(jwt_token_parse(token, strlen(token), &jwt));
	if (!lattice_jwt_key_usable(jwt.kid, key))
		refuse("invalid_token", "the token's key is unknown or retired");
	status = jwt_token_verify(&jwt, key, unix_seconds(lattice_clock_now()), LATTICE_JWT_MAX_TTL,
							  LATTICE_JWT_SKEW);
	sodium_memzero(key, sizeof(key));
	refuse_status(status);
	/* tokens without the claim come from before scopes: what keys could do */
	*scopes = jwt.has_scope ? lattice_scopes_from_text(jwt.scope) : LATTICE_SCOPE_ALL;
	if (*scopes == 0)
		refuse("invalid_token", "the token's scope is not valid");

	uuid_d = DirectFunctionCall1(uuid_in, CStringGetDatum(jwt.sub));
	memcpy(user_id, DatumGetUUIDP(uuid_d), sizeof(pg_uuid_t));

	/* a deleted account's tokens die with it */
	lattice_spi_connect("lattice.authenticate");
	if (SPI_execute_with_args("SELECT 1 FROM lattice.users WHERE id = $1", 1, (Oid[]) {UUIDOID}, &uuid_d,
							  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "lattice: account lookup failed");
	if (SPI_processed != 1)
		refuse("invalid_token", "the token's account does not exist");
	SPI_finish();
}

/* lattice.jwt_verify(token text) -> uuid */
PG_FUNCTION_INFO_V1(lattice_jwt_verify);
Datum
lattice_jwt_verify(PG_FUNCTION_ARGS)
{
	pg_uuid_t *user_id = palloc(sizeof(pg_uuid_t));
	int scopes;

	if (PG_ARGISNULL(0))
		refuse("missing_credentials", "no token given");
	lattice_jwt_verify_cstr(text_to_cstring(PG_GETARG_TEXT_PP(0)), user_id, &scopes);
	PG_RETURN_UUID_P(user_id);
}

/*
 * lattice.jwt_issue(ttl_seconds integer, req jsonb)
 *   -> (token text, expires_at timestamptz)
 * A token for the current tenant, at most one hour, carrying the scopes of
 * what authenticated this transaction (a key's own; ingest and read for a
 * session); audited.
 */
PG_FUNCTION_INFO_V1(lattice_jwt_issue);
Datum
lattice_jwt_issue(PG_FUNCTION_ARGS)
{
	pg_uuid_t tenant;
	int64 ttl = PG_ARGISNULL(0) ? LATTICE_JWT_MAX_TTL : PG_GETARG_INT32(0);
	Jsonb *req = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	uint8 key[LATTICE_SECRET_BYTES];
	char kid[LATTICE_KID_MAX + 1];
	uint8 mac[crypto_auth_hmacsha256_BYTES];
	char *sub;
	char *header;
	char *payload;
	char *signing_input;
	char *token;
	char *jti;
	int64 now;
	TupleDesc desc;
	Datum values[2];
	bool nulls[2] = {false, false};
	char details[96];
	char *scope;
	int scopes;

	if (!lattice_get_tenant(&tenant))
		lattice_raise_http(401, "missing_credentials", "authentication required", NULL, NULL);
	scopes = lattice_auth_scopes();
	/* a tenant set by trusted code without a credential (tests, the owner) */
	if (scopes == 0)
		scopes = LATTICE_SCOPE_ALL;
	scope = lattice_scopes_text(scopes);
	if (ttl < 1 || ttl > LATTICE_JWT_MAX_TTL)
		lattice_raise_http(400, "invalid_ttl",
						   psprintf("ttl_seconds must be 1 to %d", LATTICE_JWT_MAX_TTL), NULL, NULL);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.jwt_issue: must return a record");
	if (!lattice_secret_get("jwt", NULL, key, kid))
		elog(ERROR, "lattice.jwt_issue: no active JWT key; run lattice.rotate_secret('jwt')");

	now = unix_seconds(lattice_clock_now());
	sub = lattice_uuid_text(&tenant);
	jti = lattice_random_token(12);
	/* kid, sub and jti are base64url or uuid text: nothing to escape */
	header = psprintf("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
	/* the scope is made of our own scope names: nothing to escape either */
	payload = psprintf("{\"iss\":\"" JWT_ISSUER "\",\"sub\":\"%s\",\"iat\":" INT64_FORMAT
					   ",\"nbf\":" INT64_FORMAT ",\"exp\":" INT64_FORMAT
					   ",\"jti\":\"%s\",\"scope\":\"%s\"}",
					   sub, now, now, now + ttl, jti, scope);
	signing_input = psprintf("%s.%s", lattice_b64url_encode((uint8 *) header, strlen(header)),
							 lattice_b64url_encode((uint8 *) payload, strlen(payload)));
	crypto_auth_hmacsha256(mac, (const unsigned char *) signing_input, strlen(signing_input), key);
	sodium_memzero(key, sizeof(key));
	token = psprintf("%s.%s", signing_input, lattice_b64url_encode(mac, sizeof(mac)));

	snprintf(details, sizeof(details), "{\"kid\": \"%s\", \"jti\": \"%s\"}", kid, jti);
	lattice_audit("token.issued", &tenant, sub, details, req);

	values[0] = CStringGetTextDatum(token);
	values[1] = TimestampTzGetDatum(from_unix_seconds(now + ttl));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
