"""Running a trained stylizer: load it, stylize frames in batches, stylize still images.

Frames travel as uint8 RGB arrays (N, H, W, 3); conversion to float, the
network and the clamp back to uint8 all happen on the model's device so only
bytes cross the PCIe bus. A torch network runs with channels_last memory, under fp16 autocast on CUDA
and bf16 autocast on a CPU with native bf16 (AVX512-BF16, AMX): on the development machine's 2 Zen 4
cores that made the shipped model 1.8-2.4x faster at 640x360 than fp32 NCHW, at a PSNR of 53 dB against
it (benchmarks/bench_levers.py, docs/performance.md). onnxruntime models get plain NCHW float32.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import torch
from PIL import ImageOps

from clipmorph.model import compiled, export
from clipmorph.model.artifact import CONFIG, ModelInfo, load_model, read_info
from clipmorph.model.device import resolve_device
from clipmorph.model.network import Stylizer, fold_batch_norm
from clipmorph.settings import get_settings
from clipmorph.video.contrast import IMAGE_CONTRAST, MAX_CONTRAST, VIDEO_CONTRAST, TemporalClahe
from clipmorph.video.tiling import stylize_tiled

STABILIZE_MODES = ("none", "norm", "flow", "both")
# The one default for the CLI, the API and the web page's "reduce flicker" box: norm smoothing on top
# measured nothing (see StylizeOptions.stabilize), and the shipped models have no instance norm.
DEFAULT_STABILIZE = "flow"
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
# Instance-norm smoothing used by "norm"/"both" when the model recommends none.
DEFAULT_NORM_SMOOTHING = 0.9


class ImageError(ValueError):
    """The input image cannot be stylized (unreadable, unsupported format, too large)."""


RUNTIMES = ("auto", "torch", "onnx", "int8", "compiled")


@dataclass
class StylizeOptions:
    # The longer side the network sees; the result is scaled back to the input size. None: the model's own
    # frame side (the frame size it was trained for, so strokes keep their size relative to the picture);
    # 0: the input's own size.
    max_side: int | None = None
    strength: float = 1.0  # 0 = the original, 1 = fully stylized
    # "none" | "norm" | "flow" | "both" (videos only). On carphone (45 frames, seeded random `fast` net) the
    # warping error was none 0.0095, norm 0.0095, flow 0.0017, both 0.0017 (input itself: 0.00037).
    stabilize: str = DEFAULT_STABILIZE
    batch_size: int = 4
    crf: int = 18
    device: str = "auto"
    # Instance-norm smoothing for "norm"/"both"; None: DEFAULT_NORM_SMOOTHING (see `norm_smoothing(info)`).
    norm_smoothing: float | None = None
    # Local contrast of the network's input: a CLAHE clip limit (clipmorph.video.contrast), 0 = off; None:
    # IMAGE_CONTRAST for an image, VIDEO_CONTRAST for a video (where it is held steady across frames).
    contrast: float | None = None

    def contrast_for(self, video: bool) -> float:
        if self.contrast is not None:
            return self.contrast
        return VIDEO_CONTRAST if video else IMAGE_CONTRAST

    def __post_init__(self) -> None:
        if self.stabilize not in STABILIZE_MODES:
            raise ValueError(f"stabilize must be one of {', '.join(STABILIZE_MODES)}, got {self.stabilize!r}")
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be between 0 and 1, got {self.strength}")
        if self.max_side is not None and self.max_side != 0 and self.max_side < 16:
            raise ValueError(f"max_side must be 0 (the input size) or at least 16, got {self.max_side}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be between 0 and 51, got {self.crf}")
        if self.contrast is not None and not 0 <= self.contrast <= MAX_CONTRAST:
            raise ValueError(f"contrast must be between 0 (off) and {MAX_CONTRAST:g}, got {self.contrast}")


@dataclass
class LoadedModel:
    model: Stylizer | export.GraphStylizer  # all take (N, 3, H, W) in [0, 1] and return the same
    info: ModelInfo
    name: str | None  # registered model name; None for a plain folder
    version: str | None


def model_device(model: Stylizer) -> torch.device:
    device = getattr(model, "device", None)  # an onnxruntime model (clipmorph.model.export) says where it runs
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def prepare(model: Stylizer, device: str | torch.device = "auto") -> Stylizer:
    """Move to the device in eval mode, batch norms folded into their convs (so the model is for inference
    only from here on), weights channels_last (oneDNN's and cuDNN's faster convolution layout)."""
    dev = resolve_device(device)
    return fold_batch_norm(model.to(dev).eval()).to(memory_format=torch.channels_last)


def load_stylizer(ref: str, device: str = "auto", runtime: str | None = None) -> LoadedModel:
    """Resolve a registry reference (or a folder) and load the model ready for inference.

    runtime (default: settings.runtime): "torch", "onnx" (onnxruntime on the CPU, for models without
    instance norm), "int8" (the same, quantised; calibrated once on the validation photos), "compiled"
    (the torch network built ahead of time for this CPU, clipmorph.model.compiled; builds it first if
    needed, about 30 s) or "auto": compiled where this machine has the build already, else torch on a
    CPU with native bf16 and on CUDA, else onnx where it can run, else torch.
    """
    settings = get_settings()
    runtime = runtime or settings.runtime
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose {', '.join(RUNTIMES)}")
    if (Path(ref) / CONFIG).exists():  # a model folder: no registry
        path, name, version = Path(ref), None, None
    else:
        from clipmorph import registry

        resolved = registry.resolve(ref)
        path, name, version = resolved.path, resolved.name, resolved.version
    info = read_info(path)  # enough to choose the runtime; the torch weights load only if used
    on_cpu = resolve_device(device).type == "cpu"
    if runtime in ("onnx", "int8", "compiled") and not (on_cpu and export.exportable(info)):
        raise ValueError(
            f"the {runtime} runtime runs on the CPU only, for models without instance norm; use --runtime torch"
        )
    if runtime == "int8":
        int8_path = export.int8_for(path, settings.var_dir / "onnx", calibration_pictures(settings))
        return LoadedModel(export.OnnxStylizer(int8_path, info), info, name, version)
    if runtime in ("compiled", "auto") and on_cpu and export.exportable(info):
        # 1.5-1.9x eager bf16 + channels_last here (docs/performance.md, "Ahead-of-time compiled models")
        compiled_dir = settings.var_dir / "compiled"
        prefix = compiled.package_prefix(path, cpu_bf16())
        if runtime == "compiled" or compiled.cached_package(compiled_dir, prefix):
            runner = compiled.compiled_for(path, compiled_dir, cpu_bf16(), prefix)
            return LoadedModel(runner, info, name, version)
    # auto: torch where the CPU does bf16 natively (bf16 + channels_last beat onnxruntime's float graph,
    # 22 against 17 frames/s for the whole `clipmorph stylize` of bikes.mp4 here), onnxruntime elsewhere
    # on the CPU for the models it can run (docs/performance.md, "Speed levers").
    if runtime == "onnx" or (runtime == "auto" and on_cpu and export.exportable(info) and not cpu_bf16()):
        onnx_path = export.onnx_for(path, settings.var_dir / "onnx")
        runner = export.OnnxStylizer(onnx_path, info)
        return LoadedModel(runner, info, name, version)
    model, info = load_model(path, device="cpu")
    model = prepare(model, device)
    if settings.torch_compile and export.exportable(info):  # instance-norm smoothing keeps Python state
        model = torch.compile(model)  # shapes: static first, dynamic after the first recompile
    return LoadedModel(model, info, name, version)


def calibration_pictures(settings, count: int = 8) -> list[np.ndarray]:
    """A few validation photos (RGB uint8) for int8 calibration; a clear error when there are none."""
    folder = settings.photos_dir / settings.eval_photos
    found = sorted(folder.glob("*")) if folder.is_dir() else []
    paths = [p for p in found if p.suffix.lower() in (".jpg", ".jpeg", ".png")][:count]
    if not paths:
        raise ValueError("the int8 runtime calibrates on the validation photos, and there are none: run `make data`")
    return [np.asarray(PIL.Image.open(p).convert("RGB")) for p in paths]


def norm_smoothing(info: ModelInfo | None) -> float:
    """The model's recommended instance-norm smoothing for video, else the default."""
    value = (info.recommended if info else {}).get("norm_smoothing")
    return float(value) if value is not None else DEFAULT_NORM_SMOOTHING


def network_size(width: int, height: int, max_side: int | None, model: Stylizer) -> tuple[int, int]:
    """(w, h) at which the network runs for an input of width x height.

    An explicit max_side only ever shrinks (0: the input size). Without one, the input is scaled, up or
    down, to the model's frame side: its strokes were learned at that frame size, and the same stroke
    size relative to the picture is what makes 360p and 720p outputs of one clip look alike.
    """
    if max_side is not None:
        return fit_size(width, height, max_side or None)
    side = getattr(model, "frame_side", None)
    if not side:
        return width, height
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled down, keeping the aspect ratio, so the longer side is at most max_side."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize HxWx3 uint8 to size (w, h): area filter when shrinking, bicubic when enlarging."""
    h, w = rgb.shape[:2]
    if (w, h) == size:
        return rgb
    shrink = size[0] * size[1] < w * h
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def blend(stylized: np.ndarray, original: np.ndarray, strength: float) -> np.ndarray:
    """strength * stylized + (1 - strength) * original, uint8."""
    if strength >= 1.0:
        return stylized
    return cv2.addWeighted(stylized, strength, original, 1.0 - strength, 0.0)


@functools.cache
def _native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16() -> bool:
    """Whether torch networks on the CPU run under bf16 autocast: settings.cpu_bf16 and a CPU that does
    bf16 natively (emulated bf16 is slower than fp32)."""
    return get_settings().cpu_bf16 and _native_bf16()


def _on_torch(model: Stylizer) -> bool:
    """A torch network (or a wrapper around one, such as the worker's pass counter), not a built graph
    (onnxruntime, or an AOTInductor package) that handles its own precision and memory layout."""
    return not getattr(model, "graph_runtime", False)


def _autocast(model: Stylizer, device: torch.device) -> contextlib.AbstractContextManager:
    if not _on_torch(model):
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and cpu_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _layout(model: Stylizer, x: torch.Tensor) -> torch.Tensor:
    """The input in the memory layout the model runs fastest in (see prepare)."""
    return x.contiguous(memory_format=torch.channels_last) if _on_torch(model) else x


def to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1] on device (channels_last on CUDA)."""
    frames = np.ascontiguousarray(frames)
    if not frames.flags.writeable:  # e.g. np.asarray(PIL image); torch.from_numpy wants writable memory
        frames = frames.copy()
    x = torch.from_numpy(frames).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x.contiguous()


def to_uint8(y: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float -> (N, H, W, 3) uint8 on the CPU; the network's output is not clamped."""
    y = y.float().clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return y.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@torch.inference_mode()
def run_network(model: Stylizer, x: torch.Tensor) -> torch.Tensor:
    with _autocast(model, x.device):
        return model(_layout(model, x))


@torch.inference_mode()
def stylize_frames(model: Stylizer, frames: np.ndarray) -> np.ndarray:
    """Stylize a batch (N, H, W, 3) uint8 in frame order (norm smoothing state carries over)."""
    return to_uint8(run_network(model, to_tensor(frames, model_device(model))))


@torch.inference_mode()
def stylize_array(model: Stylizer, rgb: np.ndarray, options: StylizeOptions) -> np.ndarray:
    """One HxWx3 uint8 image -> stylized, same size; tiled when it is larger than settings.tile_pixels."""
    h, w = rgb.shape[:2]
    net_in = resize(rgb, network_size(w, h, options.max_side, model))
    limit = options.contrast_for(video=False)
    if limit > 0:
        net_in = TemporalClahe(limit, memory=0.0)(net_in)  # one picture: nothing to hold steady
    device = model_device(model)
    x = _layout(model, to_tensor(net_in[None], device))
    tile_pixels = get_settings().tile_pixels
    with _autocast(model, device):
        y = stylize_tiled(model, x, tile_pixels) if x.shape[-1] * x.shape[-2] > tile_pixels else model(x)
    out = resize(to_uint8(y)[0], (w, h))
    return blend(out, rgb, options.strength)


def stylize_pil(model: Stylizer, img: PIL.Image.Image, options: StylizeOptions) -> PIL.Image.Image:
    """Stylize a PIL image: EXIF orientation applied, alpha kept, output the displayed size of the input."""
    img = ImageOps.exif_transpose(img)
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") or "transparency" in img.info else None
    out = PIL.Image.fromarray(stylize_array(model, np.asarray(img.convert("RGB")), options))
    if alpha is not None:
        out.putalpha(alpha)
    return out


def open_image(src: Path) -> PIL.Image.Image:
    settings = get_settings()
    try:
        img = PIL.Image.open(src)
        if img.width * img.height > settings.max_image_pixels:
            raise ImageError(
                f"{src.name}: {img.width}x{img.height} exceeds the limit of {settings.max_image_pixels} pixels"
            )
        img.load()
    except (PIL.UnidentifiedImageError, OSError, PIL.Image.DecompressionBombError) as e:
        raise ImageError(f"{src.name}: not a readable image ({e})") from None
    return img


def stylize_image(model: Stylizer, src: Path, dst: Path, options: StylizeOptions) -> None:
    """Stylize an image file; the output format follows dst's extension (jpg/png/webp)."""
    src, dst = Path(src), Path(dst)
    fmt = IMAGE_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise ImageError(f"{dst.name}: output must end in one of {', '.join(IMAGE_FORMATS)}")
    img = open_image(src)
    out = stylize_pil(model, img, options)
    if fmt == "JPEG" and out.mode != "RGB":
        out = out.convert("RGB")
    save_args: dict = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if icc := img.info.get("icc_profile"):
        save_args["icc_profile"] = icc
    tmp = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
    try:
        out.save(tmp, format=fmt, **save_args)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
