#!/usr/bin/env bash
# Proves that the sanitizer options of a run report what they must (see selfcheck.c).
#   selfcheck.sh asan|tsan BUILD_DIR
# Uses ASAN_OPTIONS / UBSAN_OPTIONS / TSAN_OPTIONS as make exports them for the run (only
# log_path is redirected), builds selfcheck.c with the run's -fsanitize flags and requires a
# report for every kind of error (check_reports.sh must fail on each).
set -uo pipefail
kind=$1
build=$2
src=$(cd "$(dirname "$0")" && pwd)
dir=$build/selfcheck
rm -rf "$dir"
mkdir -p "$dir"
case $kind in
asan)
    flags=(-fsanitize=address,undefined -fno-sanitize-recover=all)
    modes="overflow leak undefined"
    ;;
tsan)
    flags=(-fsanitize=thread)
    modes="race"
    ;;
*)
    echo "usage: selfcheck.sh asan|tsan BUILD_DIR" >&2
    exit 2
    ;;
esac
gcc "${flags[@]}" -g -O1 -o "$dir/selfcheck" "$src/selfcheck.c" -lpthread || exit 1
failed=0
for mode in $modes; do
    out=$dir/$mode
    mkdir -p "$out/reports"
    ASAN_OPTIONS="${ASAN_OPTIONS:-}:log_path=$out/reports/asan" \
        TSAN_OPTIONS="${TSAN_OPTIONS:-}:log_path=$out/reports/tsan" \
        "$dir/selfcheck" "$mode" >"$out/stdout.log" 2>"$out/stderr.log"
    if bash "$src/check_reports.sh" "$out/reports" "$out/stderr.log" >/dev/null 2>&1; then
        echo "selfcheck: the $kind run would not report '$mode'" >&2
        failed=1
    else
        echo "selfcheck: the $kind run reports '$mode'"
    fi
done
exit $failed
