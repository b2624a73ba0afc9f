"""Reading image sets: folders, archives, arrays and single files, into (name, HxWx3 float32) pairs.

Everything the engine scores comes through :func:`open_images`, which returns an :class:`ImageSet`
(``ACCEPTED_INPUTS`` says in words what a source may be). The package, by layer:

- ``rules``, ``array_rules``: the input-safety rules shared with the service's upload checks and the
  client (which files are images, unsafe archive members, pickles, layouts, size limits); standard
  library only, so the client imports them without numpy;
- ``imageset``: ``open_images`` and ``ImageSet`` (strict mode, the image-count limit), ``SetShard``
  (a slice of a set, for sharded jobs);
- ``containers``: folder, single file, zip and tar readers; ``gzindex``: seeking inside a .tar.gz;
- ``arrays``: .npy, .npz and in-memory numpy arrays / torch tensors;
- ``decode``: one file through Pillow (or OpenCV for 16-bit colour); ``dicom``: DICOM through
  pydicom; ``intensity``: the intensity mapping both share.

docs/IMAGES.md describes the behaviour for users. Importing this package is cheap: the readers (and
numpy) load when ``open_images`` or ``ImageSet`` is first used.
"""

_EXPORTS = {"open_images": "imageset", "ImageSet": "imageset", "SetShard": "imageset", "ACCEPTED_INPUTS": "rules"}
__all__ = list(_EXPORTS)


def __getattr__(name):  # lazy: `from trustfid.inputs import rules` must not load numpy
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trustfid.inputs' has no attribute {name!r}")
