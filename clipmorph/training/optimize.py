"""Per-image style transfer by optimisation (Gatys et al. 2016), recorded as MLflow runs.

The output image itself is optimised (L-BFGS or Adam) against the same VGG
features and losses the feed-forward training uses. Every logged run holds the
complete parameter set, so `config_from_run(run_id)` rebuilds it exactly.
Read top to bottom: config -> targets -> objective -> loop -> record/replay.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from clipmorph.model.artifact import sha256_file
from clipmorph.model.device import resolve_device
from clipmorph.model.vgg import VGGFeatures, load_vgg
from clipmorph.settings import get_settings
from clipmorph.training import losses
from clipmorph.training.data import load_rgb, parse_style_spec, to_tensor
from clipmorph.training.objective import content_target, perceptual_losses, style_targets
from clipmorph.training.overrides import coerce

log = logging.getLogger(__name__)

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
RUN_KIND_TAG = "clipmorph.kind"


@dataclass
class OptimizeConfig:
    content: str  # path of the content photo
    style: str  # a style name, an image path, or 'a:0.7,b:0.3' to mix
    size: int = 512  # longer side of the result
    optimizer: str = "lbfgs"
    init: str = "content"  # start from the content photo or from uniform noise
    iters: int = 300  # per resolution level
    lr: float = 0.0  # 0 = the optimiser's default (DEFAULT_LR)
    content_weight: float = 1.0
    style_weight: float = 3e4
    tv_weight: float = 3.0
    content_layer: str = "relu3_1"
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu2_2", "relu3_1")
    # The offline VGG stops at relu3_1 (small receptive field), so Grams at coarser
    # scales stand in for deeper layers to carry larger brush strokes.
    style_scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    style_size: int = 0  # longer side of each style image; 0 = the result's longer side
    levels: int = 1  # coarse-to-fine: levels-1 half-resolution passes before the full one
    seed: int = 0
    save_every: int = 0  # write an intermediate image every N iterations (0 = never)
    gif: bool = True  # assemble the intermediate images into an animated GIF
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose from {', '.join(INITS)}")
        if self.levels < 1 or self.iters < 1 or self.size < 8:
            raise ValueError("levels and iters must be >= 1 and size >= 8")

    @property
    def learning_rate(self) -> float:
        return self.lr or DEFAULT_LR[self.optimizer]

    @classmethod
    def from_overrides(cls, overrides: dict[str, str], base: OptimizeConfig | None = None) -> OptimizeConfig:
        """Build from 'key=value' strings (CLI, sweeps, MLflow params), converting each to the field's type."""
        if base is not None:
            return replace(base, **coerce(cls, overrides))
        missing = [name for name in ("content", "style") if name not in overrides]
        if missing:
            raise ValueError(f"an optimisation needs {' and '.join(missing)}")
        return cls(**coerce(cls, overrides))

    def to_params(self) -> dict[str, str]:
        """Every field as a string that `from_overrides` turns back into the same value."""
        return {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v) for k, v in asdict(self).items()}


def resolve_paths(cfg: OptimizeConfig) -> OptimizeConfig:
    """Content and style names -> absolute paths, so a record names the exact files it used."""
    content = Path(cfg.content).expanduser()
    if not content.is_file():
        raise FileNotFoundError(f"content image {content} not found")
    styles = parse_style_spec(cfg.style, get_settings().style_dirs)
    # Keep the weights as given (not normalised) so the spec reads like what the user typed.
    given = [part.rpartition(":")[2] if ":" in part else "1" for part in cfg.style.split(",") if part.strip()]
    spec = ",".join(f"{os.path.abspath(s.path)}:{w}" for s, w in zip(styles, given, strict=True))
    return replace(cfg, content=os.path.abspath(content), style=spec)


@dataclass
class OptimizeResult:
    image: torch.Tensor  # (3, H, W) in [0, 1]
    initial: dict[str, float]
    final: dict[str, float]
    seconds: float
    iterations: int
    frames: list[Path] = field(default_factory=list)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    run_id: str | None = None
    output: Path | None = None


def level_shapes(content_hw: tuple[int, int], size: int, levels: int) -> list[tuple[int, int]]:
    """(H, W) per level, coarsest first; the last has longer side `size`, each earlier one half the next."""
    h, w = content_hw
    shapes = []
    for level in range(levels):
        side = size / 2 ** (levels - 1 - level)
        scale = side / max(h, w)
        shapes.append((max(8, round(h * scale)), max(8, round(w * scale))))
    return shapes


class Objective:
    """Weighted content + style + TV loss of an image against fixed targets."""

    def __init__(self, vgg: VGGFeatures, cfg: OptimizeConfig, content: torch.Tensor, grams: dict[str, torch.Tensor]):
        self.vgg, self.cfg, self.grams = vgg, cfg, grams
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=content.device.type == "cuda")
        with self.autocast:
            self.content_feat = content_target(vgg, content, cfg.content_layer).float()

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with self.autocast:
            perceptual = perceptual_losses(
                self.vgg, x, self.content_feat, self.grams, cfg.content_layer, cfg.style_layers, cfg.style_scales
            )
        style, content = perceptual["style"], perceptual["content"]
        tv = losses.tv_loss(x)
        terms = {
            "content": cfg.content_weight * content,
            "style": cfg.style_weight * style,
            "tv": cfg.tv_weight * tv,
        }
        return {"total": sum(terms.values()), **terms, "style_unweighted": style}


def make_optimizer(cfg: OptimizeConfig, x: torch.Tensor) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam([x], lr=cfg.learning_rate)
    # One L-BFGS iteration per step() so progress, snapshots and the iteration count are exact;
    # the curvature history lives in the optimiser state and carries across steps.
    return torch.optim.LBFGS([x], lr=cfg.learning_rate, max_iter=1, history_size=50)


def floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in terms.items()}


def save_image(img: torch.Tensor, path: Path) -> Path:
    from torchvision.transforms.v2.functional import to_pil_image  # torchvision: only when an image is saved

    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil_image(img.detach().clamp(0, 1).cpu()).save(path)
    return path


def save_gif(frames: list[Path], path: Path, size: tuple[int, int], ms_per_frame: int = 120) -> Path:
    """Frames (possibly of several resolutions) resized to `size` (W, H), the last one held longer."""
    images = [Image.open(p).convert("RGB").resize(size, Image.LANCZOS) for p in frames]
    durations = [ms_per_frame] * (len(images) - 1) + [ms_per_frame * 10]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


class Progress:
    """Counts iterations across levels: tqdm bar, loss history, snapshots every `save_every` steps."""

    def __init__(self, total: int, save_every: int, frames_dir: Path | None) -> None:
        self.bar = tqdm(total=total, desc="optimize", unit="it", dynamic_ncols=True)
        self.save_every, self.frames_dir = save_every, frames_dir
        self.step = 0
        self.initial: dict[str, float] = {}
        self.history: list[tuple[int, dict[str, float]]] = []
        self.frames: list[Path] = []

    def __call__(self, x: torch.Tensor, terms: dict[str, float]) -> None:
        self.step += 1
        self.initial = self.initial or terms
        self.history.append((self.step, terms))
        self.bar.update(1)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items() if k != "style_unweighted"})
        if self.frames_dir is not None and self.save_every and self.step % self.save_every == 0:
            self.frames.append(save_image(x[0], self.frames_dir / f"{self.step:05d}.png"))


def optimize_level(cfg: OptimizeConfig, objective: Objective, x: torch.Tensor, progress: Progress) -> torch.Tensor:
    """`cfg.iters` optimiser steps on x (updated in place, kept in [0, 1])."""
    optimizer = make_optimizer(cfg, x)
    latest: dict[str, float] = {}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        terms = objective(x)
        terms["total"].backward()
        latest.update(floats(terms))
        return terms["total"]

    for _ in range(cfg.iters):
        optimizer.step(closure)
        with torch.no_grad():
            x.clamp_(0, 1)
        progress(x, dict(latest))
    return x


def optimize(cfg: OptimizeConfig, frames_dir: Path | None = None, vgg: VGGFeatures | None = None) -> OptimizeResult:
    """Run the optimisation; intermediate images go to `frames_dir` when cfg.save_every > 0."""
    settings = get_settings()
    device = resolve_device(cfg.device)
    styles = parse_style_spec(cfg.style, settings.style_dirs)
    vgg = (vgg or load_vgg(settings.vgg_weights_path)).to(device)
    vgg.check([cfg.content_layer, *cfg.style_layers])
    content_full = to_tensor(load_rgb(Path(cfg.content))).unsqueeze(0).to(device)
    shapes = level_shapes(tuple(content_full.shape[-2:]), cfg.size, cfg.levels)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)

    t0 = time.perf_counter()
    progress = Progress(cfg.iters * cfg.levels, cfg.save_every, frames_dir)
    x: torch.Tensor | None = None
    for shape in shapes:
        content = F.interpolate(content_full, size=shape, mode="bilinear", antialias=True).clamp(0, 1)
        # Style images scale with the level so brush strokes keep their size relative to the result.
        style_side = round((cfg.style_size or cfg.size) * max(shape) / max(shapes[-1]))
        grams = style_targets(vgg, styles, style_side, cfg.style_layers, cfg.style_scales, device)
        objective = Objective(vgg, cfg, content, grams)
        if x is None:
            x = content.clone() if cfg.init == "content" else torch.rand(content.shape, generator=generator).to(device)
        else:  # coarse-to-fine: continue from the upsampled coarser result
            x = F.interpolate(x, size=shape, mode="bicubic").clamp(0, 1)
        x = optimize_level(cfg, objective, x.detach().contiguous().requires_grad_(True), progress)
    progress.bar.close()
    with torch.no_grad():
        final = floats(objective(x))
    seconds = time.perf_counter() - t0
    return OptimizeResult(
        x.detach()[0].cpu(), progress.initial, final, seconds, progress.step, progress.frames, progress.history
    )


def reference_style_loss(photo: Path, style_spec: str, size: int, iters: int, **overrides: object) -> float:
    """The (unweighted) style loss that optimisation reaches on `photo`: a floor for a trained model's.

    The loss is the same one training uses: the sum over the training's style layers
    and scales of the MSE between Gram matrices, style images scaled to the training's
    `style_size`; any OptimizeConfig field can be overridden to match another setup.
    """
    from clipmorph.training.train import TrainConfig

    train_cfg = TrainConfig(style=style_spec, register=False, evaluate=False)
    cfg = OptimizeConfig(
        content=str(photo),
        style=style_spec,
        size=size,
        iters=iters,
        style_layers=train_cfg.style_layers,
        style_scales=train_cfg.style_scales,
        style_size=train_cfg.style_size,
    )
    cfg = replace(cfg, **overrides)
    return optimize(cfg).final["style_unweighted"]


# --- MLflow record and replay ---------------------------------------------------------------


def run_optimize(
    cfg: OptimizeConfig,
    output: Path,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> OptimizeResult:
    """Optimise, write `output` (+ frames and GIF), and record everything as one MLflow run."""
    import mlflow

    from clipmorph import registry

    cfg = resolve_paths(cfg)
    output = Path(output)
    registry.configure()
    run_tags = {RUN_KIND_TAG: "optimize", "clipmorph.output": str(output.resolve())} | (tags or {})
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    with mlflow.start_run(run_name=run_name or f"optimize-{Path(cfg.content).stem}", tags=run_tags) as run:
        mlflow.log_params(cfg.to_params() | input_hashes(cfg))
        frames_dir = output.with_name(f"{output.stem}_frames") if cfg.save_every else None
        result = optimize(cfg, frames_dir)
        save_image(result.image, output)
        for step, terms in result.history:
            if step % 10 == 0 or step == result.iterations:
                mlflow.log_metrics(terms, step=step)
        mlflow.log_metrics(
            {f"final_{k}": v for k, v in result.final.items()}
            | {f"initial_{k}": v for k, v in result.initial.items()}
            | {"seconds": result.seconds}
        )
        mlflow.log_artifact(str(output))
        if result.frames and cfg.gif:
            # The result closes the animation unless the last snapshot already is the result.
            last = [] if result.iterations % cfg.save_every == 0 else [output]
            size = (result.image.shape[2], result.image.shape[1])
            mlflow.log_artifact(str(save_gif([*result.frames, *last], output.with_suffix(".gif"), size)))
    result.run_id, result.output = run.info.run_id, output
    return result


def input_hashes(cfg: OptimizeConfig) -> dict[str, str]:
    """sha256 of the content and style files, so a replay can tell when a file changed under its path."""
    styles = parse_style_spec(cfg.style, get_settings().style_dirs)
    return {
        "content_sha256": sha256_file(Path(cfg.content)),
        "style_sha256": ",".join(sha256_file(s.path) for s in styles),
    }


def recorded_run(run_id: str):
    """The MLflow run `run_id`, checked to be an optimisation record."""
    from mlflow.exceptions import MlflowException

    from clipmorph import registry

    client = registry.configure()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise LookupError(f"no MLflow run {run_id!r} in {get_settings().tracking_uri}") from None
    if run.data.tags.get(RUN_KIND_TAG) != "optimize":
        raise LookupError(f"run {run_id} is not a `clipmorph optimize` run")
    return run


def config_from_run(run_id: str, overrides: dict[str, str] | None = None) -> tuple[OptimizeConfig, Path]:
    """The recorded config (plus optional changes) and the recorded output path."""
    run = recorded_run(run_id)
    names = {f.name for f in fields(OptimizeConfig)}
    params = {k: v for k, v in run.data.params.items() if k in names}
    cfg = OptimizeConfig.from_overrides(params | (overrides or {}))
    recorded = {k: run.data.params.get(k) for k in ("content_sha256", "style_sha256")}
    if not {"content", "style"} & set(overrides or {}) and input_hashes(cfg) != recorded:
        log.warning("content or style files changed since run %s; the result will differ", run_id)
    return cfg, Path(run.data.tags["clipmorph.output"])
