-- The tenant lives for one transaction at most: cleared at COMMIT, at
-- ROLLBACK, and when the subtransaction that set it aborts.
SELECT lattice.current_user_id() IS NULL AS no_tenant_at_start;

-- autocommit: each statement is its own transaction
SELECT lattice.test_set_tenant('11111111-1111-1111-1111-111111111111');
SELECT lattice.current_user_id() IS NULL AS cleared_after_autocommit;

BEGIN;
SELECT lattice.test_set_tenant('11111111-1111-1111-1111-111111111111');
SELECT lattice.current_user_id() AS inside_transaction;
COMMIT;
SELECT lattice.current_user_id() IS NULL AS cleared_after_commit;

BEGIN;
SELECT lattice.test_set_tenant('22222222-2222-2222-2222-222222222222');
SELECT 1 / 0;
ROLLBACK;
SELECT lattice.current_user_id() IS NULL AS cleared_after_abort;

BEGIN;
SELECT lattice.test_set_tenant('33333333-3333-3333-3333-333333333333');
SAVEPOINT s1;
SELECT lattice.test_set_tenant('44444444-4444-4444-4444-444444444444');
ROLLBACK TO SAVEPOINT s1;
SELECT lattice.current_user_id() IS NULL AS cleared_with_the_subtransaction_that_set_it;
COMMIT;

BEGIN;
SELECT lattice.test_set_tenant('55555555-5555-5555-5555-555555555555');
SAVEPOINT s2;
SELECT 1;
ROLLBACK TO SAVEPOINT s2;
SELECT lattice.current_user_id() AS kept_when_a_later_savepoint_aborts;
COMMIT;

-- prepared statements and cursors see the same value
BEGIN;
SELECT lattice.test_set_tenant('66666666-6666-6666-6666-666666666666');
PREPARE who AS SELECT lattice.current_user_id();
EXECUTE who;
COMMIT;
EXECUTE who;
DEALLOCATE who;

-- no tenant: RLS hides everything even from a role with privileges
SET ROLE lattice_app;
SELECT count(*) AS visible_users FROM lattice.users;
INSERT INTO lattice.services (user_id, name) VALUES ('77777777-7777-7777-7777-777777777777', 'x');
RESET ROLE;

-- the test setter is for superusers only
CREATE ROLE regress_tenancy_user;
SET ROLE regress_tenancy_user;
SELECT lattice.test_set_tenant('88888888-8888-8888-8888-888888888888');
RESET ROLE;
DROP ROLE regress_tenancy_user;
