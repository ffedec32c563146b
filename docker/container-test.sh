#!/usr/bin/env bash
# container-test: builds the provider-manager image with podman and proves, against the real
# container, what docs/container.md promises:
#   - the daemon runs as a non-root user (uid 10001);
#   - CURVE is on by default: `pmctl health` answers from the host with a client key, and is
#     refused without one; a second container on the same network reaches it by name;
#   - a provider set over the wire survives replacing the container (data on the volume);
#   - `podman stop` ends it within 2 s with exit status 0 (tini hands SIGTERM to the daemon);
#   - the image's HEALTHCHECK passes (`podman healthcheck run`);
#   - the insecure switch (PM_SECURITY=insecure) works with a read-only root file system;
#   - docker/compose.yaml works (with podman-compose): the service with its volume and secrets,
#     and the example caller reaching it by service name over CURVE;
#   - the image size is printed and must stay under PM_CT_MAX_IMAGE_MB (150).
#
# Needs root and no registry of images: podman, runc, podman-compose and debootstrap come from Debian's
# packages (installed when missing), and the debian:bookworm-slim base image is made locally
# with debootstrap from the Debian mirror apt already uses, then cached:
#   /var/cache/provider-manager-ci/debian-bookworm-slim-v1.tar  (PM_CT_CACHE)
#   podman's image store (skipped when `podman image exists debian:bookworm-slim`).
# The build's apt-get runs inside the build containers, against the same mirror.
#
# podman is configured for this kind of machine through files under the work directory
# (PM_CT_WORKDIR, default build-container/), never /etc: CONTAINERS_CONF selects runc, the
# cgroupfs manager, the file events logger and explicit nofile/nproc limits (the default
# nofile of 1048576 is refused here).
#
# Environment: PM_CT_WORKDIR, PM_CT_CACHE, PM_CT_IMAGE (default localhost/provider-manager:test),
# PM_CT_JOBS (build parallelism, 2), PM_CT_UNIT_TESTS (the unit suites the build runs, a
# space-separated list; default: the Dockerfile's), PM_CT_MAX_IMAGE_MB (150), PM_CT_STORAGE_DRIVER (overlay or
# vfs; default: podman's choice, vfs when that does not work), PM_PMCTL (the host's pmctl; by
# default the image's own binary is copied out and run on the host), PM_CT_KEEP_IMAGE=0 removes
# the image at the end (default: kept, as the cache of the next run).
#
# Ends with "container-test: N passed, N failed"; exit status 0 only when all passed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${PM_CT_WORKDIR:-$ROOT/build-container}
CACHE=${PM_CT_CACHE:-/var/cache/provider-manager-ci}
IMAGE=${PM_CT_IMAGE:-localhost/provider-manager:test}
BUILDER_IMAGE=${IMAGE%:*}-builder:${IMAGE##*:}
JOBS=${PM_CT_JOBS:-2}
MAX_IMAGE_MB=${PM_CT_MAX_IMAGE_MB:-150}
BASE_IMAGE=docker.io/library/debian:bookworm-slim
BASE_TAR=$CACHE/debian-bookworm-slim-v1.tar
SUITE=bookworm

ID=pmct-$$
CTR=$ID-pm         # the daemon, CURVE on
CTR_RO=$ID-ro      # the daemon, insecure switch, read-only root
NET=$ID-net
VOL=$ID-data
VOL_RO=$ID-data-ro
PROJECT=pmct$$compose # podman-compose project: containers PROJECT_SERVICE_1
KEYS=""
ROOTFS=""
PMCTL=""

T0=$(date +%s)
PASSED=0
FAILED=0
TEST_NAME=container-test
# shellcheck source=test-lib.sh
. "$ROOT/docker/test-lib.sh"

say()
{
    printf '== [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"
}

# podman with the lines that are noise on a machine without systemd or syslog filtered from its
# stderr: podman 4.3 schedules HEALTHCHECKs with systemd timers (`podman healthcheck run`
# works without them) and aardvark-dns logs to syslog.
podman_q()
{
    local err status=0
    err=$(mktemp)
    podman "$@" 2>"$err" || status=$?
    grep -v 'systemd connection\|failed to connect to syslog' "$err" >&2 || true
    rm -f "$err"
    return "$status"
}

cleanup()
{
    local status=$?
    set +e
    for c in "$CTR" "$CTR_RO" "$ID-caller" "$ID-extract" "$ID-keygen"; do
        podman rm -f -v -t 0 "$c" >/dev/null 2>&1
    done
    for c in $(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" 2>/dev/null); do
        podman rm -f -v -t 0 "$c" >/dev/null 2>&1
    done
    podman volume rm -f "$VOL" "$VOL_RO" "${PROJECT}_pm-data" >/dev/null 2>&1
    podman network rm -f "$NET" "${PROJECT}_default" >/dev/null 2>&1
    [ -n "$KEYS" ] && rm -rf "$KEYS"
    [ -n "$ROOTFS" ] && rm -rf "$ROOTFS"
    if [ "${PM_CT_KEEP_IMAGE:-1}" = 0 ]; then
        podman rmi -f "$IMAGE" "$BUILDER_IMAGE" >/dev/null 2>&1
    fi
    return "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || die "run as root (rootful podman, apt-get, debootstrap)"

# ------------------------------------------------------------------------------- packages


# ---------------------------------------------------------------------------------- podman

configure_podman()
{
    mkdir -p "$CACHE"
    write_containers_conf
    if [ -n "${PM_CT_STORAGE_DRIVER:-}" ]; then
        write_storage_conf "$PM_CT_STORAGE_DRIVER"
    fi
    if ! podman info >"$WORK/podman-info.txt" 2>&1; then
        if [ -z "${PM_CT_STORAGE_DRIVER:-}" ]; then
            say "podman info failed with the default storage; trying vfs"
            write_storage_conf vfs
            podman info >"$WORK/podman-info.txt" 2>&1 ||
                die "podman does not work here: $(tail -3 "$WORK/podman-info.txt")"
        else
            die "podman does not work here: $(tail -3 "$WORK/podman-info.txt")"
        fi
    fi
    say "podman $(podman version --format '{{.Client.Version}}'), runtime runc, storage" \
        "$(podman info --format '{{.Store.GraphDriverName}}'), cgroupfs, nofile $NOFILE, nproc $NPROC"
}

write_storage_conf()
{
    local root=/var/lib/containers/storage
    [ "$1" = vfs ] && root=/var/lib/containers/storage-vfs
    cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "$1"
runroot = "/run/containers/storage-$1"
graphroot = "$root"
EOF
    export CONTAINERS_STORAGE_CONF="$WORK/storage.conf"
}

# ------------------------------------------------------------------------------ base image

# The Debian mirror apt uses on this machine (deb822 first, then sources.list).
debian_mirror()
{
    local uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -r /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {
                   for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Gives the debootstrapped tree the shape of the official debian:bookworm-slim: no docs, man
# pages or locales (now and for later installs), no apt lists or caches, and the same apt
# sources as this machine (with updates and security).
slim_rootfs()
{
    local r=$1 mirror=$2
    mkdir -p "$r/etc/dpkg/dpkg.cfg.d" "$r/etc/apt/apt.conf.d"
    cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
        >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
    printf 'Apt::AutoRemove::SuggestsImportant "false";\n' \
        >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$r/etc/apt/sources.list.d/debian.sources"
        rm -f "$r/etc/apt/sources.list"
    else
        cat >"$r/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb ${mirror%/debian}/debian-security $SUITE-security main
EOF
    fi
    find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
    rm -rf "$r"/usr/share/{man,info,locale,lintian,linda,groff}/*
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
    rm -rf "$r"/var/log/* "$r"/tmp/* "$r"/var/tmp/*
    rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
}

ensure_base_image()
{
    if podman image exists debian:bookworm-slim; then
        say "base image debian:bookworm-slim: present"
        return
    fi
    if [ ! -s "$BASE_TAR" ]; then
        local mirror
        mirror=$(debian_mirror)
        say "debootstrap --variant=minbase $SUITE from $mirror (cached in $CACHE)"
        ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
            die "debootstrap failed: $(tail -5 "$WORK/debootstrap.log")"
        slim_rootfs "$ROOTFS" "$mirror"
        tar --numeric-owner -C "$ROOTFS" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$ROOTFS"
        ROOTFS=""
    fi
    say "podman import $BASE_TAR as $BASE_IMAGE"
    podman import --quiet --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$BASE_TAR" "$BASE_IMAGE" >/dev/null
}

# ----------------------------------------------------------------------------------- image

build_image()
{
    say "podman build $IMAGE (the builder runs the unit suites; log: $WORK/build.log)"
    local t=$SECONDS
    local args=(--build-arg JOBS="$JOBS")
    if [ -n "${PM_CT_UNIT_TESTS+set}" ]; then
        args+=(--build-arg PM_UNIT_TESTS="$PM_CT_UNIT_TESTS")
    fi
    # The builder stage is tagged too, so that its layers stay the next run's cache when the
    # untagged leftovers of earlier builds are pruned below; the second build reuses them.
    if ! podman build --format docker --pull=never --network=host "${args[@]}" \
        -f "$ROOT/docker/Dockerfile" --target builder -t "$BUILDER_IMAGE" "$ROOT" \
        >"$WORK/build.log" 2>&1 ||
        ! podman build --format docker --pull=never --network=host "${args[@]}" \
            -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "$ROOT" >>"$WORK/build.log" 2>&1; then
        tail -40 "$WORK/build.log" >&2
        die "image build failed (full log: $WORK/build.log)"
    fi
    podman image prune -f >/dev/null 2>&1 || true
    grep -E 'tests passed|Test +#' "$WORK/build.log" || true
    say "image built in $((SECONDS - t)) s"
}

# ------------------------------------------------------------------------------ the tests

make_keys()
{
    KEYS=$(mktemp -d "$WORK/keys.XXXXXX")
    chmod 0755 "$KEYS"
    local name
    for name in pm-server caller host; do
        podman run --rm --no-healthcheck --name "$ID-keygen" --user 0 -v "$KEYS:/keys" \
            "$IMAGE" pmctl keygen /keys --name "$name" >/dev/null
    done
    mkdir -m 0755 "$KEYS/clients"
    mv "$KEYS/caller.pub" "$KEYS/host.pub" "$KEYS/clients/"
    # The daemon and the caller container run as uid 10001: their key files are theirs, 0400.
    chown 10001:10001 "$KEYS/pm-server.key" "$KEYS/caller.key"
    chmod 0400 "$KEYS/pm-server.key" "$KEYS/caller.key"
    chmod 0444 "$KEYS/pm-server.pub" "$KEYS"/clients/*.pub
}

# The host's pmctl: PM_PMCTL, else the image's own binary copied out (the host has the same
# Debian libraries), else pmctl in a container on the host's network namespace.
setup_host_pmctl()
{
    if [ -n "${PM_PMCTL:-}" ]; then
        PMCTL=$PM_PMCTL
    else
        podman create --no-healthcheck --name "$ID-extract" "$IMAGE" >/dev/null
        podman cp "$ID-extract:/usr/local/bin/pmctl" "$WORK/pmctl"
        podman rm -v "$ID-extract" >/dev/null
        PMCTL=$WORK/pmctl
    fi
    if ! "$PMCTL" --version >/dev/null 2>&1; then
        say "$PMCTL does not run on this host; using pmctl in a --network=host container"
        PMCTL=""
    fi
}

host_pmctl()
{
    if [ -n "$PMCTL" ]; then
        "$PMCTL" "$@"
    else
        podman run --rm --no-healthcheck --network host --user 0 -v "$KEYS:$KEYS:ro" "$IMAGE" \
            pmctl "$@"
    fi
}

run_daemon()
{
    local name=$1
    shift
    podman_q run -d --name "$name" -p 127.0.0.1::5555 -p 127.0.0.1::5556 "$@" "$IMAGE" >/dev/null
}

# Waits up to 30 s for the daemon's "ready" log line; fails early when the container exits.
wait_ready()
{
    local name=$1
    for _ in $(seq 1 300); do
        # (no pipe into grep -q: with pipefail, podman's SIGPIPE would fail the match)
        if grep -q 'ready:' <<<"$(podman logs "$name" 2>&1)"; then
            return 0
        fi
        if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
            echo "container $name exited:" >&2
            podman logs "$name" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    echo "container $name not ready after 30 s:" >&2
    podman logs "$name" >&2 || true
    return 1
}

host_endpoint()
{
    echo "tcp://$(podman port "$1" 5555/tcp | head -n 1)"
}

curve_args()
{
    echo --curve-server-key "$KEYS/pm-server.pub" --curve-client-key "$KEYS/$1.key"
}

start_curve_daemon()
{
    run_daemon "$CTR" --network "$NET" --network-alias provider-manager \
        -v "$VOL:/var/lib/provider-manager" \
        -v "$KEYS/pm-server.key:/run/secrets/pm-server.key:ro" \
        -v "$KEYS/clients:/run/secrets/pm-clients:ro"
    wait_ready "$CTR"
}

test_curve_container()
{
    podman network create "$NET" >/dev/null
    say "starting $CTR (CURVE on, volume $VOL, network $NET)"
    start_curve_daemon || die "the daemon container did not start"
    local ep
    ep=$(host_endpoint "$CTR")
    say "daemon ready, requests published on $ep"

    # Non-root: the exec'd shell and PID 1 (tini, whose child is the daemon).
    local uid pid1_uid daemon_uid
    uid=$(podman exec "$CTR" id -u)
    pid1_uid=$(podman exec "$CTR" awk '/^Uid:/ { print $2 }' /proc/1/status)
    daemon_uid=$(podman exec "$CTR" sh -c \
        'for s in /proc/[0-9]*/status; do
             if grep -q "^Name:[[:space:]]*provider-manag" "$s"; then awk "/^Uid:/ { print \$2 }" "$s"; fi
         done' | head -n 1)
    if [ "$uid" = 10001 ] && [ "$pid1_uid" = 10001 ] && [ "$daemon_uid" = 10001 ]; then
        ok "runs as non-root uid 10001 (exec id -u $uid, PID 1 uid $pid1_uid, daemon uid $daemon_uid)"
    else
        not_ok "non-root: exec id -u '$uid', PID 1 uid '$pid1_uid', daemon uid '$daemon_uid'"
    fi

    local mode
    mode=$(podman exec "$CTR" stat -c '%a %u' /var/lib/provider-manager)
    if [ "$mode" = "700 10001" ]; then
        ok "data volume /var/lib/provider-manager is 0700, owned by 10001"
    else
        not_ok "data volume mode/owner: $mode"
    fi

    # shellcheck disable=SC2046
    if out=$(host_pmctl --endpoint "$ep" $(curve_args host) health 2>&1); then
        ok "pmctl health from the host over CURVE: $(echo "$out" | tr '\n' ' ' | cut -c1-120)"
    else
        not_ok "pmctl health from the host over CURVE: $out"
    fi
    if host_pmctl --endpoint "$ep" --timeout 500 --retries 1 health >/dev/null 2>&1; then
        not_ok "a client without a CURVE key was answered"
    else
        ok "a client without a CURVE key is refused"
    fi

    if out=$(podman_q run --rm --no-healthcheck --name "$ID-caller" --network "$NET" \
        -e PM_ENDPOINT=tcp://provider-manager:5555 \
        -v "$KEYS/pm-server.pub:/run/secrets/pm-server.pub:ro" \
        -v "$KEYS/caller.key:/run/secrets/pm-caller.key:ro" \
        "$IMAGE" pmctl --curve-server-key /run/secrets/pm-server.pub \
        --curve-client-key /run/secrets/pm-caller.key health 2>&1); then
        ok "pmctl health from a second container by service name: $(echo "$out" | head -n 1)"
    else
        not_ok "pmctl health from a second container: $out"
    fi

    if out=$(podman_q healthcheck run "$CTR" 2>&1); then
        ok "HEALTHCHECK passes (podman healthcheck run: ${out:-healthy})"
    else
        not_ok "HEALTHCHECK: $out"
    fi

    # shellcheck disable=SC2046
    if out=$(host_pmctl --endpoint "$ep" $(curve_args host) set-provider ct-provider \
        --name "Container test" --url http://127.0.0.1:9/v1 --model ct-model=ctm 2>&1); then
        ok "set-provider ct-provider"
    else
        not_ok "set-provider ct-provider: $out"
    fi

    # podman stop: SIGTERM through tini; the daemon must be gone within 2 s, with status 0.
    local t1 t2 elapsed code
    t1=$(now_ms)
    podman_q stop -t 10 "$CTR" >/dev/null
    t2=$(now_ms)
    elapsed=$((t2 - t1))
    code=$(podman inspect --format '{{.State.ExitCode}}' "$CTR")
    if [ "$code" = 0 ] && [ "$elapsed" -lt 2000 ]; then
        ok "podman stop took $elapsed ms, exit code $code"
    else
        not_ok "podman stop took $elapsed ms (limit 2000), exit code $code"
        podman logs --tail 20 "$CTR" || true
    fi

    # A new container on the same volume: the provider must still be there.
    podman_q rm "$CTR" >/dev/null
    say "replacing $CTR with a new container on volume $VOL"
    if ! start_curve_daemon; then
        not_ok "the daemon did not start again on its volume"
        return
    fi
    ep=$(host_endpoint "$CTR")
    # shellcheck disable=SC2046
    if out=$(host_pmctl --endpoint "$ep" $(curve_args host) resolve ct-provider/ctm 2>&1) &&
        grep -q 'ct-model' <<<"$out"; then
        ok "ct-provider survived a new container through the volume (resolve: $(echo "$out" | head -n 1))"
    else
        not_ok "ct-provider after a new container: $out"
    fi
    if podman exec "$CTR" test -f /var/lib/provider-manager/openaicompat-providers.yaml; then
        ok "providers file is on the volume"
    else
        not_ok "no providers file on the volume"
    fi
}

test_insecure_read_only()
{
    say "starting $CTR_RO (PM_SECURITY=insecure, --read-only root, volume $VOL_RO)"
    if ! run_daemon "$CTR_RO" --read-only --read-only-tmpfs=false -e PM_SECURITY=insecure \
        -v "$VOL_RO:/var/lib/provider-manager" || ! wait_ready "$CTR_RO"; then
        not_ok "the insecure, read-only container did not start"
        return
    fi
    local ep
    ep=$(host_endpoint "$CTR_RO")
    if out=$(host_pmctl --endpoint "$ep" health 2>&1); then
        ok "insecure switch: pmctl health without keys, read-only root file system"
    else
        not_ok "insecure switch: pmctl health: $out"
    fi
    if out=$(podman_q healthcheck run "$CTR_RO" 2>&1); then
        ok "HEALTHCHECK passes with the insecure switch"
    else
        not_ok "HEALTHCHECK with the insecure switch: $out"
    fi
    podman_q stop -t 10 "$CTR_RO" >/dev/null
}

# docker/compose.yaml as it is, run by podman-compose with the test's image, keys and any free
# host ports: the service starts healthy and the example caller reaches it by service name.
test_compose()
{
    say "podman-compose -p $PROJECT -f docker/compose.yaml (log: $WORK/compose.log)"
    local name=${PROJECT}_provider-manager_1
    : >"$WORK/compose.log"
    if ! (cd "$ROOT/docker" && PM_IMAGE=$IMAGE PM_SECRETS_DIR=$KEYS PM_PORT="" \
        PM_EVENTS_PORT="" podman-compose -p "$PROJECT" -f compose.yaml up -d provider-manager) \
        >>"$WORK/compose.log" 2>&1 || ! wait_ready "$name"; then
        not_ok "compose: the provider-manager service did not start (see $WORK/compose.log)"
        return
    fi
    if out=$(podman_q healthcheck run "$name" 2>&1); then
        ok "compose: provider-manager service is healthy"
    else
        not_ok "compose: HEALTHCHECK: $out"
    fi
    out=$(cd "$ROOT/docker" && PM_IMAGE=$IMAGE PM_SECRETS_DIR=$KEYS PM_PORT="" PM_EVENTS_PORT="" \
        podman-compose -p "$PROJECT" -f compose.yaml run -T --rm --no-deps caller 2>&1) || true
    echo "$out" >>"$WORK/compose.log"
    if grep -q '^status[[:space:]]*ok' <<<"$out" && grep -q '^exit code: 0' <<<"$out"; then
        ok "compose: the example caller's pmctl health answered by service name over CURVE"
    else
        not_ok "compose: the example caller: $(grep -v 'systemd connection' <<<"$out" | tail -5)"
    fi
    (cd "$ROOT/docker" && PM_IMAGE=$IMAGE PM_SECRETS_DIR=$KEYS podman-compose -p "$PROJECT" \
        -f compose.yaml down -v) >>"$WORK/compose.log" 2>&1 || true
}

check_image_size()
{
    local bytes mb
    bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
    mb=$((bytes / 1000000))
    say "runtime image $IMAGE: $mb MB ($bytes bytes)"
    if [ "$mb" -lt "$MAX_IMAGE_MB" ]; then
        ok "image size $mb MB < $MAX_IMAGE_MB MB"
    else
        not_ok "image size $mb MB >= $MAX_IMAGE_MB MB"
    fi
}

# -------------------------------------------------------------------------------- main

ensure_packages podman runc conmon netavark aardvark-dns iptables debootstrap podman-compose
configure_podman
ensure_base_image
build_image
make_keys
setup_host_pmctl
test_curve_container
test_insecure_read_only
test_compose
check_image_size

say "done in $(($(date +%s) - T0)) s"
echo "container-test: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
