"""The library's commands of `trustfid` (``python -m trustfid`` runs them without the service):

    trustfid score REAL GENERATED [MC options] [--json PATH] [--format text|json|fhir]
    trustfid stats SET -o FILE.npz [MC options]
    trustfid inspect SET --json PATH [MC options]
    trustfid features SET -o FILE.npz [options]

Each SET is a folder, a .zip/.tar/.tar.gz archive, a .npy/.npz image array, a PACS study or series
(dicomweb+https://HOST/PATH/studies/UID[/series/UID], read with the credentials of
TRUSTFID_DICOMWEB_SERVERS) or (score) a saved statistics .npz; a side given as saved statistics
supplies the MC options left out (and an option given differently is refused before anything runs).
Exit codes: 0 success, 2 bad input (one line on stderr saying what and what to do), 3 the service
could not be reached or did not finish in time (the service commands), 1 an internal error (a bug:
please report it).

The installed `trustfid` command is app/cli.py, which adds the service's commands (serve, worker,
submit) to this parser. The engine (torch) is imported lazily inside the commands, and numpy once the
arguments are parsed, so `trustfid --help`, a mistake in the arguments and the service commands answer
fast (tests/test_cli.py checks what they import).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from pydantic import ValidationError

from . import __version__
from .errors import TrustfidError, UnreachableError
from .inputs.dicomweb import FORM
from .inputs.rules import plural
from .schemas import BLOCKS, Progress, ScoreOptions, validation_message
from .timing import Clock, process_start, recording

# ScoreOptions that only a comparison of two sets uses (a command on one set, inspect, does not offer them)
PAIR_ONLY = ("metrics", "frd_reading", "frd_paper_log", "bootstrap_resamples", "max_feature_rows", "prdc_k",
             "copy_check", "kid_subsets", "thumbnails")


def _add_mc_options(p: argparse.ArgumentParser, saved_note: str = "", pair: bool = True) -> None:
    """The options of ScoreOptions. Those that change the numbers default to None, so that a command can
    tell an option the user gave from one left out (and fill the latter from saved statistics). ``pair``
    False: without PAIR_ONLY (their defaults)."""
    d = ScoreOptions()
    g = p.add_argument_group("MC dropout and preprocessing (these change the numbers)" + saved_note)
    g.add_argument("--passes", type=int, metavar="T",
                   help=f"stochastic MC-dropout passes (default {d.passes}; 0 = plain FID only)")
    g.add_argument("--dropout-rate", type=float, metavar="P", help=f"dropout probability p (default {d.dropout_rate})")
    g.add_argument("--dropout-at", metavar="BLOCKS",
                   help=f"comma-separated blocks followed by dropout (default {','.join(d.dropout_at)}; any of "
                        f"{', '.join(BLOCKS)})")
    g.add_argument("--dropout-kind", choices=["element", "channel"],
                   help="element: drop single activations; channel: drop whole feature maps "
                        f"(default {d.dropout_kind})")
    g.add_argument("--mask-mode", choices=["shared", "per_image"],
                   help="shared: pass t is one sampled network for every image, so the passes give a distribution of "
                        f"FIDs; per_image: every image gets its own masks (default {d.mask_mode})")
    g.add_argument("--seed", type=int,
                   help=f"seeds the dropout masks: same seed and inputs, same report (default {d.seed})")
    g.add_argument("--extractor", metavar="NAME",
                   help=f"feature network, by registered name (default {d.extractor}: the FID Inception every "
                        "published FID uses)")
    g.add_argument("--window", metavar="LOW,HIGH", type=_window,
                   help="fixed intensity window for images wider than 8 bits (16-bit PNG/TIFF, float, DICOM values "
                        "such as CT Hounsfield units): LOW..HIGH maps to 0..255, clipped. Default: each image's own "
                        "min..max (DICOM: the file's own window). Use one window for both sets; docs/IMAGES.md")
    g.add_argument("--precision", choices=["fp32", "tf32", "bf16"],
                   help=f"the network's arithmetic (default {d.precision}: strict float32, the published FID; tf32 and "
                        "bf16 are faster on a GPU and move the FID, docs/API.md)")
    g.add_argument("--resize", choices=["clean", "legacy_pytorch"],
                   help="clean = clean-fid's PIL bicubic; legacy_pytorch = pytorch-fid's bilinear "
                        f"(default {d.resize})")
    o = p.add_argument_group("run")
    o.add_argument("--device", default=d.device, help="auto (default: cuda when available), cpu, cuda or cuda:N")
    o.add_argument("--batch-size", type=int, default=d.batch_size, metavar="N",
                   help=f"images per forward pass (default {d.batch_size}); does not change results")
    o.add_argument("--top-k", type=int, default=d.top_k, metavar="K",
                   help=f"most uncertain / most atypical images listed per set (default {d.top_k})")
    o.add_argument("--strict", action="store_true", help="an unreadable file is an error instead of being skipped")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if not pair:  # one image set: what only a comparison of two sets uses is left out
        p.set_defaults(**{k: getattr(d, k) for k in PAIR_ONLY})
        return
    o = p.add_argument_group("comparing two sets")
    o.add_argument("--metrics", default=",".join(d.metrics), type=_metrics, metavar="LIST",
                   help="what to compute, comma-separated: fid (default), frd (the Fréchet Radiomics Distance, "
                        "radiomic features from pyradiomics as frd-score v1 computes them; needs the medical extra), "
                        "frd:auto (the FRD only when the reference set is outside the FID network's domain). "
                        "--metrics frd alone skips the FID network")
    o.add_argument("--frd-reading", choices=["frd-score", "decoded"], default=d.frd_reading,
                   help="what the FRD's radiomics read: frd-score (default) reads JPEGs and images with alpha with "
                        "SimpleITK as frd-score does (a JPEG's dpi header becomes its pixel spacing); decoded uses the "
                        "image the FID sees (docs/IMAGES.md)")
    o.add_argument("--frd-paper-log", action="store_true",
                   help="FRD as log(d) (the paper's Eq. 3) instead of frd-score's default log(d²): half the value, "
                        "not comparable with published FRDs")
    o.add_argument("--bootstrap", type=int, default=d.bootstrap_resamples, dest="bootstrap_resamples", metavar="N",
                   help=f"image resamples for the bootstrap interval (default {d.bootstrap_resamples}; 0 = off)")
    o.add_argument("--max-feature-rows", type=int, default=d.max_feature_rows, metavar="N",
                   help=f"feature rows kept per set for KID, FID∞, the bootstrap and precision/recall/density/"
                        f"coverage (default {d.max_feature_rows}; a set with more images uses a seeded sample)")
    o.add_argument("--prdc-k", type=int, default=d.prdc_k, metavar="K",
                   help=f"nearest neighbours of precision, recall, density and coverage (default {d.prdc_k}, as "
                        "Naeem et al.; 0 = none)")
    o.add_argument("--no-copy-check", dest="copy_check", action="store_false",
                   help="leave out the copy check (every generated image against every reference image for "
                        "near-copies; on by default with fid)")
    o.add_argument("--kid-subsets", type=int, default=d.kid_subsets, metavar="N",
                   help=f"KID subsets (default {d.kid_subsets}, as clean-fid; 0 = no KID)")
    o.add_argument("--thumbnails", type=int, default=d.thumbnails, metavar="N",
                   help=f"thumbnails of the most atypical images per set in the JSON report (default {d.thumbnails})")


def _metrics(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _window(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), e.g. -1000,1000; got {text!r}") from None
    return low, high


def _options(args, saved: list[tuple[str, dict]] = ()) -> ScoreOptions:
    """The options of a command: those given, then for each saved statistics file (name, its
    STATS_OPTIONS) the ones left out; a given option that differs from a file's is refused here,
    before any image is read."""
    from .stats import STATS_OPTIONS, merge_options  # numpy: after the arguments are parsed

    chosen = {name: getattr(args, name) for name in STATS_OPTIONS if getattr(args, name) is not None}
    if args.dropout_at is not None:
        chosen["dropout_at"] = [b.strip() for b in args.dropout_at.split(",") if b.strip()]
    chosen = ScoreOptions(**chosen).model_dump(include=set(chosen))  # validated and normalized
    for source, options in saved:
        chosen = merge_options(chosen, options, source)
    return ScoreOptions(**chosen, device=args.device, batch_size=args.batch_size,
                        bootstrap_resamples=args.bootstrap_resamples, top_k=args.top_k, strict=args.strict,
                        max_feature_rows=args.max_feature_rows, kid_subsets=args.kid_subsets,
                        thumbnails=args.thumbnails, metrics=args.metrics, frd_paper_log=args.frd_paper_log,
                        frd_reading=args.frd_reading, prdc_k=args.prdc_k, copy_check=args.copy_check)


def _saved(*sources: str) -> list[tuple[str, dict]]:
    """(file name, options) of each source that is a trustfid statistics file."""
    from .stats import saved_options

    return [(Path(s).name, o) for s in sources if s.endswith(".npz") and (o := saved_options(s)) is not None]


BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


class Bars:
    """tqdm bars on stderr, one per set; silent when stderr is not a terminal or with --quiet, unless
    ``lines``: then one line per stage instead of bars (for logs)."""

    def __init__(self, quiet: bool, lines: bool = False):
        self.enabled = not quiet and sys.stderr.isatty()
        self.lines = lines and not quiet and not self.enabled
        self.bars: dict = {}
        self._stage = None

    def __call__(self, p: Progress) -> None:
        if self.lines and (p.stage, p.set) != self._stage:
            self._stage = (p.stage, p.set)
            images = f" set, {p.images_total} images" if p.set and p.images_total is not None else ""
            print(f"  {p.stage} {p.set or ''}{images}".rstrip(), file=sys.stderr, flush=True)
        if not self.enabled or p.stage != "extracting" or p.set is None:
            return
        from tqdm import tqdm

        bar = self.bars.get(p.set)
        if bar is not None and (p.fraction_done or 0.0) < bar.n - 1e-9:  # a second pass over the set (frd:auto)
            bar.close()
            bar = None
        if bar is None:  # the bar follows fraction_done, which moves within a batch too
            bar = self.bars[p.set] = tqdm(total=1.0, desc=f"{p.set:>9}", file=sys.stderr, bar_format=BAR_FORMAT)
        bar.set_description_str(f"{p.set:>9} {p.images_done}/{p.images_total} images", refresh=False)
        bar.update((p.fraction_done or 0.0) - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def write_json(path: str | None, model) -> None:
    text = model.model_dump_json(indent=2)
    if path in (None, "-"):
        return
    Path(path).write_text(text + "\n")


def summary(report) -> str:
    h = report.headline
    lines = [h.text if h else f"FID {report.fid:.4f}"]
    if report.fid is not None:
        lines.append(f"  plain FID {report.fid:.4f}   ({report.counts.real.used} real vs "
                     f"{report.counts.generated.used} generated images, {report.preprocessing.split(':')[0]} resize)")
    if h:
        lines += [f"  warning: {w}" for w in h.warnings]
    if report.fid is not None:
        lines += _fid_lines(report)
    if report.frd is not None:
        lines += _frd_lines(report.frd)
    for p in (report.prdc, report.prdc_radiomics):
        if p is not None:
            lines += _prdc_lines(p)
    m = report.memorization
    if m is not None:
        lines.append(f"copy check: {m.copies_found} of {m.generated} generated images are near-copies of the "
                     f"{m.reference} reference images (score ≥ {m.threshold}; median nearest score "
                     f"{m.median_score:.3f})")
        lines += [f"  {c.generated} ≈ {c.reference} ({c.score:.3f}{', mirrored' if c.mirrored else ''})"
                  for c in m.copies[:10]]
        if m.copies_found > 10:
            lines.append(f"  ... and {m.copies_found - 10} more (memorization.copies in the JSON report)")
    skipped = [(side, s) for side in ("real", "generated") for s in getattr(report.counts, side).skipped]
    if skipped:
        lines.append(f"{plural(len(skipped), 'file')} skipped:")
        lines += [f"  {side}: {s.name}: {s.reason}" for side, s in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"  ... and {len(skipped) - 20} more (counts.*.skipped in the JSON report)")
    return "\n".join(lines)


def _frd_lines(frd) -> list[str]:
    lines = [f"FRD: {frd.features} of {frd.features_extracted} radiomic features (finite, not constant over the "
             f"reference), {frd.real.used} real vs {frd.generated.used} generated images; "
             f"d² {frd.distance_squared:.6g}"]
    for side in ("real", "generated"):
        for s in getattr(frd, side).skipped[:5]:
            lines.append(f"  FRD left out ({side}): {s.name}: {s.reason}")
    return lines


def _prdc_lines(p) -> list[str]:
    from .prdc import MEANING, NAMES

    what = "the FID network's" if p.features == "network" else "the FRD's radiomic"
    lines = [f"fidelity and diversity on {what} features (k = {p.k}, {p.real_rows} real vs {p.generated_rows} "
             f"generated rows{'' if p.exact else ', a seeded sample: max_feature_rows'}):"]
    for name in NAMES:
        v = getattr(p, name)
        ci = f"  (95% {v.ci95[0]:.3f}–{v.ci95[1]:.3f})" if v.ci95 else ""
        lines.append(f"  {name:<9} {v.value:.3f}{ci}  {MEANING[name]}")
    if p.note:
        lines.append(f"  note: {p.note}")
    return lines


def small_sample(k, f_inf) -> list[str]:
    """KID and FID∞ in the summary's words; a value below 0 is explained, never printed bare."""
    small = []
    if k and k.std is None:
        small.append(f"KID {k.value:.5f} at N = {k.subset_size} (one subset, the whole of both sets: no spread)")
    elif k:
        small.append(f"KID {k.value:.5f} ± {k.std:.5f} (spread over {k.subsets} subsets of {k.subset_size})")
    if k and k.note:
        small[-1] += f": {k.note}"
    if f_inf and f_inf.note:
        small.append(f"FID∞ {f_inf.note}")
    elif f_inf:
        small.append(f"FID∞ {f_inf.value:.2f} (fit over {len(f_inf.points)} subset sizes)")
    return small


def _fid_lines(report) -> list[str]:
    from .trust import LEVEL_MEANING

    lines = []
    small = small_sample(report.kid, report.fid_infinity)
    if small:
        lines.append("small-sample: " + "   ".join(small))
    mc = report.fid_mc
    if mc.passes:
        spread = f"  std {mc.std:.4f}" if mc.std is not None else " (one pass: no spread)"
        lines.append(f"MC dropout ({plural(mc.passes, 'pass', 'passes')}): per-pass FID mean {mc.mean:.4f}{spread} "
                     "(dropout shifts the features, so the passes centre away from the plain FID)")
    d = report.domain
    if d and d.available:
        parts = [f"{side} {100 * s.fraction_above:.0f}% ({s.above}/{s.images})"
                 for side, s in (("real", d.real), ("generated", d.generated)) if s is not None]
        lines.append(f"domain check: images unlike natural photos to the FID network: {', '.join(parts)} "
                     f"(natural photos: {100 * d.natural_rate:.0f}%)")
        for side, s in (("real", d.real), ("generated", d.generated)):
            if s is not None and s.most_atypical:
                lines.append(f"  most atypical {side}: " + ", ".join(
                    f"{im.name} ({im.domain_score:.1f})" for im in s.most_atypical[:5]))
    lv = report.latent_variance
    if lv.real.mean is not None:
        lines.append(f"latent variance: real {lv.real.mean:.4g}   generated {lv.generated.mean:.4g}")
    level = report.trust.level
    lines.append(f"trust: {level.upper()} — {LEVEL_MEANING[level]}")
    lines += [f"  - {r}" for r in report.trust.reasons]
    lines += [f"finding: {f}" for f in report.trust.findings]
    return lines


def _with_progress(args, fn, *fn_args, options: ScoreOptions | None = None):
    """Run an engine call with progress bars on stderr (closed even when it fails)."""
    options = options or _options(args)
    bars = Bars(args.quiet)
    try:
        return fn(*fn_args, options, progress=bars)
    finally:
        bars.close()


def cmd_score(args) -> int:
    from .pipeline import score

    # A side given as saved statistics fixes the options it was computed with: fill those left out,
    # refuse those given differently, before the other side is extracted.
    options = _options(args, _saved(args.real, args.generated))
    report = _with_progress(args, score, args.real, args.generated, options=options)
    write_json(args.json, report)
    print(render(report, args.format, args.json))
    return 0


def render(report, fmt: str, json_path: str | None = None, job_id: str | None = None) -> str:
    """What `score` and `submit --wait` print: the summary (text), the JSON report (json, or --json -) or
    the report as FHIR R4 (fhir: trustfid/fhir.py, the service's document; ``job_id`` names the job)."""
    if fmt == "fhir":
        from .fhir import to_json

        return to_json(report, job_id)
    return report.model_dump_json(indent=2) if fmt == "json" or json_path == "-" else summary(report)


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["text", "json", "fhir"], default="text",
                   help="what to print: text (default: the summary), json (the report) or fhir (the report as a FHIR "
                        "R4 transaction Bundle: a Device and one Observation per distance, docs/API.md)")


def cmd_stats(args) -> int:
    from .pipeline import compute_stats

    stats = _with_progress(args, compute_stats, args.set)
    stats.save(args.output)
    frd = (f", radiomic features of {stats.radiomics.n} images (FRD)" if stats.radiomics is not None
           else "")
    print(f"wrote {args.output}: {stats.n} images, {len(stats.mc)} MC passes{frd}, {len(stats.skipped)} skipped")
    return 0


def cmd_features(args) -> int:
    from .pipeline import features

    names, rows, ex = _with_progress(args, features, args.set)
    import numpy as np

    np.savez(args.output, features=rows, names=np.asarray(names, dtype=str),
             extractor=np.asarray(ex.name), weights_sha256=np.asarray(ex.weights_sha256))
    print(f"wrote {args.output}: {rows.shape[0]} images x {rows.shape[1]} features (float32, the plain pass of "
          f"{ex.name}), with their file names")
    return 0


def cmd_inspect(args) -> int:
    from .pipeline import inspect

    result = _with_progress(args, inspect, args.set)
    write_json(args.json, result)
    if args.json == "-":
        print(result.model_dump_json(indent=2))
    else:
        print(inspect_summary(result, args.json, args.top_k))
    return 0


def inspect_summary(result, json_path: str | None, top: int) -> str:
    """What `trustfid inspect` prints: the set in numbers, then the images most worth a look by name."""
    s, d = result.summary, result.domain
    lines = [f"{plural(len(result.images), 'image')}: latent variance (the network's uncertainty about an "
             f"image's embedding) mean {s.mean:.4g}, median {s.median:.4g}, p95 {s.p95:.4g}"]
    if d is not None:
        lines.append(f"domain check: {100 * d.fraction_above:.0f}% of the images ({d.above} of {d.images}) score "
                     f"above the natural-photo range (median domain score {d.median:.2f}; higher is less like a "
                     "photo)")
        by_domain = sorted(result.images, key=lambda im: -(im.domain_score or 0.0))[:top]
        lines.append("most atypical (domain score): "
                     + ", ".join(f"{im.name} ({im.domain_score:.2f})" for im in by_domain))
    by_variance = sorted(result.images, key=lambda im: -im.latent_variance)[:top]
    lines.append("most uncertain (latent variance): "
                 + ", ".join(f"{im.name} ({im.latent_variance:.4g})" for im in by_variance))
    if result.skipped:
        lines.append(f"{plural(len(result.skipped), 'file')} skipped: "
                     + ", ".join(f"{f.name} ({f.reason})" for f in result.skipped[:top]))
    lines.append(f"every image's scores: {json_path}" if json_path
                 else "every image's scores: add --json FILE (or --json - to print them)")
    return "\n".join(lines)


EXIT_CODES = ("exit codes: 0 success; 2 bad input (one line says what was wrong); 3 the service could not be "
              "reached or did not finish in time; 1 a bug (please report it)")


def build_parser(more_commands=None) -> argparse.ArgumentParser:
    """The parser of the library's commands; ``more_commands(subparsers)`` may add others (app/cli.py)."""
    parser = argparse.ArgumentParser(prog="trustfid", description="FID with an uncertainty report you can act on.",
                                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"trustfid {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="FID of GENERATED against REAL, with MC-dropout uncertainty and a trust level",
                       epilog=EXIT_CODES)
    p.add_argument("real", help="folder, archive, image array, statistics .npz, or a PACS study or series "
                   f"({FORM})")
    p.add_argument("generated", help="same choices as REAL")
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON ('-' = print it)")
    add_format(p)
    _add_mc_options(p, "; left out, they come from a side given as statistics saved by `trustfid stats`")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("stats", help="compute and save a set's statistics (.npz, pytorch-fid compatible mu/sigma)",
                       epilog=EXIT_CODES)
    p.add_argument("set", help=f"folder, archive, image array or a PACS study or series ({FORM})")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="where to write the statistics")
    _add_mc_options(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("inspect", help="latent variance of every image of one set", epilog=EXIT_CODES)
    p.add_argument("set", help=f"folder, archive, image array or a PACS study or series ({FORM})")
    p.add_argument("--json", metavar="PATH", help="write {images: [...], summary: {...}} ('-' = print it)")
    _add_mc_options(p, pair=False)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("features", help="write every image's plain-pass network features (N x 2048 float32) and "
                       "file names to an .npz, as clean-fid's get_folder_features", epilog=EXIT_CODES)
    p.add_argument("set", help=f"folder, archive, image array or a PACS study or series ({FORM})")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz",
                   help="where to write them: arrays features (N x D float32), names (N file names, in the order of "
                        "the rows), extractor, weights_sha256")
    _add_mc_options(p)
    p.set_defaults(func=cmd_features)

    if more_commands is not None:
        more_commands(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command, turning user errors into one line and exit code 2."""
    started = process_start()  # the report's timing.startup_s counts from the process's start
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        refuse_unknown(parser, args.command, unknown)
    try:
        with recording(Clock(started)):
            return args.func(args)
    except UnreachableError as e:
        print(f"trustfid: error: {e.message}", file=sys.stderr)
        return 3
    except TrustfidError as e:
        print(f"trustfid: error: {e.message}", file=sys.stderr)
        return 2
    except ValidationError as e:
        print(f"trustfid: error: {validation_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trustfid: interrupted", file=sys.stderr)
        return 130


def refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    """Exit 2 with the command's own usage (not the top level's) and, for a misspelt option, the closest."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices.get(command, parser)
    flags = [f for a in p._actions for f in a.option_strings if f.startswith("--")]
    hint = ""
    for arg in unknown:
        close = difflib.get_close_matches(arg.split("=")[0], flags, n=1, cutoff=0.75) if arg.startswith("--") else []
        if close:
            hint = f" (did you mean {close[0]}?)"
            break
    p.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
