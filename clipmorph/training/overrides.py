"""Configuration as plain overrides: `--set key=value` strings typed by a dataclass's defaults."""

from __future__ import annotations

from dataclasses import fields


def coerce(cls: type, overrides: dict[str, str], what: str = "option") -> dict[str, object]:
    """'key=value' strings -> typed keyword arguments for dataclass `cls` (bool, tuple, int, float, str)."""
    types = {f.name: f for f in fields(cls)}
    kwargs: dict[str, object] = {}
    for key, raw in overrides.items():
        if key not in types:
            raise ValueError(f"unknown {what} {key!r}; options: {', '.join(sorted(types))}")
        default = types[key].default
        try:
            if isinstance(default, bool):
                kwargs[key] = raw.lower() in {"1", "true", "yes", "on"}
            elif isinstance(default, tuple):
                kwargs[key] = tuple(type(default[0])(v) if default else v for v in raw.split(",") if v)
            elif isinstance(default, int | float):
                kwargs[key] = type(default)(float(raw)) if isinstance(default, int) else float(raw)
            else:
                kwargs[key] = raw
        except ValueError:
            raise ValueError(f"option {key}: {raw!r} is not a valid {type(default).__name__}") from None
    return kwargs
