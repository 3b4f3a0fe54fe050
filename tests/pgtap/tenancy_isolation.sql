-- The isolation matrix: as tenant A (through lattice_app, the role every API
-- function runs as), SELECT / INSERT / UPDATE / DELETE against tenant B's
-- rows in every tenant table.  Nothing is seen, nothing changes.  Rows are
-- seeded generically from the catalog (foreign keys off while seeding), so a
-- new tenant table is covered without touching this file.
--
-- Seeding, each tenant's part and the clean-up are transactions of their
-- own: on Citus a transaction reaches a shard as one role only (the
-- superuser seeds, lattice_app runs the matrix).  tests/citus runs this file
-- on a coordinator and two workers as it is.

CREATE FUNCTION pg_temp.tenant_tables() RETURNS TABLE (rel regclass, col text)
LANGUAGE sql AS $$
    SELECT c.oid::regclass, CASE WHEN c.relname = 'users' THEN 'id' ELSE 'user_id' END
      FROM pg_class c
     WHERE c.relnamespace = 'lattice'::regnamespace AND c.relkind IN ('r', 'p')
       AND (c.relname = 'users' OR EXISTS (SELECT FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attname = 'user_id' AND NOT a.attisdropped))
     ORDER BY 1::text
$$;

-- A value of the column's type that satisfies the usual checks.
CREATE FUNCTION pg_temp.sample(typ regtype, col text, owner uuid) RETURNS text
LANGUAGE sql AS $$
    SELECT CASE
        WHEN col IN ('user_id', 'id') AND typ = 'uuid'::regtype THEN quote_literal(owner::text) || '::uuid'
        WHEN col = 'email' THEN quote_literal(gen_random_uuid()::text || '@example.com')
        WHEN col = 'purpose' THEN quote_literal('verify_email')
        WHEN col = 'kind' THEN quote_literal('email')         -- a kind every table with one accepts
        WHEN col = 'status' AND typ = 'text'::regtype THEN quote_literal('resolved')
        WHEN typ = '"char"'::regtype THEN quote_literal('c')
        WHEN typ = 'uuid'::regtype THEN 'gen_random_uuid()'
        WHEN typ IN ('text'::regtype, 'character varying'::regtype) THEN quote_literal('seed-' || left(md5(random()::text), 8))
        WHEN typ IN ('integer'::regtype, 'bigint'::regtype, 'smallint'::regtype,
                     'numeric'::regtype, 'double precision'::regtype, 'real'::regtype) THEN '1'
        WHEN typ = 'boolean'::regtype THEN 'false'
        WHEN typ IN ('timestamp with time zone'::regtype, 'timestamp without time zone'::regtype) THEN 'now()'
        WHEN typ = 'date'::regtype THEN 'current_date'
        WHEN typ = 'interval'::regtype THEN $i$'1 hour'$i$
        WHEN typ = 'jsonb'::regtype THEN $j$'{}'::jsonb$j$
        WHEN typ = 'json'::regtype THEN $j$'{}'::json$j$
        WHEN typ = 'bytea'::regtype THEN 'decode(md5(random()::text), ''hex'')'
        WHEN typ = 'inet'::regtype THEN $n$'127.0.0.1'::inet$n$
        WHEN typ::text LIKE '%[]' THEN quote_literal('{}') || '::' || typ::text
        ELSE 'NULL' END
$$;

-- Inserts one row owned by `owner` into `rel`, filling the required columns.
CREATE FUNCTION pg_temp.seed_row(rel regclass, tcol text, owner uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE cols text[]; vals text[]; a record;
BEGIN
    FOR a IN SELECT attname::text AS name, atttypid::regtype AS typ FROM pg_attribute
              WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped
                AND attidentity = '' AND attgenerated = ''
                AND ((attnotnull AND NOT atthasdef) OR attname = tcol)
    LOOP
        cols := cols || quote_ident(a.name);
        vals := vals || pg_temp.sample(a.typ, a.name, owner);
    END LOOP;
    EXECUTE format('INSERT INTO %s (%s) VALUES (%s)', rel,
                   array_to_string(cols, ', '), array_to_string(vals, ', '));
END $$;

CREATE FUNCTION pg_temp.snapshot(rel regclass, tcol text, owner uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE h text;
BEGIN
    EXECUTE format('SELECT md5(coalesce(string_agg(t::text, %L ORDER BY t::text), %L)) FROM %s t WHERE %I = $1',
                   '|', '', rel, tcol) INTO h USING owner;
    RETURN h;
END $$;

CREATE TEMP TABLE ids AS SELECT gen_random_uuid() AS a, gen_random_uuid() AS b;
GRANT SELECT ON ids TO lattice_app;

-- Seed one row per tenant per table, as superuser with FK triggers off
-- (on Citus the setting travels to the workers' shards too).
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL session_replication_role = replica;
DO $$
DECLARE t record; a uuid; b uuid;
BEGIN
    SELECT ids.a, ids.b INTO a, b FROM ids;
    FOR t IN SELECT * FROM pg_temp.tenant_tables() LOOP
        PERFORM pg_temp.seed_row(t.rel, t.col, a);
        PERFORM pg_temp.seed_row(t.rel, t.col, b);
    END LOOP;
END $$;
COMMIT;

CREATE TEMP TABLE before AS
SELECT t.rel::text AS rel, pg_temp.snapshot(t.rel, t.col, ids.b) AS h
  FROM pg_temp.tenant_tables() t, ids;

-- The matrix, run as tenant A through lattice_app.  Each cell is a row.
CREATE TEMP TABLE matrix (rel text, cell text, ok boolean, note text);
GRANT INSERT ON matrix TO lattice_app;
GRANT EXECUTE ON FUNCTION pg_temp.seed_row(regclass, text, uuid), pg_temp.sample(regtype, text, uuid)
    TO lattice_app;

BEGIN;
SELECT lattice.test_set_tenant(a) FROM ids;
SET LOCAL ROLE lattice_app;
DO $$
DECLARE t record; a uuid; b uuid; n bigint; ok boolean; err text;
BEGIN
    SELECT ids.a, ids.b INTO a, b FROM ids;
    FOR t IN SELECT * FROM pg_temp.tenant_tables() LOOP
        -- SELECT: only A's rows are visible (audit_log has no INSERT-able A row above? it does)
        BEGIN
            EXECUTE format('SELECT count(*) FROM %s WHERE %I IS DISTINCT FROM $1', t.rel, t.col) INTO n USING a;
            INSERT INTO matrix VALUES (t.rel::text, 'select other tenant', n = 0, n::text);
            EXECUTE format('SELECT count(*) FROM %s WHERE %I = $1', t.rel, t.col) INTO n USING a;
            INSERT INTO matrix VALUES (t.rel::text, 'select own rows', n >= 1, n::text);
        EXCEPTION WHEN insufficient_privilege THEN
            INSERT INTO matrix VALUES (t.rel::text, 'select other tenant', true, 'no privilege');
        END;
        -- UPDATE: B's rows are not reachable
        BEGIN
            EXECUTE format('UPDATE %s SET %I = %I WHERE %I = $1', t.rel, t.col, t.col, t.col) USING b;
            GET DIAGNOSTICS n = ROW_COUNT;
            INSERT INTO matrix VALUES (t.rel::text, 'update other tenant', n = 0, n::text);
        EXCEPTION WHEN insufficient_privilege THEN
            INSERT INTO matrix VALUES (t.rel::text, 'update other tenant', true, 'no privilege');
        END;
        -- UPDATE: A's row cannot be handed to B
        BEGIN
            EXECUTE format('UPDATE %s SET %I = $2 WHERE %I = $1', t.rel, t.col, t.col) USING a, b;
            GET DIAGNOSTICS n = ROW_COUNT;
            INSERT INTO matrix VALUES (t.rel::text, 'move own row to other tenant', n = 0, n::text || ' rows moved');
        EXCEPTION WHEN insufficient_privilege OR foreign_key_violation OR unique_violation
                       OR feature_not_supported THEN  -- Citus: a row's distribution value never changes
            INSERT INTO matrix VALUES (t.rel::text, 'move own row to other tenant', true, SQLERRM);
        END;
        -- DELETE: B's rows are not reachable
        BEGIN
            EXECUTE format('DELETE FROM %s WHERE %I = $1', t.rel, t.col) USING b;
            GET DIAGNOSTICS n = ROW_COUNT;
            INSERT INTO matrix VALUES (t.rel::text, 'delete other tenant', n = 0, n::text);
        EXCEPTION WHEN insufficient_privilege THEN
            INSERT INTO matrix VALUES (t.rel::text, 'delete other tenant', true, 'no privilege');
        END;
        -- INSERT: a row for B is refused
        BEGIN
            PERFORM pg_temp.seed_row(t.rel, t.col, b);
            INSERT INTO matrix VALUES (t.rel::text, 'insert for other tenant', false, 'inserted');
        EXCEPTION WHEN insufficient_privilege THEN
            INSERT INTO matrix VALUES (t.rel::text, 'insert for other tenant', true, SQLERRM);
        END;
    END LOOP;
END $$;
COMMIT;

-- Without a tenant, nothing at all is visible or writable.
BEGIN;
SET LOCAL ROLE lattice_app;
DO $$
DECLARE t record; n bigint; a uuid;
BEGIN
    SELECT ids.a INTO a FROM ids;
    FOR t IN SELECT * FROM pg_temp.tenant_tables() LOOP
        BEGIN
            EXECUTE format('SELECT count(*) FROM %s', t.rel) INTO n;
            INSERT INTO matrix VALUES (t.rel::text, 'no tenant: select', n = 0, n::text);
        EXCEPTION WHEN insufficient_privilege THEN
            INSERT INTO matrix VALUES (t.rel::text, 'no tenant: select', true, 'no privilege');
        END;
        BEGIN
            PERFORM pg_temp.seed_row(t.rel, t.col, a);
            INSERT INTO matrix VALUES (t.rel::text, 'no tenant: insert', false, 'inserted');
        EXCEPTION WHEN insufficient_privilege THEN
            INSERT INTO matrix VALUES (t.rel::text, 'no tenant: insert', true, SQLERRM);
        END;
    END LOOP;
END $$;
COMMIT;

SELECT plan(5);
SELECT is((SELECT count(DISTINCT rel) FROM matrix)::int, (SELECT count(*) FROM pg_temp.tenant_tables())::int,
          'the matrix covers every tenant table');
SELECT is((SELECT count(*) FROM matrix)::int,
          (SELECT count(*) * 7 FROM pg_temp.tenant_tables())::int
            + (SELECT count(*) FROM matrix WHERE cell = 'select own rows')::int,
          'every cell of the matrix ran');
SELECT is_empty($$ SELECT rel, cell, note FROM matrix WHERE NOT ok $$,
                'tenant A can neither see nor change tenant B''s rows, and no tenant means no access');
SELECT is_empty($$
    SELECT b.rel FROM before b JOIN pg_temp.tenant_tables() t ON t.rel::text = b.rel, ids
     WHERE pg_temp.snapshot(t.rel, t.col, ids.b) <> b.h
$$, 'tenant B''s rows are byte-for-byte unchanged');
SELECT results_eq($$ SELECT DISTINCT cell FROM matrix ORDER BY 1 $$,
    ARRAY['delete other tenant', 'insert for other tenant', 'move own row to other tenant',
          'no tenant: insert', 'no tenant: select', 'select other tenant', 'select own rows',
          'update other tenant'],
    'the matrix ran every command');
SELECT * FROM finish();

-- Clean-up: every row of both tenants, keys off as for the seed
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL session_replication_role = replica;
DO $$
DECLARE t record; a uuid; b uuid;
BEGIN
    SELECT ids.a, ids.b INTO a, b FROM ids;
    FOR t IN SELECT * FROM pg_temp.tenant_tables() LOOP
        EXECUTE format('DELETE FROM %s WHERE %I IN ($1, $2)', t.rel, t.col) USING a, b;
    END LOOP;
END $$;
COMMIT;
