-- Accounts, plans, credentials and subscriptions.

CREATE TABLE lattice.plans (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    price_cents         integer NOT NULL CHECK (price_cents >= 0),
    currency            text NOT NULL DEFAULT 'usd',
    billing_interval    text NOT NULL DEFAULT 'year',
    trial_days          integer NOT NULL DEFAULT 7 CHECK (trial_days >= 0),
    stripe_price_id     text,
    -- quota classes (src/ratelimit_enforce.c): api requests per account,
    -- ingest requests per service (the account's ceiling is that times
    -- max_services), dashboard requests per account
    rate_limit_per_hour integer NOT NULL DEFAULT 1000 CHECK (rate_limit_per_hour > 0),
    max_services        integer NOT NULL DEFAULT 100 CHECK (max_services > 0),
    ingest_per_service_per_hour integer NOT NULL DEFAULT 3600 CHECK (ingest_per_service_per_hour > 0),
    dashboard_per_hour  integer NOT NULL DEFAULT 7200 CHECK (dashboard_per_hour > 0)
);
-- Not on a Citus worker, where the coordinator runs this script over its own
-- connections (named citus_internal): a worker holds shards only, and the
-- plans are the coordinator's reference table (92_cluster.sql).
INSERT INTO lattice.plans (id, name, price_cents)
SELECT 'standard', 'Lattice', 2500
 WHERE pg_catalog.current_setting('application_name') NOT LIKE 'citus\_internal%';

CREATE TABLE lattice.users (
    id              uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    email           text NOT NULL
                    CHECK (email = pg_catalog.lower(email) AND pg_catalog.length(email) <= 254),
    password_hash   text,
    name            text NOT NULL,
    plan_id         text NOT NULL DEFAULT 'standard' REFERENCES lattice.plans,
    trial_ends_at   timestamptz NOT NULL DEFAULT pg_catalog.now() + interval '7 days',
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- API keys (src/auth_apikey.c): the plaintext is shown once and never stored.
-- prefix: the key's first 12 characters, for lookup and display; key_hash:
-- BLAKE2b-256 of the key keyed with the server pepper named by pepper_kid.
-- A rotated key points at its predecessor, whose expires_at the rotation
-- moved to the end of the grace period.  scopes: ingest (the plugin
-- endpoints) and/or read (the read API); a rotated key keeps its scopes.
CREATE TABLE lattice.api_keys (
    id          uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    name        text NOT NULL CHECK (pg_catalog.length(name) BETWEEN 1 AND 100),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL,
    pepper_kid  text NOT NULL,
    rotated_from uuid,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_used   timestamptz,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    scopes      text[] NOT NULL DEFAULT '{ingest}'
                CHECK (pg_catalog.cardinality(scopes) >= 1 AND scopes <@ '{ingest,read}'::text[]),
    PRIMARY KEY (user_id, id),
    -- keys are revoked, never deleted one by one (only with their account)
    FOREIGN KEY (user_id, rotated_from) REFERENCES lattice.api_keys (user_id, id)
);

-- Look-ups across tenants, one key each: the address an account signs in
-- with, and the prefix an API key is found by.  Every other tenant table is
-- keyed by user_id first; these say which tenant a credential belongs to,
-- so that the check reads one small row and then only that tenant's rows
-- (on Citus: reference tables, read on the coordinator; docs/scaling.md).
-- Their primary keys keep e-mail addresses and key prefixes unique.
CREATE TABLE lattice.account_emails (
    email       text PRIMARY KEY,
    user_id     uuid NOT NULL
);
CREATE TABLE lattice.api_key_prefixes (
    prefix      text PRIMARY KEY,
    user_id     uuid NOT NULL,
    key_id      uuid NOT NULL
);

CREATE TABLE lattice.subscriptions (
    id                      uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id                 uuid PRIMARY KEY REFERENCES lattice.users ON DELETE CASCADE,
    stripe_customer_id      text,
    stripe_subscription_id  text,
    status                  text NOT NULL,
    current_period_end      timestamptz,
    created_at              timestamptz NOT NULL DEFAULT pg_catalog.now()
);
