"""Training of the surrogate ensemble (``[train]`` extra: torch, optuna, onnx).

- ``data``    : numpy only. Features/targets, the split by design point (replicates stay together) with a
                held-out corner of the design, the seeds' metrics, DEM replicate scatter, data-set hash.
- ``model``   : torch. The deep ensemble (batched MLP members, normalisation buffers inside), training,
                optuna search under a time budget.
- ``export``  : torch -> ONNX (one graph, dynamic batch), the parity gate, the model card.
- ``cli``     : ``twin surrogates train`` / ``twin surrogates evaluate``.

Nothing here imports torch at module import time except ``model`` and ``export``; the daemon uses
``surrogates.runtime`` (onnxruntime only).
"""
