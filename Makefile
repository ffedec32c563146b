# provider-manager: the two commands of the README, and a few more.
#   make run    install missing Debian packages, build, start the daemon on embedded defaults
#   make test   install, build, run the whole suite through ctest
# Everything is built by CMake in ./build; this file only drives it.

BUILD ?= build
PYTHON ?= /usr/bin/python3
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPM_WERROR=ON

# Debian 12 packages the build and the tests need.
DEB_PACKAGES = build-essential cmake pkg-config libzmq3-dev libmsgpack-dev libyaml-dev \
	libcurl4-openssl-dev libjansson-dev libcmocka-dev python3 python3-zmq python3-msgpack python3-yaml \
	ca-certificates

.PHONY: all deps build run test bench clean format format-check container-test

all: build

# Installs only what is missing, so a machine that has everything makes no apt call.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" -ne 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j$(JOBS)

run: build
	./$(BUILD)/service/provider-manager --data-dir ./data

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

bench: build
	cmake --build $(BUILD) -j$(JOBS) --target bench-tools
	$(PYTHON) tests/bench/run.py --build $(BUILD)

clean:
	rm -rf $(BUILD)

# Builds the container image (docker/Dockerfile) with podman and tests it for real: non-root,
# CURVE, volume, stop time, health check, compose. As root; installs podman when missing and
# makes the base image with debootstrap (no image registry needed). See docker/README-container.md.
container-test:
	bash docker/container-test.sh

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')
