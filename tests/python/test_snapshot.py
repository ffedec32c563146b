"""Black-box suite for the consistent snapshot and the replicable events (wire contract v1.1,
"Snapshot and replicable events", readings 1-2 of "Replicas, roles, metrics"): the `snapshot`
op, "configs" and "epoch" in `changed` events, heartbeats, and the Clone pattern done by hand
(subscribe, snapshot, apply the events above it, compare with a fresh snapshot).

It drives the real daemon over ZeroMQ + msgpack exactly as the contract says (pmharness) and
shares no code with the C client. Every wait is bounded.

Run: PM_DAEMON=.../provider-manager python3 -m unittest -v test_snapshot  (in tests/python)
"""

import re
import threading
import time
import unittest

import zmq

import pmharness as h

SNAPSHOT_KEYS = {"state_version", "status_version", "epoch", "providers"}
CHANGED_KEYS = {"event", "state_version", "providers", "configs", "epoch"}
HEARTBEAT_KEYS = {"event", "state_version", "status_version", "epoch"}
EPOCH = re.compile(r"^[0-9a-f]{16}$")
HEARTBEAT_MS = 50
WAIT = 5.0 * h.TIMEOUT_SCALE


class EventLog:
    """A SUB socket on topic "providers" with no receive high-water mark, read by a thread
    into a list, so that a test that is busy writing loses no event to its own slowness."""

    def __init__(self, daemon):
        self.sock = daemon.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"providers")
        self.sock.connect(daemon.events_endpoint)
        self.events = []  # (monotonic arrival time, decoded body)
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping:
            if not self.sock.poll(50, zmq.POLLIN):
                continue
            frames = self.sock.recv_multipart()
            body = h.unpack(frames[-1])
            with self.lock:
                self.events.append((time.monotonic(), frames[0], body))
                self.lock.notify_all()

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close(linger=0)

    def wait_for(self, predicate, timeout=WAIT, start=0):
        """Waits until an event at index >= start satisfies predicate; returns its index."""
        deadline = time.monotonic() + timeout
        with self.lock:
            i = start
            while True:
                while i < len(self.events):
                    if predicate(self.events[i][2]):
                        return i
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no matching event within %.1f s (%d events)"
                                         % (timeout, len(self.events)))
                self.lock.wait(left)

    def snapshot_of_events(self):
        with self.lock:
            return list(self.events)


def is_heartbeat(ev):
    return ev.get("event") == "heartbeat"


def is_changed(ev):
    return ev.get("event") == "changed"


def apply_event(state, ev):
    """One `changed` event applied to a replica (an insertion-ordered dict key -> config, the
    registry's order: a new key goes last, a replaced one keeps its place)."""
    for key, cfg in zip(ev["providers"], ev["configs"]):
        if cfg is None:
            state.pop(key, None)
        else:
            state[key] = cfg


def as_state(snapshot):
    return {cfg["provider"]: cfg for cfg in snapshot["providers"]}


class SnapshotTestBase(h.DaemonTestCase):
    daemon_kwargs = {"extra_args": ["--heartbeat-ms", str(HEARTBEAT_MS)]}

    def events(self):
        log = EventLog(self.d)
        self.addCleanup(log.close)
        # The subscription is live once a heartbeat arrives: nothing is missed after it.
        log.wait_for(is_heartbeat)
        return log

    def writes(self, c, prefix, count, seed):
        """count changes of every kind on keys prefix-0.. (new, replaced, short names,
        removals), deterministic in seed."""
        for i in range(count):
            key = "%s-%d" % (prefix, (i * 7 + seed) % 5)
            kind = (i + seed) % 4
            if kind == 3:
                c.ok("remove_provider", {"provider": key})
            elif kind == 2:
                cfg = c.ok("get", {"provider_name": key})
                if cfg and cfg["valid_models"]:
                    c.ok("set_short_name", {"provider": key,
                                            "long_name": sorted(cfg["valid_models"])[0],
                                            "short_name": "s%d" % i})
                else:
                    self.set_provider(key, c=c, valid_models={"m%d" % i: "m%d" % i})
            else:
                self.set_provider(key, c=c, name="%s %d" % (key, i),
                                  valid_models={"m%d" % i: "short%d" % i, "x%d" % seed: "y"},
                                  invalid_models=["bad%d" % i])


class SnapshotOpTest(SnapshotTestBase):

    def test_snapshot_shape_equals_values_and_health(self):
        for step in range(3):
            snap = self.c.ok("snapshot")
            self.assertEqual(set(snap), SNAPSHOT_KEYS, snap.keys())
            health = self.c.ok("health")
            for key in ("state_version", "status_version", "epoch"):
                self.assertEqual(snap[key], health[key], key)
            self.assertIs(type(snap["state_version"]), int)
            self.assertIs(type(snap["status_version"]), int)
            self.assertRegex(snap["epoch"], EPOCH)
            self.assertEqual(snap["providers"], self.c.ok("values"))
            self.assertEqual([p["provider"] for p in snap["providers"]], self.c.ok("keys"))
            for cfg in snap["providers"]:
                self.assertEqual(set(cfg), h.PROVIDER_KEYS, cfg)
            self.set_provider("snap-%d" % step, valid_models={"a": "b"})
        self.assertEqual(self.c.ok("snapshot")["state_version"], 3)

    def test_snapshot_takes_no_arguments_and_is_a_read(self):
        before = self.c.ok("snapshot")
        again = self.c.ok("snapshot", {})
        self.assertEqual(before, again)
        # Extra arguments are ignored as for every op; nothing changes.
        self.assertEqual(self.c.ok("snapshot", {"provider": "x"}), before)
        self.assertEqual(self.c.ok("health")["state_version"], before["state_version"])
        # With a request id, as any op.
        rep = self.c.call("snapshot", {}, id="s1")
        self.assertEqual(list(rep), ["ok", "id", "result"])
        self.assertEqual(rep["id"], "s1")


class EventsTest(SnapshotTestBase):

    def test_changed_events_carry_configs_and_epoch(self):
        log = self.events()
        start = len(log.snapshot_of_events())
        epoch = self.c.ok("health")["epoch"]
        replies = [self.set_provider("ev-a", valid_models={"m1": "s1"}),
                   self.c.ok("set_short_name", {"provider": "ev-a", "long_name": "m1",
                                                "short_name": "s2"}),
                   self.set_provider("ev-b", valid_models={})]
        self.assertIs(self.c.ok("remove_provider", {"provider": "ev-a"}), True)
        replies.append(None)
        got = []
        i = start
        while len(got) < len(replies):
            i = log.wait_for(is_changed, start=i) + 1
            got.append(log.snapshot_of_events()[i - 1][2])
        sv = self.c.ok("health")["state_version"]
        for n, (ev, reply) in enumerate(zip(got, replies)):
            self.assertEqual(set(ev), CHANGED_KEYS, ev)
            self.assertEqual(ev["state_version"], sv - len(replies) + 1 + n)
            self.assertEqual(len(ev["configs"]), len(ev["providers"]))
            self.assertEqual(ev["configs"], [reply])  # nil for the removal
            self.assertEqual(ev["epoch"], epoch)

    def test_heartbeat_cadence_and_content(self):
        log = self.events()
        first = log.wait_for(is_heartbeat)
        count = 21
        last = first
        for _ in range(count - 1):
            last = log.wait_for(is_heartbeat, start=last + 1)
        events = log.snapshot_of_events()
        beats = [(t, ev) for t, _topic, ev in events[first:last + 1] if is_heartbeat(ev)]
        self.assertEqual(len(beats), count)
        health = self.c.ok("health")
        for _t, ev in beats:
            self.assertEqual(set(ev), HEARTBEAT_KEYS, ev)
            self.assertEqual(ev["state_version"], health["state_version"])
            self.assertEqual(ev["status_version"], health["status_version"])
            self.assertEqual(ev["epoch"], health["epoch"])
        self.assertTrue(all(topic == b"providers" for _t, topic, _e in events))
        mean_ms = (beats[-1][0] - beats[0][0]) * 1000 / (count - 1)
        # The service keeps its schedule; generous bounds for a loaded machine.
        self.assertGreaterEqual(mean_ms, HEARTBEAT_MS * 0.8, mean_ms)
        self.assertLessEqual(mean_ms, HEARTBEAT_MS * 3, mean_ms)

        # After a change, heartbeats carry its version, and only after its event.
        start = len(log.snapshot_of_events())
        self.set_provider("beat", valid_models={"m": "m"})
        sv = self.c.ok("health")["state_version"]
        idx = log.wait_for(lambda e: is_heartbeat(e) and e["state_version"] == sv, start=start)
        seen = [ev for _t, _topic, ev in log.snapshot_of_events()[start:idx + 1]]
        changed_at = [n for n, ev in enumerate(seen) if is_changed(ev)]
        self.assertEqual(len(changed_at), 1, seen)
        for n, ev in enumerate(seen):
            if is_heartbeat(ev):
                self.assertEqual(ev["state_version"], sv if n > changed_at[0] else sv - 1)

    def test_heartbeat_flag_bounds(self):
        for bad in ("9", "60001", "x"):
            d = h.Daemon(extra_args=["--heartbeat-ms", bad])
            self.addCleanup(d.cleanup)
            d.spawn()
            self.assertEqual(d.proc.wait(10), 2)
            self.assertIn("--heartbeat-ms", d.stderr())


class RestartTest(SnapshotTestBase):

    def test_epoch_changes_across_restart_and_state_version_restarts(self):
        self.set_provider("keep-a", valid_models={"m": "s"})
        self.set_provider("keep-b")
        before = self.c.ok("snapshot")
        self.assertEqual(before["state_version"], 2)
        self.assert_clean_stop(self.d)
        self.d.start()
        self.c = self.d.client()
        after = self.c.ok("snapshot")
        self.assertRegex(after["epoch"], EPOCH)
        self.assertNotEqual(after["epoch"], before["epoch"])
        self.assertEqual(after["state_version"], 0)
        self.assertEqual(after["providers"], before["providers"])  # persisted
        self.assertEqual(self.c.ok("health")["epoch"], after["epoch"])
        log = self.events()
        # wait_for first: the list must be taken after the event it waits for has arrived.
        at = log.wait_for(is_heartbeat)
        beat = log.snapshot_of_events()[at][2]
        self.assertEqual(beat["epoch"], after["epoch"])
        self.set_provider("keep-c")
        at = log.wait_for(is_changed)
        ev = log.snapshot_of_events()[at][2]
        self.assertEqual((ev["epoch"], ev["state_version"]), (after["epoch"], 1))


class ClonePatternTest(SnapshotTestBase):

    WRITERS = 3
    WRITES = 60

    def run_writers(self, prefix):
        errors = []

        def writer(n):
            try:
                c = self.d.client()
                # A prefix of its own: a short name set after a get needs the key unchanged.
                self.writes(c, "%s%d" % (prefix, n), self.WRITES, n)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(self.WRITERS)]
        for t in threads:
            t.start()
        return threads, errors

    def test_snapshots_are_atomic_under_concurrent_writes(self):
        log = self.events()
        base = self.c.ok("snapshot")
        threads, errors = self.run_writers("at")
        snaps = []
        reader = self.d.client()
        while any(t.is_alive() for t in threads):
            snaps.append(reader.ok("snapshot"))
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        final = self.c.ok("snapshot")
        snaps.append(final)
        log.wait_for(lambda e: is_heartbeat(e) and e["state_version"] == final["state_version"])
        changes = [ev for _t, _topic, ev in log.snapshot_of_events()
                   if is_changed(ev) and ev["state_version"] > base["state_version"]]
        versions = [ev["state_version"] for ev in changes]
        self.assertEqual(versions, list(range(base["state_version"] + 1,
                                              final["state_version"] + 1)),
                         "events lost or out of order")
        self.assertGreater(len(snaps), 3)
        # Taken while the writes went on: some at versions strictly between base and final.
        between = {s["state_version"] for s in snaps} - {base["state_version"],
                                                         final["state_version"]}
        self.assertGreaterEqual(len(between), 2, "the snapshots did not overlap the writes")
        # Every state from base onwards, rebuilt from the events; each snapshot must equal
        # the one at its state_version exactly (keys, order, configs).
        state = as_state(base)
        at = {base["state_version"]: list(state.values())}
        for ev in changes:
            apply_event(state, ev)
            at[ev["state_version"]] = list(state.values())
        for snap in snaps:
            self.assertEqual(snap["epoch"], base["epoch"])
            self.assertIn(snap["state_version"], at)
            self.assertEqual(snap["providers"], at[snap["state_version"]],
                             "snapshot at %d is not the state at that version"
                             % snap["state_version"])

    def test_clone_pattern_by_hand(self):
        # Subscribe first, then snapshot, while writes go on; drop events at or below the
        # snapshot's version, apply the rest, and end equal to a fresh snapshot.
        log = self.events()
        threads, errors = self.run_writers("cl")
        time.sleep(0.05)
        snap = self.c.ok("snapshot")
        replica = as_state(snap)
        applied = snap["state_version"]
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        fresh_version = self.c.ok("health")["state_version"]
        # Caught up: a heartbeat at the final version follows every change event.
        log.wait_for(lambda e: is_heartbeat(e) and e["state_version"] == fresh_version)
        for _t, _topic, ev in log.snapshot_of_events():
            if ev["epoch"] != snap["epoch"]:
                self.fail("event of another epoch: %r" % ev)
            if is_heartbeat(ev):
                # Above the last applied version: a change was missed (the pattern would
                # re-snapshot; here nothing may be missed).
                self.assertLessEqual(ev["state_version"], applied, "missed a change")
                continue
            if ev["state_version"] <= applied:
                continue
            self.assertEqual(ev["state_version"], applied + 1, "gap in the events")
            apply_event(replica, ev)
            applied = ev["state_version"]
        fresh = self.c.ok("snapshot")
        self.assertEqual(applied, fresh["state_version"])
        self.assertEqual(list(replica.values()), fresh["providers"])


if __name__ == "__main__":
    unittest.main()
