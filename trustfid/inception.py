"""The FID InceptionV3: TensorFlow's "2015-12-05" graph as a plain torch module.

Every published FID (TTUR, pytorch-fid, clean-fid, StyleGAN's metrics) uses this network's 2048-d
pool3 features, not torchvision's ImageNet InceptionV3. It differs from torchvision's in three
places that change the numbers: batch-norm has no scale and eps 1e-3; the average pools inside the
blocks do not count padding; the last block (Mixed_7c) pools its branch with max instead of average.

Input: (N, 3, 299, 299) float32 already in the network's range (preprocess.py makes it).
Output of ``forward``: (N, 2048) pool3 features.

It is the first and default feature extractor (extractor.py): its stages are the stem and the
blocks, whose names are torchvision's (Mixed_5b ... Mixed_7c) so dropout points read the same as in
papers; ``forward_range(x, start, stop)`` runs stages[start:stop], so the MC-dropout code can split
the network into a deterministic trunk and a repeated tail (mc.py); the head is pool3.

Batch-norm is folded into each convolution's weight and bias when the weights are loaded
(``load_canonical``): y = (conv(x, w) - mean) / sqrt(var + eps) + beta = conv(x, w * s) + (beta - mean * s)
with s = 1 / sqrt(var + eps). It is the same function with one pass over memory less.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .extractor import Extractor, GlobalAveragePool
from .preprocess import INCEPTION_RANGES, SIZE
from .schemas import BLOCKS, DEFAULT_EXTRACTOR, ModelInfo, ScoreOptions

BN_EPS = 1e-3
FEATURE_DIM = 2048


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")


_FUSED = _fused_available()


def _fusable(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``relu(conv(x))`` may take oneDNN's fused convolution + ReLU (``ConvBN.forward``): a
    dense float32 channels_last CPU input under inference (no autograd), oneDNN on, no autocast, and
    nobody watching the convolution (a forward hook on it, as domain.py's, needs the eager call)."""
    w = conv.weight
    return (_FUSED and type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.numel() > 0 and x.layout == torch.strided
            and x.is_contiguous(memory_format=torch.channels_last)
            and w.device.type == "cpu" and w.dtype == torch.float32 and conv.bias is not None
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or conv.bias.requires_grad))
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
            and not (conv._forward_hooks or conv._forward_pre_hooks or nn.modules.module._global_forward_hooks
                     or nn.modules.module._global_forward_pre_hooks))


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor (weights made under inference_mode) cannot change in place
        return -1


class ConvBN(nn.Module):
    """conv (no bias) -> batch-norm without scale (eps 1e-3) -> ReLU, stored folded as conv+bias.

    On the CPU (float32, channels_last, inference) the convolution and its ReLU run as one oneDNN
    call on weights reordered once into oneDNN's blocked layout (kept per input shape and weight
    version): the same oneDNN convolution the engine runs otherwise (numerics.py), so the same
    features to the bit, ~1.3x faster on 2 cores (bench/extract_bench.py (b)). Anything else, or a
    hook on the convolution, takes the plain ``relu(conv(x))``."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True)
        # the batch-norm's beta, kept beside the folded conv: conv(x) - beta is the standardised
        # activation, whose ImageNet mean is 0 and variance about 1 (domain.py reads it)
        self.register_buffer("beta", torch.zeros(cout), persistent=False)
        self._packed: tuple[tuple, torch.Tensor] | None = None  # (key, oneDNN-layout weight)

    def __getstate__(self):  # copies and pickles leave the reordered weight behind (an opaque tensor)
        state = dict(super().__getstate__())
        state["_packed"] = None
        return state

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        c, w = self.conv, self.conv.weight
        # a new input shape, or weights loaded or moved since: reorder again (one entry is kept)
        key = (tuple(x.shape[1:]), w.data_ptr(), _version(w))
        if self._packed is None or self._packed[0] != key:
            with torch.inference_mode():
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    w.detach(), list(c.padding), list(c.stride), list(c.dilation), c.groups, list(x.shape))
            self._packed = (key, packed)
        return self._packed[1]

    def forward(self, x):
        c = self.conv
        if _fusable(c, x):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), c.bias, list(c.padding), list(c.stride), list(c.dilation), c.groups,
                "relu", [None], "")
        return F.relu(self.conv(x))


def _branches(*outputs):
    """An Inception block's output: its branches' feature maps stacked along the channels."""
    return torch.cat(outputs, 1)


def _avg3(x):
    # TF's SAME-padded 3x3 average pool averages only the real pixels at the border.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # Mixed_5b, 5c, 5d
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return _branches(
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg3(x)))


class BlockB(nn.Module):  # Mixed_6a (grid reduction 35 -> 17)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return _branches(
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2))


class BlockC(nn.Module):  # Mixed_6b .. 6e (factorised 7x7)
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return _branches(
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            d,
            self.branch_pool(_avg3(x)))


class BlockD(nn.Module):  # Mixed_7a (grid reduction 17 -> 8)
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return _branches(self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2))


class BlockE(nn.Module):  # Mixed_7b (average pool), Mixed_7c (max pool: a quirk of the TF graph)
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return _branches(
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled))


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        return F.max_pool2d(x, 3, stride=2)


class FIDInceptionV3(Extractor):
    """Stages: index 0 is the stem, 1..11 are Mixed_5b..Mixed_7c. Pool3 (the head) follows the last
    stage. The weights' hash and source are set by whoever loads them (registry.load_fid_inception)."""

    def __init__(self):
        super().__init__(OrderedDict([
            ("stem", Stem()),
            ("Mixed_5b", BlockA(192, 32)),
            ("Mixed_5c", BlockA(256, 64)),
            ("Mixed_5d", BlockA(288, 64)),
            ("Mixed_6a", BlockB(288)),
            ("Mixed_6b", BlockC(768, 128)),
            ("Mixed_6c", BlockC(768, 160)),
            ("Mixed_6d", BlockC(768, 160)),
            ("Mixed_6e", BlockC(768, 192)),
            ("Mixed_7a", BlockD(768)),
            ("Mixed_7b", BlockE(1280, max_pool=False)),
            ("Mixed_7c", BlockE(2048, max_pool=True)),
        ]), GlobalAveragePool(), name=DEFAULT_EXTRACTOR, description=ModelInfo.model_fields["name"].default,
            feature_dim=FEATURE_DIM, input_size=SIZE, input_ranges=INCEPTION_RANGES,
            dropout_stages=BLOCKS, default_dropout_at=ScoreOptions.model_fields["dropout_at"].default_factory())
        self.eval()

    def pool3(self, x):  # the head, by its TF name
        return self.head(x)

    def load_canonical(self, tensors: dict[str, torch.Tensor]) -> FIDInceptionV3:
        """Load weights in canonical form: for each conv ``NAME`` the tensors NAME.weight (conv,
        no bias) and the batch-norm's NAME.beta, NAME.mean, NAME.var; NAME is the torchvision-style
        path without the stage prefix, e.g. ``Mixed_7c.branch_pool`` or ``Conv2d_1a_3x3``."""
        expected = set(canonical_conv_names(self))
        given = {k.rsplit(".", 1)[0] for k in tensors}
        if expected != given:
            missing, extra = sorted(expected - given)[:5], sorted(given - expected)[:5]
            raise ValueError(f"weights do not fit the FID InceptionV3: missing {missing}, unexpected {extra}")
        for name, module in _conv_modules(self):
            w = tensors[f"{name}.weight"].double()
            scale = (tensors[f"{name}.var"].double() + BN_EPS).rsqrt()
            bias = tensors[f"{name}.beta"].double() - tensors[f"{name}.mean"].double() * scale
            if module.conv.weight.shape != w.shape:
                raise ValueError(f"{name}: weight shape {tuple(w.shape)} != {tuple(module.conv.weight.shape)}")
            with torch.no_grad():
                module.conv.weight.copy_((w * scale[:, None, None, None]).float())
                module.conv.bias.copy_(bias.float())
                module.beta.copy_(tensors[f"{name}.beta"].float())
        return self


def _conv_modules(net: FIDInceptionV3):
    for path, module in net.named_modules():
        if isinstance(module, ConvBN):
            # "stages.stem.Conv2d_1a_3x3" -> "Conv2d_1a_3x3"; "stages.Mixed_5b.branch1x1" -> "Mixed_5b.branch1x1"
            name = path.removeprefix("stages.").removeprefix("stem.")
            yield name, module


def canonical_conv_names(net: FIDInceptionV3 | None = None) -> list[str]:
    return [name for name, _ in _conv_modules(net or FIDInceptionV3())]
