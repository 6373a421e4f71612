"""Real time-series servers for the tests: twin/testing/influx_servers.py (the benchmarks use them too),
re-exported here."""

from twin.testing.influx_servers import InfluxD, VictoriaMetrics, _binary, _Server, free_port, have

__all__ = ["InfluxD", "VictoriaMetrics", "_Server", "_binary", "free_port", "have"]
