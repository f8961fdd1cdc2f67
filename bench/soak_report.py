"""The soak's verdict: slopes after the warm-up, quiet-point growth, and
whether every disruption really happened as Vigil itself saw it.

Used by bench/soak.py; writes summary.json and summary.md into the output
folder and prints the same table.
"""

import json
import os
import re

import numpy as np

# The bar: RSS growth under 1 MiB per hour after the warm-up.
RSS_MIB_PER_H = 1.0


def slope_per_hour(ts, ys):
    """Least-squares slope per hour and its standard error (None with < 3 points)."""
    if len(ts) < 3:
        return None, None
    x = np.asarray(ts, float) / 3600.0
    y = np.asarray(ys, float)
    b, c = np.polyfit(x, y, 1)
    res = y - (b * x + c)
    sxx = float(((x - x.mean()) ** 2).sum())
    se = float(np.sqrt((res ** 2).sum() / (len(x) - 2) / sxx)) if sxx > 0 else None
    return float(b), se


def metric(text, name, label=None):
    """One value of a Prometheus text exposition (summed over series when no label is given)."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m and (label is None or label in (m.group(1) or "")):
            total += float(m.group(2))
            found = True
    return total if found else None


def delta(end, start, *path):
    a, b = end, start
    for p in path:
        a, b = a[p], b[p]
    return a - b


def camera(h, name):
    return next(c for c in h["cameras"] if c["name"] == name)


def summarise(soak, a):
    rows = [r for r in soak.samples if r["phase"] == "soak"]
    ts = [r["t_s"] for r in rows]
    s = {"result": soak.result, "minutes": a.minutes, "warmup_minutes": a.warmup_minutes,
         "interval_s": a.interval_s, "clients": a.clients, "seed": a.seed,
         "samples": len(soak.samples), "samples_after_warmup": len(rows), "series": {},
         "checkpoints": soak.checkpoints, "vigil_exit_code": soak.vigil_exit,
         "vigil_stop_s": getattr(soak, "vigil_stop_s", None)}
    for key in ("rss_mib", "rss_anon_mib", "fds", "threads", "threads_other", "threads_runtime", "outbox_waiting"):
        ys = [r[key] for r in rows]
        # The outbox's depth follows the broker's outages, not time: no trend to fit.
        b, se = slope_per_hour(ts, ys) if key != "outbox_waiting" else (None, None)
        third = len(ys) // 3
        s["series"][key] = {"min": min(ys, default=None), "max": max(ys, default=None),
                            "slope_per_h": b, "slope_se": se,
                            # A leak raises the floor; load only lifts the peaks.
                            "floor_first_third": min(ys[:third]) if third else None,
                            "floor_last_third": min(ys[-third:]) if third else None}
    # Vigil's list of recent events fills up (RECENT_EVENTS) before RSS can level off.
    full = [r for r in rows if r["outbox_written"] >= soak.recent_cap]
    b, se = slope_per_hour([r["t_s"] for r in full], [r["rss_mib"] for r in full])
    s["event_list"] = {"cap": soak.recent_cap, "full_at_s": full[0]["t_s"] if full else None,
                       "rss_slope_per_h_once_full": b, "slope_se": se, **getattr(soak, "recent_events", {})}
    all_rows = soak.samples
    if len(all_rows) >= 2:
        span = all_rows[-1]["t_s"] - all_rows[0]["t_s"]
        s["cpu_percent"] = round(100 * (all_rows[-1]["cpu_s"] - all_rows[0]["cpu_s"]) / span, 1) if span else None
    s["peak_outbox_waiting"] = max((r["outbox_waiting"] for r in all_rows), default=None)

    inj = {}
    for d in soak.disruptions:
        if d["action"] != "back":
            k = f"{d['what']}_{d['action']}"
            inj[k] = inj.get(k, 0) + 1
    s["injected"] = inj
    s["disruptions"] = soak.disruptions
    s["seen_by_polling_healthz"] = soak.seen
    start, end = getattr(soak, "start_health", None), soak.last_health
    if start and end:
        s["vigil_counters"] = {
            "camera_reconnects": {c["name"]: delta(camera(end, c["name"]), c, "reconnects") for c in start["cameras"]},
            "mqtt_connects": delta(end, start, "mqtt", "connects"),
            "events_written": delta(end, start, "outbox", "written"),
            "events_delivered": delta(end, start, "outbox", "delivered"),
            "events_dropped": delta(end, start, "outbox", "dropped"),
            "mqtt_acknowledged": delta(end, start, "mqtt", "acknowledged"),
            "snapshots_written": delta(end, start, "outbox", "snapshots_written"),
            "detections_dropped": delta(end, start, "mqtt", "detections_dropped"),
        }
    text = getattr(soak, "metrics", None)
    if text:
        s["metrics_at_end"] = {
            "vigil_camera_reconnects_total{rtsp}": metric(text, "vigil_camera_reconnects_total", 'camera="rtsp"'),
            "vigil_camera_reconnects_total{pattern}": metric(text, "vigil_camera_reconnects_total",
                                                             'camera="pattern"'),
            "vigil_mqtt_connects_total": metric(text, "vigil_mqtt_connects_total"),
        }
    if hasattr(soak, "sub"):
        s["subscriber"] = {"events": len(soak.sub.events), "detections": soak.sub.detections}
    if hasattr(soak, "clients"):
        s["web_clients"] = soak.clients.stats
        s["client_errors"] = soak.clients.errors[:20]
    return s


def verdicts(s):
    """(name, passed, why) for each check."""
    out = []
    rss = s["series"]["rss_mib"]["slope_per_h"]
    out.append(("RSS slope after warm-up", rss is not None and rss < RSS_MIB_PER_H,
                f"{rss:+.2f} MiB/h (bar: < {RSS_MIB_PER_H})" if rss is not None else "too few samples"))
    cp = s["checkpoints"]
    w, e = cp.get("after warm-up"), cp.get("end")
    for key, name in (("fds", "open fds"), ("threads_other", "threads (other than tokio's)")):
        if w and e:
            out.append((f"{name} at quiet points", e[key] <= w[key], f"{w[key]} after warm-up, {e[key]} at the end"))
        else:
            out.append((f"{name} at quiet points", False, "a quiet point is missing"))
    rt = s["series"]["threads_runtime"]
    if rt["floor_first_third"] is not None:
        out.append(("tokio's threads: the floor does not rise", rt["floor_last_third"] <= rt["floor_first_third"],
                    f"fewest in the first third after warm-up {rt['floor_first_third']}, in the last third "
                    f"{rt['floor_last_third']} (quiet points: {w and w['threads_runtime']}, {e and e['threads_runtime']})"))
    else:
        out.append(("tokio's threads: the floor does not rise", False, "too few samples after the warm-up"))
    seen = s["seen_by_polling_healthz"]
    for what, counter in (("camera", "the RTSP camera's reconnects"), ("broker", "mqtt.connects")):
        done = [d for d in s["disruptions"] if d["what"] == what and d["action"] != "back"]
        # A disruption still open when a run is cut short has no count yet.
        done = [d for d in done if "vigil_counted" in d]
        missed = [f"{d['action']} at {d['t_s']:.0f} s" for d in done if d["vigil_counted"] < 1]
        extra = (f"; /healthz showed the RTSP camera leave `streaming` {seen['camera_drops'].get('rtsp', 0)} times"
                 if what == "camera" else f"; /healthz showed the link lost {seen['mqtt_lost']} times")
        out.append((f"every {what} disruption counted by Vigil", bool(done) and not missed,
                    f"{len(done)} injected, {len(done) - len(missed)} raised {counter}"
                    + (f" (not: {', '.join(missed)})" if missed else "") + extra))
    steady = seen["camera_drops"].get("pattern", 0)
    steady_reconnects = s.get("vigil_counters", {}).get("camera_reconnects", {}).get("pattern")
    out.append(("the undisturbed camera kept streaming", steady == 0 and steady_reconnects == 0,
                f"{steady_reconnects} reconnects, {steady} drops seen"))
    out.append(("healthy and drained at the end", bool(e and e["healthy"]),
                f"recovered in {e['recovered_s']} s, outbox waiting {e['outbox_waiting']}" if e else "not reached"))
    out.append(("clean shutdown on SIGTERM", s["vigil_exit_code"] == 0,
                f"exit code {s['vigil_exit_code']} after {s['vigil_stop_s']} s"))
    if "web_clients" in s:
        none = [k for k, v in s["web_clients"].items() if v["sessions"] == 0]
        out.append(("every kind of web client ran", not none, f"none of: {', '.join(none)}" if none else
                    f"{sum(v['sessions'] for v in s['web_clients'].values())} sessions"))
    out.append(("the run completed", s["result"] == "completed", s["result"]))
    return out


def fmt(v, digits=1):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(s):
    cp = s["checkpoints"]
    w, e = cp.get("after warm-up", {}), cp.get("end", {})
    head = ["", "min", "max", "slope/h", "± se", "quiet, warm-up end", "quiet, end"]
    lines = []
    for key, name, d in (("rss_mib", "RSS (MiB)", 1), ("rss_anon_mib", "RssAnon (MiB)", 1), ("fds", "open fds", 0),
                         ("threads", "threads", 0), ("threads_other", "  not tokio's", 0),
                         ("threads_runtime", "  tokio's (vigil-rt)", 0), ("outbox_waiting", "outbox waiting", 0)):
        v = s["series"][key]
        lines.append([name, fmt(v["min"], d), fmt(v["max"], d), fmt(v["slope_per_h"], 2), fmt(v["slope_se"], 2),
                      fmt(w.get(key), d), fmt(e.get(key), d)])
    return head, lines


def event_list_line(s):
    ev = s["event_list"]
    if ev["full_at_s"] is None:
        when = f"never reached {ev['cap']} events in this run, so RSS after the warm-up includes its filling"
    else:
        when = (f"held {ev['cap']} events from {ev['full_at_s']:.0f} s; RSS slope from then: "
                f"{fmt(ev['rss_slope_per_h_once_full'], 2)} ± {fmt(ev['slope_se'], 2)} MiB/h")
    size = f" (at the end: {ev['held']} events, {ev['json_bytes_each']} bytes of JSON each)" if "held" in ev else ""
    return f"Vigil's in-memory list of recent events {when}{size}."


def markdown(s, checks):
    head, lines = table(s)
    md = [f"# Vigil soak: {s['minutes']:g} min, warm-up {s['warmup_minutes']:g} min",
          "",
          f"{s['samples']} samples every {s['interval_s']:g} s ({s['samples_after_warmup']} after the warm-up, "
          f"outside the quiet points), {s['clients']} web clients at a time, seed {s['seed']}. "
          f"Vigil's CPU: {fmt(s.get('cpu_percent'))} % of one core on average. Result: {s['result']}.",
          "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in lines]
    md += ["", event_list_line(s)]
    md += ["", "Slopes are least-squares fits over the samples after the warm-up (outside the quiet points). "
           "A quiet point is three samples, 2 s apart, taken once every disruption is undone, no web client "
           "is connected, both cameras stream and the outbox is drained, after 12 more seconds: RSS is their "
           "median, counts their fewest (what comes and goes only adds; a leak stays in all three). Tokio's "
           "blocking pool keeps as many threads as its busiest moment needed while blocking work keeps "
           "arriving, so its count is judged by its floor over the run.", "",
           "| check | result | detail |", "|---|---|---|"]
    md += [f"| {n} | {'pass' if ok else '**FAIL**'} | {why} |" for n, ok, why in checks]
    md += ["", "## Disruptions and what Vigil counted", "", "```json",
           json.dumps({k: s.get(k) for k in ("injected", "seen_by_polling_healthz", "vigil_counters",
                                             "metrics_at_end", "subscriber", "peak_outbox_waiting")}, indent=1),
           "```", "", "## Web clients", "", "| kind | sessions | ok | failed | statuses | MiB | parts |",
           "|---|---|---|---|---|---|---|"]
    for k, v in s.get("web_clients", {}).items():
        md.append(f"| {k} | {v['sessions']} | {v['ok']} | {v['failed']} | {v['statuses']} | "
                  f"{v['bytes'] / 2**20:.1f} | {v['parts']} |")
    w, e = s["checkpoints"].get("after warm-up"), s["checkpoints"].get("end")
    if w and e:
        md += ["", "## What changed between the two quiet points", ""]
        for key, name in (("thread_names", "threads"), ("fd_targets", "open fds")):
            diff = {k: e[key].get(k, 0) - w[key].get(k, 0) for k in set(w[key]) | set(e[key])}
            diff = {k: v for k, v in sorted(diff.items()) if v}
            md.append(f"- {name}: " + (", ".join(f"`{k}` {v:+d}" for k, v in diff.items()) or "no change"))
    if s.get("client_errors"):
        md += ["", "Client errors (first 20):", ""] + [f"- `{e}`" for e in s["client_errors"]]
    return "\n".join(md) + "\n"


def report(soak, a):
    s = summarise(soak, a)
    checks = verdicts(s)
    s["checks"] = [{"check": n, "passed": ok, "detail": why} for n, ok, why in checks]
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(s, f, indent=1)
    with open(os.path.join(a.out, "summary.md"), "w") as f:
        f.write(markdown(s, checks))
    head, lines = table(s)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    print()
    for r in [head] + lines:
        print("  ".join(c.rjust(wd) if i else c.ljust(wd) for i, (c, wd) in enumerate(zip(r, widths))))
    print("\n" + event_list_line(s) + "\n")
    for n, ok, why in checks:
        print(f"{'pass' if ok else 'FAIL'}  {n}: {why}")
    vc = s.get("vigil_counters", {})
    print(f"\nevents written {vc.get('events_written')}, delivered {vc.get('events_delivered')}, "
          f"dropped {vc.get('events_dropped')}; subscriber saw {s.get('subscriber', {}).get('events')}; "
          f"peak outbox {s['peak_outbox_waiting']}")
    print(f"summary: {os.path.join(a.out, 'summary.md')}")
    return all(ok for _, ok, _ in checks)
