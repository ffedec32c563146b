"""Black-box persistence tests: state surviving a restart, the seed's YAML file format, a
corrupt file refused at start-up (and left alone), API keys from the environment.

Run: PM_DAEMON=.../provider-manager python3 -m unittest -v test_persistence   (in tests/python)
"""

import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest

import pmharness as h


class PersistBase(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pm-bbx-persist-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.data_dir = os.path.join(self.tmp, "data")
        self.store = os.path.join(self.data_dir, h.STORE_FILE)

    def daemon(self, **kw):
        d = h.Daemon(tmpdir=self.tmp, data_dir=self.data_dir, **kw)
        self.addCleanup(d.cleanup)
        return d

    def stop_ok(self, d):
        rc, elapsed = d.stop()
        self.assertEqual(rc, 0, "SIGTERM: rc=%r after %.2fs; stderr:\n%s"
                         % (rc, elapsed, d.stderr()[-2000:]))

    def write_store(self, text):
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        with open(self.store, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(self.store, 0o600)


class RestartTest(PersistBase):

    def test_state_survives_a_restart(self):
        d = self.daemon().start()
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)
        c = d.client()
        o = c.ok("get", {"provider_name": "openai"})
        c.ok("set_provider", {"provider": "acme", "name": "Acme",
                              "base_api_url": "https://api.acme.test/v1",
                              "api_key": "sk-bbx-restart-1",
                              "valid_models": {"z-model": "z", "a-model": "a"},
                              "invalid_models": ["old-2", "old-1"]})
        c.ok("set_provider", {"provider": "beta", "name": "Beta",
                              "base_api_url": "http://beta.test/v1"})
        c.ok("set_short_name", {"provider": "acme", "long_name": "a-model",
                                "short_name": "aa"})
        c.ok("set_provider", {"provider": "openai", "name": "OpenAI bbx",
                              "base_api_url": o["base_api_url"], "api_key": "sk-bbx-openai-2",
                              "valid_models": {"bbx-gpt": "bg"}})
        c.ok("set_provider", {"provider": "gone", "name": "Gone",
                              "base_api_url": "https://gone.test"})
        self.assertIs(c.ok("remove_provider", {"provider": "gone"}), True)
        keys = c.ok("keys")
        values = c.ok("values")
        self.stop_ok(d)
        self.assertEqual(stat.S_IMODE(os.stat(self.store).st_mode), 0o600)

        d.start()
        c = d.client()
        self.assertEqual(c.ok("keys"), keys)
        self.assertEqual(c.ok("values"), values)
        acme = c.ok("get", {"provider_name": "acme"})
        self.assertEqual(list(acme["valid_models"].items()), [("z-model", "z"), ("a-model", "aa")])
        self.assertEqual(acme["invalid_models"], ["old-2", "old-1"])
        self.assertEqual(acme["api_key"], "sk-bbx-restart-1")
        self.assertIsNone(c.ok("get", {"provider_name": "gone"}))
        self.assertEqual(c.ok("validate_model", {"model_string": "OpenAI/bg"}), "bbx-gpt")
        # a provider that only the persisted file defines is removable
        self.assertIs(c.ok("remove_provider", {"provider": "acme"}), True)
        self.stop_ok(d)
        d.start()
        self.assertIsNone(d.client().ok("get", {"provider_name": "acme"}))
        self.stop_ok(d)

    def test_awkward_strings_round_trip_through_the_file(self):
        vm = {"a: b": "c #d", "- x": "null", "yes": "~", "'q'": '"dq"', "ünï/cödé": "日本",
              "[flow]": "{map}", "@at": "`tick", "%pct": "!tag", "0x1F": "1e3",
              "trailing ": " leading", "multi\nline": "tab\there", "*alias": "&anchor"}
        d = self.daemon().start()
        c = d.client()
        cfg = c.ok("set_provider", {"provider": "odd", "name": "Odd: #1 'x' \"y\"",
                                    "base_api_url": "https://odd.test/v1?q=a&b=#frag",
                                    "api_key": "sk-'\"%: #",
                                    "valid_models": vm, "invalid_models": ["- a", "b: c", "~"]})
        self.stop_ok(d)
        data = h.read_yaml(self.store)
        if data is not None:
            p = data["providers"]["odd"]
            self.assertEqual(list(p["valid_models"].items()), list(vm.items()))
            self.assertEqual(p["name"], cfg["name"])
            self.assertEqual(p["api_key"], cfg["api_key"])
        d.start()
        self.assertEqual(d.client().ok("get", {"provider_name": "odd"}), cfg)
        self.stop_ok(d)

    def test_seed_format_file_without_invalid_models_loads(self):
        self.write_store(
            "providers:\n"
            "  legacy:\n"
            "    api_key: sk-bbx-legacy\n"
            "    base_api_url: https://legacy.test/v1\n"
            "    name: Legacy\n"
            "    valid_models:\n"
            "      legacy-model-1: lm1\n"
            "      legacy-model-2: legacy-model-2\n"
            "  openai:\n"
            "    api_key: null\n"
            "    base_api_url: https://api.openai.com/v1\n"
            "    name: OpenAI\n"
            "    valid_models:\n"
            "      gpt-4o-2024-08-06: 4o\n"
            "    invalid_models:\n"
            "      - gpt-3.5-turbo-instruct\n")
        d = self.daemon().start()
        c = d.client()
        leg = c.ok("get", {"provider_name": "legacy"})
        self.assertEqual(leg, {"provider": "legacy", "name": "Legacy",
                               "base_api_url": "https://legacy.test/v1",
                               "api_key": "sk-bbx-legacy",
                               "valid_models": {"legacy-model-1": "lm1",
                                                "legacy-model-2": "legacy-model-2"},
                               "invalid_models": []})
        o = c.ok("get", {"provider_name": "openai"})
        self.assertEqual(o["valid_models"].get("gpt-4o-2024-08-06"), "4o")
        self.assertIn("gpt-3.5-turbo-instruct", o["invalid_models"])
        self.assertEqual(c.ok("validate_model", {"model_string": "openai/4o"}),
                         "gpt-4o-2024-08-06")
        self.assertEqual(c.ok("validate_model", {"model_string": "lm1"}), "legacy-model-1")
        keys = c.ok("keys")
        self.assertEqual(keys[-1], "legacy")  # not in the baseline: appended after it
        self.stop_ok(d)


class CorruptFileTest(PersistBase):

    def refuses(self, text, line=None):
        self.write_store(text)
        before = os.stat(self.store)
        d = self.daemon()
        proc = d.spawn()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.fail("daemon kept running on a corrupt file; stderr:\n" + d.stderr())
        log = d.all_logs()
        self.assertNotEqual(rc, 0, log)
        self.assertGreater(rc, 0, "killed by a signal? rc=%r\n%s" % (rc, log))
        self.assertIn(h.STORE_FILE, log)
        self.assertIsNone(re.search(r"\bready\b", log), log)
        if line is None:
            self.assertRegex(log, r"%s:\d+|line \d+" % re.escape(h.STORE_FILE))
        else:
            self.assertRegex(log, r"%s:%d\b|%s.*line %d\b" % (
                re.escape(h.STORE_FILE), line, re.escape(h.STORE_FILE), line))
        with open(self.store, encoding="utf-8") as f:
            self.assertEqual(f.read(), text)
        after = os.stat(self.store)
        self.assertEqual((after.st_ino, after.st_mtime_ns, after.st_size,
                          stat.S_IMODE(after.st_mode)),
                         (before.st_ino, before.st_mtime_ns, before.st_size, 0o600))

    def test_syntax_error(self):
        self.refuses("providers:\n"
                     "  acme:\n"
                     "    name: Acme\n"
                     "  - not a mapping entry\n"
                     "    base_api_url: https://a.test\n")

    def test_unclosed_flow_sequence(self):
        self.refuses("providers:\n"
                     "  acme:\n"
                     "    name: Acme\n"
                     "    invalid_models: [a, b\n")

    def test_wrong_shape_names_the_line(self):
        self.refuses("providers:\n"
                     "  acme:\n"
                     "    name: Acme\n"
                     "    valid_models: [a, b]\n"
                     "    base_api_url: https://a.test\n", line=4)

    def test_providers_not_a_map(self):
        self.refuses("# comment\n"
                     "providers: [1, 2]\n", line=2)


class EnvironmentKeyTest(PersistBase):
    ENV_KEY = "sk-test-env-1234"

    def test_environment_key_is_used_never_persisted_never_logged(self):
        d = self.daemon(env={"OPENAI_API_KEY": self.ENV_KEY},
                        extra_args=["--log-level", "debug"])
        d.start()
        c = d.client()
        o = c.ok("get", {"provider_name": "openai"})
        self.assertEqual(o["api_key"], self.ENV_KEY)
        self.assertEqual(c.ok("getitem", {"provider_name": "openai"})["api_key"], self.ENV_KEY)
        res = c.ok("persist_provider_configs")
        self.assertEqual(os.path.realpath(res["path"]), os.path.realpath(self.store))
        with open(self.store, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(self.ENV_KEY, text)
        self.assertNotIn("test-env", text)
        data = h.read_yaml(self.store)
        if data is not None:
            self.assertIsNone(data["providers"]["openai"]["api_key"])

        # A key given by set_provider is persisted, but the environment's stays effective.
        upd = c.ok("set_provider", {"provider": "openai", "name": o["name"],
                                    "base_api_url": o["base_api_url"],
                                    "api_key": "sk-bbx-file-5678"})
        self.assertEqual(upd["api_key"], self.ENV_KEY)
        self.assertEqual(c.ok("get", {"provider_name": "openai"})["api_key"], self.ENV_KEY)
        with open(self.store, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(self.ENV_KEY, text)
        self.assertIn("sk-bbx-file-5678", text)
        data = h.read_yaml(self.store)
        if data is not None:
            self.assertEqual(data["providers"]["openai"]["api_key"], "sk-bbx-file-5678")
        # nil clears the stored key only: the file says null, the environment still wins
        upd = c.ok("set_provider", {"provider": "openai", "name": o["name"],
                                    "base_api_url": o["base_api_url"], "api_key": None})
        self.assertEqual(upd["api_key"], self.ENV_KEY)
        data = h.read_yaml(self.store)
        if data is not None:
            self.assertIsNone(data["providers"]["openai"]["api_key"])
        with open(self.store, encoding="utf-8") as f:
            self.assertNotIn("sk-bbx-file-5678", f.read())
        c.ok("set_provider", {"provider": "openai", "name": o["name"],
                              "base_api_url": o["base_api_url"],
                              "api_key": "sk-bbx-file-5678"})
        # a change to another field keeps the stored key in the file
        c.ok("set_provider", {"provider": "openai", "name": "OpenAI renamed",
                              "base_api_url": o["base_api_url"]})
        with open(self.store, encoding="utf-8") as f:
            text = f.read()
        self.assertIn("sk-bbx-file-5678", text)
        self.assertNotIn(self.ENV_KEY, text)
        self.stop_ok(d)

        # Restart with the variable still set: the environment still wins, the file is kept.
        d.start()
        c = d.client()
        self.assertEqual(c.ok("get", {"provider_name": "openai"})["api_key"], self.ENV_KEY)
        c.ok("persist_provider_configs")
        with open(self.store, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn(self.ENV_KEY, text)
        self.assertIn("sk-bbx-file-5678", text)
        self.stop_ok(d)

        # Without the variable, the stored key is the effective one.
        d2 = self.daemon()
        d2.start()
        self.assertEqual(d2.client().ok("get", {"provider_name": "openai"})["api_key"],
                         "sk-bbx-file-5678")
        self.stop_ok(d2)

        logs = d.all_logs() + d2.all_logs()
        for secret in (self.ENV_KEY, "test-env", "sk-bbx-file-5678", "bbx-file"):
            self.assertNotIn(secret, logs, "a secret reached the daemon's log")

    def test_runtime_provider_takes_its_key_from_the_environment(self):
        # The daemon's documented rule (--help): <KEY upper-cased, non-alphanumerics as '_'>
        # + "_API_KEY". Not in protocol-v1 itself; checks the "never written" promise.
        d = self.daemon(env={"BBX_ENV_API_KEY": "sk-bbx-envonly-777"})
        d.start()
        c = d.client()
        cfg = c.ok("set_provider", {"provider": "bbx-env", "name": "E",
                                    "base_api_url": "https://e.test"})
        self.assertEqual(cfg["api_key"], "sk-bbx-envonly-777")
        c.ok("persist_provider_configs")
        with open(self.store, encoding="utf-8") as f:
            self.assertNotIn("envonly", f.read())
        self.stop_ok(d)
        self.assertNotIn("envonly", d.all_logs())

    def test_keys_given_by_requests_are_not_logged(self):
        d = self.daemon(extra_args=["--log-level", "debug"])
        d.start()
        c = d.client()
        c.ok("set_provider", {"provider": "acme", "name": "Acme",
                              "base_api_url": "https://a.test", "api_key": "sk-bbx-secret-9876"})
        c.err("set_provider", {"provider": "BAD", "name": "n", "base_api_url": "https://x",
                               "api_key": "sk-bbx-secret-5555"})
        c.err("set_provider", {"provider": "acme", "name": 1, "base_api_url": "https://x",
                               "api_key": "sk-bbx-secret-4444"})
        self.stop_ok(d)
        logs = d.all_logs()
        for secret in ("bbx-secret-9876", "bbx-secret-5555", "bbx-secret-4444"):
            self.assertNotIn(secret, logs)


if __name__ == "__main__":
    unittest.main()
