"""Lab results (offline structure parameters per roll segment), shadow model versions and drift (issue #19).

- :mod:`twin.lab.config`: the ``[lab]`` section (quantities tagged against ontology SP terms, drift rule).
- :mod:`twin.lab.catalog`: the quantities compiled against the ontology (term, unit by pint, range).
- :mod:`twin.lab.parse`: rows from JSON and CSV (Excel exports: ``;``, decimal commas, BOM).
- :mod:`twin.lab.store`: the lab's SQLite file (lab results, model predictions, model requests).
- :mod:`twin.lab.candidate`: residual-offset candidate models refitted on lab results (versioned like a model).
- :mod:`twin.lab.compare`: errors of each model version against the lab results, the drift test.
- :mod:`twin.lab.service`: ingestion, dead letters, shadow runs, promotion / rollback requests, drift alerts.
- :mod:`twin.lab.cli`: ``twin lab import`` (local stores, or a running twin's API).
See docs/lab.md.
"""
