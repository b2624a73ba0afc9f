"""The pipeline: sources in, report out. Every other entry point (CLI, Celery task) calls these.

    images (images.py) -> network input (preprocess.py) -> trunk once, tail x (1 + T) (mc.py)
    -> per-pass streaming statistics (stats.py) -> Fréchet core (frechet.py) -> report (report.py)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import report as rep
from .errors import CancelledError, InputError
from .extras import Collector
from .images import open_images
from .inception import FEATURE_DIM, FIDInceptionV3
from .mc import SET_TAGS, MCInception
from .preprocess import RESIZE_MODES, to_model_input
from .schemas import (
    InspectImage,
    InspectReport,
    ModelInfo,
    Progress,
    Report,
    ScoreOptions,
    Timing,
)
from .settings import EngineSettings, get_engine_settings
from .stats import Moments, SetStats, check_compatible, fingerprint, load_stats
from .weights import Weights, load_weights

ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]
MIN_IMAGES = 2


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return device


@lru_cache(maxsize=4)
def _network(weights_path: str | None, cache_dir: str, device: str) -> tuple[FIDInceptionV3, Weights]:
    """Loaded once per process (a Celery worker keeps it between jobs)."""
    weights = load_weights(weights_path, cache_dir)
    # channels_last: ~1.7x faster convolutions on CPU (bench/RESULTS.md), same features within 1e-5
    net = FIDInceptionV3().load_canonical(weights.tensors).to(torch.device(device))
    net = net.to(memory_format=torch.channels_last).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, weights


def network(options: ScoreOptions, settings: EngineSettings | None = None) -> tuple[FIDInceptionV3, Weights, torch.device]:
    settings = settings or get_engine_settings()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = resolve_device(options.device)
    net, weights = _network(str(settings.weights) if settings.weights else None, str(settings.cache_dir), str(device))
    return net, weights, device


def _batches(images, batch_size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    batch = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetched(iterator: Iterator, depth: int = 2) -> Iterator:
    """Decode and resize the next batches in a thread while the network runs (torch releases the GIL)."""
    import queue

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def extract(source, set_name: str, options: ScoreOptions, *, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None, settings: EngineSettings | None = None,
            first_index: int = 0) -> SetStats:
    """Statistics of one set: plain pass plus T MC passes, per-image latent variance.
    ``first_index`` offsets image indices when a set is sharded (per-image masks depend on it)."""
    if isinstance(source, SetStats):
        return source
    if isinstance(source, (str, Path)) and str(source).endswith(".npz") and _is_stats_file(Path(source)):
        return load_stats(source)

    settings = settings or get_engine_settings()
    net, weights, device = network(options, settings)
    model = MCInception(net, options, device)
    images = open_images(source, strict=options.strict, max_pixels=settings.max_pixels,
                         max_images=settings.max_images, max_archive_members=settings.max_archive_members,
                         max_member_bytes=settings.max_member_bytes)
    total = len(images)
    plain = Moments(FEATURE_DIM)  # its rows for KID, FID∞ and the bootstrap: the collector's, capped
    extras = Collector(model, weights.tensors, options, weights.sha256)
    mc = [Moments(FEATURE_DIM) for _ in range(options.passes)]
    names: list[str] = []
    variances: list[np.ndarray] = []

    def prepared():
        for batch in _batches(images, options.batch_size):
            yield [n for n, _ in batch], to_model_input([im for _, im in batch], options.resize)

    if progress:
        progress(Progress(stage="extracting", set=set_name, images_done=0, images_total=total))
    for batch_names, x in _prefetched(prepared()):
        if should_cancel and should_cancel():
            raise CancelledError("the job was cancelled")
        f_plain, f_mc = model.features(x, SET_TAGS[set_name], first_index + len(names))
        extras.add(x, f_plain, f_mc, batch_names, first_index + len(names))
        plain.add(f_plain.numpy())
        for t in range(options.passes):
            mc[t].add(f_mc[t].numpy())
        if options.passes > 1:
            # predictive variance of each image's embedding across passes, averaged over dimensions
            variances.append(f_mc.double().var(dim=0, unbiased=True).mean(dim=1).numpy())
        names.extend(batch_names)
        if progress:
            progress(Progress(stage="extracting", set=set_name, images_done=len(names), images_total=total,
                              passes=options.passes))

    if len(names) < MIN_IMAGES:
        skipped = "; ".join(f"{s.name}: {s.reason}" for s in images.skipped[:5])
        raise InputError(f"the {set_name} set has {len(names)} usable image(s); at least {MIN_IMAGES} are "
                         f"needed (and a few hundred for a stable FID)" + (f". Skipped: {skipped}" if skipped else ""),
                         code="too_few_images")
    return SetStats(plain=plain, mc=mc, names=names,
                    latent_variance=np.concatenate(variances) if variances else np.zeros(0),
                    skipped=list(images.skipped), fingerprint=fingerprint(weights.sha256, options),
                    source=str(source) if isinstance(source, (str, Path)) else type(source).__name__,
                    **extras.finish())


def _is_stats_file(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "mu" in z.files
    except Exception:
        return False


def compute_stats(source, options: ScoreOptions | None = None, *, progress: ProgressFn | None = None,
                  should_cancel: CancelFn | None = None, set_name: str = "real") -> SetStats:
    return extract(source, set_name, options or ScoreOptions(), progress=progress, should_cancel=should_cancel)


def score(real, generated, options: ScoreOptions | None = None, *, progress: ProgressFn | None = None,
          should_cancel: CancelFn | None = None) -> Report:
    options = options or ScoreOptions()
    t0 = time.perf_counter()
    net, weights, device = network(options)
    t_load = time.perf_counter() - t0

    sides = {}
    for set_name, source in (("real", real), ("generated", generated)):
        sides[set_name] = extract(source, set_name, options, progress=progress, should_cancel=should_cancel)
    r, g = sides["real"], sides["generated"]
    expected = fingerprint(weights.sha256, options)
    check_compatible(r.fingerprint, expected, "statistics and options")
    check_compatible(g.fingerprint, expected, "statistics and options")
    t_extract = time.perf_counter() - t0 - t_load

    if progress:
        progress(Progress(stage="frechet", passes=options.passes))
    from .frechet import frechet_distance
    fid = frechet_distance(r.plain.gaussian(), g.plain.gaussian())
    mc = rep.fid_mc(r, g)
    boot, boot_samples = rep.bootstrap(r, g, options.bootstrap_resamples, options.seed)
    lv = rep.latent_variance(r, g, options.top_k)
    rows = rep.feature_rows(r, g, options.max_feature_rows)
    from .kid import fid_infinity, kid
    kid_value = kid(r.feature_rows(), g.feature_rows(), options.kid_subsets, options.kid_subset_size, options.seed)
    fid_inf = fid_infinity(r.feature_rows(), g.feature_rows(), options.seed)
    dom = rep.domain(r, g, weights.sha256, options.resize, options.top_k)
    t_frechet = time.perf_counter() - t0 - t_load - t_extract

    images = r.n + g.n
    total = time.perf_counter() - t0
    result = Report(
        fid=fid, fid_mc=mc, fid_bootstrap=boot, latent_variance=lv,
        trust=rep.trust(fid, mc, boot, dom, r, g),
        counts={"real": {"used": r.n, "skipped": r.skipped}, "generated": {"used": g.n, "skipped": g.skipped}},
        config=options, preprocessing=f"{options.resize}: {RESIZE_MODES[options.resize]}",
        model=ModelInfo(weights_sha256=weights.sha256, weights_source=Path(weights.source).name),
        device=str(device),
        timing=Timing(load_s=t_load, extract_s=t_extract, frechet_s=t_frechet, total_s=total,
                      images_per_s=images / t_extract if t_extract > 0 else 0.0,
                      finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
        headline=rep.headline(fid, mc, boot_samples, rows), kid=kid_value, fid_infinity=fid_inf,
        feature_rows=rows, domain=dom,
    )
    if progress:
        progress(Progress(stage="done", passes=options.passes))
    return result


def inspect(source, options: ScoreOptions | None = None, *, progress: ProgressFn | None = None,
            should_cancel: CancelFn | None = None) -> InspectReport:
    options = options or ScoreOptions()
    if options.passes < 2:
        raise InputError("inspect needs at least 2 MC passes to measure latent variance (--passes)")
    stats = extract(source, "real", options, progress=progress, should_cancel=should_cancel)
    v = np.asarray(stats.latent_variance)
    _, weights, _ = network(options)
    dom = rep.domain(None, stats, weights.sha256, options.resize, options.top_k)
    from .extras import shipped_model
    model = shipped_model(weights.sha256, options.resize)
    scores = rep.domain_scores(stats, model) if model is not None else None
    return InspectReport(
        images=[InspectImage(name=n, latent_variance=float(x),
                             domain_score=None if scores is None else float(scores[i]))
                for i, (n, x) in enumerate(zip(stats.names, v))],
        summary=rep.summarize(v), skipped=stats.skipped, config=options, domain=dom.generated)
