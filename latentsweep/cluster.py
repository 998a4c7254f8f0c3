"""Start or join Ray: the one place that calls ``ray.init``.

``--address`` / ``RAY_ADDRESS`` joins an existing cluster (inside a job started by ``ray job submit``
Ray sets ``RAY_ADDRESS`` itself). Otherwise a local Ray is started bound to loopback only (no
dashboard, usage stats off) with an object store sized for small machines. Ray's own messages go to a
log file (:class:`RayLog`), not the terminal.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time
import uuid

from latentsweep.errors import JobFailed, UsageError
from latentsweep.resources import DeviceChoice, Node, alive, choose_device, largest_memory, pool_layout, shapes

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# Local object store: enough for a few shards of images in flight, small enough for a laptop.
LOCAL_OBJECT_STORE_BYTES = 1 << 30
# Non-secret S3 settings handed to the workers of a run started outside a Ray job. Never credentials.
FORWARDED_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                       "AWS_MAX_ATTEMPTS")
# How long the driver tries to open a TCP connection to a cluster's address before saying it is unreachable.
REACH_SECONDS = 10
# GPUs asked of an autoscaler when the job does not say how many workers (it stops at its own max_workers),
# and how long a job waits for them by default (--wait-for-gpus).
MAX_GPU_REQUEST = 64
WAIT_FOR_GPUS_SECONDS = 300.0
# A GPU node the autoscaler was asked for: how often the wait prints a line, and how many of the
# autoscaler's status updates in a row may show nothing launching before the request counts as one it
# cannot meet (no GPU node type, or max_workers reached).
WAIT_LINE_SECONDS = 15
IDLE_UPDATES = 3
# A stage that finished nothing for this long says what Ray is waiting for (StallWatch).
STALL_SECONDS = 120
# Once one GPU node is up, how long a job waits for the others it asked for before it starts on those up.
MORE_GPUS_SECONDS = 60
# The autoscaler's status record in Ray's internal key-value store (autoscaler/_private/monitor.py,
# DEBUG_AUTOSCALING_STATUS), rewritten at every update (AUTOSCALER_UPDATE_INTERVAL_S, 5 s by default).
AUTOSCALER_STATUS_KEY = b"__autoscaling_status"
STATUS_FRESH_SECONDS = 60
# Set only where Ray nodes declare GPUs the machine does not have (tests on CPU machines): encoder
# actors that reserved such a GPU compute on the CPU. Production never sets it: there, a GPU Ray
# assigned that torch cannot see stops the job.
CPU_FOR_DECLARED_GPUS = "LATENTSWEEP_CPU_FOR_DECLARED_GPUS"
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
    """Initialise Ray once per process and return its cluster resources. An address nothing answers
    on, or a cluster of another Ray version, is one error (exit 3), never a wait."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not _initialized():
        require_reachable(address)
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
                _join(address, common)
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


def _initialized() -> bool:
    import ray

    return ray.is_initialized()


def _join(address: str, options: dict) -> None:
    """``ray.init`` of an existing cluster; a version mismatch between this driver and the cluster
    (Ray refuses it at connect) becomes one line naming both versions."""
    import ray

    try:
        ray.init(address=address, **options)
    except (RuntimeError, ConnectionError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "version mismatch" in str(error).lower():
            raise JobFailed(f"the Ray cluster at {address} runs another Ray or Python than this driver "
                            f"(Ray {ray.__version__}): {first}; install the cluster's versions "
                            f"(pyproject.toml pins Ray)") from None
        raise JobFailed(f"could not join the Ray cluster at {address}: {first}") from None


def host_and_port(address: str) -> tuple[str, int] | None:
    """The (host, port) a cluster address connects to: ``host:port``, ``ray://host:port`` (the Ray client,
    port 10001 by default) or ``http://host:port`` (the dashboard); None for ``auto`` and ``local``, which Ray
    resolves on this machine."""
    if address in ("auto", "local"):
        return None
    scheme, _, rest = address.rpartition("://")
    rest = rest.split("/", 1)[0]
    host, _, port = rest.rpartition(":")
    if not host:
        host, port = rest, {"ray": "10001", "http": "80", "https": "443"}.get(scheme, "6379")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise UsageError(f"--address {address!r} is not host:port, ray://host:port or auto") from None


def require_reachable(address: str, seconds: float = REACH_SECONDS) -> None:
    """One TCP connection to the cluster's address, bounded: ``ray.init`` itself retries a dead address
    for minutes without a word."""
    target = host_and_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=seconds).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, socket.timeout) else (error.strerror or str(error))
        raise JobFailed(f"cannot reach the Ray cluster at {address}: {reason} (is the head node up, and the "
                        f"port forwarded?)") from None


def nodes() -> list[Node]:
    """The alive nodes of the cluster this process joined, each with its own resources."""
    import ray

    return alive(ray.nodes())


def largest_node_memory() -> int:
    """Bytes of memory of the largest alive node (:func:`~latentsweep.resources.largest_memory`)."""
    return largest_memory(nodes())


def autoscaler_status() -> dict | None:
    """The autoscaler's last status record, or None when nothing can add nodes: no record or a stale one,
    or the read-only provider every head runs without ``--autoscaling-config`` (a local Ray, a cluster
    started by hand), which names each node's type after the node (``format_readonly_node_type`` in
    ray/autoscaler/_private/util.py: ``node_<id>``)."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_STATUS_KEY)
    if not raw:
        return None
    status = json.loads(raw)
    if time.time() - float(status.get("time", 0)) > STATUS_FRESH_SECONDS:
        return None
    types = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    if all(name == f"node_{node}" for node, name in types.items()):  # also no types at all: nothing to launch
        return None
    return status


def launching(status: dict, joined: set[str]) -> dict:
    """What the autoscaler is starting: ``{node type: count}`` of pending launches and of pending nodes
    whose Ray has not joined yet (``joined``: the node ids and addresses of alive nodes; a node stays
    "pending" in the report until its set-up commands finish, which a node up in Ray no longer waits for)."""
    report = status.get("autoscaler_report") or {}
    found = dict(report.get("pending_launches") or {})
    for entry in report.get("pending_nodes") or []:
        address, node_type = (entry[0], entry[1]) if isinstance(entry, (list, tuple)) and len(entry) > 1 else ("", "node")
        if address not in joined:
            found[node_type] = found.get(node_type, 0) + 1
    return found


def acquire_gpus(wanted: int, wait_seconds: float, log) -> list[Node]:
    """Ask the autoscaler for ``wanted`` one-GPU bundles and wait, at most ``wait_seconds``, until they
    are up, or until at least one is and the autoscaler launches nothing more (its max_workers) or
    :data:`MORE_GPUS_SECONDS` have passed since the first; returns the nodes then. The request stays
    until :func:`release_request`. Raises :class:`JobFailed` when no GPU node came in time, or
    :class:`UsageError` when the autoscaler starts none (no GPU node type, or max_workers reached)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"GPU": 1}] * wanted)
    asked, started = time.time(), time.monotonic()
    last_line, first_gpu, seen, idle = started, None, None, 0
    while True:
        import ray

        entries = [entry for entry in ray.nodes() if entry.get("Alive")]
        present = alive(entries)
        gpus = sum(node.gpus for node in present)
        status = autoscaler_status() or {}
        pending = launching(status, {entry.get(key) for entry in entries for key in ("NodeID", "NodeManagerAddress")})
        if float(status.get("time", 0)) > asked and status.get("time") != seen:  # an update after the request
            seen = status.get("time")
            idle = idle + 1 if not pending else 0
        now = time.monotonic()
        first_gpu = first_gpu or (now if gpus else None)
        if gpus >= wanted or (gpus and (idle >= IDLE_UPDATES or now - first_gpu >= MORE_GPUS_SECONDS)):
            log(f"cluster: {gpus:g} GPUs up after {now - started:.0f} s"
                + (f" (the autoscaler is still launching {pending})" if pending else ""))
            return present
        if not gpus and idle >= IDLE_UPDATES:
            failed = (status.get("autoscaler_report") or {}).get("failed_nodes") or []
            raise UsageError("no GPU node can start: the autoscaler launches none for a 1-GPU request (no GPU "
                             f"node type, or max_workers reached{'; failed launches: ' + str(failed) if failed else ''}); "
                             f"nodes now: {shapes(present)}")
        if now - started > wait_seconds:
            raise JobFailed(f"no GPU node came up within --wait-for-gpus {wait_seconds:g} s (autoscaler "
                            f"launching: {pending or 'nothing'}); rerun to resume, or raise --wait-for-gpus")
        if now - last_line >= WAIT_LINE_SECONDS:
            log(f"cluster: waiting for GPU nodes: {gpus:g} of {wanted} up, autoscaler launching "
                f"{pending or 'nothing yet'} ({now - started:.0f} s of {wait_seconds:g} s)")
            last_line = now
        time.sleep(1)


def waiting_demands() -> str | None:
    """What Ray is waiting to place, as its monitor reports it (resource shapes of actors and tasks
    that no node can take now), or None: Ray itself writes this only to its logs."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(AUTOSCALER_STATUS_KEY)
    report = (json.loads(raw).get("load_metrics_report") or {}) if raw else {}
    demands = [f"{count} x {shape}" for shape, count in report.get("resource_demand") or []]
    return ", ".join(demands) or None


class StallWatch:
    """While a stage waits on Ray, say so when nothing finished for :data:`STALL_SECONDS`: what Ray
    is waiting to place and what the autoscaler launches, the lines Ray keeps in its logs."""

    def __init__(self, what: str, log, seconds: float = STALL_SECONDS):
        import threading

        self.what, self.log, self.seconds, self.last = what, log, seconds, time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "StallWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()

    def progressed(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self.stopped.wait(self.seconds / 4):
            idle = time.monotonic() - self.last
            if idle < self.seconds:
                continue
            try:
                demands, status = waiting_demands(), autoscaler_status()
            except Exception:  # the cluster's state store is unreachable: the stage's own error will say
                continue
            pending = launching(status, set()) if status else {}
            self.log(f"{self.what}: nothing finished for {idle:.0f} s; Ray is waiting to place "
                     f"{demands or 'nothing'}" + (f"; the autoscaler is launching {pending}" if pending else "")
                     + f"; nodes: {shapes(nodes())}")
            self.last = time.monotonic()


def release_request() -> None:
    """Withdraw this driver's standing request to the autoscaler (idle GPU nodes may then go)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])


def device_choice(device: str) -> DeviceChoice:
    """``--device`` against the cluster joined (:func:`~latentsweep.resources.choose_device`)."""
    return choose_device(device, sum(node.gpus for node in nodes()), autoscaler_status() is not None)


def encoder_pool(choice: DeviceChoice, workers: int | None, wanted: int, wait_seconds: float, log) -> dict:
    """The encoder pool's layout (:func:`~latentsweep.resources.pool_layout`) on the nodes up once the
    GPUs it wants are: with an autoscaler, ``workers`` (else ``wanted``) GPUs are asked for and waited
    for; without one, the GPUs present are what there is."""
    present = nodes()
    if choice.device == "cuda" and autoscaler_status() is not None:
        target = workers or wanted
        if sum(node.gpus for node in present) < target:
            present = acquire_gpus(target, wait_seconds, log)
    return pool_layout(present, choice.device, workers)


def require_shared(paths: dict[str, str], seconds: float = 60) -> None:
    """Local paths on a cluster of several nodes must be the same files on every node (a shared mount):
    a worker elsewhere would read nothing and write to its own disk. For each ``{role: path}`` the
    driver stats the input (or writes a probe file into the output folder), and a task on every node
    must see the same; otherwise the job is refused before anything else is written."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    present = nodes()
    if len(present) < 2 or not paths:
        return
    expected, probes, made = {}, [], None
    for role, path in paths.items():
        if role == "output":
            if not os.path.isdir(path):
                made = path
            os.makedirs(path, exist_ok=True)
            probe = os.path.join(path, f".latentsweep-probe-{uuid.uuid4().hex}")
            token = uuid.uuid4().hex
            with open(probe, "w") as handle:
                handle.write(token)
            probes.append(probe)
            expected[role] = (probe, token)
        else:
            expected[role] = (path, _stat(path))
    check = ray.remote(num_cpus=0)(_node_sees)
    try:
        calls = {node.node_id: check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node.node_id, soft=False)).remote(expected) for node in present}
        ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=seconds)
        for node_id, call in calls.items():
            missing = ray.get(call) if call in ready else list(paths)
            if missing:
                role = missing[0]
                raise UsageError(f"the {role} {paths[role]} is a local path that node {node_id[:12]} of this "
                                 f"{len(present)}-node cluster does not see: use s3:// URIs or a folder "
                                 f"mounted on every node")
    except UsageError:
        if made:  # a refused job leaves nothing behind
            for probe in probes:
                os.unlink(probe)
            probes = []
            _remove_made(made)
        raise
    finally:
        for probe in probes:
            os.unlink(probe)


def _remove_made(path: str) -> None:
    """Remove the folder :func:`require_shared` made for its probe, and the empty parents it made."""
    try:
        os.removedirs(path)
    except OSError:
        pass


def require_shared_io(source: str, out) -> None:
    """:func:`require_shared` for a job's ``source`` (a folder, a manifest or a URI) and its output
    (a :class:`~latentsweep.storage.Location`); object storage needs no check."""
    local = {} if "://" in source else {"input": os.path.abspath(source)}
    if not out.is_s3:
        local["output"] = out.fs_path
    require_shared(local)


def _stat(path: str) -> str:
    info = os.stat(path)
    return "folder" if os.path.isdir(path) else f"{info.st_size}"


def _node_sees(expected: dict) -> list[str]:
    """Roles whose path this node does not see as the driver does (run on each node)."""
    missing = []
    for role, (path, seen) in expected.items():
        try:
            if role == "output":
                with open(path) as handle:
                    same = handle.read() == seen
            else:
                same = _stat(path) == seen
        except OSError:
            same = False
        if not same:
            missing.append(role)
    return missing


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
