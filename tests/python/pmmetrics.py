"""pmmetrics: helpers of the metrics suites (test_metrics, test_dashboard): a daemon started
with --metrics-endpoint on a free loopback port, HTTP GETs against it, and a parser of the
Prometheus text format 0.0.4 written from the format's description (standard library only)."""

import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

import pmharness as h

HTTP_TIMEOUT = 5.0 * h.TIMEOUT_SCALE
PROM_TIMEOUT = 60.0 * h.TIMEOUT_SCALE
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def metrics_daemon(extra_args=(), **kwargs):
    """A started Daemon serving metrics on a free 127.0.0.1 port (d.metrics_port)."""
    port = h.free_port()
    d = h.Daemon(extra_args=["--metrics-endpoint", "127.0.0.1:%d" % port] + list(extra_args),
                 **kwargs)
    d.metrics_port = port
    return d


def start_metrics_daemon(test, extra_args=(), **kwargs):
    """Starts one (retrying on a lost port race, like Daemon.start) and registers cleanup."""
    for _attempt in range(5):
        d = metrics_daemon(extra_args, **kwargs)
        test.addCleanup(d.cleanup)
        try:
            d.start()
            return d
        except AssertionError:
            if "in use" not in d.stderr():
                raise
    raise AssertionError("no free metrics port in 5 attempts")


def get(port, path, method="GET", body=None, timeout=HTTP_TIMEOUT):
    """(status, headers dict, body bytes) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def unescape(value):
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse(text):
    """{"samples": {(name, ((label, value), ...) sorted): float}, "types": {family: type}}.
    Raises ValueError on a line that is not in the format."""
    samples, types = {}, {}
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            types[family] = kind
            continue
        if line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError("not a sample line: %r" % line)
        name, labels_text, value = m.group(1), m.group(3), m.group(4)
        labels = []
        if labels_text:
            pos = 0
            while pos < len(labels_text):
                lm = _LABEL.match(labels_text, pos)
                if not lm:
                    raise ValueError("bad labels in %r" % line)
                labels.append((lm.group(1), unescape(lm.group(2))))
                pos = lm.end()
        key = (name, tuple(sorted(labels)))
        if key in samples:
            raise ValueError("duplicate series %r" % (key,))
        samples[key] = float(value)
    return {"samples": samples, "types": types}


def scrape(port):
    status, headers, body = get(port, "/metrics")
    if status != 200:
        raise AssertionError("/metrics answered %d: %r" % (status, body[:200]))
    return headers, body.decode("utf-8")


def series(parsed, name, **match):
    """{labels dict as sorted tuple: value} of the samples of name whose labels include match."""
    out = {}
    for (n, labels), value in parsed["samples"].items():
        if n != name:
            continue
        d = dict(labels)
        if all(d.get(k) == v for k, v in match.items()):
            out[labels] = value
    return out


def value(parsed, name, **labels):
    """The one sample of name with exactly these labels; 0.0 when absent (a counter not yet
    counted has no series)."""
    return parsed["samples"].get((name, tuple(sorted(labels.items()))), 0.0)


def families(parsed):
    """Every family name exported (histogram sample suffixes folded into their family)."""
    names = set(parsed["types"])
    for (n, _labels) in parsed["samples"]:
        names.add(n)
    return names


def require(tool):
    """The Debian binary's path, or SkipTest (make test installs the prometheus package)."""
    path = shutil.which(tool, path="/usr/bin:/bin:/usr/local/bin")
    if not path:
        raise unittest.SkipTest("%s is not installed (make test installs the Debian package "
                                "prometheus)" % tool)
    return path


def start_prometheus(test, target_port, scrape_interval="1s"):
    """A real Prometheus on a free port scraping 127.0.0.1:target_port as job
    "provider-manager" (a generated config, a temporary database); stopped at cleanup.
    Returns its port once /-/ready answers."""
    binary = require("prometheus")
    tmp = tempfile.mkdtemp(prefix="pm-prom-")
    test.addCleanup(shutil.rmtree, tmp, True)
    config = os.path.join(tmp, "prometheus.yml")
    with open(config, "w") as f:
        f.write("global:\n  scrape_interval: %s\n  evaluation_interval: %s\n"
                "scrape_configs:\n  - job_name: provider-manager\n"
                "    static_configs:\n      - targets: ['127.0.0.1:%d']\n"
                % (scrape_interval, scrape_interval, target_port))
    port = h.free_port()
    log = open(os.path.join(tmp, "prometheus.log"), "wb")
    test.addCleanup(log.close)
    proc = subprocess.Popen(
        [binary, "--config.file=" + config, "--storage.tsdb.path=" + os.path.join(tmp, "db"),
         "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp)

    def stop():
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    test.addCleanup(stop)
    deadline = time.monotonic() + PROM_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(os.path.join(tmp, "prometheus.log"), "rb") as f:
                raise AssertionError("prometheus exited: %r" % f.read()[-2000:])
        try:
            if get(port, "/-/ready", timeout=1)[0] == 200:
                return port
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("prometheus not ready in %.0f s" % PROM_TIMEOUT)


def query(prom_port, expr):
    """The reply of Prometheus' /api/v1/query for expr (a dict: status, data or error)."""
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (prom_port,
                                                   urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 400 for a bad expression: its JSON says why
        return json.loads(e.read())
