"""Real peers and load generators shared by the tests (tests/) and the benchmarks (bench/).

Both may import this package; neither imports the other's helpers. Nothing of the daemon imports it.

- :mod:`twin.testing.publisher`: :class:`~twin.testing.publisher.AckingPublisher`, the one MQTT QoS-1
  publisher (counts PUBACKs, optionally keeps a ledger of which keys each message carried).
- :mod:`twin.testing.peers`: a real mosquitto on a free loopback port, free ports, a daemon config file.
- :mod:`twin.testing.influx_servers`: a real influxd 1.x / VictoriaMetrics process.
- :mod:`twin.testing.scaleout`: worker daemons sharing one MQTT shared subscription, and their workload.
"""
