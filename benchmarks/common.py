"""Shared by the benchmarks: a corpus of PNG crops of the bundled photos and a result table."""

from __future__ import annotations

import json
import platform
import threading
import time
from pathlib import Path

import numpy as np


def make_images(root: Path, count: int, size: int = 128, seed: int = 0) -> list[Path]:
    from PIL import Image

    from latentsweep_lab import photos

    rng = np.random.default_rng(seed)
    sources = [photos.load(name) for name in photos.names("all") if min(photos.load(name).shape[:2]) >= size]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = sources[index % len(sources)]
        top = rng.integers(image.shape[0] - size + 1)
        left = rng.integers(image.shape[1] - size + 1)
        path = root / f"{index:05d}.png"
        if not path.exists():
            Image.fromarray(image[top:top + size, left:left + size]).save(path)
        paths.append(path)
    return paths


def encoder_flops(model, size: int) -> float:
    """FLOPs of one ``size`` x ``size`` image through the codec's export (torch's FLOP counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.export(torch.rand(1, 3, size, size))
    return float(counter.get_total_flops())


def timed(function, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def report(name: str, rows: list[dict], out: Path | None = None) -> None:
    keys = list(rows[0])
    widths = [max(len(k), *(len(f"{r[k]}") for r in rows)) for k in keys]
    print(f"\n{name} ({platform.machine()}, {__import__('os').cpu_count()} CPUs)")
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for row in rows:
        print("  ".join(f"{row[k]}".ljust(w) for k, w in zip(keys, widths)))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))


class PeakMemory:
    """Peak resident memory of this process and all its descendants (Ray's workers, a subprocess)
    above what they held when the block began, sampled every 20 ms. Shared pages (Ray's object
    store) count once per process that maps them, so Ray-side peaks are upper bounds."""

    def __enter__(self) -> "PeakMemory":
        self._stop = threading.Event()
        self.idle = self.peak = self._tree_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def above_idle_mb(self) -> int:
        return round((self.peak - self.idle) / 2**20)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._tree_rss())

    @staticmethod
    def _tree_rss() -> int:
        import psutil

        total = 0
        root = psutil.Process()
        for process in [root, *root.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total
