-- Tenancy: the transaction's tenant is held in C (src/tenant.c).

CREATE FUNCTION lattice.current_user_id() RETURNS uuid
    AS 'MODULE_PATHNAME', 'lattice_current_user_id'
    LANGUAGE C STABLE PARALLEL RESTRICTED LEAKPROOF;
COMMENT ON FUNCTION lattice.current_user_id() IS
    'the authenticated tenant of this transaction, NULL when none; set only by lattice''s C code';

CREATE FUNCTION lattice.test_set_tenant(user_id uuid) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_test_set_tenant'
    LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.test_set_tenant(uuid) IS
    'tests only, superuser only: sets the tenant for the rest of the transaction';

CREATE FUNCTION lattice.act_as_tenant_c(user_id uuid) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_act_as_tenant_c'
    LANGUAGE C VOLATILE;
