"""Parameter sweeps over `optimize` or a short `train`: one MLflow parent run, one child run per grid point.

The parent run holds the grid and a labelled contact sheet of every point's
result; each child is an ordinary optimise/train run tagged `mlflow.parentRunId`,
so the MLflow UI nests them and any point can be replayed from its own record.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from clipmorph.settings import get_settings
from clipmorph.training.contact_sheet import tile
from clipmorph.training.optimize import RUN_KIND_TAG, OptimizeConfig, run_optimize, save_image

log = logging.getLogger(__name__)

KINDS = ("optimize", "train")
MIX = "mix"  # pseudo-parameter: the share of the second of two mixed styles


@dataclass
class SweepPoint:
    values: dict[str, str]  # the swept parameters at this point
    run_id: str | None
    image: Path

    @property
    def label(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


@dataclass
class SweepResult:
    parent_run_id: str
    points: list[SweepPoint]
    sheet: Path


def parse_param(spec: str) -> tuple[str, list[str]]:
    """'style_weight=1e4,1e5' -> ('style_weight', ['1e4', '1e5']); ';' separates values that hold commas."""
    key, sep, raw = spec.partition("=")
    values = [v.strip() for v in raw.split(";" if ";" in raw else ",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise ValueError(f"--param takes name=value1,value2,..., got {spec!r}")
    return key.strip(), values


def mix_values(steps: int) -> list[str]:
    if steps < 2:
        raise ValueError("a style mix needs at least 2 steps")
    return [f"{i / (steps - 1):.4g}" for i in range(steps)]


def mix_spec(first: str, second: str, ratio: float) -> str:
    """Weight 1-ratio on `first`, ratio on `second`; a style with weight 0 is left out (weights must be > 0)."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"mix ratio must be in [0, 1], got {ratio}")
    parts = [(first, 1 - ratio), (second, ratio)]
    return ",".join(f"{name}:{w:.6g}" for name, w in parts if w > 0)


def grid(params: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every combination, the last parameter varying fastest."""
    keys = list(params)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*params.values())]


def point_overrides(values: dict[str, str], mix_styles: tuple[str, str] | None) -> dict[str, str]:
    """Swept values as config overrides, the mix ratio turned into a style spec."""
    overrides = dict(values)
    if MIX in overrides:
        if mix_styles is None:
            raise ValueError("sweeping 'mix' needs the two styles to mix (--mix A,B)")
        overrides["style"] = mix_spec(*mix_styles, float(overrides.pop(MIX)))
    return overrides


def run_sweep(
    kind: str,
    base: dict[str, str],
    params: dict[str, list[str]],
    out_dir: Path | None = None,
    mix_styles: tuple[str, str] | None = None,
    name: str | None = None,
    preview: Path | None = None,
    cell: int = 256,
) -> SweepResult:
    """Run every grid point as a child of one parent run; write and log the contact sheet."""
    from clipmorph import registry

    if kind not in KINDS:
        raise ValueError(f"unknown sweep kind {kind!r}; choose from {', '.join(KINDS)}")
    if not params:
        raise ValueError("nothing to sweep: give at least one --param name=v1,v2 (or --mix A,B)")
    settings = get_settings()
    name = name or f"sweep-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir = Path(out_dir or settings.runs_dir / "sweeps" / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = grid(params)
    # Build every config first so a typo fails before any run starts.
    configs = [point_overrides(values, mix_styles) for values in points]
    for overrides in configs:
        _check_config(kind, base | overrides)

    client = registry.configure()
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    # Created through the client, not as the active run: `train` starts its own top-level run.
    parent = client.create_run(experiment.experiment_id, run_name=name, tags={RUN_KIND_TAG: "sweep"})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "kind", kind)
    for key, values in params.items():
        client.log_param(parent_id, f"sweep.{key}", ";".join(values))
    for key, value in base.items():
        client.log_param(parent_id, f"base.{key}", value)
    if mix_styles:
        client.log_param(parent_id, "mix_styles", ",".join(mix_styles))
    done: list[SweepPoint] = []
    try:
        for i, (values, overrides) in enumerate(zip(points, configs, strict=True)):
            log.info("sweep point %d/%d: %s", i + 1, len(points), values)
            label = " ".join(f"{k}={v}" for k, v in values.items())
            tags = {"clipmorph.training.sweep": name, "clipmorph.sweep_point": label}
            run = _run_optimize_point if kind == "optimize" else _run_train_point
            run_id, image = run(base | overrides, out_dir / f"{i:02d}", parent_id, f"{name}-{i:02d}", tags, preview)
            done.append(SweepPoint(values, run_id, image))
        columns = len(next(reversed(params.values()))) if len(params) > 1 else len(points)
        sheet = tile([p.image for p in done], [p.label for p in done], columns, cell)
        sheet_path = out_dir / "contact_sheet.png"
        sheet.save(sheet_path)
        client.log_artifact(parent_id, str(sheet_path))
    except BaseException:
        import mlflow

        if mlflow.active_run() is not None:  # a child that died mid-way
            mlflow.end_run("FAILED")
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return SweepResult(parent_id, done, sheet_path)


def _check_config(kind: str, overrides: dict[str, str]) -> None:
    if kind == "optimize":
        OptimizeConfig.from_overrides(overrides)
    else:
        from clipmorph.training.train import TrainConfig

        TrainConfig.from_overrides(overrides)


def _run_optimize_point(
    overrides: dict[str, str], stem: Path, parent_id: str, run_name: str, tags: dict[str, str], preview: Path | None
) -> tuple[str, Path]:
    output = stem.with_suffix(".png")
    result = run_optimize(OptimizeConfig.from_overrides(overrides), output, parent_id, run_name, tags)
    return result.run_id, output


def _run_train_point(
    overrides: dict[str, str], stem: Path, parent_id: str, run_name: str, tags: dict[str, str], preview: Path | None
) -> tuple[str, Path]:
    from mlflow import MlflowClient

    from clipmorph.training.train import TrainConfig, train

    fixed = {"register": "false", "evaluate": "false", "run_dir": str(stem), "name": run_name}
    result = train(TrainConfig.from_overrides(overrides | fixed))
    client = MlflowClient(get_settings().tracking_uri)
    # train() opens its own top-level run; nest it under the sweep afterwards.
    for key, value in (tags | {"mlflow.parentRunId": parent_id}).items():
        client.set_tag(result.run_id, key, value)
    if preview is None:  # the last validation render (inputs above, outputs below)
        return result.run_id, sorted(stem.glob("val_*.png"))[-1]
    return result.run_id, stylize_preview(result.model_dir, preview, stem.with_name(f"{stem.name}.png"))


def stylize_preview(model_dir: Path, photo: Path, output: Path, max_side: int = 384) -> Path:
    """The trained model applied to one photo (longer side `max_side`), saved to `output`."""
    from clipmorph.model.artifact import load_model
    from clipmorph.training.data import load_rgb, to_tensor

    model, _ = load_model(model_dir)
    x = to_tensor(load_rgb(photo)).unsqueeze(0)
    x = F.interpolate(x, scale_factor=min(1.0, max_side / max(x.shape[-2:])), mode="bilinear", antialias=True)
    with torch.no_grad():
        y = model(x)[0].clamp(0, 1)
    return save_image(y, output)
