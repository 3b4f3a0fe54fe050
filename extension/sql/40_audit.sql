-- Append-only trail of security-relevant events, written by the extension:
-- audit_log holds each tenant's, audit_unattributed the events no tenant is
-- known for (a login with an unknown email), which belong to the operator.

CREATE TABLE lattice.audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    user_id     uuid NOT NULL,
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX ON lattice.audit_log (user_id, at);

CREATE TABLE lattice.audit_unattributed (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    actor       text NOT NULL DEFAULT SESSION_USER,
    action      text NOT NULL,
    target      text,
    client_addr inet,
    request_id  text,
    details     jsonb
);
CREATE INDEX ON lattice.audit_unattributed (at);

-- Writes one audit row; the only way lattice_app adds to the trail.
CREATE FUNCTION lattice.audit(action text, target text DEFAULT NULL,
                              details jsonb DEFAULT NULL, req jsonb DEFAULT NULL,
                              user_id uuid DEFAULT lattice.current_user_id())
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF audit.user_id IS NULL THEN
        INSERT INTO lattice.audit_unattributed (action, target, client_addr, request_id, details)
        VALUES (audit.action, audit.target,
                CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
    ELSE
        INSERT INTO lattice.audit_log (user_id, action, target, client_addr, request_id, details)
        VALUES (audit.user_id, audit.action, audit.target,
                CAST(req ->> 'client_addr' AS inet), req ->> 'request_id', audit.details);
    END IF;
END
$$;

-- lattice_admin acts as one tenant for the rest of the transaction, audited.
-- It runs as the admin (not SECURITY DEFINER): the audit row is the admin's
-- own insert, which a policy limits to exactly this event (90_security.sql),
-- so the admin's reads that follow use the same role -- on Citus a
-- transaction reaches a shard as one role only.
CREATE FUNCTION lattice.act_as_tenant(user_id uuid, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE
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
