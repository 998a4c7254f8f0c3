"""Start or join Ray: the one place that calls ``ray.init``.

``--address`` / ``RAY_ADDRESS`` joins an existing cluster (inside a job started by ``ray job submit``
Ray sets ``RAY_ADDRESS`` itself). Otherwise a local Ray is started bound to loopback only (no
dashboard, usage stats off) with an object store sized for small machines. Ray's own messages go to a
log file (:class:`RayLog`), not the terminal.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Local object store: enough for a few shards of images in flight, small enough for a laptop.
LOCAL_OBJECT_STORE_BYTES = 1 << 30
# Non-secret S3 settings handed to the workers of a run started outside a Ray job. Never credentials.
FORWARDED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                       "AWS_MAX_ATTEMPTS")
# Set by Ray's job supervisor for the entrypoint of a job (`ray job submit`), holding the job's runtime
# env and metadata (ray/dashboard/modules/job/job_supervisor.py, _get_driver_env_vars). The job's
# tasks and actors do not get it; processes the entrypoint starts inherit it.
JOB_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job() -> bool:
    """Whether this process is the driver of a job submitted with ``ray job submit`` (its working
    directory is then Ray's temporary copy of ``--working-dir``, deleted with the job)."""
    return bool(os.environ.get(JOB_VARIABLE))


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            quiet: bool = False) -> dict:
    """Initialise Ray once per process and return its cluster resources."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Ray's single-machine mode: every component takes 127.0.0.1 as the node address. Without
        # it Ray resolves even an explicit 127.0.0.1 to the routable address and listens there.
        os.environ[SINGLE_MACHINE_VARIABLE] = "0"
    import ray

    if not address:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the variable was set
    if not ray.is_initialized():
        # How Ray merges runtime envs (ray/_private/worker.py, ray.init; ray/runtime_env/runtime_env.py,
        # _merge_runtime_env): in a job's driver, ray.init merges the job's runtime env (read from
        # RAY_JOB_CONFIG_JSON_ENV_VAR) with the one passed to it, field by field and env_vars variable
        # by variable. A field or variable present in both is a conflict even with equal values:
        # ray.init then raises a ValueError quoting both envs, secrets included (with
        # RAY_OVERRIDE_JOB_RUNTIME_ENV=1 ray.init's values would win instead). So inside a job nothing is
        # passed: the job's own runtime env already reaches every task and actor. Outside a job there is
        # no job env to conflict with, and only non-secret settings are forwarded, so that workers reach
        # the driver's object store; credentials stay with each node's environment or instance profile.
        forwarded = {} if in_ray_job() else {
            name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
        # log_to_driver=False: the output of workers (and the GCS's error lines, which Ray forwards
        # too) stays in the session's log folder instead of being printed here.
        common = dict(log_to_driver=False, logging_level=logging.INFO, configure_logging=True,
                      runtime_env={"env_vars": forwarded} if forwarded else None)
        log = RayLog.begin()
        try:
            if address:
                ray.init(address=address, **common)
            else:
                # address="local": always a new private instance, never a cluster found on this machine
                ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False,
                         num_cpus=num_cpus, num_gpus=num_gpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                         **common)
        finally:
            log.finish()
            if not quiet:
                print(f"ray: Ray's messages go to its logs: {log.path}", file=sys.stderr)
    return ray.cluster_resources()


class RayLog:
    """Ray's own output (start-up lines, Ray Data's executor, the token-authentication notice, the
    warnings its C++ core worker prints) goes to a file in the Ray session's log folder instead of
    the terminal, so that ``-q`` leaves only errors. Ray's Python loggers write to whatever
    ``sys.stderr`` is when they emit and its C++ code writes to file descriptor 2 directly: fd 2 is
    pointed at the log, and ``sys.stderr`` at a copy of the original descriptor, which keeps this
    program's own progress, summaries and errors on the terminal. Where ``sys.stderr`` is not the
    process's own (a test runner capturing it), the descriptors are left alone and only Ray's Python
    loggers are redirected."""

    current: "RayLog | None" = None  # the log of this process, once Ray was started
    earlier: list = []  # logs of Ray sessions this process started before (after ray.shutdown)

    def __init__(self, path: str, terminal: int | None):
        self.path, self.terminal = path, terminal
        self.handler: logging.Handler | None = None

    @classmethod
    def begin(cls) -> "RayLog":
        """Before ``ray.init``: everything written to fd 2 goes to a temporary file."""
        handle, path = tempfile.mkstemp(prefix="latentsweep-ray-", suffix=".log")
        terminal = None
        owned = sys.stderr is sys.__stderr__ and sys.stderr is not None
        try:
            owned = owned and sys.stderr.fileno() == 2
        except (OSError, ValueError, AttributeError):
            owned = False
        if owned:
            sys.stderr.flush()
            terminal = os.dup(2)
            os.dup2(handle, 2)
        os.close(handle)
        return cls(path, terminal)

    def finish(self) -> None:
        """After ``ray.init``: move the log into the session's log folder (where there is one on this
        machine: not with a ``ray://`` client), keep fd 2 on it, give ``sys.stderr`` the terminal."""
        import ray

        node = ray._private.worker._global_node if ray.is_initialized() else None
        if node is not None:
            final = os.path.join(node.get_logs_dir_path(), f"latentsweep-driver-{os.getpid()}.log")
            try:
                with open(self.path, "rb") as early, open(final, "ab") as out:
                    out.write(early.read())
                os.unlink(self.path)
                self.path = final
            except OSError:
                pass  # keep the temporary file
        if self.terminal is not None:
            handle = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            os.dup2(handle, 2)
            os.close(handle)
            encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
            sys.stderr = open(self.terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace")
        self.handler = logging.FileHandler(self.path)
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- "
                                                    "%(message)s"))
        if RayLog.current is not None:
            RayLog.earlier.append(RayLog.current)
        RayLog.current = self
        self.route_loggers()

    def route_loggers(self) -> None:
        """Ray's Python loggers that print to the console write to the log instead. Ray Data replaces
        its handlers when it is imported: :func:`quiet_data_context` calls this again."""
        from ray._private.log import PlainRayHandler

        names = ["ray"] + [name for name in logging.root.manager.loggerDict if name.startswith("ray.")]
        for name in names:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                console = isinstance(handler, PlainRayHandler) or (
                    type(handler) is logging.StreamHandler
                    and getattr(handler, "stream", None) in (sys.__stderr__, sys.__stdout__))
                earlier = handler is not self.handler and any(
                    handler is log.handler for log in RayLog.earlier)
                if console or earlier:
                    logger.removeHandler(handler)
                    if self.handler not in logger.handlers:
                        logger.addHandler(self.handler)


def cpus_and_gpus(resources: dict) -> tuple[int, int]:
    """Whole CPUs (at least one) and GPUs in ``connect``'s resources."""
    return max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))


def quiet_data_context() -> None:
    """Ray Data without its progress bars and start-up banner: the stages print their own progress."""
    import ray.data

    if RayLog.current is not None:  # importing Ray Data gave its loggers console handlers again
        RayLog.current.route_loggers()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Errors of our own code in a map stage reach the driver as themselves (inside Ray's RayTaskError,
    # whose ``cause`` the CLI unwraps), not as a bare UserCodeException whose cause is lost on the way.
    context.raise_original_map_exception = True


def thread_env(threads: int) -> dict:
    """``runtime_env`` for an actor that should compute with ``threads`` cores. Ray sets
    ``OMP_NUM_THREADS`` to an actor's CPU reservation (1 when fractional) before the process starts,
    and OpenBLAS (FAISS's BLAS) sizes its thread pool from it once, at load time; setting the
    variables here is the only way to give such an actor more."""
    value = str(max(1, threads))
    return {"env_vars": {"OMP_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value, "MKL_NUM_THREADS": value}}
