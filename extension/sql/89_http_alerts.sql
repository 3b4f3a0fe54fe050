-- The alerts API (docs/alerts.md): rules, channels and their delivery log,
-- incidents.  Reads take a session or a key with the read scope; changes
-- need a session.

-- The delivery log of one of the caller's channels: its outbox jobs (the
-- owner's table), newest first.
CREATE FUNCTION lattice.alert_deliveries(channel uuid, lim integer) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'id', o.id, 'event', o.context ->> 'event', 'incident_id', o.context -> 'incident',
               'status', o.status, 'attempts', o.attempts, 'response_status', o.response_status,
               'last_error', o.last_error, 'created_at', o.created_at, 'done_at', o.done_at,
               'next_attempt_at', CASE WHEN o.status = 'pending' THEN o.next_attempt_at END) ORDER BY o.id DESC), '[]')
      FROM (SELECT * FROM lattice.outbox x
             WHERE x.account_id = lattice.current_user_id() AND x.purpose LIKE 'alert.%'
               AND x.context ->> 'channel' = channel::text
             ORDER BY x.id DESC LIMIT lim) o
$$;
CREATE INDEX ON lattice.outbox (account_id, id) WHERE purpose LIKE 'alert.%';

-- A channel as the API shows it: a webhook's URL only by host and its last
-- four characters (Slack's carry their secret in the path).
CREATE FUNCTION lattice.alert_channel_json(c lattice.alert_channels) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
        'id', c.id, 'kind', c.kind, 'name', c.name,
        'target', CASE WHEN c.kind = 'email' THEN c.target
                       ELSE pg_catalog.regexp_replace(c.target, '^([a-zA-Z]+://[^/?#]+).*$', '\1') || '/…'
                            || pg_catalog.right(c.target, 4) END,
        'enabled', c.enabled, 'verified', c.verified_at IS NOT NULL, 'created_at', c.created_at,
        'last_delivery', lattice.alert_deliveries(c.id, 1) -> 0)
$$;

CREATE FUNCTION lattice.alert_channel_get(account uuid, req jsonb) RETURNS lattice.alert_channels
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c lattice.alert_channels;
BEGIN
    SELECT * INTO c FROM lattice.alert_channels x
     WHERE x.user_id = account AND x.id = lattice.ingest_param_uuid(req, 'id');
    IF NOT FOUND THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such channel');
    END IF;
    RETURN c;
END
$$;

-- The body of a channel request: a JSON object with only the members named
-- in allowed (400 invalid_channel, at the first other one).  The shape of
-- lattice.billing_body, with the channels' own error code.
CREATE FUNCTION lattice.alert_channel_body(body text, allowed text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    extra text;
BEGIN
    SELECT left(k, 64) INTO extra FROM jsonb_object_keys(b) k WHERE k <> ALL (allowed) LIMIT 1;
    IF extra IS NOT NULL THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', format('unknown field "%s"', extra),
                                   jsonb_build_object('path', extra));
    END IF;
    RETURN b;
END
$$;

-- Refuses a webhook URL with the reason lattice.outbound_url_check gives.
CREATE FUNCTION lattice.alert_url_require(url text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    why text := lattice.outbound_url_check(url);
BEGIN
    IF why IS NULL THEN
        RETURN;
    END IF;
    PERFORM lattice.raise_http(400, 'invalid_url',
        CASE split_part(why, ':', 1)
        WHEN 'scheme' THEN 'the URL must start with https://'
        WHEN 'credentials' THEN 'the URL must not carry a user name or password'
        WHEN 'too_long' THEN 'the URL is longer than 2048 characters'
        WHEN 'unresolvable' THEN 'the URL''s host name does not resolve'
        WHEN 'blocked' THEN format('the URL''s host resolves to %s, a %s address; webhooks may only reach public addresses',
                                   substr(why, length(split_part(why, ':', 1)) + length(split_part(why, ':', 2)) + 3),
                                   split_part(why, ':', 2))
        ELSE 'the URL is not a valid https URL' END,
        jsonb_build_object('path', 'url', 'reason', split_part(why, ':', 1)));
END
$$;

-- GET /api/v1/alerts/rules
CREATE FUNCTION lattice_http.alert_rules_get(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
BEGIN
    RETURN lattice.http_json(200, lattice.alert_config_of(account)
                                  || jsonb_build_object('defaults', lattice.alert_defaults()));
END
$$;

-- PUT /api/v1/alerts/rules {rules?, cooldown_minutes?, recover_after_minutes?}
CREATE FUNCTION lattice_http.alert_rules_put(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    stored jsonb;
    cfg jsonb;
BEGIN
    PERFORM lattice.alert_validate(b);
    -- what the account changed so far, with this change over it
    stored := lattice.alert_merge(COALESCE((SELECT s.config FROM lattice.alert_settings s WHERE s.user_id = account), '{}'), b);
    cfg := lattice.alert_config(stored);
    IF (cfg #>> '{rules,error_rate,clear_percent}')::numeric > (cfg #>> '{rules,error_rate,threshold_percent}')::numeric THEN
        PERFORM lattice.raise_http(400, 'invalid_rules', 'clear_percent must not be above threshold_percent',
                                   jsonb_build_object('path', 'rules.error_rate.clear_percent'));
    END IF;
    INSERT INTO lattice.alert_settings (user_id, config, updated_at) VALUES (account, stored, now())
    ON CONFLICT (user_id) DO UPDATE SET config = EXCLUDED.config, updated_at = EXCLUDED.updated_at;
    PERFORM lattice.audit('alerts.rules_changed', NULL, b, req, account);
    RETURN lattice.http_json(200, cfg || jsonb_build_object('defaults', lattice.alert_defaults()));
END
$$;

-- GET /api/v1/alerts/channels
CREATE FUNCTION lattice_http.alert_channels_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    c lattice.alert_channels;
    items jsonb := '[]';
BEGIN
    -- row by row: on Citus a whole row stays on the coordinator
    FOR c IN SELECT * FROM lattice.alert_channels x WHERE x.user_id = account ORDER BY x.created_at, x.id LOOP
        items := items || jsonb_build_array(lattice.alert_channel_json(c));
    END LOOP;
    RETURN lattice.http_json(200, jsonb_build_object('channels', items));
END
$$;

-- POST /api/v1/alerts/channels {kind, name, address | url}
CREATE FUNCTION lattice_http.alert_channel_create(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.alert_channel_body(body, '{kind,name,address,url}');
    kind text := b ->> 'kind';
    name text := btrim(COALESCE(b ->> 'name', ''));
    dest text;
    secret text;
    sealed bytea;
    own record;
    c lattice.alert_channels;
BEGIN
    IF kind IS NULL OR jsonb_typeof(b -> 'kind') <> 'string' OR kind NOT IN ('email', 'webhook', 'slack') THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'kind must be "email", "webhook" or "slack"',
                                   jsonb_build_object('path', 'kind'));
    END IF;
    IF jsonb_typeof(b -> 'name') IS DISTINCT FROM 'string' OR length(name) NOT BETWEEN 1 AND 100 THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'name must be 1 to 100 characters',
                                   jsonb_build_object('path', 'name'));
    END IF;
    IF (SELECT count(*) FROM lattice.alert_channels x WHERE x.user_id = account) >= 20 THEN
        PERFORM lattice.raise_http(409, 'too_many_channels', 'an account may have 20 alert channels');
    END IF;
    IF kind = 'email' THEN
        dest := lower(btrim(COALESCE(b ->> 'address', '')));
        IF jsonb_typeof(b -> 'address') IS DISTINCT FROM 'string' OR b ? 'url'
           OR dest !~ '^[^@\s<>"]{1,64}@[a-z0-9.-]{1,253}\.[a-z]{2,}$' OR length(dest) > 254 THEN
            PERFORM lattice.raise_http(400, 'invalid_channel', 'address must be an e-mail address',
                                       jsonb_build_object('path', 'address'));
        END IF;
        SELECT u.email, u.email_verified_at, u.name INTO own FROM lattice.users u WHERE u.id = account;
        IF dest <> lower(own.email) OR own.email_verified_at IS NULL THEN
            IF (SELECT count(*) FROM lattice.alert_channels x
                 WHERE x.user_id = account AND x.kind = 'email' AND x.verified_at IS NULL) >= 5 THEN
                PERFORM lattice.raise_http(409, 'too_many_unverified', 'five addresses already wait for confirmation');
            END IF;
        END IF;
        INSERT INTO lattice.alert_channels (user_id, kind, name, target, verified_at)
        VALUES (account, 'email', name, dest,
                CASE WHEN dest = lower(own.email) AND own.email_verified_at IS NOT NULL THEN now() END)
        RETURNING * INTO c;
        IF c.verified_at IS NULL AND NOT EXISTS (SELECT FROM lattice.alert_channels x
                                                  WHERE x.user_id = account AND x.kind = 'email'
                                                    AND x.target = dest AND x.id <> c.id) THEN
            PERFORM lattice.outbox_email(account, 'alert_recipient_verify', jsonb_build_object(
                'owner', own.email,
                'link', lattice.billing_public_origin() || '/alerts/verify?token='
                        || lattice.account_token_issue(account, 'alert_recipient', dest)), dest);
        END IF;
    ELSE
        dest := b ->> 'url';
        IF jsonb_typeof(b -> 'url') IS DISTINCT FROM 'string' OR b ? 'address' THEN
            PERFORM lattice.raise_http(400, 'invalid_channel', 'url must be a string', jsonb_build_object('path', 'url'));
        END IF;
        PERFORM lattice.alert_url_require(dest);
        IF kind = 'webhook' THEN
            SELECT w.secret, w.sealed INTO secret, sealed FROM lattice.webhook_secret_new() w;
        END IF;
        INSERT INTO lattice.alert_channels (user_id, kind, name, target, secret_sealed, verified_at)
        VALUES (account, kind, name, dest, sealed, now())
        RETURNING * INTO c;
    END IF;
    PERFORM lattice.audit('alerts.channel_created', c.id::text, jsonb_build_object('kind', kind), req, account);
    RETURN lattice.http_json(201, jsonb_strip_nulls(jsonb_build_object(
        'channel', lattice.alert_channel_json(c), 'secret', secret)));
END
$$;

-- PATCH /api/v1/alerts/channels/{id} {name?, enabled?}
CREATE FUNCTION lattice_http.alert_channel_update(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.alert_channel_body(body, '{name,enabled}');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    IF b ? 'name' AND (jsonb_typeof(b -> 'name') <> 'string' OR length(btrim(b ->> 'name')) NOT BETWEEN 1 AND 100) THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'name must be 1 to 100 characters', jsonb_build_object('path', 'name'));
    END IF;
    IF b ? 'enabled' AND jsonb_typeof(b -> 'enabled') <> 'boolean' THEN
        PERFORM lattice.raise_http(400, 'invalid_channel', 'enabled must be true or false', jsonb_build_object('path', 'enabled'));
    END IF;
    UPDATE lattice.alert_channels x
       SET name = COALESCE(btrim(b ->> 'name'), x.name), enabled = COALESCE((b ->> 'enabled')::boolean, x.enabled)
     WHERE x.user_id = account AND x.id = c.id
    RETURNING * INTO c;
    RETURN lattice.http_json(200, jsonb_build_object('channel', lattice.alert_channel_json(c)));
END
$$;

-- DELETE /api/v1/alerts/channels/{id}: its pending deliveries go with it.
CREATE FUNCTION lattice.alert_channel_forget(channel uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM lattice.outbox o
     WHERE o.account_id = lattice.current_user_id() AND o.purpose LIKE 'alert.%'
       AND o.context ->> 'channel' = channel::text AND o.status = 'pending';
$$;

CREATE FUNCTION lattice_http.alert_channel_delete(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    DELETE FROM lattice.alert_channels x WHERE x.user_id = account AND x.id = c.id;
    PERFORM lattice.alert_channel_forget(c.id);
    PERFORM lattice.audit('alerts.channel_deleted', c.id::text, jsonb_build_object('kind', c.kind), req, account);
    RETURN lattice.http_json(204, NULL);
END
$$;

-- POST /api/v1/alerts/channels/{id}/test: performed right after COMMIT.
CREATE FUNCTION lattice_http.alert_channel_test(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    IF c.verified_at IS NULL THEN
        PERFORM lattice.raise_http(409, 'unverified', 'the address has not confirmed yet; the e-mail sent to it has the link');
    END IF;
    PERFORM lattice.account_throttle('alert_test', account, 10, 60);
    RETURN lattice.outbound_answer(lattice.alert_enqueue(c, 'test', NULL, true));
END
$$;

-- POST /api/v1/alerts/channels/{id}/secret: a new signing secret, shown once.
CREATE FUNCTION lattice_http.alert_channel_secret(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
    secret record;
BEGIN
    IF c.kind <> 'webhook' THEN
        PERFORM lattice.raise_http(409, 'no_secret', 'only webhook channels are signed');
    END IF;
    secret := lattice.webhook_secret_new();
    UPDATE lattice.alert_channels x SET secret_sealed = secret.sealed WHERE x.user_id = account AND x.id = c.id;
    PERFORM lattice.audit('alerts.channel_secret_rotated', c.id::text, NULL, req, account);
    RETURN lattice.http_json(200, jsonb_build_object('secret', secret.secret));
END
$$;

-- GET /api/v1/alerts/channels/{id}/deliveries?limit=
CREATE FUNCTION lattice_http.alert_channel_deliveries(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    c lattice.alert_channels := lattice.alert_channel_get(account, req);
BEGIN
    RETURN lattice.http_json(200, jsonb_build_object('deliveries',
        lattice.alert_deliveries(c.id, lattice.ingest_query_int(req, 'limit', 50, 1, 100))));
END
$$;

-- POST /api/v1/alerts/recipients/verify {token}: the link in the e-mail.
CREATE FUNCTION lattice_http.alert_recipient_verify(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    b jsonb := lattice.auth_body(body);
    claim record;
    n integer;
BEGIN
    IF jsonb_typeof(b -> 'token') IS DISTINCT FROM 'string' THEN
        PERFORM lattice.raise_http(400, 'invalid_token', 'token is missing', jsonb_build_object('path', 'token'));
    END IF;
    SELECT * INTO claim FROM lattice.account_token_claim(b ->> 'token', ARRAY['alert_recipient'], req);
    UPDATE lattice.alert_channels x SET verified_at = now()
     WHERE x.user_id = claim.user_id AND x.kind = 'email' AND x.target = claim.email AND x.verified_at IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM lattice.audit('alerts.recipient_verified', claim.email, jsonb_build_object('channels', n), req, claim.user_id);
    RETURN lattice.http_json(200, jsonb_build_object('address', claim.email, 'channels', n));
END
$$;

-- The incident with the caller's mute of its rule and subject.
CREATE FUNCTION lattice.alert_incident_view(i lattice.alert_incidents) RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
BEGIN
    RETURN (
    SELECT lattice.alert_incident_json(i, (SELECT m.until FROM lattice.alert_mutes m
                                            WHERE m.user_id = i.user_id AND m.rule = i.rule
                                              AND m.subject_key = i.subject_key AND m.until > pg_catalog.now())));
END
$$;

-- GET /api/v1/alerts/incidents?status=open|all&service=&limit=&before=
CREATE FUNCTION lattice_http.alert_incidents_list(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'read');
    which text := COALESCE(req #>> '{query,status}', 'all');
    service uuid;
    lim integer := lattice.ingest_query_int(req, 'limit', 50, 1, 100);
    before bigint;
    items jsonb;
    i lattice.alert_incidents;
BEGIN
    IF which NOT IN ('open', 'all') THEN
        PERFORM lattice.raise_http(400, 'invalid_query', 'status must be open or all', jsonb_build_object('path', 'query.status'));
    END IF;
    IF req #>> '{query,service}' IS NOT NULL THEN
        IF req #>> '{query,service}' !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_query', 'service must be a service id', jsonb_build_object('path', 'query.service'));
        END IF;
        service := (req #>> '{query,service}')::uuid;
    END IF;
    IF req #>> '{query,before}' IS NOT NULL THEN
        IF req #>> '{query,before}' !~ '^[0-9]{1,18}$' THEN
            PERFORM lattice.raise_http(400, 'invalid_cursor', 'before must be an incident id', jsonb_build_object('path', 'query.before'));
        END IF;
        before := (req #>> '{query,before}')::bigint;
    END IF;
    items := '[]';
    FOR i IN SELECT * FROM lattice.alert_incidents x
              WHERE x.user_id = account AND (which = 'all' OR x.status = 'open')
                AND (service IS NULL OR x.service_id = service OR (x.subject ->> 'source_id')::uuid = service)
                AND (before IS NULL OR x.id < before)
              ORDER BY x.id DESC LIMIT lim LOOP
        items := items || jsonb_build_array(lattice.alert_incident_view(i));
    END LOOP;
    RETURN lattice.http_json(200, jsonb_build_object('incidents', items,
        'next_before', CASE WHEN jsonb_array_length(items) = lim THEN items -> (lim - 1) -> 'id' END));
END
$$;

CREATE FUNCTION lattice.alert_incident_get(account uuid, req jsonb) RETURNS lattice.alert_incidents
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    i lattice.alert_incidents;
    v text := req #>> '{params,id}';
BEGIN
    IF v IS NOT NULL AND v ~ '^[0-9]{1,18}$' THEN
        SELECT * INTO i FROM lattice.alert_incidents x WHERE x.user_id = account AND x.id = v::bigint;
    END IF;
    IF i.id IS NULL THEN
        PERFORM lattice.raise_http(404, 'not_found', 'no such incident');
    END IF;
    RETURN i;
END
$$;

-- POST /api/v1/alerts/incidents/{id}/acknowledge
CREATE FUNCTION lattice_http.alert_incident_acknowledge(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    i lattice.alert_incidents := lattice.alert_incident_get(account, req);
    at timestamptz := now();
BEGIN
    UPDATE lattice.alert_incidents x SET acknowledged_at = COALESCE(x.acknowledged_at, at)
     WHERE x.user_id = account AND x.id = i.id
    RETURNING * INTO i;
    RETURN lattice.http_json(200, jsonb_build_object('incident', lattice.alert_incident_view(i)));
END
$$;

-- POST /api/v1/alerts/incidents/{id}/mute {minutes}
CREATE FUNCTION lattice_http.alert_incident_mute(req jsonb, body text)
RETURNS lattice.http_response
LANGUAGE plpgsql
AS $$
DECLARE
    account uuid := lattice.authenticate(req, 'session');
    b jsonb := lattice.auth_body(body);
    i lattice.alert_incidents := lattice.alert_incident_get(account, req);
    at timestamptz := now();
BEGIN
    IF jsonb_typeof(b -> 'minutes') IS DISTINCT FROM 'number' OR (b ->> 'minutes')::numeric <> trunc((b ->> 'minutes')::numeric)
       OR (b ->> 'minutes')::numeric NOT BETWEEN 1 AND 10080 THEN
        PERFORM lattice.raise_http(400, 'invalid_minutes', 'minutes must be an integer from 1 to 10080 (a week)',
                                   jsonb_build_object('path', 'minutes'));
    END IF;
    INSERT INTO lattice.alert_mutes (user_id, rule, subject_key, until)
    VALUES (account, i.rule, i.subject_key, now() + make_interval(mins => (b ->> 'minutes')::integer))
    ON CONFLICT (user_id, rule, subject_key) DO UPDATE SET until = EXCLUDED.until;
    UPDATE lattice.alert_incidents x SET acknowledged_at = COALESCE(x.acknowledged_at, at)
     WHERE x.user_id = account AND x.id = i.id
    RETURNING * INTO i;
    RETURN lattice.http_json(200, jsonb_build_object('incident', lattice.alert_incident_view(i)));
END
$$;

GRANT EXECUTE ON FUNCTION
    lattice.alert_defaults(), lattice.alert_fields(), lattice.alert_merge(jsonb, jsonb), lattice.alert_config(jsonb),
    lattice.alert_config_of(uuid), lattice.alert_validate(jsonb), lattice.alert_validate_value(jsonb, jsonb, text),
    lattice.alert_channel_json(lattice.alert_channels), lattice.alert_channel_get(uuid, jsonb),
    lattice.alert_channel_body(text, text[]),
    lattice.alert_url_require(text), lattice.outbound_url_check(text), lattice.webhook_secret_new(),
    lattice.alert_deliveries(uuid, integer), lattice.alert_channel_forget(uuid),
    lattice.alert_enqueue(lattice.alert_channels, text, jsonb, boolean),
    lattice.alert_incident_json(lattice.alert_incidents, timestamptz), lattice.alert_incident_view(lattice.alert_incidents),
    lattice.alert_incident_get(uuid, jsonb)
TO lattice_app;
