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
    account uuid := lattice.authenticate(req);
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
    account uuid := lattice.authenticate(req);
BEGIN
    RETURN lattice.http_json(200, lattice.billing_invoices(account), lattice.entitlement_headers(account));
END
$$;

-- POST /api/v1/billing/checkout -> {url} of a Stripe Checkout Session
CREATE FUNCTION lattice_http.billing_checkout(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req);
    RETURN lattice.billing_checkout(req);
END
$$;

-- POST /api/v1/billing/portal -> {url} of a billing-portal session
CREATE FUNCTION lattice_http.billing_portal(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req);
    RETURN lattice.billing_portal(req);
END
$$;

-- POST /api/v1/billing/cancel: cancel at the end of the period
CREATE FUNCTION lattice_http.billing_cancel(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req);
    RETURN lattice.billing_set_cancel(req, true);
END
$$;

-- POST /api/v1/billing/resume: undo a pending cancellation
CREATE FUNCTION lattice_http.billing_resume(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM lattice.authenticate(req);
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
