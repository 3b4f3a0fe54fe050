#!/usr/bin/env python3
"""Writes the function part of an upgrade script: what a fresh install of
the new version has that an install of the old one lacks or defines
differently.

    scripts/upgrade_functions.py OLD_DB NEW_DB > part.sql

OLD_DB holds `CREATE EXTENSION lattice VERSION 'old'`, NEW_DB a fresh
`CREATE EXTENSION lattice`.  Functions whose signature went away are
dropped; new and changed ones are created from pg_get_functiondef (which
carries SECURITY DEFINER, SET search_path and the body); new ones get the
owner and grants of the fresh install.  Tables, types and data migrations
are written by hand above this part; tests/shell/upgrade.sh then compares
the upgraded catalog with a fresh install.
"""
import json
import subprocess
import sys

QUERY = r"""
SELECT json_agg(json_build_object(
         'sig', p.oid::regprocedure::text,
         'def', pg_get_functiondef(p.oid),
         'owner', pg_get_userbyid(p.proowner),
         'grantees', (SELECT coalesce(json_agg(DISTINCT pg_get_userbyid(a.grantee)), '[]')
                        FROM aclexplode(p.proacl) a
                       WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner),
         'public', p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0)))
  FROM pg_proc p
 WHERE p.pronamespace IN ('lattice'::regnamespace, 'lattice_http'::regnamespace)
   AND p.prokind = 'f'
"""


def functions(db):
    out = subprocess.run(['psql', '-XAtq', '-d', db, '-c', QUERY],
                         capture_output=True, text=True, check=True).stdout
    return {f['sig']: f for f in json.loads(out)}


def main(old_db, new_db):
    old, new = functions(old_db), functions(new_db)
    extension_owner = subprocess.run(
        ['psql', '-XAtq', '-d', new_db, '-c',
         "SELECT pg_get_userbyid(extowner) FROM pg_extension WHERE extname = 'lattice'"],
        capture_output=True, text=True, check=True).stdout.strip()
    dropped = sorted(set(old) - set(new))
    added = sorted(set(new) - set(old))
    changed = sorted(s for s in set(old) & set(new) if old[s]['def'] != new[s]['def'])
    print('-- Functions: dropped, then every new or changed definition.')
    for sig in dropped:
        print(f'DROP FUNCTION {sig};')
    for sig in added + changed:
        print()
        print(new[sig]['def'].rstrip() + ';')
    for sig in added:
        f = new[sig]
        if f['owner'] != extension_owner:
            print(f'ALTER FUNCTION {sig} OWNER TO {f["owner"]};')
        if not f['public']:
            print(f'REVOKE ALL ON FUNCTION {sig} FROM PUBLIC;')
        for role in f['grantees']:
            print(f'GRANT EXECUTE ON FUNCTION {sig} TO {role};')


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
