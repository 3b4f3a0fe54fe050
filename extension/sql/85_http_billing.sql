-- Billing routes (docs/http-contract.md, "Billing routes").  Each is one
-- lattice_http function; the answers of the actions that call Stripe and of
-- Stripe's webhook are the lattice.* functions beside them, and the rules
-- they apply live in 80_billing.sql.  The routes that call Stripe answer
-- 202 + Lattice-Outbox-Job, and the shim (route flag `outbound`) runs the
-- job after COMMIT and answers with its result.

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

-- POST /billing/checkout: creates (or reuses) the customer, then a Checkout
-- Session; answers {url} once the shim has run the job chain.
CREATE FUNCTION lattice.billing_checkout(req jsonb) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    u record;
    customer text;
    job bigint;
BEGIN
    SELECT x.id, x.email, x.name, x.email_verified_at, pl.stripe_price_id INTO u
      FROM lattice.users x JOIN lattice.plans pl ON pl.id = x.plan_id WHERE x.id = account;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(401, 'unauthorized', 'no authenticated account');
    END IF;
    IF u.email_verified_at IS NULL THEN
        PERFORM lattice.raise_http(403, 'email_unverified',
            'confirm your e-mail address first: receipts and notices go there');
    END IF;
    IF u.stripe_price_id IS NULL THEN
        PERFORM lattice.raise_http(503, 'billing_not_configured', 'the plan has no Stripe price yet');
    END IF;
    IF EXISTS (SELECT FROM lattice.subscriptions s WHERE s.user_id = account
                AND s.status IN ('trialing', 'active', 'past_due', 'unpaid', 'paused')) THEN
        PERFORM lattice.raise_http(409, 'already_subscribed',
            'the account already has a subscription; manage it in the billing portal');
    END IF;
    SELECT bc.stripe_customer_id INTO customer FROM lattice.billing_customers bc WHERE bc.user_id = account;
    IF customer IS NULL THEN
        job := lattice.outbox_enqueue_stripe('checkout.customer', 'POST', '/v1/customers',
            pg_catalog.jsonb_build_array(
                pg_catalog.jsonb_build_array('email', u.email),
                pg_catalog.jsonb_build_array('name', u.name),
                pg_catalog.jsonb_build_array('metadata[user_id]', account::text)),
            -- one customer per account, even when two checkouts race
            'lattice-customer-' || account::text);
    ELSE
        job := lattice.outbox_enqueue_stripe('checkout.session', 'POST', '/v1/checkout/sessions',
            lattice.billing_checkout_params(account, customer),
            'lattice-checkout-' || pg_catalog.gen_random_uuid()::text);
    END IF;
    PERFORM lattice.audit('billing.checkout_started', NULL, pg_catalog.jsonb_build_object('job', job), req, account);
    RETURN lattice.outbound_answer(job);
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
    -- an account subscribes to its own plan: a named plan must be that one
    IF b ? 'plan' AND (jsonb_typeof(b -> 'plan') <> 'string' OR NOT EXISTS (
           SELECT FROM lattice.users u WHERE u.id = lattice.current_user_id() AND u.plan_id = b ->> 'plan')) THEN
        PERFORM lattice.raise_http(400, 'invalid_input', 'plan must name the account''s plan',
                                   '[{"path": "plan", "message": "unknown plan"}]');
    END IF;
    RETURN lattice.billing_checkout(req);
END
$$;

-- POST /billing/portal: a billing-portal session for the account's customer.
CREATE FUNCTION lattice.billing_portal(req jsonb) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    customer text;
    job bigint;
BEGIN
    SELECT bc.stripe_customer_id INTO customer FROM lattice.billing_customers bc WHERE bc.user_id = account;
    IF customer IS NULL THEN
        PERFORM lattice.raise_http(409, 'no_customer', 'start a subscription with checkout first');
    END IF;
    job := lattice.outbox_enqueue_stripe('portal.session', 'POST', '/v1/billing_portal/sessions',
        pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_array('customer', customer),
            pg_catalog.jsonb_build_array('return_url', lattice.billing_public_origin() || '/dashboard/billing')),
        'lattice-portal-' || pg_catalog.gen_random_uuid()::text);
    PERFORM lattice.audit('billing.portal_opened', NULL, pg_catalog.jsonb_build_object('job', job), req, account);
    RETURN lattice.outbound_answer(job);
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

-- POST /billing/cancel (at period end) and /billing/resume.
CREATE FUNCTION lattice.billing_set_cancel(req jsonb, cancel boolean) RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    s record;
    job bigint;
BEGIN
    SELECT x.* INTO s FROM lattice.subscriptions x WHERE x.user_id = account;
    IF s IS NULL OR s.stripe_subscription_id IS NULL
       OR s.status NOT IN ('trialing', 'active', 'past_due', 'unpaid', 'paused') THEN
        PERFORM lattice.raise_http(409, 'no_subscription', 'the account has no subscription to change');
    END IF;
    IF s.cancel_at_period_end = cancel THEN
        RETURN lattice.http_json(200, lattice.billing_summary(account));
    END IF;
    job := lattice.outbox_enqueue_stripe(CASE WHEN cancel THEN 'subscription.cancel' ELSE 'subscription.resume' END,
        'POST', '/v1/subscriptions/' || s.stripe_subscription_id,
        pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_array('cancel_at_period_end', cancel::text)),
        'lattice-' || CASE WHEN cancel THEN 'cancel-' ELSE 'resume-' END || pg_catalog.gen_random_uuid()::text);
    PERFORM lattice.audit(CASE WHEN cancel THEN 'billing.cancel_requested' ELSE 'billing.resume_requested' END,
                          s.stripe_subscription_id, pg_catalog.jsonb_build_object('job', job), req, account);
    RETURN lattice.outbound_answer(job);
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

-- The webhook: size, signature, then store-once and apply.  SECURITY
-- DEFINER because an event names its account only inside the payload; the
-- signature check comes first, so only Stripe can make it act.
CREATE FUNCTION lattice.stripe_webhook_receive(signature text, body text, req jsonb)
RETURNS lattice.http_response
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    secrets text[];
    verdict text;
    ev jsonb;
    inserted integer;
    outcome text;
BEGIN
    IF body IS NULL OR body = '' THEN
        RETURN lattice.http_error(400, 'invalid_input', 'the webhook body is empty');
    END IF;
    IF pg_catalog.octet_length(body) > lattice.billing_setting('webhook_max_bytes') THEN
        RETURN lattice.http_error(413, 'too_large', 'the webhook body is too large',
                                  pg_catalog.jsonb_build_object('max_bytes', lattice.billing_setting('webhook_max_bytes')));
    END IF;

    SELECT pg_catalog.array_agg(w.secret ORDER BY w.id DESC) INTO secrets
      FROM (SELECT x.id, x.secret FROM lattice.webhook_secrets x
             WHERE x.expires_at IS NULL OR x.expires_at > pg_catalog.now()
             ORDER BY x.id DESC LIMIT 8) w;
    verdict := lattice.stripe_signature_verdict(signature, body, secrets,
                                                lattice.billing_setting('webhook_tolerance'),
                                                pg_catalog.statement_timestamp());
    IF verdict = 'no_secret' THEN
        RETURN lattice.http_error(503, 'billing_not_configured', 'no webhook secret is configured');
    ELSIF verdict <> 'valid' THEN
        RETURN lattice.http_error(400, 'invalid_signature', 'the Stripe-Signature header does not verify',
                                  pg_catalog.jsonb_build_object('reason', verdict));
    END IF;

    BEGIN
        ev := body::jsonb;
    EXCEPTION WHEN invalid_text_representation OR program_limit_exceeded THEN
        RETURN lattice.http_error(400, 'invalid_json', 'the webhook body is not JSON');
    END;
    IF pg_catalog.jsonb_typeof(ev) <> 'object' OR pg_catalog.jsonb_typeof(ev -> 'id') <> 'string'
       OR pg_catalog.jsonb_typeof(ev -> 'type') <> 'string' OR pg_catalog.jsonb_typeof(ev -> 'created') <> 'number'
       OR pg_catalog.length(ev ->> 'id') > 255 OR pg_catalog.length(ev ->> 'type') > 255 THEN
        RETURN lattice.http_error(400, 'invalid_event', 'the event needs a string id and type and a numeric created');
    END IF;

    INSERT INTO lattice.stripe_events (id, type, created, livemode, payload)
    VALUES (ev ->> 'id', ev ->> 'type', lattice.stripe_time(ev -> 'created'),
            COALESCE((ev ->> 'livemode')::boolean, false), ev)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    IF inserted = 0 THEN
        RETURN lattice.http_json(200, pg_catalog.jsonb_build_object('received', true, 'duplicate', true));
    END IF;

    outcome := lattice.stripe_apply_event(ev ->> 'id');
    RETURN lattice.http_json(200, pg_catalog.jsonb_build_object('received', true, 'outcome', outcome));
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

GRANT EXECUTE ON FUNCTION
    lattice.billing_body(text, text[]),
    lattice.billing_checkout(jsonb), lattice.billing_portal(jsonb), lattice.billing_set_cancel(jsonb, boolean),
    lattice.stripe_webhook_receive(text, text, jsonb)
    TO lattice_app;
