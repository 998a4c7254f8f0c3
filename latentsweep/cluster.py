"""Start or join Ray: the one place that calls ``ray.init``.

``--address`` / ``RAY_ADDRESS`` joins an existing cluster. Otherwise a local Ray is started bound to
loopback only (no dashboard, usage stats off) with an object store sized for small machines.
"""

from __future__ import annotations

import logging
import os

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Local object store: enough for a few shards of images in flight, small enough for a laptop.
LOCAL_OBJECT_STORE_BYTES = 1 << 30
FORWARDED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                       "AWS_MAX_ATTEMPTS")


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
        # Workers must reach the same object store as the driver; credentials stay with each node's
        # environment or instance profile and are never shipped in the job's configuration.
        forwarded = {name: os.environ[name] for name in FORWARDED_VARIABLES if os.environ.get(name)}
        common = dict(log_to_driver=not quiet, logging_level=logging.WARNING, configure_logging=True,
                      runtime_env={"env_vars": forwarded} if forwarded else None)
        if address:
            ray.init(address=address, **common)
        else:
            # address="local": always a new private instance, never a cluster found on this machine
            ray.init(address="local", _node_ip_address=LOOPBACK, include_dashboard=False, num_cpus=num_cpus,
                     num_gpus=num_gpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **common)
    return ray.cluster_resources()


def cpus_and_gpus(resources: dict) -> tuple[int, int]:
    """Whole CPUs (at least one) and GPUs in ``connect``'s resources."""
    return max(1, int(resources.get("CPU", 1))), int(resources.get("GPU", 0))


def quiet_data_context() -> None:
    """Ray Data without its progress bars and start-up banner: the stages print their own progress."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def thread_env(threads: int) -> dict:
    """``runtime_env`` for an actor that should compute with ``threads`` cores. Ray sets
    ``OMP_NUM_THREADS`` to an actor's CPU reservation (1 when fractional) before the process starts,
    and OpenBLAS (FAISS's BLAS) sizes its thread pool from it once, at load time; setting the
    variables here is the only way to give such an actor more."""
    value = str(max(1, threads))
    return {"env_vars": {"OMP_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value, "MKL_NUM_THREADS": value}}
