-- Append-only trail of security-relevant events, written by the extension.
-- user_id is NULL where no tenant is known (a login with an unknown email).

CREATE TABLE lattice.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    user_id     uuid,
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb
);
CREATE INDEX ON lattice.audit_log (user_id, at);

-- Writes one audit row; the only way lattice_app adds to the trail.
CREATE FUNCTION lattice.audit(action text, target text DEFAULT NULL,
                              details jsonb DEFAULT NULL, req jsonb DEFAULT NULL,
                              user_id uuid DEFAULT lattice.current_user_id())
RETURNS void
LANGUAGE sql VOLATILE
AS $$
    INSERT INTO lattice.audit_log (user_id, action, target, client_addr, request_id, details)
    VALUES (audit.user_id, audit.action, audit.target,
            CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
$$;

-- lattice_admin acts as one tenant for the rest of the transaction, audited.
CREATE FUNCTION lattice.act_as_tenant(user_id uuid, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF reason IS NULL OR pg_catalog.length(pg_catalog.btrim(reason)) = 0 THEN
        RAISE EXCEPTION 'lattice.act_as_tenant: a reason is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM lattice.act_as_tenant_c(act_as_tenant.user_id);
    INSERT INTO lattice.audit_log (user_id, action, target, details)
    VALUES (act_as_tenant.user_id, 'admin.act_as_tenant', act_as_tenant.user_id::text,
            pg_catalog.jsonb_build_object('reason', reason));
END
$$;
