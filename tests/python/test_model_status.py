"""Black-box suite for model status (wire contract v1.1, "Model status", readings 1-12):
model_status, provider_status, verify_models, job_status "kind" and its counts, "models"
events, status_version, thresholds, prune policies, ignore globs, include_invalid, scheduled
runs, persistence of status, bad input, secrets, and that v1 discovery does not move.

It drives the real daemon over ZeroMQ + msgpack exactly as the contract says (pmharness) and
an OpenAI-compatible fake upstream whose model lists, metadata and per-model answers change at
run time and whose counters prove what was (not) requested (pmupstream). It shares no code
with the C client. Every wait is bounded: against a daemon without these operations each test
fails at its first v1.1 request instead of hanging.

Run: PM_DAEMON=.../provider-manager python3 -m unittest -v test_model_status  (in tests/python)
"""

import http.client
import json
import os
import re
import time
import unittest

import zmq

import pmharness as h
import pmsecrets
from pmsecrets import test_key
from pmupstream import FakeUpstream

KEY = test_key("status")  # every provider of this suite uses it; it must never show up
STATES = {"valid", "invalid", "failing", "gone", "unverified", "ignored"}
PROVIDER_STATES = {"ok", "no_key", "auth_failed", "unreachable", "error", "unknown"}
RECORD_KEYS = {"provider", "model", "state", "in_valid_models", "listed", "first_seen_at",
               "last_listed_at", "last_checked_at", "last_ok_at", "latency_ms", "failures",
               "last_error", "meta"}
META_KEYS = {"context_length", "max_output_tokens", "owned_by", "created"}
ERROR_CLASSES = {"model", "auth", "transient", "error"}
PROVIDER_STATUS_KEYS = {"provider", "state", "last_list_at", "last_list_ok_at",
                        "models_listed", "last_error"}
V1_JOB_KEYS = {"job", "state", "success", "persisted", "providers", "messages"}
V1_PROVIDER_JOB_KEYS = {"state", "discovered", "validated", "valid", "invalid", "message"}
# The discovery shape with checked/ok/failed/transient "in place of validated/valid/invalid":
# "discovered" (listed models) stays.
VERIFY_PROVIDER_JOB_KEYS = {"state", "discovered", "checked", "ok", "failed", "transient",
                            "message"}
PERSISTED_LINE = "Provider configurations persisted to YAML"

JOB_TIMEOUT = 30.0 * h.TIMEOUT_SCALE
EVENT_TIMEOUT = 3.0 * h.TIMEOUT_SCALE
SCHEDULE_TIMEOUT = 20.0 * h.TIMEOUT_SCALE
# Short upstream timeouts and no retries: a transient outcome is one request, answered fast.
DISCOVERY_DEFAULTS = {"request_timeout_ms": 1500, "connect_timeout_ms": 1000,
                      "max_retries": 0, "retry_budget_ms": 0, "per_provider_limit": 4}

# What every record, error, event and job of this suite is collected into when PM_KEEP_LOGS is
# set: check_secrets.py (make test) then greps it for the test key like every other output.
TRANSCRIPT_NAME = "%d-model-status-transcript.log" % os.getpid()


# ---------------------------------------------------------------- config and transcript

def _yaml_scalar(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a YAML double-quoted scalar


def to_yaml(obj, indent=0):
    """Block-style YAML for the config file: maps nest, lists are flow lists of scalars."""
    pad = " " * indent
    lines = []
    for key, value in obj.items():
        if isinstance(value, dict):
            if value:
                lines.append("%s%s:" % (pad, key))
                lines.append(to_yaml(value, indent + 2))
            else:
                lines.append("%s%s: {}" % (pad, key))
        elif isinstance(value, list):
            lines.append("%s%s: [%s]" % (pad, key, ", ".join(_yaml_scalar(v) for v in value)))
        else:
            lines.append("%s%s: %s" % (pad, key, _yaml_scalar(value)))
    return "\n".join(lines)


class Transcript:
    """Appends what the daemon said about status (never ProviderConfigs, which carry keys by
    design) to $PM_KEEP_LOGS/<pid>-model-status-transcript.log, one JSON line each."""

    def __init__(self):
        self.path = None
        if h.KEEP_LOGS:
            os.makedirs(h.KEEP_LOGS, exist_ok=True)
            self.path = os.path.join(h.KEEP_LOGS, TRANSCRIPT_NAME)

    def add(self, what, obj):
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("%s %s\n" % (what, json.dumps(obj, default=repr, sort_keys=True)))


TRANSCRIPT = Transcript()


class Events:
    """One SUB socket on the events endpoint for topics "models" and "providers"; heartbeats
    are dropped so that tests count changes only."""

    def __init__(self, daemon, seen):
        self.seen = seen  # every event received, for the key check at tearDown
        self.sock = daemon.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"models")
        self.sock.setsockopt(zmq.SUBSCRIBE, b"providers")
        self.sock.connect(daemon.events_endpoint)
        daemon._clients.append(self)

    def recv(self, timeout):
        """(topic, event) or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                return None
            frames = self.sock.recv_multipart()
            topic, event = frames[0].decode("utf-8", "replace"), h.unpack(frames[-1])
            if isinstance(event, dict) and event.get("event") == "heartbeat":
                continue
            # A providers event's "configs" (v1.1) carries ProviderConfigs, keys included.
            shown = event if topic == "models" or not isinstance(event, dict) else {
                k: v for k, v in event.items() if k != "configs"}
            TRANSCRIPT.add("event " + topic, shown)
            self.seen.append(shown)
            return topic, event

    def collect(self, quiet=0.5):
        """Every event until `quiet` seconds pass without one."""
        got = []
        while True:
            ev = self.recv(quiet)
            if ev is None:
                return got
            got.append(ev)

    def models(self, events):
        return [e for t, e in events if t == "models"]

    def providers(self, events):
        return [e for t, e in events if t == "providers" and e.get("event") == "changed"]

    def close(self):
        self.sock.close(linger=0)


# ---------------------------------------------------------------- base test case

class StatusTestCase(unittest.TestCase):
    """A fake upstream per test; daemons are started by start() from a config dict."""

    SCENARIOS = {}

    def setUp(self):
        self.up = FakeUpstream({"scenarios": json.loads(json.dumps(self.SCENARIOS))})
        self.addCleanup(self.up.close)
        self.daemons = []
        self.seen = []  # every record, status, job, error and event: checked for keys at the end

    def tearDown(self):
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                rc, _ = d.stop()
                self.assertEqual(rc, 0, "SIGTERM exit code %r" % rc)
        for d in self.daemons:
            logs = d.all_logs()
            self.assertEqual([n for n, _ in pmsecrets.scan_text(logs, daemon_log=True)], [],
                             "a test key leaked in the daemon's log")
        for obj in self.seen:
            self.assertEqual(pmsecrets.scan_obj(obj, daemon_log=True), [],
                             "a test key leaked: %s" % pmsecrets.mask(repr(obj)))

    # -------------------------------------------------------------- daemon
    def config(self, providers, discovery=None):
        """providers: {key: {"scenario": s, "key": k (default KEY; None = no key), "ignore":
        [...], "valid_models": {...}}}; discovery: overrides of DISCOVERY_DEFAULTS."""
        disc = dict(DISCOVERY_DEFAULTS)
        disc.update(discovery or {})
        provs = {}
        for name, p in providers.items():
            entry = {"name": name.upper(), "base_api_url": self.up.url(p.get("scenario", name))}
            api_key = p.get("key", KEY)
            if api_key is not None:
                entry["api_key"] = api_key
            for field in ("valid_models", "invalid_models", "ignore"):
                if field in p:
                    entry[field] = p[field]
            provs[name] = entry
        return to_yaml({"log_level": "debug", "discovery": disc, "providers": provs}) + "\n"

    def start(self, providers, discovery=None, data_dir=None, tmpdir=None):
        d = h.Daemon(config=self.config(providers, discovery), data_dir=data_dir, tmpdir=tmpdir,
                     extra_args=["--log-level", "debug"])
        self.addCleanup(d.cleanup)
        self.daemons.append(d)
        d.start()
        self.d, self.c = d, d.client()
        return d

    def restart(self, d, kill=False):
        """Stops d (SIGTERM, or SIGKILL) and starts a daemon on the same data dir and config."""
        if kill:
            d.proc.kill()
            d.proc.wait()
        else:
            rc, _ = d.stop()
            self.assertEqual(rc, 0, d.stderr()[-2000:])
        d.close_clients()
        d.start()
        self.c = d.client()
        return d

    # -------------------------------------------------------------- requests
    def ok(self, op, args=None, c=None):
        rep = (c or self.c).call(op, {} if args is None else args)
        self.assertIsInstance(rep, dict, rep)
        if rep.get("ok") is not True:
            self.fail("%s %r failed: %s" % (op, args, pmsecrets.mask(repr(rep))))
        if op not in ("get", "getitem", "values", "items", "set_provider", "set_short_name",
                      "get_api_for_model_string", "find_model", "snapshot"):
            TRANSCRIPT.add(op, rep["result"])
            self.seen.append(rep["result"])
        return rep["result"]

    def err(self, op, args):
        rep = self.c.call(op, args)
        self.assertIsInstance(rep, dict, rep)
        self.assertIs(rep.get("ok"), False, "%s %r: expected an error, got %r" % (op, args, rep))
        self.assertEqual(set(rep), {"ok", "error"}, rep)
        self.assertEqual(set(rep["error"]), {"code", "message"}, rep)
        TRANSCRIPT.add("error " + op, rep["error"])
        self.seen.append(rep["error"])
        return rep["error"]["code"], rep["error"]["message"]

    def require_v11(self):
        """A clear first failure against a daemon that does not speak v1.1 yet."""
        health = self.ok("health")
        self.assertEqual(health.get("protocol"), "1.1",
                         "the daemon does not announce protocol 1.1: %r" % health)
        self.assertIsInstance(health.get("status_version"), int, health)
        return health

    def status_version(self):
        return self.ok("health")["status_version"]

    def state_version(self):
        return self.ok("health")["state_version"]

    def wait_job(self, job, timeout=JOB_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.ok("job_status", {"job": job})
            if st["state"] == "done":
                return st
            time.sleep(0.05)
        self.fail("job %s not done after %.0f s" % (job, timeout))

    def discover(self, provider=None, **args):
        if provider is not None:
            args["provider"] = provider
        args.setdefault("force_refresh", True)
        return self.wait_job(self.ok("discover_models", args)["job"])

    def verify(self, provider=None, **args):
        if provider is not None:
            args["provider"] = provider
        return self.wait_job(self.ok("verify_models", args)["job"])

    def records(self, provider=None, model=None, states=None):
        args = {}
        if provider is not None:
            args["provider"] = provider
        if model is not None:
            args["model"] = model
        if states is not None:
            args["states"] = states
        recs = self.ok("model_status", args)
        self.assertIsInstance(recs, list, recs)
        for r in recs:
            self.assert_record(r)
        return recs

    def record(self, provider, model):
        recs = self.records(provider, model)
        self.assertEqual(len(recs), 1, recs)
        return recs[0]

    def by_model(self, provider):
        return {r["model"]: r for r in self.records(provider)}

    def provider_status(self, provider=None):
        res = self.ok("provider_status", {} if provider is None else {"provider": provider})
        self.assertIsInstance(res, list, res)
        for p in res:
            self.assertEqual(set(p), PROVIDER_STATUS_KEYS, p)
            self.assertIn(p["state"], PROVIDER_STATES, p)
            for t in ("last_list_at", "last_list_ok_at"):
                self.assertTrue(p[t] is None or isinstance(p[t], float), p)
            self.assertTrue(p["models_listed"] is None or isinstance(p["models_listed"], int), p)
            self.assert_last_error(p["last_error"])
        if provider is not None:
            self.assertEqual([p["provider"] for p in res], [provider], res)
            return res[0]
        return res

    def config_of(self, provider):
        rep = self.c.call("get", {"provider_name": provider})
        self.assertIs(rep.get("ok"), True, pmsecrets.mask(repr(rep)))
        return rep["result"]

    # -------------------------------------------------------------- shapes
    def assert_last_error(self, e):
        if e is None:
            return
        self.assertIsInstance(e, dict, e)
        self.assertEqual(set(e), {"class", "status", "message"}, e)
        self.assertIn(e["class"], ERROR_CLASSES, e)
        self.assertTrue(e["status"] is None or isinstance(e["status"], int), e)
        self.assertIsInstance(e["message"], str, e)

    def assert_record(self, r):
        self.assertIsInstance(r, dict, r)
        self.assertEqual(set(r), RECORD_KEYS, r)
        self.assertIsInstance(r["provider"], str)
        self.assertIsInstance(r["model"], str)
        self.assertIn(r["state"], STATES, r)
        self.assertIsInstance(r["in_valid_models"], bool, r)
        self.assertTrue(r["listed"] is None or isinstance(r["listed"], bool), r)
        for t in ("first_seen_at", "last_listed_at", "last_checked_at", "last_ok_at",
                  "latency_ms"):
            self.assertTrue(r[t] is None or isinstance(r[t], float),
                            "%s must be a msgpack float or nil: %r" % (t, r))
        self.assertIsInstance(r["failures"], int, r)
        self.assertGreaterEqual(r["failures"], 0, r)
        self.assert_last_error(r["last_error"])
        self.assertIsInstance(r["meta"], dict, r)
        self.assertLessEqual(set(r["meta"]), META_KEYS, r)
        # The state and in_valid_models agree as the contract defines them.
        if r["state"] in ("invalid", "unverified", "ignored"):
            self.assertIs(r["in_valid_models"], False, r)
        if r["state"] == "valid":
            self.assertIs(r["in_valid_models"], True, r)

    def assert_models_event(self, ev, provider):
        self.assertEqual(set(ev), {"event", "status_version", "provider", "changes"} | (
            {"by"} & set(ev)), ev)
        self.assertEqual(ev["event"], "models_changed", ev)
        self.assertEqual(ev["provider"], provider, ev)
        self.assertIsInstance(ev["status_version"], int, ev)
        self.assertIsInstance(ev["changes"], list, ev)
        self.assertTrue(ev["changes"], ev)
        for ch in ev["changes"]:
            self.assertEqual(set(ch), {"model", "from", "to"}, ch)
            self.assertTrue(ch["from"] is None or ch["from"] in STATES, ch)
            self.assertIn(ch["to"], STATES, ch)

    def events(self):
        ev = Events(self.d, self.seen)
        self.prime(ev)
        return ev

    def prime(self, ev):
        """ZeroMQ's slow joiner: scratch changes until one reaches the subscriber."""
        for i in range(50):
            h_args = {"provider": "zz-prime", "name": "prime %d" % i,
                      "base_api_url": "https://prime.example.test/v1"}
            self.c.call("set_provider", h_args)
            if ev.recv(0.2) is not None:
                ev.collect(0.3)
                return
        self.fail("no event reached the subscriber after 50 changes")


def ids(records):
    return [r["model"] for r in records]


# ---------------------------------------------------------------- the fake itself

class FakeUpstreamTest(unittest.TestCase):
    """The fake's run-time controls do what the tests above rely on (no daemon needed)."""

    def setUp(self):
        self.up = FakeUpstream({"scenarios": {
            "p": {"models": ["a", "b", {"id": "raw", "top_provider": {"context_length": 1}}],
                  "key": "k", "meta": {"a": {"context_length": 8192, "created": 1700000000,
                                             "owned_by": "org", "unknown_field": [1]}}},
            "q": {"model_count": 2, "key": "k"}}})
        self.addCleanup(self.up.close)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.up.port, timeout=5)
        self.addCleanup(self.conn.close)

    def request(self, method, path, body=None, conn=None):
        conn = conn or self.conn
        headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    def models(self, scenario="p"):
        status, _, body = self.request("GET", "/%s/v1/models" % scenario)
        self.assertEqual(status, 200)
        return json.loads(body)["data"]

    def probe(self, model, scenario="p", conn=None):
        return self.request("POST", "/%s/v1/chat/completions" % scenario,
                            {"model": model, "messages": [], "max_tokens": 1}, conn)

    def test_metadata_in_model_entries(self):
        data = self.models()
        self.assertEqual(data[0], {"id": "a", "object": "model", "owned_by": "org",
                                   "context_length": 8192, "created": 1700000000,
                                   "unknown_field": [1]})
        self.assertEqual(data[1], {"id": "b", "object": "model", "owned_by": "fake"})
        self.assertEqual(data[2], {"id": "raw", "top_provider": {"context_length": 1}})
        self.up.update("p", set_meta={"b": {"context_window": 32768,
                                            "max_completion_tokens": 8192}, "a": None})
        data = self.models()
        self.assertEqual(data[0], {"id": "a", "object": "model", "owned_by": "fake"})
        self.assertEqual(data[1]["context_window"], 32768)
        self.assertEqual(data[1]["max_completion_tokens"], 8192)

    def test_run_time_lists_and_behaviours_keep_the_counters(self):
        self.models()
        self.assertEqual(self.probe("a")[0], 200)
        self.up.set_models("p", ["a", "c"])
        self.up.update("p", add_models=["d"], remove_models=["a"])
        self.assertEqual([m["id"] for m in self.models()], ["c", "d"])
        expect = {"not_found": 404, "does_not_exist": 400, "unauthorized": 401,
                  "forbidden": 403, "server_error": 500, "ok": 200}
        for behaviour, status in expect.items():
            self.up.set_behaviour("p", "c", behaviour)
            got, _, body = self.probe("c")
            self.assertEqual(got, status, behaviour)
            if behaviour in ("not_found", "does_not_exist"):
                self.assertIn("`c` does not exist", json.loads(body)["error"]["message"])
        self.up.set_behaviour("p", "c", {"do": "rate_limited", "retry_after": 7})
        status, headers, _ = self.probe("c")
        self.assertEqual((status, headers.get("Retry-After")), (429, "7"))
        self.up.set_behaviour("p", "c", {"do": "slow", "delay_ms": 200})
        t0 = time.monotonic()
        self.assertEqual(self.probe("c")[0], 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.2)
        self.up.set_list_behaviour("p", "server_error")
        self.assertEqual(self.request("GET", "/p/v1/models")[0], 500)
        self.assertEqual(self.up.counts("p"), (3, {"a": 1, "c": 8}))
        self.assertEqual(self.up.counts("q"), (0, {}))

    def test_close_and_hang_end_without_an_answer(self):
        self.up.set_behaviour("p", "a", "close")
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.probe("a")
        self.up.set_behaviour("p", "a", "slow")
        quick = http.client.HTTPConnection("127.0.0.1", self.up.port, timeout=0.3)
        self.addCleanup(quick.close)
        with self.assertRaises(TimeoutError):
            self.probe("a", conn=quick)
        quick.close()
        deadline = time.monotonic() + 5
        while self.up.stats()["scenarios"]["p"]["inflight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.up.stats()["scenarios"]["p"]["inflight"], 0,
                         "a hung answer lets go once its client left")
        answers = self.up.stats()["scenarios"]["p"]["answers"]["probe:a"]
        self.assertEqual(answers, {"close": 1, "hang": 1})
        self.assertEqual(self.up.probes("p", "a"), 2)

    def test_per_scenario_reset_and_keep_alive(self):
        for _ in range(3):
            self.models("p")
            self.probe("model-001", scenario="q")
        self.assertEqual(self.up.counts("q"), (0, {"model-001": 3}))
        stats = self.up.stats()["scenarios"]
        self.assertEqual((stats["p"]["connections"], stats["q"]["connections"]), (1, 1),
                         "HTTP/1.1 keep-alive: one connection carried every request")
        self.up.reset("q")
        self.assertEqual(self.up.counts("q"), (0, {}))
        self.assertEqual(self.up.lists("p"), 3)
        self.up.reset()
        self.assertEqual(self.up.lists("p"), 0)

    def test_idle_keep_alive_connections_are_closed_when_configured(self):
        config = self.up.config()
        config["idle_timeout_s"] = 0.3
        self.up.configure(config)
        self.models()
        time.sleep(0.8)
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.models()
        self.conn.close()
        self.models()
        self.assertEqual(self.up.stats()["scenarios"]["p"]["connections"], 2)


# ---------------------------------------------------------------- health, shapes, metadata

class ShapeTest(StatusTestCase):
    SCENARIOS = {
        "meta": {"models": ["m-openai", "m-router", "m-groq", "m-maxctx", "m-both", "m-plain",
                            {"id": "m-nested", "object": "model",
                             "top_provider": {"context_length": 999}}],
                 "key": KEY,
                 "meta": {
                     "m-openai": {"created": 1700000000, "owned_by": "openai-org"},
                     "m-router": {"context_length": 131072, "owned_by": "router",
                                  "pricing": {"prompt": "0.000001"}, "architecture": "x"},
                     "m-groq": {"context_window": 32768, "max_completion_tokens": 8192,
                                "active": True, "public_apps": None},
                     "m-maxctx": {"max_context_length": 4096},
                     "m-both": {"context_length": 1000, "context_window": 2000,
                                "max_context_length": 3000},
                 }},
        "other": {"models": ["o-1"], "key": KEY},
    }

    def test_health_announces_protocol_and_status_version(self):
        self.start({"meta": {}})
        health = self.require_v11()
        self.assertLessEqual(h.HEALTH_KEYS, set(health), health)  # v1 keys stay
        self.assertGreaterEqual(health["status_version"], 0)

    def test_records_shape_order_and_metadata(self):
        self.start({"meta": {}})
        self.require_v11()
        t0 = time.time()
        st = self.discover("meta")
        self.assertIs(st["success"], True, st)
        recs = self.records("meta")
        # Registry order, then valid_models order: discovery merged the list in list order.
        self.assertEqual(ids(recs), list(self.config_of("meta")["valid_models"]))
        meta = {r["model"]: r["meta"] for r in recs}
        self.assertEqual(meta["m-openai"], {"created": 1700000000, "owned_by": "openai-org"})
        self.assertEqual(meta["m-router"], {"context_length": 131072, "owned_by": "router"})
        self.assertEqual(meta["m-groq"], {"context_length": 32768, "max_output_tokens": 8192,
                                          "owned_by": "fake"})
        self.assertEqual(meta["m-maxctx"], {"context_length": 4096, "owned_by": "fake"})
        self.assertEqual(meta["m-both"], {"context_length": 1000, "owned_by": "fake"})
        self.assertEqual(meta["m-nested"], {}, "only top-level fields are read")
        for r in recs:
            self.assertEqual(r["provider"], "meta")
            self.assertEqual(r["state"], "valid", r)
            self.assertIs(r["listed"], True, r)
            self.assertEqual(r["failures"], 0, r)
            self.assertIsNone(r["last_error"], r)
            for t in ("first_seen_at", "last_listed_at", "last_checked_at", "last_ok_at"):
                self.assertGreaterEqual(r[t], t0 - 1, (t, r))
                self.assertLessEqual(r[t], time.time() + 1, (t, r))
            self.assertLessEqual(r["first_seen_at"], r["last_checked_at"], r)
            self.assertGreater(r["latency_ms"], 0.0, r)
        # meta is replaced at each list: new fields appear, dropped ones go.
        self.up.update("meta", set_meta={"m-router": {"context_window": 64}})
        self.assertIs(self.verify("meta", models=["m-router"])["success"], True)
        self.assertEqual(self.record("meta", "m-router")["meta"],
                         {"context_length": 64, "owned_by": "fake"})

    def test_filters_by_provider_model_and_states(self):
        self.start({"meta": {}, "other": {}})
        self.require_v11()
        self.up.set_behaviour("meta", "m-plain", "does_not_exist")
        self.discover()
        every = self.records()
        self.assertEqual([r["provider"] for r in every if r["provider"] in ("meta", "other")],
                         ["meta"] * 7 + ["other"])
        self.assertEqual(ids(self.records("other")), ["o-1"])
        self.assertEqual(ids(self.records("meta", "m-groq")), ["m-groq"])
        self.assertEqual([(r["provider"], r["model"]) for r in self.records(model="o-1")],
                         [("other", "o-1")])
        invalid = self.records("meta", states=["invalid"])
        self.assertEqual(ids(invalid), ["m-plain"])
        self.assertEqual(invalid[0]["in_valid_models"], False)
        self.assertEqual(len(self.records("meta", states=["valid", "invalid"])), 7)
        self.assertEqual(self.records("meta", states=[]), [])
        self.assertEqual(self.records("meta", model="no-such-model"), [])
        self.assertEqual(self.records(states=["gone"]), [])

    def test_provider_status_states(self):
        self.up.update("noanswer", models=["x"], key=KEY, list_behaviour="close")
        self.up.update("malformed", models=["x"], key=KEY,
                       rules=[{"kind": "list", "status": 200, "body": "this is not json"}])
        self.up.update("denied", models=["x"], key="another-key")
        self.start({"meta": {}, "other": {}, "nokey": {"scenario": "other", "key": None},
                    "noanswer": {}, "malformed": {}, "denied": {}})
        self.require_v11()
        self.assertEqual(self.provider_status("other")["state"], "unknown")
        self.assertEqual(self.provider_status("nokey")["state"], "no_key")
        self.assertIsNone(self.provider_status("other")["models_listed"])
        before = time.time()
        st = self.discover()
        self.assertIs(st["success"], False, st)
        ok = self.provider_status("other")
        self.assertEqual(ok["state"], "ok", ok)
        self.assertEqual(ok["models_listed"], 1, ok)
        self.assertIsNone(ok["last_error"], ok)
        self.assertGreaterEqual(ok["last_list_ok_at"], before - 1, ok)
        self.assertAlmostEqual(ok["last_list_at"], ok["last_list_ok_at"], delta=1.0, msg=ok)
        unreachable = self.provider_status("noanswer")
        self.assertEqual(unreachable["state"], "unreachable", unreachable)
        self.assertEqual(unreachable["last_error"]["class"], "transient", unreachable)
        self.assertIsNotNone(unreachable["last_list_at"], unreachable)
        self.assertIsNone(unreachable["last_list_ok_at"], unreachable)
        self.assertEqual(self.provider_status("malformed")["state"], "error")
        denied = self.provider_status("denied")
        self.assertEqual(denied["state"], "auth_failed", denied)
        self.assertEqual(denied["last_error"]["status"], 401, denied)
        self.assertEqual(self.provider_status("nokey")["state"], "no_key")
        everyone = [p["provider"] for p in self.provider_status()]
        self.assertEqual(everyone, [k for k in self.ok("keys")], "registry order")
        # A good list clears the provider's last_error.
        self.up.set_list_behaviour("noanswer", None)
        self.verify("noanswer")
        back = self.provider_status("noanswer")
        self.assertEqual(back["state"], "ok", back)
        self.assertIsNone(back["last_error"], back)
        self.assertGreaterEqual(back["last_list_ok_at"], unreachable["last_list_at"])


# ---------------------------------------------------------------- thresholds and transitions

class TransitionTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["m1", "m2", "m3"], "key": KEY},
                 "q": {"models": ["q1"], "key": KEY}}

    def test_failing_after_exactly_fail_threshold_and_one_success_recovers(self):
        self.start({"p": {}}, {"fail_threshold": 3})
        self.require_v11()
        self.assertIs(self.discover("p")["success"], True)
        ev = self.events()
        version = self.status_version()
        for n, behaviour, status in ((1, "does_not_exist", 400), (2, "not_found", 404)):
            self.up.set_behaviour("p", "m1", behaviour)  # a 400 and a 404 count the same
            st = self.verify("p")
            self.assertIs(st["success"], True, st)
            r = self.record("p", "m1")
            self.assertEqual((r["state"], r["failures"]), ("valid", n), r)
            self.assertEqual(r["last_error"]["class"], "model", r)
            self.assertEqual(r["last_error"]["status"], status, r)
            self.assertEqual(self.status_version(), version, "a count is not a status change")
            self.assertEqual(ev.models(ev.collect()), [], "no event without a transition")
        st = self.verify("p")
        self.assertEqual(st["providers"]["p"]["failed"], 1, st)
        r = self.record("p", "m1")
        self.assertEqual((r["state"], r["failures"]), ("failing", 3), r)
        self.assertIs(r["in_valid_models"], True, r)
        self.assertEqual(self.status_version(), version + 1)
        models = ev.models(ev.collect())
        self.assertEqual(len(models), 1, models)
        self.assert_models_event(models[0], "p")
        self.assertEqual(models[0]["changes"], [{"model": "m1", "from": "valid",
                                                 "to": "failing"}])
        self.assertEqual(models[0]["status_version"], version + 1)
        # Resolution is unchanged with prune off: a failing model still resolves.
        self.assertEqual(self.ok("validate_model", {"model_string": "p/m1"}), "m1")
        self.assertIn("m1", self.config_of("p")["valid_models"])
        # One successful probe recovers it.
        self.up.set_behaviour("p", "m1", "ok")
        self.verify("p")
        r = self.record("p", "m1")
        self.assertEqual((r["state"], r["failures"], r["last_error"]), ("valid", 0, None), r)
        models = ev.models(ev.collect())
        self.assertEqual([e["changes"] for e in models],
                         [[{"model": "m1", "from": "failing", "to": "valid"}]])
        self.assertEqual(self.status_version(), version + 2)

    def test_transient_outcomes_never_count_and_never_reset(self):
        self.start({"p": {}}, {"fail_threshold": 2})
        self.require_v11()
        self.discover("p")
        self.up.set_behaviour("p", "m1", "does_not_exist")
        self.verify("p", models=["m1"])
        self.assertEqual(self.record("p", "m1")["failures"], 1)
        version = self.status_version()
        for behaviour, status in ((({"do": "rate_limited", "retry_after": 1}), 429),
                                  ("server_error", 500), ("slow", None), ("close", None)):
            self.up.set_behaviour("p", "m1", behaviour)
            st = self.verify("p", models=["m1"])
            self.assertIs(st["success"], True, (behaviour, st))
            counts = st["providers"]["p"]
            self.assertEqual((counts["checked"], counts["ok"], counts["failed"],
                              counts["transient"]), (1, 0, 0, 1), (behaviour, st))
            r = self.record("p", "m1")
            self.assertEqual((r["state"], r["failures"]), ("valid", 1), (behaviour, r))
            self.assertEqual(r["last_error"]["class"], "transient", (behaviour, r))
            if status is not None:
                self.assertEqual(r["last_error"]["status"], status, (behaviour, r))
        self.assertEqual(self.status_version(), version)
        # The count was kept through all of them: one more definitive failure makes failing.
        self.up.set_behaviour("p", "m1", "does_not_exist")
        self.verify("p", models=["m1"])
        self.assertEqual(self.record("p", "m1")["state"], "failing")

    def test_auth_outcomes_mark_the_provider_and_change_no_model(self):
        self.start({"p": {}}, {"fail_threshold": 1})
        self.require_v11()
        self.discover("p")
        before = self.by_model("p")
        version = self.status_version()
        for behaviour in ("unauthorized", "forbidden"):
            self.up.set_behaviour("p", "m2", behaviour)
            st = self.verify("p")
            self.assertEqual(st["providers"]["p"]["checked"], 3, st)
            self.assertEqual(self.provider_status("p")["state"], "auth_failed")
            r = self.record("p", "m2")
            self.assertEqual((r["state"], r["failures"]), ("valid", 0), (behaviour, r))
            self.assertEqual(r["in_valid_models"], before["m2"]["in_valid_models"])
        self.assertEqual(self.status_version(), version)
        self.assertEqual(list(self.config_of("p")["valid_models"]), ["m1", "m2", "m3"])

    def test_gone_after_exactly_gone_threshold_lists_and_back_with_short_name(self):
        self.start({"p": {}}, {"gone_threshold": 2})
        self.require_v11()
        self.discover("p")
        self.ok("set_short_name", {"provider": "p", "long_name": "m3", "short_name": "three"})
        listed_at = self.record("p", "m3")["last_listed_at"]
        self.up.set_models("p", ["m1", "m2"])
        self.verify("p")  # absent from one successful list
        r = self.record("p", "m3")
        self.assertEqual((r["state"], r["listed"]), ("valid", False), r)
        self.assertEqual(r["last_listed_at"], listed_at, "unchanged while absent")
        self.up.set_list_behaviour("p", "server_error")
        st = self.verify("p")  # a failed list never counts
        self.assertIs(st["success"], False, st)
        self.assertEqual(st["providers"]["p"]["state"], "error", st)
        self.assertEqual(self.record("p", "m3")["state"], "valid")
        self.up.set_list_behaviour("p", None)
        ev = self.events()
        self.verify("p")  # second successful list without it
        r = self.record("p", "m3")
        self.assertEqual((r["state"], r["in_valid_models"]), ("gone", True), r)
        self.assertEqual([e["changes"] for e in ev.models(ev.collect())],
                         [[{"model": "m3", "from": "valid", "to": "gone"}]])
        self.assertEqual(self.ok("validate_model", {"model_string": "p/three"}), "m3")
        self.up.reset("p")
        self.verify("p")  # a gone model is not probed
        self.assertEqual(self.up.probes("p", "m3"), 0)
        self.assertEqual(self.up.probes("p", "m1"), 1)
        self.up.set_models("p", ["m1", "m2", "m3"])
        self.verify("p")
        r = self.record("p", "m3")
        self.assertEqual((r["state"], r["listed"]), ("valid", True), r)
        self.assertEqual(self.config_of("p")["valid_models"]["m3"], "three")
        self.assertEqual([e["changes"] for e in ev.models(ev.collect())],
                         [[{"model": "m3", "from": "gone", "to": "valid"}]])

    def test_discovery_lists_feed_status_and_cached_lists_do_not(self):
        self.start({"p": {}}, {"gone_threshold": 1})
        self.require_v11()
        self.discover("p")
        listed_at = self.record("p", "m1")["last_listed_at"]
        self.up.set_models("p", ["m1", "m2"])
        self.discover("p", force_refresh=False)  # the cached list is not a list
        self.assertEqual(self.up.lists("p"), 1)
        self.assertEqual(self.record("p", "m3")["state"], "valid")
        self.assertEqual(self.record("p", "m1")["last_listed_at"], listed_at)
        self.discover("p")  # a list fetched by discovery counts like verification's
        states = {m: r["state"] for m, r in self.by_model("p").items()}
        self.assertEqual(states, {"m1": "valid", "m2": "valid", "m3": "gone"})
        self.assertGreater(self.record("p", "m1")["last_listed_at"], listed_at)


# ---------------------------------------------------------------- events

class EventTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["a", "b", "c-embedding"], "key": KEY},
                 "q": {"models": ["x", "y"], "key": KEY}}

    def test_first_seen_models_are_transitions_from_nil_one_event_per_provider(self):
        self.start({"p": {}, "q": {}}, {"ignore": ["*-embedding"]})
        self.require_v11()
        self.up.set_behaviour("p", "b", "does_not_exist")
        ev = self.events()
        version = self.status_version()
        self.discover()
        models = ev.models(ev.collect())
        self.assertEqual(sorted(e["provider"] for e in models), ["p", "q"], models)
        final = {}
        for e in models:
            self.assert_models_event(e, e["provider"])
            first = {}
            for ch in e["changes"]:
                first.setdefault(ch["model"], ch["from"])
                final[(e["provider"], ch["model"])] = ch["to"]
            self.assertTrue(all(f is None for f in first.values()), e)
        self.assertEqual(final, {("p", "a"): "valid", ("p", "b"): "invalid",
                                 ("p", "c-embedding"): "ignored", ("q", "x"): "valid",
                                 ("q", "y"): "valid"})
        self.assertEqual(max(e["status_version"] for e in models), self.status_version())
        self.assertGreater(self.status_version(), version)
        self.assertEqual(len({e["status_version"] for e in models}), 2, models)

    def test_no_event_and_no_bump_for_timestamp_only_updates(self):
        self.start({"p": {}})
        self.require_v11()
        self.discover("p")
        ev = self.events()
        version, state = self.status_version(), self.state_version()
        before = self.record("p", "a")
        time.sleep(0.05)
        st = self.verify("p")
        self.assertIs(st["success"], True, st)
        got = ev.collect()
        self.assertEqual(ev.models(got), [])
        self.assertEqual(ev.providers(got), [])
        self.assertEqual((self.status_version(), self.state_version()), (version, state))
        after = self.record("p", "a")
        self.assertGreater(after["last_checked_at"], before["last_checked_at"])
        self.assertGreater(after["last_listed_at"], before["last_listed_at"])


# ---------------------------------------------------------------- prune

class PruneTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["a", "b", "c"], "key": KEY}}

    def test_prune_gone_removes_with_one_change_and_returns_with_short_name(self):
        d = self.start({"p": {}}, {"gone_threshold": 1, "prune": "gone"})
        self.require_v11()
        self.discover("p")
        self.ok("set_short_name", {"provider": "p", "long_name": "a", "short_name": "alpha"})
        ev = self.events()
        version = self.state_version()
        self.up.set_models("p", ["b", "c"])
        st = self.verify("p")
        self.assertIs(st["success"], True, st)
        self.assertEqual(list(self.config_of("p")["valid_models"]), ["b", "c"])
        self.assertEqual(self.state_version(), version + 1, "one bump for the prune")
        got = ev.collect()
        self.assertEqual([e["providers"] for e in ev.providers(got)], [["p"]])
        self.assertEqual([e["changes"] for e in ev.models(got)],
                         [[{"model": "a", "from": "valid", "to": "gone"}]])
        r = self.record("p", "a")
        self.assertEqual((r["state"], r["in_valid_models"]), ("gone", False), r)
        with open(d.store_path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("alpha", text, "the providers file must agree with valid_models")
        code, message = self.err("validate_model", {"model_string": "p/a"})
        self.assertEqual((code, message), ("invalid_model", "Invalid model for provider p: a"))
        # Back in the list: back in valid_models, at the end, with its short name.
        self.up.set_models("p", ["a", "b", "c"])
        self.verify("p")
        self.assertEqual(self.config_of("p")["valid_models"],
                         {"b": "b", "c": "c", "a": "alpha"})
        self.assertEqual(list(self.config_of("p")["valid_models"]), ["b", "c", "a"])
        with open(d.store_path, encoding="utf-8") as f:
            self.assertIn("alpha", f.read())
        self.assertEqual(self.record("p", "a")["state"], "valid")

    def test_prune_failing_and_gone_takes_failing_models_out_and_back(self):
        d = self.start({"p": {}}, {"fail_threshold": 1, "prune": "failing_and_gone"})
        self.require_v11()
        self.discover("p")
        self.up.set_behaviour("p", "b", "does_not_exist")
        self.verify("p", persist_on_success=False)  # a prune is persisted anyway
        self.assertEqual(list(self.config_of("p")["valid_models"]), ["a", "c"])
        r = self.record("p", "b")
        self.assertEqual((r["state"], r["in_valid_models"]), ("failing", False), r)
        yaml = h.read_yaml(d.store_path)
        if yaml is not None:
            self.assertEqual(list(yaml["providers"]["p"]["valid_models"]), ["a", "c"])
        self.up.set_behaviour("p", "b", "ok")
        self.up.reset("p")
        self.verify("p")  # a model pruned as failing is probed: its way back
        self.assertEqual(self.up.probes("p", "b"), 1)
        self.assertEqual(list(self.config_of("p")["valid_models"]), ["a", "c", "b"])
        self.assertEqual(self.record("p", "b")["state"], "valid")

    def test_prune_none_keeps_failing_and_gone_models_resolving(self):
        self.start({"p": {}}, {"fail_threshold": 1, "gone_threshold": 1, "prune": "none"})
        self.require_v11()
        self.discover("p")
        version = self.state_version()
        self.up.set_models("p", ["a", "b"])
        self.up.set_behaviour("p", "b", "does_not_exist")
        self.verify("p")
        states = {m: r["state"] for m, r in self.by_model("p").items()}
        self.assertEqual(states, {"a": "valid", "b": "failing", "c": "gone"})
        self.assertEqual(self.state_version(), version, "no ProviderConfig change")
        for m in ("b", "c"):
            self.assertEqual(self.ok("validate_model", {"model_string": "p/" + m}), m)


# ---------------------------------------------------------------- ignore, include_invalid

class IgnoreTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["gpt-x", "text-embedding-3", "tts-1", "whisper-1",
                                  "whisper-10"], "key": KEY},
                 "q": {"models": ["whisper-1", "tts-1"], "key": KEY}}

    def test_ignored_models_are_never_probed_nor_counted(self):
        self.start({"p": {"ignore": ["whisper-?"]}, "q": {}},
                   {"ignore": ["*embedding*", "tts-*"]})
        self.require_v11()
        st = self.discover()
        self.assertIs(st["success"], True, st)
        p = st["providers"]["p"]
        self.assertEqual((p["discovered"], p["validated"], p["valid"], p["invalid"]),
                         (2, 2, 2, 0), st)
        self.assertIn("Successfully discovered 2 valid and 0 invalid models for p",
                      st["messages"])
        q = st["providers"]["q"]
        self.assertEqual((q["discovered"], q["valid"]), (1, 1), st)  # per-provider globs stay
        self.assertEqual(list(self.config_of("p")["valid_models"]), ["gpt-x", "whisper-10"])
        self.assertEqual(self.config_of("p")["invalid_models"], [])
        states = {m: r["state"] for m, r in self.by_model("p").items()}
        self.assertEqual(states, {"gpt-x": "valid", "whisper-10": "valid",
                                  "text-embedding-3": "ignored", "tts-1": "ignored",
                                  "whisper-1": "ignored"})
        for m in ("text-embedding-3", "tts-1", "whisper-1"):
            r = self.record("p", m)
            self.assertEqual((r["in_valid_models"], r["listed"]), (False, True), r)
        self.assertEqual(self.provider_status("p")["models_listed"], 5)
        self.verify()
        self.verify(include_invalid=True)
        _, probes = self.up.counts("p")
        self.assertEqual({m: probes.get(m, 0) for m in ("text-embedding-3", "tts-1",
                                                       "whisper-1")},
                         {"text-embedding-3": 0, "tts-1": 0, "whisper-1": 0}, probes)
        self.assertEqual(probes.get("gpt-x"), 3)
        self.assertEqual(self.up.probes("q", "tts-1"), 0)
        self.assertEqual(self.up.probes("q", "whisper-1"), 3)

    def test_a_model_in_valid_models_is_never_ignored(self):
        self.start({"p": {"valid_models": {"tts-1": "voice"}}}, {"ignore": ["tts-*"]})
        self.require_v11()
        self.discover("p")
        r = self.record("p", "tts-1")
        self.assertEqual((r["state"], r["in_valid_models"]), ("valid", True), r)
        self.up.reset("p")
        self.verify("p")
        self.assertEqual(self.up.probes("p", "tts-1"), 1)


class IncludeInvalidTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["a", "b"], "key": KEY,
                       "behaviour": {"b": "does_not_exist"}}}

    def test_include_invalid_moves_an_answering_model_to_valid_models(self):
        self.start({"p": {}})
        self.require_v11()
        self.discover("p")
        self.assertEqual(self.config_of("p")["invalid_models"], ["b"])
        self.assertEqual(self.record("p", "b")["state"], "invalid")
        self.up.set_behaviour("p", "b", "ok")
        self.up.reset("p")
        self.verify("p")
        self.assertEqual(self.up.probes("p", "b"), 0, "the negative cache holds without it")
        self.assertEqual(self.record("p", "b")["state"], "invalid")
        ev = self.events()
        version = self.state_version()
        st = self.verify("p", include_invalid=True)
        self.assertIs(st["success"], True, st)
        self.assertEqual(self.up.probes("p", "b"), 1)
        cfg = self.config_of("p")
        self.assertEqual(list(cfg["valid_models"]), ["a", "b"])
        self.assertEqual(cfg["invalid_models"], [])
        self.assertEqual(self.state_version(), version + 1)
        got = ev.collect()
        self.assertEqual([e["providers"] for e in ev.providers(got)], [["p"]])
        self.assertEqual([e["changes"] for e in ev.models(got)],
                         [[{"model": "b", "from": "invalid", "to": "valid"}]])
        self.assertEqual(self.ok("validate_model", {"model_string": "p/b"}), "b")


# ---------------------------------------------------------------- jobs

class JobTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["ok-1", "bad-1", "flaky-1"], "key": KEY,
                       "behaviour": {"bad-1": "does_not_exist", "flaky-1": "server_error"}},
                 "q": {"models": ["q1", "q2"], "key": KEY}}

    def test_verify_job_shape_and_counts(self):
        self.start({"p": {"valid_models": {"ok-1": "ok-1", "bad-1": "bad-1",
                                           "flaky-1": "flaky-1"}},
                    "q": {"valid_models": {"q1": "q1", "q2": "q2"}},
                    "nokey": {"scenario": "q", "key": None}})
        self.require_v11()
        job = self.ok("verify_models", {})["job"]
        self.assertIsInstance(job, str)
        st = self.wait_job(job)
        self.assertEqual(set(st), V1_JOB_KEYS | {"kind"}, st)
        self.assertEqual(st["kind"], "verify")
        for key, entry in st["providers"].items():
            self.assertEqual(set(entry), VERIFY_PROVIDER_JOB_KEYS, (key, entry))
        p = st["providers"]["p"]
        self.assertEqual((p["state"], p["checked"], p["ok"], p["failed"], p["transient"]),
                         ("ok", 3, 1, 1, 1), st)
        q = st["providers"]["q"]
        self.assertEqual((q["checked"], q["ok"], q["failed"], q["transient"]), (2, 2, 0, 0))
        self.assertEqual(st["providers"]["nokey"]["state"], "skipped", st)
        self.assertIn("Skipping nokey: No valid API key configured", st["messages"])
        self.assertIs(st["success"], True, "transient probes do not fail a verify job")
        self.assertEqual(self.up.lists("p"), 1, "verify re-lists, bypassing the cache")
        self.verify("p")
        self.assertEqual(self.up.lists("p"), 2, "verify re-lists, bypassing the cache")
        self.assertEqual(self.ok("health")["jobs_running"], 0)

    def test_discover_job_has_kind_discover(self):
        self.start({"q": {}})
        self.require_v11()
        st = self.discover("q")
        self.assertEqual(st["kind"], "discover")
        self.assertEqual(set(st), V1_JOB_KEYS | {"kind"}, st)
        self.assertEqual(set(st["providers"]["q"]), V1_PROVIDER_JOB_KEYS, st)

    def test_verify_only_the_given_models(self):
        self.start({"q": {"valid_models": {"q1": "q1", "q2": "q2"}}})
        self.require_v11()
        st = self.verify("q", models=["q2", "not-there"])
        self.assertEqual(st["providers"]["q"]["checked"], 1, st)
        self.assertEqual(self.up.counts("q")[1], {"q2": 1})

    def test_failed_list_fails_the_job_and_changes_nothing(self):
        self.start({"q": {"valid_models": {"q1": "q1"}}})
        self.require_v11()
        self.verify("q")
        before = self.records("q")
        self.up.set_list_behaviour("q", "unauthorized")
        st = self.verify("q")
        self.assertIs(st["success"], False, st)
        self.assertEqual(st["providers"]["q"]["state"], "error", st)
        self.assertTrue(st["providers"]["q"]["message"], st)
        self.assertEqual(self.provider_status("q")["state"], "auth_failed")
        after = self.records("q")
        self.assertEqual([(r["model"], r["state"], r["failures"]) for r in after],
                         [(r["model"], r["state"], r["failures"]) for r in before])

    def test_verify_persist_on_success(self):
        d = self.start({"q": {}})
        self.require_v11()
        self.discover("q", persist_on_success=False)
        st = self.verify("q", persist_on_success=False)
        self.assertIs(st["persisted"], False, st)
        st = self.verify("q")
        self.assertIs(st["persisted"], True, st)
        self.assertEqual(st["messages"][-1], PERSISTED_LINE)
        self.assertTrue(os.path.exists(d.store_path))


# ---------------------------------------------------------------- bad input

class BadInputTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["a"], "key": KEY}}

    # (op, args, message): the project's argument messages (proto/PROTOCOL.md, Arguments);
    # None where the contract names no message (an unknown state: it must name the state).
    STRING = "argument '%s' must be a string"
    STRINGS = "argument '%s' must be an array of strings"
    BOOLEAN = "argument '%s' must be a boolean"
    BAD = [
        ("model_status", {"provider": 5}, STRING % "provider"),
        ("model_status", {"provider": ["p"]}, STRING % "provider"),
        ("model_status", {"model": 1.5}, STRING % "model"),
        # A bin anywhere breaks the encoding rules before any argument is read: bad_request
        # with the precheck's message (proto/PROTOCOL.md, Encoding).
        ("model_status", {"model": b"a"}, None),
        ("model_status", {"states": "valid"}, STRINGS % "states"),
        ("model_status", {"states": [1]}, STRINGS % "states"),
        ("model_status", {"states": ["valid", None]}, STRINGS % "states"),
        ("model_status", {"states": ["valid", "bogus"]}, None),
        ("model_status", {"states": ["VALID"]}, None),
        ("provider_status", {"provider": 1}, STRING % "provider"),
        ("provider_status", {"provider": {"p": 1}}, STRING % "provider"),
        ("verify_models", {"provider": 7}, STRING % "provider"),
        ("verify_models", {"models": "a"}, STRINGS % "models"),
        ("verify_models", {"models": [1]}, STRINGS % "models"),
        ("verify_models", {"models": {"a": 1}}, STRINGS % "models"),
        ("verify_models", {"include_invalid": "yes"}, BOOLEAN % "include_invalid"),
        ("verify_models", {"include_invalid": 1}, BOOLEAN % "include_invalid"),
        ("verify_models", {"persist_on_success": "no"}, BOOLEAN % "persist_on_success"),
        ("job_status", {"job": 5}, STRING % "job"),
    ]

    def test_mistyped_arguments_are_bad_request_and_change_nothing(self):
        self.start({"p": {}})
        self.require_v11()
        self.discover("p")
        self.up.reset()
        before = (self.ok("health"), self.records(), self.provider_status())
        for op, args, expected in self.BAD:
            code, message = self.err(op, args)
            self.assertEqual(code, "bad_request", (op, args, message))
            self.assertTrue(message, (op, args))
            if expected is not None:
                self.assertEqual(message, expected, (op, args))
        for op in ("model_status", "provider_status", "verify_models"):
            rep = self.c.call(op, ["not", "a", "map"])
            self.assertEqual(rep.get("error", {}).get("code"), "bad_request", (op, rep))
        code, message = self.err("model_status", {"states": ["valid", "bogus"]})
        self.assertIn("bogus", message, "the message names the unknown state")
        after = (self.ok("health"), self.records(), self.provider_status())
        for key in ("state_version", "status_version", "jobs_running", "models"):
            self.assertEqual(after[0][key], before[0][key], key)
        self.assertEqual(after[1:], before[1:])
        self.assertEqual(self.up.counts("p"), (0, {}), "no request reached the upstream")

    def test_unknown_provider_is_not_found_with_the_v1_message(self):
        self.start({"p": {}})
        self.require_v11()
        for op, args in (("model_status", {"provider": "nope"}),
                         ("model_status", {"provider": "nope", "model": "a"}),
                         ("provider_status", {"provider": "nope"}),
                         ("verify_models", {"provider": "nope"}),
                         ("verify_models", {"provider": "nope", "models": ["a"]})):
            self.assertEqual(self.err(op, args), ("not_found", "Provider 'nope' not found"),
                             (op, args))
        self.assertEqual(self.ok("health")["jobs_running"], 0)
        self.assertEqual(self.up.counts("p"), (0, {}))

    def test_empty_states_and_unknown_model_answer_empty_lists(self):
        self.start({"p": {}})
        self.require_v11()
        self.discover("p")
        # nil means "not given", as for every v1 argument.
        self.assertEqual(self.ok("model_status", {"provider": None, "states": None}),
                         self.ok("model_status", {}))
        self.assertEqual(self.ok("provider_status", {"provider": None}),
                         self.ok("provider_status", {}))
        self.assertEqual(self.ok("model_status", {"states": []}), [])
        self.assertEqual(self.ok("model_status", {"provider": "p", "states": []}), [])
        self.assertEqual(self.ok("model_status", {"model": "no-such"}), [])
        self.assertEqual(self.ok("model_status", {"provider": "p", "model": "no-such"}), [])


# ---------------------------------------------------------------- v1 does not move

class V1UnchangedTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["good-1", "bad-1"], "key": KEY,
                       "behaviour": {"bad-1": "does_not_exist"}}}

    def test_discover_models_and_job_status_keep_their_v1_meaning(self):
        d = self.start({"p": {}, "nokey": {"scenario": "p", "key": None}})
        job = self.ok("discover_models", {})["job"]
        st = self.wait_job(job)
        self.assertLessEqual(V1_JOB_KEYS, set(st), st)
        self.assertLessEqual(set(st), V1_JOB_KEYS | {"kind"}, st)
        self.assertIs(st["success"], True, st)
        self.assertIs(st["persisted"], True, st)
        p = st["providers"]["p"]
        self.assertEqual(set(p), V1_PROVIDER_JOB_KEYS, p)
        self.assertEqual((p["state"], p["discovered"], p["validated"], p["valid"],
                          p["invalid"]), ("ok", 2, 2, 1, 1), st)
        self.assertEqual(st["providers"]["nokey"]["state"], "skipped")
        self.assertIn("Skipping nokey: No valid API key configured", st["messages"])
        self.assertIn("Successfully discovered 1 valid and 1 invalid models for p",
                      st["messages"])
        self.assertEqual(st["messages"][-1], PERSISTED_LINE)
        cfg = self.config_of("p")
        self.assertEqual((cfg["valid_models"], cfg["invalid_models"]),
                         ({"good-1": "good-1"}, ["bad-1"]))
        # The negative cache: a second discovery does not probe bad-1 and counts it invalid.
        self.up.reset("p")
        st = self.discover("p")
        p = st["providers"]["p"]
        self.assertEqual((p["discovered"], p["validated"], p["valid"], p["invalid"]),
                         (2, 1, 1, 1), st)
        self.assertEqual(self.up.counts("p")[1], {"good-1": 1})
        # The providers file keeps the seed's format: one top-level key, seed fields only.
        yaml = h.read_yaml(d.store_path)
        if yaml is not None:
            self.assertEqual(list(yaml), ["providers"])
            for entry in yaml["providers"].values():
                self.assertLessEqual(set(entry), {"name", "base_api_url", "api_key",
                                                  "valid_models", "invalid_models"}, entry)
        health = self.ok("health")
        self.assertLessEqual(h.HEALTH_KEYS, set(health), health)
        self.assertEqual(self.err("job_status", {"job": "no-such-job"}),
                         ("not_found", "Job 'no-such-job' not found"))


# ---------------------------------------------------------------- schedules

class ScheduleTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["a", "b"], "key": KEY}}

    def wait_for(self, what, predicate, timeout=SCHEDULE_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        self.fail("not within %.0f s: %s" % (timeout, what))

    def test_scheduled_relist_notices_a_vanished_model_without_a_request(self):
        # 0.02 minutes = 1.2 s; valid_models come from the config: the test never writes.
        self.start({"p": {"valid_models": {"a": "a", "b": "b"}}},
                   {"list_interval_minutes": 0.02, "gone_threshold": 1})
        self.require_v11()
        self.up.set_models("p", ["a"])
        self.wait_for("b gone", lambda: self.record("p", "b")["state"] == "gone")
        self.assertGreaterEqual(self.up.lists("p"), 1)
        self.assertEqual(self.up.probes("p"), 0, "a list-only run probes nothing")
        self.assertEqual(self.record("p", "a")["listed"], True)
        self.assertEqual(self.provider_status("p")["state"], "ok")

    def test_first_run_one_interval_after_start_and_zero_means_never(self):
        self.start({"p": {"valid_models": {"a": "a"}}},
                   {"list_interval_minutes": 0.05, "verify_interval_minutes": 0})
        self.require_v11()
        t0 = time.monotonic()
        time.sleep(1.0)
        if time.monotonic() - t0 < 2.5:  # under heavy load the interval may have passed
            self.assertEqual(self.up.lists("p"), 0, "the first run waits one interval")
        self.wait_for("a scheduled list", lambda: self.up.lists("p") >= 1)
        time.sleep(1.0)
        self.assertEqual(self.up.probes("p"), 0, "verify_interval_minutes 0 = never")

    def test_scheduled_verification_finds_a_failing_model(self):
        self.start({"p": {"valid_models": {"a": "a", "b": "b"}}},
                   {"list_interval_minutes": 0, "verify_interval_minutes": 0.02,
                    "fail_threshold": 1})
        self.require_v11()
        self.up.set_behaviour("p", "b", "does_not_exist")
        self.wait_for("b failing", lambda: self.record("p", "b")["state"] == "failing")
        self.assertGreaterEqual(self.up.probes("p", "a"), 1)
        self.assertEqual(self.record("p", "a")["state"], "valid")


# ---------------------------------------------------------------- persistence

class PersistenceTest(StatusTestCase):
    SCENARIOS = {"p": {"models": ["a", "b", "c"], "key": KEY,
                       "meta": {"a": {"context_length": 4096}}},
                 "q": {"models": ["x"], "key": "other-key"}}

    def comparable(self):
        return (self.records(), self.provider_status(), self.status_version())

    def assert_same(self, a, b, where="status"):
        """Equal, floats within 1 ms (a store may keep times in milliseconds)."""
        if isinstance(a, float) and isinstance(b, float):
            self.assertAlmostEqual(a, b, delta=1e-3, msg=where)
        elif isinstance(a, dict) and isinstance(b, dict):
            self.assertEqual(list(a), list(b), where)
            for k in a:
                self.assert_same(a[k], b[k], "%s.%s" % (where, k))
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            self.assertEqual(len(a), len(b), where)
            for i, (x, y) in enumerate(zip(a, b)):
                self.assert_same(x, y, "%s[%d]" % (where, i))
        else:
            self.assertEqual(a, b, where)

    def test_status_survives_a_restart(self):
        d = self.start({"p": {}, "q": {}}, {"fail_threshold": 1})
        self.require_v11()
        self.up.set_behaviour("p", "b", "does_not_exist")
        self.discover()
        self.up.set_behaviour("p", "b", "ok")
        self.up.set_behaviour("p", "a", "not_found")
        self.verify("p")
        before = self.comparable()
        self.assertEqual({r["model"]: r["state"] for r in before[0] if r["provider"] == "p"},
                         {"a": "failing", "b": "invalid", "c": "valid"})
        self.assertEqual(self.provider_status("q")["state"], "auth_failed")
        self.restart(d)
        self.assert_same(self.comparable(), before)
        self.assertEqual(self.record("p", "a")["meta"], {"context_length": 4096,
                                                          "owned_by": "fake"})

    def test_status_survives_sigkill_once_the_job_reads_done(self):
        d = self.start({"p": {}}, {"fail_threshold": 1, "gone_threshold": 1})
        self.require_v11()
        self.discover("p")
        self.up.set_models("p", ["a", "b"])
        self.up.set_behaviour("p", "b", "does_not_exist")
        self.verify("p", persist_on_success=False)
        before = self.comparable()
        self.restart(d, kill=True)
        after = self.comparable()
        self.assert_same(after, before)
        self.assertEqual({r["model"]: r["state"] for r in after[0]},
                         {"a": "valid", "b": "failing", "c": "gone"})
        self.assertEqual([n for n in os.listdir(d.data_dir) if n.endswith(".tmp")], [])


# ---------------------------------------------------------------- secrets

class SecretsTest(StatusTestCase):
    """Upstreams that repeat the key they were sent, in every answer the status keeps."""

    SCENARIOS = {
        "echo": {"models": ["m-echo", "m-ok"], "key": None,
                 "rules": [{"kind": "probe", "model": "m-echo", "status": 400,
                            "body": "{\"error\": {\"message\": \"model does not exist; "
                                    "your key {key} is fine\"}}"}]},
        "echolist": {"models": ["x"], "key": None,
                     "rules": [{"kind": "list", "status": 401,
                                "body": "{\"error\": {\"message\": \"Incorrect API key "
                                        "provided: {key}\"}}"}]},
        "echo500": {"models": ["y"], "key": None,
                    "rules": [{"kind": "probe", "status": 500,
                               "body": "{\"error\": {\"message\": \"upstream {key} down\"}}"}]},
    }

    def test_no_key_in_records_errors_events_logs_or_status_files(self):
        d = self.start({"echo": {"valid_models": {"m-echo": "m-echo", "m-ok": "m-ok"}},
                        "echolist": {}, "echo500": {"valid_models": {"y": "y"}}},
                       {"fail_threshold": 1})
        self.require_v11()
        ev = self.events()
        self.verify()
        self.verify(include_invalid=True)
        self.discover()
        self.records()
        self.provider_status()
        self.err("model_status", {"provider": "nope-" + KEY[:6]})
        self.err("verify_models", {"provider": "nope-" + KEY[:6]})
        got = ev.collect()
        self.assertTrue(ev.models(got), "the jobs made transitions")
        for topic, event in got:
            event = event if topic == "models" else {k: v for k, v in event.items()
                                                     if k != "configs"}
            self.assertEqual(pmsecrets.scan_obj(event, daemon_log=True), [],
                             pmsecrets.mask(repr(event)))
        self.assertGreaterEqual(len(self.seen), 8)
        errors = [r["last_error"]["message"] for r in self.records() if r["last_error"]]
        errors += [p["last_error"]["message"] for p in self.provider_status()
                   if p["last_error"]]
        self.assertGreaterEqual(len(errors), 2, "the echoing upstreams left errors")
        # The status files hold no key either (the providers file holds the config's key by
        # design: it is the seed's file).
        rc, _ = d.stop()
        self.assertEqual(rc, 0)
        for name in os.listdir(d.data_dir):
            path = os.path.join(d.data_dir, name)
            if name == h.STORE_FILE or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            self.assertNotIn(KEY.encode(), data, "the key is in status file %s" % name)
            self.assertEqual(pmsecrets.scan_text(data), [], "a key form is in %s" % name)
        self.assertIsNone(re.search(re.escape(KEY), d.all_logs()))


if __name__ == "__main__":
    unittest.main()
