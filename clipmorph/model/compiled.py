"""Ahead-of-time compiled models (AOTInductor): the torch network built once into native code for this CPU.

Why: torch.compile's fused kernels run the shipped models 1.5-1.7x faster than eager bf16 + channels_last
on this machine (docs/performance.md, "AOTInductor"), but torch.compile traces and compiles in every new
process (10-33 s), which a CLI run or a worker restart pays again. AOTInductor does that work once, with
dynamic batch, height and width, and writes a package that later processes load in milliseconds.

A frame size known in advance gets a build of its own (`clipmorph compile --size`; by default
settings.compile_sizes, 640x360: what the network sees of any 16:9 video at the shipped models' frame
side): the same pictures, bit for bit, 1.2-2.2x the frames/s of the any-size build, because the generated
loops are specialised to it (docs/performance.md, "Builds for one frame size"). The batch stays dynamic, so a
video's shorter last batch runs there too. Frames of any other size run on the any-size build.

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


def parse_size(text: str) -> tuple[int, int]:
    """'640x360' -> (640, 360), width first as people write frame sizes; a clear error otherwise."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"a frame size is WIDTHxHEIGHT, like 640x360; got {text!r}") from None
    if not (8 <= width <= MAX_SIDE and 8 <= height <= MAX_SIDE):
        raise ValueError(f"frame size {text!r}: each side must be between 8 and {MAX_SIDE} px")
    return width, height


def padded(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """(width, height) rounded up to the stride: the size the network runs at (GraphStylizer pads to it)."""
    return tuple(-(-side // stride) * stride for side in size)  # type: ignore[return-value]


def package_prefix(model_dir: Path, bf16: bool) -> str:
    """What makes a build valid for this model on this machine: weights, torch, CPU vector ISA, precision."""
    weights = sha256_file(Path(model_dir) / WEIGHTS)[:16]
    precision = "bf16" if bf16 else "fp32"
    return f"{weights}-torch{torch.__version__.replace('+', '_')}-{_vector_isa()}-{precision}"


def package_name(prefix: str, size: tuple[int, int] | None = None) -> str:
    """The cache file's name: the any-size build, or the build for one padded (width, height)."""
    return f"{prefix}.pt2" if size is None else f"{prefix}-{size[0]}x{size[1]}.pt2"


def cached_package(cache_dir: Path, prefix: str) -> Path | None:
    """The model's any-size build on this machine (prefix: package_prefix's), if there is one."""
    path = Path(cache_dir) / package_name(prefix)
    return path if path.exists() else None


def sized_packages(cache_dir: Path, prefix: str) -> dict[tuple[int, int], Path]:
    """The model's builds for one frame size each, by padded (width, height)."""
    found = {}
    for path in Path(cache_dir).glob(f"{prefix}-*x*.pt2"):
        width, _, height = path.stem[len(prefix) + 1 :].partition("x")
        if width.isdigit() and height.isdigit():
            found[int(width), int(height)] = path
    return found


def missing_builds(
    model_dir: Path, cache_dir: Path, prefix: str, sizes: list[tuple[int, int]]
) -> list[tuple[int, int] | None]:
    """What cache_dir lacks of the model's builds: None for the any-size build, then each of `sizes` (width,
    height) padded to the stride, the size its build is named by."""
    stride = read_info(Path(model_dir)).net.stride
    missing: list[tuple[int, int] | None] = [None] if cached_package(cache_dir, prefix) is None else []
    return missing + sorted({padded(size, stride) for size in sizes} - set(sized_packages(cache_dir, prefix)))


def compile_package(model_dir: Path, cache_dir: Path, bf16: bool, size: tuple[int, int] | None = None) -> Path:
    """Build the model's package into cache_dir (over any earlier one): for any frame size, or for frames of
    `size` (width, height; padded to the stride) only. 20-40 s each on 2 cores for a shipped model."""
    model, info = load_model(Path(model_dir), device="cpu")
    if not exportable(info):
        raise ValueError(f"preset with {info.net.norm!r} norm can't be compiled ahead of time; use --runtime torch")
    body = _Body(fold_batch_norm(model.eval()).to(memory_format=torch.channels_last), bf16).eval()
    stride = info.net.stride
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    if size is None:
        cells = torch.export.Dim("cells_h", min=2, max=MAX_SIDE // stride)
        cells_w = torch.export.Dim("cells_w", min=2, max=MAX_SIDE // stride)
        example = torch.rand(2, 3, 6 * stride, 10 * stride)
        dynamic = {"frames": {0: batch, 2: stride * cells, 3: stride * cells_w}}
    else:
        size = padded(size, stride)
        example, dynamic = torch.rand(2, 3, size[1], size[0]), {"frames": {0: batch}}
    out = Path(cache_dir) / package_name(package_prefix(model_dir, bf16), size)
    with torch.no_grad():
        program = torch.export.export(body, (example,), dynamic_shapes=dynamic)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.partial.pt2")  # the packager wants the suffix
    from torch._inductor import aoti_compile_and_package  # the compiler: a second to import, so only here

    aoti_compile_and_package(program, package_path=str(tmp))
    tmp.replace(out)  # a reader never sees half a file; two builders race harmlessly
    return out


class CompiledStylizer(GraphStylizer):
    """A model run from its compiled packages on the CPU: the build for the frames' size where there is one,
    else the any-size build."""

    def __init__(self, package: Path, info: ModelInfo, sized: dict[tuple[int, int], Path] | None = None) -> None:
        super().__init__(info)
        self.runner = _load(package)
        self.sized = {size: _load(path) for size, path in (sized or {}).items()}

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        if max(padded.shape[-2:]) > MAX_SIDE or padded.shape[0] > MAX_BATCH:
            raise ValueError(f"the compiled runtime takes frames up to {MAX_SIDE} px and {MAX_BATCH} per batch")
        height, width = padded.shape[-2:]
        (y,) = self.sized.get((width, height), self.runner).run([padded])
        return y


def _load(package: Path):
    # The package loader itself, not torch._inductor.aoti_load_package: importing the compiler (and
    # dynamo) for that costs a second of every start-up, and loading needs neither.
    return torch._C._aoti.AOTIModelPackageLoader(str(package), "model", False, 1, -1)


def compiled_for(model_dir: Path, cache_dir: Path, bf16: bool, prefix: str | None = None) -> CompiledStylizer:
    """The model's compiled runner from this machine's any-size build, made first if there is none yet, with
    every build for one frame size that this machine has for it. prefix: package_prefix's answer, when the
    caller has it (it hashes the weights)."""
    prefix = prefix or package_prefix(model_dir, bf16)
    package = cached_package(cache_dir, prefix)
    if package is None:
        log.warning("compiling %s for this CPU, once (about 30 s; later runs load it at once)", model_dir)
        package = compile_package(model_dir, cache_dir, bf16)
    return CompiledStylizer(package, read_info(Path(model_dir)), sized_packages(cache_dir, prefix))
