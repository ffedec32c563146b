"""pmupstream: runs tests/fake_upstream.py (a fake OpenAI-compatible API on 127.0.0.1) for the
suites that need discovery to reach something: test_secrets and test_soak."""

import json
import os
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "..", "fake_upstream.py")


class FakeUpstream:
    """One fake_upstream.py process; url(scenario) is a provider's base_api_url."""

    def __init__(self, config):
        self.proc = subprocess.Popen(
            [sys.executable, FAKE, "--config-json", json.dumps(config), "--port", "0",
             "--exit-on-eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            self.close()
            raise RuntimeError("fake_upstream.py did not print its port: %r" % line)
        self.port = int(line)

    def url(self, scenario):
        return "http://127.0.0.1:%d/%s/v1" % (self.port, scenario)

    def stats(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/_stats" % self.port, timeout=5) as r:
            return json.loads(r.read())

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()
