"""Network-alone frames/s of every preset at 640x360 and 1280x720, side by side with `johnson`.

Prints a table and writes bench-results/network.json. Run through `make bench`
(or `python benchmarks/bench_network.py --threads 2 --frames 8`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from clipmorph.inference import prepare, resolve_device
from clipmorph.network import PRESETS, build, count_parameters
from clipmorph.settings import REPO_ROOT

SIZES = [(640, 360), (1280, 720)]
RESULTS = REPO_ROOT / "bench-results" / "network.json"


def measure(preset: str, size: tuple[int, int], device: torch.device, frames: int, batch: int) -> float:
    """Frames/s of inference on random frames after one warm-up batch (same path as the video engine)."""
    torch.manual_seed(0)
    model = prepare(build(preset), device)
    w, h = size
    x = torch.rand(batch, 3, h, w, device=device)
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < frames:
            model(x)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


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
        row = {"preset": preset, "params": count_parameters(build(preset)), "device": str(device)}
        for size in SIZES:
            row[f"fps_{size[0]}x{size[1]}"] = round(measure(preset, size, device, args.frames, args.batch), 2)
        rows.append(row)

    cpu = platform.processor() or platform.machine()
    print(f"\nNetwork alone, {device}, {args.threads} threads, batch {args.batch} ({cpu})")
    print(f"{'preset':<10}{'params':>10}{'640x360 fps':>14}{'1280x720 fps':>14}{'vs johnson':>12}")
    base = next(r for r in rows if r["preset"] == "johnson")["fps_640x360"]
    for r in rows:
        print(f"{r['preset']:<10}{r['params']:>10,}{r['fps_640x360']:>14.2f}{r['fps_1280x720']:>14.2f}"
              f"{r['fps_640x360'] / base:>11.2f}x")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": args.threads, "batch": args.batch, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
