"""The MC settings the study compares, and how each one is run on cached trunk outputs.

Speed: every image's deterministic trunk runs once, up to the earliest dropout point any setting run
on that image needs; each setting continues from there (a later first point: a few deterministic
stages more, cached per split) and runs only its stochastic tail. The T passes of a chunk of images
run as one batch of T x n (larger batches are faster on CPU). Masks come from the engine's own mask
function (``MCDropout._mask``: same seeds, same shapes, same scaling), and the tail is the engine's
stages, so the numbers are the product's; study.check_engine_equivalence compares them with
``pipeline.extract`` at the start of every run.

With ``shared`` masks the mask of pass t depends only on (seed, t, point), so pass t is the same
sampled network for every set and every severity (common random numbers: differences between
severities are not blurred by different masks). ``per_image`` masks depend on the set tag and the
image's index, so crop i gets the same masks at every severity too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from trustfid.mc import MCDropout
from trustfid.schemas import ScoreOptions


@dataclass(frozen=True)
class Setting:
    dropout_at: tuple[str, ...]
    rate: float = 0.2
    kind: str = "element"
    mask_mode: str = "shared"
    note: str = ""

    @property
    def name(self) -> str:
        at = "+".join(b.removeprefix("Mixed_") for b in self.dropout_at)
        return f"{at} p{self.rate:g} {self.kind} {self.mask_mode}"

    def options(self, passes: int, seed: int = 0) -> ScoreOptions:
        return ScoreOptions(passes=passes, dropout_rate=self.rate, dropout_at=list(self.dropout_at),
                            dropout_kind=self.kind, mask_mode=self.mask_mode, seed=seed, device="cpu")


# Run on every set (clean, 25 corrupted, grayscale, medical): one axis at a time.
# - where: the block whose output is dropped, at p=0.2, element masks, shared;
# - how strong / which kind / which mask mode: around Mixed_7a.
GRID: list[Setting] = [
    Setting(("Mixed_7c",), note="control: dropout on the last feature map, just before the average pool"),
    Setting(("Mixed_7b",)),
    Setting(("Mixed_7a",)),
    Setting(("Mixed_6e",)),
    Setting(("Mixed_6e", "Mixed_7a", "Mixed_7b"), note="the engine's provisional default"),
    Setting(("Mixed_7a",), rate=0.1),
    Setting(("Mixed_7a",), rate=0.4),
    Setting(("Mixed_7a",), kind="channel"),
    Setting(("Mixed_7a",), mask_mode="per_image"),
]
# Run on the natural-vs-medical sets only (their tails cost 2-5x more per pass): does dropout
# earlier in the network separate medical images better?
DOMAIN_ONLY: list[Setting] = [
    Setting(("Mixed_5d",), note="natural-vs-medical sets only (tail = 80% of the network)"),
]


def first_split(net, settings) -> int:
    """Trunk length (stages[:split]) that serves every given setting."""
    return min(net.stage_index(s.dropout_at[0]) for s in settings) + 1


@dataclass
class Features:
    """Per set: trunk output (at that set's split) and the plain (dropout-off) features."""

    trunk: dict[str, torch.Tensor] = field(default_factory=dict)
    split: dict[str, int] = field(default_factory=dict)
    plain: dict[str, np.ndarray] = field(default_factory=dict)
    domain: dict[str, np.ndarray] = field(default_factory=dict)  # raw per-image domain inputs (trustfid.domain)
    _later: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)

    def at(self, net, set_name: str, split: int) -> torch.Tensor:
        """Trunk output of stages[:split] (computed once from the cached, shorter trunk)."""
        own = self.split[set_name]
        if split == own:
            return self.trunk[set_name]
        if split < own:
            raise ValueError(f"{set_name}: trunk cached at {own}, a setting needs {split}")
        key = (set_name, split)
        if key not in self._later:
            with torch.inference_mode():
                h = self.trunk[set_name]
                self._later[key] = torch.cat([net.forward_range(h[i:i + 32], own, split)
                                              for i in range(0, len(h), 32)])
        return self._later[key]

    def drop_later(self) -> None:
        self._later.clear()


@torch.inference_mode()
def _stacked_tail(model: MCDropout, h: torch.Tensor, passes: list[int], set_tag: int,
                  first_index: int) -> torch.Tensor:
    """(T, n, 2048): model.tail(h, t, set_tag, first_index) for every t, as one T*n batch."""
    net = model.net
    n, T = len(h), len(passes)
    points = set(model.points)
    start = model.split - 1  # h is the output of this stage, the first dropout point
    x = h.repeat(T, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    for i in range(start, len(net.stage_names)):
        if i > start:
            x = net.forward_range(x, i, i + 1)
        if i in points:
            proxy = x[:n]
            masks = torch.cat([model._mask(t, i, proxy, set_tag, first_index).expand(n, -1, -1, -1)
                               for t in passes])
            x = x.mul_(masks)
    return net.pool3(x).float().reshape(T, n, -1)


def run_setting(net, feats: Features, setting: Setting, set_tags: dict[str, int], passes,
                chunk_images: int = 16) -> dict[str, np.ndarray]:
    """(T, n, 2048) float32 MC features of every given set for the given pass indices."""
    passes = list(passes)
    model = MCDropout(net, setting.options(max(passes) + 1), torch.device("cpu"))
    out = {}
    for set_name, tag in set_tags.items():
        h = feats.at(net, set_name, model.split)
        parts = [_stacked_tail(model, h[i:i + chunk_images], passes, tag, i)
                 for i in range(0, len(h), chunk_images)]
        out[set_name] = torch.cat(parts, dim=1).numpy()
    return out


def latent_variance(mc: np.ndarray) -> np.ndarray:
    """Per image: variance across passes (unbiased), averaged over the 2048 dimensions — exactly
    what pipeline.extract reports."""
    return torch.from_numpy(mc).double().var(dim=0, unbiased=True).mean(dim=1).numpy()
