"""The core: boundary types (samples, quality codes, clocks), supervision and retry that every other package
builds on. It imports nothing of the project (tests/test_import_graph.py checks it); connectors, ontology and
the store depend only on it, and the services in ``twin`` compose them (docs/architecture.md)."""
