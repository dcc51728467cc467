import logging

import typer

from clipmorph.allocator import keep_freed_memory

app = typer.Typer(help="clipmorph: video style transfer.", no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # every command that runs a network (stylize, worker, train, serve) gains from it
    # MLflow and friends are chatty at INFO.
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a clear error to stderr; `raise fail(...)` exits non-zero."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)
