-- Alerts (docs/alerts.md, extension/sql/88_alerts.sql and 89_http_alerts.sql,
-- src/alert_webhook.c, src/outbound_address_core.c): the rules and their
-- validation, channels and the outbound URL check, the evaluation tick with
-- its hysteresis, cool-down and mutes, each rule's condition, and tenancy.
--
-- The tick is called with an explicit time (lattice.alert_tick(at)); the
-- data it reads (services, buckets, events) is written around that time.
-- Deliveries are outbox rows here; tests/http/alerts.test.mjs sends them.
BEGIN;
SELECT plan(119);

\ir helpers.psql

CREATE TEMP TABLE kv (k text PRIMARY KEY, v jsonb);
CREATE FUNCTION pg_temp.v(key text) RETURNS jsonb LANGUAGE sql AS $$ SELECT v FROM kv WHERE k = key $$;

-- The session of an account's login, as the browser sends it back
CREATE FUNCTION pg_temp.login(addr text, email text) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE r jsonb;
BEGIN
    r := pg_temp.call('auth_login', pg_temp.req(addr, 'POST'), jsonb_build_object('email', email, 'password', 'alerts password 1'));
    RETURN jsonb_build_object('session', substring(r #>> '{headers,Set-Cookie,0}' FROM '^lattice_session=([^;]+)'),
                              'csrf_cookie', substring(r #>> '{headers,Set-Cookie,1}' FROM '^lattice_csrf=([^;]+)'),
                              'csrf_header', substring(r #>> '{headers,Set-Cookie,1}' FROM '^lattice_csrf=([^;]+)'));
END $$;
-- A request with a path parameter
CREATE FUNCTION pg_temp.preq(addr text, method text, sess jsonb, id text, query jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE sql AS $$ SELECT pg_temp.req(addr, method, sess, query) || jsonb_build_object('params', jsonb_build_object('id', id)) $$;
-- Messages queued for an account's alerts: "event:kind" in order
CREATE FUNCTION pg_temp.sent(account uuid) RETURNS text[] LANGUAGE sql AS $$
    SELECT COALESCE(array_agg((context ->> 'event') || ':' || kind ORDER BY id), '{}') FROM lattice.outbox
     WHERE account_id = account AND purpose LIKE 'alert.%' AND purpose <> 'alert.test'
$$;
CREATE FUNCTION pg_temp.incidents(account uuid, r text) RETURNS text[] LANGUAGE sql AS $$
    SELECT COALESCE(array_agg(status || CASE WHEN notified THEN '' ELSE ' (silent)' END ORDER BY id), '{}')
      FROM lattice.alert_incidents WHERE user_id = account AND rule = r
$$;
CREATE FUNCTION pg_temp.tick(at timestamptz) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lattice.test_set_tenant(NULL);
    RETURN lattice.alert_tick(at);
END $$;
-- Traffic of one route of a service in the bucket holding `at`
CREATE FUNCTION pg_temp.traffic(account uuid, service uuid, path text, at timestamptz, n integer, errors integer,
                                ms double precision) RETURNS void LANGUAGE sql AS $$
    INSERT INTO lattice.route_stats (user_id, service_id, method, path, bucket, request_count, error_count,
                                     total_duration_ms, max_duration_ms, latency_hist)
    VALUES (account, service, 'GET', path, date_bin(lattice.ingest_bucket_width(), at, timestamptz '2000-01-01'),
            n, errors, n * ms, ms, lattice.hist_of(array_fill(ms, ARRAY[n])))
    ON CONFLICT (user_id, service_id, method, path, bucket) DO UPDATE SET
        request_count = route_stats.request_count + EXCLUDED.request_count,
        error_count = route_stats.error_count + EXCLUDED.error_count,
        latency_hist = lattice.hist_add(route_stats.latency_hist, EXCLUDED.latency_hist)
$$;

SELECT substr(md5(random()::text), 1, 10) AS r,
       '10.' || (random() * 250)::int || '.' || (random() * 250)::int || '.' AS net,
       date_trunc('minute', now()) + interval '2 hours' AS t0 \gset
SELECT lattice.rotate_secret('pepper') IS NOT NULL AS pepper \gset
SET LOCAL lattice.outbound_allow_loopback = off;
-- start from a tick that sets the cursors and sees nothing of this run yet
SELECT pg_temp.tick(:'t0'::timestamptz - interval '30 minutes') IS NOT NULL AS first_tick \gset

-- Two accounts, verified, each with a session
SELECT lattice.create_user('alerts-a-' || :'r' || '@example.com', 'alerts password 1', 'Ada') AS a,
       lattice.create_user('alerts-b-' || :'r' || '@example.com', 'alerts password 1', 'Bob') AS b \gset
UPDATE lattice.users SET email_verified_at = now() WHERE id IN (:'a', :'b');
INSERT INTO kv SELECT 'sa', pg_temp.login(:'net' || '1', 'alerts-a-' || :'r' || '@example.com');
INSERT INTO kv SELECT 'sb', pg_temp.login(:'net' || '2', 'alerts-b-' || :'r' || '@example.com');
SELECT lattice.create_api_key(:'a', 'reader', '{read}') AS key_read \gset

-- ======================================================================
-- Rules
-- ======================================================================
INSERT INTO kv SELECT 'get', pg_temp.call('alert_rules_get', pg_temp.req(:'net' || '1', 'GET', pg_temp.v('sa')));
SELECT is(pg_temp.v('get') #> '{body,rules}', lattice.alert_defaults() -> 'rules', 'a new account has the default rules');
SELECT is((pg_temp.v('get') #>> '{body,rules,service_down,enabled}')::boolean
          AND (pg_temp.v('get') #>> '{body,rules,error_rate,enabled}')::boolean
          AND (pg_temp.v('get') #>> '{body,rules,latency,enabled}')::boolean
          AND (pg_temp.v('get') #>> '{body,rules,topology,enabled}')::boolean
          AND (pg_temp.v('get') #>> '{body,rules,ingest_refused,enabled}')::boolean, true, 'every rule is on by default');
SELECT is(pg_temp.code(pg_temp.call('alert_rules_get', pg_temp.req(:'net' || '1', 'GET')
                                      || jsonb_build_object('api_key', :'key_read'))), '200:',
          'a key with the read scope reads the rules');
SELECT is(pg_temp.code(pg_temp.call('alert_rules_put', pg_temp.req(:'net' || '1', 'PUT')
                                      || jsonb_build_object('api_key', :'key_read'), '{"cooldown_minutes": 5}')), '403:insufficient_scope',
          'changing them needs a session');

SELECT is(pg_temp.code(pg_temp.call('alert_rules_put', pg_temp.req(:'net' || '1', 'PUT', pg_temp.v('sa')), x.body)),
          '400:invalid_rules', x.what)
  FROM (VALUES ('{"rules": {"nope": {}}}'::jsonb, 'an unknown rule is refused'),
               ('{"rules": {"error_rate": {"threshold": 5}}}', 'an unknown field is refused'),
               ('{"rules": {"error_rate": {"threshold_percent": "5"}}}', 'a string for a number is refused'),
               ('{"rules": {"error_rate": {"window_minutes": 4}}}', 'a window below 5 minutes is refused'),
               ('{"rules": {"error_rate": {"min_requests": 2.5}}}', 'a fraction for an integer is refused'),
               ('{"rules": {"latency": {"enabled": 1}}}', 'a number for a boolean is refused'),
               ('{"cooldown_minutes": 100000}', 'a cool-down beyond a day is refused'),
               ('{"rules": {"error_rate": {"clear_percent": 50}}}', 'clear_percent above threshold_percent is refused'),
               ('{"extra": 1}', 'an unknown top-level field is refused')) AS x(body, what);
SELECT is(pg_temp.code(pg_temp.call('alert_rules_put', pg_temp.req(:'net' || '1', 'PUT', pg_temp.v('sa')), '[1]')),
          '400:invalid_json', 'a body that is no object is refused');
SELECT is(pg_temp.err_code(format($q$SELECT lattice.alert_validate('{"rules": {"latency": {"p95_ms": -1}}}')$q$)),
          'PT400:invalid_rules', 'validation is the extension''s (a negative threshold)');
SELECT is((SELECT count(*) FROM lattice.alert_settings WHERE user_id = :'a'), 0::bigint, 'refused changes store nothing');

INSERT INTO kv SELECT 'put', pg_temp.call('alert_rules_put', pg_temp.req(:'net' || '1', 'PUT', pg_temp.v('sa')),
    '{"rules": {"error_rate": {"threshold_percent": 10}, "topology": {"new_cycle": false}}, "cooldown_minutes": 30}');
SELECT is(pg_temp.code(pg_temp.v('put')), '200:', 'a valid change is stored');
SELECT is(lattice.alert_config_of(:'a') #>> '{rules,error_rate,threshold_percent}', '10', 'the changed field has its new value');
SELECT is(lattice.alert_config_of(:'a') #>> '{rules,error_rate,min_requests}', '20', 'fields left out keep theirs');
SELECT is(pg_temp.call('alert_rules_put', pg_temp.req(:'net' || '1', 'PUT', pg_temp.v('sa')),
          '{"rules": {"error_rate": {"threshold_percent": 5}}}') #>> '{body,rules,topology,new_cycle}', 'false',
          'a later change keeps the earlier ones');
SELECT is(lattice.alert_config_of(:'b') #> '{rules}', lattice.alert_defaults() -> 'rules', 'another account keeps the defaults');
SELECT is((SELECT count(*) FROM lattice.audit_log WHERE user_id = :'a' AND action = 'alerts.rules_changed'), 2::bigint,
          'each change is audited');

-- ======================================================================
-- Channels and the outbound URL check
-- ======================================================================
SELECT is(lattice.outbound_url_check(u), why, u)
  FROM (VALUES ('https://127.0.0.1/hook', 'blocked:loopback:127.0.0.1'),
               ('https://localhost/hook', 'blocked:loopback:127.0.0.1'),
               ('https://[::1]:8443/hook', 'blocked:loopback:::1'),
               ('https://10.1.2.3/hook', 'blocked:private:10.1.2.3'),
               ('https://172.20.0.1/hook', 'blocked:private:172.20.0.1'),
               ('https://192.168.1.1/hook', 'blocked:private:192.168.1.1'),
               ('https://169.254.169.254/latest/meta-data/', 'blocked:metadata:169.254.169.254'),
               ('https://169.254.10.1/', 'blocked:link-local:169.254.10.1'),
               ('https://100.64.0.1/', 'blocked:shared:100.64.0.1'),
               ('https://0.0.0.0/', 'blocked:unspecified:0.0.0.0'),
               ('https://[fe80::1]/', 'blocked:link-local:fe80::1'),
               ('https://[fd00::1]/', 'blocked:private:fd00::1'),
               ('https://[::ffff:10.0.0.1]/', 'blocked:private:::ffff:10.0.0.1'),
               ('https://[64:ff9b::a9fe:a9fe]/', 'blocked:metadata:64:ff9b::a9fe:a9fe'),
               ('https://0177.0.0.1/', 'blocked:loopback:127.0.0.1'),
               ('https://2130706433/', 'blocked:loopback:127.0.0.1'),
               ('https://224.0.0.1/', 'blocked:multicast:224.0.0.1'),
               ('http://93.184.216.34/hook', 'scheme'),
               ('ftp://93.184.216.34/', 'scheme'),
               ('https://user:pw@93.184.216.34/', 'credentials'),
               ('https://93.184.216.34/a b', 'malformed'),
               ('https://93.184.216.34/#frag', 'malformed'),
               ('https://93.184.216.34:99999/', 'malformed'),
               ('https://no-such-host.invalid/', 'unresolvable')) AS x(u, why);
SELECT is(lattice.outbound_url_check('https://93.184.216.34:8443/hooks/lattice?x=1'), NULL, 'a public address over https is accepted');
SET LOCAL lattice.outbound_allow_loopback = on;
SELECT is(lattice.outbound_url_check('http://127.0.0.1:9/hook'), NULL, 'with the development setting, http to loopback is accepted');
SELECT is(lattice.outbound_url_check('http://10.0.0.1/hook'), 'blocked:private:10.0.0.1', 'the development setting opens loopback only');
SET LOCAL lattice.outbound_allow_loopback = off;

INSERT INTO kv SELECT 'bad_url', pg_temp.call('alert_channel_create', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('sa')),
    '{"kind": "webhook", "name": "meta", "url": "https://169.254.169.254/latest"}');
SELECT is(pg_temp.code(pg_temp.v('bad_url')), '400:invalid_url', 'the API refuses a webhook to the metadata address');
SELECT is(pg_temp.call('alert_channel_create', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('sa')),
          '{"kind": "sms", "name": "x", "url": "https://93.184.216.34/"}') #>> '{body,error,code}', 'invalid_channel',
          'an unknown kind is refused');
SELECT is(pg_temp.call('alert_channel_create', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('sa')),
          '{"kind": "email", "name": "x", "address": "not an address"}') #>> '{body,error,code}', 'invalid_channel',
          'a malformed address is refused');
SELECT is((SELECT count(*) FROM lattice.alert_channels WHERE user_id = :'a'), 0::bigint, 'refused channels store nothing');

SET LOCAL lattice.outbound_allow_loopback = on;
INSERT INTO kv SELECT 'hook', pg_temp.call('alert_channel_create', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('sa')),
    '{"kind": "webhook", "name": "ops hook", "url": "http://127.0.0.1:9/hooks/ops-secret-path"}');
SET LOCAL lattice.outbound_allow_loopback = off;
SELECT pg_temp.v('hook') #>> '{body,channel,id}' AS hook, pg_temp.v('hook') #>> '{body,secret}' AS secret \gset
SELECT is(pg_temp.code(pg_temp.v('hook')), '201:', 'a webhook channel is created');
SELECT ok(:'secret' ~ '^whsec_[A-Za-z0-9_-]{43}$', 'its signing secret is shown once');
SELECT is(pg_temp.v('hook') #>> '{body,channel,target}', 'http://127.0.0.1:9/…path', 'the URL is shown by host and its end only');
SELECT ok((SELECT position(convert_to(:'secret', 'UTF8') IN secret_sealed) = 0 FROM lattice.alert_channels WHERE id = :'hook'),
          'the secret is stored sealed');
INSERT INTO kv SELECT 'list', pg_temp.call('alert_channels_list', pg_temp.req(:'net' || '1', 'GET', pg_temp.v('sa')));
SELECT ok(NOT (pg_temp.v('list')::text LIKE '%' || :'secret' || '%') AND NOT (pg_temp.v('list')::text LIKE '%ops-secret-path%'),
          'the channel list shows neither the secret nor the URL''s path');

INSERT INTO kv SELECT 'own', pg_temp.call('alert_channel_create', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('sa')),
    jsonb_build_object('kind', 'email', 'name', 'me', 'address', 'Alerts-A-' || :'r' || '@example.com'));
SELECT is(pg_temp.v('own') #>> '{body,channel,verified}', 'true', 'the account''s own verified address is verified at once');
INSERT INTO kv SELECT 'other', pg_temp.call('alert_channel_create', pg_temp.req(:'net' || '1', 'POST', pg_temp.v('sa')),
    jsonb_build_object('kind', 'email', 'name', 'team', 'address', 'team-' || :'r' || '@example.com'));
SELECT pg_temp.v('other') #>> '{body,channel,id}' AS other \gset
SELECT is(pg_temp.v('other') #>> '{body,channel,verified}', 'false', 'another address waits for confirmation');
SELECT is((SELECT count(*) FROM lattice.outbox WHERE mail_to = 'team-' || :'r' || '@example.com'
                                                  AND purpose = 'email.alert_recipient_verify'), 1::bigint,
          'and is sent a confirmation link');
SELECT substring(mail_text FROM '\?token=([A-Za-z0-9_-]+)') AS team_token FROM lattice.outbox
 WHERE mail_to = 'team-' || :'r' || '@example.com' ORDER BY id DESC LIMIT 1 \gset
SELECT is(pg_temp.code(pg_temp.call('alert_channel_test', pg_temp.preq(:'net' || '1', 'POST', pg_temp.v('sa'), :'other'))),
          '409:unverified', 'an unconfirmed address cannot be sent even a test');
SELECT is(pg_temp.code(pg_temp.call('alert_recipient_verify', pg_temp.req(:'net' || '1', 'POST'), '{"token": "AAAA"}')),
          '400:invalid_token', 'a forged confirmation token is refused');
INSERT INTO kv SELECT 'confirm', pg_temp.call('alert_recipient_verify', pg_temp.req(:'net' || '1', 'POST'),
                                              jsonb_build_object('token', :'team_token'));
SELECT is(pg_temp.v('confirm') #>> '{body,address}', 'team-' || :'r' || '@example.com', 'the link confirms the address');
SELECT is((SELECT verified_at IS NOT NULL FROM lattice.alert_channels WHERE id = :'other'), true, 'and verifies the channel');
SELECT is(pg_temp.code(pg_temp.call('alert_recipient_verify', pg_temp.req(:'net' || '1', 'POST'),
                                    jsonb_build_object('token', :'team_token'))), '400:invalid_token', 'a link works once');

-- tenancy: B sees none of A's channels and cannot touch them
SELECT is(pg_temp.call('alert_channels_list', pg_temp.req(:'net' || '2', 'GET', pg_temp.v('sb'))) #> '{body,channels}', '[]',
          'another account lists none of them');
SELECT is(pg_temp.code(pg_temp.call('alert_channel_delete', pg_temp.preq(:'net' || '2', 'DELETE', pg_temp.v('sb'), :'hook'))),
          '404:not_found', 'another account cannot delete one');
SELECT is(pg_temp.code(pg_temp.call('alert_channel_secret', pg_temp.preq(:'net' || '2', 'POST', pg_temp.v('sb'), :'hook'))),
          '404:not_found', 'nor rotate its secret');
SELECT is(pg_temp.code(pg_temp.call('alert_channel_deliveries', pg_temp.preq(:'net' || '2', 'GET', pg_temp.v('sb'), :'hook'))),
          '404:not_found', 'nor read its deliveries');

-- the test button queues one interactive job, performed by the request
INSERT INTO kv SELECT 'test', pg_temp.call('alert_channel_test', pg_temp.preq(:'net' || '1', 'POST', pg_temp.v('sa'), :'hook'));
SELECT is(pg_temp.v('test') #>> '{status}', '202', 'send test answers with the job the shim runs after COMMIT');
SELECT ok((SELECT interactive AND purpose = 'alert.test' AND body::jsonb ->> 'type' = 'test'
             FROM lattice.outbox WHERE id = (pg_temp.v('test') #>> '{body,job}')::bigint), 'a test message of type "test"');

-- ======================================================================
-- The tick: a service goes down, comes back, flaps
-- ======================================================================
INSERT INTO lattice.services (user_id, name, environment, first_seen, last_seen)
VALUES (:'a', 'checkout', 'production', :'t0'::timestamptz - interval '2 days', :'t0'),
       (:'a', 'search', 'production', :'t0'::timestamptz - interval '2 days', :'t0'::timestamptz + interval '4 hours'),
       (:'b', 'billing', 'production', :'t0'::timestamptz - interval '2 days', :'t0'::timestamptz + interval '4 hours');
SELECT id AS checkout FROM lattice.services WHERE user_id = :'a' AND name = 'checkout' \gset
SELECT id AS search FROM lattice.services WHERE user_id = :'a' AND name = 'search' \gset
SELECT id AS billing FROM lattice.services WHERE user_id = :'b' AND name = 'billing' \gset

SELECT pg_temp.tick(:'t0'::timestamptz + interval '10 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{}', 'a quiet service is not down before the liveness window ends');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '16 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{open}', 'once it has not reported for 15 minutes, one incident opens');
SELECT is(pg_temp.sent(:'a'), '{opened:webhook,opened:email,opened:email}',
          'and "down" is queued once to each verified channel');
SELECT ok((SELECT body::jsonb #>> '{incident,summary}' = 'checkout (production) stopped reporting'
              AND body::jsonb ->> 'type' = 'incident.opened'
              FROM lattice.outbox WHERE account_id = :'a' AND kind = 'webhook' AND purpose = 'alert.opened'),
          'the webhook body names the incident');
SELECT ok((SELECT mail_subject = '[Lattice] checkout (production) stopped reporting' FROM lattice.outbox
            WHERE account_id = :'a' AND kind = 'email' AND purpose = 'alert.opened' LIMIT 1), 'the e-mail''s subject says it');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '17 minutes') IS NOT NULL AS x \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '25 minutes') IS NOT NULL AS x \gset
SELECT is(array_length(pg_temp.sent(:'a'), 1), 3, 'ticks while it stays down send nothing more');
SELECT is(pg_temp.incidents(:'b', 'service_down'), '{}', 'another account''s service is not affected');

-- it reports again, then stops again before the hysteresis ends: still one incident
UPDATE lattice.services SET last_seen = :'t0'::timestamptz + interval '26 minutes' WHERE id = :'checkout';
SELECT pg_temp.tick(:'t0'::timestamptz + interval '27 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT clear_since FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'service_down'),
          :'t0'::timestamptz + interval '27 minutes', 'a service back reporting starts the hysteresis');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '43 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{open}', 'down again within recover_after_minutes: the same incident');
SELECT is((SELECT clear_since FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'service_down'), NULL,
          'and the hysteresis starts over');
UPDATE lattice.services SET last_seen = :'t0'::timestamptz + interval '44 minutes' WHERE id = :'checkout';
SELECT pg_temp.tick(:'t0'::timestamptz + interval '45 minutes') IS NOT NULL AS x \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '48 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{open}', 'clear for 3 of 5 minutes: still open');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '50 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{resolved}', 'clear for 5 minutes: resolved');
SELECT is(pg_temp.sent(:'a'), '{opened:webhook,opened:email,opened:email,resolved:webhook,resolved:email,resolved:email}',
          'and "recovered" is queued once to each channel');

-- down again inside the cool-down (30 minutes after the last message, "recovered" at +50): recorded, silent
SELECT pg_temp.tick(:'t0'::timestamptz + interval '60 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{resolved,"open (silent)"}',
          'a new outage within the cool-down opens a silent incident');
UPDATE lattice.services SET last_seen = :'t0'::timestamptz + interval '61 minutes' WHERE id = :'checkout';
SELECT pg_temp.tick(:'t0'::timestamptz + interval '62 minutes') IS NOT NULL AS x \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '70 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'service_down'), '{resolved,"resolved (silent)"}', 'and resolves silently');
SELECT is(array_length(pg_temp.sent(:'a'), 1), 6, 'a flapping service sent one "down" and one "recovered" in all');

-- the API shows them, per service
INSERT INTO kv SELECT 'inc', pg_temp.call('alert_incidents_list', pg_temp.req(:'net' || '1', 'GET', pg_temp.v('sa'),
                                          jsonb_build_object('service', :'checkout')));
SELECT is(jsonb_array_length(pg_temp.v('inc') #> '{body,incidents}'), 2, 'the incidents of a service are listed');
SELECT is(pg_temp.v('inc') #>> '{body,incidents,0,subject,service}', 'checkout', 'with their subject');
SELECT is(jsonb_array_length(pg_temp.call('alert_incidents_list', pg_temp.req(:'net' || '2', 'GET', pg_temp.v('sb')))
                             #> '{body,incidents}'), 0, 'another account sees none of them');
SELECT is(pg_temp.code(pg_temp.call('alert_incidents_list', pg_temp.req(:'net' || '1', 'GET', pg_temp.v('sa'),
                                    '{"status": "closed"}'))), '400:invalid_query', 'an unknown status filter is refused');

-- ======================================================================
-- Error rate: volume, threshold, hysteresis
-- ======================================================================
SELECT pg_temp.traffic(:'a', :'search', '/q', :'t0'::timestamptz + interval '75 minutes', 2, 1, 20);
SELECT pg_temp.tick(:'t0'::timestamptz + interval '76 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'error_rate'), '{}', '1 failure in 2 requests is too little volume to alert');
SELECT pg_temp.traffic(:'a', :'search', '/q', :'t0'::timestamptz + interval '77 minutes', 100, 9, 20);
SELECT pg_temp.tick(:'t0'::timestamptz + interval '78 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'error_rate'), '{open}', '10 of 102 requests failing (threshold 5 %) opens an incident');
SELECT is((SELECT value ->> 'percent' FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'error_rate'), '9.80',
          'with the share it saw');
SELECT pg_temp.traffic(:'a', :'search', '/q', :'t0'::timestamptz + interval '85 minutes', 200, 6, 20);
SELECT pg_temp.tick(:'t0'::timestamptz + interval '86 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT clear_since IS NULL FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'error_rate'), true,
          'a share between the clear level and the threshold keeps it firing (5.3 % > 2.5 %)');
SELECT pg_temp.traffic(:'a', :'search', '/q', :'t0'::timestamptz + interval '95 minutes', 1000, 0, 20);
SELECT pg_temp.tick(:'t0'::timestamptz + interval '96 minutes') IS NOT NULL AS x \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '102 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'a', 'error_rate'), '{resolved}', 'below the clear level for 5 minutes: resolved');

-- ======================================================================
-- Latency, topology, ingest refused, mutes
-- ======================================================================
SELECT pg_temp.traffic(:'a', :'search', '/slow', :'t0'::timestamptz + interval '110 minutes', 30, 0, 2500);
SELECT pg_temp.tick(:'t0'::timestamptz + interval '111 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT subject ->> 'path' FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'latency'), '/slow',
          'a route with p95 above 1000 ms opens a latency incident');
-- a week-over-week jump below the absolute threshold
SELECT pg_temp.traffic(:'a', :'search', '/weekly', :'t0'::timestamptz + interval '110 minutes' - interval '7 days', 50, 0, 40);
SELECT pg_temp.traffic(:'a', :'search', '/weekly', :'t0'::timestamptz + interval '110 minutes', 50, 0, 400);
SELECT pg_temp.tick(:'t0'::timestamptz + interval '112 minutes') IS NOT NULL AS x \gset
SELECT ok((SELECT value ? 'week_p95_ms' FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'latency'
              AND subject ->> 'path' = '/weekly'), 'p95 ten times last week''s opens one too');

-- a new caller of an established service, and a new cycle (turned off for A: on for B)
INSERT INTO lattice.services (user_id, name, environment, first_seen, last_seen, is_external, status)
VALUES (:'b', 'partner-api', 'production', now(), now(), true, 'external'),
       (:'b', 'ledger', 'production', now() - interval '2 days', now(), false, 'active');
SELECT id AS partner FROM lattice.services WHERE user_id = :'b' AND name = 'partner-api' \gset
SELECT id AS ledger FROM lattice.services WHERE user_id = :'b' AND name = 'ledger' \gset
INSERT INTO lattice.connections (user_id, source_service_id, target_service_id)
VALUES (:'b', :'partner', :'billing'), (:'b', :'billing', :'ledger'), (:'b', :'ledger', :'billing');
INSERT INTO lattice.graph_events (user_id, at, kind, source_service_id, target_service_id)
VALUES (:'b', now(), 'edge_added', :'partner', :'billing'), (:'b', now(), 'edge_added', :'ledger', :'billing');
INSERT INTO lattice.alert_channels (user_id, kind, name, target, verified_at)
VALUES (:'b', 'email', 'me', 'alerts-b-' || :'r' || '@example.com', now());
SELECT pg_temp.tick(:'t0'::timestamptz + interval '113 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT array_agg(value ->> 'change' ORDER BY value ->> 'change') FROM lattice.alert_incidents
            WHERE user_id = :'b' AND rule = 'topology'), '{new_caller,new_cycle,new_external_caller}',
          'a new external caller, a new caller and the cycle it closes are reported');
SELECT is((SELECT bool_and(status = 'resolved') FROM lattice.alert_incidents WHERE user_id = :'b' AND rule = 'topology'), true,
          'topology changes are events: resolved as they open');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '114 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT count(*) FROM lattice.alert_incidents WHERE user_id = :'b' AND rule = 'topology'), 3::bigint,
          'each event is read once (the cursor moved)');
INSERT INTO lattice.service_changes (user_id, service_id, kind, subject, old_value)
VALUES (:'b', :'billing', 'dependency_removed', 'left-pad', '1.3.0');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '115 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT summary FROM lattice.alert_incidents WHERE user_id = :'b' AND subject ->> 'type' = 'package'),
          'billing no longer depends on left-pad', 'a package dependency removed is reported');

-- ingest refused by the quota
INSERT INTO lattice.usage_hourly (user_id, hour, requests, refused, class, subject, updated_at)
VALUES (:'b', date_trunc('hour', :'t0'::timestamptz + interval '116 minutes'), 500, 40, 'ingest', 'billing',
        :'t0'::timestamptz + interval '116 minutes');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '117 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'b', 'ingest_refused'), '{open}', 'ingest refused by the quota opens an incident');
SELECT pg_temp.tick(:'t0'::timestamptz + interval '118 minutes') IS NOT NULL AS x \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '124 minutes') IS NOT NULL AS x \gset
SELECT is(pg_temp.incidents(:'b', 'ingest_refused'), '{resolved}', 'no new refusal for recover_after_minutes: resolved');

-- a mute silences a rule and subject; acknowledge marks it seen
SELECT id AS lat FROM lattice.alert_incidents WHERE user_id = :'a' AND rule = 'latency' AND subject ->> 'path' = '/slow' \gset
INSERT INTO kv SELECT 'mute', pg_temp.call('alert_incident_mute', pg_temp.preq(:'net' || '1', 'POST', pg_temp.v('sa'), :'lat'),
                                           '{"minutes": 600}');
SELECT ok((pg_temp.v('mute') #>> '{body,incident,muted_until}') IS NOT NULL, 'an incident''s rule and subject can be muted');
SELECT is(pg_temp.code(pg_temp.call('alert_incident_mute', pg_temp.preq(:'net' || '1', 'POST', pg_temp.v('sa'), :'lat'),
                                    '{"minutes": 0}')), '400:invalid_minutes', 'a mute of 0 minutes is refused');
SELECT is(pg_temp.code(pg_temp.call('alert_incident_mute', pg_temp.preq(:'net' || '2', 'POST', pg_temp.v('sb'), :'lat'),
                                    '{"minutes": 60}')), '404:not_found', 'another account cannot mute it');
SELECT is(pg_temp.call('alert_incident_acknowledge', pg_temp.preq(:'net' || '1', 'POST', pg_temp.v('sa'), :'lat'))
          #>> '{body,incident,acknowledged_at}' IS NOT NULL, true, 'an incident can be acknowledged');
SELECT count(*) AS before_mute FROM lattice.outbox WHERE account_id = :'a' AND purpose = 'alert.resolved' \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '180 minutes') IS NOT NULL AS x \gset
SELECT pg_temp.tick(:'t0'::timestamptz + interval '190 minutes') IS NOT NULL AS x \gset
SELECT is((SELECT status FROM lattice.alert_incidents WHERE id = :'lat'), 'resolved', 'the muted incident resolves');
SELECT is((SELECT count(*) FROM lattice.outbox WHERE account_id = :'a' AND purpose = 'alert.resolved'
             AND (context ->> 'incident')::bigint = :'lat'), 0::bigint, 'but its resolution is not sent while muted');

-- ======================================================================
-- Signing, deletion
-- ======================================================================
SELECT (SELECT id FROM lattice.outbox WHERE account_id = :'a' AND kind = 'webhook' AND purpose = 'alert.opened' LIMIT 1) AS job \gset
SELECT lattice_worker.job_headers(o) AS hdr, o.body AS body FROM lattice.outbox o WHERE o.id = :'job' \gset
SELECT is(lattice.stripe_signature_verdict(:'hdr'::jsonb ->> 'Lattice-Signature', :'body', ARRAY[:'secret'], 300, now()),
          'valid', 'a delivery is signed with the channel''s secret, Stripe''s scheme');
SELECT is(lattice.stripe_signature_verdict(:'hdr'::jsonb ->> 'Lattice-Signature', :'body' || ' ', ARRAY[:'secret'], 300, now()),
          'signature_mismatch', 'a changed body does not verify');
SELECT is(:'hdr'::jsonb ->> 'Lattice-Delivery', :'job', 'the delivery id is the outbox job, the same on every retry');
INSERT INTO kv SELECT 'rot', pg_temp.call('alert_channel_secret', pg_temp.preq(:'net' || '1', 'POST', pg_temp.v('sa'), :'hook'));
SELECT is(lattice.stripe_signature_verdict((SELECT lattice_worker.job_headers(o) ->> 'Lattice-Signature' FROM lattice.outbox o
                                              WHERE o.id = :'job'), :'body', ARRAY[:'secret'], 300, now()),
          'signature_mismatch', 'after a new secret, the old one no longer verifies');
SELECT is(lattice.stripe_signature_verdict((SELECT lattice_worker.job_headers(o) ->> 'Lattice-Signature' FROM lattice.outbox o
                                              WHERE o.id = :'job'), :'body', ARRAY[pg_temp.v('rot') #>> '{body,secret}'], 300, now()),
          'valid', 'the new one does');
SELECT is(pg_temp.err_code(format('SELECT lattice.alert_webhook_headers(1, %L, %L, %L)', :'a', :'hook', '{}')), '42501:',
          'the API role cannot have deliveries signed (the secret stays the owner''s)')
  FROM (SELECT set_config('role', 'lattice_app', true)) x;
RESET ROLE;

UPDATE lattice.outbox SET status = 'pending' WHERE account_id = :'a' AND context ->> 'channel' = :'hook';
SELECT is(pg_temp.code(pg_temp.call('alert_channel_delete', pg_temp.preq(:'net' || '1', 'DELETE', pg_temp.v('sa'), :'hook'))),
          '204:', 'a channel is deleted');
SELECT is((SELECT count(*) FROM lattice.outbox WHERE context ->> 'channel' = :'hook' AND status = 'pending'), 0::bigint,
          'and its pending deliveries with it');

SELECT * FROM finish();
ROLLBACK;
