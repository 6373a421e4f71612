"""The multi-line workload: twin/testing/scaleout_workload.py (the benchmarks use it too), re-exported here."""

from twin.testing.scaleout_workload import BASE, T0, TAGS, Key, line_names, messages, reading

__all__ = ["BASE", "T0", "TAGS", "Key", "line_names", "messages", "reading"]
