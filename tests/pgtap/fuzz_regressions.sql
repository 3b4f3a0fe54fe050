-- Inputs that fuzzing (tests/fuzz/) found mishandled, replayed through SQL:
-- each is also a corpus file in tests/fuzz/regressions/ that smoke.sh replays.
BEGIN;
SELECT plan(6);
CREATE EXTENSION IF NOT EXISTS pgcrypto;

\ir helpers.psql
CREATE FUNCTION pg_temp.b64url(b bytea) RETURNS text LANGUAGE sql AS $$
    SELECT rtrim(translate(replace(encode(b, 'base64'), E'\n', ''), '+/', '-_'), '=')
$$;
-- A token signed with the active JWT key, as lattice.jwt_issue would sign it
CREATE FUNCTION pg_temp.signed(payload text) RETURNS text LANGUAGE sql AS $$
    SELECT si || '.' || pg_temp.b64url(hmac(convert_to(si, 'UTF8'), s.secret, 'sha256'))
    FROM lattice.secrets s,
         LATERAL (SELECT pg_temp.b64url(convert_to(format('{"alg":"HS256","typ":"JWT","kid":"%s"}', s.kid), 'UTF8'))
                         || '.' || pg_temp.b64url(convert_to(payload, 'UTF8')) AS si) x
    WHERE s.kind = 'jwt' AND s.retired_at IS NULL
$$;
SELECT lattice.rotate_secret('jwt');
SELECT floor(extract(epoch FROM now()))::bigint AS now \gset

-- ingest_match_core.c: "/?page=2" was split into one empty segment, so it
-- normalised to "/:id" and matched "/:id" (an empty id) instead of "/"
SELECT is(lattice.ingest_normalise_path('/?page=2'), '/', 'a path of only a query string normalises to /');
SELECT is(lattice.ingest_match_route(ARRAY['GET /:id', 'GET /'], 'GET', '/?page=2'), 2,
          '"/?page=2" is the route /, not /:id');
SELECT is(lattice.ingest_match_route(ARRAY['GET /users/:id', 'GET /users'], 'GET', '/users/?x=1'), 2,
          '"/users/?x=1" is /users, not /users/:id with an empty id');

-- auth_jwt_token.c: exp - iat overflowed int64 (undefined behaviour) for extreme claims
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', pg_temp.signed(format(
          '{"iss":"lattice","sub":"0b6f2c1e-6d3f-4a59-9d2b-4b1f3c6f8a10","iat":%s,"exp":%s}', :now - 3660, :now - 3600)))),
          'PT401:token_expired', 'control: a token signed here reaches the time checks');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', pg_temp.signed(
          '{"iss":"lattice","sub":"0b6f2c1e-6d3f-4a59-9d2b-4b1f3c6f8a10","iat":-9223372036854775808,"exp":9223372036854775807}'))),
          'PT401:invalid_token', 'iat = min int64, exp = max int64: the claims are refused');
SELECT is(pg_temp.err_code(format('SELECT lattice.jwt_verify(%L)', pg_temp.signed(
          '{"iss":"lattice","sub":"0b6f2c1e-6d3f-4a59-9d2b-4b1f3c6f8a10","iat":9223372036854775000,"exp":9223372036854775807}'))),
          'PT401:token_not_yet_valid', 'exp = max int64: no overflow when adding the skew');

SELECT * FROM finish();
ROLLBACK;
