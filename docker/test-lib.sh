# Shell helpers shared by the podman tests (docker/container-test.sh, docker/k8s/kube-test.sh),
# sourced after the caller has set TEST_NAME (the prefix of its summary and error lines) and
# PASSED=0 FAILED=0. bash only (arrays, here-strings).

now_ms()
{
    echo $(($(date +%s%N) / 1000000))
}

ok()
{
    PASSED=$((PASSED + 1))
    echo "PASS: $*"
}

not_ok()
{
    FAILED=$((FAILED + 1))
    echo "FAIL: $*"
}

die()
{
    echo "$TEST_NAME: ERROR: $*" >&2
    echo "$TEST_NAME: $PASSED passed, $((FAILED + 1)) failed"
    exit 1
}

# apt-get install, waiting while another apt/dpkg holds the lock.
apt_install()
{
    local out updated=0
    for _ in $(seq 1 120); do
        if out=$(DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "$@" 2>&1); then
            return 0
        fi
        if grep -q 'Could not get lock\|Unable to acquire the dpkg\|Unable to lock' <<<"$out"; then
            sleep 5
            continue
        fi
        if [ "$updated" = 0 ]; then
            updated=1
            apt-get update -qq 2>&1 | grep -v '^W:' || true
            continue
        fi
        echo "$out" >&2
        return 1
    done
    echo "$out" >&2
    return 1
}

# Installs whichever of the named Debian packages are missing (the caller's say() reports it).
ensure_packages()
{
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt_install "${missing[@]}" || die "cannot install ${missing[*]}"
    fi
}

# Writes $WORK/containers.conf for this kind of machine (runc, cgroupfs, file events, ulimits
# below the hard limits) and points podman at it (CONTAINERS_CONF). Sets NOFILE and NPROC.
write_containers_conf()
{
    mkdir -p "$WORK"
    NOFILE=$(ulimit -Hn)
    NPROC=$(ulimit -Hu)
    [ "$NOFILE" = unlimited ] || [ "$NOFILE" -gt 65536 ] && NOFILE=65536
    [ "$NPROC" = unlimited ] || [ "$NPROC" -gt 4096 ] && NPROC=4096
    cat >"$WORK/containers.conf" <<CONF
# Written by $TEST_NAME (docker/) for this machine; podman reads it through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_CONF="$WORK/containers.conf"
}
