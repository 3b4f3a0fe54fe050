/*
 * jwt.c
 *		HS256 access tokens: issued and verified in C.
 *
 * The signing key is a server secret (secrets.c) with a kid in the header, so
 * it can rotate: tokens signed with a retired key keep verifying until the
 * longest one could have expired.  Verification accepts exactly alg HS256
 * (so never "none"), a known kid, a valid signature, and exp/nbf/iat within
 * 30 s of skew; each refusal has its own 401 code.  Header and payload are
 * decoded with libsodium's strict base64url and parsed with json-c in strict
 * mode (jwt_json.c, kept apart because json-c's json_object type clashes
 * with PostgreSQL's function of that name).
 */
#include "lattice.h"
#include "identity.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define JWT_MAX_LEN		4096
#define JWT_ISSUER		"lattice"

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

/* Strict base64url (no padding) of one segment into a palloc'd buffer */
static uint8 *
b64url_decode(const char *s, size_t len, size_t *out_len)
{
	uint8	   *out = palloc(len + 1);
	const char *end;

	if (sodium_base642bin(out, len + 1, s, len, NULL, out_len, &end,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 || end != s + len)
		return NULL;
	out[*out_len] = '\0';
	return out;
}

/*
 * Verifies a token and returns its account (which must still exist); raises
 * 401 invalid_token, unsupported_alg, token_expired or token_not_yet_valid.
 */
void
lattice_jwt_verify_cstr(const char *token, pg_uuid_t *user_id)
{
	size_t		len = strlen(token);
	const char *dot1;
	const char *dot2;
	uint8	   *header_json;
	uint8	   *payload_json;
	uint8	   *sig;
	size_t		header_len;
	size_t		payload_len;
	size_t		sig_len;
	char		alg[16];
	char		kid[LATTICE_KID_MAX + 1];
	char		sub[40];
	char		iss[16];
	bool		has_alg;
	bool		has_kid;
	bool		claims_ok;
	int64		exp = 0,
				iat = 0,
				nbf = 0;
	bool		has_nbf;
	uint8		key[LATTICE_SECRET_BYTES];
	int			sig_ok;
	int64		now;
	Datum		uuid_d;

	if (len == 0 || len > JWT_MAX_LEN)
		refuse("invalid_token", "the token is malformed");
	dot1 = strchr(token, '.');
	dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
	if (dot1 == NULL || dot2 == NULL || strchr(dot2 + 1, '.') != NULL)
		refuse("invalid_token", "the token is malformed");

	header_json = b64url_decode(token, dot1 - token, &header_len);
	if (header_json == NULL ||
		!lattice_jwt_parse_header((char *) header_json, header_len, alg, sizeof(alg), &has_alg,
								  kid, sizeof(kid), &has_kid))
		refuse("invalid_token", "the token header is malformed");
	if (!has_alg || strcmp(alg, "HS256") != 0)
		refuse("unsupported_alg", "only HS256 tokens are accepted");
	if (!has_kid)
		refuse("invalid_token", "the token names no key");

	sig = b64url_decode(dot2 + 1, len - (dot2 + 1 - token), &sig_len);
	if (sig == NULL || sig_len != crypto_auth_hmacsha256_BYTES)
		refuse("invalid_token", "the token signature is malformed");
	if (!lattice_jwt_key_usable(kid, key))
		refuse("invalid_token", "the token's key is unknown or retired");
	sig_ok = crypto_auth_hmacsha256_verify(sig, (const unsigned char *) token, dot2 - token, key);
	sodium_memzero(key, sizeof(key));
	if (sig_ok != 0)
		refuse("invalid_token", "the token signature is not valid");

	/* signed by us from here on; still parse defensively */
	payload_json = b64url_decode(dot1 + 1, dot2 - dot1 - 1, &payload_len);
	if (payload_json == NULL ||
		!lattice_jwt_parse_claims((char *) payload_json, payload_len, sub, sizeof(sub),
								  iss, sizeof(iss), &exp, &iat, &nbf, &has_nbf, &claims_ok))
		refuse("invalid_token", "the token payload is malformed");
	if (!claims_ok || strcmp(iss, JWT_ISSUER) != 0 || strlen(sub) != 36 ||
		exp - iat > LATTICE_JWT_MAX_TTL || exp <= iat)
		refuse("invalid_token", "the token claims are not valid");

	now = unix_seconds(lattice_clock_now());
	if (now > exp + LATTICE_JWT_SKEW)
		refuse("token_expired", "the token has expired");
	if ((has_nbf && now + LATTICE_JWT_SKEW < nbf) || now + LATTICE_JWT_SKEW < iat)
		refuse("token_not_yet_valid", "the token is not valid yet");

	uuid_d = DirectFunctionCall1(uuid_in, CStringGetDatum(sub));
	memcpy(user_id, DatumGetUUIDP(uuid_d), sizeof(pg_uuid_t));

	/* a deleted account's tokens die with it */
	SPI_connect();
	if (SPI_execute_with_args("SELECT 1 FROM lattice.users WHERE id = $1", 1, (Oid[]) {UUIDOID},
							  &uuid_d, NULL, true, 1) != SPI_OK_SELECT)
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
	pg_uuid_t  *user_id = palloc(sizeof(pg_uuid_t));

	if (PG_ARGISNULL(0))
		refuse("missing_credentials", "no token given");
	lattice_jwt_verify_cstr(text_to_cstring(PG_GETARG_TEXT_PP(0)), user_id);
	PG_RETURN_UUID_P(user_id);
}

/*
 * lattice.jwt_issue(ttl_seconds integer, req jsonb)
 *   -> (token text, expires_at timestamptz)
 * A token for the current tenant, at most one hour; audited.
 */
PG_FUNCTION_INFO_V1(lattice_jwt_issue);
Datum
lattice_jwt_issue(PG_FUNCTION_ARGS)
{
	pg_uuid_t	tenant;
	int64		ttl = PG_ARGISNULL(0) ? LATTICE_JWT_MAX_TTL : PG_GETARG_INT32(0);
	Jsonb	   *req = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	uint8		key[LATTICE_SECRET_BYTES];
	char		kid[LATTICE_KID_MAX + 1];
	uint8		mac[crypto_auth_hmacsha256_BYTES];
	char	   *sub;
	char	   *header;
	char	   *payload;
	char	   *signing_input;
	char	   *token;
	char	   *jti;
	int64		now;
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	char		details[96];

	if (!lattice_get_tenant(&tenant))
		lattice_raise_http(401, "missing_credentials", "authentication required", NULL, NULL);
	if (ttl < 1 || ttl > LATTICE_JWT_MAX_TTL)
		lattice_raise_http(400, "invalid_ttl", "ttl_seconds must be 1 to 3600", NULL, NULL);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.jwt_issue: must return a record");
	if (!lattice_secret_get("jwt", NULL, key, kid))
		elog(ERROR, "lattice.jwt_issue: no active JWT key; run lattice.rotate_secret('jwt')");

	now = unix_seconds(lattice_clock_now());
	sub = DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(&tenant)));
	jti = lattice_random_token(12);
	/* kid, sub and jti are base64url or uuid text: nothing to escape */
	header = psprintf("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", kid);
	payload = psprintf("{\"iss\":\"" JWT_ISSUER "\",\"sub\":\"%s\",\"iat\":" INT64_FORMAT
					   ",\"nbf\":" INT64_FORMAT ",\"exp\":" INT64_FORMAT ",\"jti\":\"%s\"}",
					   sub, now, now, now + ttl, jti);
	signing_input = psprintf("%s.%s",
							 lattice_b64url_encode((uint8 *) header, strlen(header)),
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
