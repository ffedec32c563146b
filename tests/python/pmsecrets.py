"""pmsecrets: the API keys the test suites hand to the daemon, and the check that none of them
ever shows up where it must not (logs, error messages, job messages, crash output, files).

Every test key is "sk-test-<label>-" followed by one fixed secret TAIL. A masked key shows at
most its first 3 and last 4 bytes ("sk-...9Xv="), so the whole TAIL can only appear in an
output when a key leaked. The TAIL holds '/', '+' and '=' so that its URL-encoded and
JSON-escaped forms differ from the raw one; scan() looks for all of them.

The other suites' keys ("sk-bbx-...") predate this module: in daemon logs, where no key may
appear even partly, scan(..., daemon_log=True) also looks for their "sk-bbx-" and "sk-test-"
prefixes (a masked key keeps only "sk-"). The same strict scan applies to the transcripts the
model-status suite keeps (status records, provider status, job status, error messages and
"models" events, one JSON line each, in "<pid>-model-status-transcript.log"): nothing in them
comes from a key, so not even a key's prefix may show up there.
"""

import os
import urllib.parse

TEST_KEY_PREFIX = "sk-test-"
TAIL = "Zq8/Wt+3Lm=9Xv"


def test_key(label):
    """A test API key: sk-test-<label>-<TAIL>."""
    return "%s%s-%s" % (TEST_KEY_PREFIX, label, TAIL)


def needles(daemon_log=False):
    """The strings whose presence means a leak: the tail raw, URL-encoded (both hex cases and
    the form-encoding of '+'/space), and JSON-escaped ('/' as '\\/')."""
    quoted = urllib.parse.quote(TAIL, safe="")
    forms = {
        TAIL,
        quoted,
        quoted.lower(),
        urllib.parse.quote_plus(TAIL, safe=""),
        TAIL.replace("/", "\\/"),
        urllib.parse.quote(TAIL, safe="/"),
    }
    if daemon_log:
        forms |= {"sk-bbx-", TEST_KEY_PREFIX}
    return sorted(forms)


def scan_text(text, daemon_log=False):
    """[(needle, line)] for every needle found in text (a str or bytes)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = []
    for needle in needles(daemon_log):
        start = text.find(needle)
        if start >= 0:
            begin = text.rfind("\n", 0, start) + 1
            end = text.find("\n", start)
            found.append((needle, text[begin:end if end >= 0 else len(text)][:300]))
    return found


def scan_obj(obj, daemon_log=False):
    """[(needle, text)] for every needle in a decoded reply or event (maps, lists, str and
    bytes, map keys included): a status record, an error or a models event is checked whole,
    whatever field a key hides in."""
    found = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, (str, bytes, bytearray)):
            found.extend(scan_text(bytes(item) if isinstance(item, bytearray) else item,
                                   daemon_log))
    return found


def mask(text):
    """text with every test key form replaced by <KEY>: safe to print in a failure message."""
    for needle in needles(daemon_log=True):
        text = text.replace(needle, "<KEY>")
    return text


def _is_daemon_log(path):
    """Daemon stderr/stdout copies (pmharness PM_KEEP_LOGS), sanitizer logs, and the
    model-status suite's transcripts: the outputs where not even a key prefix may appear."""
    name = os.path.basename(path)
    return (name.startswith(("stderr-", "stdout-")) or "-stderr-" in name
            or "-stdout-" in name or name.endswith("-transcript.log"))


def scan_paths(paths):
    """Scans files and (recursively) directories; returns [(path, needle, line)]."""
    leaks = []
    for root in paths:
        if os.path.isdir(root):
            files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
        elif os.path.exists(root):
            files = [root]
        else:
            continue
        for path in sorted(files):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for needle, line in scan_text(data, daemon_log=_is_daemon_log(path)):
                leaks.append((path, needle, line))
    return leaks
