"""Faults of the device an actor computes on, told apart from faults of one input.

An image that cannot be decoded is that item's error row. Out of memory, a lost CUDA context or a GPU
Ray assigned that torch cannot see are faults of the machine: written as rows they would mark good
images failed for good. They stop the actor instead (:func:`leave`): Ray restarts it and retries its
shard, and a fault that outlasts the restarts stops the job (exit 3). Out of memory is first retried
with smaller batches by the encoder.
"""

from __future__ import annotations

import os
import sys

from latentsweep.errors import JobFailed

# torch's messages for device faults raised as a plain RuntimeError (c10/cuda/CUDAException.h:
# "CUDA error: ..."; cuBLAS and cuDNN status errors; the CPU allocator's "can't allocate memory").
FAULT_MARKERS = ("CUDA error", "CUDA out of memory", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error",
                 "device-side assert", "can't allocate memory")
EXIT_CODE = 75  # the actor's process exits with this code on a fault; Ray then restarts it


class AcceleratorFault(JobFailed):
    """A fault of the device, not of an input (exit code 3 when it persists)."""


def out_of_memory(error: BaseException) -> bool:
    """Out of memory on the device or the host (``torch.OutOfMemoryError``, documented as raised when
    the CUDA caching allocator cannot allocate; ``MemoryError`` from the host)."""
    import torch

    kinds = tuple(kind for kind in (getattr(torch, "OutOfMemoryError", None),
                                    getattr(torch.cuda, "OutOfMemoryError", None), MemoryError) if kind)
    return isinstance(error, kinds) or "out of memory" in str(error) or "can't allocate memory" in str(error)


def is_fault(error: BaseException) -> bool:
    """Whether ``error`` is the device's (``torch.AcceleratorError``, raised for CUDA runtime errors since
    torch 2.8, out of memory, or one of torch's device-error messages) rather than one input's."""
    import torch

    accelerator = getattr(torch, "AcceleratorError", None)
    if isinstance(error, AcceleratorFault) or out_of_memory(error) or (accelerator and isinstance(error, accelerator)):
        return True
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in FAULT_MARKERS)


def compute_device(device: str) -> str:
    """The torch device an actor of the pool computes on. An actor placed for ``cuda`` whose GPU torch
    cannot see (no driver, a CPU build of torch) is a fault of the node, unless the node only declared
    its GPUs to Ray and :data:`~latentsweep.cluster.CPU_FOR_DECLARED_GPUS` says to compute on the CPU."""
    from latentsweep.cluster import CPU_FOR_DECLARED_GPUS

    if device != "cuda":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get(CPU_FOR_DECLARED_GPUS) == "1":
        return "cpu"
    import ray

    raise AcceleratorFault(f"Ray gave this actor GPU {ray.get_gpu_ids()} on node "
                           f"{ray.get_runtime_context().get_node_id()[:12]}, but torch sees no CUDA device "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
                           f"{torch.__version__}, built for CUDA {torch.version.cuda})")


def leave(fault: BaseException, job: str) -> None:
    """End this actor's process after a device fault: its CUDA context may be unusable, and Ray restarts
    the actor and retries the shard it held. The fault is told to the worker's log and, under ``job``'s
    key in Ray's key-value store, to the driver, which names it if the fault outlasts the restarts
    (:func:`last_fault`); an actor's death carries no message of its own."""
    import ray
    from ray.experimental.internal_kv import _internal_kv_put

    node = ray.get_runtime_context().get_node_id()[:12]
    message = f"{type(fault).__name__} on node {node}: {str(fault).strip().splitlines()[0] if str(fault).strip() else ''}"
    print(f"latentsweep: accelerator fault, exiting for Ray to restart this actor: {message}", file=sys.stderr,
          flush=True)
    _internal_kv_put(_fault_key(job), message.encode(), overwrite=True)
    os._exit(EXIT_CODE)


def last_fault(job: str) -> str | None:
    """The last device fault an actor of ``job`` reported before exiting, or None."""
    from ray.experimental.internal_kv import _internal_kv_get

    found = _internal_kv_get(_fault_key(job))
    return found.decode() if found else None


def _fault_key(job: str) -> bytes:
    return f"latentsweep-fault:{job}".encode()
