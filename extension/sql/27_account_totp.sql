-- The second factor's primitives (src/account_totp.c): TOTP codes (RFC 6238,
-- HMAC-SHA-1, 30-second steps), TOTP secrets sealed under the server pepper,
-- recovery codes and their hashes, and base32 for the otpauth URI.
--
-- The two functions that touch the pepper are SECURITY DEFINER with a pinned
-- search_path: the sealed secret the tables keep opens only inside them.
-- The others are pure functions of their arguments.

CREATE FUNCTION lattice.totp_code(secret bytea, step bigint, digits integer DEFAULT 6) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_totp_code' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION lattice.totp_code(bytea, bigint, integer) IS
    'the HOTP code (RFC 4226, HMAC-SHA-1) of counter step, 6 to 8 digits; a TOTP code is that of step floor(Unix time / 30)';

CREATE FUNCTION lattice.totp_generate(OUT secret text, OUT sealed bytea)
    AS 'MODULE_PATHNAME', 'lattice_totp_generate' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.totp_generate() IS
    'a new TOTP secret: secret in base32 for the authenticator app (shown once), sealed to store (opens only in totp_check)';

-- Not STRICT: last_step is NULL until a first code was used, and at NULL
-- means lattice.clock_now().
CREATE FUNCTION lattice.totp_check(sealed bytea, code text, last_step bigint, at timestamptz) RETURNS bigint
    AS 'MODULE_PATHNAME', 'lattice_totp_check' LANGUAGE C VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION lattice.totp_check(bytea, text, bigint, timestamptz) IS
    'the step (to store as the next last_step) a 6-digit code is valid for, at the step of at or one either side, after last_step; NULL otherwise';

CREATE FUNCTION lattice.recovery_codes_new(OUT codes text[], OUT hashes bytea[])
    AS 'MODULE_PATHNAME', 'lattice_recovery_codes_new' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION lattice.recovery_codes_new() IS
    'ten recovery codes (xxxxx-xxxxx, shown once) and the BLAKE2b-256 of each, to store';

-- Not STRICT: a NULL must answer 0 (no match), never NULL.
CREATE FUNCTION lattice.recovery_code_match(code text, hashes bytea[]) RETURNS integer
    AS 'MODULE_PATHNAME', 'lattice_recovery_code_match' LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION lattice.recovery_code_match(text, bytea[]) IS
    'the 1-based position of the code''s hash in hashes (case, spaces and dashes ignored), 0 when none; NULL elements never match';

CREATE FUNCTION lattice.base32_encode(data bytea) RETURNS text
    AS 'MODULE_PATHNAME', 'lattice_base32_encode' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- The lattice_http functions of the account routes call these.
GRANT EXECUTE ON FUNCTION
    lattice.totp_code(bytea, bigint, integer),
    lattice.totp_generate(),
    lattice.totp_check(bytea, text, bigint, timestamptz),
    lattice.recovery_codes_new(),
    lattice.recovery_code_match(text, bytea[]),
    lattice.base32_encode(bytea)
    TO lattice_app;
