/*
 * tenant.h
 *		The authenticated context of the transaction (tenant.c) and the
 *		tenant handed to the workers of a Citus cluster (tenant_token.c).
 *
 * The context is one value: the tenant, how it was proved (method), the
 * credential that proved it, the scopes of a key or token and whether a
 * second factor was verified.  Only C code of the extension sets it, after
 * verifying a credential; it lives until the transaction ends, or until the
 * subtransaction that set it aborts.  See docs/design.md, "Tenancy".
 */
#ifndef LATTICE_TENANT_H
#define LATTICE_TENANT_H

#include "postgres.h"

#include "utils/uuid.h"

/* What proved the tenant of this transaction */
typedef enum LatticeAuthMethod
{
	LATTICE_AUTH_NONE = 0, /* set by an admin switch or a test, or none */
	LATTICE_AUTH_API_KEY,
	LATTICE_AUTH_BEARER,
	LATTICE_AUTH_SESSION,
	LATTICE_AUTH_PASSWORD, /* login or sign-up in this transaction */
	LATTICE_AUTH_LINK	   /* an account link (account_token.c) */
} LatticeAuthMethod;

typedef struct LatticeAuthContext
{
	pg_uuid_t tenant;
	LatticeAuthMethod method;
	int scopes; /* a key's or token's (LATTICE_SCOPE_* bits) */
	bool has_credential;
	pg_uuid_t credential; /* the key or session id */
	bool second_factor;	  /* a TOTP or recovery code verified */
	bool deleting;		  /* the proof an account deletion needs */
} LatticeAuthContext;

extern void lattice_tenant_init(void);

/* Sets the tenant (method none) for the rest of the transaction */
extern void lattice_set_tenant(const pg_uuid_t *user_id);
/* Sets the tenant and how it was proved; credential may be NULL */
extern void lattice_set_authenticated(const pg_uuid_t *user_id, LatticeAuthMethod method,
									  const pg_uuid_t *credential, int scopes);
extern bool lattice_get_tenant(pg_uuid_t *user_id);
extern void lattice_clear_tenant(void);
/* The context of this transaction; NULL without a tenant */
extern const LatticeAuthContext *lattice_auth_context(void);
extern LatticeAuthMethod lattice_auth_method(void);
/* Marks that this transaction verified the tenant's second factor */
extern void lattice_auth_second_factor_passed(void);
/* Marks that this transaction proved what deleting the tenant's account needs */
extern void lattice_auth_deleting_proved(void);

/*
 * Runs the caller's SPI work as lattice_app (row-level security applies)
 * when user_id is the transaction's tenant; else the caller's role stays.
 */
typedef struct LatticeRoleSwitch
{
	Oid userid;
	int sec_context;
	bool switched;
} LatticeRoleSwitch;
extern void lattice_as_tenant_role(const pg_uuid_t *user_id, LatticeRoleSwitch *sw);
extern void lattice_restore_role(const LatticeRoleSwitch *sw);

/* tenant_token.c: the tenant handed to the workers of a Citus cluster */
extern void lattice_tenant_token_init(void);
extern void lattice_tenant_token_issue(const pg_uuid_t *tenant);
extern void lattice_tenant_token_issue_as(const pg_uuid_t *tenant, bool deleting);
extern bool lattice_tenant_token_deleting(void);
extern bool lattice_tenant_token_verify(pg_uuid_t *tenant);
extern void lattice_tenant_token_forget(void);
extern bool lattice_tenant_token_active(void);

#endif /* LATTICE_TENANT_H */
