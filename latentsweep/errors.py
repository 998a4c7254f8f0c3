"""The project's error types; the CLI maps them to exit codes (2 usage/config, 3 could not run)."""


class LatentsweepError(Exception):
    """Base of every error the CLI reports as one clear line."""


class UsageError(LatentsweepError, ValueError):
    """The job is misconfigured or its inputs are of the wrong kind (exit code 2)."""


class JobFailed(LatentsweepError, RuntimeError):
    """The job could not run: storage unreachable, credentials refused, corrupt files (exit code 3)."""
