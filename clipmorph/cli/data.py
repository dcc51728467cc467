import typer

from clipmorph.cli.app import app, fail


@app.command()
def data(
    visual_genome: bool = typer.Option(True, help="Also download Visual Genome (~15 GB) when there is no mirror."),
) -> None:
    """Make styles, photos, videos and VGG weights available under the data dir."""
    from clipmorph.assets import prepare
    from clipmorph.download import DownloadError

    try:
        typer.echo(prepare(with_visual_genome=visual_genome))
    except DownloadError as e:
        raise fail(str(e)) from None


@app.command()
def styles() -> None:
    """List the style images available for training."""
    from clipmorph.settings import get_settings
    from clipmorph.training.data import known_paintings

    folders = get_settings().style_dirs
    names = known_paintings(folders)
    if not names:
        raise fail(f"no styles in {', '.join(map(str, folders))}; run `make data`")
    typer.echo("\n".join(names))
