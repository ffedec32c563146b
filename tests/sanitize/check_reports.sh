#!/usr/bin/env bash
# Fails when a sanitizer reported anything during a run (`make sanitize`, `make tsan`).
#   check_reports.sh REPORT_DIR [LOG_OR_DIR...]
# REPORT_DIR holds the report files of ASAN_OPTIONS/TSAN_OPTIONS log_path; the logs are the
# run's outputs (ctest's LastTest.log, the daemon logs kept with PM_KEEP_LOGS), where UBSan's
# reports land: gcc's UBSan writes to stderr whatever log_path says.
set -uo pipefail
reports=$1
shift
pattern='runtime error:|ERROR: AddressSanitizer|ERROR: LeakSanitizer|WARNING: ThreadSanitizer'
found=0
for f in "$reports"/*; do
    [ -e "$f" ] || continue
    echo "==== sanitizer report $f"
    head -80 "$f"
    found=1
done
for log in "$@"; do
    [ -e "$log" ] || continue
    for f in $(grep -rlE "$pattern" "$log" 2>/dev/null); do
        echo "==== sanitizer report in $f"
        grep -E -A30 "$pattern" "$f" | head -80
        found=1
    done
done
if [ $found -ne 0 ]; then
    echo "check_reports: sanitizer reports found" >&2
    exit 1
fi
echo "check_reports: no sanitizer report ($reports $*)"
