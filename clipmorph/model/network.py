"""The stylizer: a small U-Net (and the Johnson TransformerNet as a preset).

Layout (Johnson et al. 2016, with skips added):
    3 down convs -> 5 residual blocks (10 convs) -> 3 up convs
Encoder features are added to the decoder at matching resolutions, so detail
lost by down-sampling comes back. Up-sampling is nearest-neighbour + conv
(transposed convs leave checkerboard artefacts). Any input size works: the
input is reflection-padded to the network's stride and the output cropped back.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NetConfig:
    channels: tuple[int, int, int] = (32, 64, 128)
    kernels: tuple[int, int, int] = (9, 3, 3)  # encoder kernels; the decoder mirrors them
    strides: tuple[int, int, int] = (1, 2, 2)
    res_blocks: int = 5
    skips: bool = True
    # "instance" (Ulyanov et al.), "batch" (batch norm: batch statistics in training, fixed running
    # statistics at inference), "pixel" (per-pixel layer norm), "input" (instance norm after the first
    # conv only) or "none". Instance norm couples every pixel to whole-image statistics, which is what lets
    # a network grow "droplet" blobs (StyleGAN2, sec. 2); "pixel" and "none" are purely local.
    norm: str = "instance"
    # Space-to-depth in (every input pixel reaches the half-resolution encoder, unlike a strided conv) and a
    # guided output: the decoder's half-resolution features, bilinearly enlarged, and the input's own RGB
    # go through one 3x3 conv at full resolution. Edges stay sharp, and nothing in the last layer can
    # invent per-pixel noise (a sub-pixel output did exactly that: docs/training.md).
    shuffle: bool = False
    # Hidden channels of a full-resolution head after the guided output (0: the single conv alone). Without
    # it, nothing non-linear runs at full resolution, so the output cannot hold the fine-scale contrast of
    # brush strokes: its Gram energy at relu1_1 stayed at half the painting's (docs/training.md).
    head: int = 0

    @property
    def stride(self) -> int:
        total = 2 if self.shuffle else 1
        for s in self.strides:
            total *= s
        return total

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetConfig:
        return cls(
            channels=tuple(d["channels"]),
            kernels=tuple(d["kernels"]),
            strides=tuple(d["strides"]),
            res_blocks=int(d["res_blocks"]),
            skips=bool(d["skips"]),
            norm=str(d.get("norm", "instance")),
            shuffle=bool(d.get("shuffle", False)),
            head=int(d.get("head", 0)),
        )


PRESETS: dict[str, NetConfig] = {
    # Johnson-sized widths with skips; 7x7 outer convs keep it no slower than `johnson`.
    "standard": NetConfig(channels=(32, 64, 128), kernels=(7, 3, 3), strides=(1, 2, 2)),
    # Every down conv halves the resolution, so the residual blocks run at 1/8 scale:
    # cheap enough for real-time CPU inference at 640x360.
    "fast": NetConfig(channels=(16, 32, 64), kernels=(3, 3, 3), strides=(2, 2, 2)),
    # pytorch/examples fast_neural_style TransformerNet: the baseline every benchmark compares with.
    "johnson": NetConfig(channels=(32, 64, 128), kernels=(9, 3, 3), strides=(1, 2, 2), skips=False),
    # Real-time painters: space-to-depth in, guided full-resolution out, body at 1/8 scale; they differ only
    # in normalisation (what each did is in docs/training.md): rt (none), rt_ln (per-pixel layer norm),
    # rt_in1 (instance norm on the first layer only), rt_in (instance norm everywhere).
    **{
        f"rt{suffix}": NetConfig(
            channels=(16, 48, 64), kernels=(3, 3, 3), strides=(1, 2, 2), res_blocks=4, norm=norm, shuffle=True
        )
        for suffix, norm in (("", "none"), ("_ln", "pixel"), ("_in1", "input"), ("_in", "instance"))
    },
    # rt with batch norm (fixed statistics at inference, so nothing for a droplet to steer and foldable into
    # the convolutions) and a full-resolution head that can paint fine strokes.
    "rt_bn": NetConfig(
        channels=(16, 48, 64), kernels=(3, 3, 3), strides=(1, 2, 2), res_blocks=4, norm="batch", shuffle=True, head=8
    ),
}


class TemporalInstanceNorm(nn.InstanceNorm2d):
    """Instance norm whose statistics can be smoothed across consecutive frames.

    Per-frame statistics make the same object look different as the rest of the
    frame changes: visible flicker. With `smoothing` > 0, the mean/variance of
    frame t become an exponential moving average over frames <= t (batch order
    is frame order; state carries over between batches until `reset()`).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=True)
        self.smoothing = 0.0
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None

    def reset(self) -> None:
        self._state = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smoothing <= 0.0:
            return super().forward(x)
        var, mean = torch.var_mean(x.float(), dim=(2, 3), unbiased=False, keepdim=True)
        means, vars_ = [], []
        prev = self._state
        for i in range(x.shape[0]):
            m, v = mean[i : i + 1], var[i : i + 1]
            if prev is not None:
                m = self.smoothing * prev[0] + (1 - self.smoothing) * m
                v = self.smoothing * prev[1] + (1 - self.smoothing) * v
            prev = (m, v)
            means.append(m)
            vars_.append(v)
        self._state = (prev[0].detach(), prev[1].detach())
        mean, var = torch.cat(means), torch.cat(vars_)
        y = (x.float() - mean) / torch.sqrt(var + self.eps)
        y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


class ConvLayer(nn.Sequential):
    """Reflection pad + conv (+ optional nearest up-sampling before it)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, upsample: int = 1) -> None:
        layers: list[nn.Module] = []
        if upsample > 1:
            layers.append(nn.Upsample(scale_factor=upsample, mode="nearest"))
        layers += [nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride)]
        super().__init__(*layers)


class PixelLayerNorm(nn.Module):
    """Layer norm over the channels of each pixel (as in ConvNeXt), with a per-channel affine.

    It keeps activations at a trainable scale like instance norm, but no pixel's output depends on
    statistics of the rest of the picture: there is nothing for a local "droplet" to steer, and a frame
    stylizes the same whatever else is in it (or whichever tile it is in).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return TemporalInstanceNorm(channels)
    if kind == "pixel":
        return PixelLayerNorm(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose 'instance', 'batch', 'pixel', 'input' or 'none'")


class ConvNormReLU(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, upsample: int = 1, norm: str = "instance"
    ) -> None:
        super().__init__(ConvLayer(cin, cout, kernel, stride, upsample), make_norm(norm, cout), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3),
            make_norm(norm, channels),
            nn.ReLU(inplace=True),
            ConvLayer(channels, channels, 3),
            make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Stylizer(nn.Module):
    """Maps an RGB batch in [0, 1] (N, 3, H, W) to a stylized batch of the same shape."""

    def __init__(self, config: NetConfig = PRESETS["standard"]) -> None:
        super().__init__()
        self.config = config
        # Longer side of the frames the model was trained for (set from config.json by artifact.load_model).
        self.frame_side: int | None = None
        c, k, s, n = config.channels, config.kernels, config.strides, config.norm
        cin = 12 if config.shuffle else 3  # 2x2 space-to-depth packs 4 pixels x 3 colours per cell
        # "input": instance norm after the first conv only (it normalises the photo's contrast, and nothing
        # upstream of it can learn to steer its statistics), no normalisation anywhere else.
        first = "instance" if n == "input" else n
        n = "none" if n == "input" else n
        self.down1 = ConvNormReLU(cin, c[0], k[0], s[0], norm=first)
        self.down2 = ConvNormReLU(c[0], c[1], k[1], s[1], norm=n)
        self.down3 = ConvNormReLU(c[1], c[2], k[2], s[2], norm=n)
        self.res = nn.Sequential(*[ResidualBlock(c[2], n) for _ in range(config.res_blocks)])
        self.up1 = ConvNormReLU(c[2], c[1], k[2], upsample=s[2], norm=n)
        self.up2 = ConvNormReLU(c[1], c[0], k[1], upsample=s[1], norm=n)
        if config.shuffle:
            out = [nn.ReflectionPad2d(k[0] // 2), nn.Conv2d(c[0] + 3, config.head or 3, k[0])]
            if config.head:
                out += [nn.ReLU(inplace=True), nn.ReflectionPad2d(1), nn.Conv2d(config.head, 3, 3)]
            self.up3 = nn.Sequential(*out)
        else:
            self.up3 = ConvLayer(c[0], 3, k[0], upsample=s[0])
        if config.norm in ("none", "input"):
            self._init_unnormalised()

    def _init_unnormalised(self) -> None:
        """He init, so signals keep their scale through ReLUs without a norm layer to restore it.

        PyTorch's default conv init shrinks activations ~2.4x per layer; with no normalisation the
        output of a fresh network is then nearly constant and the style loss has no gradient to follow.
        Residual branches start small (Fixup-style) so the stacked blocks begin close to identity.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for block in self.res:
            block.body[-2][-1].weight.data.mul_(0.1)
        # The output layer starts small too: an image-range output, not one of std ~3.
        last = [m for m in self.up3.modules() if isinstance(m, nn.Conv2d)][-1]
        last.weight.data.mul_(0.1)
        nn.init.constant_(last.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.body(pad_to_multiple(x, self.config.stride))[..., :h, :w]

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The network proper, on an input whose sides are multiples of config.stride (at least two).

        Kept apart from the padding so that an exported graph (clipmorph.model.export) has no size-dependent
        branch: the runtime pads and crops around it.
        """
        rgb = x
        if self.config.shuffle:
            x = F.pixel_unshuffle(x, 2)
        e1 = self.down1(x)
        e2 = self.down2(e1)
        y = self.res(self.down3(e2))
        y = self.up1(y)
        if self.config.skips:
            y = y + e2
        y = self.up2(y)
        if self.config.skips:
            y = y + e1
        if self.config.shuffle:
            y = F.interpolate(y, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
            y = torch.cat([y, rgb], dim=1)
        return self.up3(y)

    def norms(self) -> list[TemporalInstanceNorm]:
        return [m for m in self.modules() if isinstance(m, TemporalInstanceNorm)]

    def set_norm_smoothing(self, smoothing: float) -> None:
        """Smooth instance-norm statistics across frames (0 = per-frame, the training behaviour)."""
        for m in self.norms():
            m.smoothing = smoothing
            m.reset()

    def reset_temporal_state(self) -> None:
        for m in self.norms():
            m.reset()


@torch.no_grad()
def fold_batch_norm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the convolution before it (in place; inference only).

    At inference batch norm is a fixed per-channel affine map, so scaling the conv's weights and bias
    gives the same output for one conv instead of a conv and a pass over the whole feature map.
    """
    for module in model.modules():
        children = list(module.named_children())
        for (_, first), (name, second) in itertools.pairwise(children):
            if not isinstance(second, nn.BatchNorm2d):
                continue
            conv = [m for m in first.modules() if isinstance(m, nn.Conv2d)][-1]  # a Conv2d or a ConvLayer
            scale = second.weight / torch.sqrt(second.running_var + second.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(second.running_mean)
            conv.bias = nn.Parameter((bias - second.running_mean) * scale + second.bias)
            setattr(module, name, nn.Identity())
    return model


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of `multiple` (reflect; replicate if too small)."""
    h, w = x.shape[-2:]
    # At least two cells at the bottleneck, so its reflection padding is defined.
    ph = max((-h) % multiple, 2 * multiple - h)
    pw = max((-w) % multiple, 2 * multiple - w)
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def build(preset_or_config: str | NetConfig | dict) -> Stylizer:
    if isinstance(preset_or_config, str):
        if preset_or_config not in PRESETS:
            raise ValueError(f"unknown preset {preset_or_config!r}; choose from {sorted(PRESETS)}")
        return Stylizer(PRESETS[preset_or_config])
    if isinstance(preset_or_config, dict):
        return Stylizer(NetConfig.from_dict(preset_or_config))
    return Stylizer(preset_or_config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["PRESETS", "NetConfig", "Stylizer", "build", "count_parameters", "fold_batch_norm", "pad_to_multiple"]
