"""Job settings from ``--config job.yaml``: the file's keys mirror a command's flags.

A key is a flag's name without the leading dashes (``batch-size`` or ``batch_size``). The file fills
in defaults; flags given on the command line win. Unknown keys are refused, so a typo in a nightly
job fails at once (exit code 2) instead of silently running with defaults.
"""

from __future__ import annotations

from pathlib import Path

import click
import yaml


def load(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise click.BadParameter(f"cannot read {path}: {error.strerror}", param_hint="--config")
    except yaml.YAMLError as error:
        raise click.BadParameter(f"{path} is not valid YAML: {error}", param_hint="--config")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of flag names to values",
                                 param_hint="--config")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def apply_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """Eager ``--config`` callback: turn the file into the command's default map."""
    if not path:
        return path
    settings = load(path)
    known = {param.name for param in ctx.command.params if param.name != "config"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise click.BadParameter(f"unknown keys in {path}: {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(known))})", param_hint="--config")
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return path
