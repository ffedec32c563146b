#!/usr/bin/env bash
# Runs every libFuzzer target of tests/fuzz for a bounded time (`make fuzz`, .ci/run).
#   run.sh BUILD_DIR [SECONDS]     (default 60 s per target)
# For each target: first replays the seed corpus and every kept crasher once, then fuzzes a
# copy of the seeds for SECONDS. Fails on any crash, leak, sanitizer report or timeout, and
# says where the crashing input is and how to keep it as a regression test.
set -uo pipefail
build=$1
seconds=${2:-60}
src=$(cd "$(dirname "$0")" && pwd)
out=$build/fuzz-out
rm -rf "$out"
mkdir -p "$out"
status=0
# glibc's resolver state, seen as a leak while a discovery thread still lives (lsan.supp).
export LSAN_OPTIONS="suppressions=$src/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

targets=(request yaml clone)
for target in "${targets[@]}"; do
    bin=$build/tests/fuzz/fuzz_$target
    if [ ! -x "$bin" ]; then
        echo "fuzz: $bin is missing (configure with -DPM_FUZZ=ON, clang)" >&2
        exit 1
    fi
    # 1. The seeds and the kept crashers, once each (-runs=0 runs what it loads and stops).
    inputs=("$src/corpus/$target")
    for f in "$src/regressions/$target"/*; do
        [ "$(basename "$f")" = README.md ] || inputs+=("$f")
    done
    if ! "$bin" -runs=0 -close_fd_mask=2 "${inputs[@]}" >"$out/$target-replay.log" 2>&1; then
        echo "fuzz_$target: a seed or a kept crasher fails again:" >&2
        tail -60 "$out/$target-replay.log" >&2
        status=1
        continue
    fi
    # 2. Fuzz a copy of the seeds (the committed corpus stays as it is).
    corpus=$out/corpus-$target
    mkdir -p "$corpus"
    cp "$src/corpus/$target"/* "$corpus"/
    seeds=$(ls "$corpus" | wc -l)
    "$bin" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 -max_len=4096 \
        -dict="$src/$target.dict" -artifact_prefix="$out/crash-$target-" -print_final_stats=1 \
        -close_fd_mask=2 "$corpus" >"$out/$target.log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/$target.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$target.log")
    added=$(sed -n 's/^stat::new_units_added: *//p' "$out/$target.log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$out/$target.log")
    cov=$(grep -E '^#[0-9]+[[:space:]]+(DONE|INITED)' "$out/$target.log" | tail -1 |
        sed -n 's/.*cov: \([0-9]*\) ft: \([0-9]*\).*/cov \1, ft \2/p')
    files=$(ls "$corpus" | wc -l)
    bytes=$(du -sb "$corpus" | cut -f1)
    echo "fuzz_$target: ${seconds} s, ${runs:-?} runs, ${rate:-?} exec/s, ${cov:-coverage ?}," \
        "corpus $seeds seeds -> $files inputs ($bytes bytes), ${added:-?} new, peak RSS ${rss:-?} MB"
    if [ $rc -ne 0 ]; then
        status=1
        echo "fuzz_$target: FAILED (exit $rc); the end of its log:" >&2
        grep -v '^"' "$out/$target.log" | tail -80 >&2
        for crash in "$out"/crash-"$target"-*; do
            [ -e "$crash" ] || continue
            echo "fuzz_$target: crashing input: $crash" >&2
            echo "  keep it: cp $crash $src/regressions/$target/<what-it-broke>" >&2
            echo "  replay it: $build/tests/fuzz/replay_$target $crash" >&2
        done
    fi
done
[ $status -eq 0 ] && echo "fuzz: ${#targets[@]} targets, no crash"
exit $status
