"""Train a feed-forward stylizer for one style, log the run, register the model.

Read top to bottom: config -> data -> networks -> loop -> save/register.
Every field of TrainConfig can be overridden from the CLI (`clipmorph train
--set iters=800 --set style_weight=2e5`) or from `make train ITERS=800`.

Distributed: under `torchrun` (`make train NPROC=2`) every rank runs `train`; the gradients are averaged
by DistributedDataParallel, and only the master process (rank 0) logs, validates, checkpoints, saves and
registers. `batch_size` is the global batch, split evenly across the ranks, and every random number of a
step is seeded by (seed, step), not by rank, so N ranks train the same model as one process (see the
"Distributed training" section at the bottom and docs/training.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from clipmorph.model.artifact import ModelInfo, save_model, sha256_file
from clipmorph.model.device import resolve_device
from clipmorph.model.network import PRESETS, Stylizer
from clipmorph.model.vgg import load_vgg
from clipmorph.settings import get_settings
from clipmorph.training import losses, objective
from clipmorph.training.data import PhotoDataset, centre_crops, find_images, parse_style_spec
from clipmorph.training.overrides import coerce

log = logging.getLogger(__name__)


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    style: str = "kandinsky"  # a style name, an image path, or 'a:0.5,b:0.5' to blend
    name: str = ""  # registered as clipmorph-<name>; defaults to the style spec
    preset: str = "rt_bn"
    # The shipped kandinsky and kanagawa recipe: about 22 min on a 2-core CPU (docs/training.md, third round).
    iters: int = 1000
    batch_size: int = 4  # the global batch: under torchrun each of N ranks takes batch_size / N of it
    size: int = 256  # training crop side
    frame_side: int = 640  # photos are scaled to about this longer side before cropping (0: random resized crops)
    style_size: int = 640  # longer side of the style image: the frame side, so strokes keep their relative size
    lr: float = 2e-3
    # "constant", or "cosine": the learning rate falls from `lr` to `lr * lr_floor` over the run. A function
    # of the step alone (lr_at), so a resumed run, on any number of ranks, picks up the same schedule.
    lr_schedule: str = "constant"
    lr_floor: float = 0.05
    content_weight: float = 0.25
    style_weight: float = 1e5
    # Each style layer's Gram error relative to the painting's (losses.style_loss); the weight for that
    # is about 1e-3 of the unbalanced one.
    style_balanced: bool = False
    # Sliced Wasserstein distance of the output's pixels and VGG features to the painting's (losses.
    # sliced_wasserstein): the whole distribution of colours and strokes, not just its Gram. 0: off.
    distribution_weight: float = 0.0
    distribution_layers: tuple[str, ...] = ("rgb", "relu1_1", "relu2_1", "relu3_1")
    tv_weight: float = 10.0
    # Dense small noise on a moved copy (losses.temporal_noise_loss), at a weight where the term counts:
    # against strokes made of amplified noise, which flicker (docs/training.md, third round).
    temporal_weight: float = 2e4
    # Coarse light/dark layout kept from the photo (losses.structure_loss): against blobs and halos.
    structure_weight: float = 500.0
    structure_cell: int = 16
    noise_amplitude: float = 0.03
    noise_density: float = 1.0
    # The temporal loss's second copy is also moved by up to this many pixels (0: a still picture).
    temporal_shift: int = 8
    content_layer: str = "relu2_2"
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu2_2", "relu3_1")
    style_scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    seed: int = 0  # with the step number, it seeds every step's photos, crops, shift and noise
    checkpoint_every: int = 100
    val_every: int = 200
    val_images: int = 4
    workers: int = 1
    device: str = "auto"
    train_dirs: tuple[str, ...] = ()  # default: <data>/photos minus the validation folder
    val_dir: str = ""  # default: <data>/photos/<settings.eval_photos>, the photos the evaluation grades
    run_dir: str = ""  # default: <runs>/<name>
    # Start from a trained model of the same preset (a folder or registry reference) instead of random
    # weights: its encoder and decoder already paint, so a new style needs a fraction of the steps.
    init_from: str = ""
    register: bool = True
    evaluate: bool = True  # `clipmorph train` then grades the version and runs the promotion gate

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose from {', '.join(LR_SCHEDULES)}")
        self.name = self.name or self.style.replace(",", "+").replace(":", "-")

    @classmethod
    def from_overrides(cls, overrides: dict[str, str]) -> TrainConfig:
        """Build from 'key=value' strings, converting each value to the field's type."""
        return cls(**coerce(cls, overrides, what="training option"))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate for the step after `step` steps have run."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    floor = cfg.lr * cfg.lr_floor
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(step, cfg.iters) / cfg.iters))


def style_targets(
    cfg: TrainConfig, vgg, device
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, list[dict]]:
    """Weighted mean of each style image's multi-scale Gram matrices; with distribution_weight, their features
    for the sliced Wasserstein term (else None); and the images as config.json records them."""
    images = parse_style_spec(cfg.style, get_settings().style_dirs)
    target = objective.style_targets(vgg, images, cfg.style_size, cfg.style_layers, cfg.style_scales, device)
    features = None
    if cfg.distribution_weight > 0:
        features = objective.feature_targets(vgg, images, cfg.style_size, cfg.distribution_layers, device)
    described = [{"name": i.path.stem, "sha256": sha256_file(i.path), "weight": i.weight} for i in images]
    return target, features, described


def initial_model(cfg: TrainConfig) -> Stylizer:
    """A fresh network of the preset, or the weights of `cfg.init_from` (which must have the same layout)."""
    model = Stylizer(PRESETS[cfg.preset])
    if not cfg.init_from:
        return model
    from clipmorph import registry
    from clipmorph.model.artifact import load_model

    source, info = load_model(registry.resolve(cfg.init_from).path)
    if info.net != PRESETS[cfg.preset]:
        raise ValueError(f"init_from {cfg.init_from!r} is not a {cfg.preset!r} network; pass --set preset=...")
    model.load_state_dict(source.state_dict())
    return model


def validation_batch(cfg: TrainConfig, paths: list[Path]) -> torch.Tensor:
    """The first few validation photos, centre-cropped to the training size."""
    return centre_crops(paths[: cfg.val_images], cfg.size)


def contact_sheet(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Inputs on the top row, outputs below: (3, 2H, N*W)."""
    top = torch.cat(list(inputs), dim=2)
    bottom = torch.cat(list(outputs.clamp(0, 1)), dim=2)
    return torch.cat([top, bottom], dim=1)


def save_png(img: torch.Tensor, path: Path) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(img, str(path))


class Checkpoint:
    """Model (un-wrapped, so any number of ranks can resume it) + optimiser + step, saved atomically.

    No RNG state: every step's random numbers come from its own seed (`step_seed`), so a resumed run
    draws what the interrupted one would have drawn. Loads with weights_only=True.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, model, optimizer, step: int, cfg: TrainConfig, elapsed: float) -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "config": json.dumps(asdict(cfg)),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self, model, optimizer) -> tuple[int, float]:
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), float(state.get("elapsed", 0.0))


@dataclass
class TrainResult:
    model_dir: Path
    run_id: str | None
    version: str | None
    registered_name: str | None
    losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # loss terms of each step run in this process
    metrics: dict[str, float] = field(default_factory=dict)  # evaluation of the registered version
    champion: bool = False  # whether this version became the champion


@dataclass(frozen=True)
class TrainStep:
    """What `train(on_step=...)` is told after each step (on the master process only)."""

    step: int
    total: int
    losses: dict[str, float]
    seconds: float  # since the run started, including the time before a resume
    steps_per_second: float  # of the steps run in this process
    validation: Path | None = None  # the validation sheet rendered at this step, if one was

    @property
    def eta_seconds(self) -> float | None:
        return (self.total - self.step) / self.steps_per_second if self.steps_per_second > 0 else None


def train(cfg: TrainConfig, on_step: Callable[[TrainStep], None] | None = None) -> TrainResult:
    """Train in this process, or as one rank of a torchrun job (see "Distributed training" below).

    `on_step` is called after every step on the master process (a job's progress); an exception it
    raises stops the run as an interrupt would (the MLflow run is closed as killed, the checkpoint kept).
    """
    with torchrun_process_group(resolve_device(cfg.device)) as ranks:
        return _train(cfg, ranks, on_step)


def _train(cfg: TrainConfig, ranks: Ranks, on_step: Callable[[TrainStep], None] | None = None) -> TrainResult:
    settings = get_settings()
    device = ranks.device
    master_process = ranks.rank == 0  # logs, validates, checkpoints, saves, registers and evaluates
    local_batch = ranks.local_batch(cfg.batch_size)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    run_dir = Path(cfg.run_dir) if cfg.run_dir else settings.runs_dir / cfg.name
    run_dir.mkdir(parents=True, exist_ok=True)
    cuda = device.type == "cuda"

    # Data.
    photos = settings.photos_dir
    val_dir = Path(cfg.val_dir) if cfg.val_dir else photos / settings.eval_photos
    train_roots = [Path(d) for d in cfg.train_dirs] or [photos]
    train_paths = find_images(train_roots, exclude=[val_dir])
    val_paths = find_images([val_dir]) if val_dir.exists() else train_paths
    dataset = PhotoDataset(train_paths, cfg.size, cfg.frame_side)

    # Networks.
    vgg = load_vgg(settings.vgg_weights_path).to(device)
    vgg.check([cfg.content_layer, *cfg.style_layers])
    model = ranks.prepare(initial_model(cfg)).to(device)  # batch norm synchronised across GPU ranks
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    style_grams, style_features, style_desc = style_targets(cfg, vgg, device)
    val_batch = validation_batch(cfg, val_paths).to(device)

    # Every rank loads the checkpoint (one machine: the run folder is shared), before DDP wraps the model.
    ckpt = Checkpoint(run_dir / "checkpoint.pt")
    step, elapsed = ckpt.load(model, optimizer) if ckpt.path.exists() else (0, 0.0)
    resumed_from = step
    net = ranks.wrap(model)  # forward and backward through `net`; checkpoints and validation use `model`
    if master_process:
        log.info("training %s: ranks: %d, global batch %d (%d per rank)", cfg.name, ranks.world_size,
                 cfg.batch_size, local_batch)  # fmt: skip
        if step:
            log.info("resuming %s from step %d", run_dir, step)
    # This rank's share of the global batch of each remaining step (sampled with replacement).
    sampler = GlobalBatchSampler(len(dataset), cfg.batch_size, step, cfg.iters, cfg.seed, ranks)
    loader = DataLoader(SeededCrops(dataset), batch_sampler=sampler, num_workers=cfg.workers)

    loggers = RunLoggers.start(cfg, run_dir, resume=step > 0) if master_process else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    terms: dict[str, float] = {}
    history: list[dict[str, float]] = []
    t0 = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.iters, initial=step, desc=f"train {cfg.name}", unit="it", dynamic_ncols=True,
               disable=not master_process)  # fmt: skip
    net.train()
    try:
        t_start = time.perf_counter()
        for x in loader:
            x = x.to(device, non_blocking=True)
            if cuda:
                x = x.to(memory_format=torch.channels_last)
            torch.manual_seed(step_seed(cfg.seed, step, STREAM_LOSSES))  # the temporal loss's shift and noise
            with autocast:
                weighted = loss_terms(net, vgg, x, cfg, style_grams, style_features)
                total = sum(weighted.values())
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step)
            total.backward()  # DDP averages the gradients over the ranks here
            optimizer.step()
            step += 1

            terms = ranks.mean({"loss": total} | weighted)  # the global batch's losses, on every rank
            history.append(terms)
            seconds = time.perf_counter() - t0
            images_per_s = (step - resumed_from) * cfg.batch_size / (time.perf_counter() - t_start)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in terms.items()} | {"img/s": f"{images_per_s:.1f}"})
            if master_process:
                loggers.log_metrics(terms | {"seconds": seconds}, step)
                if step % cfg.checkpoint_every == 0 or step == cfg.iters:
                    ckpt.save(model, optimizer, step, cfg, seconds)
                validation = None
                if step % cfg.val_every == 0 or step == cfg.iters:
                    validation = render_validation(model, val_batch, run_dir / f"val_{step:06d}.png")
                    loggers.log_validation(validation, step)
                if on_step is not None:
                    rate = (step - resumed_from) / max(time.perf_counter() - t_start, 1e-9)
                    on_step(TrainStep(step, cfg.iters, terms, seconds, rate, validation))
            if step >= cfg.iters:
                break
    except BaseException:
        if loggers is not None:
            loggers.abort()
        raise
    bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    model_dir = run_dir / "model"
    result = TrainResult(model_dir, None, None, None, terms, seconds, resumed_from, history)
    if not master_process:
        ranks.barrier()  # returns once rank 0 has saved the model
        return result

    results = {
        "final_losses": terms,
        "seconds": round(seconds, 1),
        "steps": step,
        "resumed_from": resumed_from,
        "ranks": ranks.world_size,
        "vgg": Path(settings.vgg_weights_path).name,
        "unreadable_images": len(dataset.unreadable),
    }
    info = ModelInfo(
        net=PRESETS[cfg.preset],
        style={"spec": cfg.style, "name": cfg.name, "images": style_desc},
        train=asdict(cfg) | results,
        # Inference scales frames to the size the model learned its strokes at (inference.network_size).
        recommended={"frame_side": cfg.frame_side} if cfg.frame_side else {},
    )
    save_model(model, info, model_dir)
    ranks.barrier()
    ckpt.path.unlink(missing_ok=True)  # finished: the next `make train` starts a new run
    loggers.finish_model(model_dir, result, cfg)
    return result


def loss_terms(
    model: nn.Module,
    vgg,
    x: torch.Tensor,
    cfg: TrainConfig,
    style_grams: dict[str, torch.Tensor],
    style_features: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted loss terms for one batch: content, multi-scale style, TV, noise-temporal.

    Under DDP `model` is called twice (the batch, then the temporal loss's moved copy) before one
    backward: every parameter is used in both, and the two gradients reach each parameter's hook
    summed, so DDP reduces each once (tests/test_train_ddp.py compares with one process).
    """
    y = model(x)
    perceptual = objective.perceptual_losses(
        vgg, y, objective.content_target(vgg, x, cfg.content_layer), style_grams,
        cfg.content_layer, cfg.style_layers, cfg.style_scales, cfg.style_balanced, style_features,
    )  # fmt: skip
    terms = {
        "content": cfg.content_weight * perceptual["content"],
        "style": cfg.style_weight * perceptual["style"],
        "tv": cfg.tv_weight * losses.tv_loss(y.float()),
    }
    if "distribution" in perceptual:
        terms["distribution"] = cfg.distribution_weight * perceptual["distribution"]
    if cfg.structure_weight > 0:
        terms["structure"] = cfg.structure_weight * losses.structure_loss(y.float(), x.float(), cfg.structure_cell)
    if cfg.temporal_weight > 0:
        terms["temporal"] = cfg.temporal_weight * losses.temporal_noise_loss(
            model, x, y, cfg.noise_amplitude, cfg.noise_density, cfg.temporal_shift
        )
    return terms


def render_validation(model: Stylizer, batch: torch.Tensor, path: Path) -> Path:
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(batch)
        model.train(was_training)
    save_png(contact_sheet(batch.cpu(), out.float().cpu()), path)
    return path


class RunLoggers:
    """W&B (offline by default) and MLflow, side by side; either may be switched off."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, wandb_run, mlflow_run_id: str | None) -> None:
        self.cfg, self.run_dir, self.wandb_run, self.run_id = cfg, run_dir, wandb_run, mlflow_run_id

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: Path, resume: bool) -> RunLoggers:
        import mlflow

        from clipmorph import registry

        settings = get_settings()
        # On resume, continue the same W&B and MLflow runs instead of starting new ones.
        ids_file = run_dir / "run_ids.json"
        ids = json.loads(ids_file.read_text()) if resume and ids_file.exists() else {}
        wandb_run = None
        mode = os.environ.get("WANDB_MODE", settings.wandb_mode)
        if mode != "disabled":
            import wandb

            settings.var_dir.mkdir(parents=True, exist_ok=True)
            wandb_run = wandb.init(
                project=settings.wandb_project, name=cfg.name, config=asdict(cfg), mode=mode,
                dir=str(settings.var_dir), resume="allow", id=ids.get("wandb"),
            )  # fmt: skip
            ids["wandb"] = wandb_run.id
        registry.configure(settings)
        run = mlflow.start_run(run_id=ids.get("mlflow"), run_name=cfg.name)
        ids["mlflow"] = run.info.run_id
        ids_file.write_text(json.dumps(ids))
        if not resume:
            mlflow.log_params({k: str(v) for k, v in asdict(cfg).items()})
        return cls(cfg, run_dir, wandb_run, run.info.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import mlflow

        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if step % 10 == 0 or step == self.cfg.iters:
            mlflow.log_metrics(metrics, step=step)

    def log_validation(self, path: Path, step: int) -> None:
        import mlflow

        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({"validation": wandb.Image(str(path))}, step=step)
        mlflow.log_artifact(str(path), "validation")

    def abort(self) -> None:
        """Close both runs as killed so a resumed run can reopen them."""
        import mlflow

        mlflow.end_run(status="KILLED")
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1)

    def finish_model(self, model_dir: Path, result: TrainResult, cfg: TrainConfig) -> None:
        import mlflow

        from clipmorph import registry

        mlflow.log_metrics({f"final_{k}": v for k, v in result.losses.items()} | {"train_seconds": result.seconds})
        result.run_id = self.run_id
        if cfg.register:
            client = registry.configure()
            mv = registry.register_model_dir(client, model_dir, cfg.name, self.run_id)
            result.version, result.registered_name = str(mv.version), mv.name
        mlflow.end_run()
        if self.wandb_run is not None:
            self.wandb_run.finish()


# Distributed training (torchrun). Everything that knows about ranks is here; a plain `clipmorph train` is
# rank 0 of 1, and these helpers then do nothing.
#
# - Global batch: `batch_size` is split evenly across the ranks, and DDP averages the gradients, so the
#   update equals one process's on the whole batch (every loss term is a mean over the images).
# - Random numbers: step s draws its photos and crops from step_seed(seed, s, STREAM_DATA) and its
#   temporal shift and noise from step_seed(seed, s, STREAM_LOSSES), the same seeds on every rank; rank r
#   takes the r-th slice of the global batch. So the photos, crops and shift do not depend on the number
#   of ranks, and a run resumed from a checkpoint, with any number of ranks, continues as it would have.
#   The one exception is the temporal loss's noise: each rank draws it for its slice from the same seed,
#   so with N ranks the N slices share one noise field (on different photos); tests switch noise off.
# - Batch norm (rt_bn): on GPUs it becomes SyncBatchNorm (statistics over the global batch, as one
#   process); PyTorch has no SyncBatchNorm on CPU, so CPU ranks normalise over their own slice.

STREAM_DATA, STREAM_LOSSES = 0, 1


def step_seed(seed: int, step: int, stream: int) -> int:
    """The seed of one step's random numbers of one kind: the same on every rank."""
    return seed * 2**33 + step * 2 + stream


@dataclass
class Ranks:
    """Where this process stands in a torchrun job: rank 0 of 1 outside one."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def local_batch(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ValueError(f"batch_size {batch_size} does not split evenly across {self.world_size} ranks")
        return batch_size // self.world_size

    def prepare(self, model: nn.Module) -> nn.Module:
        """Batch norm over the global batch on GPU ranks (torch's SyncBatchNorm runs on GPUs only)."""
        if self.world_size > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: same parameters, same state keys
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around the model under torchrun; the model itself otherwise."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each value averaged over the ranks (for the log: the loss of the global batch)."""
        stacked = torch.stack([v.detach().float() for v in values.values()])
        if self.distributed:
            dist.all_reduce(stacked)  # gloo has no AVG: sum, then divide
            stacked /= self.world_size
        return dict(zip(values, stacked.tolist(), strict=True))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


@contextmanager
def torchrun_process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the torchrun job this process runs in (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR in the
    environment): NCCL on GPUs, gloo on CPUs. Without torchrun, rank 0 of 1 and no process group."""
    if "RANK" not in os.environ or dist.is_initialized():
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        yield Ranks(device, rank, world)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(device, dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """This rank's slice of the global batch of each step from `start` to `stop`, as (photo index, crop seed)."""

    def __init__(self, n_photos: int, batch_size: int, start: int, stop: int, seed: int, ranks: Ranks) -> None:
        self.n_photos, self.batch_size, self.start, self.stop, self.seed = n_photos, batch_size, start, stop, seed
        per_rank = ranks.local_batch(batch_size)
        self.mine = slice(ranks.rank * per_rank, (ranks.rank + 1) * per_rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            g = torch.Generator().manual_seed(step_seed(self.seed, step, STREAM_DATA))
            photos = torch.randint(self.n_photos, (self.batch_size,), generator=g).tolist()
            crops = torch.randint(2**62, (self.batch_size,), generator=g).tolist()
            yield list(zip(photos, crops, strict=True))[self.mine]


class SeededCrops(Dataset):
    """dataset[(index, seed)]: the photo's random scale, crop and flip drawn from `seed` alone, whichever
    rank or loader worker makes it."""

    def __init__(self, dataset: PhotoDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]
