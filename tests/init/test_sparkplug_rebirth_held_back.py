"""The Sparkplug B host's rebirth requests when rebirth_min_interval_s holds one back (connectors/mqtt/sparkplug.py):
a gap right after a rebirth (the twin's start-up, a flapping link) is asked for once the interval has passed, and a
node that did not answer is asked again at its next gap; in sequence, nothing more is sent."""

from __future__ import annotations

import time

import pysparkplug as spb

from tests.mqtt.test_sparkplug_host import T, ddata, feed, host, m, nbirth


def _born(h, seq: int = 0) -> None:
    feed(h, "spBv1.0/G/NBIRTH/E", nbirth(seq=seq))
    feed(h, "spBv1.0/G/DBIRTH/E/D", spb.DBirth(timestamp=T, seq=seq + 1, metrics=(m("Gap", 1.0, 10),)).encode())


def test_a_held_back_request_is_sent_after_the_interval_and_an_unanswered_one_is_repeated_at_the_next_gap() -> None:
    h, sent = host(rebirth_min_interval_s=0.3)
    _born(h)
    feed(h, "spBv1.0/G/DDATA/E/D", ddata(3, 2.0))  # gap: asked
    assert len(sent) == 1
    _born(h)  # the node rebirths
    r, _ = feed(h, "spBv1.0/G/DDATA/E/D", ddata(5, 2.0))  # a second gap within the interval: held back, stored
    assert len(sent) == 1 and r[0].value == 2.0 and h.snapshot()["nodes"]["G/E"]["awaiting_rebirth"]
    feed(h, "spBv1.0/G/DDATA/E/D", ddata(6, 2.0))  # in sequence, still within the interval
    assert len(sent) == 1
    time.sleep(0.35)
    feed(h, "spBv1.0/G/DDATA/E/D", ddata(7, 2.0))  # the interval has passed: the held-back request goes out
    assert len(sent) == 2 and h.counters["sparkplug_rebirth_requests"] == 2
    for s in range(8, 12):  # in sequence: nothing more
        feed(h, "spBv1.0/G/DDATA/E/D", ddata(s, 2.0))
    assert len(sent) == 2
    time.sleep(0.35)
    feed(h, "spBv1.0/G/DDATA/E/D", ddata(20, 2.0))  # the node never answered; a new gap asks again
    assert len(sent) == 3 and h.counters["sparkplug_seq_gaps"] == 3
    _born(h)
    assert not h.snapshot()["nodes"]["G/E"]["awaiting_rebirth"]
    feed(h, "spBv1.0/G/DDATA/E/D", ddata(2, 3.0))
    assert len(sent) == 3
