"""Soak: a bounded load test against the real daemon and the fake upstream.

16 clients (PM_SOAK_CLIENTS) for PM_SOAK_SECONDS seconds (20 in `make test`; `make soak`
runs 60) send a mix of reads (85%), writes (12%: set_provider on a small set of keys, so the
state stays bounded, and set_short_name) and discoveries (3%: discover_models against
tests/fake_upstream.py on 127.0.0.1, then job_status until done). It reports requests served,
errors and the daemon's resident memory, and fails on:
  - any error: a reply that is not ok, a timeout, a discovery job that did not succeed;
  - memory growth: RSS at the end may exceed RSS after the warm-up (the first 20% of the
    run) by at most RSS_GROWTH_LIMIT_KB, 8 MiB (the state is bounded, so the memory must be
    too; measured: about +0.2 MiB over 20 s, from 17 MiB). Not enforced when the daemon runs
    under a sanitizer, whose allocator keeps freed memory on purpose.
The last line is the plain "N passed, N failed" summary of its checks.
"""

import os
import random
import threading
import time
import unittest

import pmharness as h
from pmsecrets import test_key
from pmupstream import FakeUpstream

SECONDS = float(os.environ.get("PM_SOAK_SECONDS", "20"))
CLIENTS = int(os.environ.get("PM_SOAK_CLIENTS", "16"))
RSS_GROWTH_LIMIT_KB = int(os.environ.get("PM_SOAK_RSS_GROWTH_KB", str(8 * 1024)))
WRITE_KEYS = ["soak-w%d" % i for i in range(8)]
UPSTREAM_KEY = test_key("soak")
UPSTREAM_MODELS = ["up-model-%02d" % i for i in range(12)]
FIXED_MODELS = {"fixed-%02d" % i: "fx%02d" % i for i in range(20)}


def instrumented(pid):
    """True when the daemon runs under a sanitizer or valgrind: ASan's quarantine (256 MiB)
    and valgrind's shadow memory grow by design, so RSS is reported but not bounded then."""
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    return any(lib in maps for lib in ("libasan", "libtsan", "libubsan", "vgpreload"))


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.served = 0
        self.errors = []
        self.ops = {}
        self.jobs = 0

    def ok(self, op):
        with self.lock:
            self.served += 1
            self.ops[op] = self.ops.get(op, 0) + 1

    def error(self, what):
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(what)
            else:
                self.errors.append("...")
                del self.errors[20:-1]


class SoakTest(unittest.TestCase):

    def setUp(self):
        self.up = FakeUpstream({"scenarios": {"soak": {"models": UPSTREAM_MODELS,
                                                       "key": UPSTREAM_KEY}}})
        self.addCleanup(self.up.close)
        self.d = h.Daemon(extra_args=["--workers", "4", "--log-level", "warn"])
        self.addCleanup(self.d.cleanup)
        self.d.start()
        c = self.d.client()
        c.ok("set_provider", {"provider": "soak-up", "name": "Soak upstream",
                              "base_api_url": self.up.url("soak"), "api_key": UPSTREAM_KEY})
        c.ok("set_provider", {"provider": "soak-fixed", "name": "Fixed",
                              "base_api_url": "http://127.0.0.1:9/v1",
                              "valid_models": FIXED_MODELS})
        for key in WRITE_KEYS:
            c.ok("set_provider", {"provider": key, "name": key,
                                  "base_api_url": "http://127.0.0.1:9/v1"})

    def client_loop(self, i, stats, deadline):
        rng = random.Random(1000 + i)
        c = self.d.client(timeout=10.0)
        fixed = sorted(FIXED_MODELS)
        while time.monotonic() < deadline:
            r = rng.random()
            try:
                if r < 0.85:
                    self.read(c, rng, fixed, stats)
                elif r < 0.97:
                    self.write(c, rng, fixed, stats)
                else:
                    self.discover(c, stats, deadline)
            except h.Timeout:
                stats.error("client %d: timeout" % i)
            except AssertionError as e:
                stats.error("client %d: %s" % (i, str(e)[:200]))

    def call_ok(self, c, stats, op, args=None):
        rep = c.call(op, args if args is not None else {})
        if not (isinstance(rep, dict) and rep.get("ok") is True):
            raise AssertionError("%s failed: %r" % (op, rep))
        stats.ok(op)
        return rep["result"]

    def read(self, c, rng, fixed, stats):
        choice = rng.randrange(9)
        if choice == 0:
            self.call_ok(c, stats, "get", {"provider_name": rng.choice(WRITE_KEYS + ["openai"])})
        elif choice == 1:
            self.call_ok(c, stats, "keys")
        elif choice == 2:
            self.call_ok(c, stats, "values")
        elif choice == 3:
            m = rng.choice(fixed)
            got = self.call_ok(c, stats, "get_api_for_model_string",
                               {"model_string": "soak-fixed/" + m})
            if got[1] != m:
                raise AssertionError("resolved %r to %r" % (m, got[1]))
        elif choice == 4:
            m = rng.choice(fixed)
            got = self.call_ok(c, stats, "validate_model", {"model_string": FIXED_MODELS[m]})
            if got != m:
                raise AssertionError("short name %r resolved to %r" % (FIXED_MODELS[m], got))
        elif choice == 5:
            self.call_ok(c, stats, "find_model", {"name": rng.choice(fixed)})
        elif choice == 6:
            self.call_ok(c, stats, "merged_models")
        elif choice == 7:
            self.call_ok(c, stats, "get_available_models", {"filter_by_provider": "soak-fixed"})
        else:
            self.call_ok(c, stats, "health")

    def write(self, c, rng, fixed, stats):
        if rng.random() < 0.7:
            key = rng.choice(WRITE_KEYS)
            models = {"w-%d" % rng.randrange(50): "s-%d" % rng.randrange(50)
                      for _ in range(rng.randrange(1, 8))}
            self.call_ok(c, stats, "set_provider", {
                "provider": key, "name": "W %d" % rng.randrange(1000),
                "base_api_url": "http://127.0.0.1:9/v1", "valid_models": models,
                "api_key": test_key("soak-w") if rng.random() < 0.5 else None})
        else:
            m = rng.choice(fixed)
            # Only ever set a model's original short name: concurrent readers resolve them.
            self.call_ok(c, stats, "set_short_name",
                         {"provider": "soak-fixed", "long_name": m, "short_name": FIXED_MODELS[m]})

    def discover(self, c, stats, deadline):
        job = self.call_ok(c, stats, "discover_models",
                           {"provider": "soak-up", "force_refresh": True})["job"]
        while True:
            st = self.call_ok(c, stats, "job_status", {"job": job})
            if st["state"] == "done":
                if st["success"] is not True:
                    raise AssertionError("discovery job failed: %r" % st["messages"])
                with stats.lock:
                    stats.jobs += 1
                return
            if time.monotonic() > deadline + 30:
                raise AssertionError("discovery job %s never finished" % job)
            time.sleep(0.02)

    def test_soak(self):
        stats = Stats()
        pid = self.d.proc.pid
        start = time.monotonic()
        deadline = start + SECONDS
        samples = []
        rss_start = rss_kb(pid)
        sanitized = instrumented(pid)
        threads = [threading.Thread(target=self.client_loop, args=(i, stats, deadline),
                                    daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        warm_until = start + SECONDS * 0.2
        rss_warm = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            samples.append(rss_kb(pid))
            if rss_warm is None and time.monotonic() >= warm_until:
                rss_warm = samples[-1]
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - start
        rss_end = rss_kb(pid)
        health = self.d.client().ok("health")
        rc, _ = self.d.stop()
        if rss_warm is None:
            rss_warm = rss_start
        checks = {
            "no errors": not stats.errors,
            "served requests": stats.served > CLIENTS * 10,
            "discoveries ran": stats.jobs > 0,
            "rss bounded": sanitized or rss_end - rss_warm <= RSS_GROWTH_LIMIT_KB,
            "clean stop": rc == 0,
        }
        print("\nsoak: %d clients, %.1f s: %d requests served (%.0f/s), %d errors, "
              "%d discovery jobs, state_version %d"
              % (CLIENTS, elapsed, stats.served, stats.served / elapsed, len(stats.errors),
                 stats.jobs, health["state_version"]))
        print("soak: ops %s" % ", ".join("%s=%d" % kv for kv in sorted(stats.ops.items())))
        print("soak: RSS start %d KiB, after warm-up %d KiB, end %d KiB, peak %d KiB "
              "(growth after warm-up %+d KiB, limit %d KiB)"
              % (rss_start, rss_warm, rss_end, max(samples + [rss_end]), rss_end - rss_warm,
                 RSS_GROWTH_LIMIT_KB)
              + (" (not enforced: the daemon runs under a sanitizer)" if sanitized else ""))
        for e in stats.errors:
            print("soak: error: %s" % e)
        failed = [name for name, ok in checks.items() if not ok]
        print("soak: %d passed, %d failed" % (len(checks) - len(failed), len(failed)))
        self.assertEqual(failed, [], "soak checks failed: %s; errors: %r"
                         % (failed, stats.errors[:5]))


if __name__ == "__main__":
    unittest.main()
