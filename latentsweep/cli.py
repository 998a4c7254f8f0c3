"""The ``latentsweep`` command: parses flags or ``--config``, calls the stages, holds no logic.

Exit codes: 0 success, 1 completed with failed items, 2 bad usage or configuration,
3 the job could not run (storage unreachable, corrupt input files, ...).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from latentsweep.config import apply_config

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3

app = typer.Typer(
    help="Attribute images to the generator that made them, from JPEG AI latents, on Ray + FAISS.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", callback=apply_config, is_eager=True, exists=False,
    help="YAML file whose keys mirror this command's flags (flags on the command line win).")]
AddressOption = Annotated[Optional[str], typer.Option(
    "--address", envvar="RAY_ADDRESS",
    help="Ray cluster to join (e.g. ray://head:10001 or auto). Default: a local Ray on 127.0.0.1.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output, only the summary.")]


def main() -> None:
    """Console entry point: turn known failures into one clear line and an exit code."""
    from latentsweep.schema import SchemaError
    from latentsweep.storage import StorageError, redact

    try:
        app()
    except (SchemaError, ValueError) as error:
        typer.secho(f"error: {redact(str(error))}", fg="red", err=True)
        sys.exit(EXIT_USAGE)
    except StorageError as error:
        typer.secho(f"error: {redact(str(error))}", fg="red", err=True)
        sys.exit(EXIT_FAILED)
