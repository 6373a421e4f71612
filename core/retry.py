"""Exponential back-off with a named jitter: the project's one retry-delay helper.

The n-th delay (``attempt`` n, 0-based) is drawn below a cap that grows geometrically::

    cap(n) = min(max_s, initial_s * factor ** n)

and the jitter decides where in that range the delay falls (AWS architecture blog, "Exponential
Backoff And Jitter"):

- :attr:`Jitter.FULL`: uniform in ``[0, cap]``. Spreads many clients the most; a delay can be close
  to zero. Used by :class:`core.supervise.Supervisor` for restarting failed tasks.
- :attr:`Jitter.EQUAL`: uniform in ``[cap/2, cap]``. Half of each delay is kept, so a peer that
  refuses at once is never retried in a tight loop; the other half spreads clients apart. Used for
  reconnects (MQTT, OPC-UA), connector task restarts and the InfluxDB outbox's resend.

:func:`backoff_delay` is the formula; :class:`Backoff` keeps the attempt count for a retry loop.
"""

from __future__ import annotations

import enum
import random

__all__ = ["Backoff", "Jitter", "backoff_delay"]

_MAX_EXPONENT = 62  # factor ** n for a long outage stays a finite float (no OverflowError)


class Jitter(str, enum.Enum):
    FULL = "full"  # uniform in [0, cap]
    EQUAL = "equal"  # uniform in [cap/2, cap]


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random, *,
                  jitter: Jitter = Jitter.EQUAL, factor: float = 2.0) -> float:
    """The delay before retry ``attempt`` (0-based): cap = min(max_s, initial_s * factor**attempt),
    drawn uniform in [0, cap] (``Jitter.FULL``) or [cap/2, cap] (``Jitter.EQUAL``)."""
    cap = min(max_s, initial_s * (factor ** min(attempt, _MAX_EXPONENT)))
    low = 0.0 if jitter is Jitter.FULL else cap / 2
    return rng.uniform(low, cap)


class Backoff:
    """Exponential back-off for one retry loop: :meth:`next_delay` draws the next delay with
    :func:`backoff_delay` and counts the attempt; :meth:`reset` after a success. The default jitter
    is ``Jitter.EQUAL`` (uniform in [cap/2, cap])."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0, factor: float = 2.0,
                 rng: random.Random | None = None, *, jitter: Jitter = Jitter.EQUAL) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.factor = factor
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, self.initial_s, self.maximum_s, self._rng, jitter=self.jitter,
                              factor=self.factor)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
