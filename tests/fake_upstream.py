#!/usr/bin/python3
"""A fake OpenAI-compatible upstream for the discovery tests (Python 3 stdlib only).

Start:  fake_upstream.py [--config FILE | --config-json JSON] [--port N]
It listens on 127.0.0.1 (port 0 = any free port) and prints the port on stdout line 1.
It stops on SIGTERM/SIGINT, or when stdin reaches end of file if --exit-on-eof is given.

One fake serves several providers: the first path segment names a scenario, so a provider's
base_api_url is http://127.0.0.1:PORT/<scenario>/v1 and the fake answers
GET  /<scenario>/v1/models                 the model list ({"object": "list", "data": [...]})
POST /<scenario>/v1/chat/completions       a probe (a chat completion, finish_reason "length")

Config (JSON):
{"idle_timeout_s": S,             optional: close a keep-alive connection idle for S seconds
 "scenarios": {"<name>": {
    "models": ["a", {"id": "b", ...}]  model ids listed (a map is served as the entry), or
    "model_count": N              ids model-000 .. model-(N-1)
    "meta": {"a": {...}}          extra fields of a model's /models entry (merged over the
                                  default {"id", "object": "model", "owned_by": "fake"}), e.g.
                                  OpenAI "created"/"owned_by", OpenRouter-like "context_length",
                                  Groq-like "context_window", "max_completion_tokens", or any
                                  unknown field
    "behaviour": {"a": B}         how probes of model "a" are answered when no rule matches
    "list_behaviour": B           how the model list is answered when no rule matches
    "latency_ms": 0               added to every request of the scenario
    "key": "good-key"             the bearer key expected (null = accept any); else 401
    "rules": [                    first matching rule with uses left answers instead
      {"kind": "list"|"probe"|"any", "model": "x" or ["x", "y"],
       "times": K,                only the first K matching requests (default: always)
       "status": 404, "json": {...} or "body": "text", "headers": {"Retry-After": "1"},
       "hang": true,              never answer (until the client gives up)
       "size": N, "chunked": true a body of N bytes (Content-Length, or chunked)
       "drip_ms": M,              send the body one byte every M ms
       "redirect": "/other/v1/models",   302 to that path
       "delay_ms": D}             extra latency for this answer
    ]}}}
In "json" and "body", the text {key} is replaced by the key the client sent (to check that
the client never repeats it) and {model} by the requested model.

A behaviour B is a name, or a map {"do": name, "retry_after": s, "delay_ms": d}:
    "ok"              200 (the default)
    "not_found"       404 {"error": {"code": "model_not_found", "message": "The model `a` does
                      not exist ..."}} (on the list: 404 "not found")
    "does_not_exist"  400 {"error": {"message": "The model `a` does not exist", ...}}
    "unauthorized"    401 invalid_api_key          "forbidden"  403 permission denied
    "rate_limited"    429 with Retry-After (retry_after, default 1)
    "server_error"    500
    "slow"            answers 200 after delay_ms; without delay_ms it never answers (the
                      client times out; the fake notices the client closing and lets go)
    "close"           closes the connection without an answer
Rules (above) win over behaviours, so every existing config means what it meant.

Control endpoints (they change nothing else and never need a restart):
GET  /_stats   {"connections": n (TCP connections accepted: keep-alive reuse shows here),
                "scenarios": {name: {"requests", "list", "probe": {model: n}, "max_inflight",
                "inflight", "arrivals": {"list" | "probe:<model>": [monotonic seconds]},
                "auth_failures", "user_agents": [...], "last_probe": {...}, "paths": {path: n},
                "connections": n (TCP connections that carried this scenario's requests),
                "answers": {"list" | "probe:<model>": {"<status>" | "close" | "hang": n}}}}}
GET  /_counts  {"scenarios": {name: {"list": n, "probe": {model: n}, "requests": n}}}: the
               per-provider list and per-model probe counters alone
GET  /_config  the current config
POST /_reset   clears the statistics and the rules' use counters; with a body
               {"scenario": name} only that scenario's
POST /_config  replaces the config (same JSON as above) and resets
POST /_scenario {"scenario": name, <field>: value, ...}: changes one scenario at run time
               (creates it when missing) WITHOUT resetting any counter. Each field given
               replaces the scenario's field (null removes it), except:
               "add_models": [...] / "remove_models": [...] edit the model list;
               "set_behaviour": {model: B or null} / "set_meta": {model: {...} or null}
               merge per model.
"""

import argparse
import json
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_KEY = "good-key"
HANG_SECONDS = 120
MAX_REQUEST_BODY = 1 << 20


class State:
    """Config and statistics, shared by the handler threads under one lock."""

    def __init__(self, config):
        self.lock = threading.Lock()
        self.shutdown = threading.Event()
        self.set_config(config)

    def set_config(self, config):
        with self.lock:
            self.config = config if isinstance(config, dict) else {}
            self._reset_locked()

    def reset(self):
        with self.lock:
            self._reset_locked()

    def _reset_locked(self):
        self.stats = {}
        self.rule_uses = {}
        self.inflight = {}
        self.connections = 0

    def reset_scenario(self, name):
        with self.lock:
            self.stats.pop(name, None)
            for key in [k for k in self.rule_uses if k[0] == name]:
                del self.rule_uses[key]

    def connected(self):
        with self.lock:
            self.connections += 1

    def update_scenario(self, change):
        """Applies a /_scenario change under the lock: readers see the old or the new
        scenario, never half of it. Raises ValueError on a malformed change."""
        if not isinstance(change, dict) or not isinstance(change.get("scenario"), str):
            raise ValueError("a /_scenario body needs \"scenario\": name")
        with self.lock:
            scenarios = self.config.setdefault("scenarios", {})
            old = scenarios.get(change["scenario"], {})
            new = json.loads(json.dumps(old))  # deep copy: in-flight answers keep the old one
            for field, value in change.items():
                if field == "scenario":
                    continue
                if field == "add_models":
                    ids = model_ids(new)
                    new.pop("model_count", None)
                    new["models"] = ids + [m for m in value if m not in ids]
                elif field == "remove_models":
                    new.pop("model_count", None)
                    new["models"] = [m for m in model_ids(new)
                                     if _entry_id(m) not in set(value)]
                elif field in ("set_behaviour", "set_meta"):
                    target = new.setdefault(field[4:], {})
                    for model, spec in value.items():
                        if spec is None:
                            target.pop(model, None)
                        else:
                            target[model] = spec
                elif value is None:
                    new.pop(field, None)
                else:
                    new[field] = value
            scenarios[change["scenario"]] = new

    def answered(self, name, kind, model, outcome):
        with self.lock:
            s = self._scenario_stats(name)
            tag = "list" if kind == "list" else "probe:%s" % model
            counts = s["answers"].setdefault(tag, {})
            counts[str(outcome)] = counts.get(str(outcome), 0) + 1

    def scenario(self, name):
        with self.lock:
            return self.config.get("scenarios", {}).get(name)

    def _scenario_stats(self, name):
        s = self.stats.get(name)
        if s is None:
            s = {"requests": 0, "list": 0, "probe": {}, "max_inflight": 0, "inflight": 0,
                 "arrivals": {}, "auth_failures": 0, "user_agents": [], "last_probe": None,
                 "paths": {}, "answers": {}, "connections": 0}
            self.stats[name] = s
        return s

    def begin(self, name, kind, model, path, user_agent, probe_body, new_connection):
        now = time.monotonic()
        with self.lock:
            s = self._scenario_stats(name)
            s["requests"] += 1
            if new_connection:
                s["connections"] += 1
            s["paths"][path] = s["paths"].get(path, 0) + 1
            if kind == "list":
                s["list"] += 1
                tag = "list"
            elif kind == "probe":
                s["probe"][model] = s["probe"].get(model, 0) + 1
                s["last_probe"] = probe_body
                tag = "probe:%s" % model
            else:
                tag = "other"
            s["arrivals"].setdefault(tag, []).append(now)
            if user_agent not in s["user_agents"]:
                s["user_agents"].append(user_agent)
            s["inflight"] += 1
            if s["inflight"] > s["max_inflight"]:
                s["max_inflight"] = s["inflight"]

    def end(self, name):
        with self.lock:
            s = self._scenario_stats(name)
            s["inflight"] -= 1

    def auth_failed(self, name):
        with self.lock:
            self._scenario_stats(name)["auth_failures"] += 1

    def pick_rule(self, name, scenario, kind, model):
        """The first matching rule that still has uses left (and uses one)."""
        with self.lock:
            for index, rule in enumerate(scenario.get("rules", [])):
                rule_kind = rule.get("kind", "any")
                if rule_kind != "any" and rule_kind != kind:
                    continue
                wanted = rule.get("model")
                if wanted is not None:
                    names = wanted if isinstance(wanted, list) else [wanted]
                    if model not in names:
                        continue
                times = rule.get("times")
                used = self.rule_uses.get((name, index), 0)
                if times is not None and used >= times:
                    continue
                self.rule_uses[(name, index)] = used + 1
                return rule
        return None

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps({"connections": self.connections,
                                          "scenarios": self.stats}))

    def counts(self):
        with self.lock:
            return {"scenarios": {name: {"list": s["list"], "probe": dict(s["probe"]),
                                         "requests": s["requests"]}
                                  for name, s in self.stats.items()}}

    def idle_timeout(self):
        with self.lock:
            value = self.config.get("idle_timeout_s")
        return float(value) if isinstance(value, (int, float)) and value > 0 else None

    def config_copy(self):
        with self.lock:
            return json.loads(json.dumps(self.config))


def _entry_id(model):
    return model.get("id") if isinstance(model, dict) else model


def model_ids(scenario):
    """The scenario's model list as configured: ids, or maps served as whole entries."""
    if "models" in scenario:
        return list(scenario["models"])
    count = int(scenario.get("model_count", 0))
    return ["model-%03d" % i for i in range(count)]


def model_entry(scenario, model):
    """One /models entry: the OpenAI shape, with the scenario's metadata for that model."""
    if isinstance(model, dict):
        return model
    entry = {"id": model, "object": "model", "owned_by": "fake"}
    meta = scenario.get("meta", {}).get(model)
    if isinstance(meta, dict):
        entry.update(meta)
    return entry


# Behaviour name -> (status, error payload or None). {model} is filled in when answering.
BEHAVIOURS = {
    "not_found": (404, {"error": {
        "message": "The model `{model}` does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": None, "code": "model_not_found"}}),
    "does_not_exist": (400, {"error": {
        "message": "The model `{model}` does not exist", "type": "invalid_request_error",
        "param": "model", "code": None}}),
    "unauthorized": (401, {"error": {"message": "Invalid API key",
                                     "type": "invalid_request_error",
                                     "code": "invalid_api_key"}}),
    "forbidden": (403, {"error": {"message": "You are not allowed to use this model",
                                  "type": "permission_error", "code": "forbidden"}}),
    "rate_limited": (429, {"error": {"message": "Rate limit reached, retry later",
                                     "type": "rate_limit_error", "code": "rate_limit_exceeded"}}),
    "server_error": (500, {"error": {"message": "The server had an error",
                                     "type": "server_error", "code": None}}),
}
HANG_POLL_SECONDS = 0.1


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY the body would wait
    # for the client's delayed ACK (~40 ms) and every answer would look that much slower.
    disable_nagle_algorithm = True
    server_version = "fake-upstream/1"
    sys_version = ""

    def log_message(self, format, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.server.state.connected()
        # Real servers close a keep-alive connection that stays idle (nginx: 75 s); a client
        # must notice that and reconnect. Off unless the config sets idle_timeout_s.
        idle = self.server.state.idle_timeout()
        if idle:
            self.connection.settimeout(idle)

    # ------------------------------------------------------------------ plumbing
    def _read_body(self):
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        n = int(length)
        if n < 0 or n > MAX_REQUEST_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(n)

    def _release(self):
        """Ends the request's in-flight accounting, once, BEFORE the response goes out: a
        client may send its next request the moment it has this one's answer."""
        name = getattr(self, "_inflight_name", None)
        if name is not None:
            self._inflight_name = None
            self.server.state.end(name)

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self._release()
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _send_json(self, status, obj, headers=None):
        self._send(status, json.dumps(obj).encode(), headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method):
        try:
            body = self._read_body()
            if self.path == "/_stats" and method == "GET":
                self._send_json(200, self.server.state.snapshot())
                return
            if self.path == "/_counts" and method == "GET":
                self._send_json(200, self.server.state.counts())
                return
            if self.path == "/_config" and method == "GET":
                self._send_json(200, self.server.state.config_copy())
                return
            if self.path == "/_reset" and method == "POST":
                request = json.loads(body) if body.strip() else {}
                if isinstance(request, dict) and isinstance(request.get("scenario"), str):
                    self.server.state.reset_scenario(request["scenario"])
                else:
                    self.server.state.reset()
                self._send_json(200, {"ok": True})
                return
            if self.path == "/_scenario" and method == "POST":
                try:
                    self.server.state.update_scenario(json.loads(body or b"{}"))
                except (ValueError, TypeError, AttributeError) as e:
                    self._send_json(400, {"ok": False, "error": str(e)})
                    return
                self._send_json(200, {"ok": True})
                return
            if self.path == "/_config" and method == "POST":
                self.server.state.set_config(json.loads(body or b"{}"))
                self._send_json(200, {"ok": True})
                return
            self._upstream(method, body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ValueError, OSError):
            self.close_connection = True

    # ------------------------------------------------------------------ the fake API
    def _upstream(self, method, body):
        state = self.server.state
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        name = parts[0] if parts else ""
        scenario = state.scenario(name)
        if scenario is None:
            self._send_json(404, {"error": {"message": "unknown scenario", "code": "not_found"}})
            return
        if method == "GET" and path.endswith("/models"):
            kind, model, probe = "list", None, None
        elif method == "POST" and path.endswith("/chat/completions"):
            kind = "probe"
            try:
                probe = json.loads(body or b"{}")
            except ValueError:
                probe = {}
            model = probe.get("model") if isinstance(probe, dict) else None
        else:
            kind, model, probe = "other", None, None
        seen = self.__dict__.setdefault("_scenarios_seen", set())
        state.begin(name, kind, model, path, self.headers.get("User-Agent", ""), probe,
                    name not in seen)
        seen.add(name)
        self._inflight_name = name
        try:
            self._answer(state, name, scenario, kind, model)
        finally:
            self._release()

    def _answer(self, state, name, scenario, kind, model):
        latency = scenario.get("latency_ms", 0)
        if latency:
            time.sleep(latency / 1000.0)
        auth = self.headers.get("Authorization", "")
        sent_key = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        expected = scenario.get("key", DEFAULT_KEY)
        if kind == "other":
            self._send_json(404, {"error": {"message": "no such endpoint"}})
            return
        if expected is not None and sent_key != expected:
            state.auth_failed(name)
            self._send_json(401, {"error": {
                "message": "Incorrect API key provided: %s" % sent_key,
                "type": "invalid_request_error", "code": "invalid_api_key"}})
            return
        rule = state.pick_rule(name, scenario, kind, model)
        if rule is None:
            if kind == "list":
                behaviour = scenario.get("list_behaviour")
            else:
                behaviour = scenario.get("behaviour", {}).get(model)
            outcome = self._behave(scenario, kind, model, behaviour)
            state.answered(name, kind, model, outcome)
            return
        if rule.get("delay_ms"):
            time.sleep(rule["delay_ms"] / 1000.0)
        if rule.get("hang"):
            state.shutdown.wait(HANG_SECONDS)
            self.close_connection = True
            return
        if rule.get("redirect"):
            self._send_json(302, {"moved": rule["redirect"]}, {"Location": rule["redirect"]})
            return
        status = int(rule.get("status", 200))
        headers = rule.get("headers", {})
        if "size" in rule:
            self._send_big(status, int(rule["size"]), bool(rule.get("chunked")), headers)
            return
        if "json" in rule:
            text = json.dumps(rule["json"])
        elif "body" in rule:
            text = rule["body"]
        elif 200 <= status < 300:
            text = json.dumps(self._default_payload(scenario, kind, model))
        elif status == 404 and kind == "probe":
            text = json.dumps({"error": {
                "message": "The model `{model}` does not exist or you do not have access to it.",
                "type": "invalid_request_error", "code": "model_not_found"}})
        else:
            text = json.dumps({"error": {"message": "fake error %d" % status,
                                         "type": "fake_error"}})
        text = text.replace("{key}", sent_key).replace("{model}", model or "")
        payload = text.encode()
        if rule.get("drip_ms"):
            self._send_drip(status, payload, rule["drip_ms"], headers)
            return
        self._send(status, payload, headers)

    def _default_payload(self, scenario, kind, model):
        if kind == "list":
            return {"object": "list",
                    "data": [model_entry(scenario, m) for m in model_ids(scenario)]}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "Hello"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def _behave(self, scenario, kind, model, behaviour):
        """Answers by a behaviour (see the module doc); returns what was done ("200", "close",
        "hang", ...) for the answer counters."""
        if isinstance(behaviour, dict):
            spec = behaviour
            name = behaviour.get("do", "ok")
        else:
            spec = {}
            name = behaviour or "ok"
        if name == "close":
            self.close_connection = True
            self._release()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return "close"
        if name == "slow":
            if "delay_ms" not in spec:
                self._hang_until_client_leaves()
                return "hang"
            time.sleep(float(spec["delay_ms"]) / 1000.0)
            name = "ok"
        elif spec.get("delay_ms"):
            time.sleep(float(spec["delay_ms"]) / 1000.0)
        if name == "ok":
            self._send_json(200, self._default_payload(scenario, kind, model))
            return 200
        status, payload = BEHAVIOURS.get(name, (500, {"error": {
            "message": "fake: unknown behaviour %s" % name, "type": "fake_error"}}))
        if kind == "list" and name == "not_found":
            payload = {"error": {"message": "not found", "type": "invalid_request_error"}}
        headers = {}
        if name == "rate_limited":
            headers["Retry-After"] = str(spec.get("retry_after", 1))
        text = json.dumps(payload).replace("{model}", model or "")
        self._send(status, text.encode(), headers)
        return status

    def _hang_until_client_leaves(self):
        """Never answers; returns when the client closes its end (or at shutdown), so that a
        timed-out request does not keep a thread for HANG_SECONDS."""
        self._release()
        self.close_connection = True
        deadline = time.monotonic() + HANG_SECONDS
        while time.monotonic() < deadline and not self.server.state.shutdown.is_set():
            readable, _, _ = select.select([self.connection], [], [], HANG_POLL_SECONDS)
            if readable:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return
                except OSError:
                    return
                time.sleep(HANG_POLL_SECONDS)  # a pipelined byte: keep hanging

    def _send_big(self, status, size, chunked, headers):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for k, v in headers.items():
            self.send_header(k, str(v))
        block = b" " * 65536
        self._release()
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            left = size
            while left > 0:
                piece = block[:min(left, len(block))]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                left -= len(piece)
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(size))
            self.end_headers()
            left = size
            while left > 0:
                piece = block[:min(left, len(block))]
                self.wfile.write(piece)
                left -= len(piece)

    def _send_drip(self, status, payload, drip_ms, headers):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            self.send_header(k, str(v))
        self._release()
        self.end_headers()
        self.wfile.flush()
        for i in range(len(payload)):
            if self.server.state.shutdown.wait(drip_ms / 1000.0):
                break
            self.wfile.write(payload[i:i + 1])
            self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):  # no traceback spam
        pass


def main():
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    parser.add_argument("--config", help="JSON config file")
    parser.add_argument("--config-json", help="JSON config text")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--exit-on-eof", action="store_true",
                        help="stop when stdin reaches end of file")
    args = parser.parse_args()
    config = {}
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            config = json.load(f)
    elif args.config_json:
        config = json.loads(args.config_json)

    server = Server(("127.0.0.1", args.port), Handler)
    server.state = State(config)

    def stop(signum, frame):
        server.state.shutdown.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.exit_on_eof:
        def watch():
            try:
                sys.stdin.read()
            except (OSError, ValueError):
                pass
            stop(None, None)
        threading.Thread(target=watch, daemon=True).start()

    sys.stdout.write("%d\n" % server.server_address[1])
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.state.shutdown.set()
        server.server_close()


if __name__ == "__main__":
    main()
