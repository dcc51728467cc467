"""ONNX export of a trained model, and the onnxruntime runner that stands in for the torch model.

The exported graph is `Stylizer.body` with batch norms folded: an input whose height and width are
multiples of the network's stride, both dynamic. Padding to that multiple and cropping back happen
around it, in `GraphStylizer.__call__`, so the graph has no size-dependent branch and one file serves
every frame size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipmorph.model.artifact import WEIGHTS, ModelInfo, load_model, read_info, sha256_file
from clipmorph.model.network import Stylizer, fold_batch_norm, pad_to_multiple

ONNX_FILE = "model.onnx"  # next to model.safetensors in a model folder and in the registry
INT8_FILE = "model.int8.onnx"  # the same graph quantised to int8 (see quantize_onnx)
OPSET = 18
# Largest difference from the torch model on [0, 1] images that tests accept (float32 both ways).
TOLERANCE = 2e-3
# PSNR (dB) of the int8 graph against the float one that tests accept. The shipped models measured
# 42-44 dB on video frames (docs/performance.md), i.e. about 0.7 % RMS, below one grey level.
INT8_MIN_PSNR = 35.0


class _Body(nn.Module):
    def __init__(self, model: Stylizer) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model.body(frames)


def exportable(info: ModelInfo) -> bool:
    """Instance norm carries state across video frames (norm smoothing) that a static graph can't hold."""
    return info.net.norm not in ("instance", "input")


def export_onnx(model_dir: Path, out: Path) -> Path:
    """Write the model in `model_dir` as an ONNX file with dynamic batch, height and width."""
    model, info = load_model(model_dir, device="cpu")
    if not exportable(info):
        raise ValueError(f"preset with {info.net.norm!r} norm can't run on onnxruntime; use the torch runtime")
    body = _Body(fold_batch_norm(model.eval()))
    stride = info.net.stride
    example = torch.rand(1, 3, 4 * stride, 6 * stride)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with torch.no_grad():
        torch.onnx.export(
            body, (example,), str(tmp), input_names=["frames"], output_names=["stylized"], opset_version=OPSET,
            dynamic_axes={"frames": {0: "n", 2: "h", 3: "w"}, "stylized": {0: "n", 2: "h", 3: "w"}}, dynamo=False,
        )  # fmt: skip
    tmp.replace(out)  # a reader never sees half a file
    return out


def calibration_frames(images: list[np.ndarray], stride: int, side: int) -> list[np.ndarray]:
    """HxWx3 uint8 pictures -> (1, 3, H, W) float inputs of the graph, scaled to `side` and padded to `stride`."""
    frames = []
    for rgb in images:
        x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255.0
        scale = side / max(x.shape[-2:])
        x = torch.nn.functional.interpolate(x, scale_factor=scale, mode="area" if scale < 1 else "bilinear")
        frames.append(np.ascontiguousarray(pad_to_multiple(x.clamp(0, 1), stride).numpy()))
    return frames


def quantize_onnx(fp32: Path, out: Path, calibration: list[np.ndarray], keep_float: tuple[str, ...] = ()) -> Path:
    """Static int8 quantisation of an exported graph, calibrated on `calibration` inputs.

    QDQ format with uint8 activations and int8 weights, one scale per tensor: onnxruntime fuses it
    into integer convolutions (AVX512-VNNI here), 1.4-1.5x the float graph on this CPU. Per-channel
    weight scales measured slower and no closer (docs/performance.md).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("int8 quantisation needs at least one calibration picture")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.frames = iter(calibration)

        def get_next(self) -> dict | None:
            frame = next(self.frames, None)
            return None if frame is None else {"frames": frame}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # dynamic h, w
        quantize_static(
            str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
            nodes_to_exclude=[n for n in _node_names(prepared) if n.startswith(keep_float)] if keep_float else None,
        )  # fmt: skip
    tmp.replace(out)
    return out


def _node_names(path: Path) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(path)).graph.node]


class NoNormState:
    """The video engine's hooks for instance-norm smoothing, for runners with no instance norm to smooth."""

    def norms(self) -> list:
        return []

    def set_norm_smoothing(self, smoothing: float) -> None:
        pass

    def reset_temporal_state(self) -> None:
        pass


class GraphStylizer(NoNormState):
    """A built graph of the network body (onnxruntime, an AOTInductor package) on the CPU, callable like a
    prepared Stylizer on (N, 3, H, W) in [0, 1]: it pads to the stride and crops back around `_run`."""

    device = torch.device("cpu")
    graph_runtime = True  # its own precision and memory layout (clipmorph.video.inference leaves them alone)

    def __init__(self, info: ModelInfo) -> None:
        self.config = info.net
        self.frame_side = info.recommended.get("frame_side")

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        """The graph on float32 NCHW frames whose sides are multiples of the stride."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self._run(pad_to_multiple(x.float().cpu(), self.config.stride).contiguous())[..., :h, :w]


class OnnxStylizer(GraphStylizer):
    """A model run by onnxruntime on the CPU."""

    def __init__(self, onnx_path: Path, info: ModelInfo, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__(info)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between operators: the same frames/s for the network alone, 11-23 % less CPU
        # per frame, which decode, flow and encode use in a whole run (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {"frames": padded.numpy()})
        return torch.from_numpy(y)


def onnx_for(model_dir: Path, cache_dir: Path) -> Path:
    """The model's ONNX file: the one in its folder, else one exported once into cache_dir (by weights hash)."""
    shipped = Path(model_dir) / ONNX_FILE
    if shipped.exists():
        return shipped
    cached = cache_dir / f"{sha256_file(Path(model_dir) / WEIGHTS)[:16]}.onnx"
    if not cached.exists():
        export_onnx(Path(model_dir), cached)
    return cached


def int8_for(model_dir: Path, cache_dir: Path, calibration_images: list[np.ndarray]) -> Path:
    """The model's int8 ONNX file: the one in its folder, else one quantised once into cache_dir."""
    shipped = Path(model_dir) / INT8_FILE
    if shipped.exists():
        return shipped
    cached = cache_dir / f"{sha256_file(Path(model_dir) / WEIGHTS)[:16]}.int8.onnx"
    if not cached.exists():
        info = read_info(Path(model_dir))
        side = int(info.recommended.get("frame_side") or 640)
        frames = calibration_frames(calibration_images, info.net.stride, side)
        # The full-resolution head stays in float: quantised, it added flicker (kanagawa, bikes: warping
        # ratio 1.69 float, 1.82 all-int8, 1.77 head in float) at no measurable speed cost.
        quantize_onnx(onnx_for(model_dir, cache_dir), cached, frames, keep_float=("/up3/",))
    return cached
