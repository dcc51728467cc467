from pathlib import Path

import typer

from clipmorph.cli.app import app, fail


@app.command()
def train(
    style: str = typer.Argument(..., help="Style name (see `clipmorph styles`), image path, or 'a:0.7,b:0.3'."),
    set_: list[str] = typer.Option([], "--set", help="Override a training option: --set iters=800"),
) -> None:
    """Train a stylizer, log it to W&B and MLflow, register it as clipmorph-<name>."""
    from clipmorph.evaluation.promotion import train_and_gate
    from clipmorph.training.train import TrainConfig

    try:
        overrides = dict(item.split("=", 1) for item in set_)
    except ValueError:
        raise fail(f"--set takes key=value, got {set_}") from None
    try:
        cfg = TrainConfig.from_overrides({"style": style, **overrides})
        result = train_and_gate(cfg)
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


@app.command("contact-sheet")
def contact_sheet(
    output: Path = typer.Argument(..., help="PNG/JPEG to write."),
    models: list[str] = typer.Option(..., "--model", help="Model reference; repeat for each column."),
    photos: int = typer.Option(4, help="How many validation photos (rows)."),
    cell: int = typer.Option(256, help="Side of each cell in pixels."),
) -> None:
    """A validation photos x models grid: each photo, then each model's stylization of it."""
    from clipmorph.registry import ModelNotFoundError
    from clipmorph.settings import get_settings
    from clipmorph.training.contact_sheet import tile
    from clipmorph.training.data import find_images, load_rgb
    from clipmorph.video.inference import StylizeOptions, load_stylizer, stylize_pil

    settings = get_settings()
    paths = find_images([settings.photos_dir / settings.eval_photos])[:photos]
    try:
        loaded = [load_stylizer(ref) for ref in models]
    except (ModelNotFoundError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    images, labels = [], []
    for path in paths:
        photo = load_rgb(path)
        photo.thumbnail((cell * 2, cell * 2))
        images.append(photo)
        labels.append([path.name])
        for ref, m in zip(models, loaded, strict=True):
            images.append(stylize_pil(m.model, photo, StylizeOptions()))
            labels.append([ref])
    output.parent.mkdir(parents=True, exist_ok=True)
    tile(images, labels, columns=len(models) + 1, cell=cell).save(output)
    typer.echo(f"wrote {output}")
