"""Render bench/results/peers.json as the section "Against the tools users would otherwise pick" of
docs/performance.md (replaces the section if it is there, else appends it).

    .venv/bin/python -m bench.peers.table [--results bench/results/peers.json] [--doc docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TITLE = "## Against the tools users would otherwise pick (issue #23)"
ORDER = ["twin", "node-red-batched", "node-red-per-message", "thingsboard-gateway"]
LABEL = {"twin": "twin", "node-red-batched": "Node-RED batched INSERT",
         "node-red-per-message": "Node-RED INSERT per message", "thingsboard-gateway": "ThingsBoard gateway"}


def rng(xs: list[float], fmt: str = "{:,.0f}") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    lo, hi = min(xs), max(xs)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def ratio(a: list[float], b: list[float]) -> str:
    """b / a over the medians: how many times the contender's figure is the twin's."""
    a, b = sorted(x for x in a if x), sorted(x for x in b if x)
    if not a or not b:
        return "—"
    return f"{b[len(b) // 2] / a[len(a) // 2]:.1f}×"


def render(res: dict[str, Any], restart: dict[str, Any] | None = None) -> str:
    runs = [r for r in res["runs"] if r.get("rep") != "restart"]
    loads = sorted({r["offered_per_s"] for r in runs})
    present = [c for c in ORDER if any(r["contender"] == c for r in runs)]
    v = res["versions"]
    m = res["machine"]
    out = [TITLE, "",
           f"`{res['command']}` → `bench/results/peers.json` (run {res['started']} – {res['finished']}, commit "
           f"`{res['commit'][:12]}`). Render this section with `.venv/bin/python -m bench.peers.table`.", "",
           "The same source for every contender: a node-opcua server none of them wrote (`bench/peers/source_server.js`), "
           "N Double variables changing at 10 Hz, each value the step number with the step's source timestamp, every "
           "change reported (exception-based monitored items), 100 ms publishing interval. Every contender stores "
           "durably in SQLite (WAL, synchronous NORMAL: safe against a process crash, like the twin's default). "
           "Contenders run alternately (order reversed in the second repetition), "
           f"a {int(round(runs[0]['seconds']))} s window per run after a 2 s "
           "warm-up; the set-up installs them from npm and PyPI into git-ignored folders.", "",
           f"Machine: {m['cpus']} cores shared with other jobs; load average (1/5/15 min) "
           f"{'/'.join(str(x) for x in m['loadavg_start'])} at the start, "
           f"{'/'.join(str(x) for x in m['loadavg_end'])} at the end — a loaded machine: absolute figures are "
           "pessimistic, the ratios within the run are what to read.", "",
           "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".", "",
           "How each is set up: **twin** `twin run`, one OPC-UA connector browsing the folder (all N variables in one "
           "subscription, queue 10), embedded SQLite store, defaults otherwise. **Node-RED** node-red-contrib-opcua "
           "`OpcUa-Client` (action subscribe, `topic: \"multiple\"` with every node id: one monitored-item group) → a "
           "function node → node-red-node-sqlite: either one prepared INSERT per message, or rows gathered for 100 ms "
           "(at most 1,000) into one multi-row INSERT in a transaction. **ThingsBoard IoT gateway** its OPC-UA connector "
           "(subscriptions, one device, each variable a time series stamped with the source timestamp), SQLite local "
           "storage, MQTT QoS 1 to a local mosquitto; a stand-in for the platform (`bench/peers/tb_subscriber.py`) "
           "answers the gateway's session-limits call (no limits) and stores what arrives into SQLite; its CPU and "
           "RSS include mosquitto and that subscriber.", "",
           "Measures: stored/s = rows added to the store during the window / window; lost = changes the server made "
           "in the window (its step log × N) − distinct (variable, step) pairs in the store after a drain of up to "
           "10 s; CPU = utime+stime of the contender's process tree from /proc over the window, per 1,000 rows stored "
           "in it; RSS = peak of the tree's summed VmRSS (sampled every 0.25 s); latency = time a change became "
           "visible to a reader of the store − its source timestamp, for 17 probe variables spread over the N, polled "
           "every 20 ms (so it includes up to 20 ms of polling, and the server's own delay in setting N values).", ""]
    hdr = ["changes/s offered", "contender", "stored/s", "lost", "CPU ms per 1,000 stored", "peak RSS MB",
           "p50 ms", "p99 ms"]
    out += ["| " + " | ".join(hdr) + " |", "|" + " --- |" * len(hdr)]
    for load in loads:
        for c in present:
            rs = [r for r in runs if r["offered_per_s"] == load and r["contender"] == c]
            ok = [r for r in rs if "error" not in r]
            if not ok:
                out.append(f"| {load:,} | {LABEL[c]} | failed: {rs[0].get('error', '')[:120]!r} | | | | | |")
                continue
            lost = rng([r["lost"] for r in ok]) + (f" ({rng([r['lost_percent'] for r in ok], '{:.1f}')} %)"
                                                   if any(r["lost"] for r in ok) else "")
            out.append(f"| {load:,} | {LABEL[c]} | {rng([r['stored_per_s_during_window'] for r in ok])} | {lost} | "
                       f"{rng([r['cpu_ms_per_1000'] for r in ok])} | {rng([r['peak_rss_mb'] for r in ok])} | "
                       f"{rng([r['p50_ms'] for r in ok])} | {rng([r['p99_ms'] for r in ok])} |")
    # ratios
    out += ["", "Ratios (median over the repetitions; contender ÷ twin, > 1 means the twin is better):", ""]
    others = [c for c in present if c != "twin"]
    hdr = ["changes/s"] + [f"CPU per change: {LABEL[c]} ÷ twin" for c in others] + \
          [f"p99: {LABEL[c]} ÷ twin" for c in others]
    out += ["| " + " | ".join(hdr) + " |", "|" + " --- |" * len(hdr)]
    for load in loads:
        def col(c: str, key: str, load: float = load) -> list[float]:
            return [r[key] for r in runs if r["offered_per_s"] == load and r["contender"] == c and "error" not in r]
        cells = [ratio(col("twin", "cpu_ms_per_1000"), col(c, "cpu_ms_per_1000")) for c in others]
        cells += [ratio(col("twin", "p99_ms"), col(c, "p99_ms")) for c in others]
        out.append(f"| {load:,} | " + " | ".join(cells) + " |")
    src = restart or res
    rst = [r for r in src["runs"] if r.get("rep") == "restart"]
    if rst:
        after = src.get("method", {}).get("after_restart_s", 3)
        out += ["", f"Source restart (`{src['command']}`, {src['started']}, load average "
                f"{'/'.join(str(x) for x in src['machine']['loadavg_start'])}): the server is killed (SIGKILL) 5 s "
                f"into the window and started again 2 s later on the same port (node-opcua needs a few more seconds "
                f"to listen), then {after:g} s more at {rst[0]['offered_per_s']:,} changes/s. Time from the restarted "
                "server listening to the first new change visible in the store; changes lost from 3 s before the kill "
                "to 5 s after the restart; and of the changes the restarted server made until the end of the window, "
                "how many never reached the store (the server made none while it was down; those are not counted):", "",
                "| contender | first new change stored after restart | lost around the restart | lost after the restart | "
                "lost in the whole window |",
                "| --- | --- | --- | --- | --- |"]
        for r in rst:
            if "error" in r or "restart" not in r:
                out.append(f"| {LABEL[r['contender']]} | failed: {r.get('error', '')[:100]!r} | | | |")
                continue
            x = r["restart"]
            first = x["first_new_change_visible_after_restart_s"]
            la, made = x.get("lost_after_restart"), x.get("made_after_restart")
            la_txt = "—" if la is None else f"{la:,} of {made:,}"
            out.append(f"| {LABEL[r['contender']]} | {'never (within the window)' if first is None else f'{first:.1f} s'} | "
                       f"{x['lost_in_3s_before_kill_to_5s_after_restart']:,} | "
                       f"{la_txt} | {r['lost']:,} |")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "peers.json")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--notes", type=Path, default=Path(__file__).parent / "notes.md",
                    help="hand-written findings appended to the section")
    a = ap.parse_args()
    rpath = a.results.with_name("peers_restart.json")
    section = render(json.loads(a.results.read_text()), json.loads(rpath.read_text()) if rpath.exists() else None)
    if a.notes.exists():
        section += "\n" + a.notes.read_text()
    doc = a.doc.read_text()
    if TITLE in doc:
        head, rest = doc.split(TITLE, 1)
        nxt = rest.find("\n## ")
        doc = head + section + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    a.doc.write_text(doc)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
