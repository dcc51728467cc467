"""Evaluate a stylizer: perceptual losses on photos, temporal stability on a clip, speed.

Every number is computed the same way for every model so that the promotion gate
can compare versions:
  * style_distance / content_distance / artefact_score (clipmorph.evaluation.quality): the
    validation photos at frame size, stylized as `clipmorph stylize` does (at the
    model's frame side), against the painting shown at the same size, the photo,
    and a blob/halo detector; these do not depend on how the model was trained;
  * style_loss / content_loss: the training losses (unweighted) on a fixed set of
    validation photos, centre-cropped, with the VGG net, layers and scales the
    model was trained with; the style target is recomputed from its style images;
  * warping_error (Lai et al. 2018): DeepFlow (not the DIS flow the
    stabiliser follows) between consecutive *input* frames, occlusions masked,
    output t+1 warped onto t, masked MSE; warping_error_input is the same for the
    input itself and warping_ratio = output / input;
  * fps_cpu_640x360 (and fps_cuda_640x360): network frames per second.
With `baseline=True` the clip and speed numbers are repeated with the norm
smoothing switched off, under `baseline_*` keys, to show what stabilisation buys.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import PIL.Image
import torch

from clipmorph.evaluation import quality
from clipmorph.evaluation.metric_names import ARTEFACT, CONTENT, CPU_FPS, CUDA_FPS, STYLE, WARPING
from clipmorph.model.artifact import ModelInfo, load_model, sha256_file
from clipmorph.model.device import resolve_device
from clipmorph.model.network import Stylizer
from clipmorph.model.vgg import VGGFeatures, load_vgg
from clipmorph.settings import get_settings
from clipmorph.training import objective
from clipmorph.training.data import centre_crops, find_images, load_rgb, parse_style_spec
from clipmorph.video.inference import (
    StylizeOptions,
    network_size,
    norm_smoothing,
    prepare,
    resize,
    stylize_array,
)
from clipmorph.video.pipeline import stabilize_modes
from clipmorph.video.stabilize import FlowStabilizer, estimate_motion

log = logging.getLogger(__name__)

METRIC_KEYS = (
    STYLE,
    CONTENT,
    ARTEFACT,
    "style_loss",
    "content_loss",
    "warping_error",
    "warping_error_input",
    WARPING,
    CPU_FPS,
)
BASELINE_PREFIX = "baseline_"
FPS_SIZE = (360, 640)  # (H, W)


@dataclass(frozen=True)
class EvalOptions:
    photos: int = 4
    photo_size: int = 256  # centre crops for the training losses
    photo_side: int = 640  # longer side of the photos for the quality metrics (a typical frame)
    frames: int = 24
    frame_side: int = 320  # longer side of the downscaled clip
    batch: int = 8  # frames per forward pass; smoothing state carries across batches
    fps_batch: int = 2
    fps_warmup: int = 1
    fps_iters: int = 3

    @classmethod
    def preset(cls, quick: bool) -> EvalOptions:
        return cls() if quick else cls(photos=16, frames=60, frame_side=480, fps_batch=4, fps_warmup=2, fps_iters=8)


@dataclass(frozen=True)
class LossSetup:
    """What the model was trained with (config.json `train`), TrainConfig defaults otherwise."""

    content_layer: str
    style_layers: tuple[str, ...]
    style_scales: tuple[float, ...]
    style_size: int

    @classmethod
    def from_info(cls, info: ModelInfo) -> LossSetup:
        from clipmorph.training.train import TrainConfig  # here, as the trainer imports this module

        train, defaults = info.train, TrainConfig()
        return cls(
            content_layer=str(train.get("content_layer", defaults.content_layer)),
            style_layers=tuple(train.get("style_layers", defaults.style_layers)),
            style_scales=tuple(float(s) for s in train.get("style_scales", defaults.style_scales)),
            style_size=int(train.get("style_size", defaults.style_size)),
        )


def style_spec(info: ModelInfo) -> str:
    """The model's style as a parse_style_spec string: its recorded images and weights, else its spec."""
    images = info.style.get("images") or []
    if images:
        return ",".join(f"{i['name']}:{i.get('weight', 1.0)}" for i in images)
    if info.style.get("spec"):
        return str(info.style["spec"])
    raise ValueError("the model's config.json records no style (style.images / style.spec); pass a style explicitly")


def style_target(
    vgg: VGGFeatures, spec: str, setup: LossSetup, device: torch.device, recorded: list[dict] | None = None
) -> dict[str, torch.Tensor]:
    """Weighted multi-scale Gram matrices of the style images, as in training."""
    items = parse_style_spec(spec, get_settings().style_dirs)
    hashes = {i["name"]: i.get("sha256") for i in recorded or []}
    for item in items:
        expected = hashes.get(item.path.stem)
        if expected and sha256_file(item.path) != expected:
            log.warning("style image %s differs from the one the model was trained on", item.path)
    return objective.style_targets(vgg, items, setup.style_size, setup.style_layers, setup.style_scales, device)


def validation_photos(count: int, size: int) -> torch.Tensor:
    """The first `count` validation photos (sorted by name), resized and centre-cropped to size x size."""
    folder = get_settings().photos_dir / get_settings().eval_photos
    paths = find_images([folder])[:count]
    if not paths:
        raise FileNotFoundError(f"no validation photos in {folder}; run `make data`")
    return centre_crops(paths, size)


def read_frames(path: Path, count: int, max_side: int) -> list[np.ndarray]:
    """The first `count` frames of a video as HxWx3 uint8 RGB, downscaled so the longer side is <= max_side."""
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        scale = min(1.0, max_side / max(stream.codec_context.width, stream.codec_context.height))
        # Even sizes keep every pixel format converter happy.
        width = max(2, round(stream.codec_context.width * scale / 2) * 2)
        height = max(2, round(stream.codec_context.height * scale / 2) * 2)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
            if len(frames) >= count:
                break
    if len(frames) < 2:
        raise ValueError(f"{path} has fewer than 2 decodable frames")
    return frames


def _batches(frames: list[np.ndarray], size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(frames), size):
        chunk = np.stack(frames[i : i + size])
        yield torch.from_numpy(chunk).permute(0, 3, 1, 2).float().div_(255)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _forward(model: Stylizer, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device)
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    with _autocast(device):
        return model(x).float().clamp_(0, 1)


@torch.inference_mode()
def stylize_frames(model: Stylizer, frames: list[np.ndarray], batch: int, device: torch.device) -> list[np.ndarray]:
    """Run the model over frames in order (so norm smoothing carries across them); float32 HxWx3 outputs.

    Frames are scaled to the model's frame side and back, as the video engine does.
    """
    h, w = frames[0].shape[:2]
    size = network_size(w, h, None, model)
    model.reset_temporal_state()
    out: list[np.ndarray] = []
    for x in _batches([resize(f, size) for f in frames], batch):
        y = _forward(model, x, device)
        out.extend(resize(o, (w, h)).clip(0, 1) for o in y.permute(0, 2, 3, 1).cpu().numpy())
    model.reset_temporal_state()
    return out


@torch.inference_mode()
def photo_losses(
    model: Stylizer,
    photos: torch.Tensor,
    vgg: VGGFeatures,
    target: dict[str, torch.Tensor],
    setup: LossSetup,
    device: torch.device,
) -> dict[str, float]:
    """Unweighted style and content losses; photos are unrelated, so norm smoothing is switched off."""
    model.set_norm_smoothing(0.0)
    x = photos.to(device)
    y = _forward(model, x, device)
    found = objective.perceptual_losses(
        vgg, y, objective.content_target(vgg, x, setup.content_layer), target,
        setup.content_layer, setup.style_layers, setup.style_scales,
    )  # fmt: skip
    return {"style_loss": found["style"].item(), "content_loss": found["content"].item()}


def painting_paths(spec: str) -> list[tuple[Path, float]]:
    return [(i.path, i.weight) for i in parse_style_spec(spec, get_settings().style_dirs)]


@torch.inference_mode()
def quality_metrics(
    model: Stylizer, vgg: VGGFeatures, paintings: list[tuple[Path, float]], count: int, side: int
) -> dict[str, float]:
    """style/content distance and artefact score of validation photos stylized as `clipmorph stylize` does."""
    folder = get_settings().photos_dir / get_settings().eval_photos
    model.set_norm_smoothing(0.0)
    rows = []
    for path in find_images([folder])[:count]:
        img = load_rgb(path)
        img.thumbnail((side, side), PIL.Image.LANCZOS)
        photo = np.asarray(img)
        out = stylize_array(model, photo, StylizeOptions())
        style = sum(w * quality.style_distance(vgg, out, p)["style"] for p, w in paintings)
        content = quality.content_distance(vgg, out, photo)["content"]
        rows.append((style, content, quality.artefact_score(out, photo)))
    style, content, artefact = np.mean(rows, axis=0)
    return {STYLE: float(style), CONTENT: float(content), ARTEFACT: float(artefact)}


def flow_stabilized(frames: list[np.ndarray], outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The video engine's flow-guided blending applied to rendered frames (float32 in [0, 1])."""
    stabilizer = FlowStabilizer()
    result, previous = [], None
    for frame, out in zip(frames, outputs, strict=True):
        motion = estimate_motion(previous, frame) if previous is not None else None
        blended = stabilizer(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), motion)
        result.append(blended.astype(np.float32) / 255)
        previous = frame
    return result


def temporal_metrics(frames: list[np.ndarray], outputs: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Warping errors of each rendering (keyed by metric prefix) and of the input, flow computed once."""
    flows = quality.pair_flows(frames)
    metrics: dict[str, float] = {}
    for prefix, rendering in outputs.items():
        found = quality.warping_ratio(frames, rendering, flows)
        metrics |= {
            f"{prefix}warping_error": found["warping_error"],
            f"{prefix}warping_error_input": found["warping_error_input"],
            f"{prefix}{WARPING}": found["warping_ratio"],
        }
    return metrics


@torch.inference_mode()
def frames_per_second(model: Stylizer, device: torch.device, opts: EvalOptions) -> float:
    """Forward passes on fps_batch frames of 640x360 in frame order, after warm-up."""
    x = torch.rand(opts.fps_batch, 3, *FPS_SIZE, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    model.reset_temporal_state()
    for _ in range(opts.fps_warmup):
        _forward(model, x, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(opts.fps_iters):
        _forward(model, x, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    model.reset_temporal_state()
    return opts.fps_batch * opts.fps_iters / seconds


def speed_metrics(model: Stylizer, opts: EvalOptions) -> dict[str, float]:
    metrics = {CPU_FPS: frames_per_second(prepare(model, torch.device("cpu")), torch.device("cpu"), opts)}
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        metrics[CUDA_FPS] = frames_per_second(prepare(model, cuda), cuda, opts)
    return metrics


def evaluate(
    model_dir_or_ref: str | Path,
    baseline: bool = False,
    quick: bool = True,
    style: str | None = None,
    options: EvalOptions | None = None,
    video: Path | None = None,
    device: str | None = None,
) -> dict[str, float]:
    """All metrics (METRIC_KEYS, plus CUDA fps and baseline_* when asked) for a model folder or registry ref."""
    from clipmorph import registry

    settings = get_settings()
    opts = options or EvalOptions.preset(quick)
    dev = resolve_device(device or "auto")
    model_dir = registry.resolve(model_dir_or_ref).path
    model, info = load_model(model_dir)
    setup = LossSetup.from_info(info)
    # The clip is rendered the way `clipmorph stylize` renders by default; the baseline without any stabilisation.
    defaults = StylizeOptions()
    use_norm, use_flow = stabilize_modes(defaults.stabilize)
    smoothing = norm_smoothing(info) if use_norm else 0.0

    vgg = load_vgg(settings.vgg_weights_path).to(dev)
    vgg.check([setup.content_layer, *setup.style_layers])
    target = style_target(vgg, style or style_spec(info), setup, dev, info.style.get("images"))
    frames = read_frames(video or settings.videos_dir / settings.eval_video, opts.frames, opts.frame_side)

    model = prepare(model, dev)
    metrics = quality_metrics(model, vgg, painting_paths(style or style_spec(info)), opts.photos, opts.photo_side)
    metrics |= photo_losses(model, validation_photos(opts.photos, opts.photo_size), vgg, target, setup, dev)
    runs = {"": (smoothing, use_flow)} | ({BASELINE_PREFIX: (0.0, False)} if baseline else {})
    outputs: dict[str, list[np.ndarray]] = {}
    for prefix, (alpha, flow_blend) in runs.items():
        model.set_norm_smoothing(alpha)
        outputs[prefix] = stylize_frames(model, frames, opts.batch, dev)  # prepared above
        if flow_blend:
            outputs[prefix] = flow_stabilized(frames, outputs[prefix])
        metrics |= {prefix + k: v for k, v in speed_metrics(model, opts).items()}
        if prefix:
            # Photo losses never use smoothing, so the baseline's are the same numbers.
            metrics |= {prefix + k: metrics[k] for k in (STYLE, CONTENT, ARTEFACT, "style_loss", "content_loss")}
    metrics |= temporal_metrics(frames, outputs)
    model.set_norm_smoothing(smoothing)
    order = [prefix + key for prefix in runs for key in (*METRIC_KEYS, CUDA_FPS)]
    return {key: metrics[key] for key in order if key in metrics}


def evaluate_and_log(
    client, name: str, version: str, quick: bool = True, baseline: bool = False, options: EvalOptions | None = None
) -> dict[str, float]:
    """Evaluate a registered version and record the numbers on its run and as `metric.<key>` version tags."""
    from clipmorph import registry

    name = registry.registered_name(name)
    resolved = registry.resolve(f"{name}/{version}", client)
    metrics = evaluate(resolved.path, baseline=baseline, quick=quick, options=options)
    log_metrics(client, name, str(version), metrics, profile="quick" if quick else "full")
    return metrics


def log_metrics(client, name: str, version: str, metrics: dict[str, float], profile: str) -> None:
    from mlflow.entities import Metric

    mv = client.get_model_version(name, version)
    now = int(time.time() * 1000)
    if mv.run_id:
        client.log_batch(mv.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    for key, value in metrics.items():
        client.set_model_version_tag(name, version, f"metric.{key}", f"{value:.6g}")
    client.set_model_version_tag(name, version, "eval.profile", profile)
