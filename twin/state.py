"""Line state: the latest committed value per (line, tag), the roll and web position per line, and
fan-out of committed samples to live-stream subscribers (bounded queues, drops counted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.samples import RollEvent, Sample, ns_to_iso


@dataclass
class Subscriber:
    queue: asyncio.Queue[dict[str, Any]]
    tags: frozenset[str] | None
    dropped: int = 0


@dataclass
class LineState:
    latest: dict[tuple[str, str], Sample] = field(default_factory=dict)
    roll: dict[str, RollEvent] = field(default_factory=dict)
    subscribers: list[Subscriber] = field(default_factory=list)
    on_drop: Callable[[int], None] | None = None
    listeners: list[Callable[[Sequence[Sample]], None]] = field(default_factory=list)

    def update(self, samples: Sequence[Sample], rolls: Sequence[RollEvent] = ()) -> None:
        latest = self.latest
        for s in samples:
            key = (s.line_id, s.tag_id)
            old = latest.get(key)
            if old is None or s.source_ts_ns >= old.source_ts_ns:
                latest[key] = s
        for r in rolls:
            old_r = self.roll.get(r.line_id)
            if old_r is None or r.source_ts_ns >= old_r.source_ts_ns:
                self.roll[r.line_id] = r
        for fn in self.listeners:
            fn(samples)
        if self.subscribers and samples:
            self._fan_out(samples, rolls)

    def _fan_out(self, samples: Sequence[Sample], rolls: Sequence[RollEvent]) -> None:
        for sub in self.subscribers:
            chosen = [s for s in samples if sub.tags is None or s.tag_id in sub.tags]
            if not chosen and not rolls:
                continue
            event = {"type": "samples", "samples": [sample_json(s) for s in chosen[-2000:]],
                     "rolls": [{"line_id": r.line_id, "step": r.step, "roll_id": r.roll_id,
                                "ts": ns_to_iso(r.source_ts_ns)} for r in rolls]}
            self._offer(sub, event)

    def _offer(self, sub: Subscriber, event: dict[str, Any]) -> None:
        """Queue an event for a subscriber; a full queue drops its oldest event, counted."""
        if sub.queue.full():
            try:
                sub.queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
            sub.dropped += 1
            if self.on_drop:
                self.on_drop(1)
        sub.queue.put_nowait(event)

    def subscribe(self, tags: Sequence[str] | None = None, maxsize: int = 1000) -> Subscriber:
        sub = Subscriber(asyncio.Queue(maxsize=maxsize), frozenset(tags) if tags else None)
        self.subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def broadcast(self, event: dict[str, Any]) -> None:
        """Send a non-sample event (prediction, proposal) to every subscriber."""
        for sub in self.subscribers:
            self._offer(sub, event)


def sample_json(s: Any) -> dict[str, Any]:
    return {
        "line_id": s.line_id, "tag": s.tag_id, "value": s.value, "unit": s.unit,
        "ts": ns_to_iso(s.source_ts_ns), "received": ns_to_iso(s.received_ts_ns),
        "quality": int(s.quality), "roll_id": s.roll_id, "web_pos_m": s.web_pos_m,
    }
