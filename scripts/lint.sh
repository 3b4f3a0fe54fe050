#!/usr/bin/env bash
# The static checks, as TAP: `make lint` and the shell suite
# (tests/shell/lint.sh) both run this.
#
#   scripts/lint.sh             every check; exits 1 if any fails
#   scripts/lint.sh format      rewrites the C sources in place (make format)
#
# Checks: the C sources are formatted (clang-format; extension/.clang-format is
# PostgreSQL's style, shim/.clang-format the shim's, tests/fuzz/ follows the
# extension), cppcheck finds nothing, the extension and the shim build under
# -Wall -Wextra -Werror (their Makefiles set it; rebuilt from scratch in a
# scratch copy), shellcheck is clean over every shell script (.shellcheckrc)
# and eslint over the web assets, the tests and the scripts (eslint.config.mjs).
# The tools come from scripts/deps.sh (Debian packages, tests/node_modules).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# The C this repository formats: not shim/otlp/gen/ (protoc-c's, generated at
# build time) nor anything vendored.
c_sources() {
    compgen -G 'extension/src/*.[ch]'
    compgen -G 'shim/*.[ch]'
    compgen -G 'shim/compat/*.[ch]'
    compgen -G 'tests/fuzz/*.[ch]'
}

# Every shell script: *.sh, *.bash and the scripts without an extension whose
# #! names a shell (.ci/run); not node_modules, vendor/ or build output.
shell_scripts() {
    local f
    find . \( -name .git -o -name node_modules -o -path ./vendor -o -path ./.build -o -path ./.run \
              -o -path ./web/dist -o -path ./shim/otlp/gen -o -path ./tests/artifacts \) -prune \
         -o -type f \( -name '*.sh' -o -name '*.bash' -o ! -name '*.*' \) -print | LC_ALL=C sort |
    while IFS= read -r f; do
        case $f in
        *.sh|*.bash) echo "${f#./}" ;;
        *) head -n1 "$f" 2>/dev/null | grep -qE '^#!.*[/ ](ba|da)?sh( |$)' && echo "${f#./}" ;;
        esac
    done
}

if [ "${1:-}" = format ]; then
    command -v clang-format >/dev/null || { echo "clang-format is not installed (make deps)" >&2; exit 1; }
    mapfile -t files < <(c_sources)
    exec clang-format -i --style=file "${files[@]}"
fi

t=0
failed=0
jobs=$(nproc 2>/dev/null || echo 2)
scratch=$(mktemp -d /tmp/lattice-lint.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
# result DESC STATUS OUTPUT: one TAP line, the output (up to 100 lines) as comments on failure
result() {
    t=$((t + 1))
    if [ "$2" -eq 0 ]; then
        echo "ok $t - $1"
    else
        failed=$((failed + 1))
        echo "not ok $t - $1"
        [ -n "$3" ] && printf '%s\n' "$3" | head -100 | sed 's/^/# /'
    fi
}

echo "1..6"

# 1. clang-format: every file as the formatter would write it
if ! command -v clang-format >/dev/null; then
    result "C sources are clang-formatted" 1 "clang-format is not installed (make deps)"
else
    mapfile -t files < <(c_sources)
    if clang-format --dry-run -Werror --style=file "${files[@]}" >/dev/null 2>&1; then
        result "C sources are clang-formatted (${#files[@]} files)" 0 ""
    else
        out=$(echo "make format rewrites these:"
              for f in "${files[@]}"; do
                  n=$(clang-format --style=file "$f" | diff "$f" - | grep -c '^[<>]')
                  [ "$n" -gt 0 ] && echo "$f: $n lines differ"
              done)
        result "C sources are clang-formatted (${#files[@]} files)" 1 "$out"
    fi
fi

# 2. cppcheck
inc=$(pg_config --includedir-server)
out=$(cppcheck -j "$jobs" --quiet --error-exitcode=1 --enable=warning,performance,portability \
      --inline-suppr --suppress=missingIncludeSystem --suppress='*:/usr/include/*' -D__GNUC__ -I "$inc" -I extension/src \
      extension/src shim 2>&1)
result "cppcheck: extension/src and shim are clean" $? "$out"

# 3, 4. the builds, warning-free, from scratch in a copy
cp -r extension shim "$scratch/"
out=$({ make -s -C "$scratch/extension" clean with_llvm=no && make -s -j"$jobs" -C "$scratch/extension" all with_llvm=no; } 2>&1)
result "extension builds with -Wall -Wextra -Werror" $? "$out"
out=$({ make -s -C "$scratch/shim" clean && make -s -j"$jobs" -C "$scratch/shim" lattice-shim; } 2>&1)
result "shim builds with -Wall -Wextra -Werror" $? "$out"

# 5. shellcheck
mapfile -t scripts < <(shell_scripts)
if ! command -v shellcheck >/dev/null; then
    result "shellcheck: shell scripts are clean" 1 "shellcheck is not installed (make deps)"
else
    out=$(shellcheck -f gcc "${scripts[@]}" 2>&1)
    result "shellcheck: ${#scripts[@]} shell scripts are clean" $? "$out"
fi

# 6. eslint
if [ ! -x tests/node_modules/.bin/eslint ]; then
    result "eslint: web/, tests/ and scripts/ JavaScript is clean" 1 "tests/node_modules/.bin/eslint is missing (make deps)"
else
    out=$(tests/node_modules/.bin/eslint --max-warnings 0 . 2>&1)
    result "eslint: web/, tests/ and scripts/ JavaScript is clean" $? "$out"
fi

[ "$failed" -eq 0 ]
