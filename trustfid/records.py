"""The service's contract: what POST /v1/jobs and /v1/references accept and what the job and reference
records look like (API responses, what Redis stores, the callback body). Shared by the service (app/)
and the HTTP client (trustfid/client.py); pure pydantic, no torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from .schemas import Headline, Progress, ScoreOptions, Strict, TrustLevel

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


# JobOptions fields only the service uses: never passed to the engine, never in a report's config
SERVICE_OPTIONS = frozenset({"tags", "callback_url", "shard_size"})


class JobOptions(ScoreOptions):
    """The ``options`` of a job: the score options plus what only the service uses."""

    tags: list[str] = Field(default_factory=list, max_length=32,
                            description="free labels such as run=abc or step=12000; filter with GET /v1/jobs?tag=")
    callback_url: str | None = Field(None, max_length=2048,
                                     description="receives the final job record by POST, HMAC-signed")
    shard_size: int | None = Field(
        None, ge=1, le=10_000_000,
        description="split each image set into shards of this many images, run as parallel tasks on every "
                    "worker (one per GPU) and merged into the same report an unsharded job gives (FID and every "
                    "MC-dropout sample within 1e-9 relative, the same per-image latent variances). Off (null) by "
                    "default; worth it when a set has thousands of images and several workers are free. Never "
                    "changes the numbers, so it is not part of the statistics' provenance")

    @field_validator("tags")
    @classmethod
    def _short_tags(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t or len(t) > 128 or any(c in t for c in "\r\n\t"):
                raise ValueError("a tag is 1..128 characters without control characters")
        return v

    def score_options(self) -> ScoreOptions:
        return ScoreOptions(**self.model_dump(exclude=SERVICE_OPTIONS))

    def step(self) -> int | float | None:
        """The training step of the job: the number of its first ``step=`` tag that holds a finite
        number (``step=12000``, ``step=1.5e3``), else None. GET /v1/series orders points by it."""
        for tag in self.tags:
            if tag.startswith("step="):
                text = tag[5:].strip()
                try:
                    return int(text)
                except ValueError:
                    pass
                try:
                    value = float(text)
                except ValueError:
                    continue
                if math.isfinite(value):
                    return value
        return None


class InputRef(Strict):
    """One side of a JSON job submission: a URI to fetch, or a registered reference."""

    uri: str | None = Field(None, max_length=4096, description="file:// (under allowed roots), http(s)://, s3://, "
                             "or dicomweb+https://HOST/PATH/studies/UID[/series/UID] on a configured PACS")
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


class JobSubmit(Strict):
    """JSON body of POST /v1/jobs."""

    real: InputRef
    generated: InputRef
    options: JobOptions | None = None


class ReferenceSubmit(Strict):
    """JSON body of POST /v1/references."""

    source: InputRef
    name: str | None = Field(None, max_length=200)
    options: ScoreOptions | None = None


class InputInfo(Strict):
    """Where one input set came from, as the caller sees it."""

    kind: Literal["upload", "uri", "reference"]
    uri: str | None = None
    reference_id: str | None = None
    files: int | None = None
    bytes: int | None = None


class JobError(Strict):
    """What went wrong, and what to do about it."""

    code: str = Field(description="stable, machine-readable, e.g. bad_options, not_found, rate_limited")
    message: str = Field(description="one line for a person: what was wrong and what to do")


class ErrorResponse(Strict):
    """The body of every error the API answers, whatever the status."""

    error: JobError


class _TaskRecord(Strict):
    id: str
    state: JobState = "queued"
    progress: Progress | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: JobError | None = None
    attempts: int = 0
    notice: str | None = Field(None, description="a note from the service about this record now, e.g. that no "
                               "worker is alive to run it; not stored")


class JobRecord(_TaskRecord):
    """GET /v1/jobs/{id}; also the body POSTed to a callback_url."""

    kind: Literal["score"] = "score"
    real: InputInfo
    generated: InputInfo
    options: JobOptions
    fid: float | None = Field(None, description="copied from the report once succeeded")
    fid_mc_std: float | None = None
    trust_level: TrustLevel | None = None
    # schema 1.1: the report's headline (plain FID, sampling and network intervals, warnings, the text)
    headline: Headline | None = None
    fid_ci95: tuple[float, float] | None = Field(
        None, description="copied from the report once succeeded: its fid_bootstrap.ci95 (the 95% interval from "
                          "resampling the images), which GET /v1/series shows; null when the report has none")


class JobList(Strict):
    jobs: list[JobRecord]


class ReferenceRecord(_TaskRecord):
    """A registered real set: statistics computed once by a worker, then used by id in jobs."""

    kind: Literal["reference"] = "reference"
    name: str | None = None
    source: InputInfo
    options: ScoreOptions
    fingerprint: str | None = Field(None, description="sha256 of the stored statistics file")
    images: int | None = None


class ReferenceList(Strict):
    references: list[ReferenceRecord]


class SeriesPoint(Strict):
    """One succeeded job of a series: its step, its FID and how far that FID can be trusted, and its FRD
    when the job computed one."""

    step: int | float = Field(description="from the job's numeric step= tag")
    fid: float | None = Field(description="null only for a job whose metrics left fid out (schema 1.5)")
    fid_ci95_low: float | None = Field(None, description="bootstrap 95% interval over images (the report's "
                                       "fid_bootstrap.ci95), lower end; null when the report has none")
    fid_ci95_high: float | None = Field(None, description="upper end of the same interval")
    fid_mc_std: float | None = Field(None, description="spread of the FID over the MC-dropout passes")
    trust_level: TrustLevel | None = None
    # 1.5
    frd: float | None = Field(None, description="the job's FRD (report.frd.value), when its metrics asked for it")
    frd_ci95_low: float | None = Field(None, description="the FRD's 95% sampling interval, lower end")
    frd_ci95_high: float | None = Field(None, description="upper end of the same interval")
    # 1.7
    precision: float | None = Field(None, description="fidelity: the report's prdc.precision.value (network features)")
    recall: float | None = Field(None, description="diversity: the report's prdc.recall.value")
    density: float | None = Field(None, description="the report's prdc.density.value")
    coverage: float | None = Field(None, description="the report's prdc.coverage.value")
    job_id: str
    created_at: float
    finished_at: float


class Series(Strict):
    """GET /v1/series: the caller's succeeded jobs with one tag, by step."""

    tag: str
    points: list[SeriesPoint]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")
