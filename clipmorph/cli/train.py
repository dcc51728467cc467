import typer

from clipmorph.cli.app import app, fail


@app.command()
def train(
    style: str = typer.Argument(..., help="Style name (see `clipmorph styles`), image path, or 'a:0.7,b:0.3'."),
    set_: list[str] = typer.Option([], "--set", help="Override a training option: --set iters=800"),
) -> None:
    """Train a stylizer, log it to W&B and MLflow, register it as clipmorph-<name>."""
    from clipmorph.train import TrainConfig
    from clipmorph.train import train as run_training

    try:
        overrides = dict(item.split("=", 1) for item in set_)
    except ValueError:
        raise fail(f"--set takes key=value, got {set_}") from None
    try:
        cfg = TrainConfig.from_overrides({"style": style, **overrides})
        result = run_training(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    typer.echo(f"model folder: {result.model_dir}")
    typer.echo(f"training took {result.seconds:.0f} s; final losses: {result.losses}")
    if result.version:
        typer.echo(f"registered {result.registered_name} version {result.version}")
        typer.echo(f"model URI: models:/{result.registered_name}/{result.version}")
    if result.metrics:
        typer.echo("evaluation: " + ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items()))
        typer.echo("now champion" if result.champion else "champion unchanged (see `clipmorph promote`)")
