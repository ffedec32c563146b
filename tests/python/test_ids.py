"""The reply id of a request that breaks an encoding rule (issue 13).

The id is echoed whenever the top-level map and its id value are well-formed, also when a bin
or invalid UTF-8 sits somewhere in args (inside valid_models of set_provider, for instance);
only a request whose envelope cannot be read is answered without id. Pipelining DEALER callers
correlate replies by id, so a failed request must still say which one it was.
"""

import unittest

import msgpack
import zmq

import pmharness as h
from pmharness import DaemonTestCase

NOT_MSGPACK = "request is not valid msgpack: "
BAD_UTF8 = b"ac\xc3"  # a truncated two-byte sequence


def enc(obj):
    return h.pack(obj)


def set_provider_bytes(id_bytes, valid_models_bytes=None, name_bytes=None, id_first=False):
    """set_provider with the given (already encoded) id and either valid_models or name
    replaced by raw bytes; id_bytes None: no id key."""
    args = [(enc("provider"), enc("acme")),
            (enc("name"), name_bytes if name_bytes is not None else enc("Acme")),
            (enc("base_api_url"), enc("https://a.test/v1"))]
    if valid_models_bytes is not None:
        args.append((enc("valid_models"), valid_models_bytes))
    pairs = [(enc("op"), enc("set_provider")), (enc("args"), h.mp_map(args))]
    if id_bytes is not None:
        pairs.insert(0 if id_first else 2, (enc("id"), id_bytes))
    return h.mp_map(pairs)


# The broken parts: a bin and invalid UTF-8, inside args directly and inside valid_models.
BROKEN = {
    "bin in args": {"name_bytes": enc(b"Acme")},
    "bad utf-8 in args": {"name_bytes": h.mp_raw_str(BAD_UTF8)},
    "bin value in valid_models": {"valid_models_bytes": h.mp_map([(enc("m"), enc(b"s"))])},
    "bin key in valid_models": {"valid_models_bytes": h.mp_map([(enc(b"m"), enc("s"))])},
    "bad utf-8 value in valid_models": {
        "valid_models_bytes": h.mp_map([(enc("m"), h.mp_raw_str(BAD_UTF8))])},
    "bad utf-8 key in valid_models": {
        "valid_models_bytes": h.mp_map([(h.mp_raw_str(BAD_UTF8), enc("s"))])},
}


class IdEchoTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.sv0 = self.state_version()

    def tearDown(self):
        if self.d.proc is not None and self.d.proc.poll() is None:
            # nothing of a refused request was applied
            self.assertEqual(self.state_version(self.d.client()), self.sv0)
        super().tearDown()

    def bad(self, data, id=h._MISSING):
        return self.assert_error(self.c.raw(data), "bad_request", id=id,
                                 message_prefix=NOT_MSGPACK)

    def test_id_echoed_when_args_break_an_encoding_rule(self):
        for what, broken in BROKEN.items():
            for id_value in (7, 123456789012, "req-1", "", [1, "two"], {"k": "v"}, None):
                for id_first in (False, True):
                    with self.subTest(what=what, id=id_value, id_first=id_first):
                        self.bad(set_provider_bytes(enc(id_value), id_first=id_first, **broken),
                                 id=id_value)

    def test_same_requests_without_id_get_no_id(self):
        for what, broken in BROKEN.items():
            with self.subTest(what=what):
                self.bad(set_provider_bytes(None, **broken))

    def test_first_id_wins(self):
        data = set_provider_bytes(enc(1), **BROKEN["bin value in valid_models"])
        # append a second "id" entry to the top-level map (fixmap count + 1)
        data = bytes([data[0] + 1]) + data[1:] + enc("id") + enc(2)
        self.bad(data, id=1)

    def test_a_broken_id_is_not_echoed(self):
        for what, id_bytes in (("bin id", enc(b"\x01")), ("bad utf-8 id", h.mp_raw_str(BAD_UTF8)),
                               ("array holding a bin", b"\x92\x01\xc4\x01x")):
            for broken in ({}, BROKEN["bin value in valid_models"]):
                with self.subTest(what=what, args_broken=bool(broken)):
                    self.bad(set_provider_bytes(id_bytes, **broken))

    def test_unreadable_envelope_gets_no_id(self):
        good = set_provider_bytes(enc(5), **BROKEN["bin value in valid_models"])
        for what, data in (("truncated", good[:-1]),
                           ("trailing bytes", good + b"\xc0"),
                           ("count larger than the entries", bytes([good[0] + 1]) + good[1:]),
                           ("0xc1 in args", set_provider_bytes(enc(5), name_bytes=b"\xc1"))):
            with self.subTest(what=what):
                self.bad(data)

    def test_pipelined_dealer_correlates_failures_by_id(self):
        s = self.d.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 5000)
        s.connect(self.d.endpoint)
        try:
            sent = {}
            for i in range(12):
                broken = list(BROKEN.values())[i % len(BROKEN)]
                if i % 3 == 2:
                    data = h.request_bytes("health", id=i)
                else:
                    data = set_provider_bytes(enc(i), **broken)
                sent[i] = i % 3 == 2
                s.send_multipart([b"", data])
            seen = {}
            for _ in sent:
                delimiter, body = s.recv_multipart()
                self.assertEqual(delimiter, b"")
                rep = msgpack.unpackb(body, raw=False)
                self.assertIn("id", rep, rep)
                seen[rep["id"]] = rep["ok"]
            self.assertEqual(seen, sent)
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()
