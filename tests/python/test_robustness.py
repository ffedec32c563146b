"""Black-box robustness tests: malformed requests, wrong argument types, oversized and
multipart messages, a fixed-seed fuzz run, many concurrent clients, SIGTERM under load.

Run: PM_DAEMON=.../provider-manager python3 -m unittest -v test_robustness   (in tests/python)
"""

import random
import signal
import threading
import time
import unittest

import msgpack
import zmq

import pmharness as h
from pmharness import DaemonTestCase

NOT_MSGPACK = "request is not valid msgpack: "

# op -> {argument: kind} for every op that takes arguments (kind: required str, optional str,
# bool, map of strings, array of strings).
ARG_SPECS = {
    "get": {"provider_name": "str"},
    "get_provider_config": {"provider_name": "str"},
    "getitem": {"provider_name": "str"},
    "contains": {"provider_name": "str"},
    "get_api_for_model_string": {"model_string": "str"},
    "validate_model": {"model_string": "str"},
    "get_available_models": {"filter_by_provider": "opt_str"},
    "get_short_name": {"long_name": "str"},
    "find_model": {"name": "str"},
    "discover_models": {"force_refresh": "bool", "persist_on_success": "bool",
                        "provider": "opt_str"},
    "job_status": {"job": "str"},
    "set_provider": {"provider": "str", "name": "str", "base_api_url": "str",
                     "api_key": "str_or_nil", "valid_models": "map",
                     "invalid_models": "array"},
    "remove_provider": {"provider": "str"},
    "set_short_name": {"provider": "str", "long_name": "str", "short_name": "str"},
}

GOOD_ARGS = {
    "get": {"provider_name": "acme"},
    "get_provider_config": {"provider_name": "acme"},
    "getitem": {"provider_name": "acme"},
    "contains": {"provider_name": "acme"},
    "get_api_for_model_string": {"model_string": "acme/bbx-m1"},
    "validate_model": {"model_string": "acme/bbx-m1"},
    "get_available_models": {"filter_by_provider": "acme"},
    "get_short_name": {"long_name": "bbx-m1"},
    "find_model": {"name": "bbx-m1"},
    "discover_models": {"force_refresh": False, "persist_on_success": False,
                        "provider": "acme"},
    "job_status": {"job": "bbx-nosuch-job"},
    "set_provider": {"provider": "acme", "name": "Acme", "base_api_url": "https://a.test/v1",
                     "api_key": "sk-bbx-1", "valid_models": {"bbx-m1": "bbx-s1"},
                     "invalid_models": ["bbx-old"]},
    "remove_provider": {"provider": "acme"},
    "set_short_name": {"provider": "acme", "long_name": "bbx-m1", "short_name": "bbx-s1"},
}

TYPE_WORD = {"str": "string", "opt_str": "string", "str_or_nil": "string", "bool": "boolean",
             "map": "map of strings", "array": "array of strings"}

WRONG_VALUES = {
    "str": [5, True, 1.5, ["a"], {"a": "b"}],  # nil: missing or wrong type? (ambiguous)
    "opt_str": [5, True, ["a"], {"a": "b"}],
    "str_or_nil": [5, False, ["a"], {"a": "b"}],
    "bool": [1, 0, "true", ["x"], {"a": True}],
    "map": [["a"], "a", 5, {"a": 1}, {"a": None}, {"a": ["b"]}, {1: "a"}],
    "array": [{"a": "b"}, "a", 5, [1], ["a", None], [["a"]]],
}


def wrong_type_messages(arg, kind):
    word = TYPE_WORD[kind]
    msgs = {"argument '%s' must be a %s" % (arg, word)}
    if word.startswith("array"):
        # Decision 5 writes "must be a <...|array of strings>"; both articles are accepted
        # because the decision text is ambiguous here (reported).
        msgs.add("argument '%s' must be an %s" % (arg, word))
    return msgs


class BadInputTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.set_provider("acme", valid_models={"bbx-m1": "bbx-s1"})
        self.sv0 = self.state_version()
        self.values0 = self.c.ok("values")

    def tearDown(self):
        # After every bad request the service still answers and nothing changed.
        if self.d.proc is not None and self.d.proc.poll() is None:
            c = self.d.client()
            self.assertEqual(c.ok("health")["status"], "ok")
            self.assertEqual(self.state_version(c), self.sv0)
            self.assertEqual(c.ok("values"), self.values0)
        super().tearDown()

    def raw_error(self, data, code="bad_request", message=None, message_prefix=None, id=h._MISSING):
        rep = self.c.raw(data)
        return self.assert_error(rep, code, message, id=id, message_prefix=message_prefix)

    # ---------------------------------------------------------------- not msgpack / envelope
    def test_garbage_bytes(self):
        for data in (b"\xc1", b"\xc1\xc1\xc1", b"hello world\xff", b"\x81\xa2op",
                     b"\x82\xa2op\xa3get\xa4args"):
            with self.subTest(data=data):
                self.raw_error(data, message_prefix=NOT_MSGPACK)

    def test_empty_frame(self):
        self.raw_error(b"", message_prefix=NOT_MSGPACK)

    def test_trailing_bytes_after_the_map(self):
        self.raw_error(h.request_bytes("health") + b"\x00", message_prefix=NOT_MSGPACK)

    def test_non_map_requests(self):
        for obj in ([1, 2], ["health"], 42, -1, "health", None, True, 1.5, []):
            with self.subTest(obj=obj):
                self.raw_error(h.pack(obj), message="request must be a map")

    def test_map_without_op(self):
        self.raw_error(h.pack({}), message="request has no 'op' string")
        self.raw_error(h.pack({"args": {}}), message="request has no 'op' string")
        self.raw_error(h.pack({"OP": "health"}), message="request has no 'op' string")

    def test_map_without_op_echoes_a_readable_id(self):
        self.raw_error(h.pack({"id": 9, "args": {}}), message="request has no 'op' string",
                       id=9)

    def test_op_not_a_string(self):
        for op in (1, None, True, ["health"], {"a": 1}, b"health"):
            with self.subTest(op=op):
                rep = self.c.raw(h.pack({"op": op}))
                self.assert_error(rep, "bad_request")
                self.assertEqual(rep["error"]["code"], "bad_request")
                if not isinstance(op, bytes):  # a bin may be refused as undecodable
                    self.assertEqual(rep["error"]["message"], "request has no 'op' string")

    def test_unknown_op(self):
        for op in ("frobnicate", "", "GET", "get ", "__getitem__", "ünïcödé"):
            with self.subTest(op=op):
                self.raw_error(h.request_bytes(op, {}, id=1), code="unknown_op",
                               message="Unknown op '%s'" % op, id=1)

    def test_unknown_op_with_a_nul_byte_is_echoed_whole(self):
        # msgpack str may hold NUL; the contract's message is "Unknown op '<op>'" verbatim.
        # (Ambiguous: the contract does not say how control bytes appear in messages.)
        self.raw_error(h.request_bytes("health\x00", {}, id=1), code="unknown_op",
                       message="Unknown op 'health\x00'", id=1)

    def test_unknown_op_long_is_echoed_whole(self):
        # The contract's message is "Unknown op '<op>'"; it sets no bound on the echo.
        op = "x" * 300
        self.raw_error(h.request_bytes(op, {}, id=1), code="unknown_op",
                       message="Unknown op '%s'" % op, id=1)

    def test_args_not_a_map(self):
        for args in ([], ["provider_name", "acme"], "acme", 5, True):
            with self.subTest(args=args):
                self.raw_error(h.request_bytes("get", args, id=2), message="'args' must be a map",
                               id=2)

    # ---------------------------------------------------------------- argument types
    def test_wrong_argument_types_name_the_argument(self):
        for op, spec in ARG_SPECS.items():
            for arg, kind in spec.items():
                for bad in WRONG_VALUES[kind]:
                    with self.subTest(op=op, arg=arg, value=bad):
                        args = dict(GOOD_ARGS[op])
                        args[arg] = bad
                        rep = self.c.call(op, args, id=[op, arg])
                        msg = self.assert_error(rep, "bad_request", id=[op, arg])
                        self.assertIn(msg, wrong_type_messages(arg, kind))

    def test_missing_required_arguments(self):
        for op, spec in ARG_SPECS.items():
            for arg, kind in spec.items():
                if kind != "str":
                    continue
                with self.subTest(op=op, arg=arg):
                    args = dict(GOOD_ARGS[op])
                    del args[arg]
                    self.assert_error(self.c.call(op, args), "bad_request",
                                      "missing required argument '%s'" % arg)
                    if len(spec) == 1:
                        self.assert_error(self.c.call(op), "bad_request",
                                          "missing required argument '%s'" % arg)

    def test_bin_where_a_string_is_expected(self):
        cases = [("get", "provider_name"), ("validate_model", "model_string"),
                 ("set_provider", "name"), ("set_provider", "api_key"),
                 ("set_short_name", "short_name"), ("find_model", "name")]
        for op, arg in cases:
            with self.subTest(op=op, arg=arg):
                args = dict(GOOD_ARGS[op])
                args[arg] = args[arg].encode() if isinstance(args[arg], str) else b"x"
                self.raw_error(h.request_bytes(op, args))
        # bin inside valid_models / invalid_models, and bin as the op
        args = dict(GOOD_ARGS["set_provider"], valid_models={"m": b"s"})
        self.raw_error(h.request_bytes("set_provider", args))
        args = dict(GOOD_ARGS["set_provider"], valid_models={b"m": "s"})
        self.raw_error(h.request_bytes("set_provider", args))
        args = dict(GOOD_ARGS["set_provider"], invalid_models=["a", b"b"])
        self.raw_error(h.request_bytes("set_provider", args))

    def test_invalid_utf8_in_a_string(self):
        bad_strings = [b"\xff", b"ac\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                       b"acme\x80"]
        for bs in bad_strings:
            with self.subTest(value=bs):
                data = h.mp_map([(h.pack("op"), h.pack("get")),
                                 (h.pack("args"), h.mp_map([(h.pack("provider_name"),
                                                             h.mp_raw_str(bs))]))])
                self.raw_error(data)
                data = h.mp_map([(h.pack("op"), h.pack("set_provider")),
                                 (h.pack("args"), h.mp_map([
                                     (h.pack("provider"), h.pack("acme")),
                                     (h.pack("name"), h.mp_raw_str(b"Acme" + bs)),
                                     (h.pack("base_api_url"), h.pack("https://a.test"))]))])
                self.raw_error(data)
                data = h.mp_map([(h.pack("op"), h.mp_raw_str(b"hea" + bs))])
                self.raw_error(data)

    def test_deeply_nested_args(self):
        nested = "x"
        for _ in range(100):
            nested = [nested]
        self.raw_error(h.request_bytes("get", {"provider_name": nested}))
        nested = {"k": "v"}
        for _ in range(100):
            nested = {"k": nested}
        self.raw_error(h.request_bytes("set_provider", dict(GOOD_ARGS["set_provider"],
                                                            valid_models=nested)))
        # 10,000 levels of fixarray: 10 KB that would explode a recursive decoder
        self.raw_error(b"\x82\xa2op\xa3get\xa4args\x81\xadprovider_name" + b"\x91" * 10000
                       + b"\xc0")

    def test_huge_declared_lengths_with_few_bytes(self):
        cases = [
            b"\xdd\xff\xff\xff\xff\x01\x02",  # array32 of 4 G elements
            b"\xdf\xff\xff\xff\xff\xa2op",  # map32 of 4 G pairs
            b"\xdb\xff\xff\xff\xfeabc",  # str32 of 4 GB
            b"\xc6\xff\xff\xff\xf0abc",  # bin32
            b"\x82\xa2op\xa3get\xa4args\x81\xadprovider_name\xdd\x7f\xff\xff\xff\xc0",
            b"\x82\xa2op\xa3get\xa4args\x81\xadprovider_name\xdb\x7f\xff\xff\xffab",
        ]
        for data in cases:
            with self.subTest(data=data[:12]):
                self.raw_error(data, message_prefix=NOT_MSGPACK)

    def test_ext_types_and_other_odd_values(self):
        # ext and timestamp where a string is expected: a wrong type
        self.raw_error(h.request_bytes("get", {"provider_name": msgpack.ExtType(1, b"ab")}))
        self.raw_error(h.request_bytes("get", {"provider_name": msgpack.Timestamp(1, 0)}))

    def test_oversized_request_gets_no_reply_and_service_goes_on(self):
        big = h.request_bytes("contains", {"provider_name": "acme", "pad": "x" * (2 << 20)})
        self.assertGreater(len(big), 2 << 20)
        frames = self.c.send_raw(big, timeout=1.5)
        self.assertIsNone(frames, "a >1 MiB request was answered: %r" % (frames,))
        self.assertEqual(self.c.reopens, 1)  # the Lazy-Pirate client reopened its socket
        self.assertIs(self.c.ok("contains", {"provider_name": "acme"}), True)
        # another client, connected all along, was not disturbed
        other = self.d.client()
        self.assertIs(other.ok("contains", {"provider_name": "acme"}), True)
        # just under the limit is served
        ok = h.request_bytes("contains", {"provider_name": "acme", "pad": "x" * (1000 * 1000)})
        self.assertLess(len(ok), 1 << 20)
        self.assertIs(self.c.raw(ok)["result"], True)

    def test_multipart_request_is_a_bad_request(self):
        good = h.request_bytes("contains", {"provider_name": "acme"}, id=4)
        for extra in ([b"extra"], [b""], [good], [b"a", b"b"]):
            with self.subTest(extra=extra):
                frames = self.c.send_raw([good] + extra)
                self.assertIsNotNone(frames, "no reply to a multipart request")
                self.assertEqual(len(frames), 1, frames)
                rep = h.unpack(frames[0])
                self.assertIs(rep["ok"], False, rep)
                self.assertEqual(rep["error"]["code"], "bad_request", rep)
        # a multipart set_provider must not apply
        setp = h.request_bytes("set_provider", {"provider": "bbx-multi", "name": "M",
                                                "base_api_url": "https://m.test"})
        frames = self.c.send_raw([setp, b"x"])
        self.assertEqual(h.unpack(frames[0])["error"]["code"], "bad_request")
        self.assertIsNone(self.c.ok("get", {"provider_name": "bbx-multi"}))

    def test_dealer_without_delimiter_does_not_kill_the_service(self):
        s = self.d.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.d.endpoint)
        try:
            s.send(h.request_bytes("health"))  # no empty delimiter: not a valid REQ envelope
            s.poll(500, zmq.POLLIN)  # whatever happens, nothing to assert about the reply
        finally:
            s.close(linger=0)


class FuzzTest(DaemonTestCase):

    def test_ten_thousand_garbage_requests(self):
        self.set_provider("acme", valid_models={"bbx-m1": "bbx-s1"})
        sv = self.state_version()
        rng = random.Random(20240607)
        templates = [h.request_bytes("health"), h.request_bytes("get", {"provider_name": "acme"}),
                     h.request_bytes("validate_model", {"model_string": "acme/bbx-m1"}, id=7),
                     h.request_bytes("contains", {"provider_name": "acme"}, id="x")]
        payloads = []
        for i in range(10000):
            r = rng.random()
            if r < 0.5:
                n = rng.choice([0, 1, 2, 3, 5, 8, 16, 64, 256, 1024, 4096])
                n = rng.randint(0, n)
                payloads.append(rng.randbytes(n))
            elif r < 0.8:  # one to four random bytes replaced in a valid read request
                b = bytearray(rng.choice(templates))
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(len(b))] = rng.getrandbits(8)
                payloads.append(bytes(b))
            elif r < 0.9:  # truncated valid request
                t = rng.choice(templates)
                payloads.append(t[:rng.randrange(len(t))])
            else:  # a random prefix byte in front of a valid request
                payloads.append(bytes([rng.getrandbits(8)]) + rng.choice(templates))
        # Pipeline over a DEALER (delimiter + payload), 64 in flight, to stay fast.
        s = self.d.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.d.endpoint)
        answered = 0
        bad = []
        try:
            sent = 0
            while answered < len(payloads):
                while sent < len(payloads) and sent - answered < 64:
                    s.send_multipart([b"", payloads[sent]])
                    sent += 1
                if not s.poll(10000, zmq.POLLIN):
                    self.fail("no reply after %d of %d garbage requests (daemon rc=%r)"
                              % (answered, len(payloads), self.d.proc.poll()))
                frames = s.recv_multipart()
                answered += 1
                if len(frames) != 2 or frames[0] != b"":
                    bad.append(("frames", frames))
                    continue
                try:
                    rep = h.unpack(frames[1])
                except Exception as e:  # noqa: BLE001
                    bad.append(("undecodable reply", e))
                    continue
                if not isinstance(rep, dict) or "ok" not in rep:
                    bad.append(("not an envelope", rep))
                elif rep["ok"] is False and (set(rep["error"]) != {"code", "message"} or
                                             rep["error"]["code"] not in
                                             ("bad_request", "unknown_op", "not_found",
                                              "invalid_model")):
                    bad.append(("odd error", rep))
        finally:
            s.close(linger=0)
        self.assertEqual(bad[:5], [])
        self.assertEqual(answered, 10000)
        self.assertEqual(self.health()["status"], "ok")
        self.assertEqual(self.state_version(), sv)
        self.assertEqual(self.c.ok("validate_model", {"model_string": "bbx-s1"}), "bbx-m1")


class ConcurrencyTest(DaemonTestCase):

    def test_sixteen_clients_mixed_reads_and_writes(self):
        self.set_provider("shared", valid_models={"bbx-shared": "bbx-sh"})
        sv0 = self.state_version()
        n_clients, n_ops = 16, 200
        writes = [0] * n_clients

        def worker(i):
            c = self.d.client(timeout=20.0)
            key = "c%02d" % i
            rng = random.Random(i)
            c.ok("set_provider", {"provider": key, "name": "C%d" % i,
                                  "base_api_url": "https://c%d.test" % i,
                                  "valid_models": {"bbx-m-%d" % i: "bbx-s-%d" % i}})
            writes[i] += 1
            name = "C%d" % i
            short = "bbx-s-%d" % i
            for j in range(n_ops):
                r = rng.random()
                if r < 0.05:
                    name = "C%d-%d" % (i, j)
                    cfg = c.ok("set_provider", {"provider": key, "name": name,
                                                "base_api_url": "https://c%d.test" % i})
                    writes[i] += 1
                    assert cfg["name"] == name and cfg["valid_models"] == {
                        "bbx-m-%d" % i: short}, cfg
                elif r < 0.08:
                    short = "bbx-s-%d-%d" % (i, j)
                    cfg = c.ok("set_short_name", {"provider": key,
                                                  "long_name": "bbx-m-%d" % i,
                                                  "short_name": short})
                    writes[i] += 1
                    assert cfg["valid_models"] == {"bbx-m-%d" % i: short}, cfg
                elif r < 0.3:
                    cfg = c.ok("get", {"provider_name": key})
                    assert cfg["provider"] == key and cfg["name"] == name, (cfg, name)
                    assert cfg["valid_models"] == {"bbx-m-%d" % i: short}, cfg
                elif r < 0.5:
                    got = c.ok("get_api_for_model_string", {"model_string": short})
                    assert got[0]["provider"] == key and got[1] == "bbx-m-%d" % i, got
                    assert c.ok("validate_model", {"model_string": key + "/" + short}) \
                        == "bbx-m-%d" % i
                elif r < 0.6:
                    assert c.ok("validate_model", {"model_string": "bbx-sh"}) == "bbx-shared"
                elif r < 0.7:
                    keys = c.ok("keys")
                    assert key in keys and "shared" in keys, keys
                elif r < 0.8:
                    code, msg = c.err("getitem", {"provider_name": "bbx-no-%d" % i})
                    assert (code, msg) == ("not_found", "Provider 'bbx-no-%d' not found" % i)
                elif r < 0.9:
                    hl = c.ok("health")
                    assert hl["status"] == "ok" and hl["state_version"] >= sv0, hl
                else:
                    rep = c.call("contains", {"provider_name": key}, id=[i, j])
                    assert rep == {"ok": True, "id": [i, j], "result": True}, rep

        errors = h.run_threads(worker, n_clients)
        self.assertEqual(errors, [])
        self.assertEqual(self.state_version(), sv0 + sum(writes))
        keys = self.c.ok("keys")
        self.assertEqual(sorted(k for k in keys if k.startswith("c") and len(k) == 3),
                         ["c%02d" % i for i in range(n_clients)])


class SigtermUnderLoadTest(unittest.TestCase):

    def test_sigterm_while_clients_hammer(self):
        d = h.Daemon()
        self.addCleanup(d.cleanup)
        d.start()
        n = 6
        acked = [-1] * n  # last acknowledged write per writer thread
        inflight = [None] * n
        stop = threading.Event()
        read_count = [0]

        def writer(i):
            c = h.Client(d.ctx, d.endpoint, timeout=1.0)
            try:
                j = 0
                while not stop.is_set():
                    inflight[i] = j
                    frames = c.send_raw(h.request_bytes("set_provider", {
                        "provider": "w%d" % i, "name": "gen-%d" % j,
                        "base_api_url": "https://w.test",
                        "valid_models": {"bbx-m%d" % k: "s%d" % k for k in range(j % 5)}}))
                    if frames is None:
                        return
                    rep = h.unpack(frames[0])
                    if rep.get("ok") is not True:
                        return
                    acked[i] = j
                    j += 1
            finally:
                c.close()

        def reader(i):
            c = h.Client(d.ctx, d.endpoint, timeout=1.0)
            try:
                while not stop.is_set():
                    if c.send_raw(h.request_bytes("values")) is None:
                        return
                    read_count[0] += 1
            finally:
                c.close()

        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(n)]
        threads += [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        self.assertGreater(min(acked), -1, "writers made no progress")
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        try:
            rc = d.proc.wait(timeout=h.STOP_TIMEOUT)
        except Exception:  # noqa: BLE001
            rc = None
        elapsed = time.monotonic() - t0
        stop.set()
        for t in threads:
            t.join(5)
        self.assertIsNotNone(rc, "still running %.1fs after SIGTERM under load" % elapsed)
        self.assertEqual(rc, 0, d.stderr()[-2000:])
        self.assertGreater(read_count[0], 0)
        with open(d.store_path, encoding="utf-8") as f:
            text = f.read()
        self.assertTrue(text.lstrip().startswith("providers:"))
        data = h.read_yaml(d.store_path)
        for i in range(n):
            with self.subTest(writer=i):
                allowed = {acked[i], acked[i] + 1} if inflight[i] != acked[i] else {acked[i]}
                if data is not None:
                    p = data["providers"]["w%d" % i]
                    gen = int(p["name"].split("-")[1])
                    self.assertIn(gen, allowed)
                    self.assertEqual(list((p["valid_models"] or {}).items()),
                                     [("bbx-m%d" % k, "s%d" % k) for k in range(gen % 5)])
                else:
                    self.assertTrue(any("name: gen-%d" % g in text for g in allowed))
        # and the daemon starts again on that file with the same state
        d.start()
        c = d.client()
        for i in range(n):
            name = c.ok("get", {"provider_name": "w%d" % i})["name"]
            self.assertIn(int(name.split("-")[1]), {acked[i], acked[i] + 1})
        rc, _ = d.stop()
        self.assertEqual(rc, 0)


if __name__ == "__main__":
    unittest.main()
