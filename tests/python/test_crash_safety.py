"""Crash safety of the persisted file, proven by killing the daemon and by starving its disk.

- SIGKILL at random moments while a client writes in a loop, 200 times: after every kill the
  file parses and equals either the last acknowledged state or the one in flight; the model
  status journal loads at the next start, agrees with the file (one record in valid_models
  per valid model, no other) and status_version never goes back.
- A full disk (a small tmpfs) and a read-only data dir: the write is refused with an error,
  the daemon keeps serving, the old file is byte-identical, nothing changed in memory.

The tmpfs tests need root and mount(2); they are skipped where either is missing.
"""

import glob
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import yaml

from pmharness import Daemon, DaemonTestCase, STORE_FILE

KILLS = int(os.environ.get("PM_CRASH_KILLS", "200"))


def state_of(k):
    """The provider fields written by step k: every step changes name and models."""
    return {"name": "crash-%d" % k,
            "valid_models": {"model-%d" % k: "short-%d" % k, "common": "c-%d" % k}}


def read_crash_provider(path):
    with open(path, "rb") as f:
        doc = yaml.safe_load(f.read().decode("utf-8"))
    p = doc["providers"]["crash"]
    return {"name": p["name"], "valid_models": dict(p["valid_models"])}


class Writer(threading.Thread):
    """Writes step after step until the daemon dies; remembers what was acknowledged."""

    def __init__(self, daemon, first_step):
        super().__init__(daemon=True)
        self.client = daemon.client(timeout=2.0)
        self.step = first_step
        self.acked = first_step - 1
        self.in_flight = None
        self.stop = False

    def run(self):
        while not self.stop:
            k = self.step
            self.in_flight = k
            args = dict(provider="crash", base_api_url="http://127.0.0.1:9/v1", **state_of(k))
            try:
                rep = self.client.call("set_provider", args)
            except Exception:  # the daemon was killed under us
                return
            if not rep.get("ok"):
                return
            self.acked = k
            self.in_flight = None
            self.step += 1


class CrashSafetyTest(unittest.TestCase):
    def check_status(self, d, last_version, kills):
        """The status journal survived the last kill: it loaded, agrees with the providers
        file and its version did not go back. Returns the version now."""
        c = d.client()
        version = c.ok("health")["status_version"]
        self.assertGreaterEqual(version, last_version, "kill %d: status_version went back" % kills)
        if c.ok("contains", {"provider_name": "crash"}):
            valid = c.ok("getitem", {"provider_name": "crash"})["valid_models"]
            records = c.ok("model_status", {"provider": "crash"})
            in_valid = [r["model"] for r in records if r["in_valid_models"]]
            self.assertEqual(in_valid, list(valid), "kill %d: status and file disagree" % kills)
            self.assertTrue(all(r["state"] == "valid" for r in records), records)
        journal = os.path.join(d.data_dir, "model-status.journal")
        self.assertTrue(os.path.exists(journal), "kill %d: no status journal" % kills)
        self.assertEqual(os.stat(journal).st_mode & 0o777, 0o600)
        return version

    def test_sigkill_at_random_moments(self):
        rng = random.Random(20261126)
        tmp = tempfile.mkdtemp(prefix="pm-crash-")
        data_dir = os.path.join(tmp, "data")
        step = 1
        acked_total = 0
        kills = 0
        status_version = 0
        while kills < KILLS:
            d = Daemon(tmpdir=tmp, data_dir=data_dir)
            try:
                d.start()
                status_version = self.check_status(d, status_version, kills)
                w = Writer(d, step)
                w.start()
                # Kill anywhere from "before the first write" to "several writes in".
                time.sleep(rng.uniform(0.0, 0.03))
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
                w.stop = True
                w.join(5)
                kills += 1
                acked_total += max(0, w.acked - step + 1)
                allowed = [state_of(w.acked)] if w.acked >= 1 else []
                if w.in_flight is not None:
                    allowed.append(state_of(w.in_flight))
                path = os.path.join(data_dir, STORE_FILE)
                if w.acked >= 1:
                    self.assertTrue(os.path.exists(path), "kill %d: file missing" % kills)
                if os.path.exists(path):
                    got = read_crash_provider(path) if w.acked >= 1 or w.in_flight else None
                    if got is not None:
                        self.assertIn(got, allowed, "kill %d: file holds a state that was "
                                      "neither acknowledged nor in flight" % kills)
                        # Continue numbering after whatever the file now holds.
                        step = int(got["name"].split("-")[1]) + 1
                    self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
                # Temp files of killed writers must not pile up: the daemon removes stale
                # ones at start-up, so at most the one from this kill is left.
                temps = glob.glob(os.path.join(data_dir, STORE_FILE + ".tmp*"))
                self.assertLessEqual(len(temps), 1, "stale temp files: %r" % temps)
            finally:
                d.cleanup()
        # The loop must have exercised real writes, not only kills before the first one.
        self.assertGreater(acked_total, KILLS // 4)
        # And the last file still loads in a fresh daemon, with the last state.
        d = Daemon(tmpdir=tmp, data_dir=data_dir)
        try:
            d.start()
            cfg = d.client().ok("getitem", {"provider_name": "crash"})
            self.assertEqual(cfg["name"], "crash-%d" % (step - 1))
            rc, _ = d.stop()
            self.assertEqual(rc, 0)
        finally:
            d.cleanup()
            subprocess.run(["rm", "-rf", tmp], check=False)


def _can_mount():
    return os.geteuid() == 0 and subprocess.run(
        ["mount", "--version"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode == 0


class SmallDiskTest(DaemonTestCase):
    """The data dir is a tmpfs of its own, so it can be filled or made read-only."""

    def setUp(self):
        if not _can_mount():
            self.skipTest("needs root and mount")
        self.mnt = tempfile.mkdtemp(prefix="pm-disk-")
        rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs",
                             self.mnt], stderr=subprocess.PIPE)
        if rc.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: %s" % rc.stderr.decode().strip())
        self.addCleanup(self._unmount)
        self.daemon_kwargs = {"data_dir": self.mnt}
        super().setUp()

    def _unmount(self):
        subprocess.run(["umount", "-l", self.mnt], check=False)
        os.rmdir(self.mnt)

    def _baseline(self):
        self.set_provider("disk", valid_models={"a": "a"})
        with open(self.d.store_path, "rb") as f:
            before = f.read()
        return before, self.state_version()

    def _assert_unchanged(self, before, version):
        with open(self.d.store_path, "rb") as f:
            self.assertEqual(f.read(), before, "the old file must be kept byte for byte")
        self.assertEqual(self.state_version(), version)
        cfg = self.c.ok("getitem", {"provider_name": "disk"})
        self.assertEqual(cfg["valid_models"], {"a": "a"})
        self.assertEqual(glob.glob(os.path.join(self.mnt, STORE_FILE + ".tmp*")), [])

    def test_full_disk_keeps_old_file_and_serves(self):
        before, version = self._baseline()
        # ~400 KiB of model names cannot fit in what is left of 256 KiB.
        models = {"big-model-%06d-%s" % (i, "x" * 20): "s" for i in range(10000)}
        rep = self.c.call("set_provider", {"provider": "disk", "name": "Disk",
                                           "base_api_url": "http://127.0.0.1:9/v1",
                                           "valid_models": models})
        self.assert_error(rep, "internal", message_prefix="could not persist providers")
        self._assert_unchanged(before, version)
        # Still serving reads and, once there is room, writes.
        self.assertEqual(self.health()["status"], "ok")
        self.set_provider("disk2", valid_models={"b": "b"})
        self.assertEqual(self.state_version(), version + 1)

    def test_read_only_data_dir_keeps_old_file_and_serves(self):
        before, version = self._baseline()
        subprocess.run(["mount", "-o", "remount,ro", self.mnt], check=True)
        try:
            rep = self.c.call("set_provider", {"provider": "disk", "name": "Disk",
                                               "base_api_url": "http://127.0.0.1:9/v1",
                                               "valid_models": {"c": "c"}})
            self.assert_error(rep, "internal", message_prefix="could not persist providers")
            rep = self.c.call("persist_provider_configs")
            self.assert_error(rep, "internal", message_prefix="could not persist providers")
            self._assert_unchanged(before, version)
            self.assertIn("could not persist providers", self.d.stderr())
        finally:
            subprocess.run(["mount", "-o", "remount,rw", self.mnt], check=True)


if __name__ == "__main__":
    unittest.main()
