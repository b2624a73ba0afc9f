"""The one contract: options in, report out. The CLI's JSON, the API's JSON and the stored records
all use these models. Pure pydantic; importing this module never imports torch.

Reports carry ``schema_version``; a field once published keeps its meaning. Add fields, never
repurpose them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "1.0"

# Block names of the FID InceptionV3, in network order (torchvision's names). Dropout can follow
# any of them; the deterministic trunk runs up to the first one chosen.
BLOCKS: tuple[str, ...] = (
    "Mixed_5b", "Mixed_5c", "Mixed_5d",
    "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
)

ResizeMode = Literal["clean", "legacy_pytorch"]
TrustLevel = Literal["high", "medium", "low"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreOptions(_Strict):
    """Everything that changes the numbers of a score, plus a few knobs that do not (batch_size,
    device, strict). The MC defaults are the ones the validation study chose from data
    (docs/VALIDATION.md); the trust rule's baseline was measured with them."""

    passes: int = Field(20, ge=0, le=1000, description="T, stochastic MC-dropout passes (0 = plain FID only)")
    dropout_rate: float = Field(0.1, gt=0.0, lt=1.0, description="dropout probability p")
    dropout_at: list[str] = Field(default_factory=lambda: ["Mixed_7a"],
                                  description="blocks after whose output dropout is applied")
    dropout_kind: Literal["element", "channel"] = "element"
    mask_mode: Literal["shared", "per_image"] = Field(
        "shared", description="shared: pass t uses one mask for every image (one sampled network)")
    seed: int = Field(0, ge=0, lt=2**63)
    resize: ResizeMode = "clean"
    bootstrap_resamples: int = Field(50, ge=0, le=10000, description="image resamples for fid_bootstrap")
    top_k: int = Field(10, ge=0, le=1000, description="most uncertain images listed per set")
    batch_size: int = Field(32, ge=1, le=4096, description="does not change results")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    strict: bool = Field(False, description="unreadable files are an error instead of being skipped")

    @field_validator("dropout_at")
    @classmethod
    def _known_blocks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("dropout_at needs at least one block")
        unknown = [b for b in v if b not in BLOCKS]
        if unknown:
            raise ValueError(f"unknown block(s) {unknown}; choose from {list(BLOCKS)}")
        return sorted(set(v), key=BLOCKS.index)


class SkippedFile(_Strict):
    name: str
    reason: str


class SetCounts(_Strict):
    used: int
    skipped: list[SkippedFile] = Field(default_factory=list)


class Counts(_Strict):
    real: SetCounts
    generated: SetCounts


class FidMC(_Strict):
    passes: int
    mean: float | None = None
    std: float | None = None
    ci95: tuple[float, float] | None = None
    samples: list[float] = Field(default_factory=list)


class FidBootstrap(_Strict):
    resamples: int
    ci95: tuple[float, float] | None = None
    std: float | None = None


class ImageVariance(_Strict):
    name: str
    latent_variance: float


class VarianceSummary(_Strict):
    mean: float | None = None
    median: float | None = None
    p95: float | None = None


class SetVariance(VarianceSummary):
    most_uncertain: list[ImageVariance] = Field(default_factory=list)


class LatentVariance(_Strict):
    """Mean over the 2048 feature dimensions of the per-image predictive variance across the T
    passes (the trace of each image's predictive covariance divided by 2048)."""

    real: SetVariance
    generated: SetVariance


class Trust(_Strict):
    level: TrustLevel
    score: float = Field(description="0 (do not trust) .. 1 (trust)")
    reasons: list[str]


class ModelInfo(_Strict):
    name: str = "inception-v3-tf-2015-12-05 pool3 (2048-d)"
    weights_sha256: str
    weights_source: str


class Timing(_Strict):
    load_s: float = 0.0
    extract_s: float = 0.0
    frechet_s: float = 0.0
    total_s: float = 0.0
    images_per_s: float = 0.0


class Report(_Strict):
    schema_version: str = SCHEMA_VERSION
    fid: float = Field(description="plain FID, dropout off; equals pytorch-fid/clean-fid for the same resize")
    fid_mc: FidMC
    fid_bootstrap: FidBootstrap
    latent_variance: LatentVariance
    trust: Trust
    counts: Counts
    config: ScoreOptions
    preprocessing: str
    model: ModelInfo
    device: str
    timing: Timing


class InspectImage(_Strict):
    name: str
    latent_variance: float


class InspectReport(_Strict):
    schema_version: str = SCHEMA_VERSION
    images: list[InspectImage]
    summary: VarianceSummary
    skipped: list[SkippedFile] = Field(default_factory=list)
    config: ScoreOptions


class Progress(_Strict):
    """What a running job reports; the engine calls its progress callback with one of these."""

    stage: Literal["loading", "extracting", "statistics", "frechet", "report", "done"]
    set: Literal["real", "generated"] | None = None
    images_done: int = 0
    images_total: int | None = None
    passes: int = 0


# --- the service's contract: job and reference records (API responses and what Redis stores) ------

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class JobOptions(ScoreOptions):
    """The ``options`` of a job: the score options plus what only the service uses."""

    tags: list[str] = Field(default_factory=list, max_length=32,
                            description="free labels such as run=abc or step=12000; filter with GET /v1/jobs?tag=")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="receives the final job record by POST, HMAC-signed")

    @field_validator("tags")
    @classmethod
    def _short_tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t or len(t) > 128 or any(c in t for c in "\r\n\t"):
                raise ValueError("a tag is 1..128 characters without control characters")
        return v

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(**self.model_dump(exclude={"tags", "callback_url"}))


class InputRef(_Strict):
    """One side of a JSON job submission: a URI to fetch, or a registered reference."""

    uri: str | None = Field(None, max_length=4096, description="file:// (under allowed roots), http(s)://, s3://")
    reference_id: str | None = Field(None, max_length=64)

    @field_validator("reference_id")
    @classmethod
    def _id_chars(cls, v):
        if v is not None and not v.replace("-", "").isalnum():
            raise ValueError("reference_id has letters, digits and dashes only")
        return v

    def model_post_init(self, _ctx) -> None:
        if (self.uri is None) == (self.reference_id is None):
            raise ValueError("give exactly one of uri or reference_id")


class JobSubmit(_Strict):
    """JSON body of POST /v1/jobs."""

    real: InputRef
    generated: InputRef
    options: JobOptions | None = None


class ReferenceSubmit(_Strict):
    """JSON body of POST /v1/references."""

    source: InputRef
    name: str | None = Field(None, max_length=200)
    options: ScoreOptions | None = None


class InputInfo(_Strict):
    """Where one input set came from, as the caller sees it."""

    kind: Literal["upload", "uri", "reference"]
    uri: str | None = None
    reference_id: str | None = None
    files: int | None = None
    bytes: int | None = None


class JobError(_Strict):
    code: str
    message: str


class _TaskRecord(_Strict):
    id: str
    state: JobState = "queued"
    progress: Progress | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: JobError | None = None
    attempts: int = 0


class JobRecord(_TaskRecord):
    """GET /v1/jobs/{id}; also the body POSTed to a callback_url."""

    kind: Literal["score"] = "score"
    real: InputInfo
    generated: InputInfo
    options: JobOptions
    fid: float | None = Field(None, description="copied from the report once succeeded")
    fid_mc_std: float | None = None
    trust_level: TrustLevel | None = None


class JobList(_Strict):
    jobs: list[JobRecord]


class ReferenceRecord(_TaskRecord):
    """A registered real set: statistics computed once by a worker, then used by id in jobs."""

    kind: Literal["reference"] = "reference"
    name: str | None = None
    source: InputInfo
    options: ScoreOptions
    fingerprint: str | None = Field(None, description="sha256 of the stored statistics file")
    images: int | None = None


class ReferenceList(_Strict):
    references: list[ReferenceRecord]
