"""Fixtures of the fault-injection suite: daemon processes that are always stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import TwinProcess


@pytest.fixture
def twin_process() -> Iterator[Callable[..., TwinProcess]]:
    """A factory: ``twin_process(config_path)`` -> an unstarted :class:`TwinProcess`; every process
    made through it is stopped (SIGTERM, then SIGKILL after 30 s) when the test ends."""
    made: list[TwinProcess] = []

    def make(config: Path, **kw: object) -> TwinProcess:
        t = TwinProcess(config, **kw)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield make
    for t in made:
        t.stop()
