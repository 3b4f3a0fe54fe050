# Lattice: the PostgreSQL extension, the shim, the web assets and every suite.
#
#   make run     build, install, start a local cluster + shim, seed a demo tenant
#   make test    every suite; ends with "N passed, N failed"
#   make bench   benchmarks (figures and ratios, not pass/fail)
#   make fuzz    every libFuzzer target for FUZZ_SECONDS (default 120) each
#   make test-asan   the HTTP suite against an ASan + UBSan shim
#   make valgrind    the shim under valgrind with simulated plugins
#   make bench-load  200 simulated plugins for 10 minutes (tests/load/)
#   make test-citus  the Citus suite: coordinator + 2 workers (builds Citus from vendor/ if missing)
#   make lint    the static checks, as TAP: clang-format, cppcheck, -Werror builds, shellcheck, eslint
#   make format  clang-format the C in place (extension/.clang-format, shim/.clang-format)

EXT_MAKE = $(MAKE) -C extension with_llvm=no

.PHONY: all deps extension install shim web run test test-citus bench bench-load installcheck clean

all: extension shim web

deps:
	@scripts/deps.sh

extension:
	$(EXT_MAKE)

install: extension
	$(EXT_MAKE) install >/dev/null

shim:
	$(MAKE) -C shim

web:
	@if [ -f web/package.json ]; then scripts/build-web.sh; fi

run: deps install shim web
	scripts/run.sh

test: deps install shim web
	tests/run.sh

test-citus: deps install
	scripts/citus.sh
	tests/run.sh citus

bench: deps install shim
	bench/run.sh

# 200 simulated plugins for 10 minutes (tests/load/), on a throwaway cluster
bench-load: deps install shim
	LATTICE_LOAD_SECONDS=$${LATTICE_LOAD_SECONDS:-600} LATTICE_LOAD_PLUGINS=$${LATTICE_LOAD_PLUGINS:-200} \
	    LATTICE_LOAD_REPORT=$(CURDIR)/.build/load-report.txt tests/run.sh load; s=$$?; \
	    cat .build/load-report.txt 2>/dev/null; exit $$s

# pg_regress against the cluster described by PGHOST/PGPORT (tests/run.sh sets them)
installcheck:
	$(EXT_MAKE) installcheck

clean:
	$(EXT_MAKE) clean
	$(MAKE) -C shim clean
	rm -rf .build

# Fuzzing, sanitizers and valgrind: tests/fuzz/
FUZZ_SECONDS ?= 120
fuzz: deps
	$(MAKE) -C tests/fuzz run FUZZ_SECONDS=$(FUZZ_SECONDS)

test-asan: deps install
	tests/fuzz/tools/test_asan.sh

VALGRIND_SECONDS ?= 10 60
valgrind: deps install shim
	LATTICE_VALGRIND_SECONDS="$(VALGRIND_SECONDS)" tests/fuzz/tools/valgrind_run.sh

.PHONY: fuzz test-asan valgrind

# Static checks and formatting: scripts/lint.sh (the shell suite runs it too, tests/shell/lint.sh)
lint: deps
	scripts/lint.sh

format: deps
	scripts/lint.sh format

.PHONY: lint format
