"""Feature extractors: the network that embeds images, behind one interface (found by name in registry.py).

FID is defined by its network. Every published number uses the TF "2015-12-05" InceptionV3
(inception.py), the registry's first entry and the default (registry.py); a user may bring another network, as
torch-fidelity's feature extractors and torchmetrics' ``feature=nn.Module`` allow. An ``Extractor``
declares what the engine needs to score with it:

- ``name`` (registry name; reports say ``model.extractor``) and ``description`` (``model.name``);
- ``feature_dim`` d: the head gives (N, d) features;
- the input: ``input_size`` (height, width) that preprocess.py's resize modes resize to, then the
  network's input mapping, [0, 1] pixels -> [lo, hi] (``input_range_for(mode)``; the FID Inception
  takes [-1, 1 - 1/128] as clean-fid feeds it, and [-1, 1] as pytorch-fid does). A per-channel
  normalisation (ImageNet mean/std) belongs in the first stage;
- ordered ``stages`` (the output of one is the input of the next) and a ``head`` (pool/flatten to
  (N, d)). MC dropout may follow any stage named in ``dropout_stages``; the trunk is the stages up
  to the first chosen one (run once per image), the tail the rest plus the head (run 1 + T times);
- ``weights_sha256``: the identity of its weights (sha256 of its tensors; for the FID Inception, of
  the canonical tensors, whatever file they came from). Statistics carry it with the name, so those
  of different extractors never combine.

A user's network: ``Extractor([stage, stage, ...])`` (a list, an nn.Sequential or a name -> module
mapping), or ``Extractor.from_module(module, ["layer1", "layer2", ...])`` naming the children of
``module`` that are its stages, in order (the module's own ``forward`` is not used). The engine runs
it in eval mode (its own dropout and batch-norm deterministic), restoring the mode afterwards.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .schemas import ScoreOptions


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over sorted names, shapes and float32 values: same numbers => same hash."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to(torch.float32).contiguous().cpu()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


class GlobalAveragePool(nn.Module):
    """(N, C, H, W) -> (N, C), the mean over space (the FID Inception's pool3); any other shape is
    flattened to (N, -1)."""

    def forward(self, x):
        if x.ndim == 4:
            return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return torch.flatten(x, 1)


@contextmanager
def evaluating(module: nn.Module):
    """Eval mode inside, each submodule's own training flag restored on the way out."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _named_stages(stages) -> OrderedDict:
    if isinstance(stages, Mapping):
        items = list(stages.items())
    elif isinstance(stages, nn.Module) and not isinstance(stages, (nn.Sequential, nn.ModuleList)):
        raise InputError(f"a {type(stages).__name__} is one module, not a list of stages: give "
                         "Extractor.from_module(module, [names of its children that are the stages, in order]) "
                         "or a list / nn.Sequential of stages")
    else:
        items = list(stages.named_children()) if isinstance(stages, nn.Module) else [
            (str(i), m) for i, m in enumerate(stages)]
    if not items:
        raise InputError("an extractor needs at least one stage")
    for name, m in items:
        if not isinstance(m, nn.Module):
            raise InputError(f"stage {name!r} is a {type(m).__name__}, not a torch nn.Module")
    return OrderedDict((str(k), m) for k, m in items)


class Extractor(nn.Module):
    """A feature network cut into ordered stages, with what the engine needs to score with it
    (module docstring). ``forward(x)`` gives the (N, feature_dim) features of a network input."""

    def __init__(self, stages, head: nn.Module | None = None, *, name: str = "custom",
                 description: str | None = None, feature_dim: int | None = None,
                 input_size: tuple[int, int] = (299, 299), input_range: tuple[float, float] = (0.0, 1.0),
                 input_ranges: Mapping[str, tuple[float, float]] | None = None,
                 dropout_stages: Sequence[str] | None = None, default_dropout_at: Sequence[str] | None = None,
                 weights_sha256: str | None = None, weights_source: str = "in-process module"):
        super().__init__()
        self.stages = nn.Sequential(_named_stages(stages))
        self.head = head if head is not None else GlobalAveragePool()
        self.stage_names: tuple[str, ...] = tuple(self.stages._modules)
        self.name = name
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.input_ranges = dict(input_ranges or {})
        self.dropout_stages = tuple(dropout_stages) if dropout_stages is not None else self.stage_names
        wrong = [s for s in self.dropout_stages if s not in self.stage_names]
        if wrong:
            raise InputError(f"extractor '{name}': dropout stages {wrong} are not among its stages "
                             f"{list(self.stage_names)}")
        self.default_dropout_at = tuple(default_dropout_at or self.dropout_stages[-1:])
        self._weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self.feature_dim = int(feature_dim) if feature_dim is not None else self._probe_dim()
        self.description = description or f"{name} ({self.feature_dim}-d)"

    @classmethod
    def from_module(cls, module: nn.Module, stages: Sequence[str], head: nn.Module | None = None,
                    **kw) -> Extractor:
        """The children of ``module`` named in ``stages``, run in that order, then ``head``."""
        children = dict(module.named_children())
        missing = [s for s in stages if s not in children]
        if missing or not stages:
            raise InputError(f"{type(module).__name__} has no child module(s) {missing or '(none named)'}; "
                             f"its children are {list(children)}")
        kw.setdefault("name", type(module).__name__)
        return cls(OrderedDict((s, children[s]) for s in stages), head, **kw)

    # -- what the engine asks -------------------------------------------------------------------
    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:  # computed once, on first use
            self._weights_sha256 = tensors_sha256(self.state_dict())
        return self._weights_sha256

    @weights_sha256.setter
    def weights_sha256(self, value: str) -> None:
        self._weights_sha256 = value

    @property
    def device(self) -> torch.device:
        p = next(self.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def input_range_for(self, mode: str) -> tuple[float, float]:
        """The network input range for a resize mode: [0, 1] pixels are mapped onto it."""
        return self.input_ranges.get(mode, self.input_range)

    def stage_index(self, name: str) -> int:
        return self.stage_names.index(name)

    def dropout_points(self, names: Sequence[str]) -> list[int]:
        """Stage indices of the named dropout points, in network order; unknown names: InputError."""
        unknown = [n for n in names if n not in self.dropout_stages]
        if unknown or not names:
            raise InputError(f"dropout_at {list(names)}: {unknown or 'none given'} not a stage of the extractor "
                             f"'{self.name}' where dropout can go; choose from {list(self.dropout_stages)}",
                             code="bad_options")
        return sorted({self.stage_index(n) for n in names})

    def options_for(self, options: ScoreOptions) -> ScoreOptions:
        """``options`` for this extractor: its name, and dropout_at checked against its stages (left
        unset with another extractor than the default: this extractor's default points)."""
        if options.extractor != self.name and "extractor" in options.model_fields_set:
            raise InputError(f"the options name the extractor '{options.extractor}' but '{self.name}' was given",
                             code="bad_options")
        at = options.dropout_at if "dropout_at" in options.model_fields_set else list(self.default_dropout_at)
        at = [self.stage_names[i] for i in self.dropout_points(at)]
        return options.model_copy(update={"extractor": self.name, "dropout_at": at})

    def forward_range(self, x, start: int, stop: int):
        """Run stages[start:stop]."""
        for stage in list(self.stages)[start:stop]:
            x = stage(x)
        return x

    def forward(self, x):
        return self.head(self.stages(x))

    def _probe_dim(self) -> int:
        x = torch.zeros(1, 3, *self.input_size, device=self.device)
        with torch.inference_mode(), evaluating(self):
            out = self(x)
        if out.ndim != 2:
            raise InputError(f"extractor '{self.name}': its head must give (N, d) features; it gives shape "
                             f"{tuple(out.shape)} for one {self.input_size[0]}x{self.input_size[1]} image")
        return int(out.shape[1])
