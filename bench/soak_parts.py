"""The soak's moving parts: the processes it runs (Mosquitto, the RTSP test
server, Vigil), the web clients that come and go, and an MQTT subscriber.
Used by bench/soak.py.
"""

import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt

TICK = os.sysconf("SC_CLK_TCK")
# How long a web client stays on a live stream (MJPEG, SSE), in seconds.
STREAM_STAY_S = (2, 8)
# The name of Vigil's tokio threads: its workers and its blocking pool, which
# grows with concurrent blocking work (outbox appends, JPEG encoding) and lets
# a thread go after 10 s idle, so its size at any moment follows the load.
RUNTIME_THREADS = "vigil-rt"


class Abort(Exception):
    pass


def _die_with_parent(sig):
    # PR_SET_PDEATHSIG fires when the spawning *thread* ends, so every child
    # is spawned from the main thread, which lives as long as this process.
    def set_it():
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)
    return set_it


def spawn(cmd, log, sig=signal.SIGKILL, **kw):
    assert threading.current_thread() is threading.main_thread()
    return subprocess.Popen(cmd, stderr=log, preexec_fn=_die_with_parent(sig), start_new_session=True, **kw)


def stop(p, sig=signal.SIGKILL, wait=10):
    """Ends one child we started, by its pid; returns its exit code."""
    if p is None or p.poll() is not None:
        return None if p is None else p.returncode
    try:
        p.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        p.send_signal(sig)
        return p.wait(wait)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def until(what, cond, timeout, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise Abort(f"timed out after {timeout} s waiting for {what}")


class Broker:
    def __init__(self, work, log):
        self.port, self.log = free_port(), log
        self.conf = os.path.join(work, "mosquitto.conf")
        user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip() or "root"
        with open(self.conf, "w") as f:
            f.write(f"user {user}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n")
        self.p = None
        self.start()

    def start(self):
        self.p = spawn(["mosquitto", "-c", self.conf], self.log, stdout=subprocess.DEVNULL)
        until("Mosquitto to listen", lambda: listening(self.port) or self.p.poll() is not None, 10)
        if self.p.poll() is not None:
            raise Abort(f"mosquitto exited with {self.p.returncode}; see mosquitto.log")


class RtspServer:
    def __init__(self, binary, log):
        self.binary, self.port, self.log, self.p = binary, free_port(), log, None
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.start()

    def start(self):
        self.p = spawn([self.binary, "--port", str(self.port), "--width", "640", "--height", "480", "--fps", "10"],
                       self.log, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.p.stdout.readline()
        if not line.startswith("ready "):
            raise Abort(f"RTSP test server did not start ({line!r}); see rtsp-server.log")
        # Its later replies (`stalled`, `resumed`) are drained so it never blocks on a full pipe.
        threading.Thread(target=self.p.stdout.read, daemon=True).start()

    def command(self, word):
        self.p.stdin.write(word + "\n")
        self.p.stdin.flush()


def vigil_config(data_dir, broker_port, rtsp_url, model):
    # Zones, a line and a rule on each camera so every event path runs:
    # tracks, zone enter/exit, crossings, a safety alert with its snapshot.
    scene = ('zones = [{ name = "left", polygon = [[0.0, 0.0], [0.33, 0.0], [0.33, 1.0], [0.0, 1.0]] }]\n'
             'lines = [{ name = "middle", from = [0.5, 0.0], to = [0.5, 1.0] }]\n')
    cfg = f"""device_id = "soak"
data_dir = "{data_dir}"

[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
keep_alive_s = 5

[http]
listen = "127.0.0.1:0"

[events]
publish_detections = true
snapshots = true

[[models]]
name = "ball"
path = "{model}"
confidence = 0.5

[[cameras]]
name = "rtsp"
source = "{rtsp_url}"
fps = 10
model = "ball"
rtsp_transport = "tcp"
latency_ms = 50
stall_timeout_s = 3
{scene}
[[cameras]]
name = "pattern"
source = "test://ball?width=640&height=480&fps=15"
fps = 15
model = "ball"
{scene}"""
    for cam in ("rtsp", "pattern"):
        cfg += (f'\n[[rules]]\nname = "{cam}-left"\ntype = "safety"\ncamera = "{cam}"\nlabels = ["ball"]\n'
                f'zone = "left"\nmin_duration_s = 1\n')
    return cfg


class Vigil:
    def __init__(self, binary, work, out, broker_port, rtsp_url, model):
        data = os.path.join(work, "data")
        cfg = os.path.join(work, "vigil.toml")
        with open(cfg, "w") as f:
            f.write(vigil_config(data, broker_port, rtsp_url, model))
        shutil.copy(cfg, os.path.join(out, "vigil.toml"))
        self.log = open(os.path.join(out, "vigil.log"), "w")
        self.p = spawn([binary, "run", "--config", cfg], self.log, sig=signal.SIGTERM,
                       stdout=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "info"})
        self.host = None
        for line in self.p.stdout:
            if line.strip().startswith("web page: http://"):
                self.host = line.strip()[len("web page: http://"):].rstrip("/")
                break
        if not self.host:
            raise Abort("Vigil did not start; see vigil.log")
        threading.Thread(target=self.p.stdout.read, daemon=True).start()
        tok = os.path.join(data, "api-token")
        until("the API token", lambda: os.path.exists(tok), 10)
        self.auth = {"Authorization": "Bearer " + open(tok).read().strip()}

    def get(self, path, timeout=5):
        req = urllib.request.Request(f"http://{self.host}{path}", headers=self.auth)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def health(self):
        return json.loads(self.get("/healthz"))

    def proc(self):
        """RSS, fds by kind, threads and CPU seconds, from /proc."""
        pid, s = self.p.pid, {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile"):
                    s[k] = round(int(v.split()[0]) / 1024, 2)
                elif k == "Threads":
                    s[k] = int(v)
        kinds = {"socket": 0, "pipe": 0, "anon_inode": 0, "file": 0}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed between listing and reading
            kind = target.split(":", 1)[0] if ":" in target and not target.startswith("/") else "file"
            kinds[kind if kind in kinds else "file"] += 1
        pool = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    pool += f.read().strip() == RUNTIME_THREADS
            except OSError:
                continue  # the thread ended between listing and reading
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        return {"rss_mib": s["VmRSS"], "rss_anon_mib": s["RssAnon"], "rss_file_mib": s["RssFile"],
                "fds": sum(kinds.values()), **{f"fd_{k}": v for k, v in kinds.items()},
                "threads": s["Threads"], "threads_runtime": pool, "threads_other": s["Threads"] - pool,
                "cpu_s": cpu}


    def census(self):
        """Threads by name and fds by target, to tell what grew between two quiet points."""
        pid, threads, fds = self.p.pid, {}, {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            threads[name] = threads.get(name, 0) + 1
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            target = target.split("[", 1)[0] if not target.startswith("/") else target
            fds[target] = fds.get(target, 0) + 1
        return {"thread_names": dict(sorted(threads.items())), "fd_targets": dict(sorted(fds.items()))}


class Clients:
    """`n` workers, each opening one short web session after another while enabled."""

    KINDS = [("mjpeg", 3), ("sse", 2), ("snapshot", 2), ("event_snapshot", 1), ("metrics", 1),
             ("healthz", 1), ("events", 1)]

    def __init__(self, vigil, cameras, n, seed):
        self.v, self.cameras = vigil, cameras
        self.enabled, self.stopped = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.open = 0
        self.stats = {k: {"sessions": 0, "ok": 0, "failed": 0, "statuses": {}, "bytes": 0, "parts": 0}
                      for k, _ in self.KINDS}
        self.errors = []
        self.threads = [threading.Thread(target=self._work, args=(random.Random(seed * 1000 + i),), daemon=True)
                        for i in range(n)]
        for t in self.threads:
            t.start()

    def _work(self, rng):
        kinds, weights = zip(*self.KINDS)
        while not self.stopped.is_set():
            if not self.enabled.wait(0.5):
                continue
            kind = rng.choices(kinds, weights)[0]
            with self.lock:
                self.open += 1
            try:
                status, nbytes, parts = self._session(kind, rng)
                ok = status == 200
            except (OSError, http.client.HTTPException, ValueError) as e:
                status, nbytes, parts, ok = type(e).__name__, 0, 0, False
                if len(self.errors) < 50:
                    self.errors.append(f"{kind}: {e!r}")
            finally:
                with self.lock:
                    self.open -= 1
            with self.lock:
                st = self.stats[kind]
                st["sessions"] += 1
                st["ok" if ok else "failed"] += 1
                st["statuses"][str(status)] = st["statuses"].get(str(status), 0) + 1
                st["bytes"] += nbytes
                st["parts"] += parts
            self.stopped.wait(rng.uniform(0.2, 2.0))

    def _session(self, kind, rng):
        cam = rng.choice(self.cameras)
        if kind == "event_snapshot":
            # The newest event that points at a snapshot, fetched as a viewer would.
            events = json.loads(self.v.get("/api/v1/events?limit=50"))["events"]
            refs = [e["snapshot"] for e in events if isinstance(e.get("snapshot"), str)]
            if not refs:
                return "none yet", 0, 0
            path = refs[-1]
        else:
            path = {"mjpeg": f"/api/v1/cameras/{cam}/stream.mjpg", "sse": "/api/v1/events/stream",
                    "snapshot": f"/api/v1/cameras/{cam}/snapshot.jpg", "metrics": "/metrics",
                    "healthz": "/healthz", "events": "/api/v1/events?limit=100"}[kind]
        host, port = self.v.host.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", path, headers=self.v.auth)
            r = conn.getresponse()
            if kind not in ("mjpeg", "sse") or r.status != 200:
                return r.status, len(r.read()), 0
            # Stay a few seconds, reading as a browser would, then hang up.
            marker = b"--vigilframe" if kind == "mjpeg" else b"data:"
            leave = time.monotonic() + rng.uniform(*STREAM_STAY_S)
            nbytes, parts, tail = 0, 0, b""
            while (left := leave - time.monotonic()) > 0 and not self.stopped.is_set():
                conn.sock.settimeout(max(left, 0.05))
                try:
                    chunk = r.read1(65536)
                except TimeoutError:
                    break  # nothing new (a camera that is down): leave on time anyway
                if not chunk:
                    raise ValueError(f"{path} ended early")
                nbytes += len(chunk)
                buf = tail + chunk
                parts += buf.count(marker)
                tail = buf[-(len(marker) - 1):]
            return 200, nbytes, parts
        finally:
            conn.close()

    def idle(self):
        with self.lock:
            return self.open == 0


class Subscriber:
    """Counts what a real consumer receives: events (by id) and detection messages."""

    def __init__(self, port, topics):
        self.events, self.detections, self.lock = set(), 0, threading.Lock()
        self.topics = topics
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.c.reconnect_delay_set(0.5, 2)
        self.c.on_connect = lambda c, *_: [c.subscribe(t, qos=1) for t in topics.values() if t]
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on(self, _c, _u, msg):
        with self.lock:
            if msg.topic == self.topics["events"]:
                try:
                    self.events.add(json.loads(msg.payload).get("id"))
                except ValueError:
                    self.events.add(("unparsable", len(self.events)))
            else:
                self.detections += 1

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()
