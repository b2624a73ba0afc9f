"""The scoring engine: images -> tensors -> Inception trunk once -> tail x T passes -> streaming
statistics per pass -> Fréchet core -> report. Works without Celery or Redis.

Public API (see pipeline.py):

    score(real, generated, options=None, *, progress=None, should_cancel=None) -> app.schemas.Report
    compute_stats(source, options=None, *, progress=None, should_cancel=None) -> SetStats
    inspect(source, options=None, *, progress=None, should_cancel=None) -> app.schemas.InspectReport
    load_stats(path) -> SetStats;  SetStats.save(path)

``real``/``generated``/``source``: a folder, a .zip/.tar/.tar.gz archive, a .npy/.npz uint8 image
array, a saved statistics .npz, a numpy array or torch tensor (N,H,W,C or N,C,H,W; uint8 or float
in [0, 1]), or a SetStats. ``progress`` is called with app.schemas.Progress; ``should_cancel()``
returning True makes the engine raise app.errors.CancelledError at its next batch.
"""

_EXPORTS = {"score": "pipeline", "compute_stats": "pipeline", "extract": "pipeline", "inspect": "pipeline",
            "load_stats": "stats", "SetStats": "stats"}
__all__ = list(_EXPORTS)


def __getattr__(name):  # lazy: importing a submodule (e.g. stats) does not load the whole engine
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)
