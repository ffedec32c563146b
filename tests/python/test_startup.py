"""Start-up failures get their exit status and a message that says what is wrong:
2 usage or configuration, 3 data directory or providers file, 4 an endpoint that cannot be
bound; and a data directory is never shared by two daemons."""

import os
import socket
import subprocess
import tempfile
import unittest

from pmharness import Daemon, STORE_FILE, clean_env, daemon_path, free_port


def run_daemon(args, timeout=10):
    """Runs the daemon expecting it to exit by itself; returns (status, stderr)."""
    proc = subprocess.run([daemon_path()] + args, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env(),
                          timeout=timeout)
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


class StartupFailureTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="pm-start-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.tmp])

    def endpoints(self):
        return ["--endpoint", "tcp://127.0.0.1:%d" % free_port(),
                "--events-endpoint", "tcp://127.0.0.1:%d" % free_port()]

    def test_unknown_flag_is_a_usage_error(self):
        status, err = run_daemon(["--no-such-flag"])
        self.assertEqual(status, 2)
        self.assertIn("--no-such-flag", err)

    def test_unreadable_config_file(self):
        missing = os.path.join(self.tmp, "missing.yaml")
        status, err = run_daemon(["--config", missing, "--data-dir",
                                  os.path.join(self.tmp, "d")] + self.endpoints())
        self.assertEqual(status, 2)
        self.assertIn(missing, err)

    def test_unusable_data_dir(self):
        not_a_dir = os.path.join(self.tmp, "file")
        with open(not_a_dir, "w") as f:
            f.write("x")
        status, err = run_daemon(["--data-dir", not_a_dir] + self.endpoints())
        self.assertEqual(status, 3)
        self.assertIn(not_a_dir, err)

    def test_port_in_use(self):
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        status, err = run_daemon(["--endpoint", "tcp://127.0.0.1:%d" % port,
                                  "--events-endpoint", "tcp://127.0.0.1:%d" % free_port(),
                                  "--data-dir", os.path.join(self.tmp, "d")])
        self.assertEqual(status, 4)
        self.assertIn("tcp://127.0.0.1:%d" % port, err)
        self.assertIn("in use", err)

    def test_data_dir_is_never_shared_and_stale_temps_go(self):
        data = os.path.join(self.tmp, "data")
        os.makedirs(data, mode=0o700)
        stale = os.path.join(data, STORE_FILE + ".tmp.AbC123")
        with open(stale, "w") as f:
            f.write("providers: {half: ")
        d = Daemon(tmpdir=self.tmp, data_dir=data)
        self.addCleanup(d.cleanup)
        d.start()
        self.assertFalse(os.path.exists(stale), "a killed writer's temp file must be removed")
        status, err = run_daemon(["--data-dir", data] + self.endpoints())
        self.assertEqual(status, 3)
        self.assertIn("in use by another provider-manager", err)
        self.assertEqual(d.client().ok("health")["status"], "ok")
        rc, _ = d.stop()
        self.assertEqual(rc, 0)


if __name__ == "__main__":
    unittest.main()
