"""Perceptual losses (Johnson et al. 2016) and the noise-based temporal loss.

All images are RGB in [0, 1]. Gram matrices are normalised by C*H*W so that
style weights do not depend on the crop size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from clipmorph.model.vgg import VGGFeatures


def gram(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C), normalised by C*H*W."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def sliced_wasserstein(features: torch.Tensor, target: torch.Tensor, projections: torch.Tensor) -> torch.Tensor:
    """Sliced Wasserstein distance (Heitz et al. 2021) of each image's feature distribution to the painting's.

    features (N, C, H, W); target (C, M), the painting's features at every position; projections (C, K),
    unit directions. Along each direction, the sorted values of an image are compared with the painting's
    sorted values at the same quantiles. A Gram matrix keeps only second moments, so an output can match
    it with a narrow, greyish spread of colours and strokes; the whole distribution can't be matched that way.
    """
    n, c, h, w = features.shape
    ours = (features.reshape(n, c, h * w).transpose(1, 2) @ projections).sort(dim=1).values  # (N, HW, K)
    theirs = (target.t() @ projections).sort(dim=0).values  # (M, K)
    quantiles = torch.linspace(0, theirs.shape[0] - 1, h * w, device=theirs.device).round().long()
    return F.mse_loss(ours, theirs[quantiles].unsqueeze(0).expand_as(ours))


def random_projections(channels: int, count: int, device: torch.device) -> torch.Tensor:
    """(channels, count) random unit directions, new at every step."""
    directions = torch.randn(channels, count, device=device)
    return directions / directions.norm(dim=0, keepdim=True)


def content_loss(output_feat: torch.Tensor, content_feat: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output_feat, content_feat)


def style_loss(
    output_grams: dict[str, torch.Tensor], style_grams: dict[str, torch.Tensor], balanced: bool = False
) -> torch.Tensor:
    """Sum over layers of the MSE between Gram matrices (style grams broadcast over the batch).

    balanced: divide each layer's MSE by the mean square of its target Gram, i.e. the squared
    relative distance that `quality.style_distance` grades. Raw Gram magnitudes differ about
    10x between relu1_1 and relu3_1, so unbalanced the deeper layers, which carry the
    painting's larger shapes, count for little.
    """
    total = torch.zeros((), device=next(iter(output_grams.values())).device)
    for layer, g in output_grams.items():
        target = style_grams[layer]
        term = F.mse_loss(g, target.expand_as(g))
        if balanced:
            term = term / target.pow(2).mean().clamp_min(1e-12)
        total = total + term
    return total


def tv_loss(img: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels."""
    dh = (img[..., 1:, :] - img[..., :-1, :]).abs().mean()
    dw = (img[..., :, 1:] - img[..., :, :-1]).abs().mean()
    return dh + dw


def _luma(img: torch.Tensor) -> torch.Tensor:
    return 0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]


def _standardised(x: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True)
    return (x - mean) * torch.rsqrt(var + 1e-4)


def structure_loss(output: torch.Tensor, content: torch.Tensor, cell: int = 16) -> torch.Tensor:
    """MSE between the coarse light-and-dark layout of the output and of the input.

    Both lumas are averaged over `cell`-pixel cells and standardised per image, so the painting may
    change the palette, the overall brightness and contrast, and add texture finer than a cell, but
    not move light and dark around at a coarser scale: the blobs and halos that a Gram loss otherwise
    buys in flat areas are exactly such moves. (Per colour channel it would also forbid hue changes.)
    """
    pooled = [F.avg_pool2d(_luma(img), cell, ceil_mode=True) for img in (output, content)]
    return F.mse_loss(*(_standardised(p) for p in pooled))


def add_noise(
    x: torch.Tensor, amplitude: float, density: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x plus uniform noise in [-amplitude, amplitude] on a random `density` fraction of pixels, clamped to [0, 1].

    The mask is per pixel (shared by the channels), like sensor noise and
    compression artefacts that differ between two frames of a static scene.
    """
    n, _, h, w = x.shape
    mask = (torch.rand(n, 1, h, w, device=x.device, generator=generator) < density).to(x.dtype)
    noise = (torch.rand(x.shape, device=x.device, generator=generator) * 2 - 1) * amplitude
    return (x + noise * mask).clamp(0.0, 1.0)


def temporal_noise_loss(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    output: torch.Tensor,
    amplitude: float,
    density: float,
    max_shift: int = 0,
    margin: int = 16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """de Berker & Rainy, with motion: stylize a shifted, noisier copy of x and compare it with the output, shifted.

    With `max_shift` 0 this is the original loss (a still picture plus sensor-like noise). With a
    shift, the second copy is x moved by (dy, dx) pixels, 0..max_shift each and not both 0, so the
    loss also asks the network to be shift-equivariant: a texture tied to the network's stride
    lattice instead of to the picture moves against the content and costs here, as it does in a
    panning video. `margin` pixels at the crop's edges are left out, where padding differs.
    """
    if max_shift <= 0:
        return F.mse_loss(model(add_noise(x, amplitude, density, generator)), output)
    h, w = x.shape[-2:]
    dy, dx = 0, 0
    while dy == 0 and dx == 0:
        dy, dx = (int(v) for v in torch.randint(0, max_shift + 1, (2,), generator=generator))
    # Both crops keep the same size so the network sees the same padding to its stride multiple.
    hs, ws = h - max_shift, w - max_shift
    moved = model(add_noise(x[..., dy : dy + hs, dx : dx + ws], amplitude, density, generator))
    expected = output[..., dy : dy + hs, dx : dx + ws]
    m = min(margin, hs // 4, ws // 4)  # small crops (tests, tiny runs) keep their middle half
    return F.mse_loss(moved[..., m : hs - m, m : ws - m], expected[..., m : hs - m, m : ws - m])


def rescaled(img: torch.Tensor, scale: float) -> torch.Tensor:
    """img at `scale` of its size (antialiased bilinear): the image scales of the multi-scale style terms."""
    return img if scale == 1 else F.interpolate(img, scale_factor=scale, mode="bilinear", antialias=True)


def multiscale_grams(
    vgg: VGGFeatures,
    img: torch.Tensor,
    layers: Sequence[str],
    scales: Sequence[float],
    full: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Gram matrices at several image scales, keyed 'relu2_1@0.5' etc. in the order of `scales`, in float32.

    full: img's features at scale 1 when the caller has them already (the content term's VGG pass).
    float32 because under autocast the Grams come out in bfloat16, and the losses compare them with
    float32 targets (a bfloat16 Gram converts to float32 exactly).
    """
    grams: dict[str, torch.Tensor] = {}
    for scale in scales:
        feats = full if scale == 1 and full is not None else vgg(rescaled(img, scale), list(layers))
        for layer in layers:
            grams[f"{layer}@{scale:g}"] = gram(feats[layer]).float()
    return grams
