"""Line protocol encoding of the twin's records for the InfluxDB backend (schema: twin/store/influx/__init__.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from core.samples import TS_MAX_NS, TS_MIN_NS, DeadLetter, RollEvent, Sample

SAMPLES = "twin_sample"
DEAD_LETTERS = "twin_dead_letter"
ROLLS = "twin_roll"
AUDIT = "twin_audit"
_PRECISION_DIV = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


_TAG_ESC = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r"})


def _tag(value: str) -> str:
    v = value.translate(_TAG_ESC)
    return v[:-1] + "_" if v.endswith("\\") and not v.endswith("\\\\") else v


def _str_field(value: str) -> str:
    """A string field, reversible: JSON-escaped (no raw newlines), then line-protocol-escaped."""
    inner = json.dumps(value, ensure_ascii=False)[1:-1]
    return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unstr(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads('"' + value + '"')
    except ValueError:
        return value


TagInfo = Callable[[str], "tuple[str | None, str | None, str | None]"]


def tag_info_from_tagmap(tagmap: Any) -> TagInfo:
    """(step, kind, role) of a tag id from a :class:`ontology.tagmap.TagMap` (looked up when first
    written, so tags added later, such as predicted ones, are found too)."""

    def info(tag_id: str) -> tuple[str | None, str | None, str | None]:
        t = tagmap.tags.get(tag_id)
        if t is None:
            return None, None, None
        return t.step, getattr(t.kind, "value", str(t.kind)), getattr(t.role, "value", str(t.role))

    return info


class LineProtocol:
    """Renders the twin's records as line protocol (bytes, one point each, no newline)."""

    def __init__(self, precision: str = "ns", roll_as_tag: bool = True, tag_info: TagInfo | None = None,
                 writer: str = "") -> None:
        self.div = _PRECISION_DIV[precision]
        self.roll_as_tag = roll_as_tag
        self.tag_info = tag_info
        self.writer = writer
        self._prefix: dict[tuple[str, str, str, str | None], str] = {}
        self._last_dl_ns = -1
        self._dl_n = 0

    def _series(self, line: str, tag: str, unit: str, roll: str | None) -> str:
        key = (line, tag, unit, roll if self.roll_as_tag else None)
        p = self._prefix.get(key)
        if p is None:
            step, kind, role = self.tag_info(tag) if self.tag_info else (None, None, None)
            if step is None:
                step = tag.split(".", 1)[0] if "." in tag else None
            tags = {"kind": kind, "line": line, "role": role, "step": step, "tag": tag, "unit": unit,
                    "roll": roll if self.roll_as_tag else None}
            p = SAMPLES + "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
            if len(self._prefix) > 100_000:
                self._prefix.clear()
            self._prefix[key] = p
        return p

    def sample(self, s: Sample) -> bytes:
        """Raises ValueError for a point InfluxDB would refuse (HTTP 400 for the whole request): a value
        or web position that is not finite, a timestamp outside int64 ns. At ``write()`` time, inside
        the outbox transaction, so the call stores nothing and the pipeline can find the row."""
        value = float(s.value)
        ts = s.source_ts_ns
        if value - value != 0.0 or not TS_MIN_NS <= ts <= TS_MAX_NS:
            raise ValueError(f"sample {s.tag_id!r}: value {value!r} at {ts} ns cannot be written to InfluxDB "
                             "(not finite, or a time outside int64 nanoseconds)")
        fields = f"value={value!r},quality={int(s.quality)}i,received_ns={s.received_ts_ns}i"
        if s.web_pos_m is not None:
            web = float(s.web_pos_m)
            if web - web != 0.0:
                raise ValueError(f"sample {s.tag_id!r}: web position {web!r} is not finite")
            fields += f",web_pos_m={web!r}"
        if s.roll_id and not self.roll_as_tag:
            fields += ",roll=" + _str_field(s.roll_id)
        return f"{self._series(s.line_id, s.tag_id, s.unit, s.roll_id)} {fields} {s.source_ts_ns // self.div}".encode()

    def dead_letter(self, d: DeadLetter) -> bytes:
        if d.received_ts_ns == self._last_dl_ns:
            self._dl_n += 1
        else:
            self._last_dl_ns, self._dl_n = d.received_ts_ns, 0
        tags = {"connector": d.connector, "line": d.line_id, "n": str(self._dl_n) if self._dl_n else None,
                "reason_code": d.reason_code, "source": getattr(d.source, "value", str(d.source)),
                "writer": self.writer}
        head = DEAD_LETTERS + "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
        fields = (f"address={_str_field(d.address)},reason={_str_field(d.reason)},"
                  f"payload={_str_field(d.payload)},received_ns={d.received_ts_ns}i")
        return f"{head} {fields} {d.received_ts_ns // self.div}".encode()

    def roll(self, r: RollEvent) -> bytes:
        head = f"{ROLLS},line={_tag(r.line_id)},roll={_tag(r.roll_id)},step={_tag(r.step)}"
        return f"{head} tag_id={_str_field(r.tag_id)} {r.source_ts_ns // self.div}".encode()

    def audit(self, kind: str, ref: str, line_id: str | None, body_json: str, actor: str | None, ts_ns: int) -> bytes:
        """A point of ``twin_audit``: tags kind, ref, line; fields body (JSON text) and actor."""
        tags = {"kind": kind, "ref": ref, "line": line_id}
        head = AUDIT + "".join(f",{k}={_tag(v)}" for k, v in sorted(tags.items()) if v)
        fields = f"body={_str_field(body_json)}"
        if actor:
            fields += f",actor={_str_field(actor)}"
        return f"{head} {fields} {ts_ns // self.div}".encode()
