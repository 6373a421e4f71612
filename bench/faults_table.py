"""Render the fault-injection results (bench/results/faults_*.json, written by tests/faults/) as the
table in docs/reliability.md, between the markers ``<!-- fault table -->`` and ``<!-- /fault table -->``.

    .venv/bin/python -m bench.faults_table            # rewrite the table in docs/reliability.md
    .venv/bin/python -m bench.faults_table --print    # print it only

Each row names the result file it came from, its commit and date; a case whose checks failed says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- fault table -->", "<!-- /fault table -->"


def _n(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.2f}"
    if isinstance(x, dict):
        return ", ".join(f"{k} {_n(v)}" for k, v in sorted(x.items())) or "0"
    return str(x)


def _fuzz_row(d: dict[str, Any]) -> dict[str, Any]:
    c = d["counts"]
    r = c.get("restart", {})
    return {
        "fault": "hostile MQTT payloads, topics, units, timestamps, ids (hypothesis), interleaved with valid readings",
        "load": f"{c['generated_messages']:,} generated + {c['interleaved_valid_messages']:,} valid messages "
                f"({c['publish_s']:.0f} s)",
        "sent": f"{c['valid_readings']:,} valid + {c['invalid_readings']:,} invalid + {c['either_readings']:,} "
                "either-way readings",
        "stored": c["stored"],
        "dead_lettered": c["dead_letters_by_code"],
        "dropped": 0,
        "dropped_by_policy": None,
        "recovery_s": r.get("api_to_ok_s"),
        "recovery": "restart after the run: API up -> ok",
        "note": (f"valid missing {c['valid_missing']}, invalid stored {c['invalid_stored']}, internal errors "
                 f"{_n(c['metrics'].get('internal_errors'))}; /healthz not ok in {c['health_not_ok']} of "
                 f"{c['health_samples']} samples; peak RSS {c['peak_rss_mib']:.0f} MiB (bound "
                 f"{c['rss_bound_mib']:.0f}); after restart {r.get('samples_after_restart', 0) - c['stored']} "
                 f"new rows, {r.get('fresh_stored')}/{r.get('fresh_sent')} fresh readings stored"),
    }


def _abuse_row(d: dict[str, Any]) -> dict[str, Any]:
    c = d["counts"]
    by_status: dict[str, int] = {}
    for k, v in c["requests_by_area_and_status"].items():
        status = k.rsplit(":", 1)[1]
        by_status[status] = by_status.get(status, 0) + v
    return {
        "fault": "API abuse: bad tokens, far-out and malformed times, huge parameters and bodies",
        "load": f"{c['requests']} requests; answers {_n(by_status)}",
        "sent": c["readings_sent_during_abuse"], "stored": c["stored"], "dead_lettered": c["dead_letters"],
        "dropped": 0, "dropped_by_policy": None, "recovery_s": None, "recovery": "–",
        "note": f"no 5xx; /healthz not ok in {c['health_not_ok']} of {c['health_samples']} samples; "
                f"peak RSS {c['peak_rss_mib']:.0f} MiB",
    }


def rows() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for path in sorted(RESULTS.glob("faults_*.json")):
        d = json.loads(path.read_text())
        if d.get("case") == "fuzz_mqtt" or path.stem.startswith("faults_fuzz_mqtt"):
            row = _fuzz_row(d)
        elif d.get("case") == "api_abuse":
            row = _abuse_row(d)
        else:
            row = d.get("table_row")
        if row:
            out.append((path.name, d, row))
    return out


def table() -> str:
    lines = ["| fault | load | sent | stored | dead-lettered | dropped (policy) | recovery | notes | result |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, d, r in rows():
        rec = "–" if r.get("recovery_s") is None else f"{r['recovery_s']:.2f} s ({r.get('recovery', '')})"
        dropped = _n(r.get("dropped"))
        if r.get("dropped_by_policy"):
            dropped += f" ({r['dropped_by_policy']})"
        ok = "pass" if d.get("passed") else "**FAIL**: " + str(d.get("failed_check") or d.get("problems"))[:200]
        lines.append(f"| {r['fault']} | {r['load']} | {_n(r.get('sent'))} | {_n(r.get('stored'))} | "
                     f"{_n(r.get('dead_lettered'))} | {dropped} | {rec} | {r.get('note', '')} | {ok}: "
                     f"`{name}`, {str(d.get('commit', ''))[:8]}, {d.get('date', '')} |")
    return "\n".join(lines)


def main() -> int:
    text = table()
    if "--print" in sys.argv:
        print(text)
        return 0
    doc = DOC.read_text()
    if START not in doc:
        raise SystemExit(f"{DOC} has no {START} marker")
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1] if END in rest else ""
    DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(f"wrote {len(text.splitlines()) - 2} rows into {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
