# provider-manager: the two commands of the README, and a few more.
#   make run    install missing Debian packages, build, start the daemon on embedded defaults
#   make test   install, build, run the whole suite through ctest, then check that no test
#               API key shows up in any of its output (tests/python/check_secrets.py)
# Hardening (docs/testing.md), each also run by .ci/run:
#   make fuzz       libFuzzer (clang, ASan+UBSan) on the request, YAML and clone targets, FUZZ_SECONDS each
#   make sanitize   the whole suite built with ASan+UBSan (preset asan-ubsan, build-asan/)
#   make tsan       the concurrency suites built with ThreadSanitizer (preset tsan, build-tsan/)
#   make valgrind   the integration suites with the daemon under valgrind memcheck
#   make soak       the soak test for SOAK_SECONDS (60; `make test` runs it for 20)
# Everything is built by CMake in ./build (and the build-* dirs above); this file only drives it.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

BUILD ?= build
PYTHON ?= /usr/bin/python3
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPM_WERROR=ON

# Debian 12 packages the build and the tests need.
DEB_PACKAGES = build-essential cmake pkg-config libzmq3-dev libmsgpack-dev libyaml-dev \
	libcurl4-openssl-dev libjansson-dev libcmocka-dev libmicrohttpd-dev python3 python3-zmq \
	python3-msgpack python3-yaml ca-certificates

# Tools of the test suite (strace: test_secrets' system-call check; prometheus: a real
# Prometheus scrapes the daemon in test_metrics, and its promtool checks the text) and of the
# hardening runs.
TEST_PACKAGES = strace prometheus
FUZZ_PACKAGES = clang libclang-rt-14-dev
VALGRIND_PACKAGES = valgrind

FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 60
ASAN_BUILD = build-asan
TSAN_BUILD = build-tsan
FUZZ_BUILD = build-fuzz
# The suites that exercise threads: the writer, the discovery workers, readers in the front
# end during writes and discoveries, the in-process front end + writer of the fuzz replay, the
# client replica's readers while it applies changes, the read-replica daemon (test_follower,
# py_test_replica_daemon), and the replica following the real daemon
# through 10,000 writes from 4 threads, a SIGKILL and a restart (test_pmclient_replica_live).
# CMakePresets.json's tsan test preset has the same list (tests/python/test_docs.py checks).
TSAN_TESTS = ^(test_discovery_worker|test_pmclient_replica|test_pmclient_replica_live|test_discovery|test_writer|test_front|fuzz_replay_request|py_test_robustness|py_test_discovery|py_test_soak|py_test_security|py_test_model_status|py_test_roles|test_follower|py_test_replica_daemon)$$
SANITIZER_LOGS = sanitizer-logs
# ASan/LSan/TSan reports go to files (log_path), so a report from a daemon that a test stops
# with SIGKILL is not lost either; UBSan's go to stderr (gcc), kept by ctest and PM_KEEP_LOGS.
# tests/sanitize/check_reports.sh fails the target on any of them; selfcheck.sh first proves
# that these options do report each kind of error.
ASAN_ENV = ASAN_OPTIONS=log_path=$(abspath $(ASAN_BUILD))/$(SANITIZER_LOGS)/asan:detect_leaks=1:detect_stack_use_after_return=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
TSAN_ENV = TSAN_OPTIONS=log_path=$(abspath $(TSAN_BUILD))/$(SANITIZER_LOGS)/tsan:suppressions=$(CURDIR)/tests/tsan.supp:second_deadlock_stack=1:halt_on_error=0:ignore_noninstrumented_modules=1

.PHONY: all deps build run test bench clean format format-check container-test kube-test test-deps \
	fuzz fuzz-deps sanitize tsan valgrind valgrind-deps soak check-secrets

all: build

# Installs only what is missing, so a machine that has everything makes no apt call.
# $(call install-missing,PACKAGES)
define install-missing
	@missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" -ne 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

test-deps:
	$(call install-missing,$(TEST_PACKAGES))

fuzz-deps:
	$(call install-missing,$(FUZZ_PACKAGES))

valgrind-deps:
	$(call install-missing,$(VALGRIND_PACKAGES))

deps:
	$(call install-missing,$(DEB_PACKAGES))

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

run: build
	./$(BUILD)/service/provider-manager --data-dir ./data

# The whole output of the run is kept (build/test-output.log, and every test's output in
# ctest's LastTest.log), and so is every daemon's log (PM_KEEP_LOGS): check-secrets greps them
# all for the test API keys.
test: build test-deps
	rm -rf $(abspath $(BUILD))/pm-logs
	cd $(BUILD) && PM_KEEP_LOGS=$(abspath $(BUILD))/pm-logs ctest --output-on-failure -j$(JOBS) 2>&1 | tee test-output.log
	$(MAKE) --no-print-directory check-secrets

check-secrets:
	$(PYTHON) tests/python/check_secrets.py $(BUILD)/test-output.log \
		$(BUILD)/Testing/Temporary/LastTest.log $(BUILD)/pm-logs

# Warnings stay errors here too: clang 14 compiles the whole tree without a warning under
# these flags. Only the fuzz targets are built, because the shared libpmclient cannot link
# in this build dir: its --no-undefined refuses the sanitizer runtime's symbols, which only an
# executable brings in.
fuzz: deps fuzz-deps
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPM_WERROR=ON -DPM_FUZZ=ON \
		"-DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
	cmake --build $(FUZZ_BUILD) -j$(JOBS) --target fuzz_request fuzz_yaml fuzz_clone
	bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

sanitize: deps test-deps
	cmake --preset asan-ubsan
	cmake --build $(ASAN_BUILD) -j$(JOBS)
	rm -rf $(ASAN_BUILD)/$(SANITIZER_LOGS) $(abspath $(ASAN_BUILD))/pm-logs
	mkdir -p $(ASAN_BUILD)/$(SANITIZER_LOGS)
	$(ASAN_ENV) bash tests/sanitize/selfcheck.sh asan $(ASAN_BUILD)
	cd $(ASAN_BUILD) && $(ASAN_ENV) PM_KEEP_LOGS=$(abspath $(ASAN_BUILD))/pm-logs \
		ctest --output-on-failure -j$(JOBS) 2>&1 | tee test-output.log
	bash tests/sanitize/check_reports.sh $(ASAN_BUILD)/$(SANITIZER_LOGS) \
		$(ASAN_BUILD)/Testing/Temporary/LastTest.log $(ASAN_BUILD)/pm-logs
	$(MAKE) --no-print-directory check-secrets BUILD=$(ASAN_BUILD)

tsan: deps
	cmake --preset tsan
	cmake --build $(TSAN_BUILD) -j$(JOBS)
	rm -rf $(TSAN_BUILD)/$(SANITIZER_LOGS) $(abspath $(TSAN_BUILD))/pm-logs
	mkdir -p $(TSAN_BUILD)/$(SANITIZER_LOGS)
	$(TSAN_ENV) bash tests/sanitize/selfcheck.sh tsan $(TSAN_BUILD)
	cd $(TSAN_BUILD) && $(TSAN_ENV) PM_SOAK_SECONDS=10 PM_KEEP_LOGS=$(abspath $(TSAN_BUILD))/pm-logs \
		ctest --output-on-failure -j$(JOBS) -R '$(TSAN_TESTS)' 2>&1 | tee test-output.log
	bash tests/sanitize/check_reports.sh $(TSAN_BUILD)/$(SANITIZER_LOGS) \
		$(TSAN_BUILD)/Testing/Temporary/LastTest.log $(TSAN_BUILD)/pm-logs

valgrind: build valgrind-deps
	bash tests/valgrind/run.sh $(BUILD)

soak: build
	cd tests/python && PM_DAEMON=$(abspath $(BUILD))/service/provider-manager \
		PM_SOAK_SECONDS=$(SOAK_SECONDS) $(PYTHON) -m unittest -v test_soak

bench: build
	cmake --build $(BUILD) -j$(JOBS) --target bench-tools
	$(PYTHON) tests/bench/run.py --build $(BUILD)

clean:
	rm -rf $(BUILD)

# Builds the container image (docker/Dockerfile) with podman and tests it for real: non-root,
# CURVE, volume, stop time, health check, compose. As root; installs podman when missing and
# makes the base image with debootstrap (no image registry needed). See docs/container.md.
container-test:
	bash docker/container-test.sh

# Runs docker/k8s/*.yaml (primary StatefulSet, read-replica Deployment, Services, Secrets) with
# podman kube play, deriving what podman 4.3 lacks from the same files; needs the image that
# container-test builds. As root. See docs/kubernetes.md.
kube-test:
	bash docker/k8s/kube-test.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')
