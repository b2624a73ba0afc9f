"""A job's options resolved once, at the door: ``open_job`` validates what a caller gave (``ScoreOptions`` or a
dict of them), loads the extractor when the job needs one and checks the options against it, and returns a
``Job``; every inner function (``pipeline.extract``, ``frd_auto``, ``report_from_stats``, the shards' and the
Metric's) takes that and coerces nothing again.

What a job computes per image, its ``work``, is the union of what its metrics need (``Plugin.needs``,
plugins.py): ``FEATURES`` (the extractor's features, its MC passes and what extras.Collector keeps) and
``RADIOMICS`` (radiomic features, radiomics.py). Without FEATURES no network is loaded, nor torch imported: the
device is then the string "cpu".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import InputError
from .plugin import FEATURES
from .schemas import ScoreOptions
from .settings import EngineSettings, get_engine_settings

if TYPE_CHECKING:
    import torch

    from .extractor import Extractor
    from .inception import FIDInceptionV3
    from .mc import MCDropout
    from .weights import Weights


@dataclass
class Job:
    """What a job runs: its resolved options, its extractor (None without FEATURES), the device, the engine
    settings and the per-image work. ``model`` is the MC-dropout wrapper of the extractor, made once."""

    options: ScoreOptions
    extractor: Extractor | None
    device: torch.device | str
    settings: EngineSettings
    work: frozenset[str]
    _model: MCDropout | None = field(default=None, repr=False)

    @property
    def model(self) -> MCDropout:
        if self._model is None:
            from .mc import MCDropout

            self._model = MCDropout(self.extractor, self.options, self.device, self.settings)
        return self._model


def work_of(options: ScoreOptions) -> frozenset[str]:
    """The per-image work the metrics of ``options`` need (frd:auto's radiomics come later, pipeline.frd_auto)."""
    from .plugins import registered

    return frozenset().union(*(p.needs(options) for p in registered()))


def resolve(options: ScoreOptions | dict | None, extractor=None) -> ScoreOptions:
    """The door: ScoreOptions from what a caller gave. A dict is validated for the given extractor (its
    dropout_at may name that extractor's stages; Extractor.options_for checks them once it is loaded). A job
    whose metrics need pyradiomics fails here, before any work, when it is missing."""
    if isinstance(options, ScoreOptions):
        out = options
    elif options is None or isinstance(options, dict):
        data = dict(options or {})
        name = _name_of(extractor)
        if name is not None:
            data.setdefault("extractor", name)
        out = ScoreOptions.model_validate(data)
    else:
        raise InputError(f"options must be ScoreOptions or a dict, not a {type(options).__name__}")
    if out.frd_mode != "off":
        from .radiomics import require

        require()  # the medical extra is missing: say so now, not after the FID
    return out


def open_job(options: ScoreOptions | dict | None, extractor=None, settings: EngineSettings | None = None, *,
             device: torch.device | None = None, work=None) -> Job:
    """The Job of ``options`` (``resolve``d) on ``extractor``: None (``options.extractor``), a registry name,
    an Extractor or stages. A registered extractor runs on ``options.device``; a given one on its own device
    unless ``options.device`` names another ("auto" keeps it where it is); ``device``, when given, wins over
    both (the Metric runs where the images are). ``work``: what runs per image (default: what the metrics
    need, ``work_of``)."""
    options = resolve(options, extractor)
    settings = settings or get_engine_settings()
    work = frozenset(work_of(options) if work is None else work)
    if FEATURES not in work:
        return Job(options, None, "cpu", settings, work)
    from .registry import as_extractor, get_extractor

    _use_threads(settings)
    if extractor is None or isinstance(extractor, str):
        device = device or resolve_device(options.device)
        ex = get_extractor(extractor or options.extractor, device, settings)
    else:
        ex = as_extractor(extractor)
        device = device or (ex.device if options.device == "auto" else resolve_device(options.device))
        ex = ex.to(device)
    return Job(ex.options_for(options), ex, device, settings, work)


def _name_of(extractor) -> str | None:
    """The name of a given extractor, without loading one."""
    if extractor is None or isinstance(extractor, str):
        return extractor
    return getattr(extractor, "name", "custom")  # stages become the extractor "custom" (registry.as_extractor)


def resolve_device(name: str) -> torch.device:
    """The torch device for an options' ``device``; one this machine does not have is the caller's
    error (InputError), never a crash later in the network."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device '{name}' was asked for but no CUDA GPU is available; use device 'cpu' or 'auto'")
        if device.index is not None and device.index >= count:
            raise InputError(f"device '{name}' was asked for but this machine has {count} CUDA GPU(s) "
                             f"(cuda:0..cuda:{count - 1}); use one of those or 'auto'")
    elif device.type == "mps" and not (torch.backends.mps.is_available()):
        raise InputError(f"device '{name}' (Apple Metal) was asked for but this machine has no MPS backend; "
                         "use device 'cpu' or 'auto'")
    return device


def _use_threads(settings: EngineSettings) -> None:
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)


def network(options: ScoreOptions,
            settings: EngineSettings | None = None) -> tuple[FIDInceptionV3, Weights, torch.device]:
    """The FID Inception and its weights, loaded once per process and device (a worker keeps it)."""
    from .registry import load_fid_inception

    settings = settings or get_engine_settings()
    _use_threads(settings)
    device = resolve_device(options.device)
    net, weights = load_fid_inception(str(settings.weights) if settings.weights else None,
                                      str(settings.cache_dir), str(device))
    return net, weights, device
