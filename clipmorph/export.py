"""ONNX export of a trained model, and the onnxruntime runner that stands in for the torch model.

The exported graph is `Stylizer.body` with batch norms folded: an input whose height and width are
multiples of the network's stride, both dynamic. Padding to that multiple and cropping back happen
around it, in `OnnxStylizer.__call__`, so the graph has no size-dependent branch and one file serves
every frame size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from clipmorph.artifact import WEIGHTS, ModelInfo, load_model, sha256_file
from clipmorph.network import Stylizer, fold_batch_norm, pad_to_multiple

ONNX_FILE = "model.onnx"  # next to model.safetensors in a model folder and in the registry
OPSET = 18
# Largest difference from the torch model on [0, 1] images that tests accept (float32 both ways).
TOLERANCE = 2e-3


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


class OnnxStylizer:
    """A model run by onnxruntime on the CPU, callable like a prepared Stylizer on (N, 3, H, W) in [0, 1]."""

    device = torch.device("cpu")

    def __init__(self, onnx_path: Path, info: ModelInfo, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.config = info.net
        self.frame_side = info.recommended.get("frame_side")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x.float().cpu(), self.config.stride)
        (y,) = self.session.run(None, {"frames": np.ascontiguousarray(padded.numpy())})
        return torch.from_numpy(y)[..., :h, :w]

    # The video engine's hooks for instance-norm smoothing: nothing to smooth in an exportable model.
    def norms(self) -> list:
        return []

    def set_norm_smoothing(self, smoothing: float) -> None:
        pass

    def reset_temporal_state(self) -> None:
        pass


def onnx_for(model_dir: Path, cache_dir: Path) -> Path:
    """The model's ONNX file: the one in its folder, else one exported once into cache_dir (by weights hash)."""
    shipped = Path(model_dir) / ONNX_FILE
    if shipped.exists():
        return shipped
    cached = cache_dir / f"{sha256_file(Path(model_dir) / WEIGHTS)[:16]}.onnx"
    if not cached.exists():
        export_onnx(Path(model_dir), cached)
    return cached
