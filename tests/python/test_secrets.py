"""Secrets hygiene: API keys never appear in logs, error messages, job messages or crash
output; keys from the environment are never written to disk; the providers file and its temp
files are 0600 and the data dir 0700.

Every key used here is a pmsecrets.test_key(): they share one secret tail, so a leak is found
by looking for the tail (raw, URL-encoded, JSON-escaped) wherever it must not be. The proof
that environment keys never reach the disk is taken at the system-call level when strace is
there: every write(2)-family call of the daemon is recorded (files, temp files that are
renamed or deleted later, stderr) and none may carry an environment key, while the key given
over the wire must show up in the write of the providers file (so the trace is known to
work). The same trace shows the mode each file was created with.

`make test` also greps every output of the whole run for the tail (check_secrets.py over
the ctest log and the daemon logs that pmharness keeps with PM_KEEP_LOGS), and the transcripts
of status records, errors and events that test_model_status keeps there too (strictly: not
even a key prefix). test_model_status checks its own replies, events, logs and status files.

Run: PM_DAEMON=... python3 -m unittest -v test_secrets   (in tests/python)
"""

import glob
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

import pmharness as h
import pmsecrets
from pmsecrets import test_key
from pmupstream import FakeUpstream

ENV_OPENAI = test_key("env-openai")
ENV_ENVPROV = test_key("env-envprov")
CONFIG_KEY = test_key("config")
WIRE_OK = test_key("wire-ok")
WIRE_BAD = test_key("wire-bad")
WIRE_OPENAI = test_key("wire-openai")
ENV_KEYS = (ENV_OPENAI, ENV_ENVPROV)

UPSTREAM = {"scenarios": {
    # the right key: lists two models, both probes succeed
    "ok": {"models": ["m-a", "m-b"], "key": WIRE_OK},
    # expects another key: answers 401 "Incorrect API key provided: <the key it got>"
    "echo401": {"models": ["x"], "key": "not-any-test-key"},
    # accepts any key, then fails the list with a body that repeats the key
    "echobody": {"models": ["x"], "key": None,
                 "rules": [{"kind": "list", "status": 400,
                            "body": "{\"error\": {\"message\": \"bad request from {key}\"}}"}]},
}}


def strace_path():
    return shutil.which("strace")


class TracedDaemon(h.Daemon):
    """The daemon under `strace -f`, recording every call that creates or writes a file."""

    CALLS = ("open,openat,creat,mkdir,mkdirat,chmod,fchmod,fchmodat,rename,renameat,"
             "renameat2,write,pwrite64,writev,pwritev,pwritev2,sendfile")

    def __init__(self, trace_path, **kw):
        super().__init__(**kw)
        self.trace_path = trace_path

    def argv(self):
        return [strace_path(), "-f", "-qq", "-s", "4000000", "-o", self.trace_path,
                "-e", "trace=" + self.CALLS, "--"] + super().argv()

    def daemon_pid(self):
        """strace's child, i.e. the daemon itself (signals go to it, not to strace)."""
        path = "/proc/%d/task/%d/children" % (self.proc.pid, self.proc.pid)
        for _ in range(100):
            try:
                with open(path) as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError("strace has no child")

    def stop(self, timeout=h.STOP_TIMEOUT * 3):
        self.close_clients()
        if self.proc is None or self.proc.poll() is not None:
            return (None if self.proc is None else self.proc.returncode), 0.0
        t0 = time.monotonic()
        os.kill(self.daemon_pid(), signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
            self.proc.kill()
            self.proc.wait()
        return rc, time.monotonic() - t0


class CheckerTest(unittest.TestCase):
    """check_secrets.py / pmsecrets must find a planted key in every form, and nothing else."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pm-sec-check-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        with open(os.path.join(self.dir, name), "w", encoding="utf-8") as f:
            f.write(text)

    def run_checker(self):
        return subprocess.run([sys.executable, os.path.join(h.HERE, "check_secrets.py"),
                               self.dir],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def test_finds_every_form(self):
        import json
        import urllib.parse
        key = test_key("planted")
        forms = {"raw": "x %s y" % key,
                 "url": "GET /v1?key=%s" % urllib.parse.quote(key, safe=""),
                 "url-lower": urllib.parse.quote(key, safe="").lower(),
                 "form": urllib.parse.quote_plus(key),
                 "json": json.dumps({"k": key}).replace("/", "\\/")}
        for name, text in forms.items():
            self.assertTrue(pmsecrets.scan_text(text), name)
        self.write("ctest.log", forms["url"])
        rc = self.run_checker()
        self.assertEqual(rc.returncode, 1, rc.stdout)
        self.assertIn(b"LEAK", rc.stdout)
        self.assertNotIn(key.encode(), rc.stdout + rc.stderr, "the checker printed the key")

    def test_masked_keys_are_not_leaks(self):
        key = test_key("masked")
        masked = "set_provider acme (2 models, key %s...%s)" % (key[:3], key[-4:])
        self.assertEqual(pmsecrets.scan_text(masked, daemon_log=True), [])
        self.write("1-stderr-1.log", masked + "\n")
        self.write("ctest.log", "test_api_key_nil_clears ... ok\n")
        rc = self.run_checker()
        self.assertEqual(rc.returncode, 0, rc.stdout)

    def status_record(self, message):
        return {"provider": "p", "model": "m", "state": "failing", "in_valid_models": True,
                "listed": True, "first_seen_at": 1.0, "last_listed_at": 2.0,
                "last_checked_at": 3.0, "last_ok_at": None, "latency_ms": None, "failures": 3,
                "last_error": {"class": "model", "status": 400, "message": message},
                "meta": {"owned_by": "x"}}

    def test_scan_obj_finds_a_key_anywhere_in_a_record_or_event(self):
        key = test_key("obj")
        self.assertEqual(pmsecrets.scan_obj(self.status_record("no such model")), [])
        for obj in (self.status_record("bad key %s" % key),
                    {"event": "models_changed", "provider": "p",
                     "changes": [{"model": key, "from": None, "to": "valid"}]},
                    [{"provider": "p", "last_error": {"message": key.encode()}}],
                    {key: 1}):
            self.assertTrue(pmsecrets.scan_obj(obj), obj)
        self.assertTrue(pmsecrets.scan_obj({"message": "sk-test-x"}, daemon_log=True))
        self.assertEqual(pmsecrets.scan_obj({"message": key[:3] + "..." + key[-4:]},
                                            daemon_log=True), [])

    def test_model_status_transcripts_are_checked_strictly(self):
        # The model-status suite writes what it received to $PM_KEEP_LOGS: a record holding
        # a key there must fail `make test`, and so must even a key's prefix.
        import pmharness
        import test_model_status
        old = pmharness.KEEP_LOGS
        pmharness.KEEP_LOGS = self.dir
        try:
            transcript = test_model_status.Transcript()
        finally:
            pmharness.KEEP_LOGS = old
        self.assertEqual(os.path.dirname(transcript.path), self.dir)
        transcript.add("model_status", [self.status_record("upstream said fine")])
        self.assertEqual(self.run_checker().returncode, 0)
        transcript.add("model_status", [self.status_record("Incorrect API key provided: %s"
                                                           % test_key("rec"))])
        rc = self.run_checker()
        self.assertEqual(rc.returncode, 1, rc.stdout)
        self.assertIn(b"LEAK", rc.stdout)
        self.assertIn(b"transcript", rc.stdout)
        self.assertNotIn(test_key("rec").encode(), rc.stdout + rc.stderr)
        os.unlink(transcript.path)
        transcript.add("event models", {"event": "models_changed", "provider": "p",
                                        "changes": [{"model": "sk-test-only-a-prefix",
                                                     "from": None, "to": "valid"}]})
        self.assertEqual(self.run_checker().returncode, 1)

    def test_prefixes_count_in_daemon_logs_only(self):
        self.write("1-stderr-7.log", "set_provider acme key sk-bbx-acme-0001\n")
        self.assertEqual(self.run_checker().returncode, 1)
        os.unlink(os.path.join(self.dir, "1-stderr-7.log"))
        self.write("LastTest.log", "'sk-bbx-acme-0001' != None\n")  # a failing test's diff
        self.assertEqual(self.run_checker().returncode, 0)


class SecretsTest(unittest.TestCase):
    """One daemon that holds keys from every source, driven through every path that could
    echo one: replies, errors, discovery failures whose upstream repeats the key, logs at
    debug level, persists, and a crash."""

    def setUp(self):
        self.up = FakeUpstream(UPSTREAM)
        self.addCleanup(self.up.close)
        self.tmp = tempfile.mkdtemp(prefix="pm-sec-secrets-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.data_dir = os.path.join(self.tmp, "data")
        self.config = (
            "log_level: debug\n"
            "providers:\n"
            "  cfgprov:\n"
            "    name: From config\n"
            "    base_api_url: %s\n"
            "    api_key: \"%s\"\n"
            "  openai:\n"
            "    base_api_url: %s\n" % (self.up.url("echo401"), CONFIG_KEY,
                                        self.up.url("echo401")))
        self.env = {"OPENAI_API_KEY": ENV_OPENAI, "ENVPROV_API_KEY": ENV_ENVPROV}
        self.trace = os.path.join(self.tmp, "strace.txt")

    def daemon(self, traced=False, crashing=False):
        env = dict(self.env)
        if traced:
            env["ASAN_OPTIONS"] = "detect_leaks=0"  # LeakSanitizer cannot run under ptrace
        if crashing:
            # The signals this test sends are not bugs: no sanitizer report for them.
            env["ASAN_OPTIONS"] = "detect_leaks=0:handle_segv=0:handle_abort=0"
            env["TSAN_OPTIONS"] = "handle_segv=0:handle_abort=0"
        kw = dict(tmpdir=self.tmp, data_dir=self.data_dir, config=self.config, env=env,
                  extra_args=["--log-level", "debug"])
        d = TracedDaemon(self.trace, **kw) if traced else h.Daemon(**kw)
        self.addCleanup(d.cleanup)
        return d.start()

    def assert_no_leak(self, text, what):
        if pmsecrets.scan_text(text):
            self.fail("a test key leaked in %s: %s" % (what, pmsecrets.mask(text)))

    def wait_job(self, c, job):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = c.ok("job_status", {"job": job})
            if st["state"] == "done":
                return st
            time.sleep(0.05)
        self.fail("job %s not done" % job)

    def exercise(self, d):
        """Drives every path; returns the texts of all error and job messages."""
        c = d.client()
        texts = []
        cfg = c.ok("set_provider", {"provider": "wire", "name": "Wire",
                                    "base_api_url": self.up.url("ok"), "api_key": WIRE_OK})
        self.assertEqual(cfg["api_key"], WIRE_OK)  # the caller may read keys back
        c.ok("set_provider", {"provider": "envprov", "name": "EnvProv",
                              "base_api_url": self.up.url("echo401")})
        self.assertEqual(c.ok("get", {"provider_name": "envprov"})["api_key"], ENV_ENVPROV)
        c.ok("set_provider", {"provider": "bodyprov", "name": "Body",
                              "base_api_url": self.up.url("echobody"), "api_key": WIRE_BAD})
        c.ok("set_provider", {"provider": "openai", "name": "OpenAI",
                              "base_api_url": self.up.url("echo401"), "api_key": WIRE_OPENAI})
        self.assertEqual(c.ok("get", {"provider_name": "openai"})["api_key"], ENV_OPENAI)
        # Error replies for requests that carry a key.
        bad_requests = [
            {"provider": "x", "name": "X", "base_api_url": "ftp://nope", "api_key": WIRE_BAD},
            {"provider": "x", "name": "X", "base_api_url": "http://127.0.0.1:9/v1",
             "api_key": WIRE_BAD * 400},
            {"provider": "x", "name": "X", "base_api_url": "http://127.0.0.1:9/v1",
             "api_key": {"nested": WIRE_BAD}},
            {"provider": "x", "name": "X", "base_api_url": "http://127.0.0.1:9/v1",
             "api_key": [WIRE_BAD]},
            {"provider": "BAD KEY " + WIRE_BAD[:8], "name": "X",
             "base_api_url": "http://127.0.0.1:9/v1", "api_key": WIRE_BAD},
            {"name": "X", "base_api_url": "http://127.0.0.1:9/v1", "api_key": WIRE_BAD},
            {"provider": "x", "name": WIRE_BAD.encode(), "base_api_url": "http://127.0.0.1:9",
             "api_key": WIRE_BAD},
        ]
        for args in bad_requests:
            code, message = c.err("set_provider", args)
            self.assertEqual(code, "bad_request")
            texts.append(message)
        code, message = c.err("set_short_name", {"provider": "wire", "long_name": "nope",
                                                 "short_name": "s"})
        texts.append(message)
        texts.append(c.err("getitem", {"provider_name": "nope"})[1])
        # Discovery: one job over everything (fails: echo401 and echobody repeat the key),
        # then one that succeeds and persists.
        st = self.wait_job(c, c.ok("discover_models", {"force_refresh": True})["job"])
        self.assertIs(st["success"], False, st)
        for key in ("envprov", "bodyprov", "cfgprov", "openai"):
            self.assertEqual(st["providers"][key]["state"], "error", (key, st))
        texts += st["messages"] + [p["message"] for p in st["providers"].values()]
        st = self.wait_job(c, c.ok("discover_models", {"provider": "wire"})["job"])
        self.assertIs(st["success"], True, st)
        self.assertIs(st["persisted"], True, st)
        texts += st["messages"] + [p["message"] for p in st["providers"].values()]
        self.assertEqual(sorted(c.ok("get", {"provider_name": "wire"})["valid_models"]),
                         ["m-a", "m-b"])
        c.ok("persist_provider_configs")
        self.assertGreater(self.up.stats()["scenarios"]["echo401"]["auth_failures"], 0)
        return texts

    def assert_files_hold_no_env_key(self):
        paths = [p for p in glob.glob(os.path.join(self.tmp, "**"), recursive=True)
                 if os.path.isfile(p) and not p.endswith(("pm.yaml", "strace.txt"))]
        store = os.path.join(self.data_dir, h.STORE_FILE)
        self.assertIn(store, paths)
        for path in paths:
            with open(path, "rb") as f:
                data = f.read().decode("utf-8", "replace")
            for key in ENV_KEYS:
                self.assertNotIn(key, data, "an environment key is in %s" % path)
        with open(store, encoding="utf-8") as f:
            text = f.read()
        self.assertIn(WIRE_OK, text)      # keys given over the wire are persisted,
        self.assertIn(WIRE_OPENAI, text)  # also for a provider whose env key wins
        self.assertIn(CONFIG_KEY, text)   # and the config file's (not an env key)
        self.assertEqual(stat.S_IMODE(os.stat(store).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)

    def test_keys_never_leak_and_env_keys_never_reach_the_disk(self):
        d = self.daemon()
        texts = self.exercise(d)
        self.assertGreaterEqual(len(texts), 10)
        for t in texts:
            self.assert_no_leak(t, "an error or job message")
        rc, _ = d.stop()
        self.assertEqual(rc, 0, d.stderr()[-2000:])
        logs = d.all_logs()
        self.assertIn("set_provider wire", logs)  # debug logging was on
        self.assertEqual([n for n, _ in pmsecrets.scan_text(logs, daemon_log=True)], [],
                         "a test key leaked in the daemon's log")
        self.assert_files_hold_no_env_key()

    def test_crash_output_holds_no_key(self):
        for sig in (signal.SIGSEGV, signal.SIGABRT):
            d = self.daemon(crashing=True)
            c = d.client()
            c.ok("set_provider", {"provider": "wire", "name": "Wire",
                                  "base_api_url": self.up.url("ok"), "api_key": WIRE_OK})
            d.proc.send_signal(sig)
            rc = d.proc.wait(10)
            self.assertNotEqual(rc, 0)
            self.assertEqual([n for n, _ in pmsecrets.scan_text(d.all_logs(), daemon_log=True)],
                             [], "a key leaked in the crash output of signal %d" % sig)
            d.cleanup()

    def test_core_dumps_are_off(self):
        # A core file would hold every key in memory, environment keys included.
        d = self.daemon()
        with open("/proc/%d/limits" % d.proc.pid) as f:
            line = [x for x in f if x.startswith("Max core file size")][0]
        self.assertEqual(line.split()[4], "0", line)

    def test_system_calls_write_no_env_key_and_create_private_files(self):
        if not strace_path():
            self.skipTest("strace is not installed")
        old = os.umask(0)  # modes must not depend on the umask the daemon inherits
        try:
            d = self.daemon(traced=True)
        finally:
            os.umask(old)
        self.exercise(d)
        rc, _ = d.stop()
        self.assertEqual(rc, 0, d.stderr()[-2000:])
        with open(self.trace, encoding="utf-8", errors="replace") as f:
            trace = f.read()
        self.assertIn("openaicompat-providers.yaml", trace, "the trace recorded no persist")
        for key in ENV_KEYS:
            self.assertNotIn(key, trace, "an environment key was written somewhere")
        writes_with_key = [ln for ln in trace.splitlines()
                           if WIRE_OK in ln and re.search(r"\b(p?write|writev)", ln)]
        self.assertTrue(writes_with_key, "the wire key's persist is not in the trace")
        stderr_writes = "\n".join(ln for ln in trace.splitlines()
                                  if re.match(r"\d+\s+write\(2,", ln))
        self.assertIn("ready", stderr_writes, "the trace recorded no log line")
        self.assertEqual([n for n, _ in pmsecrets.scan_text(stderr_writes)], [],
                         "a key was written to stderr")
        created = re.findall(r'(?:open|openat|creat)\((?:AT_FDCWD, |\d+, )?"([^"]+)", '
                             r'([A-Z_|]*O_CREAT[A-Z_|]*), (0\d+)\)', trace)
        in_data = [(p, m) for p, _, m in created if p.startswith(self.data_dir)]
        self.assertTrue(any(".tmp" in p for p, _ in in_data), created)
        for path, mode in in_data:
            self.assertEqual(int(mode, 8) & 0o077, 0, "%s created with mode %s" % (path, mode))
        mkdirs = re.findall(r'mkdir(?:at)?\((?:AT_FDCWD, )?"([^"]+)", (0\d+)\)', trace)
        self.assertIn((self.data_dir, "0700"), mkdirs)
        self.assert_files_hold_no_env_key()


class ModesTest(unittest.TestCase):
    """File and directory modes, whatever the umask."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pm-sec-modes-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start(self, data_dir, umask):
        d = h.Daemon(tmpdir=self.tmp, data_dir=data_dir)
        self.addCleanup(d.cleanup)
        old = os.umask(umask)
        try:
            d.start()
        finally:
            os.umask(old)
        return d

    def mode(self, path):
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_new_data_dir_and_parents_are_0700_and_file_0600_with_umask_0(self):
        data_dir = os.path.join(self.tmp, "a", "b", "data")
        d = self.start(data_dir, 0)
        for path in (os.path.join(self.tmp, "a"), os.path.join(self.tmp, "a", "b"), data_dir):
            self.assertEqual(self.mode(path), 0o700, path)
        d.client().ok("set_provider", {"provider": "p", "name": "P",
                                       "base_api_url": "http://127.0.0.1:9/v1",
                                       "api_key": test_key("mode")})
        self.assertEqual(self.mode(d.store_path), 0o600)
        d.client().ok("persist_provider_configs")
        self.assertEqual(self.mode(d.store_path), 0o600)
        self.assertEqual([f for f in os.listdir(data_dir) if ".tmp" in f], [],
                         "a temp file was left behind")
        for name in os.listdir(data_dir):
            self.assertEqual(self.mode(os.path.join(data_dir, name)) & 0o077, 0, name)
        self.assertEqual(d.stop()[0], 0)

    def test_a_world_readable_file_becomes_0600_on_the_next_persist(self):
        data_dir = os.path.join(self.tmp, "data")
        os.makedirs(data_dir, mode=0o700)
        store = os.path.join(data_dir, h.STORE_FILE)
        with open(store, "w", encoding="utf-8") as f:
            f.write("providers: {}\n")
        os.chmod(store, 0o644)
        d = self.start(data_dir, 0o022)
        d.client().ok("set_provider", {"provider": "p", "name": "P",
                                       "base_api_url": "http://127.0.0.1:9/v1",
                                       "api_key": test_key("mode2")})
        self.assertEqual(self.mode(store), 0o600)
        self.assertEqual(d.stop()[0], 0)


if __name__ == "__main__":
    unittest.main()
