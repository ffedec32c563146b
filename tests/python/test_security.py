"""Security: who may talk to the daemon (ZeroMQ CURVE + the ZAP handler), the loopback rule,
and `pmctl keygen`.

- With a server key and a clients directory, only the clients whose public key is in that
  directory get replies or events; a client with an unknown key, a client without CURVE and a
  client that expects another server key get nothing at all, and the daemon logs each refusal
  ("auth: refused ...").
- A non-loopback TCP endpoint is never bound without CURVE unless --allow-insecure is given:
  exit 2 with a message that says why; with --allow-insecure it binds and warns.
- `pmctl keygen` writes a key pair: the secret file 0600, the public one readable, never
  overwritten; pmctl talks CURVE with --curve-server-key / --curve-client-key.
- The server's secret key is never logged; a secret key file readable by others is warned
  about.

Run: PM_DAEMON=... PM_PMCTL=... python3 -m unittest -v test_security   (in tests/python)
"""

import glob
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

import zmq
from zmq.utils import z85

import pmharness as h

NO_REPLY_WAIT = 1.5  # how long a refused client waits before concluding it got nothing
EXIT_USAGE = 2


def pmctl_path():
    path = os.environ.get("PM_PMCTL")
    if path:
        return path
    for cand in sorted(glob.glob(os.path.join(h.SOURCE_DIR, "build*", "client", "pmctl"))):
        if os.access(cand, os.X_OK):
            return cand
    raise unittest.SkipTest("PM_PMCTL is not set and no build*/client/pmctl exists")


def run_pmctl(args, timeout=30, env=None):
    return subprocess.run([pmctl_path()] + list(args), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env=h.clean_env(env))


def read_key(path, which):
    """The Z85 key on the `public-key = "..."` / `secret-key = "..."` line of a key file."""
    with open(path, encoding="utf-8") as f:
        m = re.search(r'^\s*%s\s*=\s*"?([^"\s]{40})"?\s*$' % which, f.read(), re.M)
    if not m:
        raise AssertionError("%s has no %s line" % (path, which))
    return m.group(1).encode("ascii")


def keygen(directory, name):
    """Runs `pmctl keygen DIR --name NAME`; returns (public, secret) as Z85 bytes."""
    rc = run_pmctl(["keygen", directory, "--name", name])
    if rc.returncode != 0:
        raise AssertionError("pmctl keygen failed: %s" % rc.stderr.decode())
    key = os.path.join(directory, name + ".key")
    return read_key(key, "public-key"), read_key(key, "secret-key")


class CurveClient(h.Client):
    """The harness's Lazy Pirate client, speaking CURVE with the given keys."""

    def __init__(self, ctx, endpoint, keys, server_public, **kw):
        self.keys = keys
        self.server_public = server_public
        super().__init__(ctx, endpoint, **kw)

    def _open(self):
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        if self.keys is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = self.keys
            self.sock.curve_serverkey = self.server_public
        self.sock.connect(self.endpoint)


class Keys:
    """A server key pair, an allowed client (alice) and a stranger (mallory), in a temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pm-sec-keys-")
        self.clients_dir = os.path.join(self.dir, "clients")
        os.mkdir(self.clients_dir)
        self.server = keygen(self.dir, "server")
        self.alice = keygen(self.dir, "alice")
        self.mallory = keygen(self.dir, "mallory")
        shutil.copy(os.path.join(self.dir, "alice.pub"), self.clients_dir)
        self.server_key_file = os.path.join(self.dir, "server.key")

    def daemon_args(self):
        return ["--curve-secret-key-file", self.server_key_file,
                "--curve-clients-dir", self.clients_dir]

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class CurveTest(h.DaemonTestCase):
    """A daemon with CURVE on: alice is allowed, mallory is not."""

    def setUp(self):
        if not zmq.has("curve"):
            self.skipTest("libzmq without CURVE")
        self.keys = Keys()
        self.addCleanup(self.keys.cleanup)
        self.daemon_kwargs = {"extra_args": self.keys.daemon_args()}
        super().setUp()
        self.c.close()  # the plain client of the base class cannot talk to this daemon
        self.c = self.client(self.keys.alice)

    def client(self, keys, server_public=None, timeout=h.REPLY_TIMEOUT):
        c = CurveClient(self.d.ctx, self.d.endpoint, keys,
                        server_public or self.keys.server[0], daemon=self.d, timeout=timeout)
        self.d._clients.append(c)
        return c

    def subscriber(self, keys, server_public=None):
        s = h.Subscriber.__new__(h.Subscriber)
        s.sock = self.d.ctx.socket(zmq.SUB)
        s.sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            s.sock.curve_publickey, s.sock.curve_secretkey = keys
            s.sock.curve_serverkey = server_public or self.keys.server[0]
        s.sock.setsockopt(zmq.SUBSCRIBE, b"providers")
        s.sock.connect(self.d.events_endpoint)
        self.d._clients.append(s)
        return s

    def wait_for_log(self, pattern, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.d.stderr()):
                return
            time.sleep(0.05)
        self.fail("no log line matching %r; stderr:\n%s" % (pattern, self.d.stderr()[-3000:]))

    def assert_no_reply(self, c):
        frames = c.send_raw(h.request_bytes("health"), timeout=NO_REPLY_WAIT)
        self.assertIsNone(frames, "a refused client got a reply: %r" % frames)

    def assert_still_serving(self):
        self.assertEqual(self.c.ok("health")["status"], "ok")

    # ------------------------------------------------------------------ requests
    def test_allowed_client_reads_and_writes(self):
        self.assertEqual(self.c.ok("health")["status"], "ok")
        self.assertIn("openai", self.c.ok("keys"))
        cfg = self.set_provider("acme", valid_models={"m1": "s1"})
        self.assertEqual(cfg["valid_models"], {"m1": "s1"})
        self.assertEqual(self.c.ok("validate_model", {"model_string": "acme/s1"}), "m1")
        self.assertIn("auth: CURVE on, 1 allowed client keys", self.d.stderr())
        # (The harness's start-up probe has no CURVE: that refusal is expected.)
        self.assertNotIn("refused client key", self.d.stderr())

    def test_unknown_client_key_gets_nothing_and_is_logged(self):
        self.assert_no_reply(self.client(self.keys.mallory))
        # The refusal names the client's public key (never a secret one).
        self.wait_for_log(r"auth: refused client key %s" % re.escape(
            self.keys.mallory[0].decode()))
        self.assert_still_serving()

    def test_unknown_client_write_changes_nothing(self):
        before = self.state_version()
        mallory = self.client(self.keys.mallory)
        frames = mallory.send_raw(h.request_bytes("set_provider", {
            "provider": "evil", "name": "Evil", "base_api_url": "http://127.0.0.1:9/v1"}),
            timeout=NO_REPLY_WAIT)
        self.assertIsNone(frames)
        self.assertEqual(self.state_version(), before)
        self.assertFalse(self.c.ok("contains", {"provider_name": "evil"}))

    def test_client_without_curve_gets_nothing_and_is_logged(self):
        self.assert_no_reply(self.client(None))
        self.wait_for_log(r"auth: refused a client (without CURVE|on .*handshake failed)")
        self.assert_still_serving()

    def test_client_expecting_another_server_key_gets_nothing_and_is_logged(self):
        self.assert_no_reply(self.client(self.keys.alice, server_public=self.keys.mallory[0]))
        self.wait_for_log(r"auth: refused a client whose CURVE handshake failed")
        self.assert_still_serving()

    def test_client_with_allowed_public_key_but_wrong_secret_gets_nothing(self):
        # Claiming alice's public key without her secret key: the handshake cannot succeed.
        forged = (self.keys.alice[0], self.keys.mallory[1])
        self.assert_no_reply(self.client(forged))
        self.wait_for_log(r"auth: refused")
        self.assert_still_serving()

    def test_refusals_are_rate_limited(self):
        # Reconnecting strangers must not be able to fill the disk with log lines.
        strangers = [self.client(None) for _ in range(30)]
        for s in strangers:
            s.sock.send(h.request_bytes("health"))
        time.sleep(3.0)
        lines = re.findall(r"auth: refused", self.d.stderr())
        self.assertGreater(len(lines), 0)
        self.assertLessEqual(len(lines), 20, "more refusal lines than the limit")
        self.assert_still_serving()

    # ------------------------------------------------------------------ events
    def test_events_need_curve(self):
        alice = self.subscriber(self.keys.alice)
        mallory = self.subscriber(self.keys.mallory)
        plain = self.subscriber(None)
        got = None
        # PUB/SUB joins late (and a CURVE handshake takes a moment): write until alice hears.
        for i in range(40):
            self.set_provider("ev%d" % i)
            got = alice.recv(timeout=0.25)
            if got is not None:
                break
        self.assertIsNotNone(got, "the allowed subscriber never got an event")
        self.assertEqual(got[0][0], b"providers")
        self.assertEqual(got[1]["event"], "changed")
        for _ in range(3):
            self.set_provider("late")
        self.assertIsNone(mallory.recv(timeout=0.5), "an unknown key received an event")
        self.assertIsNone(plain.recv(timeout=0.5), "a client without CURVE received an event")
        self.wait_for_log(r"auth: refused client key %s" % re.escape(
            self.keys.mallory[0].decode()))

    # ------------------------------------------------------------------ pmctl
    def pmctl(self, client_name, *args):
        return run_pmctl(["--endpoint", self.d.endpoint, "--timeout", "700", "--retries", "1",
                          "--curve-server-key", os.path.join(self.keys.dir, "server.pub"),
                          "--curve-client-key",
                          os.path.join(self.keys.dir, client_name + ".key")] + list(args))

    def test_pmctl_with_the_allowed_key(self):
        rc = self.pmctl("alice", "--json", "health")
        self.assertEqual(rc.returncode, 0, rc.stderr.decode())
        self.assertIn(b'"status"', rc.stdout)
        for secret in (self.keys.alice[1], self.keys.server[1]):
            self.assertNotIn(secret, rc.stdout + rc.stderr)

    def test_pmctl_with_an_unknown_key_is_unreachable(self):
        rc = self.pmctl("mallory", "health")
        self.assertEqual(rc.returncode, 3, (rc.stdout, rc.stderr))
        self.assertNotIn(self.keys.mallory[1], rc.stdout + rc.stderr)

    def test_pmctl_without_keys_is_unreachable(self):
        rc = run_pmctl(["--endpoint", self.d.endpoint, "--timeout", "700", "--retries", "1",
                        "health"])
        self.assertEqual(rc.returncode, 3, (rc.stdout, rc.stderr))

    # ------------------------------------------------------------------ secrets
    def test_server_secret_key_is_never_logged(self):
        self.client(self.keys.mallory).send_raw(h.request_bytes("health"), timeout=0.5)
        self.set_provider("acme")
        self.wait_for_log(r"auth: refused")
        rc, _ = self.d.stop()
        self.assertEqual(rc, 0)
        logs = self.d.all_logs()
        for secret in (self.keys.server[1], self.keys.alice[1], self.keys.mallory[1]):
            self.assertNotIn(secret.decode(), logs)
        self.assertNotIn("should be mode 0600", logs)  # keygen wrote it 0600


class CurveStartupTest(unittest.TestCase):
    """Start-up rules: bad key material, modes."""

    def setUp(self):
        if not zmq.has("curve"):
            self.skipTest("libzmq without CURVE")
        self.keys = Keys()
        self.addCleanup(self.keys.cleanup)

    def daemon(self, extra_args):
        d = h.Daemon(extra_args=extra_args)
        self.addCleanup(d.cleanup)
        return d

    def test_secret_key_file_readable_by_others_is_warned_about(self):
        os.chmod(self.keys.server_key_file, 0o644)
        d = self.daemon(self.keys.daemon_args()).start()
        log = d.stderr()
        self.assertIn("should be mode 0600", log)
        self.assertIn(self.keys.server_key_file, log)
        self.assertNotIn(self.keys.server[1].decode(), log)
        self.assertEqual(d.stop()[0], 0)

    def test_public_file_as_server_key_is_refused_without_echoing_it(self):
        d = self.daemon(["--curve-secret-key-file", os.path.join(self.keys.dir, "server.pub"),
                         "--curve-clients-dir", self.keys.clients_dir])
        d.spawn()
        self.assertEqual(d.proc.wait(timeout=10), EXIT_USAGE)
        self.assertIn("secret-key", d.stderr())

    def test_malformed_secret_key_is_refused_and_not_echoed(self):
        bad = os.path.join(self.keys.dir, "bad.key")
        almost = self.keys.server[1].decode()[:39]  # one character short of a key
        with open(bad, "w", encoding="utf-8") as f:
            f.write('public-key = "%s"\nsecret-key = "%s"\n'
                    % (self.keys.server[0].decode(), almost))
        os.chmod(bad, 0o600)
        d = self.daemon(["--curve-secret-key-file", bad,
                         "--curve-clients-dir", self.keys.clients_dir])
        d.spawn()
        self.assertEqual(d.proc.wait(timeout=10), EXIT_USAGE)
        self.assertNotIn(almost, d.stderr())

    def test_missing_clients_dir_is_refused(self):
        d = self.daemon(["--curve-secret-key-file", self.keys.server_key_file])
        d.spawn()
        self.assertEqual(d.proc.wait(timeout=10), EXIT_USAGE)
        self.assertIn("clients", d.stderr())


class LoopbackRuleTest(unittest.TestCase):
    """A non-loopback TCP endpoint is bound only with CURVE or --allow-insecure."""

    def run_daemon(self, endpoint, events_endpoint, extra=(), env=None):
        tmp = tempfile.mkdtemp(prefix="pm-sec-bind-")
        self.addCleanup(shutil.rmtree, tmp, True)
        argv = [h.daemon_path(), "--endpoint", endpoint, "--events-endpoint", events_endpoint,
                "--data-dir", os.path.join(tmp, "data")] + list(extra)
        err_path = os.path.join(tmp, "stderr.log")
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=h.clean_env(env), cwd=tmp)
        self.addCleanup(self._reap, proc)
        return proc, err_path

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, proc, err_path):
        deadline = time.monotonic() + h.START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if re.search(r"\bready\b", self.read(err_path)):
                return
            time.sleep(0.05)
        self.fail("not ready (rc=%r):\n%s" % (proc.poll(), self.read(err_path)))

    def assert_refused(self, bad, **kw):
        p = h.free_port()
        endpoints = {"endpoint": "tcp://127.0.0.1:%d" % p,
                     "events_endpoint": "tcp://127.0.0.1:%d" % h.free_port()}
        endpoints.update(kw)
        proc, err_path = self.run_daemon(endpoints["endpoint"], endpoints["events_endpoint"])
        self.assertEqual(proc.wait(timeout=10), EXIT_USAGE)
        log = self.read(err_path)
        self.assertIn("refusing to bind %s without CURVE" % bad, log)
        self.assertIn("--allow-insecure", log)
        self.assertIn("--curve-secret-key-file", log)
        self.assertNotRegex(log, r"\bready\b")

    def test_any_address_request_endpoint_is_refused(self):
        ep = "tcp://0.0.0.0:%d" % h.free_port()
        self.assert_refused(ep, endpoint=ep)

    def test_wildcard_events_endpoint_is_refused(self):
        ep = "tcp://*:%d" % h.free_port()
        self.assert_refused(ep, events_endpoint=ep)

    def test_ipv6_any_address_is_refused(self):
        ep = "tcp://[::]:%d" % h.free_port()
        self.assert_refused(ep, endpoint=ep)

    def test_allow_insecure_binds_and_warns(self):
        port = h.free_port()
        proc, err_path = self.run_daemon("tcp://0.0.0.0:%d" % port,
                                         "tcp://127.0.0.1:%d" % h.free_port(),
                                         extra=["--allow-insecure"])
        self.wait_ready(proc, err_path)
        self.assertIn("without CURVE (--allow-insecure)", self.read(err_path))
        ctx = zmq.Context()
        try:
            c = h.Client(ctx, "tcp://127.0.0.1:%d" % port)
            self.assertEqual(c.ok("health")["status"], "ok")
            c.close()
        finally:
            ctx.term()
        proc.terminate()
        self.assertEqual(proc.wait(timeout=5), 0)

    def test_allow_insecure_from_the_environment(self):
        port = h.free_port()
        proc, err_path = self.run_daemon("tcp://0.0.0.0:%d" % port,
                                         "tcp://127.0.0.1:%d" % h.free_port(),
                                         env={"PM_ALLOW_INSECURE": "1"})
        self.wait_ready(proc, err_path)
        proc.terminate()
        self.assertEqual(proc.wait(timeout=5), 0)

    def test_curve_allows_a_non_loopback_endpoint(self):
        if not zmq.has("curve"):
            self.skipTest("libzmq without CURVE")
        keys = Keys()
        self.addCleanup(keys.cleanup)
        port = h.free_port()
        proc, err_path = self.run_daemon("tcp://0.0.0.0:%d" % port,
                                         "tcp://0.0.0.0:%d" % h.free_port(),
                                         extra=keys.daemon_args())
        self.wait_ready(proc, err_path)
        self.assertNotIn("without CURVE", self.read(err_path))
        ctx = zmq.Context()
        try:
            c = CurveClient(ctx, "tcp://127.0.0.1:%d" % port, keys.alice, keys.server[0])
            self.assertEqual(c.ok("health")["status"], "ok")
            c.close()
        finally:
            ctx.term()
        proc.terminate()
        self.assertEqual(proc.wait(timeout=5), 0)

    def test_loopback_endpoints_need_nothing(self):
        for host in ("127.0.0.1", "127.0.0.2"):  # all of 127.0.0.0/8 is loopback
            port = h.free_port()
            proc, err_path = self.run_daemon("tcp://%s:%d" % (host, port),
                                             "tcp://127.0.0.1:%d" % h.free_port())
            self.wait_ready(proc, err_path)
            self.assertNotIn("without CURVE", self.read(err_path), host)
            proc.terminate()
            self.assertEqual(proc.wait(timeout=5), 0)

    def test_unbindable_endpoint_exits_promptly(self):
        # Regression: when the request endpoint could not be bound, the daemon hung for ever
        # in about 4 runs of 5 (its writer thread never got the stop message).
        import socket
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        endpoint = "tcp://127.0.0.1:%d" % busy.getsockname()[1]
        for _ in range(10):
            proc, err_path = self.run_daemon(endpoint, "tcp://127.0.0.1:%d" % h.free_port())
            try:
                rc = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.fail("daemon hung after a failed bind:\n%s" % self.read(err_path))
            self.assertEqual(rc, 4, self.read(err_path))
            self.assertIn("cannot bind endpoint", self.read(err_path))


class KeygenTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="pm-sec-keygen-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_writes_a_matching_pair_with_safe_modes(self):
        rc = run_pmctl(["keygen", self.dir, "--name", "svc"])
        self.assertEqual(rc.returncode, 0, rc.stderr.decode())
        key, pub = os.path.join(self.dir, "svc.key"), os.path.join(self.dir, "svc.pub")
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(pub).st_mode) & 0o022, 0,
                         "public key file writable by others")
        public, secret = read_key(key, "public-key"), read_key(key, "secret-key")
        self.assertEqual(read_key(pub, "public-key"), public)
        with open(pub, encoding="utf-8") as f:
            self.assertNotIn("secret-key", f.read())
        self.assertEqual(len(z85.decode(public)), 32)
        self.assertEqual(len(z85.decode(secret)), 32)
        if zmq.has("curve"):
            self.assertEqual(zmq.curve_public(secret), public, "public key is not the secret's")
        self.assertNotIn(secret, rc.stdout + rc.stderr, "keygen printed the secret key")

    def test_two_runs_give_different_keys(self):
        a = keygen(self.dir, "a")
        b = keygen(self.dir, "b")
        self.assertNotEqual(a[1], b[1])
        self.assertNotEqual(a[0], b[0])

    def test_never_overwrites(self):
        keygen(self.dir, "svc")
        with open(os.path.join(self.dir, "svc.key"), "rb") as f:
            before = f.read()
        rc = run_pmctl(["keygen", self.dir, "--name", "svc"])
        self.assertNotEqual(rc.returncode, 0)
        with open(os.path.join(self.dir, "svc.key"), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_modes_do_not_depend_on_the_umask(self):
        old = os.umask(0)
        try:
            rc = run_pmctl(["keygen", self.dir, "--name", "u"])
        finally:
            os.umask(old)
        self.assertEqual(rc.returncode, 0, rc.stderr.decode())
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dir, "u.key")).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.dir, "u.pub")).st_mode) & 0o022,
                         0)

    def test_default_name_is_client(self):
        rc = run_pmctl(["keygen", self.dir])
        self.assertEqual(rc.returncode, 0, rc.stderr.decode())
        self.assertTrue(os.path.exists(os.path.join(self.dir, "client.key")))
        self.assertTrue(os.path.exists(os.path.join(self.dir, "client.pub")))


if __name__ == "__main__":
    unittest.main()
