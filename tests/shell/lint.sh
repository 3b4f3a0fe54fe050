#!/usr/bin/env bash
# Static checks that CI enforces: cppcheck finds nothing in the extension or
# the shim, and both build warning-free under -Wall -Wextra -Werror (the
# Makefiles set it; this rebuilds from scratch in a scratch copy).  TAP.
set -uo pipefail
cd "$(dirname "$0")/../.."
echo "1..3"
inc=$(pg_config --includedir-server)
out=$(cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
      --inline-suppr --suppress=missingIncludeSystem --suppress='*:/usr/include/*' -D__GNUC__ -I "$inc" -I extension/src \
      extension/src shim 2>&1)
if [ $? -eq 0 ]; then echo "ok 1 - cppcheck: extension/src and shim are clean"
else echo "not ok 1 - cppcheck: extension/src and shim are clean"; echo "$out" | sed 's/^/# /'; fi

scratch=$(mktemp -d /tmp/lattice-lint.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cp -r extension shim "$scratch/"
if out=$(make -s -C "$scratch/extension" clean all with_llvm=no 2>&1); then
    echo "ok 2 - extension builds with -Wall -Wextra -Werror"
else echo "not ok 2 - extension builds with -Wall -Wextra -Werror"; echo "$out" | tail -20 | sed 's/^/# /'; fi
if out=$(make -s -C "$scratch/shim" clean lattice-shim 2>&1); then
    echo "ok 3 - shim builds with -Wall -Wextra -Werror"
else echo "not ok 3 - shim builds with -Wall -Wextra -Werror"; echo "$out" | tail -20 | sed 's/^/# /'; fi
