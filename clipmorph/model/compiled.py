"""Ahead-of-time compiled models (AOTInductor): the torch network built once into native code for this CPU.

Why: torch.compile's fused kernels run the shipped models 1.5-1.7x faster than eager bf16 + channels_last
on this machine (docs/performance.md, "AOTInductor"), but torch.compile traces and compiles in every new
process (10-33 s), which a CLI run or a worker restart pays again. AOTInductor does that work once, with
dynamic batch, height and width, and writes a package that later processes load in milliseconds.

The package is a cache derived from the model's safetensors, never a model format of its own: it is
built here, by `clipmorph compile` or `--runtime compiled`, into the var folder, under a name
that holds the weights' hash, the torch version, the CPU's vector instruction set and the precision, so a
new torch, another CPU or retrained weights never load a stale build. Nothing uploaded is ever loaded
as a package. Building needs a C++ compiler (g++), as torch.compile does.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from clipmorph.model.artifact import WEIGHTS, ModelInfo, load_model, read_info, sha256_file
from clipmorph.model.export import GraphStylizer, exportable
from clipmorph.model.network import fold_batch_norm

log = logging.getLogger(__name__)

# Largest frame side the package accepts, in pixels (the network input after scaling to the model's frame
# side; only `--max-side 0` on a huge video goes past the default 640-1280). Past it the runner says so.
MAX_SIDE = 4096
MAX_BATCH = 64


class _Body(nn.Module):
    """What gets compiled: the network proper (the runner pads and crops), in the precision and memory
    layout it runs fastest in on this CPU (clipmorph.video.inference explains both)."""

    def __init__(self, model: nn.Module, bf16: bool) -> None:
        super().__init__()
        self.model = model
        self.bf16 = bf16

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        frames = frames.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.body(frames).float()


def _vector_isa() -> str:
    """The CPU's vector instruction set as torch sees it (AVX512, AVX2, ...): a build for one may use
    instructions another lacks. (torch._inductor's own, finer check would import the compiler: 1 s.)"""
    return torch.backends.cpu.get_cpu_capability().lower()


def package_name(model_dir: Path, bf16: bool) -> str:
    """The cache file's name: everything that makes a build valid for this model on this machine."""
    weights = sha256_file(Path(model_dir) / WEIGHTS)[:16]
    precision = "bf16" if bf16 else "fp32"
    return f"{weights}-torch{torch.__version__.replace('+', '_')}-{_vector_isa()}-{precision}.pt2"


def cached_package(model_dir: Path, cache_dir: Path, bf16: bool) -> Path | None:
    path = Path(cache_dir) / package_name(model_dir, bf16)
    return path if path.exists() else None


def compile_package(model_dir: Path, cache_dir: Path, bf16: bool) -> Path:
    """Build the model's package into cache_dir (over any earlier one); about 30 s on 2 cores for a shipped model."""
    out = Path(cache_dir) / package_name(model_dir, bf16)
    model, info = load_model(Path(model_dir), device="cpu")
    if not exportable(info):
        raise ValueError(f"preset with {info.net.norm!r} norm can't be compiled ahead of time; use --runtime torch")
    body = _Body(fold_batch_norm(model.eval()).to(memory_format=torch.channels_last), bf16).eval()
    stride = info.net.stride
    cells = torch.export.Dim("cells_h", min=2, max=MAX_SIDE // stride)
    cells_w = torch.export.Dim("cells_w", min=2, max=MAX_SIDE // stride)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    example = torch.rand(2, 3, 6 * stride, 10 * stride)
    with torch.no_grad():
        program = torch.export.export(
            body, (example,), dynamic_shapes={"frames": {0: batch, 2: stride * cells, 3: stride * cells_w}}
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.partial.pt2")  # the packager wants the suffix
    from torch._inductor import aoti_compile_and_package  # the compiler: a second to import, so only here

    aoti_compile_and_package(program, package_path=str(tmp))
    tmp.replace(out)  # a reader never sees half a file; two builders race harmlessly
    return out


class CompiledStylizer(GraphStylizer):
    """A model run from its compiled package on the CPU."""

    def __init__(self, package: Path, info: ModelInfo) -> None:
        super().__init__(info)
        # The package loader itself, not torch._inductor.aoti_load_package: importing the compiler (and
        # dynamo) for that costs a second of every start-up, and loading needs neither.
        self.runner = torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        if max(padded.shape[-2:]) > MAX_SIDE or padded.shape[0] > MAX_BATCH:
            raise ValueError(f"the compiled runtime takes frames up to {MAX_SIDE} px and {MAX_BATCH} per batch")
        (y,) = self.runner.run([padded])
        return y


def compiled_for(model_dir: Path, cache_dir: Path, bf16: bool, package: Path | None = None) -> CompiledStylizer:
    """The model's compiled runner from `package` (cached_package's answer, when the caller has it), else
    from this machine's build, made first if there is none yet."""
    package = package or cached_package(model_dir, cache_dir, bf16)
    if package is None:
        log.warning("compiling %s for this CPU, once (about 30 s; later runs load it at once)", model_dir)
        package = compile_package(model_dir, cache_dir, bf16)
    return CompiledStylizer(package, read_info(Path(model_dir)))
