from pathlib import Path

import typer

from clipmorph.cli.app import app, fail

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@app.command()
def stylize(
    input: Path = typer.Argument(..., help="Video (mp4, mov, mkv, avi, webm, ...) or image (jpg, png, webp)."),
    output: Path = typer.Argument(..., help="Where to write; videos: .mp4/.mov/.mkv, images: the input's format."),
    model: str = typer.Option(..., "--model", "-m", help="kandinsky, kandinsky@alias, kandinsky/3 or a model folder."),
    max_side: int | None = typer.Option(
        None,
        help="Stylize at most this long a side (0: the input's own size; default: the model's frame side, "
        "the size its strokes were learned at); the output keeps the input size.",
    ),
    strength: float = typer.Option(1.0, min=0.0, max=1.0, help="0 = original, 1 = fully stylized."),
    stabilize: str | None = typer.Option(None, help="none | norm | flow | both (videos; default: flow)."),
    crf: int = typer.Option(18, min=0, max=51, help="x264 quality (lower = better, bigger)."),
    batch_size: int = typer.Option(4, min=1, help="Frames per network call."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    runtime: str | None = typer.Option(
        None,
        help="torch | onnx | int8 | compiled | auto (default: settings.runtime; auto: the model's build for this "
        "CPU when `clipmorph compile` has made it, else torch in bf16 on a CPU that has it, else onnxruntime on "
        "the CPU where it can).",
    ),
    contrast: float | None = typer.Option(
        None,
        min=0.0,
        max=8.0,
        help="Local contrast given to the network (CLAHE clip limit, 0 = off): more of the painting in pale, "
        "flat areas. Default: 2 for images, 0 for videos (it adds flicker on some footage).",
    ),
) -> None:
    """Stylize a video or an image with a registered model."""
    from tqdm import tqdm

    from clipmorph.video.inference import ImageError, StylizeOptions, load_stylizer, norm_smoothing, stylize_image
    from clipmorph.video.pipeline import Progress, stylize_video
    from clipmorph.video.probe import VideoError

    if input.resolve() == output.resolve():
        raise fail("OUTPUT must differ from INPUT")
    try:
        chosen = {"stabilize": stabilize} if stabilize is not None else {}
        options = StylizeOptions(
            max_side=max_side,
            strength=strength,
            crf=crf,
            batch_size=batch_size,
            device=device,
            contrast=contrast,
            **chosen,
        )
        loaded = load_stylizer(model, device, runtime)
    except (ValueError, LookupError, FileNotFoundError) as e:  # LookupError: registry.ModelNotFoundError
        raise fail(str(e)) from None
    options.norm_smoothing = norm_smoothing(loaded.info)
    label = f"{loaded.name}/{loaded.version}" if loaded.name else model
    try:
        if input.suffix.lower() in IMAGE_SUFFIXES:
            stylize_image(loaded.model, input, output, options)
        else:
            with tqdm(desc=f"stylizing with {label}", unit="frame") as bar:

                def show(p: Progress) -> None:
                    bar.total = p.total
                    bar.update(p.done - bar.n)

                info = stylize_video(input, output, loaded.model, options, progress=show)
            typer.echo(f"{output}: {info.width}x{info.height}, {info.frames} frames, {info.duration or 0:.2f} s")
            return
    except (VideoError, ImageError) as e:
        raise fail(str(e)) from None
    typer.echo(str(output))
