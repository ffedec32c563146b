"""pmharness: black-box harness for the provider-manager daemon.

Shares no code with the project: Debian's python3, python3-zmq, python3-msgpack and the
standard library only. It starts the real daemon on free 127.0.0.1 ports with a temporary data
directory and a clean environment, talks to it exactly as the wire contract says (one msgpack
map per frame, REQ or DEALER + empty delimiter), and stops it with SIGTERM.

Environment:
  PM_DAEMON     path to the provider-manager binary (set by ctest)
  PM_PMCTL      path to pmctl (set by ctest; unused by the black-box suite itself)
  PM_TIMEOUT_SCALE  multiplies the start, stop and reply timeouts (valgrind runs)
  PM_KEEP_LOGS  a directory: every daemon's stderr/stdout is copied there at cleanup, so that
                `make test` can check that no test API key was ever logged (check_secrets.py)
"""

import glob
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.abspath(os.path.join(HERE, "..", ".."))

# PM_TIMEOUT_SCALE stretches the waits for a daemon run under valgrind (make valgrind).
TIMEOUT_SCALE = float(os.environ.get("PM_TIMEOUT_SCALE", "1"))
START_TIMEOUT = 10.0 * TIMEOUT_SCALE  # bounded wait for "ready" / a health answer
STOP_TIMEOUT = 2.0 * TIMEOUT_SCALE  # the contract: SIGTERM exits 0 within 2 s
REPLY_TIMEOUT = 5.0 * TIMEOUT_SCALE  # default wait for one reply
STORE_FILE = "openaicompat-providers.yaml"

# Environment variables passed through to the daemon (sanitizers, loader); everything else,
# and in particular every *_API_KEY and every PM_* setting, is left out unless a test sets it.
_PASS_ENV_PREFIXES = ("ASAN_", "UBSAN_", "TSAN_", "LSAN_", "MSAN_", "LD_LIBRARY_PATH",
                      "LD_PRELOAD", "VALGRIND")

KEEP_LOGS = os.environ.get("PM_KEEP_LOGS")

_MISSING = object()
_RUN_IDS = itertools.count(1)  # unique log names when several Daemons share a temp dir


def daemon_path():
    """The daemon binary: $PM_DAEMON, else a build directory of this source tree."""
    path = os.environ.get("PM_DAEMON")
    if path:
        return path
    for cand in sorted(glob.glob(os.path.join(SOURCE_DIR, "build*", "service",
                                              "provider-manager"))):
        if os.access(cand, os.X_OK):
            return cand
    raise unittest.SkipTest("PM_DAEMON is not set and no build*/service/provider-manager exists")


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to :0, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def clean_env(extra=None):
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for k, v in os.environ.items():
        if k.startswith(_PASS_ENV_PREFIXES) and not k.endswith("_API_KEY"):
            env[k] = v
    if extra:
        env.update(extra)
    return env


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data):
    """Decodes a reply strictly: str stays str, bin stays bytes, nothing after the object."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def request_bytes(op, args=_MISSING, id=_MISSING):
    msg = {"op": op}
    if args is not _MISSING:
        msg["args"] = args
    if id is not _MISSING:
        msg["id"] = id
    return pack(msg)


# ---------------------------------------------------------------- hand-made msgpack pieces
# For requests python-msgpack refuses to build (invalid UTF-8 in a str, lying lengths).

def mp_map_header(n):
    if n < 16:
        return bytes([0x80 | n])
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def mp_raw_str(data):
    """A msgpack str header + the given bytes (which need not be UTF-8)."""
    n = len(data)
    if n < 32:
        return bytes([0xa0 | n]) + data
    if n < 0x100:
        return b"\xd9" + bytes([n]) + data
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + data
    return b"\xdb" + n.to_bytes(4, "big") + data


def mp_map(pairs):
    """pairs: list of (key_bytes, value_bytes), each already msgpack-encoded."""
    return mp_map_header(len(pairs)) + b"".join(k + v for k, v in pairs)


# ---------------------------------------------------------------- client

class Timeout(Exception):
    pass


class DaemonDied(Exception):
    pass


class Client:
    """A Lazy-Pirate REQ client: send, poll with a timeout; on timeout close the socket with
    linger 0 and open a new one (a REQ socket is stuck after an unanswered request), resend up
    to `retries` times, then give up."""

    def __init__(self, ctx, endpoint, daemon=None, timeout=REPLY_TIMEOUT):
        self.ctx = ctx
        self.endpoint = endpoint
        self.daemon = daemon
        self.timeout = timeout
        self.sock = None
        self.reopens = 0
        self._open()

    def _open(self):
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    def reopen(self):
        self.sock.close(linger=0)
        self.reopens += 1
        self._open()

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def send_raw(self, frames, timeout=None, retries=0):
        """Sends bytes (one frame) or a list of frames; returns the reply frames (list of
        bytes), or None when no reply came after retries (the socket has been reopened)."""
        if isinstance(frames, (bytes, bytearray)):
            frames = [bytes(frames)]
        timeout = self.timeout if timeout is None else timeout
        for _attempt in range(retries + 1):
            self.sock.send_multipart(frames)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self.sock.poll(int(min(left, 0.2) * 1000) + 1, zmq.POLLIN):
                    return self.sock.recv_multipart()
                if self.daemon is not None and self.daemon.proc is not None \
                        and self.daemon.proc.poll() is not None:
                    self.reopen()
                    raise DaemonDied("daemon exited with %r while waiting for a reply"
                                     % self.daemon.proc.returncode)
            self.reopen()
        return None

    def raw(self, data, timeout=None, retries=0):
        """Sends one frame, returns the decoded single-frame reply; raises Timeout."""
        frames = self.send_raw(data, timeout=timeout, retries=retries)
        if frames is None:
            raise Timeout("no reply from %s" % self.endpoint)
        if len(frames) != 1:
            raise AssertionError("reply has %d frames, expected 1" % len(frames))
        return unpack(frames[0])

    def call(self, op, args=_MISSING, id=_MISSING, timeout=None):
        return self.raw(request_bytes(op, args, id), timeout=timeout)

    def ok(self, op, args=_MISSING, **kw):
        rep = self.call(op, args, **kw)
        if not (isinstance(rep, dict) and rep.get("ok") is True):
            raise AssertionError("%s %r failed: %r" % (op, args, rep))
        return rep["result"]

    def err(self, op, args=_MISSING, **kw):
        """Returns (code, message) of an error reply; fails when the reply is ok."""
        rep = self.call(op, args, **kw)
        if not (isinstance(rep, dict) and rep.get("ok") is False):
            raise AssertionError("%s %r: expected an error, got %r" % (op, args, rep))
        return rep["error"]["code"], rep["error"]["message"]


class Subscriber:
    """A SUB socket on the events endpoint, topic "providers"."""

    def __init__(self, ctx, endpoint, topic=b"providers"):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)

    def recv(self, timeout=3.0, heartbeats=False):
        """The next event as (frames, decoded map of the last frame), or None on timeout.
        v1.1's heartbeats (every heartbeat_ms) are skipped unless heartbeats is true: they
        say nothing changed, which is what most tests wait to hear about."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left < 0 or not self.sock.poll(max(0, int(left * 1000)), zmq.POLLIN):
                return None
            frames = self.sock.recv_multipart()
            body = unpack(frames[-1])
            if heartbeats or not (isinstance(body, dict) and body.get("event") == "heartbeat"):
                return frames, body

    def drain(self, quiet=0.2):
        got = []
        while True:
            ev = self.recv(quiet)
            if ev is None:
                return got
            got.append(ev)

    def close(self):
        self.sock.close(linger=0)


# ---------------------------------------------------------------- daemon

class Daemon:
    """One provider-manager process with its own ports and temp dir."""

    def __init__(self, tmpdir=None, data_dir=None, config=None, env=None, extra_args=(),
                 ipc=False):
        self.own_tmp = tmpdir is None
        self.tmp = tmpdir or tempfile.mkdtemp(prefix="pm-bbx-")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.config_path = None
        if config is not None:
            self.config_path = os.path.join(self.tmp, "pm.yaml")
            with open(self.config_path, "w", encoding="utf-8") as f:
                f.write(config)
        self.env = clean_env(env)
        self.extra_args = list(extra_args)
        self.ipc = ipc
        self.proc = None
        self.endpoint = None
        self.events_endpoint = None
        self.stderr_path = None
        self.stdout_path = None
        self.ctx = zmq.Context()
        self._clients = []
        self._runs = 0
        self._logs = []

    @property
    def store_path(self):
        return os.path.join(self.data_dir, STORE_FILE)

    def argv(self):
        argv = [daemon_path(), "--endpoint", self.endpoint, "--events-endpoint",
                self.events_endpoint, "--data-dir", self.data_dir]
        if self.config_path:
            argv += ["--config", self.config_path]
        return argv + self.extra_args

    def spawn(self):
        """Starts the process without waiting (for start-up failure tests)."""
        self._runs += 1
        run = next(_RUN_IDS)
        if self.ipc:
            self.endpoint = "ipc://%s/req-%d" % (self.tmp, run)
            self.events_endpoint = "ipc://%s/ev-%d" % (self.tmp, run)
        else:
            p, q = free_port(), free_port()
            while q == p:
                q = free_port()
            self.endpoint = "tcp://127.0.0.1:%d" % p
            self.events_endpoint = "tcp://127.0.0.1:%d" % q
        self.stderr_path = os.path.join(self.tmp, "stderr-%d.log" % run)
        self.stdout_path = os.path.join(self.tmp, "stdout-%d.log" % run)
        self._logs.extend([self.stderr_path, self.stdout_path])
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=self.env, cwd=self.tmp)
        return self.proc

    def start(self):
        for _attempt in range(5):
            self.spawn()
            if self._wait_ready():
                return self
            log = self.stderr()
            if self.proc.poll() is not None and re.search(r"in use", log, re.I):
                continue  # lost the port race: try other ports
            rc = self.proc.poll()
            if rc is None:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError("daemon did not become ready (rc=%r); stderr:\n%s"
                                 % (rc, log[-4000:]))
        raise AssertionError("daemon could not bind free ports in 5 attempts")

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        probe = None
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                if re.search(r"\bready\b", self.stderr()):
                    return True
                if probe is None:
                    probe = self.ctx.socket(zmq.REQ)
                    probe.setsockopt(zmq.LINGER, 0)
                    probe.connect(self.endpoint)
                    probe.send(request_bytes("health"))
                if probe.poll(100, zmq.POLLIN):
                    probe.recv_multipart()
                    return True
            return False
        finally:
            if probe is not None:
                probe.close(linger=0)

    def client(self, timeout=REPLY_TIMEOUT):
        c = Client(self.ctx, self.endpoint, daemon=self, timeout=timeout)
        self._clients.append(c)
        return c

    def subscriber(self):
        s = Subscriber(self.ctx, self.events_endpoint)
        self._clients.append(s)
        return s

    def stderr(self):
        if not self.stderr_path or not os.path.exists(self.stderr_path):
            return ""
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def all_logs(self):
        """Every stderr and stdout this object's runs wrote."""
        out = []
        for path in self._logs:
            if not os.path.exists(path):
                continue
            with open(path, "rb") as f:
                out.append(f.read().decode("utf-8", "replace"))
        return "\n".join(out)

    def close_clients(self):
        for c in self._clients:
            c.close()
        self._clients = []

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM; returns (returncode or None when still running after timeout, seconds)."""
        self.close_clients()
        if self.proc is None or self.proc.poll() is not None:
            return (None if self.proc is None else self.proc.returncode), 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
        if rc is None:
            self.proc.kill()
            self.proc.wait()
        return rc, elapsed

    def keep_logs(self):
        """Copies this object's logs to $PM_KEEP_LOGS (unique names: pid and run number)."""
        if not KEEP_LOGS:
            return
        os.makedirs(KEEP_LOGS, exist_ok=True)
        for path in self._logs:
            if os.path.exists(path):
                shutil.copyfile(path, os.path.join(
                    KEEP_LOGS, "%d-%s" % (os.getpid(), os.path.basename(path))))
        self._logs = []

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close_clients()
        self.ctx.term()
        self.keep_logs()
        if self.own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------- base test case

PROVIDER_KEYS = {"provider", "name", "base_api_url", "api_key", "valid_models",
                 "invalid_models"}
# v1's keys plus v1.1's additive ones (protocol-v1.1.md: "protocol", "status_version",
# "epoch").
HEALTH_KEYS = {"status", "version", "state_version", "providers", "models", "uptime_s",
               "jobs_running", "protocol", "status_version", "epoch",
               "reloaded_at", "reload_ok", "role"}


class DaemonTestCase(unittest.TestCase):
    """Starts one fresh daemon per test (self.d, self.c); asserts a clean SIGTERM exit."""

    daemon_kwargs = {}

    def setUp(self):
        self.d = Daemon(**self.daemon_kwargs)
        self.addCleanup(self.d.cleanup)
        self.d.start()
        self.c = self.d.client()

    def tearDown(self):
        if self.d.proc is not None and self.d.proc.poll() is None:
            self.assert_clean_stop(self.d)

    def assert_clean_stop(self, d, timeout=STOP_TIMEOUT):
        rc, elapsed = d.stop(timeout)
        self.assertIsNotNone(rc, "daemon still running %.1fs after SIGTERM" % timeout)
        self.assertEqual(rc, 0, "SIGTERM exit code %r; stderr tail:\n%s"
                         % (rc, d.stderr()[-2000:]))

    # helpers ----------------------------------------------------------------
    def health(self, c=None):
        return (c or self.c).ok("health")

    def state_version(self, c=None):
        return self.health(c)["state_version"]

    def assert_provider_config(self, cfg, key=None):
        self.assertIsInstance(cfg, dict, cfg)
        self.assertEqual(set(cfg), PROVIDER_KEYS, cfg)
        self.assertIsInstance(cfg["provider"], str)
        self.assertIsInstance(cfg["name"], str)
        self.assertIsInstance(cfg["base_api_url"], str)
        self.assertTrue(cfg["api_key"] is None or isinstance(cfg["api_key"], str), cfg)
        self.assertIsInstance(cfg["valid_models"], dict)
        for k, v in cfg["valid_models"].items():
            self.assertIsInstance(k, str)
            self.assertIsInstance(v, str)
        self.assertIsInstance(cfg["invalid_models"], list)
        for m in cfg["invalid_models"]:
            self.assertIsInstance(m, str)
        if key is not None:
            self.assertEqual(cfg["provider"], key)

    def assert_error(self, rep, code, message=None, id=_MISSING, message_prefix=None):
        """rep is a whole reply map; checks the error envelope exactly."""
        self.assertIsInstance(rep, dict, rep)
        if id is _MISSING:
            self.assertEqual(list(rep), ["ok", "error"], rep)
        else:
            self.assertEqual(list(rep), ["ok", "id", "error"], rep)
            self.assertEqual(rep["id"], id)
        self.assertIs(rep["ok"], False)
        err = rep["error"]
        self.assertIsInstance(err, dict, rep)
        self.assertEqual(set(err), {"code", "message"}, rep)
        self.assertIsInstance(err["code"], str, rep)
        self.assertIsInstance(err["message"], str, rep)
        self.assertEqual(err["code"], code, rep)
        if message is not None:
            self.assertEqual(err["message"], message, rep)
        if message_prefix is not None:
            self.assertTrue(err["message"].startswith(message_prefix), rep)
        return err["message"]

    def prime_events(self, sub):
        """Waits until a subscription is live (ZeroMQ's slow joiner): one scratch change per
        try on provider "bbx-prime" until its event arrives, then drains."""
        for i in range(50):
            self.set_provider("bbx-prime", name="prime %d" % i)
            if sub.recv(0.2) is not None:
                sub.drain(0.3)
                return
        self.fail("no event reached the subscriber after 50 changes")

    def set_provider(self, key, name=None, url=None, c=None, **kw):
        args = {"provider": key, "name": name if name is not None else key.upper(),
                "base_api_url": url if url is not None else "https://%s.example.test/v1" % key}
        args.update(kw)
        return (c or self.c).ok("set_provider", args)


def run_threads(target, n, *args):
    """Runs target(i, *args) in n threads; returns the list of exceptions raised."""
    errors = []
    lock = threading.Lock()

    def wrap(i):
        try:
            target(i, *args)
        except BaseException as e:  # noqa: B902 - reported to the test
            with lock:
                errors.append((i, e))

    threads = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def read_yaml(path):
    """Parses the store file with PyYAML when installed, else returns None."""
    try:
        import yaml  # python3-yaml, optional
    except ImportError:
        return None
    with open(path, "r", encoding="utf-8") as f:
        return yaml.safe_load(f)
