"""core.retry: the one back-off helper, its two named jitters, and the names that re-export it."""

from __future__ import annotations

import random

import pytest

from core.retry import Backoff, Jitter, backoff_delay


@pytest.mark.parametrize(("jitter", "low_fraction"), [(Jitter.FULL, 0.0), (Jitter.EQUAL, 0.5)])
def test_backoff_delay_draws_within_the_named_jitter(jitter: Jitter, low_fraction: float) -> None:
    rng = random.Random(3)
    for attempt in range(12):
        cap = min(8.0, 0.25 * 2**attempt)
        draws = [backoff_delay(attempt, 0.25, 8.0, rng, jitter=jitter) for _ in range(400)]
        assert all(cap * low_fraction <= d <= cap for d in draws)
        # the draws cover the range, not one point of it
        assert min(draws) < cap * low_fraction + 0.1 * cap and max(draws) > 0.9 * cap


def test_backoff_factor_and_a_long_outage() -> None:
    b = Backoff(1.0, 1000.0, factor=3.0, rng=random.Random(5), jitter=Jitter.EQUAL)
    for cap in (1.0, 3.0, 9.0):  # initial_s * factor ** attempt
        assert cap / 2 <= b.next_delay() <= cap
    assert b.attempt == 3
    for _ in range(10_000):
        assert b.next_delay() <= 1000.0  # no OverflowError, never above the maximum
    b.reset()
    assert b.attempt == 0 and 0.5 <= b.next_delay() <= 1.0


def test_the_old_names_are_the_one_helper() -> None:
    from connectors.base import Backoff as ConnectorBackoff
    from core.supervise import full_jitter

    assert ConnectorBackoff is Backoff
    assert Backoff().jitter is Jitter.EQUAL  # reconnects keep half of each delay
    a, b = random.Random(9), random.Random(9)
    assert [full_jitter(n, 0.5, 30.0, a) for n in range(20)] == \
        [backoff_delay(n, 0.5, 30.0, b, jitter=Jitter.FULL) for n in range(20)]
