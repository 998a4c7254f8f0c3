"""Shared by the benchmarks: a corpus of PNG crops of the bundled photos and a result table."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np


def make_images(root: Path, count: int, size: int = 128, seed: int = 0) -> list[Path]:
    from PIL import Image

    from latentsweep import photos

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
