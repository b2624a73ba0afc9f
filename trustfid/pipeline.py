"""The pipeline: sources in, report out. Every other entry point (CLI, Celery task, Metric) calls these.

    images (inputs/) -> network input (preprocess.py) -> trunk once, tail x (1 + T) (mc.py, on the
    extractor of extractor.py) -> per-pass streaming statistics (stats.py) -> Fréchet core
    (frechet.py) -> report (report.py)

Every function takes ``extractor=``: None (``options.extractor``, by default the FID Inception), a
registry name, an ``Extractor`` or a list of stages (extractor.py).

torch is imported only where the FID network is loaded (``resolve_device``, ``network``,
``load_extractor``) or its features made (``extract`` with fid): a job of metrics frd alone never
imports it (its device is the string "cpu"), nor do its decode processes (decode_worker.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import plugins
from . import report as rep
from .errors import CancelledError, InputError
from .inputs import ImageSet, open_images
from .inputs.array_rules import is_stats_npz
from .inputs.dicomweb import fetches_dicomweb
from .inputs.rules import MIN_IMAGES, too_few_images
from .loader import ParallelLoader, prefetched, prepared_here, worker_count
from .plugins import Context
from .schemas import InspectImage, InspectReport, Progress, Report, ScoreOptions, SkippedFile, Timing
from .settings import EngineSettings, get_engine_settings
from .stats import Moments, RadiomicsStats, SetStats, check_compatible, load_stats, provenance

if TYPE_CHECKING:
    import torch

    from .extractor import Extractor
    from .extras import Collector
    from .inception import FIDInceptionV3
    from .weights import Weights

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


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
    from .registry import as_extractor, get_extractor

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


def metrics_of(options: ScoreOptions | dict | None) -> list[str]:
    """What a job computes (``ScoreOptions.metrics``), read before the options are validated for their
    extractor."""
    if isinstance(options, ScoreOptions):
        return options.metrics
    return list((options or {}).get("metrics") or ["fid"])


def job_extractor(options: ScoreOptions | dict | None, extractor=None, settings: EngineSettings | None = None
                  ) -> tuple[Extractor | None, ScoreOptions, torch.device | str]:
    """``load_extractor`` when the metrics include fid; without it no network (nor torch) is loaded: (None,
    the options, "cpu")."""
    if "fid" in metrics_of(options):
        return load_extractor(options, extractor, settings)
    return None, as_options(options), "cpu"


def reading_options(options: ScoreOptions | dict | None) -> ScoreOptions:
    """The options that decide how a set is read (``strict``, ``window``, ``frd_reading``), before the
    extractor that checks the rest is loaded."""
    if isinstance(options, dict):
        return as_options({k: v for k, v in options.items() if k in ("strict", "window", "frd_reading")})
    return as_options(options)


def input_rules(options: ScoreOptions, settings: EngineSettings, stored: bool = False) -> dict:
    """``open_images`` keyword arguments: the settings' limits and the options' reading rules; ``stored``
    keeps the stored intensities of images wider than 8 bits (for the radiomics)."""
    return dict(strict=options.strict, limits=settings.limits, window=options.window, stored=stored,
                encoded=stored and options.frd_reading == "frd-score")


class SetFeatures:
    """One set's statistics as its feature batches arrive: the plain pass, the T MC passes, each
    image's latent variance, and what the collector keeps (extras.py: a capped sample of feature rows
    for KID, FID∞ and the bootstrap, the domain inputs, thumbnails); with the FRD, the radiomic
    features' statistics (stats.RadiomicsStats). Memory stays bounded."""

    def __init__(self, dim: int, passes: int, collector: Collector | None, radiomics: RadiomicsStats | None = None):
        self.plain = Moments(dim)
        self.collector = collector
        self.mc = [Moments(dim) for _ in range(passes)]
        self.radiomics = radiomics
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

    def add_radiomics(self, names: list[str], features: list, first_index: int) -> None:
        """Radiomic features of the next images (decode_worker.prepare: (names, values), or why there are none)."""
        for i, (name, f) in enumerate(zip(names, features)):
            if isinstance(f, str):
                self.radiomics.skipped.append(SkippedFile(name=name, reason=f))
            else:
                self.radiomics.add([name], f[0], f[1][None], first_index + i)

    def stats(self, set_name: str, provenance: dict | None, source: str, skipped=(),
              min_images: int = MIN_IMAGES) -> SetStats:
        require_images(set_name, self.n, skipped, min_images, source)
        return SetStats(plain=self.plain, mc=self.mc, names=list(self.names),
                        latent_variance=np.concatenate(self._variances) if self._variances else np.zeros(0),
                        skipped=list(skipped), provenance=provenance, source=source,
                        intensity=dict(sorted(self.intensity.items())), radiomics=self.radiomics,
                        **(self.collector.finish() if self.collector is not None else {}))


def require_images(set_name: str, n: int, skipped=(), min_images: int = MIN_IMAGES, label: str = "") -> None:
    """InputError ``too_few_images`` when a set has fewer than ``min_images`` usable images once decoded
    (``ImageSet.check_usable`` has already refused a set that could not have had enough)."""
    if n < min_images:
        raise too_few_images(set_name, label, n, min_images, [(s.name, s.reason) for s in skipped])


def open_set(source, set_name: str, options: ScoreOptions, settings: EngineSettings | None = None,
             min_images: int = MIN_IMAGES, stored: bool = False) -> ImageSet | None:
    """A set's images listed and checked (``ImageSet.check_usable``: enough entries that may be images),
    nothing decoded; None for saved statistics. ``score()`` opens both sets this way before extracting
    either, so a mistake in the second argument fails in seconds."""
    if not is_image_source(source):
        return None
    images = open_images(source, **input_rules(options, settings or get_engine_settings(), stored))
    images.check_usable(set_name, min_images)
    return images


def extract(source, set_name: str, options: ScoreOptions | dict | None, *, extractor=None,
            progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
            settings: EngineSettings | None = None,
            first_index: int = 0, min_images: int = MIN_IMAGES, images: ImageSet | None = None,
            fid: bool | None = None, radiomics: bool | None = None) -> SetStats:
    """Statistics of one set: plain pass plus T MC passes, per-image latent variance; with the FRD, the
    radiomic features' statistics. ``fid`` / ``radiomics`` (default: what ``options.metrics`` asks for;
    "frd:auto" computes the radiomics in a later pass, ``frd_auto``) choose what runs: without ``fid``
    the FID network is not even loaded.
    ``first_index`` offsets image indices when a set is sharded (per-image masks depend on it); a
    shard (inputs.SetShard) may hold fewer than MIN_IMAGES (``min_images=0``), the merged set may not.
    ``images``: the source already opened by ``open_set`` (with ``stored`` when radiomics run)."""
    if isinstance(source, SetStats):
        return source
    if is_stats_source(source):
        return load_stats(source)

    settings = settings or get_engine_settings()
    metrics = metrics_of(options)
    fid = "fid" in metrics if fid is None else fid
    radiomics = "frd" in metrics if radiomics is None else radiomics
    if radiomics:
        from .radiomics import provenance as radiomics_provenance
        from .radiomics import require

        require()  # a clear error before any work when pyradiomics is missing
    if fid:
        from .extras import Collector
        from .mc import SET_TAGS, MCDropout

        ex, options, device = load_extractor(options, extractor, settings)
        model = MCDropout(ex, options, device, settings)
        prep = (options.resize, ex.input_size, ex.input_range_for(options.resize))
        # On CUDA, batches of the fixed network shape (mc.py): batch_size does not change what runs.
        step = settings.gpu_batch if device.type == "cuda" else options.batch_size
    else:
        options = as_options(options)
        device, prep, step = "cpu", None, options.batch_size
    open_kwargs = input_rules(options, settings, stored=radiomics)
    if images is None:
        images = open_set(source, set_name, options, settings, min_images, stored=radiomics)
    total = len(images)
    found = SetFeatures(ex.feature_dim if fid else 0, options.passes if fid else 0,
                        Collector(ex, options) if fid else None,
                        RadiomicsStats(options.max_feature_rows, options.seed,
                                       provenance=radiomics_provenance(options.frd_reading))
                        if radiomics else None)

    workers = worker_count(settings.decode_workers, device, source, total, radiomics)
    batches = iter(ParallelLoader(images, source, open_kwargs, workers, step, prep, radiomics) if workers
                   else prefetched(prepared_here(images, step, prep, radiomics)))

    def report(batch: int = 0, fraction: float = 0.0) -> None:
        if progress:
            progress(Progress(stage="extracting", set=set_name, images_done=found.n, images_total=total,
                              passes=options.passes if fid else 0,
                              fraction_done=min(1.0, (found.n + fraction * batch) / total) if total else None))

    report()
    try:
        for batch_names, x, feats in batches:
            if should_cancel and should_cancel():
                raise CancelledError("the job was cancelled")
            index = first_index + found.n
            if radiomics:
                found.add_radiomics(batch_names, feats, index)
            if fid:
                features = model.features(x, SET_TAGS[set_name], index, watch=found.collector.watch,
                                          on_step=partial(report, len(batch_names)) if progress else None)
                found.add(batch_names, *features, x=x, first_index=index)
            else:
                found.names.extend(batch_names)
            report()
    finally:
        batches.close()  # stops the decode processes or the prefetch thread
    found.intensity.update(images.intensity)
    return found.stats(set_name, provenance(ex.weights_sha256, options) if fid else None,
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


@fetches_dicomweb("source")  # a set may be a PACS study or series (inputs/dicomweb.py)
def compute_stats(source, options: ScoreOptions | dict | None = None, *, extractor=None,
                  progress: ProgressFn | None = None, should_cancel: CancelFn | None = None,
                  set_name: str = "real") -> SetStats:
    """One set's statistics, to save as a reference (``trustfid stats``). With frd:auto its radiomic
    features are added when the set itself is outside the FID network's domain."""
    ex, options, _ = job_extractor(options, extractor)
    stats = extract(source, set_name, options, extractor=ex, progress=progress, should_cancel=should_cancel)
    frd_auto({set_name: stats}, {set_name: source}, options, ex, progress=progress, should_cancel=should_cancel)
    return stats


@fetches_dicomweb("real", "generated")  # a set may be a PACS study or series (inputs/dicomweb.py)
def score(real, generated, options: ScoreOptions | dict | None = None, *, extractor=None,
          progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> Report:
    t0 = time.perf_counter()
    # Both sets are listed and checked before the network loads or any image is decoded: a mistake in
    # either argument fails in seconds. The generated set first: the reference is usually the large
    # one (listing a .tar.gz reads all of it), and a training loop's generated set the one that changes.
    sources, reading, metrics = {"real": real, "generated": generated}, reading_options(options), metrics_of(options)
    if "frd" in metrics or "frd:auto" in metrics:
        from .radiomics import require

        require()  # the medical extra is missing: say so now, not after the FID
    opened = {set_name: open_set(sources[set_name], set_name, reading, stored="frd" in metrics)
              for set_name in ("generated", "real")}
    ex, options, device = job_extractor(options, extractor)
    sources = {k: load_stats(v) if is_stats_source(v) else v for k, v in sources.items()}  # read once, here
    check_saved(sources, options, ex)
    t_load = time.perf_counter() - t0

    sides = {set_name: extract(source, set_name, options, extractor=ex, progress=progress,
                               should_cancel=should_cancel, images=opened[set_name])
             for set_name, source in sources.items()}
    frd_auto(sides, sources, options, ex, progress=progress, should_cancel=should_cancel)
    t_extract = time.perf_counter() - t0 - t_load
    return report_from_stats(sides["real"], sides["generated"], options, ex, device, load_s=t_load,
                             extract_s=t_extract, progress=progress)


def check_saved(sources: dict, options: ScoreOptions, ex: Extractor | None) -> None:
    """Sides given as statistics are checked against the options before the other side is extracted: their
    FID statistics' provenance, and with metrics frd their radiomic statistics' (IncompatibleStatsError,
    InputError ``no_radiomics``)."""
    for set_name, stats in sources.items():
        if not isinstance(stats, SetStats):
            continue
        if ex is not None and stats.plain.dim == 0:
            raise InputError(f"the {set_name} set's statistics ({stats.source}) hold no FID statistics (they were "
                             "saved with metrics frd alone): recompute them with metrics fid,frd, or score the FRD "
                             "alone (metrics frd)", code="no_fid_stats")
        if ex is not None:
            check_compatible(stats.provenance, provenance(ex.weights_sha256, options), "statistics and options")
        if options.frd_mode == "on":
            from .frd import check_frd_stats
            from .radiomics import provenance as radiomics_provenance

            check_frd_stats(stats.radiomics, set_name, stats.source or set_name,
                            radiomics_provenance(options.frd_reading))


def frd_auto(sides: dict[str, SetStats], sources: dict, options: ScoreOptions, ex: Extractor | None,
             **kwargs) -> None:
    """frd:auto, once the FID's statistics are in ``sides``: when the domain check finds the reference (the
    real set; a lone set is its own reference) outside the FID network's domain, a second pass computes the
    radiomic features of each set that lacks them and whose images are at hand (saved statistics without
    them stay without; the report then says so). ``kwargs``: extract's progress and should_cancel."""
    if options.frd_mode != "auto" or ex is None:
        return
    from .trust import OUTSIDE, domain_assessment

    real = sides["real"] if "real" in sides else next(iter(sides.values()))
    domain = rep.domain(real, sides.get("generated", real), ex.weights_sha256, options.resize, options.top_k)
    if domain_assessment(domain)[0] != OUTSIDE:
        return
    for set_name, source in sources.items():
        if sides[set_name].radiomics is None and is_image_source(source):
            sides[set_name].radiomics = extract(source, set_name, options, fid=False, radiomics=True,
                                                **kwargs).radiomics


def report_from_stats(r: SetStats, g: SetStats, options: ScoreOptions, ex: Extractor | None, device: torch.device, *,
                      load_s: float, extract_s: float, progress: ProgressFn | None = None) -> Report:
    """The report of two sets' statistics, however they were made (one pass, merged shards, saved
    files, a Metric); ``options`` already resolved for ``ex`` (None when metrics leave fid out: then the
    FID's sections, the domain check and the trust level are null). Statistics of another network or of
    other number-changing options are refused (IncompatibleStatsError)."""
    if ex is not None:
        expected = provenance(ex.weights_sha256, options)
        check_compatible(r.provenance, expected, "statistics and options")
        check_compatible(g.provenance, expected, "statistics and options")
    t0 = time.perf_counter()
    passes = options.passes if ex is not None else 0
    if progress:
        progress(Progress(stage="frechet", passes=passes))
    ctx = Context(options, ex, device, progress)
    fields, extra = plugins.sections(r, g, ctx)
    found = ctx.sections
    result = Report(
        counts={"real": {"used": r.n, "skipped": r.skipped}, "generated": {"used": g.n, "skipped": g.skipped}},
        config=options, intensity={"real": r.intensity, "generated": g.intensity}, device=str(device),
        timing=_timing(load_s, extract_s, time.perf_counter() - t0, r.n + g.n),
        headline=rep.headline(found.get("fid"), found.get("fid_mc"), found.get("boot_samples"),
                              found.get("feature_rows"), found.get("frd"), found.get("prdc")),
        extra_metrics=extra, **fields,
    )
    if progress:
        progress(Progress(stage="done", passes=passes))
    return result


def _timing(load_s: float, extract_s: float, frechet_s: float, images: int) -> Timing:
    return Timing(load_s=load_s, extract_s=extract_s, frechet_s=frechet_s, total_s=load_s + extract_s + frechet_s,
                  images_per_s=images / extract_s if extract_s > 0 else 0.0,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


MAX_EXPORT_ROWS = 200_000  # ScoreOptions.max_feature_rows' upper bound: every row of a set up to this size


@fetches_dicomweb("source")  # a set may be a PACS study or series (inputs/dicomweb.py)
def features(source, options: ScoreOptions | dict | None = None, *, extractor=None,
             progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
             ) -> tuple[list[str], np.ndarray, Extractor]:
    """Every image's plain-pass features (N x D float32, in the order of the names) and the extractor that
    made them (``trustfid features``): the rows the report's KID, intervals and precision/recall read, for
    checking them with another tool. Dropout passes, thumbnails and the FRD are not run."""
    options = as_options(options).model_copy(update=dict(passes=0, thumbnails=0, metrics=["fid"],
                                                         max_feature_rows=MAX_EXPORT_ROWS))
    images = open_set(source, "real", options)
    if images is None:
        raise InputError("features are computed from images; this is a statistics file (it holds no image's "
                         "features): give the folder, archive or array of images")
    if len(images) > MAX_EXPORT_ROWS:
        raise InputError(f"the set has {len(images)} files; features are written for at most {MAX_EXPORT_ROWS} "
                         "images at once: split the set")
    ex, options, _ = load_extractor(options, extractor)
    stats = extract(source, "real", options, extractor=ex, progress=progress, should_cancel=should_cancel,
                    images=images)
    return list(stats.names), stats.feature_rows(), ex


@fetches_dicomweb("source")  # a set may be a PACS study or series (inputs/dicomweb.py)
def inspect(source, options: ScoreOptions | dict | None = None, *, extractor=None, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None) -> InspectReport:
    ex, options, _ = load_extractor(options, extractor)
    if options.passes < 2:
        raise InputError("inspect needs at least 2 MC passes to measure latent variance (--passes)")
    stats = extract(source, "real", options, extractor=ex, progress=progress, should_cancel=should_cancel,
                    fid=True, radiomics=False)  # inspect reports the FID network's view of each image
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
