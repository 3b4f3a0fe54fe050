/*
 * tenant_token.c
 *		The tenant carried from a Citus coordinator to the workers.
 *
 * On one node the tenant lives in a backend variable that only this
 * extension's C code sets (tenant.c).  On Citus the rows live in shards on
 * the workers, where each shard's copy of the tenant policies calls
 * lattice.current_user_id() in a backend the coordinator opened: that
 * backend never saw the credential.  So the coordinator hands it a token:
 *
 *   version | tenant | distributed transaction id | expiry | HMAC-SHA256
 *
 * (version 2 is version 1 that also vouches for a proved account deletion)
 *
 * keyed with the cluster key (lattice.cluster_key, one row on every node,
 * readable by the extension owner only), base64url, in the transaction-local
 * setting lattice.tenant_token.  Citus sends the SET LOCAL to every worker
 * connection of the transaction (citus.propagate_set_commands = local).  A
 * worker accepts the token only when the MAC verifies (constant time), it
 * has not expired, and the distributed transaction it names is the one the
 * worker backend is running: a token copied into another transaction or
 * another session, forged or altered, is refused with an error.  No role
 * needs BYPASSRLS; a client connected straight to a worker has no token and
 * sees nothing.  The threat model is in docs/scaling.md.
 *
 * The key is cached per backend; a token that fails verification re-reads
 * it once, so a rotated key takes effect without restarts.
 */
#include "common.h"
#include "tenant.h"

#include <sodium.h>

#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#define TOKEN_VERSION		1
#define TOKEN_DELETING		2 /* version 1, and the account's deletion is proved */
#define TOKEN_BODY_BYTES	(1 + 16 + 4 + 8 + 8 + 8)
#define TOKEN_BYTES			(TOKEN_BODY_BYTES + crypto_auth_hmacsha256_BYTES)
#define TOKEN_TTL_SECONDS	60
/* how long a node without a cluster key waits before looking again */
#define KEY_RECHECK_SECONDS 10

/* A Citus distributed transaction id, as get_current_transaction_id() gives it */
typedef struct DistXid
{
	int32 initiator;
	int64 number;
	TimestampTz stamp;
} DistXid;

static char *tenant_token_setting = NULL;

/* the token verified in this transaction, and its tenant */
static char
	verified_text[sodium_base64_ENCODED_LEN(TOKEN_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
static pg_uuid_t verified_tenant;
static bool verified_deleting;
static uint8 cluster_key[crypto_auth_hmacsha256_KEYBYTES];
static bool cluster_key_loaded = false;
static TimestampTz cluster_key_checked = 0;

void
lattice_tenant_token_init(void)
{
	DefineCustomStringVariable(
		"lattice.tenant_token", "The tenant of this transaction as the coordinator vouches for it.",
		"Set by the coordinator with SET LOCAL; verified by lattice.current_user_id().",
		&tenant_token_setting, "", PGC_USERSET,
		GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE | GUC_DISALLOW_IN_FILE, NULL, NULL, NULL);
}

/* Switches to the owner of schema lattice, who alone reads the cluster key */
static void
as_owner(Oid *save_userid, int *save_sec)
{
	GetUserIdAndSecContext(save_userid, save_sec);
	SetUserIdAndSecContext(lattice_schema_owner(), *save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

/* Loads the cluster key; false when this node has none (a single node) */
static bool
load_cluster_key(bool force)
{
	static SPIPlanPtr plan = NULL;
	TimestampTz now = GetCurrentTimestamp();
	Oid save_userid;
	int save_sec;

	if (cluster_key_loaded && !force)
		return true;
	if (!cluster_key_loaded && !force && cluster_key_checked != 0 &&
		now - cluster_key_checked < KEY_RECHECK_SECONDS * USECS_PER_SEC)
		return false;
	cluster_key_checked = now;
	as_owner(&save_userid, &save_sec);
	lattice_spi_connect("lattice");
	lattice_spi_prepare_kept(&plan, "SELECT key FROM lattice.cluster_key", 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 2) != SPI_OK_SELECT)
		elog(ERROR, "lattice: reading the cluster key failed");
	cluster_key_loaded = false;
	if (SPI_processed == 1)
	{
		bool isnull;
		bytea *k = DatumGetByteaPP(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));

		if (!isnull && VARSIZE_ANY_EXHDR(k) == sizeof(cluster_key))
		{
			memcpy(cluster_key, VARDATA_ANY(k), sizeof(cluster_key));
			cluster_key_loaded = true;
		}
	}
	SPI_finish();
	SetUserIdAndSecContext(save_userid, save_sec);
	return cluster_key_loaded;
}

/* The distributed transaction this backend runs; number 0 when none */
static void
current_dist_xid(DistXid *out)
{
	static SPIPlanPtr plan = NULL;
	bool isnull;

	memset(out, 0, sizeof(*out));
	lattice_spi_connect("lattice");
	lattice_spi_prepare_kept(&plan,
							 "SELECT initiator_node_identifier, transaction_number, transaction_stamp"
							 "  FROM pg_catalog.get_current_transaction_id()",
							 0, NULL);
	if (SPI_execute_plan(plan, NULL, NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "lattice: reading the distributed transaction id failed");
	out->initiator = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));
	out->number = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (isnull)
		out->number = 0;
	else
		out->stamp = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3,
													   &isnull));
	SPI_finish();
}

static void
put64(uint8 *p, uint64 v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8) (v & 0xff);
}

static uint64
get64(const uint8 *p)
{
	uint64 v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static void
token_body(uint8 *body, const pg_uuid_t *tenant, const DistXid *x, TimestampTz expires, bool deleting)
{
	body[0] = deleting ? TOKEN_DELETING : TOKEN_VERSION;
	memcpy(body + 1, tenant->data, 16);
	body[17] = (uint8) ((uint32) x->initiator >> 24);
	body[18] = (uint8) ((uint32) x->initiator >> 16);
	body[19] = (uint8) ((uint32) x->initiator >> 8);
	body[20] = (uint8) (uint32) x->initiator;
	put64(body + 21, (uint64) x->number);
	put64(body + 29, (uint64) x->stamp);
	put64(body + 37, (uint64) expires);
}

/*
 * Citus starts a distributed transaction lazily, at the first statement
 * that reaches a worker; the token must name it before then.  Citus has no
 * SQL function for that, so its exported C function is called (present in
 * Citus 9 to 12).
 */
static void
ensure_dist_xid(void)
{
	void (*ensure)(void);

	ensure = (void (*)(void)) load_external_function("citus", "EnsureDistributedTransactionId", true,
													 NULL);
	ensure();
}

/* Whether this node is part of a Citus cluster (has a cluster key) */
bool
lattice_tenant_token_active(void)
{
	return load_cluster_key(false);
}

/*
 * On a node with a cluster key: issues the token for tenant in this
 * transaction and sets it with SET LOCAL, which Citus propagates to the
 * workers; NULL sets an empty token (no tenant from here on).  deleting
 * marks it as the token of a transaction that proved the account's
 * deletion (account_reauth.c), which the workers' audit policy needs.
 * Nothing on a single node.
 */
void
lattice_tenant_token_issue_as(const pg_uuid_t *tenant, bool deleting)
{
	uint8 token[TOKEN_BYTES];
	char text[sodium_base64_ENCODED_LEN(TOKEN_BYTES, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
	DistXid x;
	char *sql;

	if (!load_cluster_key(false))
		return;
	text[0] = '\0';
	if (tenant != NULL)
	{
		ensure_dist_xid();
		current_dist_xid(&x);
		if (x.number == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("lattice: no distributed transaction to bind the tenant to")));
		token_body(token, tenant, &x, GetCurrentTimestamp() + (int64) TOKEN_TTL_SECONDS * USECS_PER_SEC,
				   deleting);
		crypto_auth_hmacsha256(token + TOKEN_BODY_BYTES, token, TOKEN_BODY_BYTES, cluster_key);
		sodium_bin2base64(text, sizeof(text), token, TOKEN_BYTES,
						  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	}

	/*
	 * Citus propagates a SET LOCAL only inside what it counts as a
	 * multi-statement transaction; a DO block always is, and its SET LOCAL
	 * lasts to the end of the transaction.  The token's alphabet is
	 * [A-Za-z0-9_-]: nothing to quote.
	 */
	sql = psprintf("DO $lattice$BEGIN"
				   " SET LOCAL citus.propagate_set_commands TO 'local';"
				   " SET LOCAL lattice.tenant_token TO '%s';"
				   " END$lattice$",
				   text);
	lattice_spi_connect("lattice");
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "lattice: setting the tenant token failed");
	SPI_finish();
	sodium_memzero(text, sizeof(text));
}

void
lattice_tenant_token_issue(const pg_uuid_t *tenant)
{
	lattice_tenant_token_issue_as(tenant, false);
}

static void
refuse(const char *why)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
			 errmsg("lattice: tenant token refused"), errdetail("%s", why)));
}

/*
 * The tenant named by lattice.tenant_token, verified; false when the
 * setting is empty.  A token that is present and not valid for this
 * transaction is an error, never an empty answer.
 */
bool
lattice_tenant_token_verify(pg_uuid_t *tenant)
{
	uint8 token[TOKEN_BYTES];
	size_t len = 0;
	DistXid mine;
	DistXid named;

	if (tenant_token_setting == NULL || tenant_token_setting[0] == '\0')
	{
		lattice_tenant_token_forget();
		return false;
	}
	if (verified_text[0] != '\0' && strcmp(verified_text, tenant_token_setting) == 0)
	{
		*tenant = verified_tenant;
		return true;
	}
	if (sodium_base642bin(token, sizeof(token), tenant_token_setting, strlen(tenant_token_setting), NULL,
						  &len, NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
		len != TOKEN_BYTES || (token[0] != TOKEN_VERSION && token[0] != TOKEN_DELETING))
		refuse("The token is malformed.");
	if (!load_cluster_key(false))
		refuse("This node has no cluster key.");
	if (crypto_auth_hmacsha256_verify(token + TOKEN_BODY_BYTES, token, TOKEN_BODY_BYTES, cluster_key) !=
			0 &&
		(!load_cluster_key(true) ||
		 crypto_auth_hmacsha256_verify(token + TOKEN_BODY_BYTES, token, TOKEN_BODY_BYTES, cluster_key) !=
			 0))
		refuse("The token's signature does not verify.");
	if ((TimestampTz) get64(token + 37) < GetCurrentTimestamp())
		refuse("The token has expired.");
	named.initiator = (int32) (((uint32) token[17] << 24) | ((uint32) token[18] << 16) |
							   ((uint32) token[19] << 8) | token[20]);
	named.number = (int64) get64(token + 21);
	named.stamp = (TimestampTz) get64(token + 29);
	current_dist_xid(&mine);
	if (mine.number == 0 || mine.number != named.number || mine.initiator != named.initiator ||
		mine.stamp != named.stamp)
		refuse("The token belongs to another transaction.");
	memcpy(tenant->data, token + 1, 16);
	verified_tenant = *tenant;
	verified_deleting = token[0] == TOKEN_DELETING;
	strlcpy(verified_text, tenant_token_setting, sizeof(verified_text));
	return true;
}

/* Forgets the verified token: at the end of every transaction (tenant.c) */
void
lattice_tenant_token_forget(void)
{
	verified_text[0] = '\0';
	memset(&verified_tenant, 0, sizeof(verified_tenant));
	verified_deleting = false;
}

/* Whether this transaction's verified token proves the account's deletion */
bool
lattice_tenant_token_deleting(void)
{
	pg_uuid_t tenant;

	return lattice_tenant_token_verify(&tenant) && verified_deleting;
}

/*
 * lattice.cluster_key_generate() -> bytea: 32 random bytes for
 * lattice.cluster_key.  Superuser only (lattice.cluster_setup calls it).
 */
PG_FUNCTION_INFO_V1(lattice_cluster_key_generate);
Datum
lattice_cluster_key_generate(PG_FUNCTION_ARGS)
{
	bytea *key = palloc(VARHDRSZ + crypto_auth_hmacsha256_KEYBYTES);

	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("lattice.cluster_key_generate: permission denied")));
	SET_VARSIZE(key, VARHDRSZ + crypto_auth_hmacsha256_KEYBYTES);
	randombytes_buf(VARDATA(key), crypto_auth_hmacsha256_KEYBYTES);
	PG_RETURN_BYTEA_P(key);
}
