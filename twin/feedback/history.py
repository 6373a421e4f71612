"""Recent committed values of the tags the feedback service watches (fed by the pipeline's after-commit hook)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from core.samples import Sample


class History:
    """Recent committed values of the tags the service watches (fed by the pipeline's after-commit hook).
    The time of each tag's last value change is kept as values arrive, so a decision round reads it in
    O(1) instead of scanning the history."""

    CHANGE_EPS = 1e-6  # relative: a setpoint that moved by less did not change

    def __init__(self, tags: set[str], maxlen: int = 50_000) -> None:
        self.tags = tags
        self.data: dict[tuple[str, str], deque[tuple[int, float, int]]] = {}
        self.changed: dict[tuple[str, str], int] = {}
        self.maxlen = maxlen

    def add(self, samples: Sequence[Sample]) -> None:
        for s in samples:
            if s.tag_id in self.tags and isinstance(s.value, (int, float)):
                key = (s.line_id, s.tag_id)
                q = self.data.get(key)
                if q is None:
                    q = self.data[key] = deque(maxlen=self.maxlen)
                v = float(s.value)
                if q and abs(v - q[-1][1]) > self.CHANGE_EPS * max(1.0, abs(q[-1][1])):
                    self.changed[key] = s.source_ts_ns
                q.append((s.source_ts_ns, v, int(s.quality)))

    def since(self, line: str, tag: str, t0_ns: int) -> list[tuple[int, float, int]]:
        """Values from ``t0_ns`` on, read from the newest end (the window is short, the history long)."""
        q = self.data.get((line, tag))
        if q is None:
            return []
        out = []
        for x in reversed(q):
            if x[0] < t0_ns:
                break
            out.append(x)
        out.reverse()
        return out

    def last_change_ns(self, line: str, tag: str) -> int | None:
        return self.changed.get((line, tag))

    def newest(self, line: str, tag: str) -> float | None:
        """The newest value of a tag on a line (None: none yet)."""
        q = self.data.get((line, tag))
        return q[-1][1] if q else None

    def lines_with(self, tag: str) -> list[str]:
        """The lines that have values of ``tag``, sorted."""
        return sorted({line for (line, t) in self.data if t == tag})
