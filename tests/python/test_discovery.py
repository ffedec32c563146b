"""Black-box discovery tests: discover_models / job_status against a local mock of an
OpenAI-compatible API (127.0.0.1 only). Until discovery lands the daemon may answer
`unavailable`: such tests are skipped, but whichever reply comes back has its shape checked.

Run: PM_DAEMON=.../provider-manager python3 -m unittest -v test_discovery   (in tests/python)
"""

import json
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pmharness import DaemonTestCase

JOB_KEYS = {"job", "kind", "state", "success", "persisted", "providers", "messages"}
PROVIDER_JOB_KEYS = {"state", "discovered", "validated", "valid", "invalid", "message"}
PROVIDER_STATES = {"queued", "listing", "validating", "ok", "skipped", "error"}
PERSISTED_LINE = "Provider configurations persisted to YAML"


class MockApi:
    """GET <base>/models lists MODELS; POST <base>/chat/completions answers 200 for models
    starting with "good", 400 otherwise. A wrong bearer key gets 401 everywhere."""

    MODELS = ["good-1", "good-2", "bad-1", "skip-1"]
    KEY = "sk-bbx-mock-key"

    def __init__(self, delay=0.0):
        self.delay = delay  # seconds every probe waits before answering
        self.lock = threading.Lock()
        self.lists = 0
        self.probes = []
        self.paths = []
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def authorized(self):
                return self.headers.get("Authorization") == "Bearer " + MockApi.KEY

            def do_GET(self):
                with mock.lock:
                    mock.paths.append(("GET", self.path))
                if not self.authorized():
                    return self.reply(401, {"error": {"message": "Incorrect API key"}})
                if self.path.rstrip("/").endswith("/models"):
                    with mock.lock:
                        mock.lists += 1
                    return self.reply(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "owned_by": "bbx"} for m in mock.MODELS]})
                return self.reply(404, {"error": {"message": "no such path"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                with mock.lock:
                    mock.paths.append(("POST", self.path))
                if mock.delay:
                    time.sleep(mock.delay)
                if not self.authorized():
                    return self.reply(401, {"error": {"message": "Incorrect API key"}})
                try:
                    model = json.loads(raw or b"{}").get("model")
                except ValueError:
                    model = None
                with mock.lock:
                    mock.probes.append(model)
                if self.path.rstrip("/").endswith("/chat/completions") and model and \
                        model.startswith("good"):
                    return self.reply(200, {
                        "id": "chatcmpl-bbx", "object": "chat.completion", "created": 1,
                        "model": model, "choices": [{"index": 0, "finish_reason": "length",
                                                     "message": {"role": "assistant",
                                                                 "content": "hi"}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                  "total_tokens": 2}})
                return self.reply(400, {"error": {"message": "model not supported",
                                                  "type": "invalid_request_error"}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/v1" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class DiscoveryTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.mock = MockApi()
        self.addCleanup(self.mock.close)

    # helpers ----------------------------------------------------------------
    def start_job(self, args):
        """Starts a job; returns its id, or skips the test when the service answers
        `unavailable` (discovery not built yet)."""
        rep = self.c.call("discover_models", args, id="dj")
        if rep.get("ok") is False and rep.get("error", {}).get("code") == "unavailable":
            self.assert_error(rep, "unavailable", id="dj")
            self.skipTest("discover_models answered unavailable: %s" % rep["error"]["message"])
        self.assertEqual(list(rep), ["ok", "id", "result"], rep)
        self.assertIs(rep["ok"], True, rep)
        self.assertEqual(set(rep["result"]), {"job"}, rep)
        job = rep["result"]["job"]
        self.assertIsInstance(job, str)
        self.assertTrue(job)
        return job

    def assert_job_shape(self, st, job):
        self.assertEqual(set(st), JOB_KEYS, st)
        self.assertEqual(st["job"], job)
        self.assertIn(st["state"], ("running", "done"))
        self.assertTrue(st["success"] is None or isinstance(st["success"], bool), st)
        if st["state"] == "done":
            self.assertIsInstance(st["success"], bool, st)
        self.assertIsInstance(st["persisted"], bool)
        self.assertIsInstance(st["providers"], dict)
        for key, p in st["providers"].items():
            self.assertIsInstance(key, str)
            self.assertEqual(set(p), PROVIDER_JOB_KEYS, p)
            self.assertIn(p["state"], PROVIDER_STATES, p)
            for n in ("discovered", "validated", "valid", "invalid"):
                self.assertIs(type(p[n]), int, (n, p))
                self.assertGreaterEqual(p[n], 0)
            self.assertIsInstance(p["message"], str)
        self.assertIsInstance(st["messages"], list)
        for m in st["messages"]:
            self.assertIsInstance(m, str)

    def wait_job(self, job, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            st = self.c.ok("job_status", {"job": job})
            self.assert_job_shape(st, job)
            if st["state"] == "done":
                return st
            if time.monotonic() > deadline:
                self.fail("job %s not done after %.0fs: %r" % (job, timeout, st))
            time.sleep(0.05)

    def add_mock(self, key="mock", api_key=MockApi.KEY, **kw):
        return self.set_provider(key, "Mock", self.mock.url, api_key=api_key, **kw)

    # tests ------------------------------------------------------------------
    def test_unknown_provider_and_unknown_job(self):
        rep = self.c.call("discover_models", {"provider": "bbx-nosuch"}, id=1)
        if rep.get("ok") is False and rep["error"]["code"] == "unavailable":
            self.assert_error(rep, "unavailable", id=1)
        else:
            self.assert_error(rep, "not_found", "Provider 'bbx-nosuch' not found", id=1)
        rep = self.c.call("job_status", {"job": "bbx-nosuch-job"}, id=2)
        if rep.get("ok") is False and rep["error"]["code"] == "unavailable":
            self.assert_error(rep, "unavailable", id=2)
        else:
            self.assert_error(rep, "not_found", "Job 'bbx-nosuch-job' not found", id=2)

    def test_all_providers_skipped_without_keys(self):
        sv = self.state_version()
        keys = self.c.ok("keys")
        job = self.start_job({})
        st = self.wait_job(job)
        self.assertIs(st["success"], True, st)
        self.assertIs(st["persisted"], True, st)
        # per-provider lines in any order (providers run in parallel); persisted line last
        self.assertEqual(st["messages"][-1:], [PERSISTED_LINE])
        self.assertEqual(sorted(st["messages"][:-1]),
                         sorted("Skipping %s: No valid API key configured" % k for k in keys))
        self.assertEqual(set(st["providers"]), set(keys))
        for k, p in st["providers"].items():
            self.assertEqual(p["state"], "skipped", (k, p))
            self.assertEqual((p["discovered"], p["validated"], p["valid"], p["invalid"]),
                             (0, 0, 0, 0), (k, p))
        self.assertEqual(self.state_version(), sv)
        self.assertEqual(self.health()["jobs_running"], 0)
        with open(self.d.store_path, encoding="utf-8") as f:
            self.assertTrue(f.read().lstrip().startswith("providers:"))

    def test_discover_one_provider_against_mock(self):
        self.add_mock(valid_models={"pre-1": "p1"}, invalid_models=["skip-1"])
        sub = self.d.subscriber()
        self.prime_events(sub)
        sv = self.state_version()
        job = self.start_job({"provider": "mock"})
        st = self.wait_job(job)
        self.assertIs(st["success"], True, st)
        self.assertIs(st["persisted"], True, st)
        self.assertEqual(list(st["providers"]), ["mock"])
        self.assertEqual(st["providers"]["mock"]["state"], "ok")
        p = st["providers"]["mock"]
        self.assertEqual((p["discovered"], p["validated"], p["valid"], p["invalid"]),
                         (4, 3, 2, 2), p)
        self.assertEqual(st["messages"],
                         ["Successfully discovered 2 valid and 2 invalid models for mock",
                          PERSISTED_LINE])
        cfg = self.c.ok("get", {"provider_name": "mock"})
        # merge_valid_models: existing entries kept, new ones appended with long = short
        self.assertEqual(list(cfg["valid_models"].items()),
                         [("pre-1", "p1"), ("good-1", "good-1"), ("good-2", "good-2")])
        self.assertEqual(cfg["invalid_models"], ["bad-1", "skip-1"])
        self.assertEqual(sorted(self.mock.probes), ["bad-1", "good-1", "good-2"])
        self.assertEqual(self.state_version(), sv + 1)
        ev = sub.recv(3.0)
        self.assertIsNotNone(ev)
        self.assertEqual(ev[1], {"event": "changed", "state_version": sv + 1,
                                 "providers": ["mock"], "configs": [cfg],
                                 "epoch": self.c.ok("health")["epoch"]})
        with open(self.d.store_path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("good-2", text)
        self.assertIn("bad-1", text)
        self.assertEqual(self.health()["jobs_running"], 0)
        self.assertEqual(self.c.ok("validate_model", {"model_string": "mock/good-1"}),
                         "good-1")

    def test_list_cache_and_force_refresh(self):
        self.add_mock()
        self.wait_job(self.start_job({"provider": "mock"}))
        self.assertEqual(self.mock.lists, 1)
        self.wait_job(self.start_job({"provider": "mock"}))
        self.assertEqual(self.mock.lists, 1, "the cached list was not used")
        self.wait_job(self.start_job({"provider": "mock", "force_refresh": True}))
        self.assertEqual(self.mock.lists, 2, "force_refresh did not list again")

    def test_persist_on_success_false(self):
        self.add_mock()
        sv = self.state_version()
        st = self.wait_job(self.start_job({"provider": "mock", "persist_on_success": False}))
        self.assertIs(st["success"], True, st)
        self.assertIs(st["persisted"], False, st)
        self.assertEqual(st["messages"],
                         ["Successfully discovered 2 valid and 2 invalid models for mock"])
        self.assertEqual(self.state_version(), sv + 1)
        self.assertEqual(list(self.c.ok("get", {"provider_name": "mock"})["valid_models"]),
                         ["good-1", "good-2"])
        with open(self.d.store_path, encoding="utf-8") as f:
            self.assertNotIn("good-1", f.read())

    def test_error_fails_the_job_and_leaves_the_provider(self):
        before = self.add_mock(api_key="sk-bbx-wrong-key", valid_models={"keep": "k"})
        with open(self.d.store_path, encoding="utf-8") as f:
            file_before = f.read()
        sv = self.state_version()
        st = self.wait_job(self.start_job({"provider": "mock"}))
        self.assertIs(st["success"], False, st)
        self.assertIs(st["persisted"], False, st)
        self.assertEqual(st["providers"]["mock"]["state"], "error")
        self.assertEqual(len(st["messages"]), 1, st)
        self.assertTrue(st["messages"][0].startswith("Error discovering models for mock: "),
                        st)
        self.assertNotIn("sk-bbx-wrong-key", json.dumps(st))
        self.assertEqual(self.c.ok("get", {"provider_name": "mock"}), before)
        self.assertEqual(self.state_version(), sv)
        with open(self.d.store_path, encoding="utf-8") as f:
            self.assertEqual(f.read(), file_before)
        self.assertNotIn("sk-bbx-wrong-key", self.d.stderr())

    def test_skip_and_success_in_one_job(self):
        self.add_mock()
        self.set_provider("nokey", "NoKey", self.mock.url)
        keys = self.c.ok("keys")
        st = self.wait_job(self.start_job({}))
        self.assertIs(st["success"], True, st)
        self.assertIs(st["persisted"], True, st)
        expect = []
        for k in keys:
            if k == "mock":
                expect.append("Successfully discovered 2 valid and 2 invalid models for mock")
            else:
                expect.append("Skipping %s: No valid API key configured" % k)
        self.assertEqual(st["messages"][-1:], [PERSISTED_LINE])
        self.assertEqual(sorted(st["messages"][:-1]), sorted(expect))
        self.assertEqual(st["providers"]["nokey"]["state"], "skipped")
        self.assertEqual(st["providers"]["mock"]["state"], "ok")

    def test_failure_in_one_provider_applies_the_others_but_persists_nothing(self):
        self.add_mock()
        bad = self.add_mock("mockbad", api_key="sk-bbx-wrong-key")
        with open(self.d.store_path, encoding="utf-8") as f:
            file_before = f.read()
        sv = self.state_version()
        st = self.wait_job(self.start_job({}))
        self.assertIs(st["success"], False, st)
        self.assertIs(st["persisted"], False, st)
        self.assertEqual(st["providers"]["mock"]["state"], "ok")
        self.assertEqual(st["providers"]["mockbad"]["state"], "error")
        self.assertNotIn(PERSISTED_LINE, st["messages"])
        self.assertIn("Successfully discovered 2 valid and 2 invalid models for mock",
                      st["messages"])
        self.assertEqual(len([m for m in st["messages"]
                              if m.startswith("Error discovering models for mockbad: ")]), 1)
        # mock's result is applied (one change), mockbad is exactly as it was, no persist
        self.assertEqual(self.state_version(), sv + 1)
        self.assertEqual(list(self.c.ok("get", {"provider_name": "mock"})["valid_models"]),
                         ["good-1", "good-2"])
        self.assertEqual(self.c.ok("get", {"provider_name": "mockbad"}), bad)
        with open(self.d.store_path, encoding="utf-8") as f:
            self.assertEqual(f.read(), file_before)

    def test_running_job_shape_and_jobs_running(self):
        self.mock.delay = 1.0
        self.add_mock()
        job = self.start_job({"provider": "mock"})
        st = self.c.ok("job_status", {"job": job})
        self.assert_job_shape(st, job)
        self.assertEqual(st["state"], "running", st)
        self.assertIsNone(st["success"], st)
        self.assertIs(st["persisted"], False, st)
        self.assertIn(st["providers"]["mock"]["state"], ("queued", "listing", "validating"))
        self.assertEqual(self.health()["jobs_running"], 1)
        st = self.wait_job(job)
        self.assertIs(st["success"], True, st)
        self.assertEqual(self.health()["jobs_running"], 0)

    def test_sigterm_while_a_job_waits_on_a_slow_provider(self):
        self.mock.delay = 8.0
        self.add_mock()
        job = self.start_job({"provider": "mock"})
        deadline = time.monotonic() + 5
        while not any(m == "POST" for m, _ in self.mock.paths):
            self.assertLess(time.monotonic(), deadline, "no probe reached the mock")
            time.sleep(0.05)
        time.sleep(0.2)  # the probes are now blocked in the mock
        self.assertEqual(self.c.ok("job_status", {"job": job})["state"], "running")
        self.assert_clean_stop(self.d)


if __name__ == "__main__":
    unittest.main()
