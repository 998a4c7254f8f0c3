"""Device faults injected into the encoder actors of a test cluster, as a Ray worker set-up hook.

``ray.init(runtime_env={"worker_process_setup_hook": "gpu_faults.install", "env_vars":
{FAULT_VARIABLE: mode}})`` makes the codec of every worker of that job raise torch's CUDA out-of-memory
error: ``oom-above-one`` for calls of more than one image (a GPU that holds one image at a time),
``oom-always`` for every call (a fault that never clears). The rest of the pipeline is the product's.
"""

from __future__ import annotations

import os

FAULT_VARIABLE = "LATENTSWEEP_TEST_FAULT"


def install() -> None:
    mode = os.environ.get(FAULT_VARIABLE)
    if not mode:
        return
    import torch

    from latentsweep.codec.embed import Embedder

    embed = Embedder.embed

    def faulty(self, images, *args, **kwargs):
        if mode == "oom-always" or (mode == "oom-above-one" and len(images) > 1):
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB for {len(images)} images (injected by the test)")
        return embed(self, images, *args, **kwargs)

    Embedder.embed = faulty
