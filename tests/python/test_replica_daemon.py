"""Read-replica daemons (protocol v1.1 "Read replicas", readings 1-4 and 9 of "Replicas, roles,
metrics"), black-box: real primaries and replicas (`--replica-of`, `--replica-events`) on free
127.0.0.1 ports, talked to with python3-zmq and python3-msgpack only.

- every read op gives the same bytes on a replica as on its primary at the same state_version;
- every write op, discover_models, verify_models and persist_provider_configs get `read_only`
  with the exact message (after bad_request and unknown_op), and nothing changes on the primary;
- a write on the primary becomes visible on the replica, whose events endpoint re-publishes the
  `changed` event (with its `configs`) and sends the replica's own heartbeats;
- a replica of a replica converges;
- a replica started before its primary answers `unavailable` (`Replica not yet synchronised
  with <EP>`, health primary_seen_s nil) and converges once the primary is up;
- with the primary SIGKILLed the replica keeps answering reads, primary_seen_s grows, forwarded
  ops get `unavailable` (`Primary <EP> did not answer`); the restarted primary (new epoch) is
  re-snapshotted;
- forwarded model_status / provider_status / job_status answers equal the primary's;
- a replica holds no providers file;
- /healthz on a replica: 503 with the reason before its first snapshot, then 200 (also while
  its primary is away);
- CURVE towards the primary: the replica's own key pair, listed as a reader on the primary;
- SIGHUP on a replica reloads (keys, log level) without a restart.

Run: python3 -m unittest -v test_replica_daemon   (in tests/python; PM_DAEMON set by ctest)
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import zmq

import pmharness as h
import pmmetrics
from test_security import CurveClient, keygen, run_pmctl

HEARTBEAT_MS = 100  # fast heartbeats: silence is noticed after 3 x this
CONVERGE_TIMEOUT = 10.0 * h.TIMEOUT_SCALE


class Node(h.Daemon):
    """A daemon whose endpoints can be fixed before it starts (a primary that a replica names
    before it runs, or that restarts on the same endpoints)."""

    def __init__(self, endpoints=None, **kw):
        super().__init__(**kw)
        self.fixed = endpoints

    def spawn(self):
        if self.fixed is None:
            return super().spawn()
        self._runs += 1
        run = next(h._RUN_IDS)
        self.endpoint, self.events_endpoint = self.fixed
        self.stderr_path = os.path.join(self.tmp, "stderr-%d.log" % run)
        self.stdout_path = os.path.join(self.tmp, "stdout-%d.log" % run)
        self._logs.extend([self.stderr_path, self.stdout_path])
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=self.env, cwd=self.tmp)
        return self.proc


def fixed_endpoints():
    p, q = h.free_port(), h.free_port()
    while q == p:
        q = h.free_port()
    return ("tcp://127.0.0.1:%d" % p, "tcp://127.0.0.1:%d" % q)


def same_bytes_reads(keys):
    """(op, args) of every read op of the contract, with arguments that hit and miss."""
    k0 = keys[0]
    return [
        ("get", {"provider_name": k0}), ("get", {"provider_name": "nosuch"}),
        ("get_provider_config", {"provider_name": k0}),
        ("getitem", {"provider_name": k0}), ("getitem", {"provider_name": "nosuch"}),
        ("contains", {"provider_name": k0}), ("contains", {"provider_name": "nosuch"}),
        ("keys", {}), ("get_all_provider_names", {}), ("values", {}), ("items", {}),
        ("merged_models", {}), ("valid_scoped_models", {}),
        ("get_api_for_model_string", {"model_string": "%s/%s-m1" % (k0, k0)}),
        ("get_api_for_model_string", {"model_string": "%s-m2" % k0}),
        ("get_api_for_model_string", {"model_string": "%s/nosuch" % k0}),
        ("validate_model", {"model_string": "%s/%s-m0" % (k0, k0)}),
        ("validate_model", {"model_string": "nosuch-model"}),
        ("get_available_models", {}), ("get_available_models", {"filter_by_provider": k0}),
        ("get_short_name", {"long_name": "%s-m1" % k0}),
        ("find_model", {"name": "s1"}), ("find_model", {"name": "%s-m0" % k0}),
        ("find_model", {"name": "nosuch"}),
        ("snapshot", {}),
        ("get", {}),  # a read's argument check: bad_request on both
    ]


WRITES = [
    ("set_provider", {"provider": "intruder", "name": "X",
                      "base_api_url": "https://x.example.test/v1"}),
    ("set_provider", {}),  # read_only comes before the argument checks
    ("remove_provider", {"provider": "openai"}),
    ("set_short_name", {"provider": "openai", "long_name": "a", "short_name": "b"}),
    ("persist_provider_configs", {}),
    ("discover_models", {}),
    ("verify_models", {}),
]


class ReplicaTestCase(unittest.TestCase):
    def node(self, endpoints=None, replica_of=None, extra=()):
        args = ["--heartbeat-ms", str(HEARTBEAT_MS), "--log-level", "debug"] + list(extra)
        if replica_of is not None:
            args += ["--replica-of", replica_of[0], "--replica-events", replica_of[1]]
        d = Node(endpoints=endpoints, extra_args=args)
        self.addCleanup(d.cleanup)
        return d

    def primary(self):
        d = self.node(endpoints=fixed_endpoints())
        d.start()
        return d

    def replica(self, of, start=True):
        d = self.node(replica_of=(of.endpoint, of.events_endpoint) if isinstance(of, h.Daemon)
                      else of)
        if start:
            d.start()
        return d

    def stop_clean(self, d):
        rc, _ = d.stop()
        self.assertEqual(rc, 0, d.stderr()[-2000:])

    def wait_for(self, what, fn, timeout=CONVERGE_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(0.05)
        self.fail("%s: not within %.1fs (last %r)" % (what, timeout, last))

    def converged(self, primary_client, replica_client):
        """True when the replica answers at the primary's state_version and epoch, and knows
        its status_version (which a replica learns from heartbeats: up to one heartbeat_ms per
        hop behind)."""
        p = primary_client.ok("health")
        rep = replica_client.call("health")
        r = rep["result"]
        return (r["state_version"] == p["state_version"] and r["epoch"] == p["epoch"]
                and r["status_version"] == p["status_version"]
                and replica_client.call("keys").get("ok") is True)

    def wait_converged(self, pc, rc, timeout=CONVERGE_TIMEOUT):
        self.wait_for("replica converged", lambda: self.converged(pc, rc), timeout)

    def fill(self, c, keys=("alpha", "beta", "gamma")):
        for k in keys:
            c.ok("set_provider", {"provider": k, "name": k.upper(),
                                  "base_api_url": "https://%s.example.test/v1" % k,
                                  "api_key": "sk-test-%s" % k,
                                  "valid_models": {"%s-m%d" % (k, i): "s%d" % i
                                                   for i in range(3)}})
        return list(keys)

    def assert_same_reads(self, pc, rc, keys):
        for op, args in same_bytes_reads(keys):
            body = h.request_bytes(op, args, id=7)
            a, b = pc.send_raw(body), rc.send_raw(body)
            self.assertIsNotNone(a, op)
            self.assertIsNotNone(b, op)
            self.assertEqual(a, b, "%s %r differs: primary %r, replica %r"
                             % (op, args, h.unpack(a[0]), h.unpack(b[0])))


class TestReplicaDaemon(ReplicaTestCase):
    def test_reads_equal_writes_read_only_no_providers_file(self):
        p = self.primary()
        pc = p.client()
        keys = self.fill(pc)
        r = self.replica(p)
        rc = r.client()
        self.wait_converged(pc, rc)
        self.assert_same_reads(pc, rc, keys)

        health = rc.ok("health")
        self.assertEqual(health["role"], "replica")
        self.assertEqual(health["lag_versions"], 0)
        self.assertIsInstance(health["primary_seen_s"], float)
        self.assertLess(health["primary_seen_s"], 3 * HEARTBEAT_MS / 1000.0 + 1.0)
        self.assertLessEqual(h.HEALTH_KEYS, set(health))
        self.assertEqual(set(health) - h.HEALTH_KEYS, {"lag_versions", "primary_seen_s"})
        self.assertEqual(pc.ok("health")["role"], "primary")
        # pmctl health shows the role and, on a replica, its lag and last contact.
        shown = run_pmctl(["--endpoint", r.endpoint, "health"])
        self.assertEqual(shown.returncode, 0, shown.stderr)
        fields = dict(line.split(None, 1) for line in shown.stdout.decode().splitlines()
                      if line.strip())
        self.assertEqual(fields.get("role"), "replica")
        self.assertEqual(fields.get("lag_versions"), "0")
        self.assertRegex(fields.get("primary_seen_s", ""), r"^\d+\.\d{3}$")
        shown = run_pmctl(["--endpoint", p.endpoint, "health"])
        self.assertEqual(shown.returncode, 0, shown.stderr)
        fields = dict(line.split(None, 1) for line in shown.stdout.decode().splitlines()
                      if line.strip())
        self.assertEqual(fields.get("role"), "primary")
        self.assertNotIn("lag_versions", fields)

        before = pc.ok("snapshot")
        message = "Read-only replica; send writes to %s" % p.endpoint
        for op, args in WRITES:
            rep = rc.call(op, args, id="w-" + op)
            self.assertEqual(rep, {"ok": False, "id": "w-" + op,
                                   "error": {"code": "read_only", "message": message}}, op)
        self.assertEqual(rc.err("no_such_op")[0], "unknown_op")
        self.assertEqual(rc.raw(b"\xc1not msgpack")["error"]["code"], "bad_request")
        self.assertEqual(rc.raw(h.pack({"args": {}}))["error"]["code"], "bad_request")
        self.assertEqual(pc.ok("snapshot"), before)  # nothing changed on the primary
        self.assertFalse(os.path.exists(r.store_path), "a replica wrote a providers file")
        self.assertTrue(not os.path.exists(r.data_dir) or os.listdir(r.data_dir) == [],
                        "a replica wrote into its data dir")
        self.stop_clean(r)
        self.stop_clean(p)

    def test_write_visible_events_republished_and_heartbeats(self):
        p = self.primary()
        pc = p.client()
        r = self.replica(p)
        rc = r.client()
        self.wait_converged(pc, rc)
        sub = r.subscriber()
        # The replica's own heartbeats prove the subscription is live.
        got = sub.recv(3.0, heartbeats=True)
        self.assertIsNotNone(got, "no heartbeat from the replica's events endpoint")
        frames, beat = got
        self.assertEqual(frames[0], b"providers")
        self.assertEqual(beat["event"], "heartbeat")
        ph = pc.ok("health")
        self.assertEqual(beat["epoch"], ph["epoch"])
        self.assertEqual(beat["state_version"], ph["state_version"])
        self.assertIsInstance(beat["status_version"], int)

        cfg = pc.ok("set_provider", {"provider": "delta", "name": "Delta",
                                     "base_api_url": "https://delta.example.test/v1",
                                     "valid_models": {"d1": "one"}})
        version = pc.ok("health")["state_version"]
        self.wait_for("write visible on the replica",
                      lambda: rc.ok("health")["state_version"] >= version)
        self.assertEqual(rc.ok("get", {"provider_name": "delta"}), cfg)
        ev = sub.recv(3.0)
        self.assertIsNotNone(ev, "the change was not re-published")
        frames, body = ev
        self.assertEqual(body["event"], "changed")
        self.assertEqual(body["state_version"], version)
        self.assertEqual(body["providers"], ["delta"])
        self.assertEqual(body["configs"], [cfg])
        self.assertEqual(body["epoch"], ph["epoch"])
        # Heartbeats keep coming, at the replica's period, with the new version.
        beats = []
        deadline = time.monotonic() + 2.0
        while len(beats) < 3 and time.monotonic() < deadline:
            got = sub.recv(1.0, heartbeats=True)
            if got and got[1].get("event") == "heartbeat":
                beats.append(got[1])
        self.assertEqual(len(beats), 3, beats)
        self.assertTrue(all(b["state_version"] == version for b in beats), beats)
        self.stop_clean(r)
        self.stop_clean(p)

    def test_burst_of_writes_converges_byte_for_byte(self):
        p = self.primary()
        pc = p.client()
        r = self.replica(p)
        rc = r.client()
        self.wait_converged(pc, rc)

        def writer(i):
            c = p.client()
            for n in range(50):
                key = "burst-%d-%d" % (i, n % 10)
                if n % 7 == 6:
                    c.ok("remove_provider", {"provider": key})
                else:
                    c.ok("set_provider", {"provider": key, "name": "B %d" % n,
                                          "base_api_url": "https://b.example.test/v1",
                                          "valid_models": {"m%d" % n: "s%d" % n}})
        self.assertEqual(h.run_threads(writer, 4), [])
        self.wait_converged(pc, rc)
        body = h.request_bytes("snapshot", {}, id=1)
        self.assertEqual(pc.send_raw(body), rc.send_raw(body))
        self.stop_clean(r)
        self.stop_clean(p)

    def test_chained_replica_converges(self):
        p = self.primary()
        pc = p.client()
        keys = self.fill(pc)
        r1 = self.replica(p)
        r1c = r1.client()
        self.wait_converged(pc, r1c)
        r2 = self.replica(r1)
        r2c = r2.client()
        self.wait_converged(pc, r2c)
        self.fill(pc, ("epsilon", "zeta"))
        pc.ok("remove_provider", {"provider": "beta"})
        self.wait_converged(pc, r2c)
        self.assert_same_reads(pc, r2c, keys[:1] + ["epsilon"])
        self.assertEqual(r2c.ok("health")["role"], "replica")
        message = "Read-only replica; send writes to %s" % r1.endpoint
        self.assertEqual(r2c.err("set_provider", {})[1], message)
        for d in (r2, r1, p):
            self.stop_clean(d)

    def test_replica_before_primary(self):
        endpoints = fixed_endpoints()
        r = self.replica(endpoints)
        rc = r.client()
        message = "Replica not yet synchronised with %s" % endpoints[0]
        for op, args in [("keys", {}), ("get", {"provider_name": "openai"}),
                         ("snapshot", {}), ("model_status", {}), ("set_provider", {})]:
            rep = rc.call(op, args, id=3)
            self.assertEqual(rep, {"ok": False, "id": 3,
                                   "error": {"code": "unavailable", "message": message}}, op)
        health = rc.ok("health")
        self.assertEqual(health["role"], "replica")
        self.assertIsNone(health["primary_seen_s"])
        self.assertEqual(rc.err("no_such_op")[0], "unknown_op")

        p = self.node(endpoints=endpoints)
        p.start()
        pc = p.client()
        self.fill(pc)
        self.wait_converged(pc, rc)
        self.assertEqual(rc.ok("snapshot"), pc.ok("snapshot"))
        self.stop_clean(r)
        self.stop_clean(p)

    def test_primary_killed_then_restarted(self):
        p = self.primary()
        pc = p.client()
        keys = self.fill(pc)
        r = self.replica(p)
        rc = r.client()
        self.wait_converged(pc, rc)
        snap = pc.ok("snapshot")
        old_epoch = snap["epoch"]
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()

        # Reads go on from the last state; the primary is seen less and less recently.
        seen = rc.ok("health")["primary_seen_s"]
        time.sleep(1.0)
        self.assertEqual(rc.ok("snapshot"), snap)
        later = rc.ok("health")
        self.assertGreater(later["primary_seen_s"], seen + 0.5)
        self.assertGreaterEqual(later["lag_versions"], 0)
        self.assertEqual(rc.ok("get_api_for_model_string",
                               {"model_string": "%s/%s-m1" % (keys[0], keys[0])})[1],
                         "%s-m1" % keys[0])
        t0 = time.monotonic()
        rep = rc.call("model_status", {}, id="m")
        self.assertEqual(rep, {"ok": False, "id": "m", "error": {
            "code": "unavailable", "message": "Primary %s did not answer" % p.endpoint}})
        self.assertLess(time.monotonic() - t0, 4.0 * h.TIMEOUT_SCALE)

        # Restarted (same endpoints, same data dir): a new epoch, re-snapshotted.
        p.start()
        pc = p.client()
        self.wait_converged(pc, rc)
        now = pc.ok("snapshot")
        self.assertNotEqual(now["epoch"], old_epoch)
        self.assertEqual(rc.ok("snapshot"), now)
        self.assert_same_reads(pc, rc, keys)
        self.stop_clean(r)
        self.stop_clean(p)

    def test_forwarded_ops_equal_the_primarys(self):
        p = self.primary()
        pc = p.client()
        keys = self.fill(pc)
        r = self.replica(p)
        rc = r.client()
        self.wait_converged(pc, rc)
        for op, args in [("model_status", {}), ("model_status", {"provider": keys[0]}),
                         ("model_status", {"provider": "nosuch"}),
                         ("model_status", {"states": ["nosuch"]}),
                         ("provider_status", {}), ("provider_status", {"provider": keys[1]}),
                         ("job_status", {"job": "nosuch"}), ("job_status", {})]:
            body = h.request_bytes(op, args, id=["fw", op])
            a, b = pc.send_raw(body), rc.send_raw(body)
            self.assertEqual(a, b, "%s %r: primary %r, replica %r"
                             % (op, args, h.unpack(a[0]), b and h.unpack(b[0])))
        self.stop_clean(r)
        self.stop_clean(p)

    def test_healthz_follows_the_first_snapshot(self):
        endpoints = fixed_endpoints()
        port = h.free_port()
        r = self.node(replica_of=endpoints,
                      extra=["--metrics-endpoint", "127.0.0.1:%d" % port])
        r.start()
        status, _, body = pmmetrics.get(port, "/healthz")
        self.assertEqual(status, 503)
        self.assertEqual(body, ("Replica not yet synchronised with %s\n" % endpoints[0]).encode())
        p = self.node(endpoints=endpoints)
        p.start()
        self.wait_for("/healthz 200", lambda: pmmetrics.get(port, "/healthz")[0] == 200)
        self.assertEqual(pmmetrics.get(port, "/healthz")[2], b"ok\n")
        rc = r.client()
        self.wait_converged(p.client(), rc)
        rc.ok("model_status", {})
        status, _, text = pmmetrics.get(port, "/metrics")
        self.assertEqual(status, 200)
        text = text.decode()
        self.assertIn('provider_manager_requests_total{op="model_status",outcome="ok"} 1', text)
        self.assertRegex(text, r"(?m)^provider_manager_state_version %d$"
                         % rc.ok("health")["state_version"])
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait()
        time.sleep(4 * HEARTBEAT_MS / 1000.0)
        self.assertEqual(pmmetrics.get(port, "/healthz")[0], 200)  # the primary is away
        self.stop_clean(r)

    def test_sighup_reloads_a_replica(self):
        p = self.primary()
        r = self.replica(p)
        rc = r.client()
        self.wait_converged(p.client(), rc)
        pid = r.proc.pid
        os.kill(pid, signal.SIGHUP)
        self.wait_for("reload logged", lambda: re.search(r"reload: applied", r.stderr()))
        health = rc.ok("health")
        self.assertIs(health["reload_ok"], True)
        self.assertEqual(r.proc.pid, pid)
        self.assertIsNone(r.proc.poll())
        self.stop_clean(r)
        self.stop_clean(p)

    def test_config_providers_are_ignored_on_a_replica(self):
        p = self.primary()
        pc = p.client()
        self.fill(pc, ("alpha",))
        d = Node(config="providers:\n  pinned:\n    name: Pinned\n"
                        "    base_api_url: https://pinned.example.test/v1\n",
                 extra_args=["--heartbeat-ms", str(HEARTBEAT_MS), "--replica-of", p.endpoint,
                             "--replica-events", p.events_endpoint])
        self.addCleanup(d.cleanup)
        d.start()
        rc = d.client()
        self.wait_converged(pc, rc)
        self.assertIsNone(rc.ok("get", {"provider_name": "pinned"}))
        self.assertEqual(rc.ok("keys"), pc.ok("keys"))
        self.assertRegex(d.stderr(), r"providers: section is ignored")
        self.stop_clean(d)
        self.stop_clean(p)

    def test_bad_replica_settings_stop_the_start(self):
        cases = [
            (["--replica-of", "tcp://127.0.0.1:5555"], "needs both --replica-of and"),
            (["--replica-events", "tcp://127.0.0.1:5556"], "needs both --replica-of and"),
            (["--replica-of", "127.0.0.1:5555", "--replica-events", "tcp://127.0.0.1:5556"],
             "invalid endpoint '127.0.0.1:5555' for --replica-of"),
            (["--replica-of", "tcp://127.0.0.1:5555", "--replica-events",
              "tcp://127.0.0.1:5556", "--replica-server-key-file", "/nonexistent.pub"],
             "needs --curve-secret-key-file"),
        ]
        for args, message in cases:
            d = Node(extra_args=args)
            self.addCleanup(d.cleanup)
            proc = d.spawn()
            rc = proc.wait(timeout=h.START_TIMEOUT)
            self.assertEqual(rc, 2, (args, d.stderr()))
            self.assertIn(message, d.stderr(), args)

class TestReplicaCurve(ReplicaTestCase):
    """The replica speaks CURVE to its primary with its own key pair (the one its clients
    see), which the primary lists as a reader; its own clients use its public key."""

    def setUp(self):
        if not zmq.has("curve"):
            self.skipTest("libzmq without CURVE")
        self.dir = tempfile.mkdtemp(prefix="pm-replica-keys-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        for sub in ("clients", "readers"):
            os.mkdir(os.path.join(self.dir, sub))
        self.primary_keys = keygen(self.dir, "primary")
        self.replica_keys = keygen(self.dir, "replica")
        self.stranger_keys = keygen(self.dir, "stranger")
        self.alice = keygen(self.dir, "alice")
        shutil.copy(os.path.join(self.dir, "alice.pub"), os.path.join(self.dir, "clients"))

    def curve_node(self, name, endpoints=None, replica_of=None, readers=False):
        extra = ["--curve-secret-key-file", os.path.join(self.dir, name + ".key"),
                 "--curve-clients-dir", os.path.join(self.dir, "clients")]
        if readers:
            extra += ["--curve-readers-dir", os.path.join(self.dir, "readers")]
        if replica_of is not None:
            extra += ["--replica-server-key-file", os.path.join(self.dir, "primary.pub")]
        return self.node(endpoints=endpoints, replica_of=replica_of, extra=extra)

    def client(self, d, server_public):
        c = CurveClient(d.ctx, d.endpoint, self.alice, server_public, daemon=d)
        d._clients.append(c)
        return c

    def test_replica_with_a_reader_key_follows_and_forwards(self):
        shutil.copy(os.path.join(self.dir, "replica.pub"), os.path.join(self.dir, "readers"))
        p = self.curve_node("primary", endpoints=fixed_endpoints(), readers=True)
        p.start()
        pc = self.client(p, self.primary_keys[0])
        self.fill(pc)
        r = self.curve_node("replica", replica_of=(p.endpoint, p.events_endpoint))
        r.start()
        rc = self.client(r, self.replica_keys[0])
        self.wait_converged(pc, rc)
        self.assert_same_reads(pc, rc, ["alpha"])
        body = h.request_bytes("model_status", {"provider": "alpha"}, id=1)
        self.assertEqual(pc.send_raw(body), rc.send_raw(body))
        self.assertEqual(rc.err("set_provider", {})[0], "read_only")
        self.stop_clean(r)
        self.stop_clean(p)

    def test_replica_with_an_unknown_key_never_synchronises(self):
        p = self.curve_node("primary", endpoints=fixed_endpoints(), readers=True)
        p.start()
        r = self.curve_node("stranger", replica_of=(p.endpoint, p.events_endpoint))
        r.start()
        rc = self.client(r, self.stranger_keys[0])
        time.sleep(1.0)
        self.assertEqual(rc.err("keys"), ("unavailable", "Replica not yet synchronised with %s"
                                          % p.endpoint))
        self.assertIsNone(rc.ok("health")["primary_seen_s"])
        self.stop_clean(r)
        self.stop_clean(p)


if __name__ == "__main__":
    unittest.main()
