/*
 * auth_seal.c
 *		Secrets kept at rest sealed under the server pepper: TOTP secrets
 *		(account_totp.c) and webhook signing secrets (alert_webhook.c).
 *
 * A sealed value is crypto_secretbox under a key derived from the active
 * pepper and a context string (one per kind of secret, so one kind's
 * ciphertext never opens as another's).  It names the pepper's kid: a retired
 * pepper stays readable, so rotating the pepper breaks nothing.  Layout:
 * version (1), kid length, kid, nonce, ciphertext.  The API role may read the
 * tables that hold these values and learns nothing from them.
 */
#include "auth.h"

#include <sodium.h>

#define SEAL_VERSION 1
#define SEAL_HEADER	 2 /* version and kid length */

static void
seal_key(const char *context, const uint8 pepper[LATTICE_SECRET_BYTES],
		 uint8 key[crypto_secretbox_KEYBYTES])
{
	crypto_generichash(key, crypto_secretbox_KEYBYTES, (const unsigned char *) context, strlen(context),
					   pepper, LATTICE_SECRET_BYTES);
}

bytea *
lattice_seal(const char *context, const uint8 *plain, size_t plain_len)
{
	uint8 pepper[LATTICE_SECRET_BYTES];
	uint8 key[crypto_secretbox_KEYBYTES];
	char kid[LATTICE_KID_MAX + 1];
	size_t kid_len;
	size_t len;
	bytea *sealed;
	uint8 *p;

	if (!lattice_secret_get("pepper", NULL, pepper, kid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("lattice: there is no active pepper to seal a secret with"),
				 errhint("Run SELECT lattice.rotate_secret('pepper').")));
	kid_len = strlen(kid);
	Assert(kid_len > 0 && kid_len <= LATTICE_KID_MAX);
	seal_key(context, pepper, key);
	sodium_memzero(pepper, sizeof(pepper));

	len = SEAL_HEADER + kid_len + crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + plain_len;
	sealed = palloc(VARHDRSZ + len);
	SET_VARSIZE(sealed, VARHDRSZ + len);
	p = (uint8 *) VARDATA(sealed);
	p[0] = SEAL_VERSION;
	p[1] = (uint8) kid_len;
	memcpy(p + SEAL_HEADER, kid, kid_len);
	p += SEAL_HEADER + kid_len;
	randombytes_buf(p, crypto_secretbox_NONCEBYTES);
	if (crypto_secretbox_easy(p + crypto_secretbox_NONCEBYTES, plain, plain_len, p, key) != 0)
		elog(ERROR, "lattice: sealing a secret failed");
	sodium_memzero(key, sizeof(key));
	return sealed;
}

/*
 * Opens a sealed value into out (max bytes) and returns its length.  Only
 * lattice_seal writes these values, so one that does not open is
 * corruption, not input, and raises.
 */
size_t
lattice_unseal(const char *context, bytea *sealed, uint8 *out, size_t max)
{
	const uint8 *p = (const uint8 *) VARDATA_ANY(sealed);
	size_t len = VARSIZE_ANY_EXHDR(sealed);
	size_t kid_len;
	size_t clen;
	char kid[LATTICE_KID_MAX + 1];
	uint8 pepper[LATTICE_SECRET_BYTES];
	uint8 key[crypto_secretbox_KEYBYTES];
	const uint8 *nonce;
	int rc;

	if (len < SEAL_HEADER || p[0] != SEAL_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED), errmsg("lattice: a sealed secret is corrupt"),
				 errdetail("Unknown format.")));
	kid_len = p[1];
	if (kid_len == 0 || kid_len > LATTICE_KID_MAX ||
		len < SEAL_HEADER + kid_len + crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + 1 ||
		memchr(p + SEAL_HEADER, '\0', kid_len) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED), errmsg("lattice: a sealed secret is corrupt"),
				 errdetail("It is truncated or its key id is malformed.")));
	clen = len - SEAL_HEADER - kid_len - crypto_secretbox_NONCEBYTES;
	if (clen - crypto_secretbox_MACBYTES > max)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED), errmsg("lattice: a sealed secret is corrupt"),
				 errdetail("It is too long.")));
	memcpy(kid, p + SEAL_HEADER, kid_len);
	kid[kid_len] = '\0';
	nonce = p + SEAL_HEADER + kid_len;

	if (!lattice_secret_get("pepper", kid, pepper, NULL))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED), errmsg("lattice: a sealed secret is corrupt"),
				 errdetail("It names no known pepper.")));
	seal_key(context, pepper, key);
	sodium_memzero(pepper, sizeof(pepper));
	rc = crypto_secretbox_open_easy(out, nonce + crypto_secretbox_NONCEBYTES, clen, nonce, key);
	sodium_memzero(key, sizeof(key));
	if (rc != 0)
	{
		sodium_memzero(out, max);
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED), errmsg("lattice: a sealed secret is corrupt"),
				 errdetail("It does not open under the pepper it names.")));
	}
	return clen - crypto_secretbox_MACBYTES;
}
