-- Billing with Stripe (docs/http-contract.md, "Outbound routes").
--
--  * Webhooks: the Stripe-Signature header is verified in C
--    (src/billing_signature.c) against the active endpoint secrets of
--    lattice.webhook_secrets (owner-only).  Events are stored by Stripe's
--    event id and applied once; state carries the `created` of the event that
--    set it and an older event never overwrites a newer state.
--  * Entitlement: lattice.entitlement(user_id) says what the account may do;
--    ingest asks it, the API adds its warning header.
--  * Outbound calls (Stripe's API, e-mail, alert webhooks) are rows of
--    lattice.outbox, never made inside a transaction: the shim claims a job,
--    performs the call with no transaction open, and records the result
--    through lattice_worker.outbox_complete(), which may chain a next job.
--
-- Cross-tenant work (a webhook finding its customer, the shim draining the
-- outbox) happens in SECURITY DEFINER functions with a pinned search_path
-- that touch only the account an event or job names.
--
-- What the e-mails say is in 78_email_templates.sql; the billing routes, and
-- the answers of the webhook and of the actions that call Stripe, in
-- 85_http_billing.sql.

-- C entry points ------------------------------------------------------------

CREATE FUNCTION lattice.stripe_signature_verdict(header text, payload text, secrets text[],
                                                 tolerance_seconds integer, at timestamptz)
RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_stripe_signature_verdict'
    LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION lattice.stripe_signature_verdict(text, text, text[], integer, timestamptz) IS
    'valid, or why a Stripe-Signature header does not verify: malformed_header, no_signature, '
    'no_secret, timestamp_out_of_tolerance, signature_mismatch';

CREATE FUNCTION lattice.stripe_signature_header(payload text, secret text, at timestamptz)
RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_stripe_signature_header'
    LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION lattice.stripe_signature_header(text, text, timestamptz) IS
    'signs a payload the way Stripe does (t=...,v1=...); for tests and secret checks';

CREATE FUNCTION lattice.billing_setting(name text) RETURNS integer
    AS 'MODULE_PATHNAME', 'lattice_billing_setting'
    LANGUAGE C STABLE STRICT PARALLEL SAFE;

CREATE FUNCTION lattice.billing_webhook_rate(client_addr text) RETURNS void
    AS 'MODULE_PATHNAME', 'lattice_billing_webhook_rate'
    LANGUAGE C VOLATILE;

-- Where Stripe sends the browser back to: the public origin of the dashboard.
CREATE FUNCTION lattice.billing_public_origin() RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.rtrim(COALESCE(NULLIF(pg_catalog.current_setting('lattice.billing_public_origin', true), ''),
                                     'http://localhost:8080'), '/')
$$;

-- State ---------------------------------------------------------------------

-- Stripe's view of a subscription, kept verbatim (status is Stripe's word).
-- state_at is the `created` of the event that set the row: newest wins.
ALTER TABLE lattice.subscriptions
    ADD COLUMN IF NOT EXISTS cancel_at_period_end boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS trial_start          timestamptz,
    ADD COLUMN IF NOT EXISTS trial_end            timestamptz,
    ADD COLUMN IF NOT EXISTS current_period_start timestamptz,
    ADD COLUMN IF NOT EXISTS canceled_at          timestamptz,
    ADD COLUMN IF NOT EXISTS ended_at             timestamptz,
    ADD COLUMN IF NOT EXISTS past_due_since       timestamptz,
    ADD COLUMN IF NOT EXISTS payment_state        text,
    ADD COLUMN IF NOT EXISTS payment_state_at     timestamptz,
    ADD COLUMN IF NOT EXISTS stripe_price_id      text,
    ADD COLUMN IF NOT EXISTS state_at             timestamptz,
    ADD COLUMN IF NOT EXISTS updated_at           timestamptz NOT NULL DEFAULT pg_catalog.now();

-- The Stripe customer of an account, created on first checkout and reused.
-- Also the look-up from a webhook's customer to the account, across tenants
-- (on Citus a reference table, as lattice.account_emails is).
CREATE TABLE lattice.billing_customers (
    user_id             uuid PRIMARY KEY,
    stripe_customer_id  text NOT NULL UNIQUE,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Invoices as the webhooks report them; the read API never calls Stripe.
CREATE TABLE lattice.invoices (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    stripe_invoice_id   text NOT NULL,
    stripe_subscription_id text,
    number              text,
    amount_due          bigint,
    amount_paid         bigint,
    currency            text,
    status              text,
    hosted_invoice_url  text,
    invoice_pdf         text,
    period_start        timestamptz,
    period_end          timestamptz,
    created             timestamptz,
    state_at            timestamptz NOT NULL,
    PRIMARY KEY (user_id, id),
    UNIQUE (user_id, stripe_invoice_id)
);
CREATE INDEX ON lattice.invoices (user_id, created DESC);

-- Webhook endpoint secrets (whsec_...): several may be active while Stripe
-- rolls one over.  Owner-only: no API or admin role reads it.
CREATE TABLE lattice.webhook_secrets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret      text NOT NULL UNIQUE CHECK (pg_catalog.length(secret) BETWEEN 16 AND 256),
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at  timestamptz
);
REVOKE ALL ON lattice.webhook_secrets FROM PUBLIC;

-- Every verified event, by Stripe's id.  account_id is the account it was
-- matched to (NULL until known), so this is not a tenant table.
CREATE TABLE lattice.stripe_events (
    id              text PRIMARY KEY,
    type            text NOT NULL,
    created         timestamptz NOT NULL,
    livemode        boolean NOT NULL DEFAULT false,
    customer        text,
    account_id      uuid,
    payload         jsonb NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    applied_at      timestamptz,
    outcome         text NOT NULL DEFAULT 'received'
                    CHECK (outcome IN ('received', 'applied', 'stale', 'ignored', 'unmatched'))
);
CREATE INDEX ON lattice.stripe_events (customer) WHERE outcome = 'unmatched';
REVOKE ALL ON lattice.stripe_events FROM PUBLIC;

-- Outbound calls and e-mails, drained by the shim.  interactive jobs are
-- performed by the request that created them, right after its COMMIT (the
-- user waits for the answer); the others by the shim's worker thread, with
-- retries and backoff.  Owner-only; the shim reaches it through
-- lattice_worker.* and the API through the enqueue functions below.
CREATE TABLE lattice.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('stripe', 'email', 'webhook')),
    purpose         text NOT NULL,
    interactive     boolean NOT NULL DEFAULT false,
    -- stripe: the request; params is an array of [key, value] pairs, form-encoded by the shim
    method          text CHECK (method IN ('GET', 'POST', 'DELETE')),
    path            text CHECK (path ~ '^/v1/[A-Za-z0-9_/.-]+$'),
    params          jsonb NOT NULL DEFAULT '[]',
    idempotency_key text,
    -- email: the message, rendered when enqueued
    mail_to         text,
    mail_subject    text,
    mail_text       text,
    mail_html       text,
    -- webhook: a JSON POST to url (alerts, docs/alerts.md); signed when claimed
    url             text,
    body            text,
    context         jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 20,
    next_attempt_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    locked_until    timestamptz,
    last_error      text,
    response_status integer,
    response        jsonb,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    done_at         timestamptz,
    CHECK (kind <> 'stripe' OR (method IS NOT NULL AND path IS NOT NULL AND idempotency_key IS NOT NULL)),
    CHECK (kind <> 'email' OR (mail_to IS NOT NULL AND mail_subject IS NOT NULL
                               AND mail_text IS NOT NULL AND mail_html IS NOT NULL)),
    CHECK (kind <> 'webhook' OR (url IS NOT NULL AND body IS NOT NULL))
);
CREATE INDEX ON lattice.outbox (next_attempt_at) WHERE status IN ('pending', 'running') AND NOT interactive;
REVOKE ALL ON lattice.outbox FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('lattice.webhook_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('lattice.stripe_events', '');
SELECT pg_catalog.pg_extension_config_dump('lattice.outbox', '');

-- Small helpers ---------------------------------------------------------------

-- Whether webhooks may reach loopback addresses (src/alert_webhook.c); the
-- shim applies it to each connection it opens for a job.
CREATE FUNCTION lattice.outbound_allow_loopback() RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT pg_catalog.current_setting('lattice.outbound_allow_loopback')::boolean $$;

-- A Stripe timestamp (unix seconds, or null) as timestamptz.
CREATE FUNCTION lattice.stripe_time(v jsonb) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN pg_catalog.jsonb_typeof(v) = 'number'
                THEN pg_catalog.to_timestamp((v #>> '{}')::double precision) END
$$;

-- Secrets (admin) -------------------------------------------------------------

-- Adds a webhook endpoint secret; the others stay active until retired, so a
-- rotation is: add the new one, let Stripe roll over, retire the old one.
CREATE FUNCTION lattice.webhook_secret_add(secret text, expires_at timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    IF secret IS NULL OR secret !~ '^whsec_[A-Za-z0-9+/=_-]{8,250}$' THEN
        RAISE EXCEPTION 'lattice.webhook_secret_add: not a Stripe webhook secret (whsec_...)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO lattice.webhook_secrets (secret, expires_at)
    VALUES (webhook_secret_add.secret, webhook_secret_add.expires_at)
    ON CONFLICT ON CONSTRAINT webhook_secrets_secret_key
        DO UPDATE SET expires_at = EXCLUDED.expires_at
    RETURNING id INTO new_id;
    PERFORM lattice.audit('billing.webhook_secret_added', new_id::text, NULL, NULL, NULL);
    RETURN new_id;
END
$$;

-- Retires secrets: one by id, or every one but the newest when id is NULL.
CREATE FUNCTION lattice.webhook_secret_retire(id bigint DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE lattice.webhook_secrets w SET expires_at = pg_catalog.now()
     WHERE (w.expires_at IS NULL OR w.expires_at > pg_catalog.now())
       AND CASE WHEN webhook_secret_retire.id IS NOT NULL THEN w.id = webhook_secret_retire.id
                ELSE w.id <> (SELECT max(x.id) FROM lattice.webhook_secrets x) END;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM lattice.audit('billing.webhook_secret_retired', webhook_secret_retire.id::text,
                          pg_catalog.jsonb_build_object('count', n), NULL, NULL);
    RETURN n;
END
$$;

-- Sets the Stripe price a plan is sold at (configuration, not code).
CREATE FUNCTION lattice.billing_set_price(plan_id text, stripe_price_id text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF stripe_price_id !~ '^price_[A-Za-z0-9_]{1,120}$' THEN
        RAISE EXCEPTION 'lattice.billing_set_price: not a Stripe price id (price_...)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE lattice.plans p SET stripe_price_id = billing_set_price.stripe_price_id
     WHERE p.id = billing_set_price.plan_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lattice.billing_set_price: no plan "%"', plan_id
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM lattice.audit('billing.price_set', plan_id,
                          pg_catalog.jsonb_build_object('stripe_price_id', stripe_price_id), NULL, NULL);
END
$$;

-- E-mail ----------------------------------------------------------------------

-- Queues one e-mail to an account, rendered from its template
-- (78_email_templates.sql).  Sent by the shim's worker.
CREATE FUNCTION lattice.outbox_email(account uuid, template text, data jsonb DEFAULT '{}',
                                     to_email text DEFAULT NULL, to_name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
    m record;
    new_id bigint;
BEGIN
    -- the caller may know the address (sign-up, before its row is readable here)
    IF to_email IS NOT NULL THEN
        SELECT to_email AS email, to_name AS name INTO u;
    ELSE
        SELECT x.email, x.name INTO u FROM lattice.users x WHERE x.id = account;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    m := lattice.billing_email_content(template, u.name,
                                       COALESCE(data, '{}') || pg_catalog.jsonb_build_object('origin', lattice.billing_public_origin()));
    INSERT INTO lattice.outbox (account_id, kind, purpose, mail_to, mail_subject, mail_text, mail_html, context)
    VALUES (account, 'email', 'email.' || template, u.email, m.subject, m.text_body, m.html_body,
            pg_catalog.jsonb_build_object('template', template))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- Welcome mail at sign-up: called by the C function that creates accounts,
-- with what it has just written (the row is the tenant's, not read here).
CREATE FUNCTION lattice.billing_welcome(account uuid, email text, name text, trial_ends timestamptz)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM lattice.outbox_email(account, 'welcome',
        pg_catalog.jsonb_build_object('trial_ends', lattice.email_date(trial_ends)),
        email, name);
END
$$;

-- Entitlement -------------------------------------------------------------------

-- What an account may do, from its subscription (or, before any checkout,
-- the sign-up trial of lattice.users.trial_ends_at):
--   trialing, active                  -> full service
--   past_due                          -> full for lattice.billing_past_due_grace_days
--                                        after it became past_due, with a warning
--   canceled, unpaid, paused, incomplete_expired, expired trial
--                                     -> read-only: ingest refused (402
--                                        subscription_required), data kept
-- Runs as the caller: row-level security limits it to the caller's tenant.
CREATE FUNCTION lattice.entitlement(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
    s record;
    grace interval := pg_catalog.make_interval(days => lattice.billing_setting('past_due_grace_days'));
    kept interval := pg_catalog.make_interval(days => lattice.billing_setting('retention_days'));
    state text;
    warning text;
    grace_ends timestamptz;
    lapsed_at timestamptz;
    now timestamptz := lattice.clock_now();
BEGIN
    SELECT x.trial_ends_at INTO u FROM lattice.users x WHERE x.id = entitlement.user_id;
    IF NOT FOUND THEN
        RETURN pg_catalog.jsonb_build_object('state', 'unknown', 'may_ingest', false, 'read_only', true,
                                             'status', 'none', 'code', 'subscription_required');
    END IF;
    SELECT x.* INTO s FROM lattice.subscriptions x WHERE x.user_id = entitlement.user_id;

    IF s IS NULL OR s.status IN ('incomplete') THEN
        IF u.trial_ends_at > now THEN
            state := 'trial';
        ELSE
            state := 'read_only';
            lapsed_at := u.trial_ends_at;
        END IF;
    ELSIF s.status IN ('trialing', 'active') THEN
        state := 'full';
    ELSIF s.status = 'past_due' THEN
        grace_ends := COALESCE(s.past_due_since, s.state_at, now) + grace;
        IF grace_ends > now THEN
            state := 'grace';
            warning := 'payment past due: update your payment method before '
                       || to_char(grace_ends AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                       || ' to keep ingesting';
        ELSE
            state := 'read_only';
            lapsed_at := grace_ends;
        END IF;
    ELSE
        state := 'read_only';
        lapsed_at := COALESCE(s.ended_at, s.canceled_at, s.state_at);
    END IF;

    RETURN pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'state', state,
        'may_ingest', state IN ('trial', 'full', 'grace'),
        'read_only', state = 'read_only',
        'status', COALESCE(s.status, CASE WHEN state = 'trial' THEN 'trial' ELSE 'none' END),
        'trial_ends_at', CASE WHEN s IS NULL OR s.status = 'incomplete' THEN u.trial_ends_at ELSE s.trial_end END,
        'grace_ends_at', grace_ends,
        'warning', warning,
        'code', CASE WHEN state = 'read_only' THEN 'subscription_required' END,
        'data_kept_until', lapsed_at + kept));
END
$$;

-- The warning header every API answer of this account carries, or {}.
CREATE FUNCTION lattice.entitlement_headers(user_id uuid) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN e ? 'warning'
                THEN pg_catalog.jsonb_build_object('Lattice-Billing-Warning', e ->> 'warning')
                ELSE '{}'::jsonb END
      FROM lattice.entitlement(entitlement_headers.user_id) AS e
$$;

-- For ingest: raises 402 subscription_required when the account may not
-- ingest, else returns the headers to add to the answer (the warning).
CREATE FUNCTION lattice.require_ingest_entitlement(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e jsonb := lattice.entitlement(require_ingest_entitlement.user_id);
BEGIN
    IF NOT (e ->> 'may_ingest')::boolean THEN
        PERFORM lattice.raise_http(402, 'subscription_required',
            'an active subscription is required to ingest; your data is kept read-only',
            pg_catalog.jsonb_build_object('status', e -> 'status', 'data_kept_until', e -> 'data_kept_until',
                                          'billing_url', lattice.billing_public_origin() || '/dashboard/billing'));
    END IF;
    RETURN CASE WHEN e ? 'warning'
                THEN pg_catalog.jsonb_build_object('Lattice-Billing-Warning', e ->> 'warning')
                ELSE '{}'::jsonb END;
END
$$;

-- Billing read API ----------------------------------------------------------------

-- GET /billing: plan, status, trial, period, cancellation, payment state.
CREATE FUNCTION lattice.billing_summary(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    u record;
    p record;
    s record;
    e jsonb := lattice.entitlement(billing_summary.user_id);
    trial_end timestamptz;
BEGIN
    SELECT x.plan_id, x.trial_ends_at INTO u FROM lattice.users x WHERE x.id = billing_summary.user_id;
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such account');
    END IF;
    SELECT x.* INTO p FROM lattice.plans x WHERE x.id = u.plan_id;
    SELECT x.* INTO s FROM lattice.subscriptions x WHERE x.user_id = billing_summary.user_id;
    trial_end := CASE WHEN s IS NULL OR s.status = 'incomplete' THEN u.trial_ends_at ELSE s.trial_end END;
    RETURN pg_catalog.jsonb_build_object(
        'plan', pg_catalog.jsonb_build_object('id', p.id, 'name', p.name, 'price_cents', p.price_cents,
                                              'currency', p.currency, 'interval', p.billing_interval,
                                              'trial_days', p.trial_days,
                                              'rate_limit_per_hour', p.rate_limit_per_hour,
                                              'max_services', p.max_services),
        'status', e -> 'status',
        'entitlement', e,
        'trial_end', trial_end,
        'trial_days_left', CASE WHEN trial_end > pg_catalog.now()
                                THEN ceil(extract(epoch FROM trial_end - pg_catalog.now()) / 86400)::int
                                WHEN trial_end IS NOT NULL THEN 0 END,
        'current_period_end', s.current_period_end,
        'cancel_at_period_end', COALESCE(s.cancel_at_period_end, false),
        'payment_state', s.payment_state,
        'has_customer', EXISTS (SELECT FROM lattice.billing_customers c WHERE c.user_id = billing_summary.user_id));
END
$$;

-- GET /billing/invoices: as the webhooks recorded them, newest first.
CREATE FUNCTION lattice.billing_invoices(user_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT pg_catalog.jsonb_build_object('invoices', COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', i.stripe_invoice_id, 'number', i.number, 'amount_due', i.amount_due,
               'amount_paid', i.amount_paid, 'currency', i.currency, 'status', i.status,
               'hosted_invoice_url', i.hosted_invoice_url, 'invoice_pdf', i.invoice_pdf,
               'period_start', i.period_start, 'period_end', i.period_end, 'date', i.created)
               ORDER BY i.created DESC, i.stripe_invoice_id), '[]'::jsonb))
      FROM lattice.invoices i
     WHERE i.user_id = billing_invoices.user_id);
END
$$;

-- Applying webhook events --------------------------------------------------------

-- The account a Stripe object belongs to: our customer mapping first (we
-- created the customer), then the metadata.user_id / client_reference_id we
-- set on it.  Links an unknown customer to the account it names.
CREATE FUNCTION lattice.stripe_resolve_account(customer text, candidates text[])
RETURNS uuid
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id uuid;
    c text;
BEGIN
    IF customer IS NOT NULL THEN
        SELECT bc.user_id INTO found_id FROM lattice.billing_customers bc WHERE bc.stripe_customer_id = customer;
        IF found_id IS NOT NULL THEN
            RETURN found_id;
        END IF;
    END IF;
    FOREACH c IN ARRAY candidates LOOP
        CONTINUE WHEN c IS NULL OR c !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
        SELECT u.id INTO found_id FROM lattice.users u WHERE u.id = c::uuid;
        IF found_id IS NOT NULL THEN
            IF customer IS NOT NULL THEN
                INSERT INTO lattice.billing_customers (user_id, stripe_customer_id)
                VALUES (found_id, customer) ON CONFLICT DO NOTHING;
            END IF;
            RETURN found_id;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Applies a subscription object with the state time `at`; returns true when
-- it was newer than what we hold (and so was applied).
CREATE FUNCTION lattice.stripe_apply_subscription(account uuid, sub jsonb, at timestamptz, event_id text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old record;
    applied boolean;
    new_status text := sub ->> 'status';
BEGIN
    IF new_status IS NULL OR sub ->> 'id' IS NULL THEN
        RETURN false;
    END IF;
    SELECT s.status, s.cancel_at_period_end, s.stripe_subscription_id INTO old
      FROM lattice.subscriptions s WHERE s.user_id = account FOR UPDATE;

    INSERT INTO lattice.subscriptions AS s
        (user_id, stripe_customer_id, stripe_subscription_id, status, current_period_start, current_period_end,
         cancel_at_period_end, trial_start, trial_end, canceled_at, ended_at, stripe_price_id,
         past_due_since, state_at, updated_at)
    VALUES (account, sub ->> 'customer', sub ->> 'id', new_status,
            lattice.stripe_time(sub -> 'current_period_start'), lattice.stripe_time(sub -> 'current_period_end'),
            COALESCE((sub ->> 'cancel_at_period_end')::boolean, false),
            lattice.stripe_time(sub -> 'trial_start'), lattice.stripe_time(sub -> 'trial_end'),
            lattice.stripe_time(sub -> 'canceled_at'), lattice.stripe_time(sub -> 'ended_at'),
            sub #>> '{items,data,0,price,id}',
            CASE WHEN new_status = 'past_due' THEN at END, at, pg_catalog.now())
    ON CONFLICT (user_id) DO UPDATE SET
        stripe_customer_id = EXCLUDED.stripe_customer_id,
        stripe_subscription_id = EXCLUDED.stripe_subscription_id,
        status = EXCLUDED.status,
        current_period_start = EXCLUDED.current_period_start,
        current_period_end = EXCLUDED.current_period_end,
        cancel_at_period_end = EXCLUDED.cancel_at_period_end,
        trial_start = EXCLUDED.trial_start,
        trial_end = EXCLUDED.trial_end,
        canceled_at = EXCLUDED.canceled_at,
        ended_at = EXCLUDED.ended_at,
        stripe_price_id = EXCLUDED.stripe_price_id,
        past_due_since = CASE WHEN EXCLUDED.status <> 'past_due' THEN NULL
                              WHEN s.status = 'past_due' AND s.stripe_subscription_id = EXCLUDED.stripe_subscription_id
                              THEN COALESCE(s.past_due_since, EXCLUDED.past_due_since)
                              ELSE EXCLUDED.past_due_since END,
        -- a new subscription (re-subscribe) starts with an unknown payment state
        payment_state = CASE WHEN s.stripe_subscription_id = EXCLUDED.stripe_subscription_id
                             THEN s.payment_state END,
        state_at = EXCLUDED.state_at,
        updated_at = EXCLUDED.updated_at
    WHERE s.state_at IS NULL OR s.state_at <= EXCLUDED.state_at;
    GET DIAGNOSTICS applied = ROW_COUNT;

    IF applied AND (old IS NULL OR old.status IS DISTINCT FROM new_status
                    OR old.cancel_at_period_end IS DISTINCT FROM COALESCE((sub ->> 'cancel_at_period_end')::boolean, false)
                    OR old.stripe_subscription_id IS DISTINCT FROM sub ->> 'id') THEN
        PERFORM lattice.audit('billing.subscription_changed', sub ->> 'id',
            pg_catalog.jsonb_build_object('from', old.status, 'to', new_status, 'event', event_id,
                                          'cancel_at_period_end', sub -> 'cancel_at_period_end'),
            NULL, account);
    END IF;
    RETURN applied;
END
$$;

-- Applies an invoice object; on invoice.paid / invoice.payment_failed also
-- the payment state.  Returns true when newer than what we hold.
CREATE FUNCTION lattice.stripe_apply_invoice(account uuid, inv jsonb, at timestamptz, event_type text, event_id text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    applied boolean;
    pay_state text := CASE event_type WHEN 'invoice.paid' THEN 'paid'
                                      WHEN 'invoice.payment_succeeded' THEN 'paid'
                                      WHEN 'invoice.payment_failed' THEN 'failed' END;
BEGIN
    IF inv ->> 'id' IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO lattice.invoices AS i
        (user_id, stripe_invoice_id, stripe_subscription_id, number, amount_due, amount_paid, currency, status,
         hosted_invoice_url, invoice_pdf, period_start, period_end, created, state_at)
    VALUES (account, inv ->> 'id', inv ->> 'subscription', inv ->> 'number',
            (inv ->> 'amount_due')::bigint, (inv ->> 'amount_paid')::bigint, inv ->> 'currency', inv ->> 'status',
            inv ->> 'hosted_invoice_url', inv ->> 'invoice_pdf',
            lattice.stripe_time(inv -> 'period_start'), lattice.stripe_time(inv -> 'period_end'),
            lattice.stripe_time(inv -> 'created'), at)
    ON CONFLICT (user_id, stripe_invoice_id) DO UPDATE SET
        number = EXCLUDED.number, amount_due = EXCLUDED.amount_due, amount_paid = EXCLUDED.amount_paid,
        currency = EXCLUDED.currency, status = EXCLUDED.status,
        hosted_invoice_url = EXCLUDED.hosted_invoice_url, invoice_pdf = EXCLUDED.invoice_pdf,
        period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
        created = EXCLUDED.created, state_at = EXCLUDED.state_at
    WHERE i.user_id = EXCLUDED.user_id AND i.state_at <= EXCLUDED.state_at;
    GET DIAGNOSTICS applied = ROW_COUNT;

    IF pay_state IS NOT NULL THEN
        UPDATE lattice.subscriptions s
           SET payment_state = pay_state, payment_state_at = at, updated_at = pg_catalog.now()
         WHERE s.user_id = account
           AND (s.payment_state_at IS NULL OR s.payment_state_at <= at)
           AND (inv ->> 'subscription' IS NULL OR s.stripe_subscription_id IS NULL
                OR s.stripe_subscription_id = inv ->> 'subscription');
        PERFORM lattice.audit('billing.' || CASE pay_state WHEN 'paid' THEN 'payment_succeeded'
                                                           ELSE 'payment_failed' END,
                              inv ->> 'id',
                              pg_catalog.jsonb_build_object('amount_due', inv -> 'amount_due',
                                                            'currency', inv -> 'currency', 'event', event_id),
                              NULL, account);
    END IF;
    RETURN applied;
END
$$;

-- Applies one verified event; returns its outcome: applied, stale (a newer
-- state is already held), ignored (a type we do not act on) or unmatched (no
-- account known yet; re-applied when the customer is linked).
CREATE FUNCTION lattice.stripe_apply_event(event_id text)
RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ev record;
    obj jsonb;
    cust text;
    account uuid;
    applied boolean := false;
    result text;
    trial_end timestamptz;
BEGIN
    SELECT e.* INTO ev FROM lattice.stripe_events e WHERE e.id = event_id FOR UPDATE;
    IF ev.outcome NOT IN ('received', 'unmatched') THEN
        RETURN ev.outcome;      -- applied once, whichever path reached it first
    END IF;
    obj := ev.payload #> '{data,object}';
    IF ev.type NOT IN ('checkout.session.completed', 'customer.subscription.created',
                       'customer.subscription.updated', 'customer.subscription.deleted',
                       'customer.subscription.trial_will_end', 'customer.subscription.paused',
                       'customer.subscription.resumed', 'invoice.paid', 'invoice.payment_succeeded',
                       'invoice.payment_failed', 'invoice.finalized', 'invoice.updated', 'invoice.voided',
                       'invoice.marked_uncollectible', 'invoice.upcoming')
       OR pg_catalog.jsonb_typeof(obj) IS DISTINCT FROM 'object' THEN
        UPDATE lattice.stripe_events SET outcome = 'ignored', applied_at = pg_catalog.now() WHERE id = event_id;
        RETURN 'ignored';
    END IF;

    cust := CASE pg_catalog.jsonb_typeof(obj -> 'customer')
                    WHEN 'string' THEN obj ->> 'customer'
                    WHEN 'object' THEN obj #>> '{customer,id}' END;
    account := lattice.stripe_resolve_account(cust,
                   ARRAY[obj #>> '{metadata,user_id}', obj ->> 'client_reference_id',
                         obj #>> '{subscription_details,metadata,user_id}']);
    IF account IS NULL THEN
        UPDATE lattice.stripe_events SET outcome = 'unmatched', customer = cust
         WHERE id = event_id;
        RETURN 'unmatched';
    END IF;

    IF ev.type = 'checkout.session.completed' THEN
        -- the customer is now linked (resolve_account did it); the
        -- subscription's state comes with its own events
        applied := true;
        PERFORM lattice.audit('billing.checkout_completed', obj ->> 'id',
                              pg_catalog.jsonb_build_object('subscription', obj -> 'subscription', 'event', event_id),
                              NULL, account);
    ELSIF ev.type LIKE 'customer.subscription.%' THEN
        applied := lattice.stripe_apply_subscription(account, obj, ev.created, event_id);
        IF applied AND ev.type = 'customer.subscription.deleted' THEN
            PERFORM lattice.outbox_email(account, 'subscription_canceled', pg_catalog.jsonb_build_object(
                'kept_until', lattice.email_date(ev.created + pg_catalog.make_interval(days => lattice.billing_setting('retention_days')))));
        ELSIF applied AND ev.type = 'customer.subscription.trial_will_end' THEN
            trial_end := lattice.stripe_time(obj -> 'trial_end');
            PERFORM lattice.outbox_email(account, 'trial_ending', pg_catalog.jsonb_build_object(
                'trial_end', lattice.email_date(trial_end),
                'price', (SELECT lattice.billing_money(p.price_cents, p.currency)
                            FROM lattice.users u JOIN lattice.plans p ON p.id = u.plan_id WHERE u.id = account)));
        END IF;
    ELSIF ev.type = 'invoice.upcoming' THEN
        -- a preview (no id, nothing to store): the reminder before a renewal charge
        applied := true;
        PERFORM lattice.outbox_email(account, 'renewal_reminder', pg_catalog.jsonb_build_object(
            'renews_on', lattice.email_date(COALESCE(lattice.stripe_time(obj -> 'next_payment_attempt'),
                                                 lattice.stripe_time(obj -> 'period_end'))),
            'amount', lattice.billing_money((obj ->> 'amount_due')::bigint, obj ->> 'currency')));
    ELSE
        applied := lattice.stripe_apply_invoice(account, obj, ev.created, ev.type, event_id);
        IF ev.type IN ('invoice.paid', 'invoice.payment_failed') THEN
            -- a receipt or a failure notice belongs to its event, even when a
            -- newer invoice state arrived first
            applied := true;
            PERFORM lattice.outbox_email(account,
                CASE ev.type WHEN 'invoice.paid' THEN 'receipt' ELSE 'payment_failed' END,
                pg_catalog.jsonb_build_object('number', obj ->> 'number',
                    'amount', lattice.billing_money(COALESCE((obj ->> 'amount_paid')::bigint, 0)
                                                    + CASE WHEN ev.type = 'invoice.payment_failed'
                                                           THEN (obj ->> 'amount_due')::bigint ELSE 0 END,
                                                    obj ->> 'currency'),
                    'hosted_invoice_url', obj ->> 'hosted_invoice_url'));
        END IF;
    END IF;

    result := CASE WHEN applied THEN 'applied' ELSE 'stale' END;
    UPDATE lattice.stripe_events
       SET outcome = result, account_id = account,
           customer = cust, applied_at = pg_catalog.now()
     WHERE id = event_id;

    -- events that came before we knew this customer
    IF cust IS NOT NULL THEN
        PERFORM lattice.stripe_reapply_unmatched(cust);
    END IF;
    RETURN result;
END
$$;

-- Re-applies, oldest first, the events of a customer that arrived before the
-- customer was linked to an account.
CREATE FUNCTION lattice.stripe_reapply_unmatched(customer text)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    e record;
    n integer := 0;
BEGIN
    IF NOT EXISTS (SELECT FROM lattice.billing_customers bc WHERE bc.stripe_customer_id = customer) THEN
        RETURN 0;
    END IF;
    FOR e IN SELECT se.id FROM lattice.stripe_events se
              WHERE se.customer = stripe_reapply_unmatched.customer AND se.outcome = 'unmatched'
              ORDER BY se.created, se.received_at
    LOOP
        PERFORM lattice.stripe_apply_event(e.id);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;


-- Interactive Stripe calls (the API, as the tenant) -----------------------------------

-- Queues an interactive Stripe call for the current tenant; the shim performs
-- it right after the request's COMMIT (route flag `outbound`).
CREATE FUNCTION lattice.outbox_enqueue_stripe(purpose text, method text, path text, params jsonb,
                                              idempotency_key text, context jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    account uuid := lattice.current_user_id();
    new_id bigint;
BEGIN
    IF account IS NULL THEN
        RAISE EXCEPTION 'lattice.outbox_enqueue_stripe: no authenticated tenant'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO lattice.outbox (account_id, kind, purpose, interactive, method, path, params,
                                idempotency_key, context, max_attempts)
    VALUES (account, 'stripe', purpose, true, method, path, params, idempotency_key, context, 1)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- The answer of an outbound route: 202 with the job for the shim to run.
-- The shim removes the header and answers with what the job chain returns.
CREATE FUNCTION lattice.outbound_answer(job bigint) RETURNS lattice.http_response
LANGUAGE sql IMMUTABLE
AS $$
    SELECT lattice.http_json(202, pg_catalog.jsonb_build_object('pending', true, 'job', job),
                             pg_catalog.jsonb_build_object('Lattice-Outbox-Job', job::text))
$$;

-- The Stripe params that create a Checkout Session for an account.
CREATE FUNCTION lattice.billing_checkout_params(account uuid, customer text) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    trial_used boolean;
    origin text := lattice.billing_public_origin();
    params jsonb;
BEGIN
    SELECT pl.*, u.trial_ends_at INTO p FROM lattice.users u JOIN lattice.plans pl ON pl.id = u.plan_id
     WHERE u.id = account;
    trial_used := EXISTS (SELECT FROM lattice.subscriptions s WHERE s.user_id = account
                           AND (s.trial_start IS NOT NULL OR s.status NOT IN ('incomplete', 'incomplete_expired')));
    params := pg_catalog.jsonb_build_array(
        pg_catalog.jsonb_build_array('mode', 'subscription'),
        pg_catalog.jsonb_build_array('customer', customer),
        pg_catalog.jsonb_build_array('client_reference_id', account::text),
        pg_catalog.jsonb_build_array('line_items[0][price]', p.stripe_price_id),
        pg_catalog.jsonb_build_array('line_items[0][quantity]', '1'),
        pg_catalog.jsonb_build_array('success_url', origin || '/dashboard/billing?checkout=success&session_id={CHECKOUT_SESSION_ID}'),
        pg_catalog.jsonb_build_array('cancel_url', origin || '/dashboard/billing?checkout=canceled'),
        pg_catalog.jsonb_build_array('metadata[user_id]', account::text),
        pg_catalog.jsonb_build_array('subscription_data[metadata][user_id]', account::text));
    -- The trial is the sign-up's: what is left of it carries over (Stripe
    -- wants a trial end at least 48 hours ahead), never a second one.
    IF NOT trial_used AND p.trial_ends_at > lattice.clock_now() + interval '48 hours' THEN
        params := params || pg_catalog.jsonb_build_array(
            pg_catalog.jsonb_build_array('subscription_data[trial_end]',
                                         floor(extract(epoch FROM p.trial_ends_at))::bigint::text));
    END IF;
    RETURN params;
END
$$;


-- The shim's side of the outbox --------------------------------------------------
-- Schema lattice_worker holds only what the shim needs to drain the outbox;
-- lattice_api gets USAGE on it and EXECUTE on these functions, nothing else.

CREATE SCHEMA lattice_worker;
REVOKE ALL ON SCHEMA lattice_worker FROM PUBLIC;
GRANT USAGE ON SCHEMA lattice_worker TO lattice_api;

CREATE TYPE lattice_worker.job AS (
    id              bigint,
    kind            text,
    method          text,
    path            text,
    params          jsonb,
    idempotency_key text,
    mail_to         text,
    mail_subject    text,
    mail_text       text,
    mail_html       text,
    url             text,
    body            text,
    headers         jsonb,
    allow_loopback  boolean
);

-- The request headers of a claimed job: for a webhook, its signature over
-- the body at the time of this attempt (src/alert_webhook.c) and the
-- delivery id, so a receiver can verify it and drop a repeat.
CREATE FUNCTION lattice_worker.job_headers(o lattice.outbox) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF o.kind <> 'webhook' THEN
        RETURN NULL;
    END IF;
    RETURN lattice.alert_webhook_headers(o.id, o.account_id, (o.context ->> 'channel')::uuid, o.body);
END
$$;

-- Claims one interactive job by id (the request that created it, after its
-- COMMIT); no row when it is not pending any more.
CREATE FUNCTION lattice_worker.outbox_claim(job_id bigint)
RETURNS SETOF lattice_worker.job
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE lattice.outbox o
       SET status = 'running', attempts = o.attempts + 1,
           locked_until = pg_catalog.now() + interval '2 minutes'
     WHERE o.id = job_id AND o.status = 'pending'
    RETURNING o.id, o.kind, o.method, o.path, o.params, o.idempotency_key,
              o.mail_to, o.mail_subject, o.mail_text, o.mail_html,
              o.url, o.body, lattice_worker.job_headers(o), lattice.outbound_allow_loopback()
$$;

-- Claims up to max_jobs due background jobs of the given kinds (and jobs
-- whose lease ran out: a shim that died mid-call), skipping rows another
-- worker holds.  The shim drains webhooks apart from e-mail and Stripe, so a
-- slow receiver never holds up a mail.
CREATE FUNCTION lattice_worker.outbox_claim_due(max_jobs integer, kinds text[])
RETURNS SETOF lattice_worker.job
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE lattice.outbox o
       SET status = 'running', attempts = o.attempts + 1,
           locked_until = pg_catalog.now() + interval '2 minutes'
     WHERE o.id IN (SELECT x.id FROM lattice.outbox x
                     WHERE NOT x.interactive AND x.kind = ANY (kinds)
                       AND ((x.status = 'pending' AND x.next_attempt_at <= pg_catalog.now())
                            OR (x.status = 'running' AND x.locked_until < pg_catalog.now()))
                     ORDER BY x.next_attempt_at
                     LIMIT LEAST(GREATEST(max_jobs, 1), 100)
                     FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.kind, o.method, o.path, o.params, o.idempotency_key,
              o.mail_to, o.mail_subject, o.mail_text, o.mail_html,
              o.url, o.body, lattice_worker.job_headers(o), lattice.outbound_allow_loopback()
$$;

-- Records the result of a job the shim ran: response_status is the HTTP
-- status (Stripe) or the SMTP reply code (e-mail), error the transport error
-- (NULL when the call went through).  Returns the answer for the waiting
-- client of an interactive job, and the next job of a chain to run.
CREATE FUNCTION lattice_worker.outbox_complete(job_id bigint, response_status integer,
                                               response_body text, error text)
RETURNS TABLE (status integer, headers jsonb, body text, next_job bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j record;
    resp jsonb;
    ok boolean;
    answer lattice.http_response;
    chained bigint;
    backoff interval;
BEGIN
    SELECT o.* INTO j FROM lattice.outbox o WHERE o.id = job_id AND o.status = 'running' FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lattice_worker.outbox_complete: job % is not running', job_id
            USING ERRCODE = 'no_data_found';
    END IF;
    BEGIN
        resp := outbox_complete.response_body::jsonb;
    EXCEPTION WHEN others THEN
        resp := NULL;
    END;
    IF j.kind IN ('email', 'webhook') THEN
        ok := outbox_complete.error IS NULL AND outbox_complete.response_status BETWEEN 200 AND 299;
    ELSE
        ok := outbox_complete.error IS NULL AND outbox_complete.response_status BETWEEN 200 AND 299 AND pg_catalog.jsonb_typeof(resp) = 'object';
    END IF;

    IF NOT ok THEN
        IF NOT j.interactive AND j.attempts < j.max_attempts THEN
            -- 30 s, 1 min, 2 min, ... capped at one hour; at least once, never lost
            backoff := LEAST(interval '30 seconds' * (2 ^ LEAST(j.attempts - 1, 10)), interval '1 hour');
            UPDATE lattice.outbox o SET status = 'pending', locked_until = NULL,
                   next_attempt_at = pg_catalog.now() + backoff,
                   last_error = COALESCE(outbox_complete.error, 'status ' || outbox_complete.response_status), response_status = outbox_complete.response_status
             WHERE o.id = job_id;
        ELSE
            UPDATE lattice.outbox o SET status = 'failed', locked_until = NULL, done_at = pg_catalog.now(),
                   last_error = COALESCE(outbox_complete.error, 'status ' || outbox_complete.response_status),
                   response_status = outbox_complete.response_status, response = resp
             WHERE o.id = job_id;
            PERFORM lattice.audit(CASE WHEN j.purpose LIKE 'alert.%' THEN 'alert.delivery_failed'
                                       ELSE 'billing.outbound_failed' END, j.purpose,
                pg_catalog.jsonb_build_object('job', job_id, 'status', outbox_complete.response_status, 'error', outbox_complete.error,
                                              'stripe_error', resp #> '{error,type}'),
                -- a deleted account's jobs (its cancellation, its last mail) are the operator's
                NULL, (SELECT u.id FROM lattice.users u WHERE u.id = j.account_id));
        END IF;
        IF j.interactive AND j.purpose = 'alert.test' THEN
            answer := lattice.http_error(502, 'delivery_failed', 'the test message could not be delivered',
                                         pg_catalog.jsonb_build_object('status', outbox_complete.response_status,
                                                                       'error', outbox_complete.error));
        ELSIF j.interactive THEN
            IF outbox_complete.error IS NOT NULL OR outbox_complete.response_status >= 500
               OR outbox_complete.response_status IS NULL THEN
                answer := lattice.http_error(503, 'payment_provider_unavailable',
                                             'the payment provider could not be reached; try again shortly',
                                             NULL, '{"Retry-After": "5"}');
            ELSE
                answer := lattice.http_error(502, 'payment_provider_error',
                                             'the payment provider refused the request',
                                             pg_catalog.jsonb_build_object('status', outbox_complete.response_status,
                                                                           'type', resp #> '{error,type}',
                                                                           'code', resp #> '{error,code}'));
            END IF;
        END IF;
        RETURN QUERY SELECT answer.status, answer.headers, answer.body, NULL::bigint;
        RETURN;
    END IF;

    UPDATE lattice.outbox o SET status = 'done', locked_until = NULL, done_at = pg_catalog.now(),
           response_status = outbox_complete.response_status, response = resp, last_error = NULL
     WHERE o.id = job_id;

    CASE j.purpose
    WHEN 'checkout.customer' THEN
        IF resp ->> 'id' IS NULL THEN
            answer := lattice.http_error(502, 'payment_provider_error', 'the customer has no id');
        ELSE
            INSERT INTO lattice.billing_customers (user_id, stripe_customer_id)
            VALUES (j.account_id, resp ->> 'id') ON CONFLICT DO NOTHING;
            PERFORM lattice.audit('billing.customer_created', resp ->> 'id', NULL, NULL, j.account_id);
            PERFORM lattice.stripe_reapply_unmatched(resp ->> 'id');
            INSERT INTO lattice.outbox (account_id, kind, purpose, interactive, method, path, params,
                                        idempotency_key, max_attempts)
            SELECT j.account_id, 'stripe', 'checkout.session', true, 'POST', '/v1/checkout/sessions',
                   lattice.billing_checkout_params(j.account_id, bc.stripe_customer_id),
                   'lattice-checkout-' || pg_catalog.gen_random_uuid()::text, 1
              FROM lattice.billing_customers bc WHERE bc.user_id = j.account_id
            RETURNING id INTO chained;
            IF chained IS NULL THEN
                -- the customer id belongs to another account: never cross tenants
                answer := lattice.http_error(502, 'payment_provider_error', 'the customer is linked to another account');
            ELSE
                answer := lattice.outbound_answer(chained);
            END IF;
        END IF;
    WHEN 'checkout.session', 'portal.session' THEN
        IF resp ->> 'url' IS NULL THEN
            answer := lattice.http_error(502, 'payment_provider_error', 'the session has no url');
        ELSE
            answer := lattice.http_json(200, pg_catalog.jsonb_build_object('url', resp ->> 'url', 'id', resp ->> 'id'));
        END IF;
    WHEN 'subscription.cancel', 'subscription.resume' THEN
        -- Stripe's answer is the subscription; its webhook follows and wins by `created`
        UPDATE lattice.subscriptions s
           SET cancel_at_period_end = COALESCE((resp ->> 'cancel_at_period_end')::boolean, s.cancel_at_period_end),
               updated_at = pg_catalog.now()
         WHERE s.user_id = j.account_id AND s.stripe_subscription_id = resp ->> 'id';
        PERFORM lattice.audit('billing.' || replace(j.purpose, 'subscription.', 'subscription_'), resp ->> 'id',
                              pg_catalog.jsonb_build_object('cancel_at_period_end', resp -> 'cancel_at_period_end'),
                              NULL, j.account_id);
        answer := lattice.http_json(200, pg_catalog.jsonb_build_object(
            'cancel_at_period_end', COALESCE((resp ->> 'cancel_at_period_end')::boolean, false),
            'current_period_end', lattice.stripe_time(resp -> 'current_period_end'),
            'status', resp ->> 'status'));
    WHEN 'alert.test' THEN
        answer := lattice.http_json(200, pg_catalog.jsonb_build_object('delivered', true,
                                                                       'status', outbox_complete.response_status));
    ELSE
        answer := NULL;
    END CASE;
    RETURN QUERY SELECT answer.status, answer.headers, answer.body, chained;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA lattice_worker FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lattice_worker TO lattice_api;

-- What lattice_app (the API functions) may call.
GRANT EXECUTE ON FUNCTION
    lattice.entitlement(uuid), lattice.entitlement_headers(uuid), lattice.require_ingest_entitlement(uuid),
    lattice.billing_summary(uuid), lattice.billing_invoices(uuid),
    lattice.billing_checkout_params(uuid, text), lattice.outbound_answer(bigint),
    lattice.outbox_enqueue_stripe(text, text, text, jsonb, text, jsonb),
    lattice.billing_webhook_rate(text), lattice.billing_setting(text), lattice.billing_public_origin()
    TO lattice_app;
GRANT EXECUTE ON FUNCTION lattice.webhook_secret_add(text, timestamptz),
                          lattice.webhook_secret_retire(bigint),
                          lattice.billing_set_price(text, text)
    TO lattice_admin;
