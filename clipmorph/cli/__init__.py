"""The `clipmorph` command. Each area's commands live in their own module below."""

from clipmorph.cli import data, models, optimize, serve, stylize, train  # noqa: F401  (registers commands)
from clipmorph.cli.app import app

__all__ = ["app"]
