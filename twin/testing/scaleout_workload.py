"""A known workload for the multi-line tests and benchmarks: batch messages per line, every reading
with its own source timestamp, so what the store holds can be compared key by key and in order."""

from __future__ import annotations

from collections.abc import Iterator

T0 = 1_790_000_000  # epoch seconds: a fixed day
TAGS = ["gap_actual", "line_load", "roll_speed", "roll_temperature", "thickness_after"]
BASE = {"gap_actual": 65.0, "line_load": 1000.0, "roll_speed": 5.0, "roll_temperature": 60.0,
        "thickness_after": 70.0}

Key = tuple[str, str, int]  # (line, tag id, source ts in ns)


def line_names(n: int) -> list[str]:
    return [f"line-{k + 1}" for k in range(n)]


def reading(line_idx: int, i: int) -> tuple[dict[str, object], Key, float]:
    """The i-th reading of a line: tags cycle, timestamps 1 ms apart (exact in microseconds)."""
    tag = TAGS[i % len(TAGS)]
    line = f"line-{line_idx + 1}"
    ts_us = T0 * 1_000_000 + i * 1000
    value = round(BASE[tag] + (i % 1000) * 0.01, 2)
    item = {"topic": f"pilot/{line}/calendering/{tag}", "ts": ts_us / 1e6, "value": value}
    return item, (line, f"calendering.{tag}", ts_us * 1000), value


def messages(n_lines: int, per_line: int, batch: int) -> Iterator[tuple[str, dict[str, object], dict[Key, float]]]:
    """(topic, payload, {key: value}) of batch messages, lines interleaved message by message."""
    for start in range(0, per_line, batch):
        for li in range(n_lines):
            items, keys = [], {}
            for i in range(start, min(per_line, start + batch)):
                item, key, value = reading(li, i)
                items.append(item)
                keys[key] = value
            yield f"pilot/line-{li + 1}/batch", {"readings": items}, keys
