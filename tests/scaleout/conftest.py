"""Fixtures for the scale-out tests: the real influxd of tests/influx (mosquitto comes from tests/conftest.py)."""

from tests.influx.conftest import influxd  # noqa: F401 - re-exported fixture
