"""Progress lines of the stages go to stderr (stdout carries summaries), silenced by ``--quiet``."""

from __future__ import annotations

import sys


def stage_log(quiet: bool):
    return lambda message: None if quiet else print(message, file=sys.stderr, flush=True)
