"""How a job's actors are shaped and whether a cluster can hold them: pure functions of the nodes.

Ray places an actor on one node, so every decision here is made per node, never from the cluster's
totals (8 CPUs on each of two GPU nodes is not one actor of 15 CPUs). A cluster may also grow: an
autoscaler adds GPU nodes when asked (``cluster.acquire_gpus``), so "no GPU now" and "no GPU ever"
are different answers, and only the second lets ``--device auto`` run on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latentsweep.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Node:
    """One alive Ray node as its resources describe it (``ray.nodes()``)."""

    node_id: str
    cpus: float
    gpus: float
    memory: float

    @classmethod
    def from_ray(cls, entry: dict) -> "Node":
        resources = entry.get("Resources", {})
        return cls(entry.get("NodeID", ""), float(resources.get("CPU", 0)), float(resources.get("GPU", 0)),
                   float(resources.get("memory", 0)))

    def holds(self, request: dict) -> bool:
        """Whether this node, empty, can hold an actor asking for ``request`` (CPU, GPU, memory)."""
        return (request.get("CPU", 0) <= self.cpus and request.get("GPU", 0) <= self.gpus
                and request.get("memory", 0) <= self.memory)

    def shape(self) -> str:
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU, {self.memory / 2**30:.1f} GiB"


def alive(entries: list[dict]) -> list[Node]:
    return [Node.from_ray(entry) for entry in entries if entry.get("Alive")]


def shapes(nodes: list[Node]) -> str:
    """The distinct node shapes, for messages: ``2 x (8 CPU, 1 GPU, 30.0 GiB); 1 x (4 CPU, ...)``."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.shape()] = counts.get(node.shape(), 0) + 1
    return "; ".join(f"{count} x ({shape})" for shape, count in counts.items()) or "no nodes"


def require_fit(request: dict, nodes: list[Node], what: str, remedy: str = "") -> None:
    """Refuse, before anything starts, an actor no node can hold: Ray would wait for it forever and
    say so only in its logs."""
    if not any(node.holds(request) for node in nodes):
        asked = ", ".join(f"{value / 2**30:.2f} GiB memory" if name == "memory" else f"{value:g} {name}"
                          for name, value in request.items() if value)
        raise UsageError(f"{what} asks for {asked}, which no node of this cluster offers (nodes: "
                         f"{shapes(nodes)}){': ' + remedy if remedy else ''}")


def largest_memory(nodes: list[Node]) -> int:
    """Bytes of memory of the largest node; 0 when no node reports any (then nothing is judged)."""
    return int(max((node.memory for node in nodes), default=0))


def memory_shortfall(wanted: int, largest: int, what: str, estimate: str) -> str | None:
    """The line saying that ``what`` needs ``wanted`` bytes (by ``estimate``) and the largest node
    offers only ``largest``, or None when a node offers that much or none reports its memory. Ray never
    places a task or actor whose ``memory=`` no node offers, and says so only in its logs: the caller
    refuses the request or asks for ``largest`` instead."""
    if not largest or wanted <= largest:
        return None
    return (f"{what} needs about {wanted / 2**30:.2f} GiB of memory ({estimate}) and the largest Ray node "
            f"offers {largest / 2**30:.2f} GiB")


@dataclass(frozen=True)
class DeviceChoice:
    device: str          # "cuda" or "cpu"
    wait_for_gpus: bool  # ask the autoscaler for GPU nodes and wait for them before starting
    reason: str          # the first line of the job's output


def choose_device(requested: str, gpus_now: float, autoscaler: bool) -> DeviceChoice:
    """``--device`` against the cluster: GPUs present are used; with none present, an autoscaler may
    add some (wait for them); with neither, ``auto`` runs on the CPU and says so, ``cuda`` is refused."""
    if requested not in DEVICES:
        raise UsageError(f"unknown --device {requested!r}: choose one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return DeviceChoice("cpu", False, "device: cpu, as asked")
    if gpus_now:
        return DeviceChoice("cuda", False, f"device: cuda, {gpus_now:g} GPUs in the cluster")
    if autoscaler:
        return DeviceChoice("cuda", True, "device: cuda; no GPU node yet: asking the autoscaler for one")
    if requested == "cuda":
        raise UsageError("--device cuda, but this Ray cluster has no GPU node and no autoscaler to add one "
                         "(use --device cpu, or a cluster with GPU workers)")
    return DeviceChoice("cpu", False, "device: cpu (no GPU node in this cluster and no autoscaler to add one)")


def gpu_actor(nodes: list[Node]) -> dict:
    """The shape of one encoder actor per GPU, fitting the smallest GPU node: one GPU and that node's
    CPUs per GPU less one (left to Ray Data's tasks), for the actor's fetch-and-decode threads."""
    per_gpu = min(node.cpus / node.gpus for node in nodes if node.gpus >= 1)
    cpus = max(1, math.floor(per_gpu) - 1) if per_gpu >= 1 else per_gpu
    return {"num_gpus": 1, "num_cpus": cpus, "threads": None, "device": "cuda", "fetch_threads": 2 * max(1, int(cpus))}


def cpu_actors(nodes: list[Node], workers: int | None) -> dict:
    """One single-threaded actor per core (on 2 cores two 1-thread actors run 1.24x faster than one
    2-thread actor, benchmarks/bench_ingest.py), whose reservations together leave a CPU free: a pool
    that reserves every CPU starves Ray Data's own tasks and hangs. Each reservation fits the
    smallest node with CPUs."""
    cpus = max(1, int(sum(node.cpus for node in nodes)))
    size = workers or cpus
    smallest = min((node.cpus for node in nodes if node.cpus > 0), default=1.0)
    per_actor = min(1.0, smallest, max(0.25, (cpus - 1) / size))
    threads = max(1, cpus // size)
    return {"size": size, "num_gpus": 0, "num_cpus": per_actor, "threads": threads, "device": "cpu",
            "fetch_threads": 2 * threads}


def pool_layout(nodes: list[Node], device: str, workers: int | None) -> dict:
    """How many encoder actors, what each reserves, and how many fetch threads each runs: one actor per
    GPU on ``device="cuda"`` (``workers`` caps it), else :func:`cpu_actors`."""
    if device != "cuda":
        return cpu_actors(nodes, workers)
    gpus = int(sum(node.gpus for node in nodes))
    if not gpus:
        raise UsageError("device cuda, but no node of this cluster has a GPU")
    return {"size": min(workers or gpus, gpus), **gpu_actor(nodes)}
