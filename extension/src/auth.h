/*
 * auth.h
 *		What the identity files export: server secrets (auth_secret.c),
 *		secrets at rest (auth_seal.c), random tokens (auth_random.c),
 *		passwords (auth_password.c), scopes (auth_scope.c), API keys
 *		(auth_apikey.c), JWTs (auth_jwt*.c), sessions (auth_session.c),
 *		deferred writes (auth_deferred.c), audit rows (audit.c), accounts
 *		(account*.c), and the one entry point lattice.authenticate()
 *		(auth.c), which is the only file that calls the verifiers.
 *
 * Every function here that reads a secret or looks across tenants runs inside
 * a SECURITY DEFINER SQL function owned by the extension owner, so its SPI
 * queries run as the owner (who bypasses row-level security); each of them
 * filters by exactly one key and returns nothing of another tenant.
 */
#ifndef LATTICE_AUTH_H
#define LATTICE_AUTH_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#define LATTICE_SECRET_BYTES   32 /* pepper and JWT keys: 256 bits */
#define LATTICE_KID_MAX		   32
#define LATTICE_API_KEY_PREFIX "ltc_" /* tells a key from a JWT wherever it comes */

/* Argon2id parameters (auth_password.c): OWASP's minimum, see there */
#define LATTICE_PWHASH_OPSLIMIT	   2
#define LATTICE_PWHASH_MEMLIMIT	   (19 * 1024 * 1024)
#define LATTICE_PASSWORD_MIN_CHARS 10
#define LATTICE_PASSWORD_MAX_CHARS 1024

/* JWT (auth_jwt.c) */
#define LATTICE_JWT_MAX_TTL 3600 /* seconds */
#define LATTICE_JWT_SKEW	30	 /* seconds of clock skew accepted */

/* Sessions (auth_session.c) */
#define LATTICE_SESSION_IDLE_SECONDS (24 * 3600)
#define LATTICE_SESSION_MAX_SECONDS	 (14 * 24 * 3600)

/* API keys (auth_apikey.c) */
#define LATTICE_API_KEY_GRACE_DEFAULT (24 * 3600)
#define LATTICE_API_KEY_GRACE_MAX	  (30 * 24 * 3600)

/* auth_secret.c: the server's secrets, read as the extension owner */
extern bool lattice_secret_get(const char *kind, const char *kid, uint8 secret[LATTICE_SECRET_BYTES],
							   char kid_out[LATTICE_KID_MAX + 1]);
extern bool lattice_jwt_key_usable(const char *kid, uint8 secret[LATTICE_SECRET_BYTES]);

/*
 * Secrets at rest (auth_seal.c): sealed under a key derived from the active
 * pepper and context; an unsealed value is at most max bytes (the caller
 * wipes it).
 */
extern bytea *lattice_seal(const char *context, const uint8 *plain, size_t len);
extern size_t lattice_unseal(const char *context, bytea *sealed, uint8 *out, size_t max);

/* auth_random.c: random tokens as base64url text, and their stored hash */
extern char *lattice_b64url_encode(const uint8 *bin, size_t len);
extern char *lattice_random_token(size_t nbytes);
#define LATTICE_SECRET_HASH_BYTES 32
extern bytea *lattice_secret_hash(const char *s, size_t len);

/* auth_password.c: Argon2id; attempts at anything guessable */
extern char *lattice_password_hash_cstr(const char *password, size_t len);
extern bool lattice_password_verify_cstr(const char *hash, const char *password, size_t len);
extern void lattice_password_check_length(const char *password, size_t len);
extern bool lattice_password_length_ok(const char *password, size_t len);
extern void lattice_enforce_attempts(const char *scope, const char *key, int64 limit, int64 period);

/* fields.c: what the fields people type must look like */
extern char *lattice_normalise_email(text *t);
extern char *lattice_clean_label(text *t, int max_chars, const char *what);

/*
 * Scopes of API keys and tokens, as bits.  A session may do everything a
 * person may (read, and manage keys, sessions, billing, the account), but
 * not ingest; a key or token only what its scopes say, and never manage.
 */
#define LATTICE_SCOPE_INGEST 0x1
#define LATTICE_SCOPE_READ	 0x2
#define LATTICE_SCOPE_ALL	 (LATTICE_SCOPE_INGEST | LATTICE_SCOPE_READ)

/* auth_scope.c: scope names <-> bits; raises 400 invalid_scopes for bad names */
extern int lattice_scopes_from_names(const char *const *names, int n);
extern int lattice_scopes_from_text(const char *space_separated);
extern char *lattice_scopes_text(int scopes);
extern Datum lattice_scopes_array(int scopes);
/* The scopes of this transaction's credential: a key's or token's; all for a person */
extern int lattice_auth_scopes(void);

/* auth_apikey.c */
extern void lattice_api_key_verify_cstr(const char *key, Jsonb *req, pg_uuid_t *user_id,
										pg_uuid_t *key_id, int *scopes, bool *stale);

/* auth_jwt.c (the token itself is read by auth_jwt_token.c, auth_jwt_json.c) */
extern void lattice_jwt_verify_cstr(const char *token, pg_uuid_t *user_id, int *scopes);

/* auth_session.c */
extern void lattice_session_verify_cstr(const char *token, Jsonb *req, pg_uuid_t *user_id,
										pg_uuid_t *session_id, bool *stale);

/* auth_mfa.c: the second factor a session needs when it is enabled */
extern bool lattice_mfa_enabled(const pg_uuid_t *user_id);
extern bool lattice_mfa_passed(const pg_uuid_t *user_id);
extern void lattice_mfa_gate(const pg_uuid_t *user_id);

/* auth_deferred.c: writes a transaction cannot make itself */
extern void lattice_deferred_init(void);
extern int lattice_deferred_flush(void);
extern void lattice_defer_touch(const char *what, const pg_uuid_t *owner, const pg_uuid_t *id);
extern void lattice_credential_touch(const char *what, const pg_uuid_t *owner, const pg_uuid_t *id);
extern void lattice_defer_audit(const char *action, const pg_uuid_t *user_id, const char *target,
								Jsonb *req);

/* audit.c: an audit row now, or deferred when the transaction is read-only */
extern void lattice_audit(const char *action, const pg_uuid_t *user_id, const char *target,
						  const char *details_json, Jsonb *req);

#endif /* LATTICE_AUTH_H */
