"""docker/grafana-dashboard.json is built on what the daemon really exports: every metric
family named in any of its expressions is exported by a running daemon (scraped here), every
label an expression filters or groups by exists on the family it names, and every expression
is valid PromQL that a real Prometheus (Debian package `prometheus`), scraping that daemon,
evaluates without an error.

Run: python3 -m unittest -v test_dashboard   (in tests/python; PM_DAEMON set by ctest)
"""

import json
import os
import re
import time
import unittest

import pmharness as h
import pmmetrics as pm
import pmsecrets
from pmupstream import FakeUpstream

DASHBOARD = os.path.join(h.SOURCE_DIR, "docker", "grafana-dashboard.json")
FAMILY = re.compile(r"\b((?:provider_manager|process)_[a-z_]+)\b")
# {label="..."} / {label=~"..."} / {label!="..."} and by (a, b) / without (a)
SELECTOR = re.compile(r"\b((?:provider_manager|process)_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every series it scrapes, and a histogram's bucket bound.
TARGET_LABELS = {"job", "instance", "le"}
# Grafana's variables, as Grafana would expand them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": ".+"}


def expressions(node):
    """Every "expr" (panel targets) and templating "query" of the dashboard JSON."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append(value)
            elif key == "query" and isinstance(value, str) and "(" in value:
                out.append(value)
            else:
                out.extend(expressions(value))
    elif isinstance(node, list):
        for item in node:
            out.extend(expressions(item))
    return out


def family_of(name, exported):
    if name in exported:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[:-len(suffix)] in exported:
            return name[:-len(suffix)]
    return None


class TestDashboard(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        with open(DASHBOARD, encoding="utf-8") as f:
            cls.dashboard = json.load(f)
        cls.exprs = expressions(cls.dashboard)

    def setUp(self):
        self.d = pm.start_metrics_daemon(self)
        c = self.d.client()
        # Traffic, so that the request families have series (and their labels) to show.
        c.ok("keys")
        c.err("getitem", {"provider_name": "nope"})
        # A discovery against the fake upstream: the upstream and job families get series.
        key = pmsecrets.test_key("dashboard")
        up = FakeUpstream({"scenarios": {"dash": {"models": ["d1", "d2"], "key": key}}})
        self.addCleanup(up.close)
        c.ok("set_provider", {"provider": "dash", "name": "Dash", "base_api_url": up.url("dash"),
                              "api_key": key})
        job = c.ok("discover_models", {"provider": "dash", "force_refresh": True})["job"]
        deadline = time.monotonic() + 30 * h.TIMEOUT_SCALE
        while c.ok("job_status", {"job": job})["state"] != "done":
            self.assertLess(time.monotonic(), deadline, "discovery job not done")
            time.sleep(0.05)
        _, text = pm.scrape(self.d.metrics_port)
        self.parsed = pm.parse(text)
        self.exported = {f for f, _kind in self.parsed["types"].items()}
        # Label names per family (from the samples), plus the ones Prometheus adds.
        self.labels = {}
        for (name, labels), _v in self.parsed["samples"].items():
            fam = family_of(name, self.exported)
            self.labels.setdefault(fam, set()).update(k for k, _ in labels)

    def tearDown(self):
        if self.d.proc is not None and self.d.proc.poll() is None:
            self.assertEqual(self.d.stop()[0], 0)

    def test_dashboard_has_expressions_on_every_group_of_families(self):
        self.assertGreaterEqual(len(self.exprs), 15)
        named = {FAMILY.search(e).group(1) for e in self.exprs if FAMILY.search(e)}
        for must in ("provider_manager_requests_total",
                     "provider_manager_request_duration_seconds_bucket",
                     "provider_manager_models", "provider_manager_upstream_requests_total",
                     "process_resident_memory_bytes"):
            self.assertTrue(any(n.startswith(must) for n in named), must)

    def test_every_family_is_exported(self):
        missing = []
        for expr in self.exprs:
            for name in FAMILY.findall(expr):
                if family_of(name, self.exported) is None:
                    missing.append((name, expr))
        self.assertEqual(missing, [], "the daemon exports: %s" % sorted(self.exported))

    def test_every_label_exists(self):
        wrong = []
        for expr in self.exprs:
            for name, matchers in SELECTOR.findall(expr):
                fam = family_of(name, self.exported)
                have = self.labels.get(fam, set()) | TARGET_LABELS
                for label in MATCHER.findall(matchers):
                    if label not in have:
                        wrong.append((label, name, expr))
            named = [family_of(n, self.exported) for n in FAMILY.findall(expr)]
            have = set(TARGET_LABELS)
            for fam in named:
                have |= self.labels.get(fam, set())
            for group in GROUPING.findall(expr):
                for label in (g.strip() for g in group.split(",")):
                    if label and label not in have:
                        wrong.append((label, "by/without", expr))
        self.assertEqual(wrong, [])

    def test_prometheus_evaluates_every_expression(self):
        prom = pm.start_prometheus(self, self.d.metrics_port)
        # Wait for a first scrape, so that the expressions run over real series.
        deadline = time.monotonic() + pm.PROM_TIMEOUT
        while time.monotonic() < deadline:
            reply = pm.query(prom, "provider_manager_build_info")
            if reply.get("status") == "success" and reply["data"]["result"]:
                break
            time.sleep(0.3)
        else:
            self.fail("prometheus never scraped the daemon")
        failed = []
        for expr in self.exprs:
            concrete = expr
            for var, val in GRAFANA_VARIABLES.items():
                concrete = concrete.replace(var, val)
            if concrete.startswith("label_values("):
                continue  # Grafana's own function, not PromQL
            reply = pm.query(prom, concrete)
            if reply.get("status") != "success":
                failed.append((expr, reply.get("error")))
        self.assertEqual(failed, [])


if __name__ == "__main__":
    unittest.main()
