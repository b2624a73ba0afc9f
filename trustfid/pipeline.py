"""The pipeline: sources in, report out. Every other entry point (CLI, Celery task, Metric) calls these.

    images (inputs/) -> network input (preprocess.py) -> trunk once, tail x (1 + T) (mc.py, on the
    extractor of extractor.py) -> per-pass streaming statistics (stats.py) -> Fréchet core
    (frechet.py) -> report (report.py)

The entry points (``score``, ``compute_stats``, ``features``, ``inspect``) take options as ScoreOptions or a
dict and ``extractor=``: None (``options.extractor``, by default the FID Inception), a registry name, an
``Extractor`` or a list of stages (extractor.py). They resolve them once into a ``Job`` (job.py); the inner
functions (``extract``, ``frd_auto``, ``report_from_stats``) take that Job and loop over the per-image work its
metrics need (plugins.py), naming no metric.

torch is imported only where the network is loaded (job.open_job) or its features made: a job of metrics
frd alone never imports it (its device is the string "cpu"), nor do its decode processes (decode_worker.py).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import plugins, timing
from . import report as rep
from .decode_worker import FrdLimits
from .errors import CancelledError, InputError
from .inputs import ImageSet, open_images
from .inputs.array_rules import is_stats_npz
from .inputs.dicomweb import fetches_dicomweb
from .inputs.rules import MIN_IMAGES, too_few_images
from .job import Job, open_job, resolve, work_of
from .loader import ParallelLoader, prefetched, prepared_here, worker_count
from .plugins import FEATURES, RADIOMICS, Context
from .schemas import InspectImage, InspectReport, Progress, Report, ScoreOptions, SetTiming, SkippedFile, Timing
from .settings import EngineSettings, get_engine_settings
from .stats import Moments, RadiomicsStats, SetStats, check_compatible, load_stats, provenance

if TYPE_CHECKING:
    import torch

    from .extractor import Extractor
    from .extras import Collector
    from .mc import MCDropout

ProgressFn = Callable[[Progress], None]
RADIOMICS_STEP = 4  # images per step of a set whose network does not run (radiomics alone): progress moves with them
CancelFn = Callable[[], bool]


def input_rules(options: ScoreOptions, settings: EngineSettings, stored: bool = False) -> dict:
    """``open_images`` keyword arguments: the settings' limits and the options' reading rules; ``stored``
    keeps the stored intensities of images wider than 8 bits (for the radiomics)."""
    return dict(strict=options.strict, limits=settings.limits, window=options.window, stored=stored,
                encoded=stored and options.frd_reading == "frd-score")


class SetFeatures:
    """One set's statistics as its batches arrive, for the per-image work of its job (``start``): with
    FEATURES, the plain pass, the T MC passes, each image's latent variance, and what the collector keeps
    (extras.py: a capped sample of feature rows for KID, FID∞, the bootstrap and PRDC, the domain inputs,
    thumbnails, the copy prints); with RADIOMICS, the radiomic features' statistics (stats.RadiomicsStats).
    Memory stays bounded. ``take`` is the one per-batch step of ``extract`` and the Metric."""

    def __init__(self, dim: int, passes: int, collector: Collector | None, radiomics: RadiomicsStats | None = None,
                 model: MCDropout | None = None, set_name: str = "real", provenance: dict | None = None):
        self.plain = Moments(dim)
        self.collector = collector
        self.mc = [Moments(dim) for _ in range(passes)]
        self.radiomics = radiomics
        self.model = model  # the extractor under MC dropout (None: no FEATURES)
        self.set_name = set_name
        self.provenance = provenance  # stats.provenance of the features (None: no FEATURES)
        self.names: list[str] = []
        self.intensity: Counter = Counter()  # images per intensity mapping (inputs/intensity.py), for the report
        self._variances: list[np.ndarray] = []

    @classmethod
    def start(cls, job: Job, set_name: str, work=None) -> SetFeatures:
        """An empty set for ``work`` (default: the job's)."""
        work = job.work if work is None else work
        o = job.options
        radiomics = None
        if RADIOMICS in work:
            from .radiomics import provenance as radiomics_provenance

            radiomics = RadiomicsStats(o.max_feature_rows, o.seed, provenance=radiomics_provenance(o.frd_reading))
        if FEATURES not in work:
            return cls(0, 0, None, radiomics, set_name=set_name)
        from .extras import Collector

        ex = job.extractor
        return cls(ex.feature_dim, o.passes, Collector(ex, o), radiomics, job.model, set_name,
                   provenance(ex.weights_sha256, o))

    @property
    def n(self) -> int:
        return len(self.names)

    def take(self, names: list[str], x: torch.Tensor | None, radiomics: list | None, first_index: int,
             on_step: Callable | None = None) -> None:
        """The next images: ``x`` their network input (with FEATURES), ``radiomics`` their radiomic features
        (with RADIOMICS; decode_worker.prepare), ``first_index`` the first one's index in its set;
        ``on_step(fraction)`` as the MC passes go."""
        clock = timing.current()
        t0 = time.perf_counter()
        inner = sum(clock.get(k, self.set_name) for k in ("network_s", "mc_s", "probe_s"))
        try:
            if self.radiomics is not None:
                self.add_radiomics(names, radiomics, first_index)
            if self.model is None:
                self.names.extend(names)
                return
            from .mc import SET_TAGS

            with clock.on_set(self.set_name):  # the network's passes and the probe add their own stages
                plain, mc = self.model.features(x, SET_TAGS[self.set_name], first_index, watch=self.collector.watch,
                                                on_step=on_step)
                self.add(names, plain, mc, x=x, first_index=first_index)
        finally:  # the rest of the batch's work: what the stages inside did not count
            inner = sum(clock.get(k, self.set_name) for k in ("network_s", "mc_s", "probe_s")) - inner
            clock.add("collect_s", max(0.0, time.perf_counter() - t0 - inner), self.set_name)

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

    def stats(self, source: str, skipped=(), min_images: int = MIN_IMAGES) -> SetStats:
        require_images(self.set_name, self.n, skipped, min_images, source)
        return SetStats(plain=self.plain, mc=self.mc, names=list(self.names),
                        latent_variance=np.concatenate(self._variances) if self._variances else np.zeros(0),
                        skipped=list(skipped), provenance=self.provenance, source=source,
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
    with timing.current().stage("listing_s", set_name):
        images = open_images(source, **input_rules(options, settings or get_engine_settings(), stored))
        images.check_usable(set_name, min_images)
    return images


def extract(source, set_name: str, job: Job, *, work=None, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None, first_index: int = 0, min_images: int = MIN_IMAGES,
            images: ImageSet | None = None) -> SetStats:
    """Statistics of one set for the per-image work ``work`` (default: the job's; frd_auto asks for the
    radiomics alone): SetFeatures.take on each batch as the decode processes (loader.py) give them.
    ``first_index`` offsets image indices when a set is sharded (per-image masks depend on it); a
    shard (inputs.SetShard) may hold fewer than MIN_IMAGES (``min_images=0``), the merged set may not.
    ``images``: the source already opened by ``open_set`` (with ``stored`` when radiomics run). Saved
    statistics (a SetStats or a statistics .npz) are returned as they are."""
    if isinstance(source, SetStats):
        return source
    clock = timing.current()
    if is_stats_source(source):
        with clock.stage("listing_s", set_name):
            return load_stats(source)
    settings, options = job.settings, job.options
    found = SetFeatures.start(job, set_name, work)
    network, radiomics = found.model is not None, found.radiomics is not None
    prep = step = None
    if network:
        ex = job.extractor
        prep = (options.resize, ex.input_size, ex.input_range_for(options.resize))
        # On CUDA, batches of the fixed network shape (mc.py): batch_size does not change what runs.
        step = settings.gpu_batch if job.device.type == "cuda" else options.batch_size
    step = step or min(options.batch_size, RADIOMICS_STEP)  # no network to batch for: progress every few images
    open_kwargs = input_rules(options, settings, stored=radiomics)
    if images is None:
        images = open_set(source, set_name, options, settings, min_images, stored=radiomics)
    total = len(images)

    workers = worker_count(settings.decode_workers, job.device, source, total, radiomics)
    frd = FrdLimits.of(settings) if radiomics else None
    decoders: dict[str, float] = {}  # the decoders' own seconds (timing.DECODER_STAGES), once they are done
    loader = ParallelLoader(images, source, open_kwargs, workers, step, prep, frd) if workers else None
    batches = iter(loader if loader is not None else prefetched(prepared_here(images, step, prep, frd, decoders)))

    def report(batch: int = 0, fraction: float = 0.0) -> None:
        if progress:
            progress(Progress(stage="extracting", set=set_name, images_done=found.n, images_total=total,
                              passes=options.passes if network else 0,
                              fraction_done=min(1.0, (found.n + fraction * batch) / total) if total else None))

    report()
    try:
        while True:
            with clock.stage("decode_wait_s", set_name):
                batch = next(batches, None)
            if batch is None:
                break
            batch_names, x, feats = batch
            if should_cancel and should_cancel():
                raise CancelledError("the job was cancelled")
            found.take(batch_names, x, feats, first_index + found.n,
                       on_step=partial(report, len(batch_names)) if progress and network else None)
            report()
    finally:
        batches.close()  # stops the decode processes or the prefetch thread
    for stage, seconds in (loader.seconds if loader is not None else decoders).items():
        clock.add(stage, seconds, set_name)
    found.intensity.update(images.intensity)
    return found.stats(str(source) if isinstance(source, (str, Path)) else type(source).__name__, images.skipped,
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
    job = open_job(options, extractor)
    stats = extract(source, set_name, job, progress=progress, should_cancel=should_cancel)
    frd_auto({set_name: stats}, {set_name: source}, job, progress=progress, should_cancel=should_cancel)
    return stats


@fetches_dicomweb("real", "generated")  # a set may be a PACS study or series (inputs/dicomweb.py)
def score(real, generated, options: ScoreOptions | dict | None = None, *, extractor=None,
          progress: ProgressFn | None = None, should_cancel: CancelFn | None = None) -> Report:
    with timing.job_clock():
        t0 = time.perf_counter()
        options = resolve(options, extractor)
        work = work_of(options)
        # Both sets are listed and checked before the network loads or any image is decoded: a mistake in
        # either argument fails in seconds. The generated set first: the reference is usually the large
        # one (listing a .tar.gz reads all of it), and a training loop's generated set the one that changes.
        sources = {"real": real, "generated": generated}
        opened = {set_name: open_set(sources[set_name], set_name, options, stored=RADIOMICS in work)
                  for set_name in ("generated", "real")}
        job = timed_open_job(options, extractor, work=work)
        sources = {k: _read_stats(v, k) for k, v in sources.items()}  # read once, here
        check_saved(sources, job)
        t_load = time.perf_counter() - t0

        sides = {set_name: extract(source, set_name, job, progress=progress, should_cancel=should_cancel,
                                   images=opened[set_name])
                 for set_name, source in sources.items()}
        frd_auto(sides, sources, job, progress=progress, should_cancel=should_cancel)
        t_extract = time.perf_counter() - t0 - t_load
        return report_from_stats(sides["real"], sides["generated"], job, load_s=t_load, extract_s=t_extract,
                                 progress=progress)


def timed_open_job(options, extractor=None, **kwargs) -> Job:
    """``open_job``, its time the current clock's ``network_load_s`` (timing.py)."""
    with timing.current().stage("network_load_s"):
        return open_job(options, extractor, **kwargs)


def _read_stats(source, set_name: str):
    """A side given as a saved statistics file, read (its time the set's listing); any other side as it is."""
    if not is_stats_source(source):
        return source
    with timing.current().stage("listing_s", set_name):
        return load_stats(source)


def check_saved(sources: dict, job: Job) -> None:
    """Sides given as statistics are checked against the job before the other side is extracted: their
    FID statistics' provenance, and with metrics frd their radiomic statistics' (IncompatibleStatsError,
    InputError ``no_radiomics``)."""
    ex, options = job.extractor, job.options
    for set_name, stats in sources.items():
        if not isinstance(stats, SetStats):
            continue
        if ex is not None and stats.plain.dim == 0:
            raise InputError(f"the {set_name} set's statistics ({stats.source}) hold no FID statistics (they were "
                             "saved with metrics frd alone): recompute them with metrics fid,frd, or score the FRD "
                             "alone (metrics frd)", code="no_fid_stats")
        if ex is not None:
            check_compatible(stats.provenance, provenance(ex.weights_sha256, options), "statistics and options")
        if RADIOMICS in job.work:
            from .frd import check_frd_stats
            from .radiomics import provenance as radiomics_provenance

            check_frd_stats(stats.radiomics, set_name, stats.source or set_name,
                            radiomics_provenance(options.frd_reading))


def frd_auto(sides: dict[str, SetStats], sources: dict, job: Job, **kwargs) -> None:
    """frd:auto, once the FID's statistics are in ``sides``: when the domain check finds the reference (the
    real set; a lone set is its own reference) outside the FID network's domain, a second pass computes the
    radiomic features of each set that lacks them and whose images are at hand (saved statistics without
    them stay without; the report then says so). ``kwargs``: extract's progress and should_cancel."""
    for set_name in frd_auto_sets(sides, sources, job):
        sides[set_name].radiomics = extract(sources[set_name], set_name, job, work={RADIOMICS}, **kwargs).radiomics


def frd_auto_sets(sides: dict[str, SetStats], sources: dict, job: Job) -> list[str]:
    """The sets whose radiomics frd:auto computes in a second pass (``frd_auto``; the sharded service runs
    that pass in shards): none unless the options ask for frd:auto and the domain check finds the reference
    outside the network's domain."""
    ex, options = job.extractor, job.options
    if options.frd_mode != "auto" or ex is None:
        return []
    from .trust import OUTSIDE, domain_assessment

    real = sides["real"] if "real" in sides else next(iter(sides.values()))
    domain = rep.domain(real, sides.get("generated", real), ex.weights_sha256, options.resize, options.top_k)
    if domain_assessment(domain)[0] != OUTSIDE:
        return []
    return [name for name, source in sources.items() if sides[name].radiomics is None and is_image_source(source)]


def report_from_stats(r: SetStats, g: SetStats, job: Job, *, load_s: float, extract_s: float,
                      progress: ProgressFn | None = None) -> Report:
    """The report of two sets' statistics, however they were made (one pass, merged shards, saved
    files, a Metric), each registered metric adding its sections (plugins.py). Without an extractor (metrics
    leave fid out) the FID's sections, the domain check and the trust level are null. Statistics of another
    network or of other number-changing options are refused (IncompatibleStatsError)."""
    ex, options = job.extractor, job.options
    if ex is not None:
        expected = provenance(ex.weights_sha256, options)
        check_compatible(r.provenance, expected, "statistics and options")
        check_compatible(g.provenance, expected, "statistics and options")
    t0 = time.perf_counter()
    passes = options.passes if ex is not None else 0
    if progress:
        progress(Progress(stage="frechet", passes=passes))
    with contextlib.ExitStack() as stack:
        clock = timing.active() or stack.enter_context(timing.recording())  # the merge's, the Metric's: its own
        ctx = Context(options, ex, job.device, progress)
        fields, extra = plugins.sections(r, g, ctx)
        t_report = time.perf_counter()
        headline = plugins.headline(ctx)
        counts = {side: {"used": s.n, "skipped": sorted(s.skipped, key=lambda f: f.name)}  # by name, on every path
                  for side, s in (("real", r), ("generated", g))}
        result = Report(
            counts=counts, config=options, intensity={"real": r.intensity, "generated": g.intensity},
            device=str(job.device), timing=Timing(), headline=headline, extra_metrics=extra, **fields,
        )
        clock.add("report_s", time.perf_counter() - t_report)
        result.timing = _timing(load_s, extract_s, time.perf_counter() - t0, {"real": r.n, "generated": g.n}, clock)
    if progress:
        progress(Progress(stage="done", passes=passes, fraction_done=1.0))
    return result


def _timing(load_s: float, extract_s: float, frechet_s: float, images: dict[str, int], clock: timing.Clock) -> Timing:
    sets = {}
    for set_name, n in images.items():
        stages = clock.sets.get(set_name)
        if stages is None:  # extracted elsewhere (merged shards)
            continue
        decoded = any(k in stages for k in timing.DECODER_STAGES)
        sets[set_name] = SetTiming(images=n, **{k: stages.get(k, 0.0 if decoded or k not in timing.DECODER_STAGES
                                                                else None) for k in timing.SET_STAGES})
    job = clock.job
    return Timing(load_s=load_s, extract_s=extract_s, frechet_s=frechet_s, total_s=load_s + extract_s + frechet_s,
                  images_per_s=sum(images.values()) / extract_s if extract_s > 0 else 0.0,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  startup_s=clock.startup_s(), network_load_s=job.get("network_load_s"), sets=sets,
                  metrics=dict(clock.metrics), **{k: job.get(k) for k in ("frechet_plain_s", "frechet_mc_s",
                                                                          "bootstrap_s", "domain_check_s", "report_s")})


MAX_EXPORT_ROWS = 200_000  # ScoreOptions.max_feature_rows' upper bound: every row of a set up to this size


@fetches_dicomweb("source")  # a set may be a PACS study or series (inputs/dicomweb.py)
def features(source, options: ScoreOptions | dict | None = None, *, extractor=None,
             progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
             ) -> tuple[list[str], np.ndarray, Extractor]:
    """Every image's plain-pass features (N x D float32, in the order of the names) and the extractor that
    made them (``trustfid features``): the rows the report's KID, intervals and precision/recall read, for
    checking them with another tool. Dropout passes, thumbnails and the FRD are not run."""
    options = resolve(options, extractor).model_copy(update=dict(passes=0, thumbnails=0, metrics=["fid"],
                                                                 max_feature_rows=MAX_EXPORT_ROWS))
    images = open_set(source, "real", options)
    if images is None:
        raise InputError("features are computed from images; this is a statistics file (it holds no image's "
                         "features): give the folder, archive or array of images")
    if len(images) > MAX_EXPORT_ROWS:
        raise InputError(f"the set has {len(images)} files; features are written for at most {MAX_EXPORT_ROWS} "
                         "images at once: split the set")
    job = open_job(options, extractor, work={FEATURES})
    stats = extract(source, "real", job, progress=progress, should_cancel=should_cancel, images=images)
    return list(stats.names), stats.feature_rows(), job.extractor


@fetches_dicomweb("source")  # a set may be a PACS study or series (inputs/dicomweb.py)
def inspect(source, options: ScoreOptions | dict | None = None, *, extractor=None, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None) -> InspectReport:
    job = open_job(options, extractor, work={FEATURES})  # inspect reports the FID network's view of each image
    ex, options = job.extractor, job.options
    if options.passes < 2:
        raise InputError("inspect needs at least 2 MC passes to measure latent variance (--passes)")
    stats = extract(source, "real", job, progress=progress, should_cancel=should_cancel)
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
