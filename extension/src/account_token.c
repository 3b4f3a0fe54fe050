/*
 * account_token.c
 *		Single-use links of the account lifecycle: e-mail verification,
 *		password reset and e-mail change (docs/account.md).
 *
 * A token is base64url(account id || 32 random bytes).  Only its BLAKE2b-256
 * is stored, in the account's own rows of lattice.account_tokens, so a claim
 * reads the pending tokens of one account and purpose (one shard on Citus)
 * and compares every hash in constant time.  A valid claim makes the account
 * the transaction's tenant with the method "link": the caller may then do
 * what the purpose allows, but a link never opens a session (auth_session.c
 * wants a password).  Issuing a token supersedes the pending ones of the
 * same purpose (and address, for alert recipients), so at most one link of
 * each kind works at a time.
 *
 * Password reset links are kept apart, in lattice.reset_links (the owner's,
 * on a Citus coordinator): asking for one must cost the same whether the
 * address has an account or not, so that request writes nothing on the
 * account's own shard.
 */
#include "common.h"
#include "auth.h"
#include "lattice.h"
#include "tenant.h"

#include <sodium.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#define TOKEN_RANDOM_BYTES 32
#define TOKEN_RAW_BYTES	   (UUID_LEN + TOKEN_RANDOM_BYTES)
#define TOKEN_MAX_LEN	   96 /* longer input is refused unread */
#define TOKEN_PENDING_MAX  8  /* rows a claim compares against */

#define CLAIM_ADDR_LIMIT 30	 /* claims per client address per window */
#define CLAIM_WINDOW	 900 /* seconds */

/*
 * The purposes, how long their links work, and whether a new link supersedes
 * the pending ones of the purpose or only those for the same address (alert
 * recipients: several addresses may wait for confirmation at once).
 */
typedef struct TokenPurpose
{
	const char *purpose;
	int ttl_seconds;
	bool per_address;
} TokenPurpose;

static const TokenPurpose purposes[] = {
	{"verify_email", 48 * 3600, false},
	{"reset_password", 3600, false},
	{"change_email", 24 * 3600, false},
	{"alert_recipient", 7 * 24 * 3600, true},
};

static const TokenPurpose *
purpose_of(const char *purpose)
{
	for (size_t i = 0; i < lengthof(purposes); i++)
		if (strcmp(purposes[i].purpose, purpose) == 0)
			return &purposes[i];
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("lattice.account_token: unknown purpose \"%s\"", purpose)));
	return NULL;
}

/* A new token for the account: its id, then libsodium's randomness */
static char *
token_new(const pg_uuid_t *user_id)
{
	uint8 raw[TOKEN_RAW_BYTES];
	char *token;

	memcpy(raw, user_id->data, UUID_LEN);
	randombytes_buf(raw + UUID_LEN, TOKEN_RANDOM_BYTES);
	token = lattice_b64url_encode(raw, sizeof(raw));
	sodium_memzero(raw, sizeof(raw));
	return token;
}

/*
 * lattice.account_token_issue(user_id uuid, purpose text, email text) -> text
 *
 * A new link token for the account; its hash is stored with the address it
 * is about (the one to verify), the older pending tokens of the purpose are
 * superseded (for a per-address purpose, those of the same address).  Runs as the caller: the API role can only write its own
 * tenant's rows (row-level security), the owner's functions any.
 */
PG_FUNCTION_INFO_V1(lattice_account_token_issue);
Datum
lattice_account_token_issue(PG_FUNCTION_ARGS)
{
	pg_uuid_t *user_id = PG_GETARG_UUID_P(0);
	char *purpose = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char *token = token_new(user_id);
	TimestampTz now = lattice_clock_now();
	const TokenPurpose *p = purpose_of(purpose);
	TimestampTz expires = now + (int64) p->ttl_seconds * USECS_PER_SEC;
	Datum values[5];
	char nulls[5] = {' ', ' ', ' ', ' ', ' '};

	values[0] = UUIDPGetDatum(user_id);
	values[1] = CStringGetTextDatum(purpose);
	values[2] = PointerGetDatum(lattice_secret_hash(token, strlen(token)));
	values[3] = PG_ARGISNULL(2) ? (Datum) 0 : PointerGetDatum(PG_GETARG_TEXT_PP(2));
	if (PG_ARGISNULL(2))
		nulls[3] = 'n';
	values[4] = TimestampTzGetDatum(now);

	lattice_spi_connect("lattice.account_token_issue");
	if (SPI_execute_with_args("UPDATE lattice.account_tokens SET used_at = $3"
							  " WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL"
							  " AND (NOT $5 OR email IS NOT DISTINCT FROM $4)",
							  5, (Oid[]) {UUIDOID, TEXTOID, TIMESTAMPTZOID, TEXTOID, BOOLOID},
							  (Datum[]) {values[0], values[1], values[4], values[3],
										 BoolGetDatum(p->per_address)},
							  (char[]) {' ', ' ', ' ', nulls[3], ' '}, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice.account_token_issue: superseding failed");
	if (SPI_execute_with_args("INSERT INTO lattice.account_tokens"
							  " (user_id, purpose, token_hash, email, created_at, expires_at)"
							  " VALUES ($1, $2, $3, $4, $5, $5 + pg_catalog.make_interval(secs => $6))",
							  6,
							  (Oid[]) {UUIDOID, TEXTOID, BYTEAOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID},
							  (Datum[]) {values[0], values[1], values[2], values[3], values[4],
										 Float8GetDatum((double) (expires - now) / USECS_PER_SEC)},
							  nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "lattice.account_token_issue: insert failed");
	SPI_finish();
	PG_RETURN_TEXT_P(cstring_to_text(token));
}

/* Whether a claim is for a password reset link (lattice.reset_links) */
static bool
purposes_include_reset(ArrayType *purposes)
{
	Datum *elems;
	bool *nulls;
	int n;
	bool reset = false;

	deconstruct_array(purposes, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (!nulls[i] && strcmp(TextDatumGetCString(elems[i]), "reset_password") == 0)
			reset = true;
	if (reset && n != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lattice.account_token_claim: a reset link is claimed alone")));
	return reset;
}

static void
refuse(const char *code, const char *message)
{
	lattice_raise_http(400, code, message, NULL, NULL);
}

/*
 * lattice.account_token_claim(token text, purposes text[], req jsonb)
 *   -> (user_id uuid, purpose text, email text)
 *
 * Redeems a link: 400 invalid_token when it is malformed, unknown, forged,
 * used or superseded, 400 token_expired when it is too old, 429
 * too_many_attempts past the per-address limit.  On success the token is
 * used up and its account is the transaction's tenant (method "link").
 */
PG_FUNCTION_INFO_V1(lattice_account_token_claim);
Datum
lattice_account_token_claim(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr pending_plan = NULL;
	static SPIPlanPtr use_plan = NULL;
	static SPIPlanPtr reset_pending_plan = NULL;
	static SPIPlanPtr reset_use_plan = NULL;
	Jsonb *req = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);
	ArrayType *purposes;
	bool reset;
	char *purpose = NULL;
	text *t;
	char *token;
	size_t len;
	uint8 raw[TOKEN_RAW_BYTES];
	size_t raw_len = 0;
	pg_uuid_t user_id;
	bytea *hash;
	int match = -1;
	bool expired = false;
	Datum match_id = (Datum) 0;
	char *email = NULL;
	LatticeRoleSwitch sw;
	TupleDesc desc;
	Datum out[3];
	bool out_nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "lattice.account_token_claim: must return a record");
	if (PG_ARGISNULL(1))
		refuse("invalid_token", "the link is not valid");
	purposes = PG_GETARG_ARRAYTYPE_P(1);
	reset = purposes_include_reset(purposes);

	lattice_enforce_attempts("account_link_addr", lattice_req_text(req, "client_addr"), CLAIM_ADDR_LIMIT,
							 CLAIM_WINDOW);

	if (PG_ARGISNULL(0))
		refuse("invalid_token", "the link is not valid");
	t = PG_GETARG_TEXT_PP(0);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0 || len > TOKEN_MAX_LEN)
		refuse("invalid_token", "the link is not valid");
	token = text_to_cstring(t);
	if (sodium_base642bin(raw, sizeof(raw), token, len, NULL, &raw_len, NULL,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
		raw_len != TOKEN_RAW_BYTES)
		refuse("invalid_token", "the link is not valid");
	memcpy(user_id.data, raw, UUID_LEN);
	sodium_memzero(raw, sizeof(raw));
	hash = lattice_secret_hash(token, len);

	/* the account's pending tokens of these purposes, read as the owner */
	lattice_spi_connect("lattice.account_token_claim");
	if (reset)
		lattice_spi_prepare_kept(&reset_pending_plan,
								 "SELECT NULL::uuid, token_hash, expires_at, email, 'reset_password'"
								 "  FROM lattice.reset_links WHERE account_id = $1 AND used_at IS NULL"
								 " ORDER BY created_at DESC LIMIT " CppAsString2(TOKEN_PENDING_MAX),
								 1, (Oid[]) {UUIDOID});
	else
		lattice_spi_prepare_kept(
			&pending_plan,
			"SELECT id, token_hash, expires_at, email, purpose FROM lattice.account_tokens"
			" WHERE user_id = $1 AND purpose OPERATOR(pg_catalog.=) ANY ($2) AND used_at IS NULL"
			" ORDER BY created_at DESC LIMIT " CppAsString2(TOKEN_PENDING_MAX),
			2, (Oid[]) {UUIDOID, TEXTARRAYOID});
	if (SPI_execute_plan(reset ? reset_pending_plan : pending_plan,
						 (Datum[]) {UUIDPGetDatum(&user_id), PointerGetDatum(purposes)}, NULL, true,
						 0) != SPI_OK_SELECT)
		elog(ERROR, "lattice.account_token_claim: lookup failed");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple tup = SPI_tuptable->vals[i];
		TupleDesc td = SPI_tuptable->tupdesc;
		bool isnull;
		Datum d = SPI_getbinval(tup, td, 2, &isnull);
		bytea *stored = isnull ? NULL : DatumGetByteaPP(d);

		/* every row is compared, a match does not end the loop early */
		if (stored != NULL && VARSIZE_ANY_EXHDR(stored) == LATTICE_SECRET_HASH_BYTES &&
			sodium_memcmp(VARDATA_ANY(stored), VARDATA(hash), LATTICE_SECRET_HASH_BYTES) == 0)
		{
			match = (int) i;
			match_id = SPI_getbinval(tup, td, 1, &isnull);
			if (!isnull)
				match_id = SPI_datumTransfer(match_id, false, UUID_LEN);
			expired = DatumGetTimestampTz(SPI_getbinval(tup, td, 3, &isnull)) <= lattice_clock_now();
			email = SPI_getvalue(tup, td, 4);
			if (email) /* outlive SPI_finish */
				email = strcpy(SPI_palloc(strlen(email) + 1), email);
			purpose = SPI_getvalue(tup, td, 5);
			purpose = strcpy(SPI_palloc(strlen(purpose) + 1), purpose);
		}
	}
	SPI_finish();

	if (match < 0)
		refuse("invalid_token",
			   "the link is not valid: it may have been used already or replaced by a newer one");
	if (expired)
		refuse("token_expired", "the link has expired: ask for a new one");

	lattice_set_authenticated(&user_id, LATTICE_AUTH_LINK, NULL, 0);
	lattice_spi_connect("lattice.account_token_claim");
	if (reset)
	{
		/* the owner's table: this link and any other pending one are used up */
		lattice_spi_prepare_kept(&reset_use_plan,
								 "UPDATE lattice.reset_links SET used_at = $2"
								 " WHERE account_id = $1 AND used_at IS NULL",
								 2, (Oid[]) {UUIDOID, TIMESTAMPTZOID});
		if (SPI_execute_plan(reset_use_plan,
							 (Datum[]) {UUIDPGetDatum(&user_id),
										TimestampTzGetDatum(lattice_clock_now())},
							 NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "lattice.account_token_claim: marking the link used failed");
	}
	else
	{
		lattice_as_tenant_role(&user_id, &sw);
		lattice_spi_prepare_kept(&use_plan,
								 "UPDATE lattice.account_tokens SET used_at = $3"
								 " WHERE user_id = $1 AND id = $2 AND used_at IS NULL",
								 3, (Oid[]) {UUIDOID, UUIDOID, TIMESTAMPTZOID});
		if (SPI_execute_plan(use_plan,
							 (Datum[]) {UUIDPGetDatum(&user_id), match_id,
										TimestampTzGetDatum(lattice_clock_now())},
							 NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "lattice.account_token_claim: marking the token used failed");
		lattice_restore_role(&sw);
	}
	/* a concurrent claim of the same link took it first */
	if (SPI_processed == 0)
		refuse("invalid_token",
			   "the link is not valid: it may have been used already or replaced by a newer one");
	SPI_finish();

	out[0] = UUIDPGetDatum(&user_id);
	out[1] = CStringGetTextDatum(purpose);
	if (email)
		out[2] = CStringGetTextDatum(email);
	else
		out_nulls[2] = true;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), out, out_nulls)));
}

#define FORGOT_ADDR_LIMIT  10 /* requests per client address per hour */
#define FORGOT_EMAIL_LIMIT 3  /* links per address asked for per hour */

/*
 * lattice.password_forgot(email text, req jsonb) -> void
 *
 * Sends a reset link when the address has an account, and does the same
 * work otherwise, so the answer (and its time) does not tell which: both
 * read the address's look-up, write lattice.reset_links (a link, or nothing
 * for an account that does not exist), render the message and audit the
 * request in the operator's trail, all on one node.  Past the per-address
 * limit of the asker it raises 429; past the limit of the address asked for
 * it quietly sends nothing, so nobody can flood a mailbox.
 */
PG_FUNCTION_INFO_V1(lattice_password_forgot);
Datum
lattice_password_forgot(PG_FUNCTION_ARGS)
{
	static SPIPlanPtr lookup_plan = NULL;
	static SPIPlanPtr supersede_plan = NULL;
	static SPIPlanPtr insert_plan = NULL;
	static SPIPlanPtr send_plan = NULL;
	static SPIPlanPtr render_plan = NULL;
	Jsonb *req = PG_ARGISNULL(1) ? NULL : PG_GETARG_JSONB_P(1);
	char *email = PG_ARGISNULL(0) ? NULL : lattice_normalise_email(PG_GETARG_TEXT_PP(0));
	LatticeRateResult r;
	bool send;
	pg_uuid_t account;
	char *token;
	char *link;
	TimestampTz now = lattice_clock_now();

	lattice_enforce_attempts("forgot_addr", lattice_req_text(req, "client_addr"), FORGOT_ADDR_LIMIT,
							 3600);
	if (email == NULL)
		lattice_raise_http(400, "invalid_email", "email is not a valid address", NULL, NULL);
	send = lattice_rate_check("forgot_email", email, FORGOT_EMAIL_LIMIT, 3600, &r);

	lattice_spi_connect("lattice.password_forgot");
	lattice_spi_prepare_kept(&lookup_plan,
							 "SELECT e.user_id FROM lattice.account_emails e WHERE e.email = $1", 1,
							 (Oid[]) {TEXTOID});
	if (SPI_execute_plan(lookup_plan, (Datum[]) {CStringGetTextDatum(email)}, NULL, true, 1) !=
		SPI_OK_SELECT)
		elog(ERROR, "lattice.password_forgot: lookup failed");
	if (SPI_processed == 1 && send)
	{
		bool isnull;

		memcpy(&account,
			   DatumGetUUIDP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)),
			   sizeof(pg_uuid_t));
	}
	else
	{
		/* nothing to send: the same statements for an id no account has */
		randombytes_buf(account.data, UUID_LEN);
		send = false;
	}

	token = token_new(&account);
	link = psprintf("/reset-password?token=%s", token);
	lattice_spi_prepare_kept(
		&supersede_plan,
		"UPDATE lattice.reset_links SET used_at = $2 WHERE account_id = $1 AND used_at IS NULL", 2,
		(Oid[]) {UUIDOID, TIMESTAMPTZOID});
	if (SPI_execute_plan(supersede_plan, (Datum[]) {UUIDPGetDatum(&account), TimestampTzGetDatum(now)},
						 NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "lattice.password_forgot: superseding failed");
	if (send)
	{
		lattice_spi_prepare_kept(
			&insert_plan,
			"INSERT INTO lattice.reset_links (token_hash, account_id, email, created_at, expires_at)"
			" VALUES ($1, $2, $3, $4, $4 + pg_catalog.make_interval(secs => $5))",
			5, (Oid[]) {BYTEAOID, UUIDOID, TEXTOID, TIMESTAMPTZOID, FLOAT8OID});
		if (SPI_execute_plan(insert_plan,
							 (Datum[]) {PointerGetDatum(lattice_secret_hash(token, strlen(token))),
										UUIDPGetDatum(&account), CStringGetTextDatum(email),
										TimestampTzGetDatum(now),
										Float8GetDatum(purpose_of("reset_password")->ttl_seconds)},
							 NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "lattice.password_forgot: insert failed");
		lattice_spi_prepare_kept(
			&send_plan,
			"SELECT lattice.outbox_email($1, 'password_reset',"
			"  pg_catalog.jsonb_build_object('link', lattice.billing_public_origin() OPERATOR(pg_catalog.||) $2),"
			"  $3, NULL)",
			3, (Oid[]) {UUIDOID, TEXTOID, TEXTOID});
		if (SPI_execute_plan(send_plan,
							 (Datum[]) {UUIDPGetDatum(&account), CStringGetTextDatum(link),
										CStringGetTextDatum(email)},
							 NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "lattice.password_forgot: queuing the e-mail failed");
	}
	else
	{
		/* what outbox_email does, thrown away */
		pfree(lattice_secret_hash(token, strlen(token)));
		lattice_spi_prepare_kept(
			&render_plan,
			"SELECT lattice.billing_email_content('password_reset', NULL,"
			"  pg_catalog.jsonb_build_object('link', lattice.billing_public_origin() OPERATOR(pg_catalog.||) $1,"
			"                                'origin', lattice.billing_public_origin()))",
			1, (Oid[]) {TEXTOID});
		if (SPI_execute_plan(render_plan, (Datum[]) {CStringGetTextDatum(link)}, NULL, true, 1) !=
			SPI_OK_SELECT)
			elog(ERROR, "lattice.password_forgot: rendering failed");
	}
	SPI_finish();

	/* the same row either way; the reset itself goes into the account's trail */
	lattice_audit("password.reset_requested", NULL, email, NULL, req);
	PG_RETURN_VOID();
}
