"""The durable outbox on its own (no server): dedupe window, capacity, exact counters, restart."""

from __future__ import annotations

import time
from pathlib import Path

from twin.store.outbox import Outbox


def put(box: Outbox, keys: list[tuple[str, str, int]]) -> int:
    with box.transaction() as t:
        new = t.admit(keys)
        t.append([f"p {keys[i][2]}".encode() for i in new])
    return len(new)


def test_dedupe_first_wins_within_a_call_and_across_calls(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 100)
    assert put(box, [("L1", "a", 1), ("L1", "a", 2), ("L1", "a", 1), ("L2", "a", 1)]) == 3
    assert put(box, [("L1", "a", 2), ("L1", "a", 3)]) == 1
    assert box.pending == 4 and box.counters["written"] == 4
    box.close()


def test_capacity_drops_the_oldest_not_in_flight_and_counts_exactly(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 10, dedupe_window_s=0)
    put(box, [("L", "a", i) for i in range(4)])
    taken = box.take(3)  # in flight: 0, 1, 2
    assert [lp for _, lp in taken] == [b"p 0", b"p 1", b"p 2"]
    put(box, [("L", "a", i) for i in range(4, 20)])  # 20 points into room for 10
    assert box.pending == 10 and box.counters["dropped"] == 10
    rest = box.take(100)
    assert [lp for _, lp in rest] == [f"p {i}".encode() for i in range(13, 20)]  # 3..12 dropped
    assert box.ack([s for s, _ in taken]) == 3
    assert box.reject([rest[0][0]]) == 1
    c = box.counters
    assert c["written"] == c["delivered"] + c["dropped"] + c["rejected"] + box.pending == 20
    box.close()
    again = Outbox(tmp_path / "o.sqlite", 10, dedupe_window_s=0)  # the counters live in the file
    assert again.counters == {"written": 20, "delivered": 3, "dropped": 10, "rejected": 1} and again.pending == 6
    assert [lp for _, lp in again.take(100)] == [f"p {i}".encode() for i in range(14, 20)]
    # sequence numbers never go back, even once the outbox was empty
    again.ack([s for s, _ in again.take(100)] + list(range(1, 100)))
    last = again.last_seq
    put(again, [("L", "a", 99)])
    assert again.take(1)[0][0] > last
    again.close()


def test_dedupe_window_forgets_old_keys(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", 100, dedupe_window_s=0.5)
    assert put(box, [("L", "a", i) for i in range(5)]) == 5
    time.sleep(0.6)
    assert put(box, [("L", "a", 0)]) == 0  # still remembered: nothing pruned yet
    assert box.prune_keys(chunk=2) == 5
    assert put(box, [("L", "a", i) for i in range(5)]) == 5  # beyond the window: sent again
    box.close()
