"""`clipmorph optimize` (per-image Gatys optimisation) and `clipmorph sweep` (parameter grids)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipmorph.cli.app import app, fail


def _default(name: str) -> str:
    from dataclasses import fields

    from clipmorph.training.optimize import OptimizeConfig

    value = next(f.default for f in fields(OptimizeConfig) if f.name == name)
    return f"(default: {','.join(map(str, value)) if isinstance(value, tuple) else value})"


def _key_values(items: list[str], option: str) -> dict[str, str]:
    try:
        return dict(item.split("=", 1) for item in items)
    except ValueError:
        raise fail(f"{option} takes key=value, got {items}") from None


@app.command()
def optimize(
    content: Path | None = typer.Argument(
        None, help="Content photo (with --from-run: optional, replaces the recorded one)."
    ),
    output: Path | None = typer.Argument(None, help="Result image; with --from-run defaults to <recorded>-rerun.png."),
    style: list[str] = typer.Option(
        [], "--style", "-s", help="Style name or image, optionally :WEIGHT; repeat to mix (weights > 0, normalised)."
    ),
    size: int | None = typer.Option(None, help=f"Longer side of the result. {_default('size')}"),
    optimizer: str | None = typer.Option(None, help=f"lbfgs or adam. {_default('optimizer')}"),
    init: str | None = typer.Option(None, help=f"Start from 'content' or 'noise'. {_default('init')}"),
    iters: int | None = typer.Option(None, help=f"Iterations per resolution level. {_default('iters')}"),
    lr: float | None = typer.Option(None, help="Step size; 0 = optimiser default (L-BFGS 1, Adam 0.02)."),
    content_weight: float | None = typer.Option(None, help=f"Weight of the content loss. {_default('content_weight')}"),
    style_weight: float | None = typer.Option(None, help=f"Weight of the style loss. {_default('style_weight')}"),
    tv_weight: float | None = typer.Option(
        None, help=f"Weight of total variation (smoothness). {_default('tv_weight')}"
    ),
    levels: int | None = typer.Option(None, help=f"Coarse-to-fine levels, each half the next. {_default('levels')}"),
    seed: int | None = typer.Option(None, help=f"Seed of the noise init. {_default('seed')}"),
    save_every: int | None = typer.Option(None, help="Write an intermediate image every N iterations (and a GIF)."),
    gif: bool | None = typer.Option(None, "--gif/--no-gif", help="Assemble intermediate images into a GIF."),
    device: str | None = typer.Option(None, help=f"auto, cpu, cuda. {_default('device')}"),
    set_: list[str] = typer.Option([], "--set", help="Any other option: --set style_scales=1,0.5"),
    from_run: str | None = typer.Option(None, "--from-run", help="Repeat a recorded run (options given change it)."),
) -> None:
    """Style one image by optimising its pixels (Gatys et al.); the run is recorded in MLflow."""
    from clipmorph.training.optimize import OptimizeConfig, config_from_run, run_optimize

    options = {
        "size": size, "optimizer": optimizer, "init": init, "iters": iters, "lr": lr,
        "content_weight": content_weight, "style_weight": style_weight, "tv_weight": tv_weight,
        "levels": levels, "seed": seed, "save_every": save_every, "gif": gif, "device": device,
    }  # fmt: skip
    overrides = {k: str(v) for k, v in options.items() if v is not None} | _key_values(set_, "--set")
    if style:
        overrides["style"] = ",".join(style)
    try:
        if from_run:
            if output is None and content is not None:  # `--from-run ID OUT`: the one path given is the output
                content, output = None, content
            if content is not None:
                overrides["content"] = str(content)
            cfg, recorded_output = config_from_run(from_run, overrides)
            output = output or recorded_output.with_name(f"{recorded_output.stem}-rerun{recorded_output.suffix}")
        else:
            if content is None or output is None or not style:
                raise fail("give CONTENT OUTPUT and at least one --style (or --from-run RUN_ID)")
            cfg = OptimizeConfig.from_overrides({"content": str(content), **overrides})
        result = run_optimize(cfg, output)
    except (ValueError, FileNotFoundError, LookupError) as e:
        raise fail(str(e)) from None
    typer.echo(f"wrote {result.output} in {result.seconds:.1f} s ({result.iterations} iterations)")
    typer.echo("final losses: " + ", ".join(f"{k}={v:.4g}" for k, v in result.final.items()))
    if result.frames and cfg.gif:
        typer.echo(f"animation: {Path(result.output).with_suffix('.gif')}")
    typer.echo(f"MLflow run: {result.run_id} (repeat with: clipmorph optimize --from-run {result.run_id})")


@app.command()
def sweep(
    kind: str = typer.Argument(..., help="What each grid point runs: optimize or train."),
    param: list[str] = typer.Option([], "--param", "-p", help="Swept values: --param style_weight=1e4,1e5"),
    set_: list[str] = typer.Option([], "--set", help="Fixed option for every point: --set iters=100"),
    content: Path | None = typer.Option(None, help="Content photo (optimize); preview photo for train sweeps."),
    style: list[str] = typer.Option([], "--style", "-s", help="Style (name or image[:WEIGHT]); repeat to mix."),
    mix: str | None = typer.Option(None, help="A,B: sweep the mix ratio between two styles (parameter 'mix')."),
    mix_steps: int = typer.Option(5, help="Ratios 0..1 in this many steps when --mix is given."),
    out: Path | None = typer.Option(
        None, help="Folder for results and the contact sheet (default: <runs>/sweeps/<name>)"
    ),
    name: str | None = typer.Option(None, help="Name of the parent run (default: sweep-<kind>-<time>)"),
    cell: int = typer.Option(256, help="Side of each contact-sheet cell in pixels."),
) -> None:
    """Run a grid of optimise or short-train runs as children of one MLflow run, with a contact sheet."""
    from clipmorph.training.sweep import MIX, mix_values, parse_param, run_sweep

    try:
        params = dict(parse_param(p) for p in param)
        mix_styles = None
        if mix:
            first, sep, second = mix.partition(",")
            if not sep or not first or not second:
                raise ValueError(f"--mix takes two styles A,B, got {mix!r}")
            mix_styles = (first, second)
            params.setdefault(MIX, mix_values(mix_steps))
        base = _key_values(set_, "--set")
        if style:
            base["style"] = ",".join(style)
        elif mix_styles:
            base["style"] = mix_styles[0]
        if kind == "optimize":
            if content is None:
                raise ValueError("an optimize sweep needs --content PHOTO")
            base["content"] = str(content)
        result = run_sweep(kind, base, params, out, mix_styles, name, None if kind == "optimize" else content, cell)
    except (ValueError, FileNotFoundError, LookupError) as e:
        raise fail(str(e)) from None
    for point in result.points:
        typer.echo(f"{' '.join(point.label)}  run {point.run_id}  {point.image}")
    typer.echo(f"contact sheet: {result.sheet}")
    typer.echo(f"parent MLflow run: {result.parent_run_id}")
