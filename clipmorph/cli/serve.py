"""Serving commands: the API, a worker, the local stack, the demo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer

from clipmorph.cli.app import app, fail
from clipmorph.settings import get_settings

stack_app = typer.Typer(help="The local stack: redis-server, the API and one worker in the background.")
app.add_typer(stack_app, name="stack")


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Default: settings.api_host."),
    port: int | None = typer.Option(None, help="Default: settings.api_port."),
) -> None:
    """Run the REST API (and the web page) in the foreground."""
    import uvicorn

    from api.main import exposure_error

    settings = get_settings()
    host = host or settings.api_host
    if problem := exposure_error(host, settings):
        raise fail(problem)
    uvicorn.run("api.main:create_app", factory=True, host=host, port=port or settings.api_port)


@app.command()
def worker(
    burst: bool = typer.Option(False, help="Quit once the queue is empty."),
    name: str | None = typer.Option(None, help="Worker name shown in RQ (default: random)."),
    queues: str = typer.Option(
        "stylize",
        help="Queues to serve, most preferred first: stylize (videos, large images), train (POST /v1/styles). "
        "A GPU worker: --queues train,stylize.",
    ),
) -> None:
    """Run one worker: stylizes queued videos, or trains styles (CUDA when available). Start as many as you like."""
    from worker.runner import run_worker

    kinds = [k.strip() for k in queues.split(",") if k.strip()]
    try:
        run_worker(burst=burst, name=name, queues=kinds)
    except ValueError as e:
        raise fail(str(e)) from None


@stack_app.command("up")
def stack_up() -> None:
    """Start redis-server (if local and not running), the API and a worker; wait until they answer."""
    from clipmorph.serving import stack

    try:
        stack.up(get_settings())
    except stack.StackError as e:
        raise fail(str(e)) from None


@stack_app.command("down")
def stack_down() -> None:
    """Stop the stack's processes."""
    from clipmorph.serving import stack

    if not stack.down(get_settings()):
        typer.echo("nothing was running")


@stack_app.command("status")
def stack_status() -> None:
    """Which of the stack's processes run."""
    from clipmorph.serving import stack

    for name, pid in stack.status(get_settings()).items():
        typer.echo(f"{name:8} {'running, pid ' + str(pid) if pid else 'stopped'}")


@stack_app.command("logs")
def stack_logs(
    lines: int = typer.Option(40, "--lines", "-n", help="Lines of each log."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl+C stops)."),
) -> None:
    """Show the stack's logs."""
    from clipmorph.serving import stack

    paths = [p for p in stack.log_files(get_settings()) if p.exists()]
    if not paths:
        raise fail(f"no logs yet in {get_settings().logs_dir}; start the stack with `clipmorph stack up`")
    if follow:
        subprocess.run(["tail", "-n", str(lines), "-F", *map(str, paths)], check=False)
        return
    for path in paths:
        typer.secho(f"==> {path} <==", bold=True)
        for line in stack.read_log(path, lines):
            typer.echo(line)


@app.command()
def demo(
    video: Path | None = typer.Argument(None, help="Default: <videos_dir>/bigbuckbunny.mp4."),
    style: str = typer.Option("kandinsky", help="Style to apply (falls back to the first registered one)."),
    max_side: int | None = typer.Option(640, help="Stylize at this longest side."),
) -> None:
    """Start the local stack and stylize a sample video through the REST API, like any client."""
    from clipmorph.serving import stack
    from clipmorph.serving.client import ApiError, DemoError, run_demo

    settings = get_settings()
    try:
        run_demo(
            settings, video or settings.videos_dir / "bigbuckbunny.mp4", style, max_side, settings.var_dir / "demo"
        )
    except (DemoError, ApiError, stack.StackError) as e:
        raise fail(str(e)) from None
    typer.echo(f"the stack keeps running: web page at {settings.api_base_url}/ ; `make down` stops it")
