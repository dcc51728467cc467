"""Speed levers for the shipped default model on the CPU, each with its cost in quality (issue #13).

One table, every row the same shipped model (default: models/kanagawa, preset rt_bn, batch norms folded)
on the same frames, in one run: torch float32 NCHW (the reference), channels_last, bf16 autocast (the CPU
has AVX512-BF16), bf16 + channels_last (the default here), torch.compile (inductor) alone and with both
(CLIPMORPH_TORCH_COMPILE), the same built ahead of time with dynamic shapes (AOTInductor, what
`clipmorph compile` builds and `auto` runs), the same built for one frame size each (`clipmorph compile
--size`), and the onnxruntime float and int8 graphs that
`--runtime onnx|int8` run. Each is timed at batch 1 and at the pipeline's batch (4).
Rows are timed in alternation, round after round, so a load change on this shared VM hits them all alike;
the best round is reported. Quality: PSNR of each lever's output against the float32 reference on real
frames, and the style distance to the painting (quality.style_distance) of both.
Prints a markdown table and writes bench-results/levers.json.

    python benchmarks/bench_levers.py [--model models/kanagawa] [--threads 2] [--frames 8] [--rounds 3]
        [--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clipmorph.evaluation import quality
from clipmorph.model import compiled, export
from clipmorph.model.artifact import load_model, read_info
from clipmorph.settings import REPO_ROOT, get_settings
from clipmorph.training.data import find_images, load_rgb, resolve_style_path
from clipmorph.video.inference import calibration_pictures, prepare, resize

SIZES = [(640, 360), (1280, 720)]
RESULTS = REPO_ROOT / "bench-results" / "levers.json"
BATCH = 4  # frames per network call in the video pipeline (StylizeOptions.batch_size)
Run = Callable[[torch.Tensor], torch.Tensor]


def torch_lever(model: torch.nn.Module, channels_last: bool, bf16: bool, compiled: bool = False) -> Run:
    """The model called one way: memory format of input and weights, CPU autocast to bfloat16, and
    torch.compile (inductor; its first call, the quality pass, compiles)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(memory_format=layout)  # Module.to changes the weights in place
    if compiled:
        model = torch.compile(model, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return model(x).float()

    return run


def onnx_lever(graph: Path, model_dir: Path, threads: int) -> Run:
    runner = export.OnnxStylizer(graph, read_info(model_dir), threads)
    return lambda x: runner(x)


def fps(run: Run, x: torch.Tensor, frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        run(x)
    return frames / (time.perf_counter() - start)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def to_image(y: torch.Tensor) -> np.ndarray:
    return (y[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def real_frames(size: tuple[int, int], count: int) -> list[torch.Tensor]:
    """Validation photos resized to `size`, as (1, 3, H, W) float tensors."""
    settings = get_settings()
    paths = find_images([settings.photos_dir / settings.eval_photos])[:count]
    pictures = [resize(np.asarray(load_rgb(p)), size) for p in paths]
    return [torch.from_numpy(p.copy()).permute(2, 0, 1)[None].float() / 255 for p in pictures]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "kanagawa")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--frames", type=int, default=8, help="timed frames per lever, size and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--photos", type=int, default=2, help="real frames for the quality columns")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first call compiles)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, info = load_model(args.model)
    model = prepare(model, "cpu")
    painting = resolve_style_path(str(info.style.get("name")), get_settings().style_dirs)
    vgg = quality.load_project_vgg()
    with tempfile.TemporaryDirectory() as tmp:
        levers: dict[str, Run] = {
            "torch float32": torch_lever(model, False, False),
            "channels_last": torch_lever(model, True, False),
            "bf16 autocast": torch_lever(model, False, True),
            "bf16 + channels_last": torch_lever(model, True, True),
        }
        if not args.no_compile:
            levers["torch.compile"] = torch_lever(model, False, False, compiled=True)
            levers["torch.compile + bf16 + channels_last"] = torch_lever(model, True, True, compiled=True)
            # Built into the var folder's cache like `clipmorph compile --size` (20-40 s each, the first time).
            cache, prefix = get_settings().var_dir / "compiled", compiled.package_prefix(args.model, True)
            for size in compiled.missing_builds(args.model, cache, prefix, SIZES):
                compiled.compile_package(args.model, cache, True, size)
            sized = compiled.compiled_for(args.model, cache, True, prefix)
            any_size = compiled.CompiledStylizer(compiled.cached_package(cache, prefix), read_info(args.model))
            levers["AOTInductor + bf16 + channels_last, any size (compiled)"] = any_size
            levers["AOTInductor, a build per frame size (compiled --size)"] = sized
        float_graph = export.onnx_for(args.model, Path(tmp))
        levers["onnxruntime float (onnx)"] = onnx_lever(float_graph, args.model, args.threads)
        int8 = export.int8_for(args.model, Path(tmp), calibration_pictures(get_settings()))
        levers["onnxruntime int8"] = onnx_lever(int8, args.model, args.threads)

        rows = {name: {"lever": name} for name in levers}
        for size in SIZES:
            key = f"{size[0]}x{size[1]}"
            frames = real_frames(size, args.photos)
            reference = [to_image(levers["torch float32"](x)) for x in frames]
            for name, run in levers.items():
                outs = [to_image(run(x)) for x in frames]  # also the warm-up (and the compile)
                rows[name][f"psnr_{key}"] = round(min(psnr(o, r) for o, r in zip(outs, reference, strict=True)), 1)
                style = [quality.style_distance(vgg, o, painting)["style"] for o in outs]
                rows[name][f"style_{key}"] = round(float(np.mean(style)), 4)
            for batch, suffix in ((1, ""), (BATCH, f"_b{BATCH}")):
                x = torch.rand(batch, 3, size[1], size[0])
                for _ in range(args.rounds):  # alternate the levers within each round
                    for name, run in levers.items():
                        best = max(rows[name].get(f"fps_{key}{suffix}", 0.0), batch * fps(run, x, args.frames // batch))
                        rows[name][f"fps_{key}{suffix}"] = round(best, 2)

    table = list(rows.values())
    base = table[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "threads": args.threads, "rows": table}, indent=2))
    print(f"\nSpeed levers, {args.model.name}, {args.threads} threads, best of {args.rounds} rounds;")
    print(f"PSNR against torch float32 (worst of {args.photos} photos), style distance (mean of them)")
    print(
        f"| lever | 640x360 fps, batch 1 / {BATCH} | vs float32 | 1280x720 fps, batch 1 / {BATCH} | vs float32 "
        "| PSNR dB 640 / 1280 | style 640 / 1280 |"
    )
    print("|---|---|---|---|---|---|---|")

    def cells(r: dict, key: str) -> str:  # "fps batch 1 / batch 4 | ratios to float32"
        b1, b4 = r[key], r[f"{key}_b{BATCH}"]
        return f"{b1:.1f} / {b4:.1f} | {b1 / base[key]:.2f}x / {b4 / base[f'{key}_b{BATCH}']:.2f}x"

    for r in table:
        print(
            f"| {r['lever']} | {cells(r, 'fps_640x360')} | {cells(r, 'fps_1280x720')} "
            f"| {r['psnr_640x360']} / {r['psnr_1280x720']} | {r['style_640x360']:.3f} / {r['style_1280x720']:.3f} |"
        )
    print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()
