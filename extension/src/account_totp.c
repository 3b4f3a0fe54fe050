/*
 * account_totp.c
 *		The second factor: TOTP codes (RFC 6238 over RFC 4226 HOTP), their
 *		secrets sealed at rest under the server pepper, and recovery codes.
 *
 * A TOTP secret is 20 bytes of libsodium randomness.  The person gets it
 * once, in base32, for the authenticator app; the table keeps it sealed
 * under the server pepper (auth_seal.c), so the API role, which reads that
 * table, learns nothing.
 *
 * A code is checked against the steps before, at and after the current one,
 * each computed and compared in constant time with no early exit; only steps
 * after the last one used count, and the caller stores the step returned,
 * so a code works once.
 *
 * Recovery codes are 50 bits of randomness in lowercase base32, shown as
 * xxxxx-xxxxx; only their BLAKE2b-256 is stored.
 */
#include "common.h"
#include "auth.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "common/sha1.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define TOTP_SECRET_BYTES 20 /* 160 bits, as RFC 4226 recommends */
#define TOTP_SECRET_MAX	  64 /* what a sealed value may hold */
#define TOTP_STEP_USECS	  (30 * USECS_PER_SEC)
#define TOTP_CHECK_DIGITS 6

/* PostgreSQL's epoch, 2000-01-01, in TOTP steps since Unix time 0 */
#define TOTP_STEPS_BEFORE_PG_EPOCH \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY / 30)

#define RECOVERY_CODES		10
#define RECOVERY_CODE_CHARS 10

static const char seal_context[] = "lattice totp v1";
static const char base32_upper[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
static const char base32_lower[] = "abcdefghijklmnopqrstuvwxyz234567";

/* RFC 4648 base32 without padding, palloc'd */
static char *
base32_encode(const uint8 *data, size_t len, const char *alphabet)
{
	char *out = palloc((len * 8 + 4) / 5 + 1);
	size_t o = 0;
	size_t i;
	uint32 buffer = 0;
	int bits = 0;

	for (i = 0; i < len; i++)
	{
		buffer = ((buffer << 8) | data[i]) & 0xfff;
		bits += 8;
		while (bits >= 5)
		{
			out[o++] = alphabet[(buffer >> (bits - 5)) & 0x1f];
			bits -= 5;
		}
	}
	if (bits > 0)
		out[o++] = alphabet[(buffer << (5 - bits)) & 0x1f];
	out[o] = '\0';
	return out;
}

/* RFC 4226: HMAC-SHA-1 of the big-endian counter, dynamically truncated */
static uint32
hotp(const uint8 *key, size_t keylen, uint64 counter, int digits)
{
	static const uint32 modulus[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};
	uint8 msg[8];
	uint8 mac[SHA1_DIGEST_LENGTH];
	pg_hmac_ctx *ctx;
	int offset;
	uint32 bin;
	int i;

	Assert(digits >= 1 && digits <= 8);
	for (i = 7; i >= 0; i--)
	{
		msg[i] = (uint8) (counter & 0xff);
		counter >>= 8;
	}
	ctx = pg_hmac_create(PG_SHA1);
	if (ctx == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("lattice: out of memory")));
	if (pg_hmac_init(ctx, key, keylen) < 0 || pg_hmac_update(ctx, msg, sizeof(msg)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
	{
		char *err = pstrdup(pg_hmac_error(ctx));

		pg_hmac_free(ctx);
		elog(ERROR, "lattice: HMAC-SHA-1 failed: %s", err);
	}
	pg_hmac_free(ctx);

	offset = mac[SHA1_DIGEST_LENGTH - 1] & 0x0f;
	bin = ((uint32) (mac[offset] & 0x7f) << 24) | ((uint32) mac[offset + 1] << 16) |
		((uint32) mac[offset + 2] << 8) | (uint32) mac[offset + 3];
	sodium_memzero(mac, sizeof(mac));
	return bin % modulus[digits];
}

/*
 * lattice.totp_code(secret bytea, step bigint, digits integer) -> text
 *
 * The HOTP value of counter step, zero-padded to digits (6 to 8).  The TOTP
 * code of a moment is that of its step, floor(Unix time / 30).
 */
PG_FUNCTION_INFO_V1(lattice_totp_code);
Datum
lattice_totp_code(PG_FUNCTION_ARGS)
{
	bytea *secret = PG_GETARG_BYTEA_PP(0);
	int64 step = PG_GETARG_INT64(1);
	int32 digits = PG_GETARG_INT32(2);
	uint32 code;

	if (digits < 6 || digits > 8)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.totp_code: digits must be between 6 and 8, not %d", digits)));
	if (step < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.totp_code: step must not be negative")));
	if (VARSIZE_ANY_EXHDR(secret) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.totp_code: secret must not be empty")));

	code = hotp((const uint8 *) VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret), (uint64) step, digits);
	PG_RETURN_TEXT_P(cstring_to_text(psprintf("%0*u", (int) digits, code)));
}

/*
 * lattice.totp_generate() -> (secret text, sealed bytea)
 *
 * A new TOTP secret: in base32 for the person, sealed under the active
 * pepper for the table.
 */
PG_FUNCTION_INFO_V1(lattice_totp_generate);
Datum
lattice_totp_generate(PG_FUNCTION_ARGS)
{
	uint8 secret[TOTP_SECRET_BYTES];
	bytea *sealed;
	char *secret_b32;
	TupleDesc desc;
	Datum out[2];
	bool out_nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.totp_generate: must return a record");
	randombytes_buf(secret, sizeof(secret));
	secret_b32 = base32_encode(secret, sizeof(secret), base32_upper);
	sealed = lattice_seal(seal_context, secret, sizeof(secret));
	sodium_memzero(secret, sizeof(secret));

	out[0] = CStringGetTextDatum(secret_b32);
	out[1] = PointerGetDatum(sealed);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, out_nulls)));
}

/* "123456" with any spaces around it, into digits; false otherwise */
static bool
totp_code_parse(text *t, char digits[TOTP_CHECK_DIGITS])
{
	const char *s = VARDATA_ANY(t);
	size_t len = VARSIZE_ANY_EXHDR(t);
	size_t i;

	while (len > 0 && s[0] == ' ')
	{
		s++;
		len--;
	}
	while (len > 0 && s[len - 1] == ' ')
		len--;
	if (len != TOTP_CHECK_DIGITS)
		return false;
	for (i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		digits[i] = s[i];
	}
	return true;
}

/* floor(Unix time / 30) of a finite timestamp */
static int64
totp_step_at(TimestampTz at)
{
	int64 q = at / TOTP_STEP_USECS;

	if (at % TOTP_STEP_USECS != 0 && at < 0)
		q--;
	return q + TOTP_STEPS_BEFORE_PG_EPOCH;
}

/*
 * lattice.totp_check(sealed bytea, code text, last_step bigint, at timestamptz)
 *   -> bigint
 *
 * The step the code is valid for, among the one before, at and after that of
 * at (lattice.clock_now() when NULL), later than last_step (none when NULL);
 * NULL when the code is malformed or matches none of them.  The caller
 * stores the step returned as the next last_step.
 */
PG_FUNCTION_INFO_V1(lattice_totp_check);
Datum
lattice_totp_check(PG_FUNCTION_ARGS)
{
	bytea *sealed;
	int64 last_step;
	TimestampTz at;
	char given[TOTP_CHECK_DIGITS];
	bool well_formed;
	uint8 secret[TOTP_SECRET_MAX];
	size_t secret_len;
	int64 now_step;
	int64 matched = -1;
	int i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	sealed = PG_GETARG_BYTEA_PP(0);
	last_step = PG_ARGISNULL(2) ? -1 : PG_GETARG_INT64(2);
	at = PG_ARGISNULL(3) ? lattice_clock_now() : PG_GETARG_TIMESTAMPTZ(3);
	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.totp_check: the time must be finite")));

	/* unsealed first: a corrupt value raises whatever the code */
	secret_len = lattice_unseal(seal_context, sealed, secret, TOTP_SECRET_MAX);
	well_formed = totp_code_parse(PG_GETARG_TEXT_PP(1), given);
	if (!well_formed)
	{
		sodium_memzero(secret, sizeof(secret));
		PG_RETURN_NULL();
	}

	now_step = totp_step_at(at);
	for (i = -1; i <= 1; i++)
	{
		int64 step = now_step + i;
		bool eligible = step >= 0 && step > last_step;
		char expected[TOTP_CHECK_DIGITS + 1];

		snprintf(expected, sizeof(expected), "%0*u", TOTP_CHECK_DIGITS,
				 hotp(secret, secret_len, (uint64) (step >= 0 ? step : 0), TOTP_CHECK_DIGITS));
		/* every candidate is compared; the latest match wins */
		if ((sodium_memcmp(expected, given, TOTP_CHECK_DIGITS) == 0) & eligible)
			matched = step;
		sodium_memzero(expected, sizeof(expected));
	}
	sodium_memzero(secret, sizeof(secret));
	sodium_memzero(given, sizeof(given));

	if (matched < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(matched);
}

/*
 * lattice.recovery_codes_new() -> (codes text[], hashes bytea[])
 *
 * Ten recovery codes, xxxxx-xxxxx, and the BLAKE2b-256 of each without its
 * dash, in the same order.  The codes are distinct.
 */
PG_FUNCTION_INFO_V1(lattice_recovery_codes_new);
Datum
lattice_recovery_codes_new(PG_FUNCTION_ARGS)
{
	char raw[RECOVERY_CODES][RECOVERY_CODE_CHARS];
	Datum codes[RECOVERY_CODES];
	Datum hashes[RECOVERY_CODES];
	TupleDesc desc;
	Datum out[2];
	bool out_nulls[2] = {false, false};
	int i;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.recovery_codes_new: must return a record");

	for (i = 0; i < RECOVERY_CODES; i++)
	{
		bool duplicate;

		do
		{
			uint8 r[RECOVERY_CODE_CHARS];
			int j;

			/* 256 is a multiple of 32: each character is uniform */
			randombytes_buf(r, sizeof(r));
			for (j = 0; j < RECOVERY_CODE_CHARS; j++)
				raw[i][j] = base32_lower[r[j] & 0x1f];
			sodium_memzero(r, sizeof(r));
			duplicate = false;
			for (j = 0; j < i; j++)
				duplicate |= memcmp(raw[i], raw[j], RECOVERY_CODE_CHARS) == 0;
		} while (duplicate);
	}

	for (i = 0; i < RECOVERY_CODES; i++)
	{
		hashes[i] = PointerGetDatum(lattice_secret_hash(raw[i], RECOVERY_CODE_CHARS));
		codes[i] = CStringGetTextDatum(psprintf("%.5s-%.5s", raw[i], raw[i] + 5));
	}
	sodium_memzero(raw, sizeof(raw));

	out[0] = PointerGetDatum(construct_array(codes, RECOVERY_CODES, TEXTOID, -1, false, TYPALIGN_INT));
	out[1] = PointerGetDatum(construct_array(hashes, RECOVERY_CODES, BYTEAOID, -1, false, TYPALIGN_INT));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, out_nulls)));
}

/* A recovery code as typed, into its 10 lowercase characters; false otherwise */
static bool
recovery_code_normalise(text *t, char norm[RECOVERY_CODE_CHARS])
{
	const char *s = VARDATA_ANY(t);
	size_t len = VARSIZE_ANY_EXHDR(t);
	size_t n = 0;
	size_t i;

	for (i = 0; i < len; i++)
	{
		char c = s[i];

		if (c == ' ' || c == '-')
			continue;
		if (c >= 'A' && c <= 'Z')
			c = c - 'A' + 'a';
		if (!((c >= 'a' && c <= 'z') || (c >= '2' && c <= '7')) || n == RECOVERY_CODE_CHARS)
			return false;
		norm[n++] = c;
	}
	return n == RECOVERY_CODE_CHARS;
}

/*
 * lattice.recovery_code_match(code text, hashes bytea[]) -> integer
 *
 * The 1-based position in hashes of the code's hash, 0 when it is none of
 * them (or malformed, or NULL).  Every non-NULL element is compared in
 * constant time, whatever the code; NULL elements (used codes) never match.
 */
PG_FUNCTION_INFO_V1(lattice_recovery_code_match);
Datum
lattice_recovery_code_match(PG_FUNCTION_ARGS)
{
	char norm[RECOVERY_CODE_CHARS];
	bytea *hash;
	bool well_formed;
	Datum *elems;
	bool *nulls;
	int n;
	int i;
	int32 matched = 0;

	if (PG_ARGISNULL(1))
		PG_RETURN_INT32(0);
	well_formed = !PG_ARGISNULL(0) && recovery_code_normalise(PG_GETARG_TEXT_PP(0), norm);
	if (!well_formed)
		memset(norm, 0, sizeof(norm)); /* a dummy, no code's characters */
	hash = lattice_secret_hash(norm, sizeof(norm));
	sodium_memzero(norm, sizeof(norm));

	deconstruct_array(PG_GETARG_ARRAYTYPE_P(1), BYTEAOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
	{
		bytea *h;

		if (nulls[i])
			continue;
		h = DatumGetByteaPP(elems[i]);
		if (VARSIZE_ANY_EXHDR(h) != LATTICE_SECRET_HASH_BYTES)
			continue;
		/* the first match is kept, the others still compared */
		if ((sodium_memcmp(VARDATA_ANY(h), VARDATA(hash), LATTICE_SECRET_HASH_BYTES) == 0) &
			(matched == 0))
			matched = i + 1;
	}
	if (!well_formed)
		matched = 0;
	PG_RETURN_INT32(matched);
}

/* lattice.base32_encode(data bytea) -> text: RFC 4648, upper case, no padding */
PG_FUNCTION_INFO_V1(lattice_base32_encode);
Datum
lattice_base32_encode(PG_FUNCTION_ARGS)
{
	bytea *data = PG_GETARG_BYTEA_PP(0);
	size_t len = VARSIZE_ANY_EXHDR(data);

	if (len > (MaxAllocSize - VARHDRSZ - 1) / 8 * 5)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("lattice.base32_encode: %zu bytes are too many to encode", len)));
	PG_RETURN_TEXT_P(cstring_to_text(base32_encode((const uint8 *) VARDATA_ANY(data), len,
												   base32_upper)));
}
