"""Lab rows from JSON objects and CSV files, normalised to :class:`LabRow` (never raises on bad input).

A row names the roll, the position range on the roll (``start_m`` / ``end_m`` along the web, or one
``position_m``), the quantity (its name in ``[lab] quantities`` or its ontology term), the value and its
unit; optional: ``line_id``, ``method``, ``sample_id``, ``measured_at`` (ISO 8601 with offset). A CSV file
has a header with these names (case-insensitive; a few aliases). Excel exports are read as they come: a
UTF-8 byte-order mark, ``;`` separators with decimal commas (``41,2``), or Windows-1252 text.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from core.samples import parse_time_ns, safe_text
from twin.lab.catalog import RowError

ALIASES = {
    "roll_id": ("roll_id", "roll", "lot", "lot_id", "rolle"),
    "line_id": ("line_id", "line"),
    "start_m": ("start_m", "from_m", "start", "position_start_m"),
    "end_m": ("end_m", "to_m", "end", "position_end_m"),
    "position_m": ("position_m", "web_pos_m", "web_position_m", "pos_m"),
    "quantity": ("quantity", "parameter", "property", "term"),
    "value": ("value", "wert", "result"),
    "unit": ("unit", "einheit", "units"),
    "method": ("method", "methode"),
    "sample_id": ("sample_id", "sample", "probe"),
    "measured_at": ("measured_at", "measured", "timestamp", "ts", "time"),
}
_FIELD_OF = {alias: field for field, names in ALIASES.items() for alias in names}
MAX_TEXT = 256


@dataclass(frozen=True)
class LabRow:
    line_id: str | None
    roll_id: str
    start_m: float
    end_m: float
    quantity: str
    value: float
    unit: str | None
    method: str
    sample_id: str
    measured_ns: int | None


@dataclass(frozen=True)
class Parsed:
    """One input row: its number in the delivery (1-based, the header not counted), its raw text for a
    dead letter, and the row or the reason it is refused."""

    n: int
    raw: str
    row: LabRow | None
    error: RowError | None


def _number(v: Any, name: str, decimal_comma: bool) -> float:
    if isinstance(v, bool):
        raise RowError(f"{name} must be a number, got {v!r}", "wrong_type")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        t = v.strip().replace("\u00a0", "").replace(" ", "")
        if decimal_comma and "," in t:
            t = t.replace(".", "").replace(",", ".")
        try:
            return float(t)
        except ValueError:
            raise RowError(f"{name} {safe_text(v, 40)!r} is not a number", "wrong_type") from None
    raise RowError(f"{name} must be a number, got {type(v).__name__}", "wrong_type")


def _text(v: Any, name: str, required: bool) -> str:
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise RowError(f"{name} is missing", "malformed_payload")
        return ""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise RowError(f"{name} must be text, got {type(v).__name__}", "wrong_type")
    t = str(v).strip()
    if len(t) > MAX_TEXT or "\x00" in t:
        raise RowError(f"{name} is longer than {MAX_TEXT} characters or holds NUL", "bad_text")
    try:
        t.encode("utf-8")
    except UnicodeEncodeError:
        raise RowError(f"{name} is not valid text", "bad_text") from None
    return t


def row_from_mapping(d: dict[str, Any], decimal_comma: bool = False) -> LabRow:
    """A LabRow from one JSON object / CSV record; RowError (with its reason code) when it is not one."""
    if not isinstance(d, dict):
        raise RowError(f"a lab row is an object, got {type(d).__name__}", "malformed_payload")
    f: dict[str, Any] = {}
    for k, v in d.items():
        key = _FIELD_OF.get(str(k).strip().lower().lstrip("\ufeff"))
        if key is not None and key not in f:
            f[key] = v
    roll = _text(f.get("roll_id"), "roll_id", True)
    quantity = _text(f.get("quantity"), "quantity", True)
    if f.get("value") is None or (isinstance(f.get("value"), str) and not f["value"].strip()):
        raise RowError("value is missing", "malformed_payload")
    value = _number(f["value"], "value", decimal_comma)
    if f.get("start_m") not in (None, "") or f.get("end_m") not in (None, ""):
        if f.get("start_m") in (None, "") or f.get("end_m") in (None, ""):
            raise RowError("give both start_m and end_m (or one position_m)", "malformed_payload")
        start, end = _number(f["start_m"], "start_m", decimal_comma), _number(f["end_m"], "end_m", decimal_comma)
    elif f.get("position_m") not in (None, ""):
        start = end = _number(f["position_m"], "position_m", decimal_comma)
    else:
        raise RowError("no position on the roll: give start_m and end_m (or position_m)", "malformed_payload")
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start or end > 1e6:
        raise RowError(f"position range [{start:g}, {end:g}] m is not a range on a roll (0 <= start <= end)",
                       "out_of_range")
    unit = f.get("unit")
    unit_text = None if unit is None else _text(unit, "unit", False)
    measured = f.get("measured_at")
    measured_ns = None
    if measured not in (None, ""):
        try:
            measured_ns = parse_time_ns(measured)
        except ValueError as err:
            raise RowError(f"measured_at: {err}", "bad_timestamp") from None
    line = _text(f.get("line_id"), "line_id", False) or None
    return LabRow(line, roll, round(start, 3), round(end, 3), quantity, value, unit_text,
                  _text(f.get("method"), "method", False), _text(f.get("sample_id"), "sample_id", False), measured_ns)


def _raw(d: Any) -> str:
    try:
        return safe_text(json.dumps(d, default=str, ensure_ascii=False), 4096)
    except Exception:  # noqa: BLE001 - a dead letter's payload must never fail to be made
        return safe_text(repr(d), 4096)


def parse_objects(items: Any, max_rows: int, decimal_comma: bool = False) -> list[Parsed]:
    """JSON: one object or a list of objects (``{"rows": [...]}`` too)."""
    if isinstance(items, dict) and isinstance(items.get("rows"), list):
        items = items["rows"]
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return [Parsed(1, _raw(items), None, RowError("a lab delivery is a JSON object or a list of them",
                                                      "malformed_payload"))]
    out = []
    for i, d in enumerate(items[:max_rows], start=1):
        try:
            out.append(Parsed(i, _raw(d), row_from_mapping(d, decimal_comma), None))
        except RowError as err:
            out.append(Parsed(i, _raw(d), None, err))
    if len(items) > max_rows:
        out.append(Parsed(max_rows + 1, f"{len(items) - max_rows} more rows", None,
                          RowError(f"a delivery holds at most {max_rows} rows ({len(items)} sent)", "too_many_rows")))
    return out


def parse_json_text(text: str | bytes, max_rows: int) -> list[Parsed]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        return [Parsed(1, safe_text(text if isinstance(text, str) else text.decode("utf-8", "replace"), 4096), None,
                       RowError(f"not JSON: {safe_text(str(err), 200)}", "malformed_payload"))]
    return parse_objects(data, max_rows)


def decode(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), else Windows-1252 (an older Excel's 'CSV')."""
    for enc in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def parse_csv(data: bytes | str, max_rows: int) -> list[Parsed]:
    """A CSV file: ``,`` or ``;`` separated (sniffed from the header), decimal commas with ``;``."""
    text = decode(data) if isinstance(data, bytes) else data.lstrip("\ufeff")
    lines = text.splitlines()
    header = next((ln for ln in lines if ln.strip()), "")
    delim = ";" if header.count(";") > header.count(",") else ("\t" if header.count("\t") > header.count(",") else ",")
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    out: list[Parsed] = []
    try:
        cols: list[str] | None = None
        n = 0
        for rec in reader:
            if not any(c.strip() for c in rec):
                continue
            if cols is None:
                cols = [c.strip() for c in rec]
                known = {_FIELD_OF.get(c.lower().lstrip("\ufeff")) for c in cols}
                if not {"roll_id", "quantity", "value"} <= known:
                    return [Parsed(0, safe_text(delim.join(rec), 4096), None, RowError(
                        "the header names no roll_id, quantity and value columns (got "
                        f"{safe_text(', '.join(cols), 300)})", "malformed_payload"))]
                continue
            n += 1
            raw = safe_text(delim.join(rec), 4096)
            if n > max_rows:
                out.append(Parsed(n, raw, None, RowError(f"a file holds at most {max_rows} rows", "too_many_rows")))
                break
            if len(rec) != len(cols):
                out.append(Parsed(n, raw, None, RowError(f"{len(rec)} fields, the header has {len(cols)}",
                                                         "malformed_payload")))
                continue
            try:
                out.append(Parsed(n, raw, row_from_mapping(dict(zip(cols, rec)), delim == ";"), None))
            except RowError as err:
                out.append(Parsed(n, raw, None, err))
    except csv.Error as err:
        out.append(Parsed(len(out) + 1, "", None, RowError(f"unreadable CSV: {err}", "malformed_payload")))
    return out
