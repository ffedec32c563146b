#!/usr/bin/env bash
# `make valgrind`: the integration suites with the daemon under valgrind memcheck, and the
# in-process fuzz replays (front end + writer + discovery threads in one process) under it.
#   run.sh BUILD_DIR
# Every process writes its own log (build/valgrind/logs/*.log); the run fails when a suite
# fails or any log reports an error (invalid reads/writes, uninitialised values, definitely or
# indirectly lost memory). The harness's timeouts are scaled (PM_TIMEOUT_SCALE) since the
# daemon runs ~20x slower under memcheck.
set -uo pipefail
build=$(cd "$1" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
out=$build/valgrind
rm -rf "$out"
mkdir -p "$out/logs"
suites=${PM_VALGRIND_SUITES:-test_blackbox test_persistence test_security test_discovery}
memcheck=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
    --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect
    --num-callers=30 --suppressions="$src/tests/valgrind/pm.supp")

wrapper=$out/provider-manager
{
    echo '#!/bin/sh'
    printf 'exec'
    printf ' %q' "${memcheck[@]}" "--log-file=$out/logs/daemon.%p.log" \
        "$build/service/provider-manager"
    echo ' "$@"'
} >"$wrapper"
chmod +x "$wrapper"

status=0
start=$(date +%s)
(cd "$src/tests/python" && PM_DAEMON=$wrapper PM_PMCTL=$build/client/pmctl \
    PM_TIMEOUT_SCALE=${PM_TIMEOUT_SCALE:-8} PYTHONDONTWRITEBYTECODE=1 \
    /usr/bin/python3 -m unittest $suites) || status=1
for target in request yaml; do
    "${memcheck[@]}" --log-file="$out/logs/replay_$target.%p.log" \
        "$build/tests/fuzz/replay_$target" "$src/tests/fuzz/corpus/$target" \
        "$src/tests/fuzz/regressions/$target" >/dev/null 2>&1 || status=1
done

logs=$(ls "$out"/logs/*.log | wc -l)
bad=$(grep -lE 'ERROR SUMMARY: [1-9]' "$out"/logs/*.log)
for f in $bad; do
    echo "==== $f"
    sed -n '/^==[0-9]*== [A-Z].*/,$p' "$f" | head -80
done
[ -z "$bad" ] || status=1
echo "valgrind: $suites + fuzz replays, $logs processes checked in $(($(date +%s) - start)) s," \
    "$(echo $bad | wc -w) with errors"
exit $status
