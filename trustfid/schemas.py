"""The library's contract: options in, report out. The CLI's JSON, the API's JSON and the stored
records all use these models (the service's job records are in records.py). Pure pydantic; importing
this module never imports torch.

Reports carry ``schema_version``; a field once published keeps its meaning. Add fields, never
repurpose them. What a caller sends is checked strictly (an unknown option is an error, not silently
ignored); what a client *reads* is parsed with ``lenient(...)``, which drops fields this version does
not know, so an older client keeps working against a newer service.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = "1.9"  # what each version added: CHANGELOG.md

# The feature network every published FID uses, by its registry name (trustfid/extractor.py).
DEFAULT_EXTRACTOR = "inception-v3-tf-2015-12-05"

# Block names of the FID InceptionV3, in network order (torchvision's names). Dropout can follow
# any of them; the deterministic trunk runs up to the first one chosen.
BLOCKS: tuple[str, ...] = (
    "Mixed_5b", "Mixed_5c", "Mixed_5d",
    "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)

ResizeMode = Literal["clean", "legacy_pytorch"]
TrustLevel = Literal["high", "medium", "low"]
# What a job computes: "fid" (the FID with its uncertainty and trust), "frd" (the Fréchet Radiomics Distance,
# trustfid/frd.py; needs the `medical` extra), "frd:auto" (FRD only when the domain check finds the reference
# set outside the FID network's domain).
MetricName = Literal["fid", "frd", "frd:auto"]


LENIENT = {"lenient": True}


def _version() -> str:
    from . import __version__

    return __version__


class Strict(BaseModel):
    """Unknown fields are an error, unless validated with ``context=LENIENT`` (then they are dropped,
    at every level of nesting)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _drop_unknown_when_lenient(cls, data, handler, info):
        if info.context and info.context.get("lenient") and isinstance(data, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            data = {k: v for k, v in data.items() if k in known}
        return handler(data)


def validation_message(error) -> str:
    """One line from a pydantic ValidationError (or FastAPI's RequestValidationError): every problem as
    ``where: what``, joined by '; '."""
    parts = []
    for err in error.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        msg = err["msg"]
        if err.get("type") == "extra_forbidden" and err.get("loc"):
            msg = f"not a known field{did_you_mean(str(err['loc'][-1]))}"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def did_you_mean(name: str, known=None) -> str:
    """' (did you mean 'passes'?)' for a misspelt ``name``: the closest of ``known`` (default: every field of
    the contract's models), or '' when none is close."""
    if known is None:
        known, models = set(), [Strict]
        while models:
            model = models.pop()
            known |= set(model.model_fields)
            models += model.__subclasses__()
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


def lenient(model: type[BaseModel], data):
    """``model`` validated from ``data`` (a dict, or JSON text) ignoring fields this version does not
    know: how a client reads what a newer service sends."""
    if isinstance(data, (str, bytes)):
        return model.model_validate_json(data, context=LENIENT)
    return model.model_validate(data, context=LENIENT)


class ScoreOptions(Strict):
    """Everything that changes the numbers of a score, plus a few knobs that do not (batch_size,
    device, strict). The MC defaults are the ones the validation study chose from data
    (docs/VALIDATION.md); the trust rule's baseline was measured with them."""

    passes: int = Field(20, ge=0, le=1000, description="T, stochastic MC-dropout passes (0 = plain FID only)")
    dropout_rate: float = Field(0.1, gt=0.0, lt=1.0, description="dropout probability p")
    dropout_at: list[str] = Field(default_factory=lambda: ["Mixed_7a"],
                                  description="blocks (stages of the extractor) after whose output dropout "
                                              "is applied; left unset with another extractor: its default")
    dropout_kind: Literal["element", "channel"] = "element"
    mask_mode: Literal["shared", "per_image"] = Field(
        "shared", description="shared: pass t uses one mask for every image (one sampled network)")
    seed: int = Field(0, ge=0, lt=2**63)
    resize: ResizeMode = "clean"
    bootstrap_resamples: int = Field(50, ge=0, le=10000, description="image resamples for fid_bootstrap")
    top_k: int = Field(10, ge=0, le=1000, description="most uncertain images listed per set")
    batch_size: int = Field(32, ge=1, le=4096, description="does not change results")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    precision: Literal["fp32", "tf32", "bf16"] = Field(
        "fp32", description="the network's arithmetic: fp32 = strict IEEE float32 (TF32 off on CUDA; the published "
        "FID), tf32 = TensorFloat-32 on CUDA (faster, FID drifts ~1e-4 relative), bf16 = bfloat16 autocast")
    strict: bool = Field(False, description="unreadable files are an error instead of being skipped")
    extractor: str = Field(DEFAULT_EXTRACTOR, pattern=r"^[\w.:+-]{1,100}$",
                           description="the feature network, by registry name (a custom network's name)")
    window: tuple[float, float] | None = Field(
        None, description="fixed intensity window [LOW, HIGH] for images wider than 8 bits (16-bit PNG/TIFF, float, "
        "DICOM modality values such as Hounsfield units): mapped linearly to 0..255 and clipped, instead of each "
        "image's own min..max (docs/IMAGES.md says how to choose it)")

    @field_validator("window")
    @classmethod
    def _ordered_window(cls, v):
        if v is not None and not (math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] < v[1]):
            raise ValueError("window must be two finite numbers LOW < HIGH")
        return v
    # 1.1
    max_feature_rows: int = Field(2048, ge=2, le=200_000,
                                  description="plain feature rows kept per set for KID, FID∞ and the bootstrap "
                                              "(chosen per image by a seeded hash of its index: shards merge exactly)")
    kid_subsets: int = Field(100, ge=0, le=10_000, description="KID subsets (clean-fid: 100; 0 = no KID)")
    kid_subset_size: int = Field(1000, ge=2, le=100_000, description="KID subset size cap (clean-fid: 1000)")
    thumbnails: int = Field(4, ge=0, le=16, description="thumbnails (64 px PNG) of the most atypical images "
                                                        "per set embedded in the report; 0 = none")
    # 1.7
    prdc_k: int = Field(5, ge=0, le=100, description="k of the k-nearest-neighbour balls of precision, recall, "
                                                     "density and coverage (Naeem et al. 2020: 5); 0 = none")
    copy_check: bool = Field(True, description="compare every generated image with every reference image for "
                                               "near-copies (memorisation: report.memorization); needs fid")
    # 1.5
    metrics: list[MetricName] = Field(
        default_factory=lambda: ["fid"],
        description="what to compute: fid; frd (Fréchet Radiomics Distance, radiomic features from pyradiomics, "
                    "frd-score v1; needs the medical extra); frd:auto (FRD only when the reference set is outside "
                    "the FID network's domain; needs fid). frd alone skips the FID network")
    frd_reading: Literal["frd-score", "decoded"] = Field(
        "frd-score", description="what the FRD's radiomics read: frd-score (default) reads JPEG files and images with "
        "an alpha channel with SimpleITK as frd-score does (its JPEG decoder; a JPEG's resolution header as pixel "
        "spacing; luminance times alpha); decoded uses the image the FID decodes (Pillow's JPEG decoder, spacing 1, "
        "alpha dropped). docs/IMAGES.md says why decoded is the sounder choice for JPEGs with a dpi header")
    frd_paper_log: bool = Field(False, description="FRD as log(d), the paper's Eq. 3, instead of frd-score's default "
                                                   "log(d²) (values half as large; not comparable with published FRDs)")

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_names(cls, v):
        # case and spaces do not matter: "FID", " frd " and "Frd:Auto" are fid, frd and frd:auto
        if isinstance(v, (list, tuple)):
            return [m.strip().lower().replace(" ", "") if isinstance(m, str) else m for m in v]
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        v = list(dict.fromkeys(v))
        if not v:
            raise ValueError("metrics needs at least one of fid, frd, frd:auto")
        if "frd" in v and "frd:auto" in v:
            raise ValueError("choose frd (always) or frd:auto (when the reference is outside the FID network's "
                             "domain), not both")
        if "frd:auto" in v and "fid" not in v:
            raise ValueError("frd:auto decides from the FID network's domain check, so it needs fid in metrics too; "
                             "use frd to compute the FRD alone")
        return v

    @property
    def fid_on(self) -> bool:
        return "fid" in self.metrics

    @property
    def frd_mode(self) -> Literal["off", "on", "auto"]:
        return "on" if "frd" in self.metrics else "auto" if "frd:auto" in self.metrics else "off"

    @field_validator("dropout_at")
    @classmethod
    def _some_blocks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("dropout_at needs at least one block")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _known_blocks(self) -> ScoreOptions:
        """The FID Inception's blocks are checked here; another extractor checks its own stage names
        when it is loaded (``Extractor.options_for``), since only it knows them."""
        if self.extractor == DEFAULT_EXTRACTOR:
            unknown = [b for b in self.dropout_at if b not in BLOCKS]
            if unknown:
                raise ValueError(f"unknown block(s) {unknown} in dropout_at; choose from {list(BLOCKS)}")
            self.dropout_at.sort(key=BLOCKS.index)
        return self


class SkippedFile(Strict):
    name: str
    reason: str


class SetCounts(Strict):
    used: int
    skipped: list[SkippedFile] = Field(default_factory=list)


class Counts(Strict):
    real: SetCounts
    generated: SetCounts


class FidMC(Strict):
    passes: int
    mean: float | None = None
    std: float | None = None
    ci95: tuple[float, float] | None = None
    samples: list[float] = Field(default_factory=list)


class FidBootstrap(Strict):
    resamples: int
    ci95: tuple[float, float] | None = None
    std: float | None = None


class ImageVariance(Strict):
    name: str
    latent_variance: float


class VarianceSummary(Strict):
    mean: float | None = None
    median: float | None = None
    p95: float | None = None


class SetVariance(VarianceSummary):
    most_uncertain: list[ImageVariance] = Field(default_factory=list)


class LatentVariance(Strict):
    """Mean over the 2048 feature dimensions of the per-image predictive variance across the T
    passes (the trace of each image's predictive covariance divided by 2048)."""

    real: SetVariance
    generated: SetVariance


class Headline(Strict):
    """The numbers to lead with, and the same words everywhere (CLI, HTML report, job records).
    Both intervals are about the plain FID and contain it by construction: each is the plain FID
    moved by the spread of its resamples around their median."""

    fid: float | None = Field(description="null only when metrics left fid out")
    sampling_ci95: tuple[float, float] | None = Field(
        None, description="95% interval from resampling the images (plain network): fid + (q2.5, q97.5) - median "
                          "of the bootstrap FIDs, clipped at 0")
    resamples: int = 0
    network_ci95: tuple[float, float] | None = Field(
        None, description="95% interval from the network's own (MC-dropout) uncertainty: fid x (q2.5, q97.5) / "
                          "median of the per-pass FIDs")
    network_relative_std: float | None = Field(None, description="std / mean of the per-pass FIDs")
    passes: int = 0
    # 1.5
    frd: float | None = Field(None, description="the FRD (Report.frd.value), when computed")
    frd_ci95: tuple[float, float] | None = Field(None, description="its 95% sampling interval (Report.frd)")
    # 1.7
    precision: float | None = Field(None, description="Report.prdc.precision.value, when computed")
    recall: float | None = Field(None, description="Report.prdc.recall.value")
    density: float | None = Field(None, description="Report.prdc.density.value")
    coverage: float | None = Field(None, description="Report.prdc.coverage.value")
    text: str
    warnings: list[str] = Field(default_factory=list)


class Kid(Strict):
    """Kernel Inception Distance as clean-fid computes it (kid.py)."""

    value: float
    std: float | None = Field(description="spread of the per-subset estimates (ddof 1); null when there is "
                                          "one subset, as when both sets are no larger than the subset size "
                                          "and every subset would be the whole of both")
    subsets: int
    subset_size: int
    # 1.8
    note: str | None = Field(None, description="what a value below 0 means (the unbiased estimate scatters about "
                                               "0 when the sets are not told apart at this subset size)")


class FidInfinityPoint(Strict):
    n_real: int
    n_generated: int
    fid: float = Field(description="mean over the repeats at this size")
    repeats: int


class FidInfinity(Strict):
    """FID extrapolated to infinitely many images (Chong & Forsyth 2020; kid.py)."""

    value: float = Field(description="the linear fit's value at 1/N = 0, never below 0 (see fit_intercept)")
    slope: float = Field(description="FID per unit of 1/N_generated in the linear fit")
    points: list[FidInfinityPoint]
    # 1.8
    fit_intercept: float | None = Field(None, description="the fit's value at 1/N = 0 as computed; below 0 (no FID "
                                        "can be) value is 0 and note says why the extrapolation failed")
    note: str | None = Field(None, description="why the extrapolation is not to be read, when it is not")


class SetRows(Strict):
    kept: int
    used: int


class FeatureRows(Strict):
    """How many plain feature rows KID, FID∞ and the bootstrap rest on."""

    cap: int
    capped: bool = Field(description="true when a set had more images than the cap")
    real: SetRows
    generated: SetRows


class AtypicalImage(Strict):
    name: str
    domain_score: float
    thumbnail: str | None = Field(None, max_length=24_000, pattern=r"^data:image/png;base64,[A-Za-z0-9+/=]+$")


class SetDomain(Strict):
    images: int
    mean: float
    median: float
    p95: float
    above: int = Field(description="images scoring above the threshold (Domain.threshold)")
    fraction_above: float
    p_value: float = Field(description="one-sided binomial test of `above` against the natural rate")
    histogram: list[int] = Field(default_factory=list, description="counts over Domain.bins")
    most_atypical: list[AtypicalImage] = Field(default_factory=list)


class Domain(Strict):
    """Per-image domain scores (domain.py): higher means less like a natural photo."""

    available: bool
    model: str | None = None
    threshold: float | None = Field(None, description="the natural photos' (1 - natural_rate) quantile of the score")
    natural_rate: float = Field(0.1, description="share of natural photos above the threshold")
    natural_median: float | None = None
    bins: list[float] = Field(default_factory=list)
    real: SetDomain | None = None
    generated: SetDomain | None = None
    note: str | None = None


class Trust(Strict):
    level: TrustLevel
    score: float = Field(description="0 (do not trust) .. 1 (no concern): 1 - (sum of the concerns' weights) / 2; "
                                     "a reference outside the network's domain weighs 1, any other concern 0.5")
    reasons: list[str] = Field(description="what limits trust, most serious first, then notes")
    findings: list[str] = Field(default_factory=list,
                                description="what the domain check found about the generated set; never lowers "
                                            "the level (a generator whose images do not look like photos gets a "
                                            "large FID, rightly)")
    reference_domain: Literal["natural", "partly_outside", "outside", "unknown"] | None = Field(
        None, description="the domain check's verdict on the reference (real) set, which decides the level; "
                          "None in reports before schema 1.3")


class ModelInfo(Strict):
    name: str = "inception-v3-tf-2015-12-05 pool3 (2048-d)"
    weights_sha256: str
    weights_source: str
    extractor: str | None = Field(None, description="registry name of the feature network (None: older reports, "
                                                    "always the FID Inception)")
    feature_dim: int | None = None
    input_size: tuple[int, int] | None = Field(None, description="(height, width) of the network input")


class SetTiming(Strict):
    """Where one set's time went (schema 1.9; trustfid/timing.py). The first six stages are wall-clock seconds
    of the main thread of the process that extracted the set, one after another: together they are its share of
    ``extract_s`` (and of ``load_s``: its listing). The last three are summed over the decoders, which run
    beside the network: they overlap the others and may add up to more than the wall time."""

    images: int = Field(0, description="images of the set that entered its statistics")
    listing_s: float = Field(0.0, description="listing and checking the set's entries before any image is decoded "
                             "(reading the file, for a set given as saved statistics)")
    decode_wait_s: float = Field(0.0, description="time the main thread waited for the next decoded and resized "
                                 "batch: the decoding the network did not hide (with decode processes, their "
                                 "start and their listing too, the first time)")
    network_s: float = Field(0.0, description="the network's deterministic pass (trunk and plain tail), without the "
                             "domain probe's share of it")
    mc_s: float = Field(0.0, description="the network's MC-dropout passes (the tail, T times)")
    probe_s: float = Field(0.0, description="the domain probe: its hooks' statistics during the deterministic pass "
                           "(image by image on a CPU), then each batch's scores and thumbnails")
    collect_s: float = Field(0.0, description="the rest of each batch's work in the main thread: streaming "
                             "moments, kept feature rows, copy-check prints, latent variance, radiomic rows")
    decode_s: float | None = Field(None, description="reading, decoding and resizing the images, summed over the "
                                   "decoders (the prefetch thread or the decode processes; a new process's first "
                                   "image includes its import of torch); null when none ran (saved statistics, the "
                                   "Metric, merged shards)")
    decoder_listing_s: float | None = Field(None, description="decode processes listing the set again, each for "
                                            "itself, summed over them (0 with the prefetch thread)")
    radiomics_s: float | None = Field(None, description="the FRD's radiomic features, summed over the decoders")


class Timing(Strict):
    """Seconds of one job. ``load_s`` + ``extract_s`` + ``frechet_s`` = ``total_s``: from the engine's call to its
    report. The stages (schema 1.9) split them; docs/API.md ("Where the time goes") defines each."""

    load_s: float = Field(0.0, description="before extraction: listing both sets, loading the network, reading "
                          "saved statistics")
    extract_s: float = Field(0.0, description="extracting both sets (and frd:auto's second pass)")
    frechet_s: float = Field(0.0, description="from the sets' statistics to the report: every metric's section "
                             "and the report itself")
    total_s: float = 0.0
    images_per_s: float = Field(0.0, description="images of both sets per second of extract_s")
    finished_at: str | None = Field(None, description="UTC time the report was made (ISO 8601)")
    # 1.9
    startup_s: float | None = Field(None, description="from the process's start to the engine's call: the "
                                    "interpreter, the imports, the arguments (null unless the caller gave the "
                                    "process's start: the command line does; a library call or a service worker, "
                                    "whose process serves many jobs, does not). With network_load_s, the start-up. "
                                    "A PACS set's retrieval comes after it and before load_s: in no stage")
    network_load_s: float | None = Field(None, description="loading the feature network and its weights (and torch, "
                                         "the first time in a process; a worker keeps the network: about 0 after "
                                         "its first job); part of load_s")
    sets: dict[str, SetTiming] = Field(default_factory=dict, description="per set (real, generated) where its "
                                       "time went; a set extracted elsewhere (merged shards) has no entry")
    metrics: dict[str, float] = Field(default_factory=dict, description="each metric's own section of the report, "
                                      "by its registered name (fid, kid, frd, prdc, memorization, ...); part of "
                                      "frechet_s")
    frechet_plain_s: float | None = Field(None, description="the plain FID's Fréchet distance (part of metrics.fid)")
    frechet_mc_s: float | None = Field(None, description="the MC passes' Fréchet distances (part of metrics.fid)")
    bootstrap_s: float | None = Field(None, description="the bootstrap over images (part of metrics.fid)")
    domain_check_s: float | None = Field(None, description="the domain check's scores, histogram and thumbnails "
                                         "(part of metrics.fid)")
    report_s: float | None = Field(None, description="assembling the report from the sections (headline, counts); "
                                   "writing the JSON and printing come after the report is made and are not in it")


class FrdSet(Strict):
    used: int = Field(description="images whose radiomic features entered the FRD")
    kept_rows: int = Field(description="feature rows the sampling interval resamples (max_feature_rows)")
    skipped: list[SkippedFile] = Field(default_factory=list, description="images pyradiomics gave NaN features "
                                                                         "for (frd-score drops them too)")


class PrdcValue(Strict):
    value: float
    ci95: tuple[float, float] | None = Field(None, description="95% interval from resampling the images: value + "
                                             "(q2.5, q97.5) - median of the resampled values, clipped to the range")


class Prdc(Strict):
    """Fidelity and diversity (trustfid/prdc.py; Naeem et al. 2020): precision and density say whether the
    generated images look real, recall and coverage whether they cover the real set's variety. Equal to the
    prdc package's compute_prdc on the same feature rows."""

    features: Literal["network", "radiomics"] = Field(
        description="network: the FID network's plain-pass features (the rows of feature_rows); radiomics: the "
                    "FRD's radiomic features, z-scored against the reference as the FRD does")
    k: int = Field(description="nearest neighbours that set each image's ball (prdc_k)")
    precision: PrdcValue = Field(description="share of generated images inside some real image's ball (fidelity)")
    recall: PrdcValue = Field(description="share of real images inside some generated image's ball (diversity)")
    density: PrdcValue = Field(description="real balls holding each generated image / k, averaged (fidelity "
                                           "robust to outliers; ~1 for the same distribution, can exceed 1)")
    coverage: PrdcValue = Field(description="share of real images whose ball holds a generated image (diversity "
                                            "robust to outliers)")
    real_rows: int
    generated_rows: int
    exact: bool = Field(description="true when every image's row was used (no set above max_feature_rows)")
    resamples: int = Field(0, description="resamples behind the intervals (0: none)")
    note: str | None = None


class CopyPair(Strict):
    generated: str
    reference: str = Field(description="the reference image it copies")
    score: float = Field(description="1 = an exact copy (also mirrored or slightly cropped); a copy from the threshold")
    mirrored: bool = Field(description="the match was the generated image mirrored left-right")
    generated_print: str | None = Field(None, max_length=6_000, pattern=r"^data:image/png;base64,[A-Za-z0-9+/=]+$",
                                        description="what the check compared (32 px grayscale), for the worst pairs")
    reference_print: str | None = Field(None, max_length=6_000, pattern=r"^data:image/png;base64,[A-Za-z0-9+/=]+$")


class Memorization(Strict):
    """The copy check (trustfid/copies.py; docs/VALIDATION.md "The copy check"): every generated image's
    nearest reference image in the pixel domain, and those close enough to be copies. A finding about the
    generator (a privacy leak when the reference is training data), never a trust level."""

    method: str
    threshold: float
    generated: int = Field(description="generated images checked")
    reference: int = Field(description="reference images they were compared with")
    too_plain: int = Field(description="generated images with too little structure to tell a copy (score 0)")
    copies_found: int
    share: float = Field(description="copies_found / generated")
    copies: list[CopyPair] = Field(default_factory=list, description="the copies, worst (highest score) first; at "
                                   "most 1,000 listed (copies_found counts them all)")
    median_score: float = Field(description="the median of every generated image's nearest score: honest sets sit "
                                            "well below the threshold")


class Frd(Strict):
    """Fréchet Radiomics Distance, frd-score v1 (trustfid/frd.py): radiomic features from pyradiomics,
    z-scored against the reference set, Fréchet distance d², then a log. Lower is closer; it is not on
    the FID's scale."""

    value: float | None = Field(description="log(d²) (frd-score's default) or log(d) (frd_paper_log); null when "
                                            "d² is 0")
    distance_squared: float = Field(description="d², the Fréchet distance of the z-scored radiomic features")
    log: Literal["log(d²)", "log(d)"]
    version: str = Field(description="frd-score's FRD version reproduced")
    config_sha256: str = Field(description="sha256 of frd-score's pyradiomics extraction YAML")
    pyradiomics: str
    features: int = Field(description="features in the distance (finite, not constant over the reference)")
    features_extracted: int
    sampling_ci95: tuple[float, float] | None = Field(
        None, description="95% interval from resampling the images: value + (q2.5, q97.5) - median of the "
                          "bootstrap FRDs (as the FID's sampling interval)")
    resamples: int = 0
    real: FrdSet
    generated: FrdSet


class Report(Strict):
    """Every FID field (fid, fid_mc, fid_bootstrap, latent_variance, trust) is null only when ``metrics``
    left fid out (schema 1.5): then ``frd`` carries the result."""

    schema_version: str = SCHEMA_VERSION
    fid: float | None = Field(description="plain FID, dropout off; equals pytorch-fid/clean-fid for the same resize")
    fid_mc: FidMC | None
    fid_bootstrap: FidBootstrap | None
    latent_variance: LatentVariance | None
    trust: Trust | None
    counts: Counts
    config: ScoreOptions
    preprocessing: str
    intensity: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="per set (real, generated): how many images went through each intensity "
        "mapping, i.e. how stored pixel values became the 0..255 network input (docs/IMAGES.md)")
    model: ModelInfo
    device: str
    timing: Timing
    # 1.1
    headline: Headline | None = None
    kid: Kid | None = None
    fid_infinity: FidInfinity | None = None
    feature_rows: FeatureRows | None = None
    domain: Domain | None = None
    # 1.5
    frd: Frd | None = Field(None, description="Fréchet Radiomics Distance, when metrics asked for it")
    # 1.6
    trustfid_version: str | None = Field(
        default_factory=_version, description="the trustfid release that computed the report (the FHIR "
        "document's device version); null in reports of earlier schemas")
    # 1.7
    prdc: Prdc | None = Field(None, description="precision, recall, density and coverage on the FID network's "
                                                "features (prdc_k 0 or metrics without fid: null)")
    prdc_radiomics: Prdc | None = Field(None, description="the same on the FRD's radiomic features, when the FRD "
                                                          "was computed")
    memorization: Memorization | None = Field(None, description="the copy check (copy_check; metrics with fid)")
    extra_metrics: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the sections of metrics registered from outside trustfid "
        "(trustfid.plugins.register; docs/METRICS.md), by their names")

    @model_validator(mode="before")
    @classmethod
    def _stored_version(cls, data):
        # A report read back (it carries its schema_version) keeps the version it was made with, none
        # before 1.6; only a report being made now gets this release's.
        if isinstance(data, dict) and "schema_version" in data and "trustfid_version" not in data:
            data = {**data, "trustfid_version": None}
        return data


class InspectImage(Strict):
    name: str
    latent_variance: float
    domain_score: float | None = Field(None, description="higher means less like a natural photo")


class InspectReport(Strict):
    schema_version: str = SCHEMA_VERSION
    images: list[InspectImage]
    summary: VarianceSummary
    skipped: list[SkippedFile] = Field(default_factory=list)
    config: ScoreOptions
    domain: SetDomain | None = None


class Progress(Strict):
    """What a running job reports; the engine calls its progress callback with one of these as each
    stage starts: loading (the worker: inputs and network), extracting (per set, per batch), frechet
    (FID of the plain and MC passes), report (intervals, trust), done."""

    stage: Literal["loading", "extracting", "frechet", "report", "done"]
    set: Literal["real", "generated"] | None = None
    images_done: int = 0
    images_total: int | None = None
    passes: int = 0
    fraction_done: float | None = Field(None, ge=0, le=1, description="share of this set's extraction done, "
                                        "moving within a batch too (after the plain pass and each MC pass): "
                                        "the number for a progress bar; 1 once the job is done, None in its other "
                                        "stages")
