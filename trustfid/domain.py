"""Is an image like the natural photos the FID Inception was trained on? A per-image domain score
from the network's own ImageNet statistics and its embedding.

The first signal. Every convolution of the FID InceptionV3 is followed by a batch-norm whose stored
mean and variance describe that convolution's output over ImageNet. The network is loaded with the
batch-norm folded into the convolution (inception.py), so the folded conv's pre-ReLU output z minus
the batch-norm's beta is the standardised activation s = (conv(x) - mean) / sqrt(var + eps): over
ImageNet photos each channel of s has mean 0 and variance about 1. For one image and one channel c,
let m_c and v_c be the spatial mean and variance of s_c. Then

    KL( N(m_c, v_c) || N(0, 1) ) = ½ (v_c + m_c² - 1 - ln v_c) = ½ (m_c²  +  (v_c - 1 - ln v_c))

measures how far this image's activations sit from ImageNet's. We keep the two halves apart, each
averaged over the channels of every convolution of a stage (the stem, Mixed_5b ... Mixed_7c): the
*mean term* mean_c m_c² and the *variance term* mean_c (v_c - 1 - ln v_c). Every stage runs exactly
once per image in the deterministic pass (trunk + plain tail), so forward hooks on their convolutions
collect the statistics at the cost of a mean and a variance per feature map. They are stored per image
(``STATS_KEY``, columns ``RAW_INPUTS``) whatever the model, so saved statistics keep them.

The second signal: the embedding itself. Low detail (an upsampled 32-px photo, blur) moves the
early stages' statistics as much as a change of domain does; what the image shows moves the 2048-d
pool3 embedding. A linear function of its square root, fitted by the study, is the model's
``embedding`` term; extraction stores it per image under a key naming that function
(``embedding_key``), so statistics saved for another model are never scored with this one.

The score. ``DomainModel`` is linear: an intercept, coefficients over standardised log terms and the
embedding term, fitted by the validation study (natural photos at 32 px to full size, grayscale and
JPEG, against medical images; cross-validation grouped by source; held-out sources chosen before any
fit) and shipped in trust_baseline.json. Higher means less like a natural photo. The trust rule
(trust.py) compares a set's scores with the natural photos' score distribution stored beside it.
"""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np

from .timing import current

# Stages whose convolutions are observed (all run once per image in the deterministic pass).
STAGES: tuple[str, ...] = ("stem", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                           "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
# Columns of the raw per-image domain statistics that extraction stores (SetStats.per_image[STATS_KEY]).
# Statistics saved before Mixed_7b/7c were observed have 21 columns: they are not scored.
RAW_INPUTS: tuple[str, ...] = tuple(f"{t}:{s}" for s in STAGES for t in ("m", "v")) + ("norm",)
STATS_KEY = "domain_inputs"
V_FLOOR = 1e-6  # a constant feature map (v = 0) would make ln v infinite


class DomainProbe:
    """Forward hooks on the convolutions of ``STAGES`` that record, per image and stage, the channel
    means of m² and of (v - 1 - ln v) of the standardised pre-ReLU activation. Use ``active()``
    around the deterministic forward pass of one batch, then ``take()``. Only the thread that
    entered ``active()`` is recorded, so a network shared by threads is safe."""

    def __init__(self, net):
        from .inception import ConvBN

        self._convs = []  # (stage index, conv module, beta)
        for path, module in net.named_modules():
            if not isinstance(module, ConvBN):
                continue
            stage = path.split(".")[1]  # stages.<stage>[.<block>...]
            if stage in STAGES:
                self._convs.append((STAGES.index(stage), module.conv, module.beta))
        self._channels = np.zeros(len(STAGES))
        for s, conv, _ in self._convs:
            self._channels[s] += conv.out_channels
        self._terms: list = []
        self._thread: int | None = None

    @contextlib.contextmanager
    def active(self):
        handles = [conv.register_forward_hook(self._hook(s, beta, k)) for k, (s, conv, beta) in enumerate(self._convs)]
        self._thread = threading.get_ident()  # terms gather until take(): one batch may be several calls
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            self._thread = None

    def _hook(self, stage: int, beta, conv_index: int):
        def hook(module, inputs, z):
            if threading.get_ident() != self._thread:
                return
            t0 = time.perf_counter()
            try:
                record(z)
            finally:  # the set's probe_s (timing.py), taken out of its network_s
                current().add("probe_s", time.perf_counter() - t0, "")

        def record(z):
            import torch

            n, c = z.shape[:2]
            # The sums of z and z^2 over positions as matrix products with a ones vector (2x faster on
            # CPU than var_mean), on one layout (N, H*W, C). On a CPU one image at a time, so that an
            # image's terms are the same whatever batch it ran in and whatever layout the convolution
            # gave (a shard's batches differ from the unsharded job's); on a GPU every call has the
            # same shape already (mc.py), and per-image products would cost a launch each.
            flat = z.permute(0, 2, 3, 1).reshape(n, -1, c).float()
            hw = flat.shape[1]
            ones = torch.full((1, 1, hw), 1.0 / hw, dtype=flat.dtype, device=flat.device)
            step = n if flat.is_cuda else 1
            rows = [flat[i:i + step] for i in range(0, n, step)]
            mz = torch.cat([torch.bmm(ones.expand(len(r), 1, hw), r)[:, 0] for r in rows])
            sq = torch.cat([torch.bmm(ones.expand(len(r), 1, hw), r * r)[:, 0] for r in rows])
            v = (sq - mz * mz).clamp_min(V_FLOOR)
            m = mz - beta.to(mz.device)
            self._terms.append((stage, conv_index, (m * m).sum(dim=1), (v - 1.0 - torch.log(v)).sum(dim=1)))
        return hook

    def take(self, plain_features) -> np.ndarray:
        """(N, len(RAW_INPUTS)) float64 for the batch just run: per stage (m, v) terms, then the norm
        of each image's plain pool3 embedding. The batch may have run as several network calls, the
        last one padded (mc.MCDropout on CUDA): each convolution's rows are joined in call order and
        cut to the batch's N images."""
        import torch

        if not getattr(self, "_terms", None):
            raise RuntimeError("no activations were recorded: run the network inside active()")
        n = len(plain_features)
        calls: dict[int, tuple[int, list, list]] = {}
        for stage, conv, mterm, vterm in self._terms:
            calls.setdefault(conv, (stage, [], []))
            calls[conv][1].append(mterm)
            calls[conv][2].append(vterm)
        sums = torch.zeros(n, len(STAGES), 2, dtype=torch.float64)
        for stage, mterms, vterms in calls.values():
            sums[:, stage, 0] += torch.cat(mterms)[:n].double().cpu()
            sums[:, stage, 1] += torch.cat(vterms)[:n].double().cpu()
        self._terms = []
        terms = (sums / torch.from_numpy(self._channels)[None, :, None]).reshape(n, -1)
        norm = torch.linalg.vector_norm(plain_features.double(), dim=1, keepdim=True).cpu()
        return torch.cat([terms, norm], dim=1).numpy()


def model_inputs(raw: np.ndarray, names: list[str] | tuple[str, ...]) -> np.ndarray:
    """The model's log inputs from the raw per-image columns (``RAW_INPUTS``): ``log_kl:STAGE`` (log of
    the stage's mean KL), ``log_m:STAGE`` / ``log_v:STAGE`` (its two terms) and ``log_norm``."""
    raw = np.asarray(raw, np.float64)
    col = {name: raw[:, i] for i, name in enumerate(RAW_INPUTS)}
    out = []
    for name in names:
        kind, _, stage = name.partition(":")
        if kind == "log_kl":
            x = 0.5 * (col[f"m:{stage}"] + col[f"v:{stage}"])
        elif kind in ("log_m", "log_v"):
            x = col[f"{kind[-1]}:{stage}"]
        elif kind == "log_norm":
            x = col["norm"]
        else:
            raise ValueError(f"unknown domain model input {name!r}")
        out.append(np.log(np.maximum(x, 1e-12)))
    return np.stack(out, axis=1) if out else np.zeros((len(raw), 0))


def embedding_features(plain_features) -> np.ndarray:
    """What the embedding term is linear in: the square root of each pool3 feature (float64)."""
    f = plain_features.double().cpu().numpy() if hasattr(plain_features, "double") else np.asarray(plain_features)
    return np.sqrt(np.maximum(np.asarray(f, np.float64), 0.0))


def embedding_dot(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each row of ``features`` (from embedding_features) dotted with ``weights``, summed row by row so
    that an image's term never depends on the batch it came in (a BLAS matrix-vector product may
    round differently for a different number of rows)."""
    return np.sum(features * weights, axis=1)


def embedding_key(embedding_id: str) -> str:
    """The per-image key of an embedding term: it names the linear function that made it."""
    return f"domain_embedding_{embedding_id}"


class DomainModel:
    """score = intercept + sum_j coef_j (x_j - center_j) / scale_j over the named log inputs
    + w . sqrt(pool3 embedding) when the model has an ``embedding`` term."""

    def __init__(self, spec: dict):
        self.inputs = list(spec["inputs"])
        self.center = np.asarray(spec["center"], np.float64)
        self.scale = np.asarray(spec["scale"], np.float64)
        self.coef = np.asarray(spec["coef"], np.float64)
        self.intercept = float(spec["intercept"])
        emb = spec.get("embedding")
        self.embedding_id = emb["id"] if emb else None
        self.embedding = np.asarray(emb["weights"], np.float64) if emb else None

    def embedding_term(self, plain_features) -> np.ndarray | None:
        """(N,) w . sqrt(f) for a batch of plain pool3 features; None without an embedding term."""
        if self.embedding is None:
            return None
        return embedding_dot(embedding_features(plain_features), self.embedding)

    def score(self, raw: np.ndarray, embedding: np.ndarray | None = None) -> np.ndarray:
        x = model_inputs(raw, self.inputs)
        out = self.intercept + ((x - self.center) / self.scale) @ self.coef
        if self.embedding is not None:
            if embedding is None or len(embedding) != len(out):
                raise ValueError("this domain model needs the embedding term of every image")
            out = out + np.asarray(embedding, np.float64)
        return out

    def per_image(self, raw: np.ndarray, plain_features) -> dict[str, np.ndarray]:
        """What extraction stores for a batch: the raw statistics, and this model's embedding term."""
        out = {STATS_KEY: raw}
        if self.embedding is not None:
            out[embedding_key(self.embedding_id)] = self.embedding_term(plain_features)
        return out

    def score_stats(self, per_image: dict[str, np.ndarray], n: int) -> np.ndarray | None:
        """Scores of a set's stored per-image arrays; None when they are missing or of another layout
        (statistics saved by an earlier version, or for another domain model)."""
        raw = per_image.get(STATS_KEY)
        if raw is None or raw.ndim != 2 or raw.shape != (n, len(RAW_INPUTS)):
            return None
        emb = None
        if self.embedding is not None:
            emb = per_image.get(embedding_key(self.embedding_id))
            if emb is None or emb.shape != (n,):
                return None
        return self.score(raw, emb)

    def describe(self) -> str:
        what = "linear on " + ", ".join(self.inputs)
        return what + (" and the pool3 embedding" if self.embedding is not None else "")
