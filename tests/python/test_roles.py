"""Client roles, reload on SIGHUP and the audit trail (protocol v1.1, "Client roles").

- Keys in --curve-clients-dir are admins (every op); keys in --curve-readers-dir are readers:
  every read op, health, job_status, model_status and provider_status. Any other op from a
  reader: `forbidden`, "Operation '<op>' is not allowed for this client", and nothing changes
  (state_version, the providers file's bytes). The refusal comes after unknown_op and before
  any argument check. A key in neither directory gets nothing (the handshake fails).
- The role is looked up per request from the current key tables: after SIGHUP a key moved
  from readers to admins gains its rights on its open connection; a removed key's open
  connection gets `forbidden` for every op and a new connection with it gets nothing.
- SIGHUP keeps the process (same pid), fails no request in flight, and a config file that
  does not load is refused (the old configuration stays; health reload_ok false).
- Every applied change is logged with the caller's key name; its events carry "by".

Run: PM_DAEMON=... PM_PMCTL=... python3 -m unittest -v test_roles   (in tests/python)
"""

import os
import re
import shutil
import signal
import tempfile
import threading
import time
import unittest

import zmq

import pmharness as h
from pmsecrets import test_key
from pmupstream import FakeUpstream
from test_model_status import KEY, StatusTestCase
from test_security import NO_REPLY_WAIT, CurveClient, keygen, run_pmctl

FORBIDDEN = "Operation '%s' is not allowed for this client"
RELOAD_DONE = r"reload: applied|reload refused"

# Every op a reader may not run, with arguments that would succeed for an admin.
REFUSED_OPS = [
    ("set_provider", {"provider": "rogue", "name": "Rogue",
                      "base_api_url": "https://rogue.example.test/v1"}),
    ("remove_provider", {"provider": "acme"}),
    ("set_short_name", {"provider": "acme", "long_name": "m1", "short_name": "x"}),
    ("discover_models", {"provider": "acme"}),
    ("verify_models", {"provider": "acme"}),
    ("persist_provider_configs", {}),
]


class RoleKeys:
    """A server key, an admin (alice), a reader (rita) and a stranger (mallory)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pm-roles-keys-")
        self.clients_dir = os.path.join(self.dir, "clients")
        self.readers_dir = os.path.join(self.dir, "readers")
        os.mkdir(self.clients_dir)
        os.mkdir(self.readers_dir)
        self.server = keygen(self.dir, "server")
        self.alice = keygen(self.dir, "alice")
        self.rita = keygen(self.dir, "rita")
        self.mallory = keygen(self.dir, "mallory")
        shutil.copy(os.path.join(self.dir, "alice.pub"), self.clients_dir)
        shutil.copy(os.path.join(self.dir, "rita.pub"), self.readers_dir)
        self.server_key_file = os.path.join(self.dir, "server.key")

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class RolesTest(h.DaemonTestCase):
    """A CURVE daemon whose readers directory comes from the config file."""

    def setUp(self):
        if not zmq.has("curve"):
            self.skipTest("libzmq without CURVE")
        self.keys = RoleKeys()
        self.addCleanup(self.keys.cleanup)
        self.daemon_kwargs = {
            "config": self.config_text(),
            "extra_args": ["--curve-secret-key-file", self.keys.server_key_file,
                           "--curve-clients-dir", self.keys.clients_dir]}
        super().setUp()
        self.c.close()  # the plain client of the base class cannot talk to this daemon
        self.admin = self.c = self.client(self.keys.alice)
        self.reader = self.client(self.keys.rita)

    def config_text(self, log_level="info"):
        return ("log_level: %s\nsecurity:\n  curve_readers_dir: %s\n"
                % (log_level, self.keys.readers_dir))

    def client(self, keys, timeout=h.REPLY_TIMEOUT):
        c = CurveClient(self.d.ctx, self.d.endpoint, keys, self.keys.server[0], daemon=self.d,
                        timeout=timeout)
        self.d._clients.append(c)
        return c

    def subscriber(self, keys, topic=b"providers"):
        s = h.Subscriber.__new__(h.Subscriber)
        s.sock = self.d.ctx.socket(zmq.SUB)
        s.sock.setsockopt(zmq.LINGER, 0)
        s.sock.curve_publickey, s.sock.curve_secretkey = keys
        s.sock.curve_serverkey = self.keys.server[0]
        s.sock.setsockopt(zmq.SUBSCRIBE, topic)
        s.sock.connect(self.d.events_endpoint)
        self.d._clients.append(s)
        return s

    def sighup(self):
        """Sends SIGHUP and waits until the daemon logged the reload's outcome."""
        before = len(re.findall(RELOAD_DONE, self.d.stderr()))
        os.kill(self.d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if len(re.findall(RELOAD_DONE, self.d.stderr())) > before:
                return
            time.sleep(0.02)
        self.fail("no reload outcome logged; stderr:\n%s" % self.d.stderr()[-3000:])

    def wait_for_log(self, pattern, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.d.stderr()):
                return
            time.sleep(0.05)
        self.fail("no log line matching %r; stderr:\n%s" % (pattern, self.d.stderr()[-3000:]))

    def file_bytes(self):
        with open(self.d.store_path, "rb") as f:
            return f.read()

    def assert_forbidden(self, c, op, args):
        rep = c.call(op, args, id=7)
        self.assert_error(rep, "forbidden", FORBIDDEN % op, id=7)

    # ------------------------------------------------------------------ roles
    def test_reader_refused_every_change_and_nothing_changes(self):
        self.set_provider("acme", valid_models={"m1": "s1"})
        self.admin.ok("persist_provider_configs")
        version, before = self.state_version(), self.file_bytes()
        for op, args in REFUSED_OPS:
            with self.subTest(op=op):
                self.assert_forbidden(self.reader, op, args)
                # forbidden comes before the argument checks (reading 4) ...
                self.assert_forbidden(self.reader, op, {"provider": 42})
        # ... and after unknown_op.
        self.assertEqual(self.reader.err("no_such_op")[0], "unknown_op")
        self.assertEqual(self.state_version(), version)
        self.assertEqual(self.file_bytes(), before)
        self.assertEqual(self.admin.ok("get", {"provider_name": "acme"})["valid_models"],
                         {"m1": "s1"})
        self.assertFalse(self.admin.ok("contains", {"provider_name": "rogue"}))
        self.assertEqual(self.health()["jobs_running"], 0)

    def test_reader_reads(self):
        self.set_provider("acme", valid_models={"m1": "s1"})
        r = self.reader
        self.assertEqual(r.ok("get", {"provider_name": "acme"})["valid_models"], {"m1": "s1"})
        self.assertIn("acme", r.ok("keys"))
        self.assertIn("acme", dict(r.ok("items")))
        self.assertEqual(r.ok("validate_model", {"model_string": "acme/s1"}), "m1")
        self.assertEqual(r.ok("health")["status"], "ok")
        self.assertIsInstance(r.ok("model_status", {"provider": "acme"}), list)
        self.assertIsInstance(r.ok("provider_status", {"provider": "acme"}), list)
        # job_status is a read: a job the admin started is visible to the reader.
        job = self.admin.ok("discover_models", {"provider": "acme"})["job"]
        self.assertEqual(r.ok("job_status", {"job": job})["job"], job)
        # Argument errors of a permitted op stay what they were.
        self.assertEqual(r.err("get", {})[0], "bad_request")

    def test_admin_changes_are_audited_and_events_carry_by(self):
        sub = self.subscriber(self.keys.rita)  # readers may subscribe
        self.prime_events(sub)
        self.set_provider("acme", valid_models={"m1": "s1"})
        ev = None
        for _ in range(10):
            got = sub.recv(3.0)
            self.assertIsNotNone(got, "no event for the change")
            if got[1].get("providers") == ["acme"]:
                ev = got[1]
                break
        self.assertIsNotNone(ev)
        self.assertEqual(ev["event"], "changed")
        self.assertEqual(ev["by"], "alice")
        self.admin.ok("set_short_name", {"provider": "acme", "long_name": "m1",
                                         "short_name": "one"})
        self.assertTrue(self.admin.ok("remove_provider", {"provider": "acme"}))
        self.wait_for_log(r"audit: set_provider acme \(1 models, key [^)]*\) by alice")
        self.wait_for_log(r"audit: set_short_name acme m1 -> one by alice")
        self.wait_for_log(r"audit: remove_provider acme by alice")
        self.admin.ok("discover_models", {"provider": "openai"})
        self.wait_for_log(r"audit: discover_models job \S+ \(provider openai.*\) by alice")

    def test_models_events_carry_by(self):
        sub = self.subscriber(self.keys.rita, topic=b"")
        self.prime_events(sub)
        self.set_provider("acme", valid_models={"m1": "s1"})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got = sub.recv(1.0)
            if got and got[0][0] == b"models" and got[1].get("provider") == "acme":
                self.assertEqual(got[1]["event"], "models_changed")
                self.assertEqual(got[1]["by"], "alice")
                return
        self.fail("no models event for acme")

    def test_scheduled_job_changes_carry_scheduler(self):
        up = FakeUpstream({"scenarios": {"up": {"models": ["m-a", "m-b"], "key": KEY}}})
        self.addCleanup(up.close)
        sub = self.subscriber(self.keys.rita, topic=b"models")
        self.set_provider("up", url=up.url("up"), api_key=KEY)
        # The schedule comes with a reload: a list every 1.2 s, by "scheduler".
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text() + "discovery:\n  list_interval_minutes: 0.02\n")
        self.sighup()
        self.assertIs(self.health()["reload_ok"], True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            got = sub.recv(1.0)
            if got is None or got[1].get("provider") != "up":
                continue
            changes = {c["model"]: c["to"] for c in got[1]["changes"]}
            if changes.get("m-a") == "unverified":
                self.assertEqual(got[1]["by"], "scheduler", got[1])
                return
        self.fail("no models event of the scheduled list; stderr:\n%s"
                  % self.d.stderr()[-2000:])

    def test_unknown_key_gets_nothing(self):
        frames = self.client(self.keys.mallory).send_raw(h.request_bytes("health"),
                                                         timeout=NO_REPLY_WAIT)
        self.assertIsNone(frames)

    # ------------------------------------------------------------------ reload
    def test_sighup_moves_and_removes_keys(self):
        pid = self.d.proc.pid
        self.assert_forbidden(self.reader, "set_provider", REFUSED_OPS[0][1])
        self.assertIsNone(self.health()["reloaded_at"])
        self.assertIsNone(self.health()["reload_ok"])
        # rita moves to the admins: her open connection gains the rights at once.
        shutil.move(os.path.join(self.keys.readers_dir, "rita.pub"), self.keys.clients_dir)
        self.sighup()
        self.assertEqual(self.set_provider("rogue", c=self.reader)["provider"], "rogue")
        self.wait_for_log(r"audit: set_provider rogue .* by rita")
        # alice is removed: her open connection is refused every op ...
        os.remove(os.path.join(self.keys.clients_dir, "alice.pub"))
        self.sighup()
        for op, args in [("health", None), ("get", {"provider_name": "rogue"})] + REFUSED_OPS:
            with self.subTest(op=op):
                rep = self.admin.call(op, args) if args is not None else self.admin.call(op)
                self.assert_error(rep, "forbidden", FORBIDDEN % op)
        # ... and a new connection with her key gets nothing.
        frames = self.client(self.keys.alice).send_raw(h.request_bytes("health"),
                                                       timeout=NO_REPLY_WAIT)
        self.assertIsNone(frames)
        self.assertEqual(self.d.proc.pid, pid)
        self.assertIsNone(self.d.proc.poll())
        health = self.reader.ok("health")
        self.assertIs(health["reload_ok"], True)
        self.assertIsInstance(health["reloaded_at"], float)
        self.assertLess(abs(health["reloaded_at"] - time.time()), 60)

    def test_no_failed_request_during_reloads(self):
        stop = threading.Event()
        failures, count = [], [0]

        def hammer():
            c = self.client(self.keys.rita)
            while not stop.is_set():
                try:
                    rep = c.call("keys")
                    if rep.get("ok") is not True:
                        failures.append(rep)
                    count[0] += 1
                except Exception as e:  # noqa: B902 - reported below
                    failures.append(repr(e))
                    return

        t = threading.Thread(target=hammer, daemon=True)
        t.start()
        try:
            for _ in range(5):
                time.sleep(0.1)
                self.sighup()
        finally:
            stop.set()
            t.join(10)
        self.assertEqual(failures, [])
        self.assertGreater(count[0], 10)
        self.assertIs(self.health()["reload_ok"], True)

    def test_broken_config_keeps_the_old_one(self):
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write("log_level: [not, a, level\n")
        shutil.move(os.path.join(self.keys.readers_dir, "rita.pub"), self.keys.clients_dir)
        self.sighup()
        self.wait_for_log(r"reload refused, the old configuration stays: ")
        health = self.reader.ok("health")
        self.assertIs(health["reload_ok"], False)
        self.assertIsInstance(health["reloaded_at"], float)
        # The key tables were not reloaded either: rita is still a reader.
        self.assert_forbidden(self.reader, "set_provider", REFUSED_OPS[0][1])
        # A readers directory that cannot be read is refused too.
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text().replace(self.keys.readers_dir,
                                               self.keys.readers_dir + "-missing"))
        self.sighup()
        self.assertIs(self.health()["reload_ok"], False)
        self.assertRegex(self.d.stderr(), r"reload refused.*cannot open the readers directory")
        self.assert_forbidden(self.reader, "set_provider", REFUSED_OPS[0][1])
        # A good config applies again (and takes the moved key).
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text())
        self.sighup()
        self.assertIs(self.health()["reload_ok"], True)
        self.set_provider("rogue", c=self.reader)

    def test_reload_log_level_and_restart_only_settings(self):
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text(log_level="debug") + "workers: 7\n")
        self.sighup()
        self.wait_for_log(r"reload: workers changed; it needs a restart and was not applied")
        self.assertIs(self.health()["reload_ok"], True)
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text(log_level="error"))
        self.sighup()
        size = len(self.d.stderr())
        self.set_provider("quiet")  # an info line at the info level; none at error
        time.sleep(0.3)
        self.assertNotIn("audit: set_provider quiet", self.d.stderr()[size:])

    def pmctl(self, client_name, *args):
        return run_pmctl(["--endpoint", self.d.endpoint, "--timeout", "2000", "--retries", "1",
                          "--curve-server-key", os.path.join(self.keys.dir, "server.pub"),
                          "--curve-client-key",
                          os.path.join(self.keys.dir, client_name + ".key")] + list(args))

    def test_pmctl_health_shows_the_reload(self):
        rc = self.pmctl("rita", "health")
        self.assertEqual(rc.returncode, 0, rc.stderr.decode())
        self.assertNotIn(b"reload", rc.stdout)  # no reload yet
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write("discovery: [broken\n")
        self.sighup()
        rc = self.pmctl("rita", "health")
        self.assertEqual(rc.returncode, 0, rc.stderr.decode())
        self.assertRegex(rc.stdout.decode(), r"reloaded_at\s+\d+\.\d{3}\n")
        self.assertRegex(rc.stdout.decode(), r"reload_ok\s+false\n")
        # A refused op says why through pmctl too.
        rc = self.pmctl("rita", "remove-provider", "openai")
        self.assertNotEqual(rc.returncode, 0)
        self.assertIn(b"not allowed for this client", rc.stderr + rc.stdout)


class NoCurveTest(h.DaemonTestCase):
    """Without CURVE nobody is refused (v1 unchanged); SIGHUP still reloads."""

    def test_every_op_allowed_and_reload(self):
        self.assertIsNone(self.health()["reload_ok"])
        self.set_provider("acme")
        self.assertTrue(self.c.ok("remove_provider", {"provider": "acme"}))
        self.assertEqual(self.c.ok("persist_provider_configs")["providers"],
                         len(self.c.ok("keys")))
        pid = self.d.proc.pid
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.health()["reload_ok"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIs(self.health()["reload_ok"], True)
        self.assertEqual(self.d.proc.pid, pid)
        self.assertRegex(self.d.stderr(), r"audit: remove_provider acme by -")

    def test_events_have_no_by_without_curve(self):
        sub = self.d.subscriber()
        self.prime_events(sub)
        self.set_provider("acme")
        got = sub.recv(3.0)
        self.assertIsNotNone(got)
        self.assertEqual(got[1]["providers"], ["acme"])
        self.assertNotIn("by", got[1])



OVERRIDES = """providers:
  acme:
    name: Acme
    base_api_url: https://acme.example.test/v1
    api_key: %s
    valid_models: {m1: s1}
  other:
    name: Other
    base_api_url: https://other.example.test/v1
"""


class ReloadOverridesTest(h.DaemonTestCase):
    """SIGHUP layers changed provider overrides again: one change per provider that differs."""

    ENV_KEY = test_key("roles-env")

    def setUp(self):
        self.daemon_kwargs = {"config": OVERRIDES % "from-config",
                              "env": {"ACME_API_KEY": self.ENV_KEY}}
        super().setUp()

    def test_changed_overrides_applied_one_change_each(self):
        self.assertEqual(self.c.ok("get", {"provider_name": "acme"})["name"], "Acme")
        sub = self.d.subscriber()
        self.prime_events(sub)
        version = self.state_version()
        other_before = self.c.ok("get", {"provider_name": "other"})
        text = (OVERRIDES % "changed-in-config").replace("name: Acme", "name: Acme Two")
        text = text.replace("valid_models: {m1: s1}", "valid_models: {m2: s2}")
        text += "  fresh:\n    name: Fresh\n    base_api_url: https://fresh.example.test/v1\n"
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(text)
        os.kill(self.d.proc.pid, signal.SIGHUP)
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            got = sub.recv(1.0)
            if got is not None:
                events.append(got[1])
        self.assertEqual(sorted(e["providers"][0] for e in events), ["acme", "fresh"], events)
        self.assertEqual(self.state_version(), version + 2)
        acme = self.c.ok("get", {"provider_name": "acme"})
        self.assertEqual(acme["name"], "Acme Two")
        self.assertEqual(acme["valid_models"], {"m1": "s1", "m2": "s2"})  # merged per model
        self.assertEqual(acme["api_key"], self.ENV_KEY)  # the environment still wins
        self.assertEqual(self.c.ok("get", {"provider_name": "other"}), other_before)
        # A provider of the config file is pinned, as at start-up.
        self.assertEqual(self.c.err("remove_provider", {"provider": "fresh"})[0], "conflict")
        with open(self.d.store_path, encoding="utf-8") as f:
            self.assertIn("Acme Two", f.read())
        self.assertRegex(self.d.stderr(), r"audit: provider override of acme applied by reload")
        # An override that leaves the file: logged, what it set stays.
        with open(self.d.config_path, "w", encoding="utf-8") as f:
            f.write(text.replace("  other:\n    name: Other\n"
                                 "    base_api_url: https://other.example.test/v1\n", ""))
        os.kill(self.d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "override of provider other left" not in self.d.stderr() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("reload: the override of provider other left the config file",
                      self.d.stderr())
        self.assertEqual(self.state_version(), version + 2)  # nothing differed
        self.assertTrue(self.c.ok("contains", {"provider_name": "other"}))


class ReloadStatusTest(StatusTestCase):
    """SIGHUP applies the model status settings: an ignore glob added to the config file."""

    SCENARIOS = {"p": {"models": ["gpt-x", "tts-1"], "key": KEY}}

    def test_reload_applies_ignore_patterns(self):
        d = self.start({"p": {}})
        self.verify("p")  # a list; nothing of valid_models to probe
        states = {m: r["state"] for m, r in self.by_model("p").items()}
        self.assertEqual(states, {"gpt-x": "unverified", "tts-1": "unverified"})
        with open(d.config_path, "w", encoding="utf-8") as f:
            f.write(self.config({"p": {}}, {"ignore": ["tts-*"]}))
        before = self.status_version()
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.ok("health")["reload_ok"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIs(self.ok("health")["reload_ok"], True, d.stderr()[-2000:])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {m: r["state"] for m, r in self.by_model("p").items()}
            if states.get("tts-1") == "ignored":
                break
            time.sleep(0.05)
        self.assertEqual(states, {"gpt-x": "unverified", "tts-1": "ignored"})
        self.assertGreater(self.status_version(), before)


if __name__ == "__main__":
    unittest.main()
