-- Services, their routes and packages, and the observed calls between them.
-- Child rows carry user_id and reference (id, user_id) of their parent, so a
-- row can never point at another tenant's service.
--
-- A service is (tenant, name, environment); the plugin's own service id
-- changes at every process start and is only kept as instance_id.
-- snapshot_hash is the hash of the last metadata snapshot without its
-- volatile fields (see src/ingest_digest.c): an identical re-submission is
-- recognised by it and only moves last_seen.  Liveness (active/inactive) is
-- derived from last_seen when read, so it costs no write.  An is_external
-- node never registered itself: a caller or callee seen only in traces
-- (kind external; an is_external row of kind service reads as external),
-- or a database or queue that OpenTelemetry spans name (kind database,
-- queue); each is drawn with its own shape.

CREATE TABLE lattice.services (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL REFERENCES lattice.users ON DELETE CASCADE,
    name                text NOT NULL,
    environment         text NOT NULL DEFAULT 'production',
    version             text,
    language            text,
    framework           text,
    runtime             text,
    description         text,
    repository          text,
    health_check_url    text,
    deployment_type     text,
    status              text NOT NULL DEFAULT 'active',
    is_external         boolean NOT NULL DEFAULT false,
    kind                text NOT NULL DEFAULT 'service'
                        CHECK (kind IN ('service', 'external', 'database', 'queue')),
    discovered_by       jsonb,
    metadata            jsonb,
    instance_id         text,
    snapshot_hash       text,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, name, environment),
    PRIMARY KEY (user_id, id),
    CHECK (kind = 'service' OR is_external)
);

-- attrs: the route as the plugin described it (middlewareChain,
-- handlerLocation, parameters, schemas, description, tags, metadata, ...),
-- without the ids and timestamps the plugin regenerates.  A route that
-- disappears from a snapshot keeps its id and gets removed_at.
CREATE TABLE lattice.routes (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    attrs               jsonb NOT NULL DEFAULT '{}',
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    UNIQUE (user_id, service_id, method, path),
    PRIMARY KEY (user_id, id),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);

-- One row per (package, type): the same package listed twice with one type
-- is folded into one row.
CREATE TABLE lattice.dependencies (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    package_name        text NOT NULL,
    version             text NOT NULL DEFAULT '',
    version_range       text,
    dependency_type     text NOT NULL,
    scope               text,
    attrs               jsonb NOT NULL DEFAULT '{}',
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    PRIMARY KEY (user_id, id),
    UNIQUE (user_id, service_id, package_name, dependency_type),
    FOREIGN KEY (user_id, service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);

-- An observed edge source -> target (traces with caller_service), or a
-- declared one.  error_count counts status >= 500, client_error_count 4xx;
-- latency_hist is a lattice.hist_* histogram (src/ingest_hist.c).
CREATE TABLE lattice.connections (
    id                  uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    source_service_id   uuid NOT NULL,
    target_service_id   uuid NOT NULL,
    declared            boolean NOT NULL DEFAULT false,
    call_count          bigint NOT NULL DEFAULT 0 CHECK (call_count >= 0),
    error_count         bigint NOT NULL DEFAULT 0 CHECK (error_count >= 0),
    client_error_count  bigint NOT NULL DEFAULT 0 CHECK (client_error_count >= 0),
    total_duration_ms   double precision NOT NULL DEFAULT 0,
    latency_hist        bigint[],
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (user_id, id),
    UNIQUE (user_id, source_service_id, target_service_id),
    FOREIGN KEY (user_id, source_service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE,
    FOREIGN KEY (user_id, target_service_id) REFERENCES lattice.services (user_id, id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.connections (user_id, target_service_id);
