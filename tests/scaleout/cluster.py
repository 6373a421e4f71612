"""The scale-out workers: twin/testing/scaleout_cluster.py (the benchmarks use them too), re-exported here."""

from twin.testing.scaleout_cluster import ROOT, TAGMAP, Worker, cluster_config, proc_cpu_seconds

__all__ = ["ROOT", "TAGMAP", "Worker", "cluster_config", "proc_cpu_seconds"]
