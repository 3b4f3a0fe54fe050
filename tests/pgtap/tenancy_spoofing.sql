-- The tenant cannot be spoofed: it is not a GUC, so SET / set_config / RESET
-- cannot reach it; SET ROLE does not change it; only superusers can use the
-- test setter; lattice_api reaches nothing but lattice_http.
BEGIN;
SELECT plan(19);

CREATE TEMP TABLE ids AS SELECT gen_random_uuid() AS a, gen_random_uuid() AS b;
GRANT SELECT ON ids TO PUBLIC;
CREATE ROLE lattice_test_api LOGIN IN ROLE lattice_api;

SELECT is(lattice.current_user_id(), NULL, 'no tenant until C code sets one');

SELECT lattice.test_set_tenant(a) FROM ids;
SELECT is(lattice.current_user_id(), (SELECT a FROM ids), 'the test setter sets the tenant');

SELECT set_config('lattice.current_user_id', (SELECT b::text FROM ids), true);
SELECT set_config('lattice.user_id', (SELECT b::text FROM ids), true);
SELECT set_config('lattice.tenant', (SELECT b::text FROM ids), true);
SELECT is(lattice.current_user_id(), (SELECT a FROM ids), 'set_config cannot change the tenant');

SET LOCAL lattice.current_user_id = '00000000-0000-0000-0000-000000000000';
SELECT is(lattice.current_user_id(), (SELECT a FROM ids), 'SET cannot change the tenant');

RESET ALL;
SELECT is(lattice.current_user_id(), (SELECT a FROM ids), 'RESET ALL cannot change the tenant');

SET LOCAL ROLE lattice_app;
SELECT is(lattice.current_user_id(), (SELECT a FROM ids), 'SET ROLE keeps the tenant');
SELECT throws_ok($$ SELECT lattice.test_set_tenant(b) FROM ids $$, '42501', NULL,
                 'lattice_app cannot call the test setter');
RESET ROLE;

-- From here on as the shim would be: a login role that is a member of lattice_api.
SET SESSION AUTHORIZATION lattice_test_api;
SELECT throws_ok($$ SET ROLE postgres $$, '42501', NULL, 'the API login cannot become the owner');
SELECT throws_ok($$ SET ROLE lattice_app $$, '42501', NULL, 'the API login cannot become lattice_app');
SELECT throws_ok($$ SELECT count(*) FROM lattice.users $$, '42501', NULL,
                 'lattice_api cannot read tenant tables');
SELECT throws_ok($$ INSERT INTO lattice.services (user_id, name) SELECT a, 'x' FROM ids $$, '42501', NULL,
                 'lattice_api cannot write tenant tables');
SELECT throws_ok($$ SELECT lattice.test_set_tenant(b) FROM ids $$, '42501', NULL,
                 'lattice_api cannot call the test setter');
SELECT throws_ok($$ SELECT lattice.act_as_tenant(b, 'x') FROM ids $$, '42501', NULL,
                 'lattice_api cannot act as a tenant');
SELECT throws_ok($$ SELECT * FROM lattice.audit_log $$, '42501', NULL,
                 'lattice_api cannot read the audit log');
RESET SESSION AUTHORIZATION;

-- A member of lattice_admin may act as a tenant, with a reason, audited.
CREATE ROLE lattice_test_dba LOGIN IN ROLE lattice_admin;
SELECT lattice.test_set_tenant(NULL);
INSERT INTO lattice.users (id, email, name) SELECT b, 'b-' || b || '@example.com', 'B' FROM ids;
SET SESSION AUTHORIZATION lattice_test_dba;
SELECT throws_ok($$ SELECT lattice.act_as_tenant(b, '') FROM ids $$, '22023', NULL,
                 'acting as a tenant needs a reason');
SELECT lattice.act_as_tenant(b, 'support ticket 42') FROM ids;
SELECT is((SELECT count(*) FROM lattice.users)::int, 1, 'the admin then sees that tenant''s rows only');
SELECT throws_ok($$ INSERT INTO lattice.audit_log (user_id, action) SELECT b, 'billing.refund' FROM ids $$,
                 '42501', NULL, 'the admin may write no other audit event');
SELECT throws_ok($$ INSERT INTO lattice.audit_log (user_id, action, actor)
                    SELECT b, 'admin.act_as_tenant', 'someone_else' FROM ids $$,
                 '42501', NULL, 'nor one under another name');
RESET SESSION AUTHORIZATION;
SELECT is((SELECT actor || ':' || action FROM lattice.audit_log WHERE user_id = (SELECT b FROM ids)),
          'lattice_test_dba:admin.act_as_tenant', 'acting as a tenant is audited with the admin''s name');

SELECT * FROM finish();
ROLLBACK;
