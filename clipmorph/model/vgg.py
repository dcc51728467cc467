"""VGG-19 feature extractor with named taps, from either weights format.

Two sources map onto one set of names (relu1_1, relu1_2, relu2_1, ...):
  * torchvision's `VGG19_Weights.IMAGENET1K_V1` (layers to relu5_1; ImageNet
    mean/std normalisation, zero padding) — what a user with internet gets;
  * Gatys' normalised VGG-19 to relu3_1 (`vgg19_normalised_to_relu3_1.pth`:
    a 1x1 conv doing the Caffe preprocessing, reflection padding) — the
    offline mirror's file.
Weights always load with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# VGG-19 conv layers in order: (name, in_channels, out_channels); a pool follows *_2/*_4 of each block.
_VGG19 = [
    ("1_1", 3, 64), ("1_2", 64, 64),
    ("2_1", 64, 128), ("2_2", 128, 128),
    ("3_1", 128, 256), ("3_2", 256, 256), ("3_3", 256, 256), ("3_4", 256, 256),
    ("4_1", 256, 512), ("4_2", 512, 512), ("4_3", 512, 512), ("4_4", 512, 512),
    ("5_1", 512, 512),
]  # fmt: skip
_POOL_AFTER = {"1_2", "2_2", "3_4", "4_4"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingLayerError(ValueError):
    pass


class VGGFeatures(nn.Module):
    """Runs VGG-19 up to the deepest requested tap and returns {tap: activation}."""

    def __init__(
        self, preprocess: nn.Module, convs: list[nn.Conv2d], padding: str, ceil_mode: bool, source: str
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.convs = nn.ModuleList(convs)
        self.padding = padding
        self.ceil_mode = ceil_mode
        self.source = source
        self.available = [f"relu{name}" for name, _, _ in _VGG19[: len(convs)]]
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def check(self, layers: list[str] | tuple[str, ...]) -> None:
        missing = [layer for layer in layers if layer not in self.available]
        if missing:
            raise MissingLayerError(
                f"VGG weights from {self.source} have no layer(s) {missing}; available: {', '.join(self.available)}"
            )

    def forward(self, x: torch.Tensor, layers: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
        self.check(layers)
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        x = self.preprocess(x)
        for (name, _, _), conv in zip(_VGG19, self.convs, strict=False):
            x = nn.functional.pad(x, (1, 1, 1, 1), mode=self.padding)
            x = torch.relu(conv(x))
            tap = f"relu{name}"
            if tap in wanted:
                out[tap] = x
                if len(out) == len(wanted):
                    break
            if name in _POOL_AFTER:
                x = nn.functional.max_pool2d(x, 2, ceil_mode=self.ceil_mode)
        return out


class _ImageNetNormalise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv(cin: int, cout: int, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


def from_torchvision_state(state: dict[str, torch.Tensor], source: str = "torchvision") -> VGGFeatures:
    """torchvision `vgg19().state_dict()` (keys features.N.*) -> VGGFeatures."""
    conv_indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    convs = []
    for (_, cin, cout), idx in zip(_VGG19, conv_indices, strict=False):
        convs.append(_conv(cin, cout, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"]))
    return VGGFeatures(_ImageNetNormalise(), convs, padding="constant", ceil_mode=False, source=source)


def from_normalised_state(state: dict[str, torch.Tensor], source: str = "normalised") -> VGGFeatures:
    """Gatys' normalised VGG (nn.Sequential keys 0.*, 2.*, 5.*, ...; 0 is the 1x1 preprocessing conv)."""
    indices = sorted({int(k.split(".")[0]) for k in state})
    pre = nn.Conv2d(3, 3, 1)
    pre.weight.data.copy_(state[f"{indices[0]}.weight"])
    pre.bias.data.copy_(state[f"{indices[0]}.bias"])
    convs = []
    for (_, cin, cout), idx in zip(_VGG19, indices[1:], strict=False):
        convs.append(_conv(cin, cout, state[f"{idx}.weight"], state[f"{idx}.bias"]))
    return VGGFeatures(pre, convs, padding="reflect", ceil_mode=True, source=source)


def load_vgg(path: Path | str) -> VGGFeatures:
    """Load either weights format from a file, telling them apart by their keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VGG-19 weights not found at {path}; run `make data` first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if any(k.startswith("features.") for k in state):
        return from_torchvision_state(state, source=str(path))
    if "0.weight" in state and tuple(state["0.weight"].shape) == (3, 3, 1, 1):
        return from_normalised_state(state, source=str(path))
    raise ValueError(f"{path} is neither a torchvision VGG-19 nor a normalised VGG-19 state dict")
