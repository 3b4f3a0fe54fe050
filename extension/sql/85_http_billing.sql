-- Billing routes (docs/http-contract.md, "Billing routes").  Each is one
-- lattice_http function; the rules live in 80_billing.sql.  The routes that
-- call Stripe answer 202 + Lattice-Outbox-Job, and the shim (route flag
-- `outbound`) runs the job after COMMIT and answers with its result.

-- GET /api/v1/billing
CREATE FUNCTION lattice_http.billing_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
BEGIN
    RETURN lattice.http_json(200, lattice.billing_summary(account), lattice.entitlement_headers(account));
END
$$;

-- GET /api/v1/billing/invoices
CREATE FUNCTION lattice_http.billing_invoices(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
BEGIN
    RETURN lattice.http_json(200, lattice.billing_invoices(account), lattice.entitlement_headers(account));
END
$$;

-- The body of a billing action: absent, or a JSON object with only the
-- members named in allowed (400 invalid_json / unknown_field otherwise), so a
-- malformed request never reaches Stripe.
CREATE FUNCTION lattice.billing_body(body text, allowed text[] DEFAULT '{}')
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    extra text;
BEGIN
    SELECT k INTO extra FROM jsonb_object_keys(b) k WHERE k <> ALL (allowed) LIMIT 1;
    IF extra IS NOT NULL THEN
        PERFORM lattice.raise_http(400, 'unknown_field', 'the body has a member this action does not take',
                                   jsonb_build_array(jsonb_build_object('path', extra, 'message', 'unknown field')));
    END IF;
    RETURN b;
END
$$;

-- POST /api/v1/billing/checkout -> {url} of a Stripe Checkout Session
CREATE FUNCTION lattice_http.billing_checkout(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb;
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    b := lattice.billing_body(body, ARRAY['plan']);
    -- one plan today: a named plan must be the account's own
    IF b ? 'plan' AND (jsonb_typeof(b -> 'plan') <> 'string' OR NOT EXISTS (
           SELECT FROM lattice.users u WHERE u.id = lattice.current_user_id() AND u.plan_id = b ->> 'plan')) THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'plan must name the account''s plan',
                                   '[{"path": "plan", "message": "unknown plan"}]');
    END IF;
    RETURN lattice.billing_checkout(req);
END
$$;

-- POST /api/v1/billing/portal -> {url} of a billing-portal session
CREATE FUNCTION lattice_http.billing_portal(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_portal(req);
END
$$;

-- POST /api/v1/billing/cancel: cancel at the end of the period
CREATE FUNCTION lattice_http.billing_cancel(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_set_cancel(req, true);
END
$$;

-- POST /api/v1/billing/resume: undo a pending cancellation
CREATE FUNCTION lattice_http.billing_resume(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req, 'session');
    PERFORM lattice.billing_body(body);
    RETURN lattice.billing_set_cancel(req, false);
END
$$;

-- POST /api/v1/webhooks/stripe: no user; the signature is the credential,
-- and the client address is rate-limited.  Needs the route to pass the
-- `stripe-signature` header (req.headers).
CREATE FUNCTION lattice_http.stripe_webhook(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.billing_webhook_rate(req ->> 'client_addr');
    RETURN lattice.stripe_webhook_receive(req #>> '{headers,stripe-signature}', body, req);
END
$$;

GRANT EXECUTE ON FUNCTION lattice.billing_body(text, text[]) TO lattice_app;
