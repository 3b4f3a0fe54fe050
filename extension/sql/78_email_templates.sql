-- E-mail templates: the subject, plain text and HTML of every message
-- Lattice sends, and how the messages write names, dates and amounts.
-- Billing (80_billing.sql), the account lifecycle (86_account.sql) and
-- alerts (88_alerts.sql) queue their messages with lattice.outbox_email
-- (80_billing.sql), which renders them here; the shim's worker sends what
-- the outbox holds.  A password-reset request renders its message even when
-- it sends none (no such account, or too many requests for the address)
-- and throws it away, so that its answer costs the same either way
-- (src/account_token.c).

-- Text for HTML: the five characters with a meaning there, escaped.
CREATE FUNCTION lattice.html_escape(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT replace(replace(replace(replace(replace(s, '&', '&amp;'), '<', '&lt;'), '>', '&gt;'),
                           '"', '&quot;'), '''', '&#39;')
$$;

-- A date as the e-mails write it: "March 9, 2027" (UTC).
CREATE FUNCTION lattice.email_date(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'FMMonth FMDD, YYYY')
$$;

-- An amount as the e-mails write it: "25.00 USD" (cents of currency).
CREATE FUNCTION lattice.billing_money(cents bigint, currency text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_char(COALESCE(cents, 0) / 100.0, 'FM999999990.00') || ' ' || upper(COALESCE(currency, 'usd'))
$$;

-- The subject, plain text and HTML of one e-mail, by template; data holds
-- the template's values and `origin`, the dashboard's public origin.  Every
-- message ends with a footer saying why this address receives it; none has
-- an unsubscribe link.
CREATE FUNCTION lattice.billing_email_content(template text, name text, data jsonb,
                                              OUT subject text, OUT text_body text, OUT html_body text)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lines text[];
    footer text := 'You receive this message because you have a Lattice account; it is about '
                   'your account and billing, so it is sent regardless of preferences.';
    origin text := COALESCE(data ->> 'origin', '');
BEGIN
    CASE template
    WHEN 'welcome' THEN
        subject := 'Welcome to Lattice';
        lines := ARRAY['Your Lattice account is ready.',
                       'Your free trial runs until ' || COALESCE(data ->> 'trial_ends', 'the end of the trial') || '.',
                       'Create an API key in the dashboard and point your plugins at Lattice: ' || origin || '/dashboard'];
    WHEN 'trial_ending' THEN
        subject := 'Your Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon');
        lines := ARRAY['Your Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon') || '.',
                       'Your subscription then continues at ' || COALESCE(data ->> 'price', 'the plan price')
                       || ' a year. Manage it at ' || origin || '/dashboard/billing'];
    WHEN 'payment_failed' THEN
        subject := 'Your Lattice payment failed';
        lines := ARRAY['We could not collect ' || COALESCE(data ->> 'amount', 'your payment')
                       || ' for invoice ' || COALESCE(data ->> 'number', '') || '.',
                       'Ingest keeps working for a grace period. Update your card at ' || origin || '/dashboard/billing'];
    WHEN 'subscription_canceled' THEN
        subject := 'Your Lattice subscription has been canceled';
        lines := ARRAY['Your Lattice subscription has ended. Your data is kept read-only until '
                       || COALESCE(data ->> 'kept_until', 'the retention period ends') || '.',
                       'You can subscribe again at any time: ' || origin || '/dashboard/billing'];
    WHEN 'receipt' THEN
        subject := 'Your Lattice receipt ' || COALESCE(data ->> 'number', '');
        lines := ARRAY['Thank you. We received ' || COALESCE(data ->> 'amount', 'your payment')
                       || ' for invoice ' || COALESCE(data ->> 'number', '') || '.',
                       'Invoice: ' || COALESCE(data ->> 'hosted_invoice_url', origin || '/dashboard/billing')];
    WHEN 'trial_ending_soon' THEN
        subject := 'Your Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon');
        lines := ARRAY['Your free Lattice trial ends on ' || COALESCE(data ->> 'trial_end', 'soon') || '.',
                       'Subscribe before then to keep your services reporting: ' || origin || '/dashboard/billing'];
    WHEN 'trial_ended' THEN
        subject := 'Your Lattice trial has ended';
        lines := ARRAY['Your free Lattice trial has ended, so Lattice no longer accepts data from your services.',
                       'Your data is kept read-only until ' || COALESCE(data ->> 'kept_until', 'the retention period ends')
                       || '. Subscribe to continue: ' || origin || '/dashboard/billing'];
    WHEN 'renewal_reminder' THEN
        subject := 'Your Lattice subscription renews on ' || COALESCE(data ->> 'renews_on', 'soon');
        lines := ARRAY['Your Lattice subscription renews on ' || COALESCE(data ->> 'renews_on', 'soon')
                       || ' for ' || COALESCE(data ->> 'amount', 'the plan price') || '.',
                       'Nothing to do if you want to continue. To change or cancel it: ' || origin || '/dashboard/billing'];
    WHEN 'retention_warning' THEN
        subject := 'Your Lattice data will be removed on ' || COALESCE(data ->> 'kept_until', 'soon');
        lines := ARRAY['Your Lattice account has no active subscription. Its service data will be removed on '
                       || COALESCE(data ->> 'kept_until', 'soon') || '.',
                       'Subscribe before then to keep it, or download a copy: ' || origin || '/dashboard/account'];
    WHEN 'data_purged' THEN
        subject := 'Your Lattice service data has been removed';
        lines := ARRAY['As announced, the service data of your Lattice account has been removed.',
                       'Your account and invoices remain; you can subscribe again at any time: ' || origin || '/dashboard/billing'];
    WHEN 'verify_email' THEN
        subject := 'Confirm your e-mail address for Lattice';
        lines := ARRAY['Please confirm that this is your address by opening this link (it works for 48 hours):',
                       COALESCE(data ->> 'link', ''),
                       'If you did not sign up for Lattice, you can ignore this message.'];
    WHEN 'email_change_verify' THEN
        subject := 'Confirm your new e-mail address for Lattice';
        lines := ARRAY['Open this link to make ' || COALESCE(data ->> 'new_email', 'this address')
                       || ' the address of your Lattice account (it works for 24 hours):',
                       COALESCE(data ->> 'link', ''),
                       'If you did not ask for this, ignore this message: nothing changes.'];
    WHEN 'email_change_requested' THEN
        subject := 'A change of your Lattice e-mail address was requested';
        lines := ARRAY['Someone signed in to your Lattice account asked to change its address to '
                       || COALESCE(data ->> 'new_email', 'another address') || '.',
                       'This address stays in use until the new one is confirmed. If it was not you, change your password: '
                       || origin || '/forgot-password'];
    WHEN 'email_changed' THEN
        subject := 'The e-mail address of your Lattice account was changed';
        lines := ARRAY['The address of your Lattice account is now ' || COALESCE(data ->> 'new_email', 'a new one') || '.',
                       'If it was not you, contact us by replying to this message.'];
    WHEN 'password_reset' THEN
        subject := 'Reset your Lattice password';
        lines := ARRAY['Open this link to choose a new password (it works for one hour, once):',
                       COALESCE(data ->> 'link', ''),
                       'If you did not ask for this, ignore this message: your password stays as it is.'];
    WHEN 'password_changed' THEN
        subject := 'Your Lattice password was changed';
        lines := ARRAY['The password of your Lattice account was just changed, and your other sessions were signed out.',
                       'If it was not you, reset it now: ' || origin || '/forgot-password'];
    WHEN 'mfa_enabled' THEN
        subject := 'Two-factor authentication is on for your Lattice account';
        lines := ARRAY['Signing in to your Lattice account now needs a code from your authenticator app.',
                       'Keep your recovery codes somewhere safe. If it was not you, reset your password: '
                       || origin || '/forgot-password'];
    WHEN 'mfa_disabled' THEN
        subject := 'Two-factor authentication is off for your Lattice account';
        lines := ARRAY['Signing in to your Lattice account no longer needs a code.',
                       'If it was not you, reset your password now: ' || origin || '/forgot-password'];
    WHEN 'account_deleted' THEN
        subject := 'Your Lattice account has been deleted';
        lines := ARRAY['Your Lattice account and all of its data have been deleted, and any subscription cancelled.',
                       'Only the invoices are kept, for ' || COALESCE(data ->> 'kept_years', '10')
                       || ' years, as accounting and tax law require.'];
    WHEN 'alert' THEN
        subject := COALESCE(data ->> 'subject', 'Lattice alert');
        lines := ARRAY[COALESCE(data ->> 'summary', ''),
                       COALESCE(data ->> 'detail', ''),
                       'See it in the dashboard: ' || origin || '/dashboard/alerts'];
        footer := 'You receive this message because this address is an alert channel of a Lattice account; '
                  'its owner can remove it under Alerts in the dashboard.';
    WHEN 'alert_recipient_verify' THEN
        subject := 'Confirm that Lattice may send alerts to this address';
        lines := ARRAY['The Lattice account of ' || COALESCE(data ->> 'owner', 'a Lattice customer')
                       || ' wants to send its alerts to this address. Open this link to agree (it works for 7 days):',
                       COALESCE(data ->> 'link', ''),
                       'If you do not expect this, ignore this message: nothing will be sent.'];
        footer := 'You receive this message once because someone entered this address as an alert channel.';
    ELSE
        RAISE EXCEPTION 'lattice.billing_email_content: unknown template "%"', template
            USING ERRCODE = 'invalid_parameter_value';
    END CASE;
    text_body := 'Hello' || COALESCE(' ' || name, '') || E',\r\n\r\n'
                 || array_to_string(lines, E'\r\n\r\n') || E'\r\n\r\n-- \r\nLattice\r\n' || footer || E'\r\n';
    html_body := '<!doctype html><html><body><p>Hello' || COALESCE(' ' || lattice.html_escape(name), '') || ',</p>'
                 || (SELECT string_agg('<p>' || lattice.html_escape(l) || '</p>', '') FROM unnest(lines) AS l)
                 || '<hr><p style="color:#666;font-size:12px">Lattice. ' || lattice.html_escape(footer)
                 || '</p></body></html>';
END
$$;

GRANT EXECUTE ON FUNCTION lattice.email_date(timestamptz), lattice.billing_money(bigint, text) TO lattice_app;
