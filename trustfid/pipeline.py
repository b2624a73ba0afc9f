"""The pipeline: sources in, report out. Every other entry point (CLI, Celery task, Metric) calls these.

    images (inputs/) -> network input (preprocess.py) -> trunk once, tail x (1 + T) (mc.py, on the
    extractor of extractor.py) -> per-pass streaming statistics (stats.py) -> Fréchet core
    (frechet.py) -> report (report.py)

Every function takes ``extractor=``: None (``options.extractor``, by default the FID Inception), a
registry name, an ``Extractor`` or a list of stages (extractor.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from . import report as rep
from .errors import CancelledError, InputError
from .extractor import Extractor
from .extras import Collector
from .inception import FIDInceptionV3
from .inputs import ImageSet, open_images
from .inputs.array_rules import is_stats_npz
from .inputs.rules import MIN_IMAGES, too_few_images
from .loader import ParallelLoader, batched, prefetched, worker_count
from .mc import SET_TAGS, MCDropout
from .preprocess import describe, to_model_input
from .registry import as_extractor, get_extractor, load_fid_inception
from .schemas import InspectImage, InspectReport, ModelInfo, Progress, Report, ScoreOptions, Timing
from .settings import EngineSettings, get_engine_settings
from .stats import Moments, SetStats, check_compatible, load_stats, provenance
from .weights import Weights

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


def resolve_device(name: str) -> torch.device:
    """The torch device for an options' ``device``; one this machine does not have is the caller's
    error (InputError), never a crash later in the network."""
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
        torch.set_num_threads(settings.threads)


def network(options: ScoreOptions,
            settings: EngineSettings | None = None) -> tuple[FIDInceptionV3, Weights, torch.device]:
    """The FID Inception and its weights, loaded once per process and device (a worker keeps it)."""
    settings = settings or get_engine_settings()
    _use_threads(settings)
    device = resolve_device(options.device)
    net, weights = load_fid_inception(str(settings.weights) if settings.weights else None,
                                      str(settings.cache_dir), str(device))
    return net, weights, device


def as_options(options: ScoreOptions | dict | None, extractor_name: str | None = None) -> ScoreOptions:
    """ScoreOptions from what a caller gave. A dict is validated for the named extractor, so its
    dropout_at may name that extractor's stages (checked by Extractor.options_for)."""
    if isinstance(options, ScoreOptions):
        return options
    if options is None or isinstance(options, dict):
        data = dict(options or {})
        if extractor_name is not None:
            data.setdefault("extractor", extractor_name)
        return ScoreOptions.model_validate(data)
    raise InputError(f"options must be ScoreOptions or a dict, not a {type(options).__name__}")


def load_extractor(options: ScoreOptions | dict | None, extractor=None, settings: EngineSettings | None = None,
                   device: torch.device | None = None) -> tuple[Extractor, ScoreOptions, torch.device]:
    """The extractor a job runs on its device, and the options resolved for it (its name, dropout
    points checked against its stages). A registered extractor runs on ``options.device``; a given
    one on its own device unless ``options.device`` names another ("auto" keeps it where it is).
    ``device``, when given, wins over both (the Metric runs where the images are)."""
    settings = settings or get_engine_settings()
    _use_threads(settings)
    if extractor is None or isinstance(extractor, str):
        options = as_options(options, extractor)
        device = device or resolve_device(options.device)
        ex = get_extractor(extractor or options.extractor, device, settings)
    else:
        ex = as_extractor(extractor)
        options = as_options(options, ex.name)
        device = device or (ex.device if options.device == "auto" else resolve_device(options.device))
        ex = ex.to(device)
    return ex, ex.options_for(options), device


def reading_options(options: ScoreOptions | dict | None) -> ScoreOptions:
    """The options that decide how a set is read (``strict``, ``window``), before the extractor that
    checks the rest is loaded."""
    if isinstance(options, dict):
        return as_options({k: v for k, v in options.items() if k in ("strict", "window")})
    return as_options(options)


def input_rules(options: ScoreOptions, settings: EngineSettings) -> dict:
    """``open_images`` keyword arguments: the settings' limits and the options' reading rules."""
    return dict(strict=options.strict, limits=settings.limits, window=options.window)


class SetFeatures:
    """One set's statistics as its feature batches arrive: the plain pass, the T MC passes, each
    image's latent variance, and what the collector keeps (extras.py: a capped sample of feature rows
    for KID, FID∞ and the bootstrap, the domain inputs, thumbnails). Memory stays bounded."""

    def __init__(self, dim: int, passes: int, collector: Collector):
        self.plain = Moments(dim)
        self.collector = collector
        self.mc = [Moments(dim) for _ in range(passes)]
        self.names: list[str] = []
        self.intensity: Counter = Counter()  # images per intensity mapping (inputs/intensity.py), for the report
        self._variances: list[np.ndarray] = []

    @property
    def n(self) -> int:
        return len(self.names)

    def add(self, names: list[str], plain: torch.Tensor, mc: torch.Tensor, *, x: torch.Tensor,
            first_index: int) -> None:
        """Features of the next images: ``plain`` (n, d) and ``mc`` (T, n, d), on the CPU; ``x`` their
        network input; ``first_index`` the first one's index in its set."""
        self.collector.add(x, plain, mc, names, first_index)
        self.plain.add(plain.numpy())
        for t, moments in enumerate(self.mc):
            moments.add(mc[t].numpy())
        if len(self.mc) > 1:
            # predictive variance of each image's embedding across passes, averaged over dimensions
            self._variances.append(mc.double().var(dim=0, unbiased=True).mean(dim=1).numpy())
        self.names.extend(names)

    def stats(self, set_name: str, provenance: dict, source: str, skipped=(), min_images: int = MIN_IMAGES) -> SetStats:
        require_images(set_name, self.n, skipped, min_images, source)
        return SetStats(plain=self.plain, mc=self.mc, names=list(self.names),
                        latent_variance=np.concatenate(self._variances) if self._variances else np.zeros(0),
                        skipped=list(skipped), provenance=provenance, source=source,
                        intensity=dict(sorted(self.intensity.items())), **self.collector.finish())


def require_images(set_name: str, n: int, skipped=(), min_images: int = MIN_IMAGES, label: str = "") -> None:
    """InputError ``too_few_images`` when a set has fewer than ``min_images`` usable images once decoded
    (``ImageSet.check_usable`` has already refused a set that could not have had enough)."""
    if n < min_images:
        raise too_few_images(set_name, label, n, min_images, [(s.name, s.reason) for s in skipped])


def open_set(source, set_name: str, options: ScoreOptions, settings: EngineSettings | None = None,
             min_images: int = MIN_IMAGES) -> ImageSet | None:
    """A set's images listed and checked (``ImageSet.check_usable``: enough entries that may be images),
    nothing decoded; None for saved statistics. ``score()`` opens both sets this way before extracting
    either, so a mistake in the second argument fails in seconds."""
    if not is_image_source(source):
        return None
    images = open_images(source, **input_rules(options, settings or get_engine_settings()))
    images.check_usable(set_name, min_images)
    return images


def extract(source, set_name: str, options: ScoreOptions | dict | None, *, extractor=None,
            progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
            settings: EngineSettings | None = None,
            first_index: int = 0, min_images: int = MIN_IMAGES, images: ImageSet | None = None) -> SetStats:
    """Statistics of one set: plain pass plus T MC passes, per-image latent variance.
    ``first_index`` offsets image indices when a set is sharded (per-image masks depend on it); a
    shard (inputs.SetShard) may hold fewer than MIN_IMAGES (``min_images=0``), the merged set may not.
    ``images``: the source already opened by ``open_set``."""
    if isinstance(source, SetStats):
        return source
    if is_stats_source(source):
        return load_stats(source)

    settings = settings or get_engine_settings()
    ex, options, device = load_extractor(options, extractor, settings)
    model = MCDropout(ex, options, device, settings)
    open_kwargs = input_rules(options, settings)
    if images is None:
        images = open_set(source, set_name, options, settings, min_images)
    total = len(images)
    found = SetFeatures(ex.feature_dim, options.passes, Collector(ex, options))
    input_range = ex.input_range_for(options.resize)

    # On CUDA, batches of the fixed network shape (mc.py): batch_size does not change what runs.
    step = settings.gpu_batch if device.type == "cuda" else options.batch_size

    def prepared():
        for batch in batched(images, step):
            yield [n for n, _ in batch], to_model_input([im for _, im in batch], options.resize, ex.input_size,
                                                        input_range)

    workers = worker_count(settings.decode_workers, device, source, total)
    batches = iter(ParallelLoader(images, source, open_kwargs, workers, step, options.resize, ex.input_size,
                                  input_range) if workers else prefetched(prepared()))
    def report(batch: int = 0, fraction: float = 0.0) -> None:
        if progress:
            progress(Progress(stage="extracting", set=set_name, images_done=found.n, images_total=total,
                              passes=options.passes,
                              fraction_done=min(1.0, (found.n + fraction * batch) / total) if total else None))

    report()
    try:
        for batch_names, x in batches:
            if should_cancel and should_cancel():
                raise CancelledError("the job was cancelled")
            features = model.features(x, SET_TAGS[set_name], first_index + found.n, watch=found.collector.watch,
                                      on_step=partial(report, len(batch_names)) if progress else None)
            found.add(batch_names, *features, x=x, first_index=first_index + found.n)
            report()
    finally:
        batches.close()  # stops the decode processes or the prefetch thread
    found.intensity.update(images.intensity)
    return found.stats(set_name, provenance(ex.weights_sha256, options),
                       str(source) if isinstance(source, (str, Path)) else type(source).__name__, images.skipped,
                       min_images)


def is_image_source(source) -> bool:
    """Whether a source holds images (not saved statistics, which ``extract`` just reads)."""
    return not isinstance(source, SetStats) and not is_stats_source(source)


def is_stats_source(source) -> bool:
    """A path to a saved statistics .npz (not an image array)."""
    return isinstance(source, (str, Path)) and str(source).endswith(".npz") and is_stats_file(Path(source))


def is_stats_file(path: Path) -> bool:
    """A saved statistics .npz rather than an image array (inputs/array_rules.is_stats_npz decides)."""
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return is_stats_npz(z.files)
    except Exception:
        return False


def compute_stats(source, options: ScoreOptions | dict | None = None, *, extractor=None,
                  progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                  set_name: str = "real") -> SetStats:
    return extract(source, set_name, options, extractor=extractor, progress=progress, should_cancel=should_cancel)


def score(real, generated, options: ScoreOptions | dict | None = None, *, extractor=None,
          progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> Report:
    t0 = time.perf_counter()
    # Both sets are listed and checked before the network loads or any image is decoded: a mistake in
    # either argument fails in seconds. The generated set first: the reference is usually the large
    # one (listing a .tar.gz reads all of it), and a training loop's generated set the one that changes.
    sources, reading = {"real": real, "generated": generated}, reading_options(options)
    opened = {set_name: open_set(sources[set_name], set_name, reading) for set_name in ("generated", "real")}
    ex, options, device = load_extractor(options, extractor)
    t_load = time.perf_counter() - t0

    sides = {set_name: extract(source, set_name, options, extractor=ex, progress=progress,
                               should_cancel=should_cancel, images=opened[set_name])
             for set_name, source in sources.items()}
    t_extract = time.perf_counter() - t0 - t_load
    return report_from_stats(sides["real"], sides["generated"], options, ex, device, load_s=t_load,
                             extract_s=t_extract, progress=progress)


def model_info(ex: Extractor) -> ModelInfo:
    return ModelInfo(name=ex.description, weights_sha256=ex.weights_sha256, weights_source=ex.weights_source,
                     extractor=ex.name, feature_dim=ex.feature_dim, input_size=ex.input_size)


def report_from_stats(r: SetStats, g: SetStats, options: ScoreOptions, ex: Extractor, device: torch.device, *,
                      load_s: float, extract_s: float, progress: ProgressFn | None = None) -> Report:
    """The report of two sets' statistics, however they were made (one pass, merged shards, saved
    files, a Metric); ``options`` already resolved for ``ex``. Statistics of another network or of
    other number-changing options are refused (IncompatibleStatsError)."""
    expected = provenance(ex.weights_sha256, options)
    check_compatible(r.provenance, expected, "statistics and options")
    check_compatible(g.provenance, expected, "statistics and options")
    t0 = time.perf_counter()
    if progress:
        progress(Progress(stage="frechet", passes=options.passes))
    from .frechet import CPU, frechet_distance
    where = device if device.type == "cuda" else CPU  # the float64 linear algebra on the job's GPU
    fid = frechet_distance(r.plain.gaussian(), g.plain.gaussian(), where)
    mc = rep.fid_mc(r, g, where)
    if progress:
        progress(Progress(stage="report", passes=options.passes))
    boot, boot_samples = rep.bootstrap(r, g, options.bootstrap_resamples, options.seed)
    lv = rep.latent_variance(r, g, options.top_k)
    rows = rep.feature_rows(r, g, options.max_feature_rows)
    from .kid import fid_infinity, kid
    kid_value = kid(r.feature_rows(), g.feature_rows(), options.kid_subsets, options.kid_subset_size, options.seed)
    fid_inf = fid_infinity(r.feature_rows(), g.feature_rows(), options.seed)
    dom = rep.domain(r, g, ex.weights_sha256, options.resize, options.top_k)
    t_frechet = time.perf_counter() - t0

    result = Report(
        fid=fid, fid_mc=mc, fid_bootstrap=boot, latent_variance=lv,
        trust=rep.trust(fid, mc, boot, dom, r, g),
        counts={"real": {"used": r.n, "skipped": r.skipped}, "generated": {"used": g.n, "skipped": g.skipped}},
        config=options,
        preprocessing=describe(options.resize, ex.input_size, ex.input_range_for(options.resize)),
        intensity={"real": r.intensity, "generated": g.intensity},
        model=model_info(ex), device=str(device),
        timing=Timing(load_s=load_s, extract_s=extract_s, frechet_s=t_frechet, total_s=load_s + extract_s + t_frechet,
                      images_per_s=(r.n + g.n) / extract_s if extract_s > 0 else 0.0,
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        headline=rep.headline(fid, mc, boot_samples, rows), kid=kid_value, fid_infinity=fid_inf,
        feature_rows=rows, domain=dom,
    )
    if progress:
        progress(Progress(stage="done", passes=options.passes))
    return result


def inspect(source, options: ScoreOptions | dict | None = None, *, extractor=None, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None) -> InspectReport:
    ex, options, _ = load_extractor(options, extractor)
    if options.passes < 2:
        raise InputError("inspect needs at least 2 MC passes to measure latent variance (--passes)")
    stats = extract(source, "real", options, extractor=ex, progress=progress, should_cancel=should_cancel)
    v = np.asarray(stats.latent_variance)
    dom = rep.domain(None, stats, ex.weights_sha256, options.resize, options.top_k)
    from .extras import shipped_model
    model = shipped_model(ex.weights_sha256, options.resize)
    scores = rep.domain_scores(stats, model) if model is not None else None
    return InspectReport(
        images=[InspectImage(name=n, latent_variance=float(x),
                             domain_score=None if scores is None else float(scores[i]))
                for i, (n, x) in enumerate(zip(stats.names, v))],
        summary=rep.summarize(v), skipped=stats.skipped, config=options, domain=dom.generated)
