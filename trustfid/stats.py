"""Statistics of one image set: streaming mean and covariance per pass, in float64.

Memory does not grow with the number of images: rows (float32 features, exactly what the network
gives) are buffered in fixed chunks of CHUNK rows and merged with Chan's pairwise update

    M2 = M2_a + M2_b + (mu_b - mu_a)(mu_b - mu_a)^T * n_a n_b / n

so the result depends only on the order of the images, never on the batch size used to compute
them. While a set has no more images than dimensions (the usual case for medical sets) the rows are
kept instead: the centred rows are a rank-(n-1) factor of the covariance, smaller than the d x d
matrix and the key to the fast Fréchet path (frechet.py).

Partial statistics of disjoint shards merge exactly (``Moments.merge``), so a big job can be split
over many workers. ``SetStats`` holds everything about one set and saves to / loads from a .npz
without pickle: ``mu`` and ``sigma`` of the plain pass (readable by pytorch-fid and clean-fid; we
read theirs too), the per-pass MC statistics, per-image latent variances and their provenance: the
extractor and its weights, the preprocessing and the MC settings (``provenance``), which decides
whether two sets' statistics may be combined. (A file's sha256, which the service calls a
reference's ``fingerprint``, is another thing.)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import IncompatibleStatsError, InputError
from .rows import KeptRows
from .schemas import DEFAULT_EXTRACTOR, SkippedFile

CHUNK = 256
RADIOMICS = "frd_"  # prefix of the radiomic statistics' keys in a saved statistics .npz
FORMAT = "trustfid-stats-2"
# Files of format 1 call the provenance "fingerprint" and predate the choice of extractor (all are
# the FID Inception's); they are read as format 2 with that extractor.
LEGACY_FORMATS = ("trustfid-stats-1",)


@dataclass
class Gaussian:
    """Mean and covariance of one set under one pass. ``rows`` (float32, n x d) is kept when
    n <= d; then the covariance is F^T F with the factor F = (rows - mu) / sqrt(n - 1)."""

    n: int
    mu: np.ndarray
    sigma: np.ndarray | None = None
    rows: np.ndarray | None = None
    weighted_factor: np.ndarray | None = None  # a factor given directly (bootstrap resamples)

    def factor_rows(self) -> int | None:
        """Rows of the factor (``factor()`` without computing it); None when the covariance is a matrix."""
        f = self.weighted_factor if self.weighted_factor is not None else self.rows
        return None if self.sigma is not None or f is None else len(f)

    def factor(self) -> np.ndarray | None:
        if self.weighted_factor is not None:
            return self.weighted_factor
        if self.rows is None:
            return None
        return (self.rows.astype(np.float64) - self.mu) / np.sqrt(max(self.n - 1, 1))

    def covariance(self) -> np.ndarray:
        if self.sigma is not None:
            return self.sigma
        f = self.factor()
        return f.T @ f

    def trace(self) -> float:
        if self.sigma is not None:
            return float(np.trace(self.sigma))
        return float(np.sum(self.factor() ** 2))


class Moments:
    """Streaming mean/covariance of d-dimensional rows (see module docstring)."""

    def __init__(self, dim: int, keep_rows: bool = False):
        self.dim = dim
        self.keep_rows = keep_rows  # keep every row (the plain pass keeps them for the bootstrap)
        self.n = 0
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._kept: list[np.ndarray] = []
        self._merged: tuple[int, np.ndarray, np.ndarray] | None = None  # (n, mean, M2)

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows must be (n, {self.dim}), got {rows.shape}")
        self.n += len(rows)
        self._pending.append(rows)
        self._pending_n += len(rows)
        if self.n > self.dim:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._pending_n:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        full = len(block) if final else (len(block) // CHUNK) * CHUNK
        for start in range(0, full, CHUNK):
            self._merge_chunk(block[start:start + CHUNK])
        if self.keep_rows and full:
            self._kept.append(block[:full])
        rest = block[full:]
        self._pending = [rest] if len(rest) else []
        self._pending_n = len(rest)

    def _merge_chunk(self, chunk: np.ndarray) -> None:
        x = chunk.astype(np.float64)
        nb = len(x)
        mb = x.mean(axis=0)
        xc = x - mb
        m2b = xc.T @ xc
        self._merged = _chan(self._merged, (nb, mb, m2b))

    def merge(self, other: Moments) -> Moments:
        """Statistics of the union of two disjoint shards (this shard's images first)."""
        if not other.n or not self.n:  # a side without images (metrics without fid)
            return other if not self.n else self
        out = Moments(self.dim, keep_rows=self.keep_rows and other.keep_rows)
        a, b = self.gaussian(), other.gaussian()
        if a.n + b.n <= self.dim and a.rows is not None and b.rows is not None:
            out.add(np.concatenate([a.rows, b.rows]))
            return out
        ma = (a.n, a.mu, a.covariance() * (a.n - 1))
        mb = (b.n, b.mu, b.covariance() * (b.n - 1))
        out._merged = _chan(ma, mb)
        out.n = a.n + b.n
        if out.keep_rows and a.rows is not None and b.rows is not None:
            out._kept = [a.rows, b.rows]
        return out

    def rows(self) -> np.ndarray | None:
        """All rows, when they were kept (n <= d, or keep_rows)."""
        if self._merged is None:
            return np.concatenate(self._pending) if self._pending else np.zeros((0, self.dim), np.float32)
        if self.keep_rows:
            return np.concatenate(self._kept + self._pending)
        return None

    def gaussian(self) -> Gaussian:
        if self._merged is None:  # n <= d: keep the rows, the covariance is their factor
            rows = self.rows()
            mu = rows.astype(np.float64).mean(axis=0) if len(rows) else np.zeros(self.dim)
            return Gaussian(self.n, mu, rows=rows)
        merged = self._merged
        if self._pending_n:
            tail = np.concatenate(self._pending).astype(np.float64)
            xc = tail - tail.mean(axis=0)
            merged = _chan(merged, (len(tail), tail.mean(axis=0), xc.T @ xc))
        n, mu, m2 = merged
        return Gaussian(n, mu, sigma=m2 / (n - 1))


def _chan(a, b):
    if a is None:
        return b
    na, ma, m2a = a
    nb, mb, m2b = b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + np.outer(delta, delta) * (na * nb / n)


# The score options that statistics are computed with: two sets' statistics combine only when these agree.
STATS_OPTIONS = ("extractor", "resize", "window", "passes", "dropout_rate", "dropout_at", "dropout_kind", "mask_mode",
                 "seed", "precision")


def provenance(weights_sha256: str, options) -> dict:
    """What makes two sets' statistics comparable: same extractor and weights, preprocessing and MC
    network. ``options.extractor`` names the extractor (Extractor.options_for sets it)."""
    out = {"format": FORMAT, "weights_sha256": weights_sha256}
    out.update({name: getattr(options, name) for name in STATS_OPTIONS})
    out["dropout_at"] = list(options.dropout_at)
    out["window"] = list(options.window) if options.window is not None else None  # as JSON reads it back
    return out


def saved_options(path: str | Path) -> dict | None:
    """The STATS_OPTIONS a trustfid statistics .npz was computed with, read from its small JSON member
    without loading the arrays; None for pytorch-fid / clean-fid statistics or any other file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) not in (FORMAT, *LEGACY_FORMATS):
                return None
            key = "provenance" if "provenance" in z.files else "fingerprint"  # format 1's name
            meta = json.loads(str(z[key]))
    except (OSError, ValueError, KeyError):
        return None
    return {name: meta[name] for name in STATS_OPTIONS if name in meta} if isinstance(meta, dict) else None


def merge_options(chosen: dict, saved: dict, source: str) -> dict:
    """Options ``chosen`` explicitly, completed with those statistics were ``saved`` with (from
    ``source``): each option not chosen takes the saved value; one of STATS_OPTIONS chosen differently
    is refused before anything runs, naming each difference."""
    def same(a, b):  # JSON reads a tuple back as a list
        return (list(a) if isinstance(a, tuple) else a) == (list(b) if isinstance(b, tuple) else b)

    diff = [f"{source} was computed with {name}={saved[name]!r}, not {chosen[name]!r}"
            for name in STATS_OPTIONS if name in chosen and name in saved and not same(chosen[name], saved[name])]
    if diff:
        raise IncompatibleStatsError(
            "; ".join(diff) + ". Leave those options out to use the saved statistics' settings, or recompute "
            "the statistics with the options you want", code="incompatible_options")
    return {**saved, **chosen}


def check_compatible(a: dict | None, b: dict | None, what: str = "statistics") -> None:
    if a is None or b is None:
        return  # foreign stats (pytorch-fid / clean-fid): nothing to compare, the report says so
    diff = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diff:
        raise IncompatibleStatsError(
            f"these {what} were computed differently and cannot be combined ({'; '.join(diff)}); "
            "recompute one side with the same settings")


@dataclass
class RadiomicsStats:
    """One set's radiomic statistics: streaming raw moments of the float32 features, per-feature min and
    max, a capped sample of rows for the bootstrap, and the images that gave no features."""

    cap: int
    seed: int
    names: list[str] = field(default_factory=list)
    moments: Moments | None = None
    kept: KeptRows | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    provenance: dict | None = None

    @property
    def n(self) -> int:
        return 0 if self.moments is None else self.moments.n

    def add(self, image_names: list[str], feature_names: list[str], rows: np.ndarray, first_index: int) -> None:
        """Features of the next images (``rows`` (n, k), in set order, their first image's index in the
        set ``first_index``)."""
        if not image_names:
            return
        rows = np.asarray(rows, np.float64).astype(np.float32)  # as frd-score v1 holds them
        if self.moments is None:
            k = len(feature_names)
            self.names = list(feature_names)
            self.moments, self.kept = Moments(k), KeptRows(k, self.cap, self.seed)
            self.low, self.high = np.full(k, np.inf), np.full(k, -np.inf)
        elif list(feature_names) != self.names:
            raise InputError("pyradiomics gave another feature list for some images of this set; "
                             "check that every image is 2-D with the same number of channels")
        bad = np.isnan(rows).any(axis=1)
        for i in np.flatnonzero(bad):
            self.skipped.append(SkippedFile(name=image_names[i], reason="FRD: pyradiomics gave NaN features "
                                                                       "(left out of the FRD, as frd-score does)"))
        good = rows[~bad]
        if len(good):
            self.moments.add(good)
            self.kept.add(good, first_index)  # indices need not be consecutive: keys are per index
            self.low = np.minimum(self.low, good.min(axis=0))
            self.high = np.maximum(self.high, good.max(axis=0))

    def merge(self, other: RadiomicsStats) -> RadiomicsStats:
        """The statistics of two disjoint shards (this one's images first)."""
        check_compatible(self.provenance, other.provenance, "shards' radiomic statistics")
        if self.moments is None or other.moments is None:
            out = other if self.moments is None else self
            return RadiomicsStats(out.cap, out.seed, out.names, out.moments, out.kept, out.low, out.high,
                                  self.skipped + other.skipped, out.provenance)
        if self.names != other.names:
            raise IncompatibleStatsError("shards' radiomic statistics have different feature lists")
        return RadiomicsStats(self.cap, self.seed, self.names, self.moments.merge(other.moments),
                              self.kept.merge(other.kept), np.minimum(self.low, other.low),
                              np.maximum(self.high, other.high), self.skipped + other.skipped, self.provenance)

    # -- persistence, inside a statistics .npz (stats.SetStats.save / load_stats) ----------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {"provenance": np.array(json.dumps(self.provenance, sort_keys=True)),
               "skipped_names": np.array([s.name for s in self.skipped], dtype=str),
               "skipped_reasons": np.array([s.reason for s in self.skipped], dtype=str),
               "cap": np.array([self.cap, self.seed], np.uint64)}
        if self.moments is not None:
            g = self.moments.gaussian()
            out.update(names=np.array(self.names, dtype=str), n=np.array(g.n), mu=g.mu, low=self.low, high=self.high,
                       kept=self.kept.rows(), kept_index=self.kept.index())
            if g.rows is not None:
                out["rows"] = g.rows
            else:
                out["sigma"] = g.covariance()
        return {RADIOMICS + k: v for k, v in out.items()}

    @classmethod
    def from_arrays(cls, data: dict) -> RadiomicsStats | None:
        if RADIOMICS + "provenance" not in data:
            return None
        d = {k.removeprefix(RADIOMICS): v for k, v in data.items() if k.startswith(RADIOMICS)}
        cap, seed = (int(v) for v in d["cap"])
        out = cls(cap, seed, provenance=json.loads(str(d["provenance"])),
                  skipped=[SkippedFile(name=str(a), reason=str(b))
                           for a, b in zip(d["skipped_names"], d["skipped_reasons"])])
        if "names" in d:
            n, k = int(d["n"]), len(d["names"])
            out.names = [str(s) for s in d["names"]]
            out.moments = moments_from(k, n, d["mu"], d.get("sigma"), d.get("rows"))
            out.kept = KeptRows.from_arrays(d["kept"], d["kept_index"], n, cap, seed)
            out.low, out.high = d["low"].astype(np.float64), d["high"].astype(np.float64)
        return out



@dataclass
class SetStats:
    """Everything the report needs about one set."""

    plain: Moments
    mc: list[Moments]
    names: list[str] = field(default_factory=list)
    latent_variance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    skipped: list[SkippedFile] = field(default_factory=list)
    provenance: dict | None = None  # stats.provenance(...); None for another tool's mu/sigma
    source: str = ""
    intensity: dict[str, int] = field(default_factory=dict)  # images per intensity mapping (inputs/intensity.py)
    # Kept by extras.Collector: per-image arrays in image order (merged by concatenation), e.g. the
    # raw domain inputs; a bounded sample of plain feature rows; thumbnails (name, domain score,
    # uint8 image) of the most atypical images (saved to .npz only for a shard: save(thumbnails=True)).
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    rows: KeptRows | None = None
    thumbnails: list = field(default_factory=list)
    radiomics: RadiomicsStats | None = None  # metrics with frd: the radiomic features' statistics (frd.py)

    def feature_rows(self) -> np.ndarray | None:
        """The plain feature rows kept for KID, FID∞ and the bootstrap (all of them up to the cap)."""
        if self.rows is not None:
            return self.rows.rows()
        return self.plain.rows()

    @property
    def n(self) -> int:
        """Images in the set: the FID's, or the radiomics' when the FID network did not run."""
        return self.plain.n or len(self.names)

    def merge(self, other: SetStats) -> SetStats:
        check_compatible(self.provenance, other.provenance, "shards")
        if len(self.mc) != len(other.mc):
            raise IncompatibleStatsError("shards have different numbers of MC passes")
        return SetStats(
            plain=self.plain.merge(other.plain),
            mc=[a.merge(b) for a, b in zip(self.mc, other.mc)],
            names=self.names + other.names,
            latent_variance=np.concatenate([self.latent_variance, other.latent_variance]),
            skipped=self.skipped + other.skipped,
            provenance=self.provenance,
            source=f"{self.source}+{other.source}",
            intensity=dict(sorted((Counter(self.intensity) + Counter(other.intensity)).items())),
            # a shard with no usable image has no per-image arrays
            per_image={k: np.concatenate([a.per_image[k] for a in (self, other) if k in a.per_image])
                       for k in {**self.per_image, **other.per_image}},
            rows=self.rows.merge(other.rows) if self.rows is not None and other.rows is not None else None,
            # highest domain score first, ties in image order, as the collector keeps them; how many the
            # report shows (options.thumbnails) is the caller's cut: ``top_thumbnails``
            thumbnails=sorted(self.thumbnails + other.thumbnails, key=lambda t: -t[1]),
            radiomics=(self.radiomics.merge(other.radiomics) if self.radiomics is not None and
                       other.radiomics is not None else None),
        )

    def top_thumbnails(self, k: int) -> None:
        """Keep the ``k`` thumbnails of the highest domain scores (after merging shards)."""
        self.thumbnails = self.thumbnails[:k]

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | Path, *, thumbnails: bool = False) -> None:
        """``thumbnails``: save them too (a shard's statistics, merged into a report later)."""
        # a set the FID network did not run on (metrics frd alone) has empty FID statistics
        plain = self.plain.gaussian() if self.plain.n else Gaussian(0, np.zeros(0), sigma=np.zeros((0, 0)))
        arrays = {
            "format": np.array(FORMAT),
            "mu": plain.mu,
            "sigma": plain.covariance(),
            "n": np.array(self.plain.n),  # 0 when the FID network did not run (the names count the images)
            "names": np.array(self.names, dtype=str),
            "latent_variance": np.asarray(self.latent_variance, np.float64),
            "skipped_names": np.array([s.name for s in self.skipped], dtype=str),
            "skipped_reasons": np.array([s.reason for s in self.skipped], dtype=str),
            "provenance": np.array(json.dumps(self.provenance, sort_keys=True)),
            "intensity": np.array(json.dumps(self.intensity, sort_keys=True)),
        }
        rows = self.feature_rows()
        if rows is not None and self.plain.n:
            arrays["features"] = rows
            if self.rows is not None:
                arrays["features_index"] = self.rows.index()
                arrays["features_cap"] = np.array([self.rows.cap, self.rows.seed], np.uint64)
        for key, value in self.per_image.items():
            arrays[f"per_image_{key}"] = np.asarray(value)
        if thumbnails and self.thumbnails:
            arrays["thumbnail_names"] = np.array([t[0] for t in self.thumbnails], dtype=str)
            arrays["thumbnail_scores"] = np.array([t[1] for t in self.thumbnails], np.float64)
            arrays["thumbnail_images"] = np.stack([t[2] for t in self.thumbnails])
        if self.mc:
            gs = [m.gaussian() for m in self.mc]
            arrays["mc_mu"] = np.stack([g.mu for g in gs])
            if all(g.rows is not None for g in gs):
                arrays["mc_features"] = np.stack([g.rows for g in gs])
            else:
                arrays["mc_sigma"] = np.stack([g.covariance() for g in gs])
        if self.radiomics is not None:
            arrays.update(self.radiomics.arrays())
        path = Path(path)
        with open(path, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, **arrays)


def moments_from(dim: int, n: int, mu: np.ndarray, sigma: np.ndarray | None, rows: np.ndarray | None,
                  keep_rows: bool = False) -> Moments:
    m = Moments(dim, keep_rows=keep_rows)
    if n == 0:  # statistics of a set the FID network did not run on (metrics frd alone)
        return m
    # rows are saved whenever they were kept: n <= d, keep_rows, or fewer than a CHUNK past d (which
    # only a small feature dimension reaches); then they are all there is, no sigma was saved
    if rows is not None and (n <= dim or keep_rows or sigma is None):
        m.add(rows)
        return m
    m.n = n
    m._merged = (n, mu.astype(np.float64), sigma.astype(np.float64) * (max(n, 2) - 1))
    return m


def load_stats(path: str | Path) -> SetStats:
    """Read trustfid's .npz, or pytorch-fid's / clean-fid's (keys mu, sigma). Never unpickles."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise InputError(f"{path.name}: not a readable statistics .npz ({e})") from None
    if "mu" not in data or "sigma" not in data:
        raise InputError(f"{path.name}: a statistics .npz needs the keys 'mu' and 'sigma' "
                         f"(found {sorted(data)})")
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    d = mu.shape[0]
    if mu.ndim != 1 or sigma.shape != (d, d):
        raise InputError(f"{path.name}: mu must be (d,) and sigma (d, d); got {mu.shape} and {sigma.shape}")
    fmt = str(data.get("format", ""))
    if fmt != FORMAT and fmt not in LEGACY_FORMATS:  # pytorch-fid / clean-fid statistics
        n = 0  # unknown; the covariance is used as given
        plain = moments_from(d, 2, mu, sigma, None)
        plain.n = n
        return SetStats(plain=plain, mc=[], provenance=None, source=path.name)
    n = int(data["n"])
    features = data.get("features")
    kept = None
    if features is not None:
        index = data.get("features_index", np.arange(len(features)))
        cap, seed = (int(v) for v in data["features_cap"]) if "features_cap" in data else (len(features), 0)
        kept = KeptRows.from_arrays(features, index, n, cap, seed)
        if len(features) != n:  # a sample of the rows: not the covariance's factor
            features = None
    plain = moments_from(d, n, mu, sigma, features, keep_rows=features is not None)
    mc = []
    if "mc_mu" in data:
        for t in range(len(data["mc_mu"])):
            rows = data["mc_features"][t] if "mc_features" in data else None
            sig = data["mc_sigma"][t] if "mc_sigma" in data else None
            mc.append(moments_from(d, n, data["mc_mu"][t], sig, rows))
    skipped = [SkippedFile(name=str(a), reason=str(b))
               for a, b in zip(data["skipped_names"], data["skipped_reasons"])]
    return SetStats(plain=plain, mc=mc, names=[str(s) for s in data["names"]],
                    latent_variance=data["latent_variance"], skipped=skipped,
                    provenance=_provenance(data, fmt), source=path.name,
                    intensity=json.loads(str(data["intensity"])) if "intensity" in data else {},
                    per_image={k.removeprefix("per_image_"): v for k, v in data.items() if k.startswith("per_image_")},
                    rows=kept, thumbnails=[(str(name), float(score), im) for name, score, im in zip(
                        data.get("thumbnail_names", ()), data.get("thumbnail_scores", ()),
                        data.get("thumbnail_images", ()))],
                    radiomics=RadiomicsStats.from_arrays(data))


def _provenance(data: dict, fmt: str) -> dict:
    prov = json.loads(str(data["provenance" if "provenance" in data else "fingerprint"]))
    if prov is None:  # statistics without the FID's (metrics frd alone)
        return None
    if fmt in LEGACY_FORMATS:
        prov = {**prov, "format": FORMAT, "extractor": prov.get("extractor", DEFAULT_EXTRACTOR)}
    # Files written before the precision option: strict float32 (CPU) was the only arithmetic there was
    # (a CUDA run of those releases used TF32 convolutions: recompute such statistics).
    return {**prov, "window": prov.get("window"), "precision": prov.get("precision", "fp32")}
