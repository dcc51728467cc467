"""`clipmorph evaluate`, `clipmorph promote`, `clipmorph models`: measuring and choosing registered models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from clipmorph.cli.app import app, fail
from clipmorph.evaluation.metric_names import ARTEFACT, CONTENT, CPU_FPS, STYLE, WARPING

if TYPE_CHECKING:
    from mlflow import MlflowClient

KEY_COLUMNS = (STYLE, CONTENT, ARTEFACT, WARPING, CPU_FPS)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _print(table: Table) -> None:
    Console(width=160).print(table)


def _registry() -> MlflowClient:
    """The registry client, with the built-in models registered if it lacks them (a fresh clone has them)."""
    from clipmorph import registry

    client = registry.configure()
    registry.register_builtins(client)
    return client


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """One row per metric, one column per set of metrics (e.g. model / baseline, candidate / champion)."""
    table = Table(title=title)
    table.add_column("metric")
    for heading in columns:
        table.add_column(heading, justify="right")
    keys = list(dict.fromkeys(k for metrics in columns.values() for k in metrics))
    for key in keys:
        table.add_row(key, *(_fmt(metrics.get(key)) for metrics in columns.values()))
    return table


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Model folder or registry ref (kandinsky, kandinsky@champion, kandinsky/3)."),
    baseline: bool = typer.Option(False, "--baseline", help="Also measure with inference-time stabilisation off."),
    full: bool = typer.Option(False, "--full", help="More photos, frames and timing iterations (slower)."),
    style: str | None = typer.Option(None, help="Style spec for the style loss when config.json records none."),
    log: bool = typer.Option(True, help="Log the metrics on the registered version's MLflow run."),
    record: bool = typer.Option(
        False, "--record", help="Store the metrics in a model folder's config.json (how built-in models carry them)."
    ),
    device: str | None = typer.Option(None, help="cpu or cuda for the losses and clip (default: cuda if present)."),
) -> None:
    """Style/content loss on validation photos, warping error on a clip, frames/s at 640x360."""
    from clipmorph import registry
    from clipmorph.evaluation.evaluate import BASELINE_PREFIX, log_metrics
    from clipmorph.evaluation.evaluate import evaluate as run_evaluation

    try:
        resolved = registry.resolve(model)
        start = time.perf_counter()
        metrics = run_evaluation(resolved.path, baseline=baseline, quick=not full, style=style, device=device)
    except (registry.ModelNotFoundError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    seconds = time.perf_counter() - start
    columns = {"model": {k: v for k, v in metrics.items() if not k.startswith(BASELINE_PREFIX)}}
    if baseline:
        columns["no stabilisation"] = {
            k.removeprefix(BASELINE_PREFIX): v for k, v in metrics.items() if k.startswith(BASELINE_PREFIX)
        }
    label = f"{resolved.name} v{resolved.version}" if resolved.name else str(resolved.path)
    _print(metrics_table(f"{label} ({'full' if full else 'quick'} evaluation, {seconds:.1f} s)", columns))
    if record and not resolved.name:
        record_metrics(resolved.path, metrics)
        typer.echo(f"recorded in {resolved.path / 'config.json'}")
    if log and resolved.name:
        log_metrics(registry.configure(), resolved.name, resolved.version, metrics, "full" if full else "quick")
        typer.echo(f"logged to {resolved.name} version {resolved.version}")


def record_metrics(model_dir, metrics: dict[str, float]) -> None:
    """Write metrics into config.json's train.metrics; register_builtins() logs them on registration."""
    import json

    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("train", {})["metrics"] = {k: round(v, 6) for k, v in metrics.items()}
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


@app.command()
def promote(
    name: str = typer.Argument(..., help="Style or registered model name, e.g. kandinsky."),
    version: str = typer.Argument(..., help="The version to make champion."),
    force: bool = typer.Option(False, "--force", help="Override the gate (needs --reason; recorded on the version)."),
    reason: str | None = typer.Option(None, help="Why the gate is overridden."),
) -> None:
    """Make VERSION the champion if it passes the gate against the current champion.

    The gate: style_distance, content_distance, warping_ratio and frames/s within the tolerances in settings
    (CLIPMORPH_GATE_*), artefact_score under the absolute threshold.

    Rollback = promoting an earlier version; it goes through the same gate, so it may need --force --reason.
    """
    from clipmorph import registry
    from clipmorph.evaluation.promotion import PromotionError
    from clipmorph.evaluation.promotion import promote as run_promotion

    try:
        result = run_promotion(_registry(), name, version, force=force, reason=reason)
    except (PromotionError, registry.ModelNotFoundError) as e:
        raise fail(str(e)) from None
    if result.candidate_metrics or result.champion_metrics:
        columns = {f"v{result.version} (candidate)": result.candidate_metrics}
        if result.previous and result.previous != result.version:
            columns[f"v{result.previous} (champion)"] = result.champion_metrics
        _print(metrics_table(result.name, columns))
    if not result.promoted:
        raise fail(f"refused: {result.message}")
    typer.echo(result.message)


@app.command()
def models(name: str | None = typer.Argument(None, help="Only this style / registered model.")) -> None:
    """Registered models and their versions, with aliases and key metrics."""
    from clipmorph import registry
    from clipmorph.evaluation.promotion import version_metrics

    client = _registry()
    names = [registry.registered_name(name)] if name else [m.name for m in client.search_registered_models()]
    table = Table(title="registered models")
    for column in ("model", "version", "aliases", *KEY_COLUMNS, "created"):
        table.add_column(column, justify="right" if column in KEY_COLUMNS else "left")
    rows = 0
    for model_name in sorted(names):
        versions = sorted(client.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version))
        # Search results leave aliases out; the registered model has them all.
        aliases_of: dict[str, list[str]] = {}
        for alias, version in client.get_registered_model(model_name).aliases.items():
            aliases_of.setdefault(str(version), []).append(alias)
        for mv in versions:
            metrics = version_metrics(client, model_name, mv.version)
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000))
            aliases = ",".join(sorted(aliases_of.get(str(mv.version), [])))
            table.add_row(model_name, str(mv.version), aliases, *(_fmt(metrics.get(k)) for k in KEY_COLUMNS), created)
            rows += 1
    if not rows:
        raise fail(f"no registered versions{' for ' + name if name else ''}; train one with `make train`")
    _print(table)


@app.command("export")
def export_model(
    model: str = typer.Argument(..., help="Model folder or registry ref (kandinsky, kandinsky/3)."),
    output: Path = typer.Argument(..., help="Where to write the .onnx file."),
) -> None:
    """Write a model as ONNX (dynamic batch, height and width) for onnxruntime or other runtimes."""
    from clipmorph import registry
    from clipmorph.model.export import export_onnx

    try:
        path = export_onnx(registry.resolve(model).path, output)
    except (ValueError, registry.ModelNotFoundError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    typer.echo(f"{path}: input 'frames' (N, 3, H, W) in [0, 1], H and W multiples of the network's stride")


@app.command("compile")
def compile_models(
    models: list[str] = typer.Argument(
        None, help="Model folders or registry refs (kandinsky, kandinsky/3). Default: every built-in model."
    ),
    sizes: list[str] = typer.Option(
        None,
        "--size",
        help="Also build for frames of this size, WIDTHxHEIGHT (repeatable). "
        "Default: settings.compile_sizes (640x360).",
    ),
) -> None:
    """Build models ahead of time for this CPU (AOTInductor), once: the `auto` runtime then runs them
    1.5-1.7x faster than eager torch, with no start-up cost, and frames of a --size faster still. About 25 s
    per model and build; a no-op for what is built."""
    from clipmorph import registry
    from clipmorph.model import compiled
    from clipmorph.settings import get_settings
    from clipmorph.video.inference import cpu_bf16

    settings = get_settings()
    cache = settings.var_dir / "compiled"
    try:
        frame_sizes = [compiled.parse_size(text) for text in (sizes or settings.compile_sizes)]
        folders = {ref: registry.resolve(ref).path for ref in models} if models else registry.builtin_model_dirs()
    except (registry.ModelNotFoundError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    for ref, folder in folders.items():
        wanted = compiled.missing_builds(folder, cache, compiled.package_prefix(folder, cpu_bf16()), frame_sizes)
        if not wanted:
            typer.echo(f"{ref}: already built")
            continue
        for size in wanted:
            what = f"{ref} for any frame size" if size is None else f"{ref} for {size[0]}x{size[1]} frames"
            typer.echo(f"{what}: compiling (about 25 s) ...")
            start = time.perf_counter()
            try:
                package = compiled.compile_package(folder, cache, cpu_bf16(), size)
            except ValueError as e:  # a model the compiler can't take (instance norm)
                typer.echo(f"{ref}: skipped: {e}", err=True)
                break
            except Exception as e:  # the toolchain: no C++ compiler, an unsupported CPU
                first_line = (str(e).strip().splitlines() or [""])[0][:200]
                raise fail(
                    f"{ref}: could not build it here ({type(e).__name__}: {first_line}); "
                    "models keep running on eager torch. Building needs a C++ compiler (g++)."
                ) from None
            typer.echo(f"{what}: built in {time.perf_counter() - start:.0f} s, {package}")
