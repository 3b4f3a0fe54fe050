#!/usr/bin/env bash
# META.json against the PGXN Meta Spec 1.0.0 (https://pgxn.org/spec/): the
# required keys, their types, semantic versions, and that it agrees with the
# control file.  TAP output for prove.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
m=META.json
semver='^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$'
t=0
check() { t=$((t+1)); if eval "$2" >/dev/null 2>&1; then echo "ok $t - $1"; else echo "not ok $t - $1"; fi; }
echo "1..10"
check "META.json is valid JSON" "jq -e . $m"
check "meta-spec version is 1.0.0" "jq -e '.\"meta-spec\".version == \"1.0.0\"' $m"
check "name, abstract, version, maintainer, license present" \
      "jq -e '(.name|type==\"string\") and (.abstract|type==\"string\") and (.version|type==\"string\") and (.maintainer|type==\"array\" or type==\"string\") and (.license|type==\"string\" or type==\"array\" or type==\"object\")' $m"
check "version is a semantic version" "jq -r .version $m | grep -Eq '$semver'"
check "license is one the spec names" \
      "jq -e '.license | IN(\"agpl_3\",\"apache_2_0\",\"bsd\",\"gpl_3\",\"mit\",\"mozilla_2_0\",\"postgresql\",\"open_source\",\"restricted\",\"unrestricted\",\"unknown\")' $m"
check "provides: each extension has file and semver version" \
      "jq -e '.provides | to_entries | all(.value.file and .value.version)' $m && ! jq -r '.provides[].version' $m | grep -Eqv '$semver'"
check "provided files exist" "jq -r '.provides[].file' $m | xargs ls"
check "prereqs require PostgreSQL 15" "jq -e '.prereqs.runtime.requires.PostgreSQL | startswith(\"15\")' $m"
check "release_status is stable, testing or unstable" "jq -e '.release_status | IN(\"stable\",\"testing\",\"unstable\")' $m"
check "version agrees with the control file" \
      "[ \"\$(jq -r .provides.lattice.version $m)\" = \"\$(sed -n \"s/^default_version = '\\(.*\\)'/\\1/p\" extension/lattice.control)\" ]"
