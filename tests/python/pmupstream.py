"""pmupstream: runs tests/fake_upstream.py (a fake OpenAI-compatible API on 127.0.0.1) for the
suites that need discovery to reach something (test_secrets, test_soak, test_model_status),
and drives its control interface: run-time changes of a scenario's model list, metadata and
per-model behaviour, and the per-provider list / per-model probe counters."""

import json
import os
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "..", "fake_upstream.py")
CONTROL_TIMEOUT = 5.0


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

    # ------------------------------------------------------------ control interface
    def _get(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path),
                                    timeout=CONTROL_TIMEOUT) as r:
            return json.loads(r.read())

    def _post(self, path, obj):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path),
                                     data=json.dumps(obj).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=CONTROL_TIMEOUT) as r:
            return json.loads(r.read())

    def stats(self):
        return self._get("/_stats")

    def config(self):
        """The fake's current config (every run-time change applied)."""
        return self._get("/_config")

    def configure(self, config):
        """Replaces the whole config and resets every counter."""
        return self._post("/_config", config)

    def reset(self, scenario=None):
        """Clears the counters (of one scenario, or all)."""
        return self._post("/_reset", {"scenario": scenario} if scenario else {})

    def update(self, scenario, **fields):
        """Changes one scenario at run time without touching any counter: fields replace the
        scenario's (None removes), add_models / remove_models edit the list, set_behaviour /
        set_meta merge per model (see fake_upstream.py)."""
        body = {"scenario": scenario}
        body.update(fields)
        return self._post("/_scenario", body)

    def set_models(self, scenario, models):
        return self.update(scenario, models=list(models))

    def set_behaviour(self, scenario, model, behaviour):
        """behaviour: "ok", "not_found", "does_not_exist", "unauthorized", "forbidden",
        "rate_limited", "server_error", "slow", "close", or {"do": ..., ...}; None = default."""
        return self.update(scenario, set_behaviour={model: behaviour})

    def set_list_behaviour(self, scenario, behaviour):
        return self.update(scenario, list_behaviour=behaviour)

    def counts(self, scenario):
        """(lists, {model: probes}) seen by one scenario since its last reset."""
        s = self._get("/_counts")["scenarios"].get(scenario, {})
        return s.get("list", 0), dict(s.get("probe", {}))

    def lists(self, scenario):
        return self.counts(scenario)[0]

    def probes(self, scenario, model=None):
        """Probes of one model, or of every model of the scenario together."""
        per_model = self.counts(scenario)[1]
        return per_model.get(model, 0) if model is not None else sum(per_model.values())

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
