#!/usr/bin/python3
"""Fails when a test API key shows up in any output of a test run.

Usage: check_secrets.py PATH...   (files or directories, scanned recursively; missing ones are
skipped, but at least one must exist)

`make test` runs it over the ctest log (every test's whole output), the daemon logs that
pmharness keeps when PM_KEEP_LOGS is set, and the transcripts of status records, errors and
events that test_model_status writes there (<pid>-model-status-transcript.log). What a leak is: see pmsecrets.py. The matching
line is printed with the key's tail masked, so this check never leaks the key itself.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pmsecrets  # noqa: E402


def main(argv):
    paths = argv[1:]
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    existing = [p for p in paths if os.path.exists(p)]
    if not existing:
        print("check_secrets: none of %s exists" % " ".join(paths), file=sys.stderr)
        return 2
    files = sum(len(fs) for p in existing for _, _, fs in os.walk(p)) + sum(
        1 for p in existing if os.path.isfile(p))
    leaks = pmsecrets.scan_paths(existing)
    for path, needle, line in leaks:
        shown = pmsecrets.mask(line)
        print("check_secrets: LEAK of a test key (%s form) in %s: %s"
              % ("prefix" if needle.startswith("sk-") else "tail", path, shown))
    if leaks:
        print("check_secrets: %d leaks in %d files scanned" % (len(leaks), files))
        return 1
    print("check_secrets: no test key in %d files (%s)" % (files, " ".join(existing)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
