"""InfluxQL for the InfluxDB backend: the HTTP connection, ``/query``, and the statements the store runs.

Queries go to ``/query`` (1.x; 2.x through a DBRP mapping and v1 auth; 3.x through its v1
compatibility API) with ``epoch=ns``. Every statement the store runs is built here from quoted
literals (:func:`quote`); :func:`rows` flattens a response into (series tags, row) pairs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import urllib3

from twin.store.base import StoredSample
from twin.store.config import InfluxStoreConfig
from twin.store.influx.lineprotocol import AUDIT, DEAD_LETTERS, ROLLS, SAMPLES, _unstr

_SAMPLE_COLUMNS = '"value", "quality", "received_ns", "web_pos_m", "roll", "unit", "line", "tag"'


class InfluxError(RuntimeError):
    """InfluxDB refused or could not answer a request (status and message in the text)."""


def quote(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_q = quote


def where(*conds: str | None) -> str:
    """`` WHERE a AND b`` of the conditions that are given ('' when none is)."""
    conds_ = [c for c in conds if c]
    return (" WHERE " + " AND ".join(conds_)) if conds_ else ""


def _eq(column: str, value: str | None) -> str | None:
    return f'"{column}" = {quote(value)}' if value is not None else None


# -- HTTP ---------------------------------------------------------------------------------------
def http_pool(c: InfluxStoreConfig) -> urllib3.PoolManager:
    """The connection pool for queries and v1 writes (urllib3 retries off: writes retry with the
    client's WritesRetry, queries not at all)."""
    kw: dict[str, Any] = {"timeout": urllib3.Timeout(total=c.timeout_ms / 1000), "maxsize": 4, "retries": False}
    if c.url.startswith("https://"):
        kw["cert_reqs"] = "CERT_REQUIRED"
        if c.ca_file is not None:
            kw["ca_certs"] = str(c.ca_file)
    return urllib3.PoolManager(**kw)


def auth_headers(c: InfluxStoreConfig) -> dict[str, str]:
    if c.token:
        return {"Authorization": f"Token {c.token}"}
    if c.username is not None:
        return urllib3.make_headers(basic_auth=f"{c.username}:{c.password or ''}")
    return {}


def run_query(http: urllib3.PoolManager, headers: dict[str, str], c: InfluxStoreConfig, q: str, *,
              method: str = "GET", chunked: bool = False) -> list[dict[str, Any]]:
    """Run InfluxQL on /query; return the statements' results (an error raises InfluxError)."""
    params = {"db": c.database, "q": q, "epoch": "ns"}
    if c.retention_policy:
        params["rp"] = c.retention_policy
    if chunked:
        params.update(chunked="true", chunk_size="10000")
    try:
        r = http.request(method, f"{c.url.rstrip('/')}/query?{urlencode(params)}", headers=headers,
                         preload_content=True)
    except urllib3.exceptions.HTTPError as err:
        raise InfluxError(f"InfluxDB query failed: {err}") from err
    if r.status >= 300:
        raise InfluxError(f"InfluxDB query failed with HTTP {r.status}: {r.data[:500]!r}")
    results: dict[int, dict[str, Any]] = {}
    for chunk in r.data.splitlines() if chunked else [r.data]:
        if not chunk.strip():
            continue
        body = json.loads(chunk)
        if "error" in body:
            raise InfluxError(f"InfluxDB query error: {body['error']}")
        for res in body.get("results", []):
            if "error" in res:
                raise InfluxError(f"InfluxDB query error: {res['error']}")
            into = results.setdefault(res.get("statement_id", 0), {"series": []})
            into["series"].extend(res.get("series", []))
    return [results[k] for k in sorted(results)]


# -- results ------------------------------------------------------------------------------------
def rows(results: list[dict[str, Any]]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    out = []
    for res in results:
        for s in res.get("series", []) or []:
            cols = s["columns"]
            tags = s.get("tags") or {}
            for v in s["values"]:
                out.append((tags, dict(zip(cols, v))))
    return out


def stored_sample(line: str, tag: str, r: dict[str, Any]) -> StoredSample:
    wp = r.get("web_pos_m")
    return StoredSample(line, tag, float(r["value"]), r.get("unit") or "", int(r["time"]),
                        int(r.get("received_ns") or 0), int(r.get("quality") or 0),
                        _unstr(r.get("roll")) or None, None if wp is None else float(wp))


# -- statements ---------------------------------------------------------------------------------
# InfluxQL time literals are integers in ns whatever the write precision.
def latest(line_id: str | None, tags: Sequence[str] | None) -> str:
    cond_tags = "(" + " OR ".join(f'"tag" = {quote(t)}' for t in tags) + ")" if tags else None
    return (f'SELECT last("value") AS "value", "quality", "received_ns", "web_pos_m", "roll", "unit" FROM "{SAMPLES}"'
            + where(_eq("line", line_id), cond_tags) + ' GROUP BY "line", "tag"')


def series(tag_id: str, start_ns: int, end_ns: int, width_ns: int, line_id: str | None) -> str:
    """min / mean / max / count per bucket of ``width_ns``, buckets aligned on ``start_ns``."""
    offset = start_ns % width_ns
    return (f'SELECT min("value"), mean("value"), max("value"), count("value") FROM "{SAMPLES}"'
            + where(_eq("tag", tag_id), _eq("line", line_id), f"time >= {start_ns}", f"time < {end_ns}")
            + f" GROUP BY time({width_ns}ns, {offset}ns) fill(none)")


def samples(cond: str, limit: int) -> str:
    """The sample rows matching ``cond`` (a :func:`where` clause), oldest first."""
    return f'SELECT {_SAMPLE_COLUMNS} FROM "{SAMPLES}"{cond} ORDER BY time ASC LIMIT {int(limit)}'


def samples_where(*, tag_id: str | None = None, line_id: str | None = None, roll_id: str | None = None,
                  start_ns: int | None = None, end_ns: int | None = None) -> str:
    return where(_eq("tag", tag_id), _eq("line", line_id), f"time >= {start_ns}" if start_ns is not None else None,
                 f"time < {end_ns}" if end_ns is not None else None, _eq("roll", roll_id))


def dead_letters(limit: int, before_id: int | None) -> str:
    return (f'SELECT "address", "reason", "payload", "received_ns", "reason_code", "source", "connector", "line" '
            f'FROM "{DEAD_LETTERS}"' + where(f"time < {int(before_id)}" if before_id is not None else None)
            + f" ORDER BY time DESC LIMIT {int(limit)}")


def count(measurement: str, field: str, cond: str = "") -> str:
    return f'SELECT count("{field}") FROM "{measurement}"{cond}'


def rolls(line_id: str | None) -> str:
    return (f'SELECT first("tag_id") AS "tag_id" FROM "{ROLLS}"' + where(_eq("line", line_id))
            + ' GROUP BY "line", "step", "roll"')


def audit(ref: str | None, line_id: str | None, limit: int) -> str:
    return (f'SELECT "body", "actor", "kind", "ref", "line" FROM "{AUDIT}"'
            + where(_eq("ref", ref), _eq("line", line_id)) + f" ORDER BY time DESC LIMIT {int(limit)}")


def delete_before(measurement: str, before_ns: int) -> str:
    return f'DELETE FROM "{measurement}" WHERE time < {int(before_ns)}'
