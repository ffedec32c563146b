"""Black-box tests of the provider-manager wire contract v1: envelope, every operation, model
resolution, state_version, events and the persist operation. One fresh daemon per test.

Run: PM_DAEMON=.../provider-manager python3 -m unittest -v test_blackbox   (in tests/python)
"""

import os
import stat
import unittest

import zmq

import pmharness as h
from pmharness import DaemonTestCase

ACME = {"bbx-large-1": "bbx-l", "bbx-small-1": "bbx-s"}
BETA = {"bbx-beta-1": "bbx-b1", "bbx-l": "bbx-beta-l"}  # beta's long "bbx-l" = acme's short
HF = {"meta-llama/Llama-3-8B": "bbx-llama3"}


class FixtureMixin:
    """Three test providers appended after whatever the built-in baseline holds."""

    def make_fixture(self):
        self.acme = self.set_provider("acme", "Acme", "https://api.acme.test/v1",
                                      api_key="sk-bbx-acme-0001", valid_models=ACME)
        self.beta = self.set_provider("beta", "Beta", "http://beta.test:8080/v1",
                                      valid_models=BETA, invalid_models=["bbx-beta-old"])
        self.hf = self.set_provider("hf", "HF", "https://hf.test/v1", valid_models=HF)


# ======================================================================== envelope
class EnvelopeTest(DaemonTestCase):

    def test_ok_reply_without_id_has_exactly_ok_and_result(self):
        rep = self.c.call("health")
        self.assertEqual(list(rep), ["ok", "result"])
        self.assertIs(rep["ok"], True)

    def test_ok_reply_echoes_every_kind_of_id(self):
        ids = [0, 1, -5, 127, 128, 65536, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, "abc", "",
               "ünïcödé", [1, "a", None, [2.5]], {"k": 1, "n": [2, 3]}, {}, [], None, True,
               False, 1.5, 0.1]
        for id_ in ids:
            with self.subTest(id=id_):
                rep = self.c.call("contains", {"provider_name": "openai"}, id=id_)
                self.assertEqual(list(rep), ["ok", "id", "result"], rep)
                self.assertIs(rep["ok"], True)
                self.assertEqual(rep["id"], id_)
                self.assertIs(type(rep["id"]), type(id_))
                self.assertIs(rep["result"], True)

    def test_error_reply_without_id(self):
        rep = self.c.call("getitem", {"provider_name": "bbx-nosuch"})
        self.assert_error(rep, "not_found", "Provider 'bbx-nosuch' not found")

    def test_error_reply_echoes_id(self):
        for id_ in [7, "req-7", [1, 2], {"a": "b"}, None]:
            with self.subTest(id=id_):
                rep = self.c.call("getitem", {"provider_name": "bbx-nosuch"}, id=id_)
                self.assert_error(rep, "not_found", "Provider 'bbx-nosuch' not found", id=id_)
                rep = self.c.call("frobnicate", id=id_)
                self.assert_error(rep, "unknown_op", "Unknown op 'frobnicate'", id=id_)

    def test_args_absent_and_empty_map_are_the_same(self):
        a = self.c.ok("keys")
        b = self.c.ok("keys", {})
        self.assertEqual(a, b)

    def test_unknown_extra_args_and_top_level_keys_are_ignored(self):
        rep = self.c.raw(h.pack({"op": "contains", "args": {"provider_name": "openai",
                                                             "zzz": [1, 2]},
                                 "id": 3, "extra": {"x": 1}, "version": 9}))
        self.assertEqual(list(rep), ["ok", "id", "result"])
        self.assertEqual(rep["id"], 3)
        self.assertIs(rep["result"], True)

    def test_dealer_with_empty_delimiter_works_like_req(self):
        s = self.d.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.d.endpoint)
        try:
            s.send_multipart([b"", h.request_bytes("contains", {"provider_name": "openai"},
                                                    id=41)])
            self.assertTrue(s.poll(5000, zmq.POLLIN), "no reply to DEALER")
            frames = s.recv_multipart()
            self.assertEqual(len(frames), 2, frames)
            self.assertEqual(frames[0], b"")
            rep = h.unpack(frames[1])
            self.assertEqual(rep, {"ok": True, "id": 41, "result": True})
            self.assertEqual(list(rep), ["ok", "id", "result"])
            # Several requests in flight on one DEALER: every one answered, ids match.
            for i in range(20):
                s.send_multipart([b"", h.request_bytes("contains",
                                                        {"provider_name": "openai"}, id=i)])
            seen = set()
            for _ in range(20):
                self.assertTrue(s.poll(5000, zmq.POLLIN))
                f = s.recv_multipart()
                self.assertEqual(f[0], b"")
                r = h.unpack(f[1])
                self.assertIs(r["result"], True)
                seen.add(r["id"])
            self.assertEqual(seen, set(range(20)))
            # A DEALER error reply carries the delimiter too.
            s.send_multipart([b"", h.request_bytes("frobnicate")])
            self.assertTrue(s.poll(5000, zmq.POLLIN))
            f = s.recv_multipart()
            self.assertEqual(f[0], b"")
            self.assert_error(h.unpack(f[1]), "unknown_op", "Unknown op 'frobnicate'")
        finally:
            s.close(linger=0)


# ======================================================================== health
class HealthTest(FixtureMixin, DaemonTestCase):

    def test_health_keys_types_and_counts(self):
        hl = self.health()
        self.assertEqual(set(hl), h.HEALTH_KEYS, hl)
        self.assertEqual(hl["status"], "ok")
        self.assertIsInstance(hl["version"], str)
        self.assertTrue(hl["version"])
        for k in ("state_version", "providers", "models", "jobs_running"):
            self.assertIs(type(hl[k]), int, (k, hl[k]))
            self.assertGreaterEqual(hl[k], 0, k)
        self.assertIn(type(hl["uptime_s"]), (int, float))
        self.assertGreaterEqual(hl["uptime_s"], 0)
        self.assertEqual(hl["jobs_running"], 0)
        self.assertEqual(hl["providers"], len(self.c.ok("keys")))
        self.assertEqual(hl["models"], len(self.c.ok("merged_models")))

    def test_health_counts_follow_changes(self):
        before = self.health()
        self.make_fixture()
        after = self.health()
        self.assertEqual(after["providers"], before["providers"] + 3)
        self.assertEqual(after["models"], before["models"] + len(ACME) + len(BETA) + len(HF))
        self.assertEqual(after["models"], len(self.c.ok("merged_models")))
        self.assertGreaterEqual(after["uptime_s"], before["uptime_s"])


# ======================================================================== dict-like reads
class ReadOpsTest(FixtureMixin, DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.make_fixture()

    def test_builtin_baseline_is_present_without_keys(self):
        self.assertIs(self.c.ok("contains", {"provider_name": "openai"}), True)
        cfg = self.c.ok("get", {"provider_name": "openai"})
        self.assert_provider_config(cfg, "openai")
        self.assertIsNone(cfg["api_key"], "clean environment, yet openai has a key")
        self.assertTrue(cfg["base_api_url"].startswith("https://"), cfg)

    def test_get_and_get_provider_config(self):
        for op in ("get", "get_provider_config"):
            with self.subTest(op=op):
                cfg = self.c.ok(op, {"provider_name": "acme"})
                self.assert_provider_config(cfg, "acme")
                self.assertEqual(cfg, {"provider": "acme", "name": "Acme",
                                       "base_api_url": "https://api.acme.test/v1",
                                       "api_key": "sk-bbx-acme-0001", "valid_models": ACME,
                                       "invalid_models": []})
                self.assertEqual(list(cfg["valid_models"].items()), list(ACME.items()))
                self.assertIsNone(self.c.ok(op, {"provider_name": "bbx-nosuch"}))
                # lookups are exact: no case folding of registry keys
                self.assertIsNone(self.c.ok(op, {"provider_name": "ACME"}))

    def test_getitem(self):
        self.assertEqual(self.c.ok("getitem", {"provider_name": "beta"}), self.beta)
        code, msg = self.c.err("getitem", {"provider_name": "bbx-nosuch"})
        self.assertEqual((code, msg), ("not_found", "Provider 'bbx-nosuch' not found"))
        code, msg = self.c.err("getitem", {"provider_name": ""})
        self.assertEqual((code, msg), ("not_found", "Provider '' not found"))

    def test_lookups_with_long_keys_are_just_unknown(self):
        self.assertIsNone(self.c.ok("get", {"provider_name": "a" * 5000}))
        self.assertIs(self.c.ok("contains", {"provider_name": "a" * 5000}), False)

    def test_contains(self):
        self.assertIs(self.c.ok("contains", {"provider_name": "hf"}), True)
        self.assertIs(self.c.ok("contains", {"provider_name": "bbx-nosuch"}), False)
        self.assertIs(self.c.ok("contains", {"provider_name": ""}), False)

    def test_keys_equals_get_all_provider_names_in_registry_order(self):
        keys = self.c.ok("keys")
        self.assertEqual(keys, self.c.ok("get_all_provider_names"))
        self.assertTrue(all(isinstance(k, str) for k in keys))
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(keys[-3:], ["acme", "beta", "hf"])
        self.assertIn("openai", keys[:-3])

    def test_values_and_items(self):
        keys = self.c.ok("keys")
        values = self.c.ok("values")
        items = self.c.ok("items")
        self.assertEqual(len(values), len(keys))
        for k, v in zip(keys, values):
            self.assert_provider_config(v, k)
            self.assertEqual(v, self.c.ok("get", {"provider_name": k}))
        self.assertEqual(items, [[k, v] for k, v in zip(keys, values)])
        self.assertEqual(values[-3:], [self.acme, self.beta, self.hf])

    def test_merged_models_and_valid_scoped_models(self):
        values = self.c.ok("values")
        merged = self.c.ok("merged_models")
        expect = [[v["provider"], [lo, sh]] for v in values
                  for lo, sh in v["valid_models"].items()]
        self.assertEqual(merged, expect)
        tail = [["acme", ["bbx-large-1", "bbx-l"]], ["acme", ["bbx-small-1", "bbx-s"]],
                ["beta", ["bbx-beta-1", "bbx-b1"]], ["beta", ["bbx-l", "bbx-beta-l"]],
                ["hf", ["meta-llama/Llama-3-8B", "bbx-llama3"]]]
        self.assertEqual(merged[-5:], tail)
        scoped = self.c.ok("valid_scoped_models")
        self.assertEqual(scoped, ["%s/%s (%s)" % (k, lo, sh) for k, (lo, sh) in merged])
        self.assertEqual(scoped[-5:], ["acme/bbx-large-1 (bbx-l)", "acme/bbx-small-1 (bbx-s)",
                                       "beta/bbx-beta-1 (bbx-b1)", "beta/bbx-l (bbx-beta-l)",
                                       "hf/meta-llama/Llama-3-8B (bbx-llama3)"])

    def test_get_available_models(self):
        merged = self.c.ok("merged_models")
        self.assertEqual(self.c.ok("get_available_models"), [lo for _, (lo, _s) in merged])
        self.assertEqual(self.c.ok("get_available_models", {}), [lo for _, (lo, _s) in merged])
        self.assertEqual(self.c.ok("get_available_models", {"filter_by_provider": "acme"}),
                         ["bbx-large-1", "bbx-small-1"])
        self.assertEqual(self.c.ok("get_available_models", {"filter_by_provider": "beta"}),
                         ["bbx-beta-1", "bbx-l"])
        self.assertEqual(self.c.ok("get_available_models",
                                   {"filter_by_provider": "bbx-nosuch"}), [])

    def test_get_available_models_nil_filter_means_no_filter(self):
        # The seed's filter_by_provider: Optional[str] = None; nil is "no filter".
        merged = self.c.ok("merged_models")
        self.assertEqual(self.c.ok("get_available_models", {"filter_by_provider": None}),
                         [lo for _, (lo, _s) in merged])

    def test_get_short_name_returns_the_long_name(self):
        for name in ("gpt-4o-2024-08-06", "meta-llama/Llama-3-8B", "x", "ünï"):
            self.assertEqual(self.c.ok("get_short_name", {"long_name": name}), name)

    def test_find_model_one_entry_per_provider(self):
        # "bbx-l" is acme's short name (-> bbx-large-1) and beta's long name.
        got = self.c.ok("find_model", {"name": "bbx-l"})
        self.assertEqual(got, [[self.acme, "bbx-large-1"], [self.beta, "bbx-l"]])
        self.assertEqual(self.c.ok("find_model", {"name": "bbx-llama3"}),
                         [[self.hf, "meta-llama/Llama-3-8B"]])
        self.assertEqual(self.c.ok("find_model", {"name": "bbx-beta-1"}),
                         [[self.beta, "bbx-beta-1"]])
        self.assertEqual(self.c.ok("find_model", {"name": "bbx-nosuch"}), [])
        # invalid_models are not models
        self.assertEqual(self.c.ok("find_model", {"name": "bbx-beta-old"}), [])

    def test_find_model_two_short_names_alike_give_one_entry(self):
        g = self.set_provider("gamma", valid_models={"bbx-g1": "bbx-dup", "bbx-g2": "bbx-dup"})
        got = self.c.ok("find_model", {"name": "bbx-dup"})
        self.assertEqual(len(got), 1, got)
        # The first model (in order) with that short name, as the seed's lookup does.
        self.assertEqual(got, [[g, "bbx-g1"]])


# ======================================================================== resolution
class ResolutionTest(FixtureMixin, DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.make_fixture()
        self.cfg = {"acme": self.acme, "beta": self.beta, "hf": self.hf}

    def resolves(self, model_string, key, long_name):
        with self.subTest(model_string=model_string):
            got = self.c.ok("get_api_for_model_string", {"model_string": model_string})
            self.assertEqual(got, [self.cfg[key], long_name])
            self.assertEqual(self.c.ok("validate_model", {"model_string": model_string}),
                             long_name)

    def rejects(self, model_string, message):
        with self.subTest(model_string=model_string):
            for op in ("get_api_for_model_string", "validate_model"):
                rep = self.c.call(op, {"model_string": model_string})
                self.assert_error(rep, "invalid_model", message)

    def test_prefixed_long_and_short(self):
        self.resolves("acme/bbx-large-1", "acme", "bbx-large-1")
        self.resolves("acme/bbx-small-1", "acme", "bbx-small-1")
        # correction (a): a short name with a prefix still yields the LONG name
        self.resolves("acme/bbx-l", "acme", "bbx-large-1")
        self.resolves("acme/bbx-s", "acme", "bbx-small-1")
        self.resolves("beta/bbx-l", "beta", "bbx-l")
        self.resolves("beta/bbx-beta-l", "beta", "bbx-l")
        self.resolves("hf/meta-llama/Llama-3-8B", "hf", "meta-llama/Llama-3-8B")
        self.resolves("hf/bbx-llama3", "hf", "meta-llama/Llama-3-8B")

    def test_prefix_is_lower_cased(self):
        self.resolves("ACME/bbx-l", "acme", "bbx-large-1")
        self.resolves("Beta/bbx-beta-1", "beta", "bbx-beta-1")
        self.rejects("ACME/bbx-nosuch", "Invalid model for provider acme: bbx-nosuch")
        # only the prefix: model names stay case-sensitive
        self.rejects("acme/BBX-L", "Invalid model for provider acme: BBX-L")

    def test_prefix_lower_cased_for_builtin_openai(self):
        o = self.c.ok("get", {"provider_name": "openai"})
        o = self.c.ok("set_provider", {"provider": "openai", "name": o["name"],
                                       "base_api_url": o["base_api_url"],
                                       "valid_models": {"bbx-gpt-x": "bbx-x"}})
        self.cfg["openai"] = o
        self.resolves("OpenAI/bbx-gpt-x", "openai", "bbx-gpt-x")
        self.resolves("OPENAI/bbx-x", "openai", "bbx-gpt-x")
        self.rejects("OpenAI/bbx-nosuch", "Invalid model for provider openai: bbx-nosuch")

    def test_unprefixed_long_short_and_first_hit_order(self):
        self.resolves("bbx-large-1", "acme", "bbx-large-1")
        self.resolves("bbx-s", "acme", "bbx-small-1")
        self.resolves("bbx-beta-1", "beta", "bbx-beta-1")
        self.resolves("bbx-b1", "beta", "bbx-beta-1")
        # "bbx-l": acme's short name comes before beta's long name in merged_models order
        self.resolves("bbx-l", "acme", "bbx-large-1")
        self.resolves("bbx-beta-l", "beta", "bbx-l")

    def test_first_hit_follows_provider_order_not_name(self):
        # zeta is created before alpha: registry (insertion) order, not alphabetical, decides
        z = self.set_provider("zeta", valid_models={"bbx-same": "bbx-z"})
        a = self.set_provider("alpha", valid_models={"bbx-same": "bbx-a"})
        self.cfg.update(zeta=z, alpha=a)
        self.resolves("bbx-same", "zeta", "bbx-same")
        self.resolves("alpha/bbx-same", "alpha", "bbx-same")
        self.resolves("bbx-a", "alpha", "bbx-same")

    def test_slash_in_model_id_with_unknown_prefix(self):
        # correction (b): "meta-llama" is not a provider, so the whole string is a model name
        self.resolves("meta-llama/Llama-3-8B", "hf", "meta-llama/Llama-3-8B")
        # the seed's after-slash search still applies when the whole string is no model
        self.resolves("bbx-noprov/bbx-small-1", "acme", "bbx-small-1")
        self.resolves("bbx-noprov/bbx-llama3", "hf", "meta-llama/Llama-3-8B")

    def test_slash_in_model_id_with_known_prefix_is_not_corrected(self):
        # When the prefix IS a provider, its own models decide (rule 2), no whole-string try.
        self.set_provider("meta-llama", valid_models={"bbx-other": "bbx-o"})
        self.rejects("meta-llama/Llama-3-8B",
                     "Invalid model for provider meta-llama: Llama-3-8B")

    def test_invalid_models(self):
        self.rejects("acme/bbx-nosuch", "Invalid model for provider acme: bbx-nosuch")
        # a model of ANOTHER provider is not valid under this prefix
        self.rejects("acme/bbx-beta-1", "Invalid model for provider acme: bbx-beta-1")
        self.rejects("hf/Llama-3-8B", "Invalid model for provider hf: Llama-3-8B")
        self.rejects("bbx-nosuch", "Invalid model: bbx-nosuch")
        # an invalid_models entry is not a valid model
        self.rejects("bbx-beta-old", "Invalid model: bbx-beta-old")
        self.rejects("beta/bbx-beta-old", "Invalid model for provider beta: bbx-beta-old")

    def test_invalid_with_unknown_prefix_names_the_after_slash_model(self):
        # Rule 3's message uses <model>, the text after the first slash (rule 1).
        self.rejects("bbx-noprov/bbx-nosuch", "Invalid model: bbx-nosuch")

    def test_model_string_limit(self):
        rep = self.c.call("validate_model", {"model_string": "m" * 2048})
        self.assert_error(rep, "invalid_model", "Invalid model: " + "m" * 2048)
        for op in ("validate_model", "get_api_for_model_string"):
            rep = self.c.call(op, {"model_string": "m" * 2049})
            self.assert_error(rep, "bad_request")


# ======================================================================== set_provider
class SetProviderTest(DaemonTestCase):

    def test_create_minimal_starts_without_key_and_models(self):
        sv = self.state_version()
        cfg = self.c.ok("set_provider", {"provider": "acme", "name": "Acme",
                                         "base_api_url": "https://api.acme.test/v1"})
        self.assertEqual(cfg, {"provider": "acme", "name": "Acme",
                               "base_api_url": "https://api.acme.test/v1", "api_key": None,
                               "valid_models": {}, "invalid_models": []})
        self.assertEqual(self.c.ok("get", {"provider_name": "acme"}), cfg)
        self.assertEqual(self.c.ok("keys")[-1], "acme")
        self.assertEqual(self.state_version(), sv + 1)

    def test_create_full_keeps_model_order(self):
        vm = {"zz-model": "zz", "aa-model": "aa", "mm-model": "mm", "b/slash": "bs"}
        cfg = self.set_provider("acme", "Acme", "http://127.0.0.1:9/v1", api_key="sk-bbx-1",
                                valid_models=vm, invalid_models=["q-old", "p-old"])
        self.assertEqual(cfg["api_key"], "sk-bbx-1")
        self.assertEqual(list(cfg["valid_models"].items()), list(vm.items()))
        self.assertEqual(cfg["invalid_models"], ["q-old", "p-old"])
        got = self.c.ok("get", {"provider_name": "acme"})
        self.assertEqual(got, cfg)
        self.assertEqual(list(got["valid_models"]), list(vm))

    def test_update_keeps_absent_fields_and_place(self):
        self.set_provider("p1")
        full = self.set_provider("p2", "P2", "https://p2.test/v1", api_key="sk-bbx-p2",
                                 valid_models={"m1": "s1", "m2": "s2"}, invalid_models=["x"])
        self.set_provider("p3")
        keys = self.c.ok("keys")
        sv = self.state_version()
        upd = self.c.ok("set_provider", {"provider": "p2", "name": "P2 renamed",
                                         "base_api_url": "https://p2-new.test/v2"})
        self.assertEqual(upd, dict(full, name="P2 renamed",
                                   base_api_url="https://p2-new.test/v2"))
        self.assertEqual(self.c.ok("keys"), keys)
        self.assertEqual(self.state_version(), sv + 1)

    def test_update_builtin_keeps_its_place(self):
        keys = self.c.ok("keys")
        o = self.c.ok("get", {"provider_name": "openai"})
        upd = self.c.ok("set_provider", {"provider": "openai", "name": "OpenAI (bbx)",
                                         "base_api_url": o["base_api_url"],
                                         "api_key": "sk-bbx-openai"})
        self.assertEqual(upd, dict(o, name="OpenAI (bbx)", api_key="sk-bbx-openai"))
        self.assertEqual(self.c.ok("keys"), keys)

    def test_valid_models_replaces_the_whole_map(self):
        self.set_provider("acme", valid_models={"a": "a1", "b": "b1"})
        cfg = self.set_provider("acme", valid_models={"c": "c1"})
        self.assertEqual(cfg["valid_models"], {"c": "c1"})
        cfg = self.set_provider("acme", valid_models={})
        self.assertEqual(cfg["valid_models"], {})
        self.assertEqual(self.c.ok("get_available_models", {"filter_by_provider": "acme"}), [])

    def test_invalid_models_replaced_when_given(self):
        self.set_provider("acme", invalid_models=["a", "b"])
        cfg = self.set_provider("acme", invalid_models=["c"])
        self.assertEqual(cfg["invalid_models"], ["c"])
        cfg = self.set_provider("acme")
        self.assertEqual(cfg["invalid_models"], ["c"])
        cfg = self.set_provider("acme", invalid_models=[])
        self.assertEqual(cfg["invalid_models"], [])

    def test_api_key_nil_clears_absent_keeps(self):
        self.set_provider("acme", api_key="sk-bbx-first")
        self.assertEqual(self.set_provider("acme")["api_key"], "sk-bbx-first")
        self.assertEqual(self.set_provider("acme", api_key="sk-bbx-second")["api_key"],
                         "sk-bbx-second")
        self.assertIsNone(self.set_provider("acme", api_key=None)["api_key"])
        self.assertIsNone(self.c.ok("get", {"provider_name": "acme"})["api_key"])

    def test_registry_key_rules(self):
        ok_keys = ["a", "a" * 64, "x.y_z-0", "0-9"]
        for k in ok_keys:
            with self.subTest(key=k):
                self.assertEqual(self.set_provider(k)["provider"], k)
        sv = self.state_version()
        keys = self.c.ok("keys")
        for k in ["", "a" * 65, "Acme", "ac me", "ac/me", "acme!", "ä", "a\x00b", "A"]:
            with self.subTest(key=k):
                rep = self.c.call("set_provider", {"provider": k, "name": "N",
                                                   "base_api_url": "https://x.test/v1"})
                self.assert_error(rep, "bad_request")
        self.assertEqual(self.c.ok("keys"), keys)
        self.assertEqual(self.state_version(), sv)

    def test_base_api_url_scheme(self):
        self.assertEqual(self.set_provider("h1", url="http://x")["base_api_url"], "http://x")
        self.assertEqual(self.set_provider("h2", url="https://x")["base_api_url"], "https://x")
        sv = self.state_version()
        for url in ["", "ftp://x.test", "api.openai.com/v1", "HTTPX://x", "file:///etc/passwd",
                    " https://x.test"]:
            with self.subTest(url=url):
                rep = self.c.call("set_provider", {"provider": "h3", "name": "N",
                                                   "base_api_url": url})
                self.assert_error(rep, "bad_request")
        self.assertIsNone(self.c.ok("get", {"provider_name": "h3"}))
        self.assertEqual(self.state_version(), sv)

    def test_limits(self):
        base = {"provider": "lim", "name": "N", "base_api_url": "https://x.test/v1"}
        at_limit = [
            {"name": "n" * 1024},
            {"base_api_url": "https://" + "u" * (2048 - 8)},
            {"api_key": "k" * 4096},
            {"valid_models": {"m" * 1024: "s" * 1024}},
        ]
        for extra in at_limit:
            with self.subTest(ok=list(extra)):
                self.c.ok("set_provider", dict(base, **extra))
        sv = self.state_version()
        before = self.c.ok("get", {"provider_name": "lim"})
        over = [
            {"name": "n" * 1025},
            {"base_api_url": "https://" + "u" * (2049 - 8)},
            {"api_key": "k" * 4097},
            {"valid_models": {"m" * 1025: "s"}},
            {"valid_models": {"m": "s" * 1025}},
            {"valid_models": {"": "s"}},
            {"valid_models": {"m": ""}},
            {"name": "n" * 1025, "provider": "lim-new"},
        ]
        for extra in over:
            with self.subTest(over=[(k, len(v) if isinstance(v, str) else v)
                                    for k, v in extra.items() if k != "valid_models"]):
                rep = self.c.call("set_provider", dict(base, **extra))
                self.assert_error(rep, "bad_request")
        self.assertEqual(self.c.ok("get", {"provider_name": "lim"}), before)
        self.assertIsNone(self.c.ok("get", {"provider_name": "lim-new"}))
        self.assertEqual(self.state_version(), sv)

    def test_missing_required_arguments(self):
        full = {"provider": "acme", "name": "Acme", "base_api_url": "https://a.test/v1"}
        self.c.ok("set_provider", full)
        sv = self.state_version()
        for missing in ("provider", "name", "base_api_url"):
            with self.subTest(missing=missing):
                args = {k: v for k, v in full.items() if k != missing}
                rep = self.c.call("set_provider", args)
                self.assert_error(rep, "bad_request",
                                  "missing required argument '%s'" % missing)
        self.assertEqual(self.state_version(), sv)


# ======================================================================== remove_provider
class RemoveProviderTest(DaemonTestCase):

    def test_remove_custom_provider(self):
        self.set_provider("acme", valid_models={"bbx-m": "bbx-s"})
        self.set_provider("beta")
        keys = self.c.ok("keys")
        sv = self.state_version()
        self.assertIs(self.c.ok("remove_provider", {"provider": "acme"}), True)
        self.assertEqual(self.state_version(), sv + 1)
        self.assertIsNone(self.c.ok("get", {"provider_name": "acme"}))
        self.assertIs(self.c.ok("contains", {"provider_name": "acme"}), False)
        self.assertEqual(self.c.ok("keys"), [k for k in keys if k != "acme"])
        self.assert_error(self.c.call("validate_model", {"model_string": "bbx-s"}),
                          "invalid_model", "Invalid model: bbx-s")
        # again: it is no longer there
        self.assertIs(self.c.ok("remove_provider", {"provider": "acme"}), False)
        self.assertEqual(self.state_version(), sv + 1)

    def test_remove_unknown_is_false(self):
        sv = self.state_version()
        self.assertIs(self.c.ok("remove_provider", {"provider": "bbx-nosuch"}), False)
        self.assertEqual(self.state_version(), sv)

    def test_remove_builtin_is_conflict(self):
        sv = self.state_version()
        rep = self.c.call("remove_provider", {"provider": "openai"}, id=5)
        self.assert_error(rep, "conflict",
                          "Provider 'openai' is defined by the built-in baseline or the "
                          "config file and cannot be removed", id=5)
        self.assertIs(self.c.ok("contains", {"provider_name": "openai"}), True)
        self.assertEqual(self.state_version(), sv)

    def test_remove_then_recreate_appends(self):
        self.set_provider("acme")
        self.set_provider("beta")
        self.c.ok("remove_provider", {"provider": "acme"})
        cfg = self.set_provider("acme")
        self.assertEqual(cfg["valid_models"], {})
        self.assertEqual(self.c.ok("keys")[-2:], ["beta", "acme"])


class ConfigFileProviderTest(DaemonTestCase):
    daemon_kwargs = {"config": (
        "providers:\n"
        "  bbx-cfg:\n"
        "    name: Cfg Provider\n"
        "    base_api_url: https://cfg.example.test/v1\n"
        "    api_key: null\n"
        "    valid_models:\n"
        "      bbx-cfg-1: bbx-c1\n")}

    def test_config_file_provider_is_present_and_cannot_be_removed(self):
        cfg = self.c.ok("get", {"provider_name": "bbx-cfg"})
        self.assert_provider_config(cfg, "bbx-cfg")
        self.assertEqual(cfg["name"], "Cfg Provider")
        self.assertEqual(cfg["valid_models"], {"bbx-cfg-1": "bbx-c1"})
        self.assertEqual(self.c.ok("validate_model", {"model_string": "bbx-c1"}), "bbx-cfg-1")
        sv = self.state_version()
        rep = self.c.call("remove_provider", {"provider": "bbx-cfg"})
        self.assert_error(rep, "conflict",
                          "Provider 'bbx-cfg' is defined by the built-in baseline or the "
                          "config file and cannot be removed")
        self.assertEqual(self.state_version(), sv)
        self.assertIs(self.c.ok("contains", {"provider_name": "bbx-cfg"}), True)


# ======================================================================== set_short_name
class SetShortNameTest(DaemonTestCase):

    def setUp(self):
        super().setUp()
        self.set_provider("acme", valid_models=ACME)

    def test_set_short_name_changes_one_entry_in_place(self):
        sv = self.state_version()
        cfg = self.c.ok("set_short_name", {"provider": "acme", "long_name": "bbx-small-1",
                                           "short_name": "bbx-tiny"})
        self.assert_provider_config(cfg, "acme")
        self.assertEqual(list(cfg["valid_models"].items()),
                         [("bbx-large-1", "bbx-l"), ("bbx-small-1", "bbx-tiny")])
        self.assertEqual(self.c.ok("get", {"provider_name": "acme"}), cfg)
        self.assertEqual(self.state_version(), sv + 1)
        self.assertEqual(self.c.ok("validate_model", {"model_string": "bbx-tiny"}),
                         "bbx-small-1")
        self.assert_error(self.c.call("validate_model", {"model_string": "bbx-s"}),
                          "invalid_model", "Invalid model: bbx-s")
        self.assertIn("acme/bbx-small-1 (bbx-tiny)", self.c.ok("valid_scoped_models"))

    def test_set_short_name_errors(self):
        sv = self.state_version()
        rep = self.c.call("set_short_name", {"provider": "bbx-nosuch", "long_name": "x",
                                             "short_name": "y"}, id="s1")
        self.assert_error(rep, "not_found", "Provider 'bbx-nosuch' not found", id="s1")
        rep = self.c.call("set_short_name", {"provider": "acme", "long_name": "bbx-nosuch",
                                             "short_name": "y"})
        self.assert_error(rep, "invalid_model",
                          "Invalid model for provider acme: bbx-nosuch")
        for short in ("", "s" * 1025):
            rep = self.c.call("set_short_name", {"provider": "acme",
                                                 "long_name": "bbx-large-1",
                                                 "short_name": short})
            self.assert_error(rep, "bad_request")
        for missing in ("provider", "long_name", "short_name"):
            args = {"provider": "acme", "long_name": "bbx-large-1", "short_name": "z"}
            del args[missing]
            self.assert_error(self.c.call("set_short_name", args), "bad_request",
                              "missing required argument '%s'" % missing)
        self.assertEqual(self.c.ok("get", {"provider_name": "acme"})["valid_models"], ACME)
        self.assertEqual(self.state_version(), sv)


# ======================================================================== state_version, events
class StateVersionAndEventsTest(DaemonTestCase):

    def expect_event(self, sub, keys):
        ev = sub.recv(3.0)
        self.assertIsNotNone(ev, "no event for %r" % (keys,))
        frames, body = ev
        self.assertEqual(len(frames), 2, frames)
        self.assertEqual(frames[0], b"providers")
        # v1's keys, plus v1.1's "configs" and "epoch" (v1 subscribers ignore them).
        self.assertEqual(set(body), {"event", "state_version", "providers", "configs", "epoch"},
                         body)
        self.assertEqual(body["event"], "changed")
        self.assertIs(type(body["state_version"]), int)
        self.assertEqual(body["providers"], keys)
        self.assertEqual(body["state_version"], self.state_version())
        self.assertEqual(body["configs"],
                         [self.c.ok("get", {"provider_name": k}) for k in keys])
        self.assertEqual(body["epoch"], self.c.ok("health")["epoch"])
        return body["state_version"]

    def expect_no_event(self, sub, what):
        ev = sub.recv(0.4)
        self.assertIsNone(ev, "unexpected event after %s: %r" % (what, ev))

    def test_events_and_state_version_per_change(self):
        sub = self.d.subscriber()
        self.prime_events(sub)
        sv = self.state_version()
        self.set_provider("acme", valid_models=ACME)
        self.assertEqual(self.expect_event(sub, ["acme"]), sv + 1)
        self.set_provider("acme", name="Acme 2")
        self.assertEqual(self.expect_event(sub, ["acme"]), sv + 2)
        self.c.ok("set_short_name", {"provider": "acme", "long_name": "bbx-large-1",
                                     "short_name": "bbx-big"})
        self.assertEqual(self.expect_event(sub, ["acme"]), sv + 3)
        o = self.c.ok("get", {"provider_name": "openai"})
        self.c.ok("set_provider", {"provider": "openai", "name": o["name"],
                                   "base_api_url": o["base_api_url"], "api_key": "sk-bbx-o"})
        self.assertEqual(self.expect_event(sub, ["openai"]), sv + 4)
        self.assertIs(self.c.ok("remove_provider", {"provider": "acme"}), True)
        self.assertEqual(self.expect_event(sub, ["acme"]), sv + 5)
        self.assertEqual(self.state_version(), sv + 5)

    def test_no_bump_and_no_event_without_a_change(self):
        sub = self.d.subscriber()
        self.set_provider("acme", valid_models=ACME)
        self.prime_events(sub)
        sv = self.state_version()
        # reads
        for op, args in [("keys", {}), ("values", {}), ("items", {}), ("merged_models", {}),
                         ("get", {"provider_name": "acme"}),
                         ("validate_model", {"model_string": "bbx-l"}), ("health", {})]:
            self.c.ok(op, args)
        # persist changes no state
        self.c.ok("persist_provider_configs")
        self.expect_no_event(sub, "persist_provider_configs")
        # failed requests
        self.c.err("getitem", {"provider_name": "bbx-nosuch"})
        self.c.err("set_provider", {"provider": "BAD KEY", "name": "n",
                                    "base_api_url": "https://x"})
        self.c.err("set_provider", {"provider": "acme", "name": 5,
                                    "base_api_url": "https://x"})
        self.c.err("set_short_name", {"provider": "acme", "long_name": "bbx-nosuch",
                                      "short_name": "z"})
        self.c.err("set_short_name", {"provider": "bbx-nosuch", "long_name": "a",
                                      "short_name": "z"})
        self.c.err("remove_provider", {"provider": "openai"})
        self.c.err("frobnicate")
        self.c.err("validate_model", {"model_string": "bbx-nosuch"})
        # a removal of nothing applies no change
        self.assertIs(self.c.ok("remove_provider", {"provider": "bbx-nosuch"}), False)
        self.expect_no_event(sub, "failed requests")
        self.assertEqual(self.state_version(), sv)

    def test_events_on_ipc_too(self):
        # Same contract on ipc:// endpoints (not required by the contract; a transport check).
        d = h.Daemon(ipc=True)
        self.addCleanup(d.cleanup)
        d.start()
        c, sub = d.client(), d.subscriber()
        for i in range(50):
            c.ok("set_provider", {"provider": "bbx-prime", "name": "p%d" % i,
                                  "base_api_url": "https://p.test"})
            if sub.recv(0.2) is not None:
                break
        sub.drain(0.3)
        sv = c.ok("health")["state_version"]
        c.ok("set_provider", {"provider": "acme", "name": "A", "base_api_url": "https://a"})
        frames, body = sub.recv(3.0)
        self.assertEqual(frames[0], b"providers")
        self.assertEqual(body, {"event": "changed", "state_version": sv + 1,
                                "providers": ["acme"],
                                "configs": [c.ok("get", {"provider_name": "acme"})],
                                "epoch": c.ok("health")["epoch"]})
        self.assert_clean_stop(d)


# ======================================================================== persist op
class PersistTest(DaemonTestCase):

    def test_persist_result_file_and_modes(self):
        self.set_provider("acme", "Acme", "https://api.acme.test/v1",
                          api_key="sk-bbx-persist-1", valid_models={"z-m": "z", "a-m": "a"},
                          invalid_models=["old-1"])
        self.set_provider("beta", "Beta", "http://beta.test/v1")
        sv = self.state_version()
        res = self.c.ok("persist_provider_configs")
        self.assertEqual(set(res), {"path", "providers"})
        self.assertIsInstance(res["path"], str)
        self.assertIs(type(res["providers"]), int)
        keys = self.c.ok("keys")
        self.assertEqual(res["providers"], len(keys))
        self.assertEqual(os.path.realpath(res["path"]), os.path.realpath(self.d.store_path))
        self.assertEqual(self.state_version(), sv)
        st = os.stat(self.d.store_path)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.d.data_dir).st_mode), 0o700)
        with open(self.d.store_path, encoding="utf-8") as f:
            text = f.read()
        self.assertTrue(text.lstrip().startswith("providers:"), text[:200])
        for needle in ("acme:", "name: Acme", "base_api_url: https://api.acme.test/v1",
                       "sk-bbx-persist-1", "valid_models:", "invalid_models:", "old-1",
                       "beta:"):
            self.assertIn(needle, text)
        data = h.read_yaml(self.d.store_path)
        if data is None:
            return  # no PyYAML: the text checks above are all we can do
        self.assertEqual(list(data), ["providers"])
        self.assertEqual(list(data["providers"]), keys)
        values = self.c.ok("values")
        for v in values:
            p = data["providers"][v["provider"]]
            self.assertEqual(set(p), {"name", "base_api_url", "api_key", "valid_models",
                                      "invalid_models"}, p)
            self.assertEqual(p["name"], v["name"])
            self.assertEqual(p["base_api_url"], v["base_api_url"])
            self.assertEqual(p["api_key"], v["api_key"])  # no env keys in this daemon
            self.assertEqual(list((p["valid_models"] or {}).items()),
                             list(v["valid_models"].items()))
            self.assertEqual(p["invalid_models"] or [], v["invalid_models"])
        self.assertEqual(data["providers"]["acme"]["valid_models"], {"z-m": "z", "a-m": "a"})
        self.assertEqual(data["providers"]["beta"]["api_key"], None)

    def test_every_change_is_persisted_before_its_reply(self):
        self.set_provider("acme", "Acme", "https://a.test/v1", valid_models={"m1": "s1"})
        data = h.read_yaml(self.d.store_path)
        with open(self.d.store_path, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("acme:", text)
        if data is not None:
            self.assertEqual(data["providers"]["acme"]["valid_models"], {"m1": "s1"})
        self.c.ok("set_short_name", {"provider": "acme", "long_name": "m1",
                                     "short_name": "s2"})
        data = h.read_yaml(self.d.store_path)
        if data is not None:
            self.assertEqual(data["providers"]["acme"]["valid_models"], {"m1": "s2"})
        self.c.ok("remove_provider", {"provider": "acme"})
        with open(self.d.store_path, encoding="utf-8") as f:
            self.assertNotIn("acme:", f.read())
        self.assertEqual(stat.S_IMODE(os.stat(self.d.store_path).st_mode), 0o600)

    def test_failed_persist_is_internal_and_change_not_applied(self):
        self.set_provider("acme", valid_models={"m1": "s1"})
        sub = self.d.subscriber()
        self.prime_events(sub)
        before = self.c.ok("values")
        sv = self.state_version()
        # Make the target path a non-empty directory: rename() over it fails even for root.
        if os.path.exists(self.d.store_path):
            os.unlink(self.d.store_path)
        os.mkdir(self.d.store_path)
        with open(os.path.join(self.d.store_path, "keep"), "w") as f:
            f.write("x")
        rep = self.c.call("set_provider", {"provider": "newp", "name": "N",
                                           "base_api_url": "https://n.test"})
        self.assert_error(rep, "internal", message_prefix="could not persist providers: ")
        rep = self.c.call("set_short_name", {"provider": "acme", "long_name": "m1",
                                             "short_name": "s9"})
        self.assert_error(rep, "internal", message_prefix="could not persist providers: ")
        rep = self.c.call("remove_provider", {"provider": "acme"})
        self.assert_error(rep, "internal", message_prefix="could not persist providers: ")
        rep = self.c.call("persist_provider_configs")
        self.assert_error(rep, "internal", message_prefix="could not persist providers: ")
        self.assertEqual(self.c.ok("values"), before)
        self.assertEqual(self.state_version(), sv)
        self.assertIsNone(sub.recv(0.4), "an event for a change that was not applied")
        # Repaired: writes work again.
        os.unlink(os.path.join(self.d.store_path, "keep"))
        os.rmdir(self.d.store_path)
        self.set_provider("newp")
        self.assertEqual(self.state_version(), sv + 1)
        self.assertTrue(os.path.isfile(self.d.store_path))


if __name__ == "__main__":
    unittest.main()
