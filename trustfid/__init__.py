"""trustfid: the Fréchet Inception Distance with an honest account of how far it can be trusted.

The library, usable on its own from a training loop or a notebook::

    from trustfid import score, ScoreOptions
    report = score("real/", "generated/", ScoreOptions(passes=20, seed=0))
    print(report.fid, report.trust.level, report.trust.reasons)

    from trustfid import Client                       # the HTTP client of a trustfid service
    job = Client("http://127.0.0.1:8000").submit("real/", "generated/")

- ``score(real, generated, options=None, *, progress=None, should_cancel=None) -> Report``
- ``compute_stats(source, options=None, ...) -> SetStats`` (``.save(path)``); ``load_stats(path)``
- ``inspect(source, options=None, ...) -> InspectReport`` (per-image latent variance)
- ``open_job(options=None, extractor=None) -> Job``: options resolved once (job.py); ``extract(source, set_name,
  job) -> SetStats`` computes one set's statistics for it
- ``Metric(options=None, *, extractor=None)``: ``update(images, real=True)``, ``compute() -> Report``,
  ``reset()`` — the same report in-process from a training loop, on the images' own device (metric.py)
- ``Extractor``, ``register_extractor``: bring another feature network (extractor.py, registry.py); every function
  above takes ``extractor=`` (a registry name, an ``Extractor`` or a list of stages)
- ``ScoreOptions``, ``Report``: the contract (schemas.py); ``Client``: the service's HTTP client.

``real``/``generated``/``source``: a folder, a .zip/.tar/.tar.gz archive, a .npy/.npz uint8 image
array, a saved statistics .npz, a numpy array or torch tensor (N,H,W,C or N,C,H,W; uint8 or float in
[0, 1]), or a SetStats. ``progress`` is called with ``schemas.Progress``; ``should_cancel()``
returning True makes the engine raise ``errors.CancelledError`` at its next batch.

Importing ``trustfid`` is cheap: torch is loaded only when the FID network is (a job of metrics frd alone
never loads it, nor do its decode processes), and ``Client`` never loads it. The package imports nothing
from the service (app/, worker/).
"""

__version__ = "0.2.0"

_EXPORTS = {
    "score": "pipeline", "compute_stats": "pipeline", "inspect": "pipeline", "extract": "pipeline", "open_job": "job",
    "Metric": "metric", "Extractor": "extractor", "register_extractor": "registry",
    "load_stats": "stats", "SetStats": "stats",
    "ScoreOptions": "schemas", "Report": "schemas", "InspectReport": "schemas", "Progress": "schemas",
    "Client": "client",
    "TrustfidError": "errors", "InputError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):  # lazy: `from trustfid import Client` never loads torch
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trustfid' has no attribute {name!r}")
