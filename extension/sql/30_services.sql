-- Services, their routes and packages, and the observed calls between them.
-- Child rows carry user_id and reference (id, user_id) of their parent, so a
-- row can never point at another tenant's service.

CREATE TABLE lattice.services (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
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
    discovered_by       jsonb,
    metadata            jsonb,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (user_id, name, environment),
    UNIQUE (id, user_id)
);

CREATE TABLE lattice.routes (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    middleware_chain    text[],
    handler_location    jsonb,
    path_parameters     jsonb,
    query_parameters    jsonb,
    request_schema      jsonb,
    response_schema     jsonb,
    description         text,
    tags                text[],
    metadata            jsonb,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    UNIQUE (service_id, method, path),
    FOREIGN KEY (service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.routes (user_id);

CREATE TABLE lattice.dependencies (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    service_id          uuid NOT NULL,
    package_name        text NOT NULL,
    version             text NOT NULL DEFAULT '',
    version_range       text,
    dependency_type     text NOT NULL,
    scope               text,
    metadata            jsonb,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    removed_at          timestamptz,
    UNIQUE (service_id, package_name, dependency_type),
    FOREIGN KEY (service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.dependencies (user_id);

CREATE TABLE lattice.connections (
    id                  uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    user_id             uuid NOT NULL,
    source_service_id   uuid NOT NULL,
    target_service_id   uuid NOT NULL,
    declared            boolean NOT NULL DEFAULT false,
    call_count          bigint NOT NULL DEFAULT 0 CHECK (call_count >= 0),
    error_count         bigint NOT NULL DEFAULT 0 CHECK (error_count >= 0),
    client_error_count  bigint NOT NULL DEFAULT 0 CHECK (client_error_count >= 0),
    total_duration_ms   double precision NOT NULL DEFAULT 0,
    first_seen          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_seen           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (source_service_id, target_service_id),
    FOREIGN KEY (source_service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (target_service_id, user_id) REFERENCES lattice.services (id, user_id) ON DELETE CASCADE
);
CREATE INDEX ON lattice.connections (user_id);
CREATE INDEX ON lattice.connections (target_service_id);
