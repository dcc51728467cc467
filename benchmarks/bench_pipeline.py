"""End-to-end video speed: decode + stylize + encode vs the network alone, with peak memory.

For each preset and size, the same clip (the first --frames frames of
bigbuckbunny.mp4 scaled to that size) is
  * stylized by `stylize_video` (PyAV decode thread, inference, libx264 encode), and
  * pushed through the network alone, frames already decoded in memory, in the same batches.
The pipeline hides decoding and encoding behind inference when its frames/s is
close to the network's (target: >= 85 %). Peak RSS is the process's high-water
mark during each run (reset through /proc/self/clear_refs).

    python benchmarks/bench_pipeline.py [--frames 48] [--presets fast,standard] [--sizes 640x360,1280x720]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from clipmorph.inference import StylizeOptions, prepare, resolve_device, stylize_frames
from clipmorph.network import build
from clipmorph.settings import REPO_ROOT, get_settings
from clipmorph.video import stylize_video

RESULTS = REPO_ROOT / "bench-results" / "pipeline.json"


def reset_peak_rss() -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_clip(source: Path, dst: Path, size: tuple[int, int], frames: int) -> Path:
    """The first `frames` frames of `source`, scaled to `size`, as a near-lossless H.264 clip."""
    with av.open(str(source)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        enc = out.add_stream("libx264", rate=stream.average_rate or Fraction(25), options={"crf": "12"})
        enc.width, enc.height, enc.pix_fmt = size[0], size[1], "yuv420p"
        for i, frame in enumerate(inp.decode(stream)):
            if i == frames:
                break
            small = frame.reformat(width=size[0], height=size[1], format="yuv420p")
            small.pts, small.time_base = i, Fraction(1, 25)
            out.mux(enc.encode(small))
        out.mux(enc.encode(None))
    return dst


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def network_fps(model, frames: np.ndarray, batch_size: int, device: torch.device) -> float:
    stylize_frames(model, frames[:batch_size])  # warm-up: allocator, cuDNN autotune
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(frames), batch_size):
        stylize_frames(model, frames[i : i + batch_size])  # returns uint8 on the CPU: synchronised
    return len(frames) / (time.perf_counter() - start)


def pipeline_fps(model, clip: Path, out: Path, options: StylizeOptions, frames: int) -> float:
    start = time.perf_counter()
    stylize_video(clip, out, model, options)
    return frames / (time.perf_counter() - start)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--presets", default="fast", help="comma-separated: fast,standard,johnson")
    p.add_argument("--sizes", default="640x360,1280x720")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--stabilize", default="none,both", help="pipeline stabilisation modes to time")
    p.add_argument("--repeat", type=int, default=2, help="best of N runs (shared machines are noisy)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    source = get_settings().assets_dir / "videos" / "bigbuckbunny.mp4"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes.split(","):
            size = tuple(int(v) for v in size_text.split("x"))
            clip = make_clip(source, Path(tmp) / f"clip-{size_text}.mp4", size, args.frames)
            frames = decoded(clip)
            for preset in args.presets.split(","):
                torch.manual_seed(0)
                model = prepare(build(preset), device)
                reset_peak_rss()
                net = max(network_fps(model, frames, args.batch_size, device) for _ in range(args.repeat))
                net_rss = peak_rss_mb()
                for mode in args.stabilize.split(","):
                    options = StylizeOptions(stabilize=mode, batch_size=args.batch_size)
                    reset_peak_rss()
                    out = Path(tmp) / "out.mp4"
                    pipe = max(pipeline_fps(model, clip, out, options, len(frames)) for _ in range(args.repeat))
                    rows.append(
                        {
                            "preset": preset,
                            "size": size_text,
                            "stabilize": mode,
                            "frames": len(frames),
                            "device": str(device),
                            "x264_preset": get_settings().x264_preset,
                            "network_fps": round(net, 2),
                            "pipeline_fps": round(pipe, 2),
                            "ratio": round(pipe / net, 3),
                            "network_peak_rss_mb": round(net_rss, 1),
                            "pipeline_peak_rss_mb": round(peak_rss_mb(), 1),
                        }
                    )
                    print_row(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return rows


HEADER = f"{'preset':9} {'size':10} {'stabilize':9} {'net fps':>8} {'pipe fps':>8} {'ratio':>6} {'RSS MB':>7}"


def print_row(row: dict) -> None:
    if not getattr(print_row, "header_done", False):
        print(HEADER)
        print_row.header_done = True
    print(
        f"{row['preset']:9} {row['size']:10} {row['stabilize']:9} {row['network_fps']:8.2f} "
        f"{row['pipeline_fps']:8.2f} {row['ratio']:6.2f} {row['pipeline_peak_rss_mb']:7.0f}"
    )


if __name__ == "__main__":
    main()
