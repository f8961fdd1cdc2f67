#!/usr/bin/env python3
"""Vigil under a long, unkind run: does anything grow that should not?

Run through bench/soak.sh (it builds Vigil and the RTSP test server first):

  bench/soak.sh [--minutes 30] [--warmup-minutes M] [--interval-s 10] [--out DIR]
                [--clients 3] [--seed N]

One Vigil runs two cameras (an RTSP camera served by vigil-rtsp-test-server,
and a `test://ball` pattern) with the ball model, zones, a counting line and
a safety rule on each, snapshots on and per-frame detections published, for
`--minutes`. Meanwhile one main loop, on a timetable drawn from `--seed`:

  camera   the RTSP server is killed (SIGKILL) and restarted on the same port
           after 5-15 s, or told to `stall` (the session stays open, no
           frames come) until Vigil's watchdog (stall_timeout_s = 3)
           reconnects, alternately. (A stall lasts only until that reconnect:
           the test server starts each new session unstalled.)
  broker   Mosquitto is killed (SIGKILL) and restarted, or frozen (SIGSTOP)
           and thawed (SIGCONT), alternately, for 15-30 s: the outbox fills
           and drains.
  clients  `--clients` workers open MJPEG views and the SSE event stream for a
           few seconds each and leave, and fetch live and event snapshots,
           /metrics, /healthz and the event list, with the API token.
  sampler  every `--interval-s`: VmRSS/RssAnon, open fds (by kind), threads
           (tokio's and the rest) and CPU time from /proc, and /healthz
           (outbox depth, camera and broker states, Vigil's own counters).
           /healthz is also polled every second.

Each disruption must show in Vigil's own counters (the camera's
`reconnects`, `mqtt.connects`) before the next one of its kind.

Twice the run pauses the disruptions and clients and waits until Vigil is
healthy, drained and idle: at the end of the warm-up and at the end of the
run. Open fds and threads other than tokio's at those two quiet points are
the growth verdict (clients and outages make the live counts swing by a few,
which a slope over a short run mistakes for a trend). Tokio's blocking pool
keeps the threads its busiest moment needed for as long as blocking work
keeps arriving (every event is an outbox write), so its count is judged by
its floor: the fewest in the last third after the warm-up must not exceed the
fewest in the first third. RSS is judged by its least-squares slope after
the warm-up. Output (--out): samples.csv, disruptions.csv, summary.json,
summary.md, vigil.toml, vigil.log, mosquitto.log, rtsp-server.log.
Every process started here is stopped on exit, Ctrl-C and errors alike (and
is told by the kernel to die if this script is killed outright).
"""

import argparse
import csv
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time

from soak_parts import Abort, Broker, Clients, RtspServer, Subscriber, Vigil, stop, until
from soak_report import report

# How long each disruption stays away, and how long the system runs between
# two of the same kind, in seconds (drawn uniformly). A frozen broker needs
# more than twice the keep-alive (5 s here) before Vigil can tell.
CAMERA_UP, CAMERA_DOWN = (30, 60), (5, 15)
BROKER_UP, BROKER_DOWN = (40, 80), (15, 30)
# An idle tokio blocking pool lets its threads go after 10 s: wait longer
# before counting threads at a quiet point.
QUIET_S = 12
# Vigil keeps this many recent events in memory (pipeline's RECENT_EVENTS):
# RSS grows until that many have been written, whatever the warm-up.
RECENT_EVENTS = 1000


def _on_signal(signum, _frame):
    raise Abort(f"stopped by {signal.Signals(signum).name}")


def now_s(t0):
    return round(time.monotonic() - t0, 2)


class Soak:
    def __init__(self, a):
        self.a, self.rng = a, random.Random(a.seed)
        self.t0 = time.monotonic()
        self.samples, self.disruptions, self.checkpoints = [], [], {}
        self.seen = {"camera_drops": {}, "camera_recoveries": {}, "mqtt_lost": 0, "mqtt_regained": 0,
                     "health_failures": 0}
        self.last_health, self.prev_states = None, {}
        self.camera = "up"  # or killed / stalled
        self.broker_state = "up"  # or killed / stopped
        self.next_camera = self.t0 + 20
        self.next_broker = self.t0 + 30
        self.camera_back = self.broker_back = None
        self.camera_kind, self.broker_kind = "kill", "kill"
        self.next_sample = self.t0
        self.pending = {}
        self.recent_cap = RECENT_EVENTS

    # --- watching Vigil -------------------------------------------------------

    def poll_health(self):
        if self.vigil.p.poll() is not None:
            raise Abort(f"Vigil exited with code {self.vigil.p.returncode}; see vigil.log")
        try:
            h = self.vigil.health()
        except (OSError, ValueError):
            self.seen["health_failures"] += 1
            return self.last_health
        for c in h["cameras"]:
            prev = self.prev_states.get(c["name"])
            if prev == "streaming" and c["state"] != "streaming":
                self.seen["camera_drops"][c["name"]] = self.seen["camera_drops"].get(c["name"], 0) + 1
            if prev not in (None, "streaming") and c["state"] == "streaming":
                self.seen["camera_recoveries"][c["name"]] = self.seen["camera_recoveries"].get(c["name"], 0) + 1
            self.prev_states[c["name"]] = c["state"]
        prev = self.prev_states.get("mqtt")
        if prev == "connected" and h["mqtt"]["state"] != "connected":
            self.seen["mqtt_lost"] += 1
        if prev not in (None, "connected") and h["mqtt"]["state"] == "connected":
            self.seen["mqtt_regained"] += 1
        self.prev_states["mqtt"] = h["mqtt"]["state"]
        self.last_health = h
        return h

    def sample(self, phase):
        h, p = self.last_health, self.vigil.proc()
        row = {"t_s": now_s(self.t0), "phase": phase, **p,
               "outbox_waiting": h["outbox"]["waiting"], "outbox_written": h["outbox"]["written"],
               "outbox_delivered": h["outbox"]["delivered"], "outbox_dropped": h["outbox"]["dropped"],
               "snapshots_written": h["outbox"]["snapshots_written"],
               "mqtt_state": h["mqtt"]["state"], "mqtt_connects": h["mqtt"]["connects"],
               "mqtt_acknowledged": h["mqtt"]["acknowledged"],
               "detections_dropped": h["mqtt"]["detections_dropped"],
               "injected_camera": self.camera, "injected_broker": self.broker_state,
               "clients_open": self.clients.open, "subscriber_events": len(self.sub.events)}
        for c in h["cameras"]:
            row[f"cam_{c['name']}_state"] = c["state"]
            row[f"cam_{c['name']}_reconnects"] = c["reconnects"]
            row[f"cam_{c['name']}_frames"] = c["frames_received"]
        self.samples.append(row)
        return row

    # --- disruptions ----------------------------------------------------------

    def log(self, what, action):
        self.disruptions.append({"t_s": now_s(self.t0), "what": what, "action": action})
        print(f"[soak] {now_s(self.t0):8.1f} s  {what}: {action}", flush=True)

    def counter(self, what):
        """Vigil's own count of recoveries from this kind of disruption."""
        h = self.poll_health()
        if what == "camera":
            return next(c["reconnects"] for c in h["cameras"] if c["name"] == "rtsp")
        return h["mqtt"]["connects"]

    def open_disruption(self, what):
        """Closes the previous disruption of this kind (what Vigil counted
        between it and now: nothing else disturbed that counter meanwhile),
        and remembers the counter for this one."""
        self.close_disruption(what)
        self.pending[what] = (len(self.disruptions), self.counter(what))

    def close_disruption(self, what):
        if what in self.pending:
            i, before = self.pending.pop(what)
            self.disruptions[i]["vigil_counted"] = self.counter(what) - before

    def drop_camera(self):
        self.open_disruption("camera")
        if self.camera_kind == "kill":
            stop(self.rtsp.p)
            self.camera = "killed"
        else:
            self.rtsp.command("stall")
            self.camera = "stalled"
        self.log("camera", self.camera)
        self.camera_back = time.monotonic() + self.rng.uniform(*CAMERA_DOWN)

    def restore_camera(self):
        if self.camera == "killed":
            self.rtsp.start()
        elif self.camera == "stalled":
            self.rtsp.command("resume")
        if self.camera != "up":
            self.log("camera", "back")
        self.camera = "up"
        self.camera_kind = "stall" if self.camera_kind == "kill" else "kill"
        self.next_camera = time.monotonic() + self.rng.uniform(*CAMERA_UP)

    def drop_broker(self):
        self.open_disruption("broker")
        if self.broker_kind == "kill":
            stop(self.broker.p)
            self.broker_state = "killed"
        else:
            self.broker.p.send_signal(signal.SIGSTOP)
            self.broker_state = "stopped"
        self.log("broker", self.broker_state)
        self.broker_back = time.monotonic() + self.rng.uniform(*BROKER_DOWN)

    def restore_broker(self):
        if self.broker_state == "killed":
            self.broker.start()
        elif self.broker_state == "stopped":
            self.broker.p.send_signal(signal.SIGCONT)
        if self.broker_state != "up":
            self.log("broker", "back")
        self.broker_state = "up"
        self.broker_kind = "stop" if self.broker_kind == "kill" else "kill"
        self.next_broker = time.monotonic() + self.rng.uniform(*BROKER_UP)

    def step_disruptions(self):
        t = time.monotonic()
        if self.camera == "up" and t >= self.next_camera:
            self.drop_camera()
        elif self.camera != "up" and t >= self.camera_back:
            self.restore_camera()
        if self.broker_state == "up" and t >= self.next_broker:
            self.drop_broker()
        elif self.broker_state != "up" and t >= self.broker_back:
            self.restore_broker()

    # --- the run --------------------------------------------------------------

    def tick(self, phase):
        """One pass of the main loop: health every second, a sample when due."""
        self.poll_health()
        if time.monotonic() >= self.next_sample:
            self.sample(phase)
            self.next_sample += self.a.interval_s
            while self.next_sample < time.monotonic():  # a slow restore must not cause a burst
                self.next_sample += self.a.interval_s

    def healthy(self, h):
        return (h is not None and h["mqtt"]["state"] == "connected" and h["outbox"]["waiting"] <= 2
                and all(c["state"] == "streaming" for c in h["cameras"]))

    def quiesce(self, label, timeout=120):
        """Everything restored, clients gone, Vigil healthy and drained, then
        QUIET_S idle seconds; records three samples and how long recovery took."""
        started = time.monotonic()
        if self.camera != "up":
            self.restore_camera()
        if self.broker_state != "up":
            self.restore_broker()
        self.clients.enabled.clear()
        recovered = None
        while time.monotonic() - started < timeout:
            h = self.poll_health()
            if recovered is None and self.healthy(h) and self.clients.idle():
                recovered = time.monotonic() - started
            if recovered is not None and time.monotonic() - started >= recovered + QUIET_S:
                break
            time.sleep(1)
        rows = []
        for _ in range(3):
            self.poll_health()
            rows.append(self.sample("quiet-" + label))
            time.sleep(2)
        # RSS: the median. Counts: the fewest, since a thread or socket that
        # comes and goes only adds, while a leaked one stays in every sample.
        med = {k: sorted(r[k] for r in rows)[1] for k in ("rss_mib", "rss_anon_mib")}
        med.update({k: min(r[k] for r in rows) for k in ("fds", "threads", "threads_runtime", "threads_other")})
        cp = {"t_s": now_s(self.t0), "recovered_s": None if recovered is None else round(recovered, 1),
              "healthy": self.healthy(self.last_health), **med,
              "outbox_waiting": self.last_health["outbox"]["waiting"]}
        print(f"[soak] {now_s(self.t0):8.1f} s  quiet point '{label}': {cp}", flush=True)
        self.checkpoints[label] = {**cp, **self.vigil.census()}
        # Timers restart from here so the pause is not followed by a burst of disruptions.
        t = time.monotonic()
        self.next_camera = max(self.next_camera, t + 10)
        self.next_broker = max(self.next_broker, t + 20)

    def run(self):
        a = self.a
        os.makedirs(a.out, exist_ok=True)
        work = tempfile.mkdtemp(prefix="vigil-soak-")
        logs = {n: open(os.path.join(a.out, n), "w") for n in ("mosquitto.log", "rtsp-server.log")}
        try:
            self.broker = Broker(work, logs["mosquitto.log"])
            self.rtsp = RtspServer(a.rtsp_server, logs["rtsp-server.log"])
            self.vigil = Vigil(a.vigil, work, a.out, self.broker.port, self.rtsp.url, a.model)
            print(f"[soak] Vigil pid {self.vigil.p.pid} at http://{self.vigil.host}/, broker :{self.broker.port}, "
                  f"camera {self.rtsp.url}; {a.minutes} min, warm-up {a.warmup_minutes} min, "
                  f"sample every {a.interval_s} s; output in {a.out}", flush=True)
            until("both cameras streaming and the broker connected",
                  lambda: self.healthy(self.poll_health()), 120, every=1)
            self.sub = Subscriber(self.broker.port, {"events": self.last_health["topics"]["events"],
                                                     "detections": self.last_health["topics"]["detections"]})
            self.clients = Clients(self.vigil, [c["name"] for c in self.last_health["cameras"]], a.clients, a.seed)
            self.start_health = self.last_health
            self.seen = {k: ({} if isinstance(v, dict) else 0) for k, v in self.seen.items()}
            self.t0 = time.monotonic()
            self.next_sample, self.next_camera, self.next_broker = self.t0, self.t0 + 20, self.t0 + 30
            end, warm_end = self.t0 + a.minutes * 60, self.t0 + a.warmup_minutes * 60
            self.clients.enabled.set()
            warmed = False
            while time.monotonic() < end:
                if not warmed and time.monotonic() >= warm_end:
                    self.quiesce("after warm-up")
                    self.clients.enabled.set()
                    warmed = True
                self.step_disruptions()
                began = time.monotonic()
                self.tick("warm-up" if not warmed else "soak")
                time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
            self.quiesce("end")
            self.close_disruption("camera")
            self.close_disruption("broker")
            self.metrics = self.vigil.get("/metrics").decode()
            # Vigil keeps its latest events in memory (1000 at most): how many
            # it holds now, and their size as JSON, to weigh the RSS they cost.
            held = json.loads(self.vigil.get(f"/api/v1/events?limit={RECENT_EVENTS}", timeout=30))["events"]
            self.recent_events = {"held": len(held),
                                  "json_bytes_each": round(sum(len(json.dumps(e)) for e in held) / max(len(held), 1))}
            self.result = "completed"
        except (Abort, KeyboardInterrupt) as e:
            self.result = f"aborted: {e or 'Ctrl-C'}"
            print(f"[soak] {self.result}", file=sys.stderr, flush=True)
        finally:
            self.shutdown()
            for f in logs.values():
                f.close()
            shutil.rmtree(work, ignore_errors=True)
        return self.result == "completed"

    def shutdown(self):
        # Ignore further Ctrl-C while stopping what we started.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if hasattr(self, "clients"):
            self.clients.stopped.set()
            self.clients.enabled.clear()
            for t in self.clients.threads:
                t.join(15)
        if hasattr(self, "sub"):
            self.sub.stop()
        self.vigil_exit = None
        if hasattr(self, "broker") and self.broker.p.poll() is None:
            self.broker.p.send_signal(signal.SIGCONT)  # a fair shutdown: the broker answers again
        if hasattr(self, "vigil"):
            t = time.monotonic()
            self.vigil_exit = stop(self.vigil.p, signal.SIGTERM, wait=30)
            self.vigil_stop_s = round(time.monotonic() - t, 2)
            self.vigil.log.close()
        if hasattr(self, "rtsp"):
            stop(self.rtsp.p)
        if hasattr(self, "broker"):
            stop(self.broker.p)


def write_csv(path, rows):
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--warmup-minutes", type=float, help="default: a sixth of the run (5 of 30 minutes)")
    ap.add_argument("--interval-s", type=float, default=10)
    ap.add_argument("--out", help="default: .vigil/soak/<date-time>")
    ap.add_argument("--clients", type=int, default=3, help="web clients at a time")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--vigil", required=True)
    ap.add_argument("--rtsp-server", required=True)
    ap.add_argument("--model", required=True)
    a = ap.parse_args()
    a.vigil, a.rtsp_server, a.model = map(os.path.abspath, (a.vigil, a.rtsp_server, a.model))
    if a.warmup_minutes is None:
        a.warmup_minutes = a.minutes / 6
    if not (0 <= a.warmup_minutes < a.minutes) or a.interval_s <= 0 or a.clients < 0:
        ap.error("need 0 <= --warmup-minutes < --minutes, --interval-s > 0, --clients >= 0")
    a.out = os.path.abspath(a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".vigil",
                                                  "soak", time.strftime("%Y%m%d-%H%M%S")))
    # SIGINT too: a shell that starts this in the background leaves SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    soak = Soak(a)
    ok = soak.run()
    write_csv(os.path.join(a.out, "samples.csv"), soak.samples)
    write_csv(os.path.join(a.out, "disruptions.csv"), soak.disruptions)
    passed = report(soak, a)
    sys.exit(0 if ok and passed else 1)


if __name__ == "__main__":
    main()
