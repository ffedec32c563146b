#!/usr/bin/python3
"""Benchmarks of provider-manager: the service against the transport's own limit, and how its
costs grow with the registry.

Tables (printed aligned to stdout, also written to <build>/bench/results.json):
  A. Request path vs transport limit: bench_echo (a bare single-threaded REP server sending a
     fixed reply of the same bytes as the daemon's get_api_for_model_string reply) against the
     real daemon, 1 and 8 concurrent clients, tcp loopback and ipc, for two shapes: the
     headline "realistic" one (get_api_for_model_string("openai/gpt-4o") with 20 valid models
     with short names, an API key and 6 invalid models: a 696-byte reply) and the earlier
     "small" one (4 models, 319 bytes). req/s (median and range over the rounds), p50/p99,
     server CPU per request, syscalls per request (strace -c -f on the server in a separate
     pass), service/echo ratios. Targets (realistic shape): throughput >= 0.95x echo,
     CPU/request <= 1.1x echo, syscalls/request <= 1.2x echo.
  B. Growth with the registry: 100 / 10,000 / 100,000 models over 10 and 100 providers:
     resolution p50 (unprefixed name only the LAST provider has; prefixed name), for
     get_api_for_model_string (the contract's reply carries the whole ProviderConfig) and
     validate_model (lookup only), merged_models / valid_scoped_models time and reply size,
     start-up load time (exec -> health answering, minus the empty registry's), persist time,
     RSS. Targets: resolution p50 at 100,000 within 1.1x of at 100; load and persist of
     100,000 under 1 s; RSS < 64 MiB.
  W. Write path: set_provider writes/s and p50, 1 and 8 writers, at 100 and 100,000 models.
     Target: at 100,000 models 8 writers together >= 100 writes/s.
  C. Discovery: tests/bench/bench_discovery when it was built (its own wall time vs ideal).
  R. Client replica: in-process resolution through libpmclient's local replica
     (tests/bench/bench_replica, its own primary inside) at 100,000 models, 1 and 2 reader
     threads, idle and while 1,000 changes per second are applied: p50, p99 and resolutions
     per second per reader thread. Targets: p50 <= 1 us, >= 1,000,000 per second per thread.
     Then, side by side in rounds (order alternating), the same get_api_for_model_string
     ("openai/gpt-4o", the realistic shape, at 100,000 models over 100 providers) over the
     wire from the daemon (tcp, 1 client) and through a replica synced from that daemon in its
     own process (tests/bench/bench_replica_daemon --mode resolve): p50s and their ratio, the
     replica process's VmRSS after sync and VmHWM, and `snapshot` over tcp. Targets: replica
     p50 <= 1 us, >= 1,000,000 per second, RSS and VmHWM < 48 MiB, snapshot median < 0.3 s.
  L. Visibility: set_provider of small providers paced at 1,000 writes/s in all (1, 4 and 8
     writer threads), a replica in the writers' process stamping when each write becomes
     visible: replica applied minus the writer's reply, p50/p99/max, negatives (applied before
     the reply) counted as 0, the achieved write rate. Target: p99 <= 5 ms at 1,000 writes/s.
  F. Fan-out: the daemon's get_api_for_model_string p50 (realistic shape, 1 client, tcp)
     with 0 and 100 replicas subscribed (one helper process, niced; in the "decoy" cell its
     replicas are subscribed to a second daemon instead, so the machine's load is the same),
     with no writes and with 50 writes/s; paired per-round ratios. Target: on/decoy <= 1.1x.
  M. Metrics (issue 15): two daemons side by side, metrics off and on (--metrics-endpoint),
     the realistic shape's resolution over ipc, 1 and 8 clients, rounds alternating which
     goes first: throughput and server CPU per request on/off. Targets: within 2% (on/off
     throughput >= 0.98x, CPU/request <= 1.02x). Then the time of a /metrics scrape of a
     daemon holding 100,000 models (median and max of the scrapes). Target: < 50 ms.
  S. Snapshot (protocol v1.1): `snapshot` of 100,000 models over 100 providers, request to
     last byte received over ipc, the first one (configs not yet packed) and the following
     ones (median). Target: under 0.3 s.
  J. Status journal (bench_status, in process): a batch of 1,000 changed model status
     records appended to the journal vs one providers-file persist, 100,000 models over 100
     providers; the journal's load and compaction. Target: batch / persist < 5%.
  V. Verification (bench_discovery --verify): 10 providers x 100 models, 50 ms per answer,
     per_provider_limit 4, vs the ideal 1 list + 25 probe rounds = 1.3 s. Target <= 1.1x.
  D. Reads during verification: the daemon's get_api_for_model_string p50, idle vs while a
     verify_models job runs against tests/fake_upstream.py (10 x 100 models, 50 ms), at 1,000
     and 100,000 models. Target: <= 1.1x idle. Skipped when the daemon lacks verify_models.

The machine is small and shared, so every measurement is repeated in several rounds, the
rounds interleave what is compared (echo and service alternate, registry sizes alternate),
and medians are quoted. --quick uses tiny counts (a smoke run for ctest; numbers meaningless).

Exit status: 0 when every table was produced (PASS or MISS alike), 1 when a benchmark could
not run or a request failed, 2 on a usage error. Python 3 stdlib + python3-zmq only.
"""

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

try:
    import zmq
except ImportError:  # pragma: no cover - Debian's python3-zmq is a build dependency
    sys.stderr.write("run.py needs python3-zmq (run it with /usr/bin/python3)\n")
    sys.exit(2)

SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))
PROVIDERS_FILE = "openaicompat-providers.yaml"
BENCH_URL = "http://127.0.0.1:9/v1"
BENCH_KEY = "sk-bench-0123456789abcdef0123456789abcdef"
WRITERS = 8
STARTUP_TIMEOUT_S = 60.0
MIB = 1024 * 1024

# The shapes table A measures. Each is one provider (the daemon and the echo both hold it) and
# the model string resolved against it. "realistic" is the headline: an OpenAI-like provider
# with 20 valid models with short names, an API key and 6 invalid models (a reply of about
# 700 bytes, issue 13); "small" is the earlier 4-model shape (about 300 bytes).
REQUEST_SHAPES = [
    {
        "name": "realistic",
        "provider": "openai",
        "provider_name": "OpenAI",
        "url": "https://api.openai.com/v1",
        # a project key is long: with it the reply is 696 bytes, the size issue 13 measured
        "api_key": "sk-proj-" + ("bench0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ" * 3)[:123],
        "models": [("gpt-4o", "4o"), ("gpt-4o-mini", "4o-mini"), ("gpt-4.1", "4.1"),
                   ("gpt-4.1-mini", "4.1-mini"), ("gpt-4.1-nano", "4.1-nano"),
                   ("gpt-4-turbo", "4-turbo"), ("gpt-4", "4"), ("gpt-3.5-turbo", "3.5"),
                   ("o1", "o1"), ("o1-mini", "o1-mini"), ("o3", "o3"), ("o3-mini", "o3-mini"),
                   ("o4-mini", "o4-mini"), ("gpt-5", "5"), ("gpt-5-mini", "5-mini"),
                   ("gpt-5-nano", "5-nano"), ("chatgpt-4o-latest", "chatgpt"),
                   ("gpt-4o-audio-preview", "audio"), ("gpt-4o-search-preview", "search"),
                   ("codex-mini-latest", "codex")],
        "invalid": ["text-embedding-3-small", "text-embedding-3-large", "whisper-1",
                    "tts-1", "dall-e-3", "omni-moderation-latest"],
        "model_string": "openai/gpt-4o",
        "result": "gpt-4o",
    },
    {
        "name": "small",
        "provider": "bench",
        "provider_name": "Bench Provider",
        "url": BENCH_URL,
        "api_key": BENCH_KEY,
        "models": [("bench-chat-large-2025-01", "chat-large"),
                   ("bench-chat-small-2025-01", "chat-small"),
                   ("bench-embed-v3", "embed"),
                   ("bench-reasoner-r1-preview", "reasoner")],
        "invalid": [],
        "model_string": "bench/bench-reasoner-r1-preview",
        "result": "bench-reasoner-r1-preview",
    },
]
HEADLINE = REQUEST_SHAPES[0]


def shape_providers(shape):
    return [(shape["provider"], shape["provider_name"], shape["url"], shape["api_key"],
             shape["models"], shape["invalid"])]


FULL = {
    "rounds_a": 5,
    "syscall_requests": 4000,
    "requests_1": 10000,  # per client thread
    "requests_8": 3000,
    "warmup": 50,
    "rounds_b": 3,
    "rounds_res": 9,
    "rounds_inproc": 7,
    "inproc_iterations": 200000,
    "sizes": [100, 10000, 100000],
    "provider_counts": [10, 100],
    "write_sizes": [100, 100000],
    "resolve_requests": 500,
    "resolve_seconds": 1.0,
    "bulk_requests": 5,
    "bulk_seconds": 5.0,
    "write_requests": 2000,
    "write_seconds": 3.0,
    "rounds_m": 9,
    "requests_m1": 10000,  # per client thread
    "requests_m8": 3000,
    "scrape_models": 100000,
    "scrapes": 30,
    "snapshot_models": 100000,
    "snapshot_rounds": 9,
    "replica_models": 100000,
    "rounds_rw": 5,
    "replica_calls": 1000000,
    "rounds_vis": 3,
    "vis_writes": 5000,
    "vis_writers": [1, 4, 8],
    "rounds_fan": 5,
    "fanout_replicas": 100,
    "fanout_write_rate": 50,
    "fanout_idle_s": 1.0,
}
QUICK = {
    "rounds_a": 1,
    "syscall_requests": 200,
    "requests_1": 1000,
    "requests_8": 200,
    "warmup": 5,
    "rounds_b": 1,
    "rounds_res": 1,
    "rounds_inproc": 1,
    "inproc_iterations": 2000,
    "sizes": [100, 10000],
    "provider_counts": [10],
    "write_sizes": [100, 10000],
    "resolve_requests": 100,
    "resolve_seconds": 0.5,
    "bulk_requests": 2,
    "bulk_seconds": 1.0,
    "write_requests": 20,
    "write_seconds": 0.5,
    "rounds_m": 1,
    "requests_m1": 500,
    "requests_m8": 100,
    "scrape_models": 10000,
    "scrapes": 3,
    "snapshot_models": 10000,
    "snapshot_rounds": 2,
    "replica_models": 10000,
    "rounds_rw": 1,
    "replica_calls": 20000,
    "rounds_vis": 1,
    "vis_writes": 500,
    "vis_writers": [1, 4],
    "rounds_fan": 1,
    "fanout_replicas": 20,
    "fanout_write_rate": 50,
    "fanout_idle_s": 0.2,
}


class BenchError(Exception):
    """A benchmark that could not run (a daemon that does not start, a client that fails)."""


# ----------------------------------------------------------------------------- helpers


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def clean_env():
    """The daemon runs with a minimal environment: no PM_* settings and no provider API keys
    from the caller's shell can change what is measured."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    return env


def proc_cpu(pid):
    """(schedstat_ns, stat_ns) CPU time of a process. schedstat sums the per-thread run time in
    nanoseconds; /proc/<pid>/stat utime+stime has clock-tick (10 ms) resolution."""
    sched = 0
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                    sched += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        sched = None
    stat = None
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is state (field 3); utime and stime are fields 14 and 15.
        ticks = int(fields[11]) + int(fields[12])
        stat = ticks * 1e9 / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return sched, stat


def proc_status_kib(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def write_yaml(path, providers):
    """providers: list of (key, name, url, api_key, [(long, short), ...]). The seed's format;
    every name used here is plain [A-Za-z0-9 ._-] text, so no quoting is needed."""
    with open(path, "w") as f:
        f.write("providers:\n")
        for entry in providers:
            key, name, url, api_key, models = entry[:5]
            invalid = entry[5] if len(entry) > 5 else []
            f.write("  %s:\n    name: %s\n    base_api_url: %s\n" % (key, name, url))
            f.write("    api_key: %s\n" % (api_key if api_key else "null"))
            if models:
                f.write("    valid_models:\n")
                f.write("".join("      %s: %s\n" % m for m in models))
            else:
                f.write("    valid_models: {}\n")
            if invalid:
                f.write("    invalid_models:\n")
                f.write("".join("      - %s\n" % m for m in invalid))
            else:
                f.write("    invalid_models: []\n")


def writer_providers():
    return [("bw-%d" % i, "Bench writer %d" % i, BENCH_URL, None, []) for i in range(WRITERS)]


def growth_registry(models, providers):
    """models (provider, model) pairs spread evenly over providers; the writers' own
    providers come first so that the model-holding providers stay last in registry order."""
    per = models // providers
    out = writer_providers()
    for p in range(providers):
        key = "bp-%03d" % p
        names = [("bench-p%03d-model-%06d-instruct" % (p, m), "p%dm%d" % (p, m))
                 for m in range(per)]
        out.append((key, "Bench provider %03d" % p, BENCH_URL, BENCH_KEY, names))
    last_key, _, _, _, last_models = out[-1]
    return out, last_key, last_models[-1][0]


# ----------------------------------------------------------------------------- processes


class Daemon:
    """The real provider-manager, in its own data dir, on free ports."""

    def __init__(self, binary, data_dir, endpoint, log_path, extra_args=()):
        self.binary = binary
        self.extra_args = list(extra_args)
        self.data_dir = data_dir
        self.endpoint = endpoint
        self.events = "tcp://127.0.0.1:%d" % free_port()
        self.log_path = log_path
        self.proc = None
        self.startup_s = None

    def start(self, zctx):
        """Starts the daemon and returns the seconds from exec to the first health reply."""
        req = zctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.setsockopt(zmq.RECONNECT_IVL, 1)  # poll for the bind every millisecond
        req.connect(self.endpoint)
        health = _pack_request("health")
        log = open(self.log_path, "ab")
        try:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                [self.binary, "--data-dir", self.data_dir, "--endpoint", self.endpoint,
                 "--events-endpoint", self.events, "--log-level", "warn"] + self.extra_args,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=clean_env())
            req.send(health)
            poller = zmq.Poller()
            poller.register(req, zmq.POLLIN)
            deadline = t0 + STARTUP_TIMEOUT_S
            while True:
                if poller.poll(50):
                    reply = req.recv()
                    self.startup_s = time.perf_counter() - t0
                    break
                if self.proc.poll() is not None:
                    raise BenchError("daemon exited with status %d at start-up (log %s)"
                                     % (self.proc.returncode, self.log_path))
                if time.perf_counter() > deadline:
                    raise BenchError("daemon did not answer health within %d s"
                                     % STARTUP_TIMEOUT_S)
        finally:
            log.close()
            req.close()
        self.health = _unpack_health(reply)
        return self.startup_s

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Echo:
    def __init__(self, binary, endpoints, log_path, shape):
        args = [binary]
        for ep in endpoints:
            args += ["--endpoint", ep]
        args += ["--provider", shape["provider"], "--name", shape["provider_name"],
                 "--url", shape["url"], "--api-key", shape["api_key"],
                 "--result", shape["result"]]
        for long_name, short in shape["models"]:
            args += ["--model", "%s=%s" % (long_name, short)]
        for name in shape["invalid"]:
            args += ["--invalid", name]
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.log)
        line = self.proc.stdout.readline()
        try:
            self.reply_bytes = json.loads(line)["reply_bytes"]
        except (ValueError, KeyError):
            self.stop()
            raise BenchError("bench_echo did not start (log %s)" % log_path)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def _pack_request(op, args=None):
    """A tiny msgpack encoder for {"op": op, "args": {str: str}} (no python3-msgpack needed)."""
    def s(text):
        b = text.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        if len(b) < 256:
            return bytes([0xd9, len(b)]) + b
        return bytes([0xda]) + len(b).to_bytes(2, "big") + b
    args = args or {}
    body = bytes([0x82]) + s("op") + s(op) + s("args") + bytes([0x80 | len(args)])
    for k, v in args.items():
        body += s(k) + s(v)
    return body


def _unpack_health(reply):
    try:
        import msgpack  # optional: only for the sanity check of the model count
    except ImportError:
        return None
    try:
        msg = msgpack.unpackb(reply, raw=False)
        return msg.get("result") if msg.get("ok") else None
    except Exception:  # noqa: BLE001 - a bad health reply only skips the sanity check
        return None


class Client:
    def __init__(self, binary, errors):
        self.binary = binary
        self.errors = errors  # list: every failed run is recorded there

    def run(self, endpoint, threads, requests, warmup, op=None, args=None, write_prefix=None,
            max_seconds=None, label=""):
        cmd = [self.binary, "--endpoint", endpoint, "--threads", str(threads),
               "--requests", str(requests), "--warmup", str(warmup)]
        if op:
            cmd += ["--op", op]
        for k, v in (args or {}).items():
            cmd += ["--arg", "%s=%s" % (k, v)]
        if write_prefix:
            cmd += ["--write", write_prefix]
        if max_seconds:
            cmd += ["--max-seconds", "%g" % max_seconds]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=600)
        if proc.returncode != 0:
            raise BenchError("bench_client failed (%s): %s" % (label or op,
                                                               proc.stderr.decode().strip()))
        result = json.loads(proc.stdout)
        if result["errors"] or result["timeouts"] or not result["requests"]:
            self.errors.append("%s: %d errors, %d timeouts, %d requests"
                               % (label or result["op"], result["errors"], result["timeouts"],
                                  result["requests"]))
        return result


# ----------------------------------------------------------------------------- table A


def strace_syscalls(pid, run, seconds_hint=None):
    """Runs run() while `strace -c -f` is attached to pid; returns (calls by syscall, total).
    strace slows the server down, so this is a separate pass from the timed rounds; the counts
    per request are what it is for. None when strace is missing or cannot attach."""
    strace = shutil.which("strace")
    if not strace:
        return None
    out = tempfile.NamedTemporaryFile(prefix="pm-strace-", suffix=".txt", delete=False)
    out.close()
    proc = subprocess.Popen([strace, "-q", "-c", "-f", "-p", str(pid), "-o", out.name],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # attached to every thread before the first request
        if proc.poll() is not None:
            return None
        result = run()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stderr.close()
    calls = {}
    try:
        with open(out.name) as f:
            for line in f:
                parts = line.split()
                # "% time  seconds  usecs/call  calls  [errors]  syscall"
                if len(parts) < 5 or not parts[0].replace(".", "").isdigit():
                    continue
                name = parts[-1]
                try:
                    calls[name] = calls.get(name, 0) + int(parts[3])
                except ValueError:
                    continue
    finally:
        os.unlink(out.name)
    calls.pop("total", None)
    return calls, sum(calls.values()), result


def bench_request_path(cfg, tools, daemon_bin, tmp, zctx, client, log, shape):
    providers = shape_providers(shape)
    tag = shape["name"]
    transports = {
        "tcp": ("tcp://127.0.0.1:%d" % free_port(), "tcp://127.0.0.1:%d" % free_port()),
        "ipc": ("ipc://%s/pm-%s.sock" % (tmp, tag), "ipc://%s/echo-%s.sock" % (tmp, tag)),
    }
    op_args = {"model_string": shape["model_string"]}
    daemons, echo = {}, None
    samples = {}  # (transport, clients, server) -> list of per-round dicts
    syscalls = {}  # (transport, clients, server) -> {"per_request": x, "top": {...}}
    try:
        for name, (service_ep, _) in transports.items():
            data_dir = os.path.join(tmp, "a-%s-%s" % (tag, name))
            os.makedirs(data_dir, mode=0o700)
            write_yaml(os.path.join(data_dir, PROVIDERS_FILE), providers)
            d = Daemon(daemon_bin, data_dir, service_ep, os.path.join(tmp, "daemon-a.log"))
            daemons[name] = d  # before start(): a daemon that fails half-way is still stopped
            d.start(zctx)
        echo = Echo(os.path.join(tools, "bench_echo"), [ep for _, ep in transports.values()],
                    os.path.join(tmp, "echo.log"), shape)
        servers = {"service": (lambda t: daemons[t].pid, 0), "echo": (lambda t: echo.pid, 1)}
        for r in range(cfg["rounds_a"]):
            for name, (service_ep, echo_ep) in transports.items():
                for clients in (1, 8):
                    # alternate which server goes first, so that drift favours neither
                    order = ["echo", "service"] if r % 2 == 0 else ["service", "echo"]
                    for server in order:
                        ep = service_ep if server == "service" else echo_ep
                        pid = servers[server][0](name)
                        reqs = cfg["requests_1"] if clients == 1 else cfg["requests_8"]
                        c0 = proc_cpu(pid)
                        res = client.run(ep, clients, reqs, cfg["warmup"],
                                         op="get_api_for_model_string", args=op_args,
                                         label="A %s %s %s %d clients" % (tag, server, name,
                                                                          clients))
                        c1 = proc_cpu(pid)
                        served = res["requests"] + clients * cfg["warmup"]
                        res["cpu_us_per_req"] = (
                            (c1[0] - c0[0]) / 1000.0 / served if c0[0] is not None else None)
                        res["cpu_stat_us_per_req"] = (
                            (c1[1] - c0[1]) / 1000.0 / served if c0[1] is not None else None)
                        samples.setdefault((name, clients, server), []).append(res)
                        log(".")
        # Syscalls per request: one pass per cell under strace, after the timed rounds.
        for name, (service_ep, echo_ep) in transports.items():
            for clients in (1, 8):
                for server in ("echo", "service"):
                    ep = service_ep if server == "service" else echo_ep
                    per_thread = max(1, cfg["syscall_requests"] // clients)

                    def run_once(ep=ep, clients=clients, per_thread=per_thread):
                        return client.run(ep, clients, per_thread, 0,
                                          op="get_api_for_model_string", args=op_args,
                                          label="A syscalls %s %s" % (tag, server))
                    got = strace_syscalls(servers[server][0](name), run_once)
                    if got is None:
                        continue
                    calls, total, res = got
                    served = res["requests"] or 1
                    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
                    syscalls[(name, clients, server)] = {
                        "per_request": total / served,
                        "top": {k: v / served for k, v in top}}
                    log("s")
    finally:
        for d in daemons.values():
            d.stop()
        if echo:
            echo.stop()
    log("\n")

    rows, out = [], []
    for name in transports:
        for clients in (1, 8):
            svc = samples[(name, clients, "service")]
            ech = samples[(name, clients, "echo")]
            # paired ratios: round r of the service against round r of the echo
            tputs = [s["rps"] / e["rps"] for s, e in zip(svc, ech) if e["rps"]]
            cpus = [s["cpu_us_per_req"] / e["cpu_us_per_req"] for s, e in zip(svc, ech)
                    if s["cpu_us_per_req"] and e["cpu_us_per_req"]]
            tput, cpu = median(tputs), median(cpus)
            sys_svc = syscalls.get((name, clients, "service"))
            sys_echo = syscalls.get((name, clients, "echo"))
            sys_ratio = (sys_svc["per_request"] / sys_echo["per_request"]
                         if sys_svc and sys_echo and sys_echo["per_request"] else None)
            entry = {"shape": tag, "transport": name, "clients": clients,
                     "throughput_ratio": tput, "cpu_ratio": cpu, "syscall_ratio": sys_ratio,
                     "throughput_ratios": tputs, "cpu_ratios": cpus,
                     "throughput_target": 0.95, "cpu_target": 1.1, "syscall_target": 1.2,
                     "throughput_pass": tput is not None and tput >= 0.95,
                     "cpu_pass": cpu is not None and cpu <= 1.1,
                     "syscall_pass": sys_ratio is not None and sys_ratio <= 1.2}
            for server, runs in (("echo", ech), ("service", svc)):
                sc = syscalls.get((name, clients, server))
                entry[server] = {
                    "rps": median([x["rps"] for x in runs]),
                    "rps_min": min(x["rps"] for x in runs),
                    "rps_max": max(x["rps"] for x in runs),
                    "p50_us": median([x["p50_us"] for x in runs]),
                    "p99_us": median([x["p99_us"] for x in runs]),
                    "cpu_us_per_req": median([x["cpu_us_per_req"] for x in runs]),
                    "cpu_stat_us_per_req": median([x["cpu_stat_us_per_req"] for x in runs]),
                    "reply_bytes": median([x["reply_bytes"] for x in runs]),
                    "syscalls_per_req": sc["per_request"] if sc else None,
                    "syscalls_top": sc["top"] if sc else None,
                    "rounds": runs,
                }
                e = entry[server]
                spread = "%s-%s" % (fmt_int(e["rps_min"]), fmt_int(e["rps_max"]))
                rows.append([name, str(clients), server, fmt_int(e["rps"]), spread,
                             fmt_us(e["p50_us"]), fmt_us(e["p99_us"]),
                             fmt_us(e["cpu_us_per_req"]),
                             "-" if e["syscalls_per_req"] is None else
                             "%.1f" % e["syscalls_per_req"],
                             fmt_int(e["reply_bytes"]),
                             "" if server == "echo" else "%s %s [%s]" % (
                                 fmt_ratio(tput), verdict(entry["throughput_pass"]),
                                 fmt_spread(tputs)),
                             "" if server == "echo" else "%s %s [%s]" % (
                                 fmt_ratio(cpu), verdict(entry["cpu_pass"]), fmt_spread(cpus)),
                             "" if server == "echo" else "%s %s" % (
                                 fmt_ratio(sys_ratio), verdict(entry["syscall_pass"]))])
            out.append(entry)
    print_table("A. Request path vs transport limit, %s shape: get_api_for_model_string(%r), "
                "%d models + %d invalid (%d rounds, medians; ratios are medians of paired "
                "rounds, [min-max])" % (tag, shape["model_string"], len(shape["models"]),
                                        len(shape["invalid"]), cfg["rounds_a"]),
                ["transport", "clients", "server", "req/s", "req/s range", "p50 us", "p99 us",
                 "cpu us/req", "sys/req", "reply B", "tput svc/echo (>=0.95)",
                 "cpu svc/echo (<=1.1)", "sys svc/echo (<=1.2)"], rows)
    sizes = {int(e[s]["reply_bytes"] or 0) for e in out for s in ("echo", "service")}
    if len(sizes) != 1:
        print("  note: echo and service reply sizes differ: %s" % sorted(sizes))
    print("  server CPU: sum of the server's per-thread run time (/proc/<pid>/task/*/schedstat) "
          "over the round,\n  divided by the requests served (warm-up included); "
          "/proc/<pid>/stat utime+stime is in results.json.\n  sys/req: `strace -c -f` on the "
          "server during a separate pass of %d requests (all threads)."
          % cfg["syscall_requests"])
    for name in transports:
        for server in ("echo", "service"):
            sc = syscalls.get((name, 1, server))
            if sc:
                print("    %s %-7s 1 client: %s" % (name, server, ", ".join(
                    "%s %.1f" % kv for kv in sc["top"].items())))
    return out


# ----------------------------------------------------------------------------- tables B, W


def bench_growth(cfg, tools, daemon_bin, tmp, zctx, client, log):
    """Tables B and W. Start-up is measured on fresh daemons, round after round, sizes
    alternating. Then one daemon per registry stays up and every other measurement is taken
    in rounds that visit all registries back to back, so that the ratios between sizes are
    taken from neighbouring runs (medians of per-round ratios)."""
    configs = [(m, p) for m in cfg["sizes"] for p in cfg["provider_counts"]]
    templates = {}
    for models, providers in configs:
        path = os.path.join(tmp, "registry-%d-%d.yaml" % (models, providers))
        regs, last_key, last_model = growth_registry(models, providers)
        write_yaml(path, regs)
        templates[(models, providers)] = (path, last_key, last_model, os.path.getsize(path))
    empty_yaml = os.path.join(tmp, "registry-empty.yaml")
    write_yaml(empty_yaml, writer_providers())

    # 1. start-up: exec -> first health answer, fresh daemon each time
    startups = {c: [] for c in configs}
    empty_startups = []
    for r in range(cfg["rounds_b"]):
        empty_startups.append(_start_once(daemon_bin, tmp, zctx, empty_yaml, "empty-%d" % r,
                                          None))
        for c in (configs if r % 2 == 0 else list(reversed(configs))):
            startups[c].append(_start_once(daemon_bin, tmp, zctx, templates[c][0],
                                           "%d-%d-%d" % (c[0], c[1], r), c[0]))
        log(".")

    # 2. everything else, one long-lived daemon per registry
    daemons = {}
    samples = {c: {} for c in configs}  # config -> key -> [per-round result]
    writes = {}

    def record(c, key, res):
        samples[c].setdefault(key, []).append(res)

    try:
        for c in configs:
            data_dir = os.path.join(tmp, "b-%d-%d" % c)
            os.makedirs(data_dir, mode=0o700)
            shutil.copyfile(templates[c][0], os.path.join(data_dir, PROVIDERS_FILE))
            d = Daemon(daemon_bin, data_dir, "ipc://%s/b-%d-%d.sock" % (tmp, c[0], c[1]),
                       os.path.join(tmp, "daemon-b.log"))
            daemons[c] = d
            d.start(zctx)
            if d.health is not None and d.health.get("models") != c[0]:
                raise BenchError("daemon loaded %s models, expected %d"
                                 % (d.health.get("models"), c[0]))
            samples[c]["rss_load_kib"] = [proc_status_kib(d.pid, "VmRSS")]

        def one(c, op, args, requests, seconds, label, key):
            d = daemons[c]
            c0 = proc_cpu(d.pid)[0]
            res = client.run(d.endpoint, 1, requests, min(cfg["warmup"], 10), op=op, args=args,
                             max_seconds=seconds, label="B %d/%d %s" % (c[0], c[1], label))
            c1 = proc_cpu(d.pid)[0]
            served = res["requests"] + min(cfg["warmup"], 10)
            res["cpu_us_per_req"] = (c1 - c0) / 1000.0 / served if c0 is not None else None
            record(c, key, res)

        resolve_ops = [("get_api_for_model_string", "api"), ("validate_model", "validate")]
        for r in range(cfg["rounds_res"]):
            for c in (configs if r % 2 == 0 else list(reversed(configs))):
                _, last_key, last_model, _ = templates[c]
                for op, key in resolve_ops:
                    one(c, op, {"model_string": last_model}, cfg["resolve_requests"],
                        cfg["resolve_seconds"], op + " bare", key + "_bare")
                    one(c, op, {"model_string": last_key + "/" + last_model},
                        cfg["resolve_requests"], cfg["resolve_seconds"], op + " prefixed",
                        key + "_prefixed")
            log(".")
        for r in range(cfg["rounds_b"]):
            for c in (configs if r % 2 == 0 else list(reversed(configs))):
                bq, bs = cfg["bulk_requests"], cfg["bulk_seconds"]
                one(c, "merged_models", {}, bq, bs, "merged_models", "merged")
                one(c, "valid_scoped_models", {}, bq, bs, "valid_scoped_models", "scoped")
                one(c, "persist_provider_configs", {}, bq, bs, "persist", "persist")
            log(".")
        write_configs = [c for c in configs if c[0] in cfg["write_sizes"]]
        for r in range(cfg["rounds_b"]):
            for c in (write_configs if r % 2 == 0 else list(reversed(write_configs))):
                for writers in (1, WRITERS):
                    res = client.run(daemons[c].endpoint, writers, cfg["write_requests"], 2,
                                     write_prefix="bw-", max_seconds=cfg["write_seconds"],
                                     label="B %d/%d set_provider x%d" % (c[0], c[1], writers))
                    writes.setdefault((c[0], c[1], writers), []).append(res)
            log(".")
        for c in configs:
            samples[c]["rss_end_kib"] = [proc_status_kib(daemons[c].pid, "VmRSS")]
            samples[c]["rss_peak_kib"] = [proc_status_kib(daemons[c].pid, "VmHWM")]
    finally:
        for d in daemons.values():
            d.stop()
    log("\n")

    empty = median(empty_startups)
    growth = []
    for c in configs:
        models, providers = c
        runs = samples[c]
        _, last_key, last_model, yaml_bytes = templates[c]

        def m(key, field="p50_us"):
            return median([x[field] for x in runs[key]])
        startup = median(startups[c])
        growth.append({
            "models": models, "providers": providers, "yaml_bytes": yaml_bytes,
            "last_provider": last_key, "last_model": last_model,
            "api_bare_p50_us": m("api_bare"), "api_prefixed_p50_us": m("api_prefixed"),
            "api_bare_cpu_us": m("api_bare", "cpu_us_per_req"),
            "api_reply_bytes": m("api_bare", "reply_bytes"),
            "validate_bare_p50_us": m("validate_bare"),
            "validate_prefixed_p50_us": m("validate_prefixed"),
            "validate_bare_cpu_us": m("validate_bare", "cpu_us_per_req"),
            "merged_p50_us": m("merged"), "merged_reply_bytes": m("merged", "reply_bytes"),
            "scoped_p50_us": m("scoped"), "scoped_reply_bytes": m("scoped", "reply_bytes"),
            "persist_p50_us": m("persist"),
            "startup_s": startup, "startups_s": startups[c], "empty_startup_s": empty,
            "load_s": (startup - empty) if startup is not None and empty is not None else None,
            "rss_load_kib": runs["rss_load_kib"][0], "rss_end_kib": runs["rss_end_kib"][0],
            "rss_peak_kib": runs["rss_peak_kib"][0],
            "rounds": {k: v for k, v in runs.items() if not k.startswith("rss")},
        })

    rows = [[fmt_int(g["models"]), str(g["providers"]),
             fmt_us(g["api_bare_p50_us"]), fmt_us(g["api_prefixed_p50_us"]),
             fmt_us(g["api_bare_cpu_us"]), fmt_bytes(g["api_reply_bytes"]),
             fmt_us(g["validate_bare_p50_us"]), fmt_us(g["validate_prefixed_p50_us"]),
             fmt_us(g["validate_bare_cpu_us"])] for g in growth]
    print_table("B1. Resolution vs registry size (%d interleaved rounds, medians): the LAST "
                "provider's last model" % cfg["rounds_res"],
                ["models", "provs", "api bare us", "api pfx us", "api cpu us", "api reply",
                 "valid bare us", "valid pfx us", "valid cpu us"], rows)
    print("  api = get_api_for_model_string: its reply is [ProviderConfig, long] and carries ALL "
          "of that provider's models,\n  so it grows with models per provider; valid = "
          "validate_model (same lookup, reply = the long name).\n  cpu = the daemon's CPU "
          "time per request (all threads), bare name.")
    rows = [[fmt_int(g["models"]), str(g["providers"]),
             fmt_ms(g["merged_p50_us"]), fmt_bytes(g["merged_reply_bytes"]),
             fmt_ms(g["scoped_p50_us"]), fmt_bytes(g["scoped_reply_bytes"]),
             fmt_ms(g["startup_s"] * 1e6 if g["startup_s"] is not None else None),
             fmt_ms(g["load_s"] * 1e6 if g["load_s"] is not None else None),
             fmt_ms(g["persist_p50_us"]), fmt_bytes(g["yaml_bytes"]),
             fmt_mib(g["rss_load_kib"]), fmt_mib(g["rss_end_kib"]), fmt_mib(g["rss_peak_kib"])]
            for g in growth]
    print_table("B2. Bulk reads, start-up, persist, memory vs registry size (%d rounds, medians)"
                % cfg["rounds_b"],
                ["models", "provs", "merged ms", "merged B", "scoped ms", "scoped B",
                 "start ms", "load ms", "persist ms", "yaml B", "RSS load", "RSS end",
                 "RSS peak"], rows)
    print("  start = exec -> first health answer; load = start minus the empty registry's "
          "(%s ms). RSS in MiB: after load,\n  at the end (after all reads, bulk replies, "
          "persists and writes: the target), and VmHWM."
          % fmt_ms(empty * 1e6 if empty is not None else None))

    # targets of table B: resolution ratios are medians of per-round ratios
    targets = []
    smallest, largest = min(cfg["sizes"]), max(cfg["sizes"])
    for providers in cfg["provider_counts"]:
        lo = next(g for g in growth if g["models"] == smallest and g["providers"] == providers)
        hi = next(g for g in growth if g["models"] == largest and g["providers"] == providers)
        for key, what in (("api_bare", "get_api bare"), ("api_prefixed", "get_api prefixed"),
                          ("validate_bare", "validate bare"),
                          ("validate_prefixed", "validate prefixed")):
            ratio = median([h["p50_us"] / l["p50_us"] for h, l in
                            zip(hi["rounds"][key], lo["rounds"][key]) if l["p50_us"]])
            targets.append({"name": "resolution p50 %s, %s vs %s models, %d providers" % (
                what, fmt_int(largest), fmt_int(smallest), providers),
                "value": ratio, "unit": "x", "target": "<= 1.1",
                "pass": ratio is not None and ratio <= 1.1})
        targets.append({"name": "load of %s models, %d providers" % (fmt_int(largest), providers),
                        "value": hi["load_s"], "unit": "s", "target": "< 1",
                        "pass": hi["load_s"] is not None and hi["load_s"] < 1.0})
        persist_s = hi["persist_p50_us"] / 1e6 if hi["persist_p50_us"] else None
        targets.append({"name": "persist of %s models, %d providers" % (fmt_int(largest),
                                                                         providers),
                        "value": persist_s, "unit": "s", "target": "< 1",
                        "pass": persist_s is not None and persist_s < 1.0})
        rss = hi["rss_end_kib"] / 1024.0 if hi["rss_end_kib"] else None
        targets.append({"name": "RSS at %s models, %d providers" % (fmt_int(largest), providers),
                        "value": rss, "unit": "MiB", "target": "< 64",
                        "pass": rss is not None and rss < 64})
    print_targets("B targets", targets)

    # table W
    wrows, wout = [], []
    for models in cfg["write_sizes"]:
        for providers in cfg["provider_counts"]:
            for writers in (1, WRITERS):
                runs = writes.get((models, providers, writers), [])
                e = {"models": models, "providers": providers, "writers": writers,
                     "writes_per_s": median([x["rps"] for x in runs]),
                     "p50_us": median([x["p50_us"] for x in runs]),
                     "p99_us": median([x["p99_us"] for x in runs]),
                     "rounds": runs}
                wout.append(e)
                wrows.append([fmt_int(models), str(providers), str(writers),
                              fmt_int(e["writes_per_s"]), fmt_ms(e["p50_us"]),
                              fmt_ms(e["p99_us"])])
    print_table("W. Write path: set_provider, each writer changes its own provider "
                "(%d rounds, medians)" % cfg["rounds_b"],
                ["models", "provs", "writers", "writes/s", "p50 ms", "p99 ms"], wrows)
    wtargets = []
    for providers in cfg["provider_counts"]:
        e = next(x for x in wout if x["models"] == max(cfg["write_sizes"])
                 and x["providers"] == providers and x["writers"] == WRITERS)
        wtargets.append({"name": "%d writers at %s models, %d providers" % (
            WRITERS, fmt_int(e["models"]), providers),
            "value": e["writes_per_s"], "unit": "writes/s", "target": ">= 100",
            "pass": e["writes_per_s"] is not None and e["writes_per_s"] >= 100})
    print_targets("W targets", wtargets)
    return growth, targets, wout, wtargets


def _start_once(daemon_bin, tmp, zctx, yaml_path, tag, models):
    """Seconds from exec to the first health answer of a fresh daemon on yaml_path."""
    data_dir = os.path.join(tmp, "start-" + tag)
    os.makedirs(data_dir, mode=0o700)
    shutil.copyfile(yaml_path, os.path.join(data_dir, PROVIDERS_FILE))
    d = Daemon(daemon_bin, data_dir, "ipc://%s/s.sock" % tmp, os.path.join(tmp, "daemon-s.log"))
    try:
        seconds = d.start(zctx)
        if models is not None and d.health is not None and d.health.get("models") != models:
            raise BenchError("daemon loaded %s models, expected %d"
                             % (d.health.get("models"), models))
        return seconds
    finally:
        d.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def bench_in_process(cfg, tools, log):
    """Table B0: bench_registry, the registry-size-dependent costs without the transport."""
    configs = ["%dx%d" % (m, p) for m in cfg["sizes"] for p in cfg["provider_counts"]]
    cmd = [os.path.join(tools, "bench_registry"), "--rounds", str(cfg["rounds_inproc"]),
           "--iterations", str(cfg["inproc_iterations"])] + configs
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=600)
    if proc.returncode != 0:
        raise BenchError("bench_registry failed: %s" % proc.stderr.decode().strip()[-500:])
    res = json.loads(proc.stdout)
    regs = res["registries"]
    log(".\n")
    rows = [[fmt_int(g["models"]), str(g["providers"]), "%.0f" % g["resolve_bare_ns"],
             "%.0f" % g["resolve_prefixed_ns"], fmt_us(g["pack_api_ns"] / 1000.0),
             fmt_bytes(g["api_reply_bytes"]), "%.2f" % g["commit_ms"], "%.2f" % g["seal_ms"],
             "%.2f" % g["persist_ms"], "%.2f" % g["load_ms"]] for g in regs]
    print_table("B0. In process, no transport (bench_registry, %d interleaved rounds, medians)"
                % res["rounds"],
                ["models", "provs", "resolve bare ns", "resolve pfx ns", "pack api us",
                 "api reply", "commit ms", "seal ms", "persist ms", "yaml load ms"], rows)
    print("  resolve = registry_resolve() of the LAST provider's last model; pack api = "
          "packing the get_api_for_model_string\n  reply; commit = clone + edit one provider "
          "+ seal (a write minus its persist); seal = rebuilding the global\n  index of a clone "
          "(first touch of fresh memory included); persist = store_persist (emit + fsync +\n"
          "  rename); yaml load = store_load (parse only, no layering).")
    targets = []
    smallest, largest = min(cfg["sizes"]), max(cfg["sizes"])
    for providers in cfg["provider_counts"]:
        lo = next(g for g in regs if g["models"] == smallest and g["providers"] == providers)
        hi = next(g for g in regs if g["models"] == largest and g["providers"] == providers)
        for key, what in (("resolve_bare_ns", "bare"), ("resolve_prefixed_ns", "prefixed")):
            ratio = hi[key] / lo[key] if lo[key] else None
            targets.append({"name": "in-process resolution %s, %s vs %s models, %d providers"
                                    % (what, fmt_int(largest), fmt_int(smallest), providers),
                            "value": ratio, "unit": "x", "target": "<= 1.1",
                            "pass": ratio is not None and ratio <= 1.1})
    print_targets("B0 targets", targets)
    return res, targets


# ----------------------------------------------------------------------------- table C


def bench_discovery(cfg, tools, daemon_bin, quick, log):
    """Hook for tests/bench/bench_discovery (written separately, with tests/fake_upstream.py).
    It is run when built; its stdout is kept as it is, and parsed when it is JSON."""
    binary = os.path.join(tools, "bench_discovery")
    if not os.access(binary, os.X_OK):
        print("\nC. Discovery: bench_discovery not built (tests/bench/bench_discovery.c absent); "
              "skipped.")
        return {"skipped": True}
    cmd = [binary] + (["--quick"] if quick else [])
    env = dict(os.environ)
    env.setdefault("PM_SOURCE_DIR", os.path.dirname(os.path.dirname(SOURCE_DIR)))
    env.setdefault("PM_PYTHON", "/usr/bin/python3")
    env.setdefault("PM_DAEMON", daemon_bin)
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=600, env=env)
    text = proc.stdout.decode(errors="replace")
    out = {"skipped": False, "exit_status": proc.returncode, "stdout": text}
    try:
        out["result"] = json.loads(text)
    except ValueError:
        pass
    res = out.get("result")
    if isinstance(res, dict) and "wall_s" in res:
        target = res.get("target_ratio", 1.3)
        out["target"] = {"name": "discovery wall / ideal", "value": res.get("ratio"),
                         "unit": "x", "target": "<= %g" % target,
                         "pass": res.get("ratio") is not None and res["ratio"] <= target}
        print_table("C. Discovery: one job over %s providers x %s models, every upstream answer "
                    "after %s ms, per_provider_limit %s, %s workers (%d rounds, median)"
                    % (res.get("providers"), res.get("models_per_provider"),
                       res.get("latency_ms"), res.get("per_provider_limit"),
                       res.get("workers"), len(res.get("rounds", []))),
                    ["wall s", "ideal s", "ratio", "target", "verdict", "rounds s",
                     "requests", "max inflight/provider", "jobs ok"],
                    [["%.3f" % res["wall_s"], "%.3f" % res.get("ideal_s", 0),
                      fmt_ratio(res.get("ratio")), "<= %g" % target,
                      verdict(out["target"]["pass"]),
                      " ".join("%.3f" % w for w in res.get("rounds", [])),
                      str(res.get("requests", "-")),
                      str(res.get("max_inflight_per_provider", "-")),
                      str(res.get("jobs_succeeded", "-"))]])
    else:
        print("\nC. Discovery (bench_discovery, exit %d)" % proc.returncode)
        print("\n".join("  " + line for line in text.rstrip().splitlines()))
    if proc.returncode != 0:
        raise BenchError("bench_discovery failed: %s" % proc.stderr.decode().strip()[-500:])
    return out


# ----------------------------------------------------------------------------- table R


def bench_replica(tools, quick, log):
    """Table R: bench_replica, resolution in process through the client replica, idle and
    while the replica applies 1,000 changes per second."""
    binary = os.path.join(tools, "bench_replica")
    runs = []
    for rate in (0, 1000):
        cmd = [binary, "--threads", "1,2", "--changes-per-s", str(rate)]
        if quick:
            cmd.append("--quick")
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=600)
        if proc.returncode != 0:
            raise BenchError("bench_replica failed: %s" % proc.stderr.decode().strip()[-500:])
        runs.append(json.loads(proc.stdout))
        log(".")
    log("\n")
    rows, targets = [], []
    for res in runs:
        for r in res["runs"]:
            rows.append([fmt_int(res["models"]), str(res["changes_per_s"]), str(r["threads"]),
                         "%d" % r["p50_ns"], "%d" % r["p99_ns"], fmt_int(r["rps_per_thread"]),
                         "%.0f" % res["sync_ms"], fmt_mib(res["rss_kib"])])
            cell = "%d reader(s), %d changes/s" % (r["threads"], res["changes_per_s"])
            targets.append({"name": "replica resolution p50, " + cell, "value": r["p50_ns"],
                            "unit": "ns", "target": "<= 1000", "pass": r["p50_ns"] <= 1000})
            targets.append({"name": "replica resolutions/s per thread, " + cell,
                            "value": r["rps_per_thread"], "unit": "/s",
                            "target": ">= 1000000", "pass": r["rps_per_thread"] >= 1000000})
    print_table("R. Client replica: pmclient_replica_resolve in process (bench_replica)",
                ["models", "changes/s", "readers", "p50 ns", "p99 ns", "resolutions/s/thread",
                 "sync ms", "RSS"], rows)
    print("  sync = replica start to its first snapshot applied (its own primary in the same "
          "process); RSS of\n  the whole process (primary's packed snapshot included).")
    print_targets("R targets", targets)
    return runs, targets


# ----------------------------------------------------------------------------- tables R, L, F
# The client replica against the real daemon (issue 14, tests/bench/bench_replica_daemon):
# R (second part) = the same resolution over the wire and through a replica, side by side,
# with the replica's own process's RSS and the snapshot it syncs from; L = how soon a write
# is visible in a replica; F = what 100 subscribed replicas cost the daemon's requests.

REPLICA_TOOL = "bench_replica_daemon"
VIS_RATE = 1000  # table L: writes per second in all, the issue's setting
HOLDER_NICE = 10  # table F: the replicas' helper process yields the cores to the daemon


def _load():
    return os.getloadavg()[0]


def _json_tool(cmd, what):
    """Runs a bench tool that prints one JSON object and returns it (BenchError otherwise)."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=900)
    if proc.returncode != 0:
        raise BenchError("%s failed (exit %d): %s" % (what, proc.returncode,
                                                      proc.stderr.decode().strip()[-500:]))
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise BenchError("%s printed no JSON: %r" % (what, proc.stdout[:200]))


def _snapshot_once(zctx, endpoint):
    """Seconds from sending `snapshot` to its last byte, and the reply's size (not decoded)."""
    req = zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(endpoint)
        t0 = time.perf_counter()
        req.send(_pack_request("snapshot"))
        if not req.poll(60000, zmq.POLLIN):
            raise BenchError("no snapshot reply within 60 s")
        reply = req.recv()
        seconds = time.perf_counter() - t0
    finally:
        req.close()
    if reply[:5] != b"\x82\xa2ok\xc3":
        raise BenchError("snapshot failed: %r" % reply[:200])
    return seconds, len(reply)


def bench_replica_wire(cfg, tools, daemon_bin, tmp, zctx, client, log):
    """Table R, second part: one daemon holding replica_models models over 100 providers plus
    the realistic shape's provider (last in registry order), on tcp loopback. Per round, order
    alternating: get_api_for_model_string(openai/gpt-4o) over the wire (bench_client, 1
    client) and through a replica synced from that daemon in its own process
    (bench_replica_daemon --mode resolve: the same call, allocating the ProviderConfig as the
    wire's caller gets it, and pmclient_replica_resolve, the allocation-free form); one
    `snapshot` over tcp per round. Ratios are wire p50 / replica p50 of the same round."""
    models, providers = cfg["replica_models"], 100
    data_dir = os.path.join(tmp, "rw")
    os.makedirs(data_dir, mode=0o700)
    regs, _, _ = growth_registry(models, providers)
    regs += shape_providers(HEADLINE)
    write_yaml(os.path.join(data_dir, PROVIDERS_FILE), regs)
    total_models = models + len(HEADLINE["models"])
    d = Daemon(daemon_bin, data_dir, "tcp://127.0.0.1:%d" % free_port(),
               os.path.join(tmp, "daemon-rw.log"))
    op_args = {"model_string": HEADLINE["model_string"]}
    rounds = []
    try:
        d.start(zctx)
        if d.health is not None and d.health.get("models") != total_models:
            raise BenchError("daemon loaded %s models, expected %d"
                             % (d.health.get("models"), total_models))
        for r in range(cfg["rounds_rw"]):
            entry = {"load_start": _load()}
            entry["snapshot_s"], entry["snapshot_bytes"] = _snapshot_once(zctx, d.endpoint)
            for side in (("wire", "replica") if r % 2 == 0 else ("replica", "wire")):
                if side == "wire":
                    entry["wire"] = client.run(d.endpoint, 1, cfg["requests_1"], cfg["warmup"],
                                               op="get_api_for_model_string", args=op_args,
                                               label="R wire")
                else:
                    c1 = proc_cpu(d.pid)
                    entry["replica"] = _json_tool(
                        [os.path.join(tools, REPLICA_TOOL), "--mode", "resolve",
                         "--endpoint", d.endpoint, "--events", d.events,
                         "--model-string", HEADLINE["model_string"],
                         "--expect-provider", HEADLINE["provider"],
                         "--expect-model", HEADLINE["result"],
                         "--calls", str(cfg["replica_calls"])], "bench_replica_daemon resolve")
                    c2 = proc_cpu(d.pid)
                    # what serving the replica's sync cost the daemon (its snapshot, mostly)
                    entry["daemon_cpu_ms_replica"] = ((c2[0] - c1[0]) / 1e6
                                                      if c1[0] is not None else None)
            rep, wire = entry["replica"], entry["wire"]
            if rep["models"] != total_models:
                raise BenchError("replica holds %d models, expected %d"
                                 % (rep["models"], total_models))
            entry["ratio_get"] = wire["p50_us"] * 1000.0 / max(rep["get_p50_ns"], 1)
            entry["ratio_resolve"] = wire["p50_us"] * 1000.0 / max(rep["resolve_p50_ns"], 1)
            entry["load_end"] = _load()
            rounds.append(entry)
            log(".")
    finally:
        d.stop()
    log("\n")

    def med(path):
        out = []
        for e in rounds:
            v = e
            for k in path:
                v = v[k]
            out.append(v)
        return median(out)
    res = {"models": total_models, "providers": providers + 1 + WRITERS,
           "model_string": HEADLINE["model_string"], "rounds": rounds,
           "wire_p50_us": med(["wire", "p50_us"]), "wire_p99_us": med(["wire", "p99_us"]),
           "wire_rps": med(["wire", "rps"]),
           "get_p50_ns": med(["replica", "get_p50_ns"]),
           "get_p99_ns": med(["replica", "get_p99_ns"]),
           "resolve_p50_ns": med(["replica", "resolve_p50_ns"]),
           "resolve_p99_ns": med(["replica", "resolve_p99_ns"]),
           "resolve_rps": med(["replica", "resolve_rps"]),
           "ratio_get": med(["ratio_get"]), "ratio_resolve": med(["ratio_resolve"]),
           "sync_ms": med(["replica", "sync_ms"]),
           "rss_sync_kib": med(["replica", "rss_sync_kib"]),
           "hwm_sync_kib": med(["replica", "hwm_sync_kib"]),
           "rss_end_kib": med(["replica", "rss_end_kib"]),
           "snapshot_first_s": rounds[0]["snapshot_s"],
           "snapshot_s": med(["snapshot_s"]), "snapshot_bytes": rounds[-1]["snapshot_bytes"],
           "load": [min(e["load_start"] for e in rounds), max(e["load_end"] for e in rounds)]}
    rows = [["wire (daemon, tcp, 1 client)", fmt_us(res["wire_p50_us"]),
             fmt_us(res["wire_p99_us"]), fmt_int(res["wire_rps"]), "1.00x", ""],
            ["replica get_api_for_model_string", "%.3f" % (res["get_p50_ns"] / 1000.0),
             "%.3f" % (res["get_p99_ns"] / 1000.0), "-", "%.0fx" % res["ratio_get"],
             fmt_spread([e["ratio_get"] for e in rounds])],
            ["replica resolve (no allocation)", "%.3f" % (res["resolve_p50_ns"] / 1000.0),
             "%.3f" % (res["resolve_p99_ns"] / 1000.0), fmt_int(res["resolve_rps"]),
             "%.0fx" % res["ratio_resolve"],
             fmt_spread([e["ratio_resolve"] for e in rounds])]]
    print_table("R (wire vs replica). get_api_for_model_string(%r) at %s models, over the wire "
                "and through a replica\n  synced from the same daemon, side by side (%d rounds, "
                "order alternating, medians; load %.2f-%.2f)"
                % (HEADLINE["model_string"], fmt_int(total_models), len(rounds),
                   res["load"][0], res["load"][1]),
                ["path", "p50 us", "p99 us", "calls/s", "wire/path p50", "rounds"], rows)
    print("  the replica in its own process (bench_replica_daemon, nothing else in it): sync "
          "%.0f ms, VmRSS after sync %s MiB,\n  VmHWM %s MiB (after the timed calls, the bench's "
          "timing arrays included: RSS %s MiB); snapshot over tcp:\n  first %.3f s, median "
          "%.3f s, %.1f MiB"
          % (res["sync_ms"], fmt_mib(res["rss_sync_kib"]), fmt_mib(res["hwm_sync_kib"]),
             fmt_mib(res["rss_end_kib"]), res["snapshot_first_s"], res["snapshot_s"],
             res["snapshot_bytes"] / MIB))
    targets = [
        {"name": "replica resolve p50 vs daemon at %s models" % fmt_int(total_models),
         "value": res["resolve_p50_ns"], "unit": "ns", "target": "<= 1000",
         "pass": res["resolve_p50_ns"] <= 1000},
        {"name": "replica resolutions/s, 1 thread, vs daemon", "value": res["resolve_rps"],
         "unit": "/s", "target": ">= 1000000", "pass": res["resolve_rps"] >= 1000000},
        {"name": "replica process RSS after sync, %s models" % fmt_int(total_models),
         "value": res["rss_sync_kib"] / 1024.0, "unit": "MiB", "target": "< 48 MiB",
         "pass": res["rss_sync_kib"] < 48 * 1024},
        {"name": "replica process VmHWM, %s models" % fmt_int(total_models),
         "value": res["hwm_sync_kib"] / 1024.0, "unit": "MiB", "target": "< 48 MiB",
         "pass": res["hwm_sync_kib"] < 48 * 1024},
        {"name": "snapshot of %s models over tcp, median" % fmt_int(total_models),
         "value": res["snapshot_s"], "unit": "s", "target": "< 0.3 s",
         "pass": res["snapshot_s"] < 0.3},
    ]
    print_targets("R (wire vs replica) targets", targets)
    return res, targets


def bench_visibility(cfg, tools, daemon_bin, tmp, zctx, log):
    """Table L: a daemon on tcp loopback holding the realistic shape; per round and writer
    count (order alternating), bench_replica_daemon --mode visibility: set_provider paced at
    1,000 writes/s in all, a replica in the same process; visibility = replica applied minus
    writer's reply. Medians over the rounds."""
    data_dir = os.path.join(tmp, "vis")
    os.makedirs(data_dir, mode=0o700)
    write_yaml(os.path.join(data_dir, PROVIDERS_FILE), shape_providers(HEADLINE))
    d = Daemon(daemon_bin, data_dir, "tcp://127.0.0.1:%d" % free_port(),
               os.path.join(tmp, "daemon-vis.log"))
    writer_counts = cfg["vis_writers"]
    runs = {w: [] for w in writer_counts}
    try:
        d.start(zctx)
        for r in range(cfg["rounds_vis"]):
            for w in (writer_counts if r % 2 == 0 else list(reversed(writer_counts))):
                load0 = _load()
                res = _json_tool(
                    [os.path.join(tools, REPLICA_TOOL), "--mode", "visibility",
                     "--endpoint", d.endpoint, "--events", d.events, "--writers", str(w),
                     "--rate", str(VIS_RATE), "--writes", str(cfg["vis_writes"]),
                     "--warmup", "50"], "bench_replica_daemon visibility")
                res["load_start"], res["load_end"] = load0, _load()
                runs[w].append(res)
                log(".")
    finally:
        d.stop()
    log("\n")
    rows, out, targets = [], [], []
    sustained = []
    for w in writer_counts:
        rs = runs[w]
        e = {"writers": w, "rounds": rs}
        for k in ("achieved_rate", "write_p50_us", "write_p99_us", "vis_p50_us", "vis_p99_us",
                  "vis_max_us", "negative", "most_negative_us", "late_sends"):
            e[k] = median([x[k] for x in rs])
        e["writes"] = rs[0]["writes"]
        e["missing"] = sum(x["missing"] for x in rs)
        e["by_snapshot"] = sum(x["by_snapshot"] for x in rs)
        e["resnapshots"] = sum(x["resnapshots"] for x in rs)
        e["load"] = [min(x["load_start"] for x in rs), max(x["load_end"] for x in rs)]
        e["sustained"] = e["achieved_rate"] >= 0.95 * VIS_RATE
        if e["sustained"]:
            sustained.append(w)
        out.append(e)
        rows.append([str(w), fmt_int(e["writes"]), fmt_int(e["achieved_rate"]),
                     "%.2f" % (e["write_p50_us"] / 1000), "%.2f" % (e["write_p99_us"] / 1000),
                     "%.3f" % (e["vis_p50_us"] / 1000), "%.3f" % (e["vis_p99_us"] / 1000),
                     fmt_spread([x["vis_p99_us"] / 1000 for x in rs]),
                     "%.2f" % (e["vis_max_us"] / 1000),
                     "%d (%.0f%%)" % (e["negative"], 100.0 * e["negative"] / max(e["writes"], 1)),
                     "%d/%d" % (e["missing"], e["by_snapshot"]),
                     "%.1f-%.1f" % tuple(e["load"])])
        targets.append({"name": "visibility p99, %d writer(s), %s writes/s achieved"
                                % (w, fmt_int(e["achieved_rate"])),
                        "value": e["vis_p99_us"] / 1000.0, "unit": "ms", "target": "<= 5 ms",
                        "pass": e["vis_p99_us"] <= 5000 and e["missing"] == 0})
    print_table("L. Visibility: set_provider paced at %s writes/s in all, replica applied minus "
                "writer's reply (%d rounds, medians;\n  tcp loopback, each write persisted "
                "before its reply)" % (fmt_int(VIS_RATE), cfg["rounds_vis"]),
                ["writers", "writes", "achieved/s", "write p50 ms", "write p99 ms",
                 "vis p50 ms", "vis p99 ms", "p99 rounds", "vis max ms", "before reply",
                 "missing/by snap", "load"], rows)
    print("  before reply: writes the replica applied before the writer had its reply "
          "(counted as 0); missing: never\n  seen by the replica; by snap: made visible by a "
          "re-snapshot rather than their event.")
    targets.append({"name": "1,000 writes/s sustained (writers: %s)"
                            % (",".join(str(w) for w in sustained) or "none"),
                    "value": max(e["achieved_rate"] for e in out), "unit": "/s",
                    "target": ">= 950", "pass": bool(sustained)})
    print_targets("L targets", targets)
    return out, targets


def bench_fanout(cfg, tools, daemon_bin, tmp, zctx, client, log):
    """Table F: the daemon on tcp loopback with the realistic shape; its request p50 (1
    client) while one helper process (bench_replica_daemon --mode hold) holds fanout_replicas
    replicas, with no writes and with fanout_write_rate writes/s from that helper (so the PUB
    fan-out of `changed` events runs during the requests). Three cells per round, order
    alternating:
      none:  the helper holds no replica (only its writer);
      decoy: the helper's replicas are subscribed to a SECOND daemon (same registry, same
             writes): the machine carries the same helper load, the measured daemon has no
             subscriber;
      on:    the helper's replicas are subscribed to the measured daemon.
    Both daemons get the same writes in every cell. on/decoy is the subscribers' cost to the
    daemon (the target); on/none also holds what the helper's own threads take from the two
    shared cores of this machine. Paired per-round ratios, medians."""
    n_max = cfg["fanout_replicas"]
    op_args = {"model_string": HEADLINE["model_string"]}
    daemons = []
    for tag in ("fan", "fan-decoy"):
        data_dir = os.path.join(tmp, tag)
        os.makedirs(data_dir, mode=0o700)
        write_yaml(os.path.join(data_dir, PROVIDERS_FILE), shape_providers(HEADLINE))
        daemons.append(Daemon(daemon_bin, data_dir, "tcp://127.0.0.1:%d" % free_port(),
                              os.path.join(tmp, "daemon-%s.log" % tag)))
    d, decoy = daemons
    samples = {}  # (rate, cell) -> [result]

    def cell(rate, kind):
        target, other = (decoy, d) if kind == "decoy" else (d, decoy)
        replicas = 0 if kind == "none" else n_max
        # niced: on this 2-core machine the helper's own threads (each idle replica wakes every
        # 20 ms) would otherwise take cores from the daemon, a cost of the bench's layout (in
        # production replicas run in other processes, mostly on other machines), not of the
        # daemon's fan-out; the decoy cell measures what is left of it, its CPU is reported.
        holder = subprocess.Popen(
            [os.path.join(tools, REPLICA_TOOL), "--mode", "hold", "--endpoint",
             target.endpoint, "--events", target.events, "--also-write", other.endpoint,
             "--replicas", str(replicas), "--rate", str(rate)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=lambda: os.nice(HOLDER_NICE))
        try:
            line = holder.stdout.readline()
            try:
                ready = json.loads(line)
            except ValueError:
                raise BenchError("bench_replica_daemon hold did not get ready: %s"
                                 % holder.stderr.read().decode().strip()[-300:])
            time.sleep(0.2)  # the replicas' first heartbeats and the writer's first writes
            # The daemon's CPU without requests: heartbeats and, with writes, the commits and
            # the fan-out of their events to every subscriber; what the replicas cost the
            # daemon itself, apart from the cores the helper takes from it.
            i0, it0 = proc_cpu(d.pid), time.perf_counter()
            time.sleep(cfg["fanout_idle_s"])
            i1, it1 = proc_cpu(d.pid), time.perf_counter()
            idle_ms_per_s = ((i1[0] - i0[0]) / 1e6 / (it1 - it0)
                             if i0[0] is not None and i1[0] is not None else None)
            c0, h0, t0 = proc_cpu(d.pid), proc_cpu(holder.pid), time.perf_counter()
            res = client.run(d.endpoint, 1, cfg["requests_1"], cfg["warmup"],
                             op="get_api_for_model_string", args=op_args,
                             label="F %s %d writes/s" % (kind, rate))
            c1, h1, t1 = proc_cpu(d.pid), proc_cpu(holder.pid), time.perf_counter()
            served = res["requests"] + cfg["warmup"]
            res["cpu_us_per_req"] = ((c1[0] - c0[0]) / 1000.0 / served
                                     if c0[0] is not None else None)
            # the helper's CPU share of one core over the requests' window
            res["holder_cpu_share"] = ((h1[0] - h0[0]) / 1e9 / (t1 - t0)
                                       if h0[0] is not None and h1[0] is not None else None)
            holder.send_signal(signal.SIGTERM)
            out, err = holder.communicate(timeout=60)
            if holder.returncode != 0:
                raise BenchError("bench_replica_daemon hold failed: %s"
                                 % err.decode().strip()[-300:])
            res["holder"] = json.loads(out)
            res["holder_ready"] = ready
            res["idle_cpu_ms_per_s"] = idle_ms_per_s
            return res
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
            holder.stdout.close()
            holder.stderr.close()

    kinds = ["none", "decoy", "on"]
    load0 = _load()
    try:
        for x in daemons:
            x.start(zctx)
        for r in range(cfg["rounds_fan"]):
            for rate in (0, cfg["fanout_write_rate"]):
                for kind in (kinds if r % 2 == 0 else list(reversed(kinds))):
                    samples.setdefault((rate, kind), []).append(cell(rate, kind))
                    log(".")
    finally:
        for x in daemons:
            x.stop()
    log("\n")
    load1 = _load()

    def paired(a, b, key):
        return [x[key] / y[key] for x, y in zip(a, b) if x[key] and y[key]]

    rows, out, targets = [], [], []
    labels = {"none": "0", "decoy": "0 (%d on a 2nd daemon)" % n_max, "on": str(n_max)}
    for rate in (0, cfg["fanout_write_rate"]):
        runs = {k: samples[(rate, k)] for k in kinds}
        e = {"write_rate": rate, "replicas": n_max, "cells": runs}
        for base in ("decoy", "none"):
            e["ratios_vs_" + base] = paired(runs["on"], runs[base], "p50_us")
            e["ratio_vs_" + base] = median(e["ratios_vs_" + base])
            e["cpu_ratios_vs_" + base] = paired(runs["on"], runs[base], "cpu_us_per_req")
            e["cpu_ratio_vs_" + base] = median(e["cpu_ratios_vs_" + base])
        for k in kinds:
            xs = runs[k]
            rows.append([str(rate), labels[k], fmt_us(median([x["p50_us"] for x in xs])),
                         fmt_us(median([x["p99_us"] for x in xs])),
                         fmt_int(median([x["rps"] for x in xs])),
                         fmt_us(median([x["cpu_us_per_req"] for x in xs])),
                         "%.1f" % (median([x["idle_cpu_ms_per_s"] for x in xs]) or 0),
                         "%.0f%%" % (100 * (median([x["holder_cpu_share"] for x in xs]) or 0)),
                         fmt_int(median([x["holder"]["events_applied"] for x in xs])),
                         "%d/%d" % (min(x["holder"]["caught_up"] for x in xs),
                                    0 if k == "none" else n_max),
                         "" if k != "on" else "%s [%s]" % (fmt_ratio(e["ratio_vs_decoy"]),
                                                          fmt_spread(e["ratios_vs_decoy"])),
                         "" if k != "on" else "%s [%s]" % (fmt_ratio(e["ratio_vs_none"]),
                                                          fmt_spread(e["ratios_vs_none"])),
                         "" if k != "on" else "%s / %s" % (fmt_ratio(e["cpu_ratio_vs_decoy"]),
                                                          fmt_ratio(e["cpu_ratio_vs_none"]))])
        out.append(e)
        targets.append({"name": "request p50, %d replicas / none (decoy), %d writes/s"
                                % (n_max, rate), "value": e["ratio_vs_decoy"], "unit": "x",
                        "target": "<= 1.1", "pass": e["ratio_vs_decoy"] is not None and
                        e["ratio_vs_decoy"] <= 1.1})
    print_table("F. Fan-out: get_api_for_model_string(%r) from 1 client over tcp, with 0 and "
                "%d replicas subscribed\n  (one helper process; %d rounds, order alternating, "
                "medians; ratios of paired rounds [min-max]; load %.2f-%.2f)"
                % (HEADLINE["model_string"], n_max, cfg["rounds_fan"], load0, load1),
                ["writes/s", "replicas", "p50 us", "p99 us", "req/s", "daemon cpu us/req",
                 "daemon cpu ms/s idle", "helper cpu", "events applied", "caught up",
                 "p50 / decoy (<= 1.1)", "p50 / none", "cpu/req / decoy / none"], rows)
    print("  0 (%d on a 2nd daemon): the helper holds its replicas on another daemon (same "
          "registry and writes): same load\n  on the machine, no subscriber on the measured "
          "one; that pairing is the target's. daemon cpu idle: its CPU\n  time per second "
          "over %.1f s without requests, before them (heartbeats, commits, fan-out); helper "
          "cpu: the\n  replicas' process (nice %d), share of one core during the requests; "
          "events applied: by all its replicas\n  together during the cell; caught up: "
          "replicas at their daemon's last state_version when the cell ended."
          % (n_max, cfg["fanout_idle_s"], HOLDER_NICE))
    print_targets("F targets", targets)
    return {"cells": out, "load": [load0, load1]}, targets


# ----------------------------------------------------------------------------- tables J, V, D
# Model status (issue 11): J = persisting status changes vs the providers file (bench_status),
# V = a verification job's wall time vs its ideal (bench_discovery --verify), D = read latency
# of the daemon while a verify_models job runs. Kept apart from the request-path tables.

VERIFY_PROVIDERS = 10  # providers on the fake upstream, each verified
VERIFY_MODELS = 100  # models per verified provider
VERIFY_LATENCY_MS = 50  # every answer of the fake
VERIFY_FAKE_KEY = "good-key"  # the bearer key tests/fake_upstream.py accepts by default
VERIFY_PAD_PROVIDERS = 90  # keyless providers that make up the registry size (never verified)
VERIFY_READ = {  # table D: registry sizes (models in all), rounds, seconds of reads per sample
    "full": {"sizes": [1000, 100000], "rounds": 9, "seconds": 1.0, "providers": VERIFY_PROVIDERS,
             "models": VERIFY_MODELS, "latency_ms": VERIFY_LATENCY_MS},
    "quick": {"sizes": [16], "rounds": 1, "seconds": 0.2, "providers": 2, "models": 8,
              "latency_ms": 10},
}
VERIFY_JOB_TIMEOUT_S = 120.0


def _mp_pack(obj):
    """msgpack of None / bool / int / str / list / dict (what requests with non-string args,
    such as verify_models' include_invalid, need; _pack_request only packs strings)."""
    if obj is None:
        return b"\xc0"
    if obj is True:
        return b"\xc3"
    if obj is False:
        return b"\xc2"
    if isinstance(obj, int):
        if 0 <= obj < 128:
            return bytes([obj])
        return b"\xd3" + struct.pack(">q", obj)
    if isinstance(obj, str):
        b = obj.encode()
        if len(b) < 32:
            return bytes([0xa0 | len(b)]) + b
        return b"\xdb" + struct.pack(">I", len(b)) + b
    if isinstance(obj, (list, tuple)):
        return b"\xdd" + struct.pack(">I", len(obj)) + b"".join(_mp_pack(x) for x in obj)
    if isinstance(obj, dict):
        return (b"\xdf" + struct.pack(">I", len(obj)) +
                b"".join(_mp_pack(k) + _mp_pack(v) for k, v in obj.items()))
    raise TypeError("cannot pack %r" % type(obj))


def _mp_unpack(data):
    """A small msgpack decoder for the daemon's replies (python3-msgpack is not a build
    dependency). Extension types decode as None; str keys and values as str."""

    def item(i):
        t = data[i]
        i += 1
        if t <= 0x7f:
            return t, i
        if t >= 0xe0:
            return t - 0x100, i
        if 0x80 <= t <= 0x8f:
            return container(i, t & 0x0f, True)
        if 0x90 <= t <= 0x9f:
            return container(i, t & 0x0f, False)
        if 0xa0 <= t <= 0xbf:
            n = t & 0x1f
            return data[i:i + n].decode("utf-8", "replace"), i + n
        if t == 0xc0:
            return None, i
        if t in (0xc2, 0xc3):
            return t == 0xc3, i
        fixed = {0xca: ">f", 0xcb: ">d", 0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q",
                 0xd0: ">b", 0xd1: ">h", 0xd2: ">i", 0xd3: ">q"}
        if t in fixed:
            size = struct.calcsize(fixed[t])
            return struct.unpack(fixed[t], data[i:i + size])[0], i + size
        lengths = {0xc4: ">B", 0xc5: ">H", 0xc6: ">I", 0xd9: ">B", 0xda: ">H", 0xdb: ">I",
                   0xdc: ">H", 0xdd: ">I", 0xde: ">H", 0xdf: ">I"}
        if t in lengths:
            size = struct.calcsize(lengths[t])
            n = struct.unpack(lengths[t], data[i:i + size])[0]
            i += size
            if t in (0xc4, 0xc5, 0xc6):
                return bytes(data[i:i + n]), i + n
            if t in (0xd9, 0xda, 0xdb):
                return data[i:i + n].decode("utf-8", "replace"), i + n
            return container(i, n, t in (0xde, 0xdf))
        ext = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
        if t in ext:
            return None, i + 1 + ext[t]
        if t in (0xc7, 0xc8, 0xc9):
            size = {0xc7: 1, 0xc8: 2, 0xc9: 4}[t]
            n = int.from_bytes(data[i:i + size], "big")
            return None, i + size + 1 + n
        raise ValueError("msgpack: unknown type byte 0x%02x" % t)

    def container(i, n, is_map):
        if is_map:
            out = {}
            for _ in range(n):
                k, i = item(i)
                v, i = item(i)
                out[k if not isinstance(k, (list, dict)) else repr(k)] = v
            return out, i
        out = []
        for _ in range(n):
            v, i = item(i)
            out.append(v)
        return out, i

    value, _ = item(0)
    return value


def _call(zctx, endpoint, op, args=None, timeout_s=10.0):
    """One request on a fresh REQ socket; the decoded reply map."""
    req = zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(endpoint)
        req.send(_mp_pack({"op": op, "args": args or {}}))
        if not req.poll(int(timeout_s * 1000)):
            raise BenchError("%s: no reply within %g s" % (op, timeout_s))
        reply = _mp_unpack(req.recv())
    finally:
        req.close()
    if not isinstance(reply, dict):
        raise BenchError("%s: reply is not a map" % op)
    return reply


class FakeUpstream:
    """tests/fake_upstream.py on a free port: scenarios s0..s(n-1), `models` models each,
    every answer after latency_ms. It exits when its stdin closes, also if we die."""

    def __init__(self, providers, models, latency_ms, log_path):
        script = os.path.join(os.path.dirname(SOURCE_DIR), "fake_upstream.py")
        config = {"scenarios": {"s%d" % p: {"model_count": models, "latency_ms": latency_ms}
                                for p in range(providers)}}
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(["/usr/bin/python3", script, "--exit-on-eof",
                                      "--config-json", json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=clean_env())
        line = self.proc.stdout.readline()
        try:
            self.port = int(line)
        except ValueError:
            self.stop()
            raise BenchError("tests/fake_upstream.py did not start (log %s)" % log_path)
        self.origin = "http://127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


def _run_json_tool(cmd, what):
    """Runs a bench tool that prints one JSON object; (exit status, stdout, parsed or None)."""
    env = dict(os.environ)
    env.setdefault("PM_SOURCE_DIR", os.path.dirname(os.path.dirname(SOURCE_DIR)))
    env.setdefault("PM_PYTHON", "/usr/bin/python3")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=900, env=env)
    text = proc.stdout.decode(errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if proc.returncode != 0:
        raise BenchError("%s failed (exit %d): %s" % (what, proc.returncode,
                                                      proc.stderr.decode().strip()[-500:]))
    return proc.returncode, text, parsed


def _spread(m):
    return "%s (%s-%s)" % (fmt_ms3(m["median"]), fmt_ms3(m["min"]), fmt_ms3(m["max"]))


def fmt_ms3(v):
    return "-" if v is None else ("%.2f" % v if v < 100 else "%.0f" % v)


def bench_status_persist(cfg, tools, quick, log):
    """Table J: bench_status (in process): a batch of 1,000 changed status records appended to
    the journal vs one providers-file persist, 100,000 models over 100 providers; the
    journal's load and compaction at that size."""
    binary = os.path.join(tools, "bench_status")
    if not os.access(binary, os.X_OK):
        print("\nJ. Status journal: bench_status not built; skipped.")
        return {"skipped": True}
    log("J: status journal ")
    _, text, res = _run_json_tool([binary] + (["--quick"] if quick else []), "bench_status")
    log(".\n")
    if not isinstance(res, dict) or "ratio" not in res:
        raise BenchError("bench_status printed no result: %s" % text[-300:])
    target = res.get("target_ratio", 0.05)
    ratio = res["ratio"]["median"]
    targets = [{"name": "status batch of %s / providers-file persist, %s models"
                        % (fmt_int(res["batch_records"]), fmt_int(res["models"])),
                "value": ratio * 100, "unit": "%", "target": "< %g%%" % (target * 100),
                "pass": ratio < target}]
    print_table("J. Status journal vs providers file, in process (bench_status, %d rounds side "
                "by side: median (min-max) ms)" % res["rounds"],
                ["models", "provs", "batch", "batch ms", "of which append", "persist ms",
                 "batch/persist", "batch B", "yaml B"],
                [[fmt_int(res["models"]), str(res["providers"]), fmt_int(res["batch_records"]),
                  _spread(res["batch_ms"]), fmt_ms3(res["append_ms"]["median"]),
                  _spread(res["persist_ms"]),
                  "%.1f%% (%.1f-%.1f%%)" % (ratio * 100, res["ratio"]["min"] * 100,
                                            res["ratio"]["max"] * 100),
                  fmt_bytes(res["batch_bytes"]), fmt_bytes(res["yaml_bytes"])]])
    print_table("J2. Status journal at %s records (%d rounds: median (min-max) ms)"
                % (fmt_int(res["models"]), res["rounds"]),
                ["load (replay) ms", "compaction ms", "snapshot B", "probes ms (in memory)",
                 "append cpu ms", "of which crc32", "fdatasync floor ms"],
                [[_spread(res["load_ms"]), _spread(res["compact_ms"]),
                  fmt_bytes(res["snapshot_bytes"]), _spread(res["probe_ms"]),
                  _spread(res["append_cpu_ms"]), fmt_ms3(res["crc_ms"]["median"]),
                  _spread(res["fsync_floor_ms"])]])
    print("  batch = model_status_take_dirty + status_store_append (one write + fdatasync) of "
          "one provider's %s\n  changed records (valid -> failing); persist = store_persist of "
          "the providers YAML (emit, fsync,\n  rename, dir fsync), same directory; load = "
          "status_store_open replaying the compacted journal\n  into an empty table; append "
          "cpu = the append's thread CPU time (encoding, CRC-32, syscalls); fdatasync\n  floor "
          "= as many bytes written + fdatasync'ed to a scratch file in the same directory."
          % fmt_int(res["batch_records"]))
    print_targets("J targets", targets)
    return {"result": res, "targets": targets}


def bench_verify(cfg, tools, quick, log):
    """Table V: bench_discovery --verify, a verification job's wall time vs its ideal."""
    binary = os.path.join(tools, "bench_discovery")
    if not os.access(binary, os.X_OK):
        print("\nV. Verification: bench_discovery not built; skipped.")
        return {"skipped": True}
    log("V: verification ")
    _, text, res = _run_json_tool([binary, "--verify"] + (["--quick"] if quick else []),
                                  "bench_discovery --verify")
    log(".\n")
    if not isinstance(res, dict) or "wall_s" not in res:
        raise BenchError("bench_discovery --verify printed no result: %s" % text[-300:])
    target = res.get("target_ratio", 1.1)
    targets = [{"name": "verification wall / ideal", "value": res["ratio"], "unit": "x",
                "target": "<= %g" % target, "pass": res["ratio"] <= target}]
    walls = res.get("rounds", [])
    print_table("V. Verification: one verify job over %s providers x %s models, every upstream "
                "answer after %s ms, per_provider_limit %s, %s workers (%d rounds, median)"
                % (res["providers"], res["models_per_provider"], res["latency_ms"],
                   res["per_provider_limit"], res["workers"], len(walls)),
                ["wall s", "min-max s", "ideal s", "ratio", "target", "verdict", "probes ok",
                 "max inflight/provider", "jobs ok", "cpu s/round fake/bench", "load"],
                [["%.3f" % res["wall_s"],
                  "%.3f-%.3f" % (min(walls), max(walls)) if walls else "-",
                  "%.3f" % res["ideal_s"], fmt_ratio(res["ratio"]), "<= %g" % target,
                  verdict(targets[0]["pass"]),
                  "%s/%s" % (res.get("probes_ok"), res.get("probes_expected")),
                  str(res.get("max_inflight_per_provider", "-")),
                  str(res.get("jobs_succeeded", "-")),
                  "%.2f / %.2f" % (res.get("fake_cpu_s_per_round", -1),
                                   res.get("bench_cpu_s_per_round", -1)),
                  "%.2f" % res.get("loadavg_1min_at_start", -1)]])
    print("  ideal = (1 list + %s/%s probe rounds) x %s ms; the real coordinator and workers in "
          "process, the observer\n  naming each provider's valid_models as targets; cpu = "
          "CPU seconds per round of the fake upstream\n  (one Python process) and of the "
          "coordinator + workers; load = 1-minute load average at the start."
          % (res["models_per_provider"], res["per_provider_limit"], res["latency_ms"]))
    print_targets("V targets", targets)
    return {"result": res, "targets": targets}


def _verify_registry(origin, total, providers, models):
    """The verified providers (keys vp-NN on the fake, key good-key, the fake's models as
    valid_models), then keyless providers pad-NNN that bring the registry to `total` models:
    verification skips them, but every status sync and persist walks them."""
    regs = []
    for p in range(providers):
        names = [("model-%03d" % m, "vp%dm%d" % (p, m)) for m in range(models)]
        regs.append(("vp-%02d" % p, "Verified provider %02d" % p, "%s/s%d/v1" % (origin, p),
                     VERIFY_FAKE_KEY, names))
    pad = total - providers * models
    if pad > 0:
        per = pad // VERIFY_PAD_PROVIDERS
        for p in range(VERIFY_PAD_PROVIDERS):
            count = per + (pad - per * VERIFY_PAD_PROVIDERS if p == VERIFY_PAD_PROVIDERS - 1
                           else 0)
            names = [("pad-p%03d-model-%06d-instruct" % (p, m), "pad%dm%d" % (p, m))
                     for m in range(count)]
            regs.append(("pad-%03d" % p, "Padding provider %03d" % p, BENCH_URL, None, names))
    return regs


def _verified_ok(result):
    """Models of the verified providers (vp-NN) that answered, per job_status."""
    providers = result.get("providers") or {}
    return sum(p.get("ok") or 0 for k, p in providers.items()
               if isinstance(k, str) and k.startswith("vp-") and isinstance(p, dict))


def _wait_job(zctx, endpoint, job, deadline_s=VERIFY_JOB_TIMEOUT_S):
    """Polls job_status until done; (result map, seconds waited)."""
    t0 = time.perf_counter()
    while True:
        reply = _call(zctx, endpoint, "job_status", {"job": job})
        if not reply.get("ok"):
            raise BenchError("job_status %s: %s" % (job, reply.get("error")))
        result = reply.get("result") or {}
        if result.get("state") == "done":
            return result, time.perf_counter() - t0
        if time.perf_counter() - t0 > deadline_s:
            raise BenchError("verify job %s not done within %g s" % (job, deadline_s))
        time.sleep(0.01)


def bench_read_during_verify(cfg, tools, daemon_bin, tmp, zctx, client, quick, log):
    """Table D: get_api_for_model_string p50 of one client, idle vs while a verify_models job
    over every provider runs (the fake upstream answering every request after 50 ms), in
    alternating order within each round; for a registry of only the verified providers and
    one padded to 100,000 models. Target: p50 during / idle <= 1.1 (median of the rounds'
    ratios). Skipped, not failed, when the daemon does not know verify_models yet."""
    vr = VERIFY_READ["quick" if quick else "full"]
    log("D: reads during verification ")
    fake = FakeUpstream(vr["providers"], vr["models"], vr["latency_ms"],
                        os.path.join(tmp, "fake-r.log"))
    daemons = {}
    read_model = "vp-%02d/model-%03d" % (vr["providers"] - 1, vr["models"] - 1)
    read_args = {"model_string": read_model}
    samples = {size: {"idle": [], "verify": [], "jobs": []} for size in vr["sizes"]}
    expected_ok = vr["providers"] * vr["models"]  # every verified model answers every job
    try:
        for size in vr["sizes"]:
            data_dir = os.path.join(tmp, "r-%d" % size)
            os.makedirs(data_dir, mode=0o700)
            write_yaml(os.path.join(data_dir, PROVIDERS_FILE),
                       _verify_registry(fake.origin, size, vr["providers"], vr["models"]))
            d = Daemon(daemon_bin, data_dir, "ipc://%s/r-%d.sock" % (tmp, size),
                       os.path.join(tmp, "daemon-r.log"))
            daemons[size] = d
            d.start(zctx)
            health = _call(zctx, d.endpoint, "health").get("result") or {}
            if health.get("models") != size:
                raise BenchError("daemon loaded %s models, expected %d"
                                 % (health.get("models"), size))
            # A first, unmeasured job: tells whether the daemon knows verify_models, and
            # creates every status record, as on a daemon that has been running for a while.
            reply = _call(zctx, d.endpoint, "verify_models")
            if not reply.get("ok"):
                err = reply.get("error") or {}
                print("\nD. Reads during verification: skipped, the daemon answers "
                      "verify_models with %s: %s" % (err.get("code"), err.get("message")))
                log("skipped\n")
                return {"skipped": "verify_models: %s" % err.get("code"), "targets": []}
            result, _ = _wait_job(zctx, d.endpoint, reply["result"]["job"])
            if not result.get("success") or _verified_ok(result) != expected_ok:
                raise BenchError("warm-up verify job failed (%d of %d models ok): %s"
                                 % (_verified_ok(result), expected_ok, result.get("messages")))
        for r in range(vr["rounds"]):
            for size in (vr["sizes"] if r % 2 == 0 else list(reversed(vr["sizes"]))):
                d = daemons[size]
                modes = ["idle", "verify"] if r % 2 == 0 else ["verify", "idle"]
                for mode in modes:
                    job = None
                    if mode == "verify":
                        reply = _call(zctx, d.endpoint, "verify_models")
                        if not reply.get("ok"):
                            raise BenchError("verify_models: %s" % reply.get("error"))
                        job = reply["result"]["job"]
                        started = time.perf_counter()
                    # CPU of the daemon and of the fake over the reads: on a small shared
                    # machine the fake's own work competes with the daemon's front thread.
                    # The fake runs a thread per request, gone by the time schedstat would
                    # be summed: its figure is /proc/<pid>/stat's (10 ms ticks).
                    cpu0 = (proc_cpu(d.pid)[0], proc_cpu(fake.proc.pid)[1])
                    res = client.run(d.endpoint, 1, 1000000, 10, op="get_api_for_model_string",
                                     args=read_args, max_seconds=vr["seconds"],
                                     label="D %d %s" % (size, mode))
                    cpu1 = (proc_cpu(d.pid)[0], proc_cpu(fake.proc.pid)[1])
                    res["daemon_cpu_ms"], res["fake_cpu_ms"] = [
                        (b - a) / 1e6 if a is not None and b is not None else None
                        for a, b in zip(cpu0, cpu1)]
                    samples[size][mode].append(res)
                    if job:
                        reads_end = time.perf_counter() - started
                        first = _call(zctx, d.endpoint, "job_status", {"job": job})
                        running = (first.get("result") or {}).get("state") == "running"
                        result, _ = _wait_job(zctx, d.endpoint, job)
                        samples[size]["jobs"].append({
                            "job": job, "probes_ok": _verified_ok(result),
                            "success": (result.get("success") is True and
                                        _verified_ok(result) == expected_ok),
                            "reads_s": reads_end, "wall_s": time.perf_counter() - started,
                            "running_when_reads_ended": running})
                log(".")
    finally:
        for d in daemons.values():
            d.stop()
        fake.stop()
    log("\n")

    out, rows, targets = [], [], []
    for size in vr["sizes"]:
        s = samples[size]
        ratios = [v["p50_us"] / i["p50_us"] for i, v in zip(s["idle"], s["verify"])
                  if i["p50_us"]]
        ratio = median(ratios)
        jobs = s["jobs"]
        entry = {"models": size, "verified_models": vr["providers"] * vr["models"],
                 "read": read_model,
                 "idle_p50_us": median([x["p50_us"] for x in s["idle"]]),
                 "verify_p50_us": median([x["p50_us"] for x in s["verify"]]),
                 "idle_p99_us": median([x["p99_us"] for x in s["idle"]]),
                 "verify_p99_us": median([x["p99_us"] for x in s["verify"]]),
                 "idle_rps": median([x["rps"] for x in s["idle"]]),
                 "verify_rps": median([x["rps"] for x in s["verify"]]),
                 "ratio": ratio, "ratios": ratios,
                 "ratio_of_medians": (median([x["p50_us"] for x in s["verify"]]) /
                                      median([x["p50_us"] for x in s["idle"]])
                                      if median([x["p50_us"] for x in s["idle"]]) else None),
                 "job_wall_s": median([j["wall_s"] for j in jobs]),
                 "idle_daemon_cpu_ms": median([x["daemon_cpu_ms"] for x in s["idle"]]),
                 "verify_daemon_cpu_ms": median([x["daemon_cpu_ms"] for x in s["verify"]]),
                 "verify_fake_cpu_ms": median([x["fake_cpu_ms"] for x in s["verify"]]),
                 "jobs_succeeded": sum(1 for j in jobs if j["success"]),
                 "overlapped": sum(1 for j in jobs if j["running_when_reads_ended"]),
                 "jobs": jobs, "idle": s["idle"], "verify": s["verify"]}
        out.append(entry)
        ok = (ratio is not None and ratio <= 1.1 and entry["jobs_succeeded"] == len(jobs))
        targets.append({"name": "read p50 during verification / idle, %s models" % fmt_int(size),
                        "value": ratio, "unit": "x", "target": "<= 1.1", "pass": ok})
        rows.append([fmt_int(size), fmt_int(entry["verified_models"]),
                     fmt_us(entry["idle_p50_us"]), fmt_us(entry["verify_p50_us"]),
                     fmt_ratio(ratio), fmt_spread_ratio(ratios),
                     fmt_ratio(entry["ratio_of_medians"]),
                     fmt_us(entry["idle_p99_us"]), fmt_us(entry["verify_p99_us"]),
                     "%.2f" % entry["job_wall_s"] if entry["job_wall_s"] else "-",
                     "%s / %s / %s" % (fmt_int(entry["idle_daemon_cpu_ms"]),
                                       fmt_int(entry["verify_daemon_cpu_ms"]),
                                       fmt_int(entry["verify_fake_cpu_ms"])),
                     "%d/%d" % (entry["overlapped"], len(jobs)),
                     "%d/%d" % (entry["jobs_succeeded"], len(jobs))])
    print_table("D. Reads during verification: get_api_for_model_string %s, 1 client, %g s per "
                "sample, idle vs during a verify_models job\n   (%d providers x %d models on the "
                "fake, %d ms per answer; %d rounds, order alternating; medians)"
                % (read_model, vr["seconds"], vr["providers"], vr["models"], vr["latency_ms"],
                   vr["rounds"]),
                ["models", "verified", "idle p50 us", "verify p50 us", "ratio", "ratio min-max",
                 "ratio of medians",
                 "idle p99 us", "verify p99 us", "job s", "cpu ms idle/verify/fake",
                 "overlapped", "jobs ok"], rows)
    print("  ratio = median of the rounds' (p50 during / p50 idle), the target's figure; ratio of "
          "medians = the two p50\n  columns divided; overlapped = rounds whose job was still "
          "running when the reads ended; models beyond\n  the verified ones belong to keyless "
          "providers (skipped by the job). cpu = CPU time over the reads\n  window (%g s): the "
          "daemon's (all threads) idle and during the job, and the fake upstream's during\n"
          "  the job (its work competes for the same cores)." % vr["seconds"])
    print_targets("D targets", targets)
    return {"sizes": out, "targets": targets}


def fmt_spread_ratio(values):
    values = [v for v in values if v is not None]
    return "%.2f-%.2f" % (min(values), max(values)) if values else "-"


# ----------------------------------------------------------------------------- profile


def _scrape_ms(port):
    """Milliseconds of one GET /metrics on a fresh connection (connect to last byte)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200 or b"provider_manager_build_info" not in body:
        raise BenchError("/metrics answered %d" % resp.status)
    return (time.perf_counter() - t0) * 1000.0, len(body)


def bench_metrics(cfg, tools, daemon_bin, tmp, zctx, client, log):
    """Table M: metrics off vs on side by side, and a scrape of a big registry."""
    shape = HEADLINE
    op_args = {"model_string": shape["model_string"]}
    samples = {}
    # A fresh pair of daemons every round: one process can sit a few per cent faster or slower
    # than another for reasons of its own (where its memory and threads landed), a bias that
    # alternating the order within one pair cannot cancel. Across rounds it averages out.
    for r in range(cfg["rounds_m"]):
        daemons = {}
        try:
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                data_dir = os.path.join(tmp, "m-%s-%d" % (mode, r))
                os.makedirs(data_dir, mode=0o700)
                write_yaml(os.path.join(data_dir, PROVIDERS_FILE), shape_providers(shape))
                extra = (["--metrics-endpoint", "127.0.0.1:%d" % free_port()] if mode == "on"
                         else [])
                d = Daemon(daemon_bin, data_dir, "ipc://%s/m-%s-%d.sock" % (tmp, mode, r),
                           os.path.join(tmp, "daemon-m.log"), extra_args=extra)
                daemons[mode] = d
                d.start(zctx)
            for clients in (1, 8):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    d = daemons[mode]
                    reqs = cfg["requests_m1"] if clients == 1 else cfg["requests_m8"]
                    c0 = proc_cpu(d.pid)
                    res = client.run(d.endpoint, clients, reqs, cfg["warmup"],
                                     op="get_api_for_model_string", args=op_args,
                                     label="M metrics %s %d clients" % (mode, clients))
                    c1 = proc_cpu(d.pid)
                    served = res["requests"] + clients * cfg["warmup"]
                    res["cpu_us_per_req"] = ((c1[0] - c0[0]) / 1000.0 / served
                                             if c0[0] is not None else None)
                    samples.setdefault((mode, clients), []).append(res)
                    log(".")
        finally:
            for d in daemons.values():
                d.stop()
    # A scrape of a daemon that holds scrape_models models (100 providers).
    providers, _, _ = growth_registry(cfg["scrape_models"], 100)
    data_dir = os.path.join(tmp, "m-scrape")
    os.makedirs(data_dir, mode=0o700)
    write_yaml(os.path.join(data_dir, PROVIDERS_FILE), providers)
    port = free_port()
    big = Daemon(daemon_bin, data_dir, "ipc://%s/m-scrape.sock" % tmp,
                 os.path.join(tmp, "daemon-m.log"),
                 extra_args=["--metrics-endpoint", "127.0.0.1:%d" % port])
    scrapes, body_bytes = [], 0
    try:
        big.start(zctx)
        # Some traffic first, so that the request families have series to render.
        client.run(big.endpoint, 1, 100, 0, op="health", label="M scrape traffic")
        for _ in range(cfg["scrapes"]):
            ms, body_bytes = _scrape_ms(port)
            scrapes.append(ms)
        log("s")
    finally:
        big.stop()
    log("\n")

    rows, entries, targets = [], [], []
    for clients in (1, 8):
        off, on = samples[("off", clients)], samples[("on", clients)]
        tputs = [n["rps"] / f["rps"] for n, f in zip(on, off) if f["rps"]]
        cpus = [n["cpu_us_per_req"] / f["cpu_us_per_req"] for n, f in zip(on, off)
                if n["cpu_us_per_req"] and f["cpu_us_per_req"]]
        entry = {"clients": clients, "throughput_ratio": median(tputs), "cpu_ratio": median(cpus),
                 "throughput_ratios": tputs, "cpu_ratios": cpus}
        for mode, runs in (("off", off), ("on", on)):
            entry[mode] = {"rps": median([x["rps"] for x in runs]),
                           "p50_us": median([x["p50_us"] for x in runs]),
                           "cpu_us_per_req": median([x["cpu_us_per_req"] for x in runs])}
            rows.append(["%d" % clients, mode, fmt_int(entry[mode]["rps"]),
                         fmt_us(entry[mode]["p50_us"]), fmt_us(entry[mode]["cpu_us_per_req"]),
                         fmt_ratio(entry["throughput_ratio"]) if mode == "on" else "",
                         fmt_ratio(entry["cpu_ratio"]) if mode == "on" else ""])
        entries.append(entry)
        targets.append({"name": "metrics on/off throughput, %d client(s)" % clients,
                        "value": entry["throughput_ratio"], "unit": "x", "target": ">= 0.98",
                        "pass": entry["throughput_ratio"] is not None
                        and entry["throughput_ratio"] >= 0.98})
        targets.append({"name": "metrics on/off CPU/request, %d client(s)" % clients,
                        "value": entry["cpu_ratio"], "unit": "x", "target": "<= 1.02",
                        "pass": entry["cpu_ratio"] is not None and entry["cpu_ratio"] <= 1.02})
    print_table("M. Metrics off vs on, side by side (%s shape, ipc; medians of %d rounds, "
                "a fresh pair of daemons each round)"
                % (shape["name"], cfg["rounds_m"]),
                ["clients", "metrics", "req/s", "p50 us", "CPU us/req", "tput on/off",
                 "CPU on/off"], rows)
    scrape = {"models": cfg["scrape_models"], "scrapes": len(scrapes),
              "median_ms": median(scrapes), "max_ms": max(scrapes) if scrapes else None,
              "body_bytes": body_bytes}
    print("  /metrics scrape of a %s-model registry: median %.2f ms, max %.2f ms, %s bytes"
          % (fmt_int(scrape["models"]), scrape["median_ms"], scrape["max_ms"], body_bytes))
    targets.append({"name": "scrape of %s models (median)" % fmt_int(scrape["models"]),
                    "value": scrape["median_ms"] / 1000.0, "unit": "s", "target": "< 0.050 s",
                    "pass": scrape["median_ms"] < 50})
    # The same question without the scheduler's noise: what counting adds to one request, in
    # process (bench_metrics), against the CPU a request costs with metrics off.
    counting = None
    tool = os.path.join(tools, "bench_metrics")
    if os.access(tool, os.X_OK):
        run = subprocess.run([tool, str(cfg["requests_m1"] * 100)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        if run.returncode != 0:
            raise BenchError("bench_metrics failed: %s" % run.stderr.decode().strip())
        counting = json.loads(run.stdout)
        cpu_off = median([e["off"]["cpu_us_per_req"] for e in entries])
        counting["share_of_cpu_per_request"] = (counting["ns_per_request"] / 1000.0 / cpu_off
                                                if cpu_off else None)
        share = counting["share_of_cpu_per_request"]
        print("  counting per request, in process: %.0f ns (error reply %.0f ns) = %s of the "
              "%.1f us of CPU a request costs with metrics off"
              % (counting["ns_per_request"], counting["ns_per_error_reply"],
                 "-" if share is None else "%.2f%%" % (share * 100), cpu_off or 0))
        targets.append({"name": "counting cost / CPU per request (in process)",
                        "value": None if share is None else share * 100, "unit": "%",
                        "target": "<= 2 %", "pass": share is not None and share <= 0.02})
    print_targets("M targets", targets)
    return {"side_by_side": entries, "scrape": scrape, "counting": counting}, targets


def profile_request_path(cfg, tools, daemon_bin, tmp, zctx, client, out_dir, log):
    """perf record (software cpu-clock: hardware counters are often missing in VMs) of the
    daemon while one client sends get_api_for_model_string over tcp, as in table A. Prints
    where the daemon's CPU goes by thread, by shared object, and the project's own symbols;
    keeps perf.data in out_dir."""
    perf = shutil.which("perf")
    if not perf:
        print("\nprofile: perf not found; try valgrind --tool=callgrind on the daemon instead")
        return {"skipped": "perf not found"}
    data_dir = os.path.join(tmp, "profile")
    os.makedirs(data_dir, mode=0o700)
    write_yaml(os.path.join(data_dir, PROVIDERS_FILE), shape_providers(HEADLINE))
    ep = "tcp://127.0.0.1:%d" % free_port()
    d = Daemon(daemon_bin, data_dir, ep, os.path.join(tmp, "daemon-profile.log"))
    os.makedirs(out_dir, exist_ok=True)
    data = os.path.join(out_dir, "perf-request-path.data")
    seconds = 2.0 if cfg is QUICK else 8.0
    try:
        d.start(zctx)
        rec = subprocess.Popen([perf, "record", "-e", "cpu-clock", "-F", "4999", "-g",
                                "-p", str(d.pid), "-o", data, "--", "sleep", "%g" % (seconds + 1)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        time.sleep(0.3)
        res = client.run(ep, 1, 1000000, cfg["warmup"], op="get_api_for_model_string",
                         args={"model_string": HEADLINE["model_string"]}, max_seconds=seconds,
                         label="profile")
        _, err = rec.communicate(timeout=seconds + 30)
        if rec.returncode != 0:
            print("\nprofile: perf record failed: %s" % err.decode().strip()[-300:])
            return {"skipped": "perf record failed"}
    finally:
        d.stop()
    log("\n")

    def report(*extra, limit="0.5"):
        proc = subprocess.run([perf, "report", "-i", data, "--no-children", "--stdio",
                               "-g", "none", "--percent-limit", limit] + list(extra),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=120)
        return [line.rstrip() for line in proc.stdout.decode(errors="replace").splitlines()
                if "%" in line and not line.startswith("#")]
    by_thread = report("--sort", "comm")
    by_dso = report("--sort", "dso")
    own = report("--sort", "sym", "--dsos", os.path.basename(daemon_bin), limit="0.02")
    print("\nP. Profile: perf record -e cpu-clock of the daemon, 1 client, get_api_for_model_string "
          "over tcp (%s req/s, p50 %s us)" % (fmt_int(res["rps"]), fmt_us(res["p50_us"])))
    for title, lines in (("by thread", by_thread), ("by shared object", by_dso),
                         ("the daemon's own code (share of all its samples)", own[:15])):
        print("  " + title + ":")
        print("\n".join("    " + line.strip() for line in lines) or "    (none)")
    print("  perf.data: %s" % data)
    return {"perf_data": data, "by_thread": by_thread, "by_dso": by_dso, "own_symbols": own,
            "load": res}


# ----------------------------------------------------------------------------- output


def fmt_int(v):
    return "-" if v is None else "{:,}".format(int(round(v)))


def fmt_us(v):
    return "-" if v is None else ("%.1f" % v if v < 1000 else "{:,.0f}".format(v))


def fmt_ms(us):
    return "-" if us is None else ("%.2f" % (us / 1000.0) if us < 100000 else
                                   "{:,.0f}".format(us / 1000.0))


def fmt_bytes(v):
    if v is None:
        return "-"
    if v < 10 * 1024:
        return "%d" % v
    if v < 10 * MIB:
        return "%.0fK" % (v / 1024.0)
    return "%.1fM" % (v / MIB)


def fmt_mib(kib):
    return "-" if kib is None else "%.1f" % (kib / 1024.0)


def fmt_spread(values):
    values = [v for v in values if v is not None]
    return "%.2f-%.2f" % (min(values), max(values)) if values else "-"


def fmt_ratio(v):
    return "-" if v is None else "%.2fx" % v


def verdict(ok):
    return "PASS" if ok else "MISS"


def print_table(title, headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    print("\n" + title)
    print("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print("  " + "  ".join("-" * w for w in widths))
    for r in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
    sys.stdout.flush()


def print_targets(title, targets):
    rows = []
    for t in targets:
        v = t["value"]
        if v is None:
            shown = "-"
        elif t["unit"] == "x":
            shown = "%.2fx" % v
        elif t["unit"] == "s":
            shown = "%.3f s" % v
        elif t["unit"] == "%":
            shown = "%.2f %%" % v
        elif t["unit"] == "MiB":
            shown = "%.1f MiB" % v
        elif t["unit"] == "ms":
            shown = "%.2f ms" % v
        else:
            shown = "%s %s" % (fmt_int(v), t["unit"])
        rows.append([t["name"], shown, t["target"], verdict(t["pass"])])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print("  %s:" % title)
    for r in rows:
        print("    " + r[0].ljust(widths[0]) + "  " + r[1].rjust(widths[1]) + "  " +
              r[2].ljust(widths[2]) + "  " + r[3])
    sys.stdout.flush()


def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(),
            "loadavg_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# ----------------------------------------------------------------------------- table S


def bench_snapshot(cfg, daemon_bin, tmp, zctx, log):
    """Table S: one daemon holding snapshot_models models over 100 providers; the time from
    sending `snapshot` to its last byte received (the reply is not decoded: that is the
    caller's cost, not the service's). The first request packs every ProviderConfig; later
    ones copy the packed bytes the front end keeps per provider version."""
    models, providers = cfg["snapshot_models"], 100
    data_dir = os.path.join(tmp, "s-%d" % models)
    os.makedirs(data_dir, mode=0o700)
    regs, _, _ = growth_registry(models, providers)
    write_yaml(os.path.join(data_dir, PROVIDERS_FILE), regs)
    d = Daemon(daemon_bin, data_dir, "ipc://%s/s.sock" % tmp, os.path.join(tmp, "daemon-s.log"))
    d.start(zctx)
    req = zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(d.endpoint)
    body = _pack_request("snapshot")
    times, size = [], 0
    try:
        for _ in range(1 + cfg["snapshot_rounds"]):
            t0 = time.perf_counter()
            req.send(body)
            if not req.poll(60000, zmq.POLLIN):
                raise BenchError("no snapshot reply within 60 s")
            reply = req.recv()
            times.append(time.perf_counter() - t0)
            size = len(reply)
            # {"ok": true, ...}: fixmap, "ok", true
            if reply[:5] != b"\x82\xa2ok\xc3":
                raise BenchError("snapshot failed: %r" % reply[:200])
            log(".")
    finally:
        req.close()
        d.stop()
    first, rest = times[0], median(times[1:])
    entry = {"models": models, "providers": providers, "reply_bytes": size,
             "first_s": first, "median_s": rest, "all_s": times}
    print_table("S. snapshot (%d models, %d providers, ipc; reply %.1f MiB)"
                % (models, providers, size / MIB),
                ["request", "seconds"],
                [["first (packs every config)", "%.3f" % first],
                 ["median of the next %d" % (len(times) - 1), "%.3f" % rest]])
    targets = [{"name": "snapshot of %s models, first" % fmt_int(models), "value": first,
                "unit": "s", "target": "< 0.3 s", "pass": first < 0.3},
               {"name": "snapshot of %s models, median" % fmt_int(models), "value": rest,
                "unit": "s", "target": "< 0.3 s", "pass": rest < 0.3}]
    print_targets("S targets", targets)
    return entry, targets


# ----------------------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="CMake build directory (default: build)")
    ap.add_argument("--quick", action="store_true", help="tiny counts: a smoke run (< 20 s)")
    ap.add_argument("--out", help="results file (default: <build>/bench/results.json)")
    ap.add_argument("--only", choices=["a", "b", "c", "r", "l", "f", "m", "s", "j", "v", "d"],
                    action="append",
                    help="run only these tables (repeatable; W comes with B)")
    ap.add_argument("--daemon", help="the provider-manager binary to measure (default: the "
                    "build's); e.g. an older build, for a before/after comparison")
    ap.add_argument("--profile", action="store_true",
                    help="also perf-profile the daemon under the 1-client resolution load")
    opts = ap.parse_args()
    # ctest's timeout and Ctrl-C end us with a signal: unwind so that every daemon we started
    # is stopped by its finally block.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    build = os.path.abspath(opts.build)
    tools = os.path.join(build, "tests", "bench")
    daemon_bin = (os.path.abspath(opts.daemon) if opts.daemon
                  else os.path.join(build, "service", "provider-manager"))
    for path in (daemon_bin, os.path.join(tools, "bench_echo"),
                 os.path.join(tools, "bench_client"), os.path.join(tools, "bench_registry"),
                 os.path.join(tools, "bench_replica"), os.path.join(tools, REPLICA_TOOL)):
        if not os.access(path, os.X_OK):
            sys.stderr.write("run.py: %s is missing: run `cmake --build %s --target bench-tools`"
                             "\n" % (path, opts.build))
            return 2
    out_path = opts.out or os.path.join(build, "bench", "results.json")
    cfg = QUICK if opts.quick else FULL
    only = set(opts.only or ["a", "b", "c", "r", "l", "f", "m", "s", "j", "v", "d"])

    def log(text):
        sys.stderr.write(text)
        sys.stderr.flush()

    errors = []
    client = Client(os.path.join(tools, "bench_client"), errors)
    results = {"quick": opts.quick, "config": cfg, "machine": machine_info(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = tempfile.mkdtemp(prefix="pm-bench-")
    zctx = zmq.Context()
    status = 0
    started = time.perf_counter()
    print("provider-manager benchmarks%s: %s, %d cores, load %.2f"
          % (" (--quick: smoke counts, numbers not meaningful)" if opts.quick else "",
             results["machine"].get("cpu", "?"), os.cpu_count() or 0, os.getloadavg()[0]))
    try:
        if "a" in only:
            results["request_path"] = []
            a_targets = []
            for shape in REQUEST_SHAPES:
                log("A: request path, %s shape " % shape["name"])
                entries = bench_request_path(cfg, tools, daemon_bin, tmp, zctx, client, log,
                                             shape)
                results["request_path"] += entries
                if shape is not HEADLINE:
                    continue  # the targets are set on the realistic shape
                for e in entries:
                    cell = "%s %d client(s)" % (e["transport"], e["clients"])
                    a_targets.append({"name": "throughput " + cell,
                                      "value": e["throughput_ratio"], "unit": "x",
                                      "target": ">= 0.95", "pass": e["throughput_pass"]})
                    a_targets.append({"name": "CPU/request " + cell, "value": e["cpu_ratio"],
                                      "unit": "x", "target": "<= 1.1", "pass": e["cpu_pass"]})
                    a_targets.append({"name": "syscalls/request " + cell,
                                      "value": e["syscall_ratio"], "unit": "x",
                                      "target": "<= 1.2", "pass": e["syscall_pass"]})
            print_targets("A targets (service/echo, %s shape)" % HEADLINE["name"], a_targets)
            results["request_path_targets"] = a_targets
        if "b" in only:
            log("B0: in process ")
            results["in_process"], results["in_process_targets"] = bench_in_process(cfg, tools,
                                                                                   log)
            log("B/W: registry growth and writes ")
            growth, b_targets, writes, w_targets = bench_growth(cfg, tools, daemon_bin, tmp,
                                                                zctx, client, log)
            results["growth"] = growth
            results["growth_targets"] = b_targets
            results["writes"] = writes
            results["write_targets"] = w_targets
        if "c" in only:
            results["discovery"] = bench_discovery(cfg, tools, daemon_bin, opts.quick, log)
        if "r" in only:
            log("R: client replica ")
            results["replica"], results["replica_targets"] = bench_replica(tools, opts.quick,
                                                                           log)
            log("R: wire vs replica ")
            results["replica_wire"], results["replica_wire_targets"] = bench_replica_wire(
                cfg, tools, daemon_bin, tmp, zctx, client, log)
        if "l" in only:
            log("L: visibility ")
            results["visibility"], results["visibility_targets"] = bench_visibility(
                cfg, tools, daemon_bin, tmp, zctx, log)
        if "f" in only:
            log("F: fan-out ")
            results["fanout"], results["fanout_targets"] = bench_fanout(
                cfg, tools, daemon_bin, tmp, zctx, client, log)
        if "m" in only:
            log("M: metrics off/on ")
            results["metrics"], results["metrics_targets"] = bench_metrics(
                cfg, tools, daemon_bin, tmp, zctx, client, log)
        if "s" in only:
            log("S: snapshot ")
            results["snapshot"], results["snapshot_targets"] = bench_snapshot(
                cfg, daemon_bin, tmp, zctx, log)


        # Model status (issue 11): tables J, V, D.
        if "j" in only:
            results["status_persist"] = bench_status_persist(cfg, tools, opts.quick, log)
        if "v" in only:
            results["verify"] = bench_verify(cfg, tools, opts.quick, log)
        if "d" in only:
            results["read_during_verify"] = bench_read_during_verify(
                cfg, tools, daemon_bin, tmp, zctx, client, opts.quick, log)
        if opts.profile:
            log("P: profile ")
            results["profile"] = profile_request_path(
                cfg, tools, daemon_bin, tmp, zctx, client,
                os.path.dirname(os.path.abspath(out_path)), log)
    except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
        print("\nrun.py: benchmark failed: %s" % exc)
        results["failure"] = str(exc)
        status = 1
    finally:
        zctx.term()
        shutil.rmtree(tmp, ignore_errors=True)
    if errors:
        print("\nrun.py: requests failed during the benchmark:")
        for e in errors:
            print("  " + e)
        results["request_errors"] = errors
        status = 1
    all_targets = [t for k in ("request_path_targets", "in_process_targets", "growth_targets",
                               "write_targets", "replica_targets", "replica_wire_targets",
                               "visibility_targets", "fanout_targets",
                               "metrics_targets", "snapshot_targets")
                   for t in results.get(k, [])]
    if results.get("discovery", {}).get("target"):
        all_targets.append(results["discovery"]["target"])
    for key in ("status_persist", "verify", "read_during_verify"):
        all_targets += results.get(key, {}).get("targets", [])
    missed = [t["name"] for t in all_targets if not t["pass"]]
    results["missed"] = missed
    results["elapsed_s"] = time.perf_counter() - started
    results["machine"]["loadavg_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=False)
        f.write("\n")
    print("\n%d targets, %d PASS, %d MISS%s; %.0f s; results in %s"
          % (len(all_targets), len(all_targets) - len(missed), len(missed),
             " (--quick: not meaningful)" if opts.quick else "", results["elapsed_s"], out_path))
    return status


if __name__ == "__main__":
    sys.exit(main())
