"""The GPU check (benchmarks/gpu_check.py) runs its CPU half where there is no CUDA device, and the codec
keeps one embedding space across devices: TF32 off, float64 scale levels on the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from latentsweep.bitstream import codec as bitstream
from latentsweep.codec.embed import Embedder, full_float32
from latentsweep.codec.settings import EmbedSettings
from latentsweep.schema import DESCRIPTORS, FEATURE_SETS

ROOT = Path(__file__).resolve().parents[1]


def _allow_tf32() -> None:
    """torch's defaults before anything turns TF32 off (cuDNN convolutions allow it)."""
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True


def test_building_the_codec_turns_tf32_off_for_convolutions_and_matmuls():
    _allow_tf32()
    Embedder(EmbedSettings(weights="untrained", device="cpu", descriptors=False))
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch 2.9+: the per-operator switches too
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cudnn.rnn.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        # a process-wide "tf32" set elsewhere does not reach the codec's convolutions
        torch.backends.fp32_precision = "tf32"
        try:
            full_float32()
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
            assert torch.backends.cudnn.allow_tf32 is False  # readable: no mix of the two APIs left behind
        finally:
            torch.backends.fp32_precision = "none"


def test_scale_levels_run_in_float64_on_the_cpu_whatever_the_codec_device():
    codec = bitstream.BitstreamCodec(Embedder(EmbedSettings(weights="untrained", device="cpu", descriptors=False)))
    assert bitstream.LEVELS_DEVICE == torch.device("cpu")
    for branch in bitstream.BRANCHES:
        parameters = list(codec._levels[branch].parameters())
        assert parameters and all(p.device.type == "cpu" and p.dtype == torch.float64 for p in parameters)
    z_hat = torch.zeros(1, 160, 2, 2)
    assert codec.levels("luma", z_hat).shape == (1, 160, 8, 8)


def _rows(stdout: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("| section")]


def test_quick_check_runs_the_cpu_half_and_prints_one_table():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "RAY_ADDRESS": ""}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "no CUDA device: CPU half only" in out
    assert "64x64" in out and "128x128" in out  # the image sizes are stated
    for section in ("encode", "tf32", "half", "descriptors", "bitstream", "ray", "faiss", "sweep"):
        assert re.search(rf"^\[{section}\] \d+\.\d s \(budget \d+ s\)$", out, re.M), section
    rows = _rows(out)
    assert all(len(row) == 7 for row in rows), [row for row in rows if len(row) != 7]
    assert not [row for row in rows if row[1].startswith("error")], [row for row in rows if row[1].startswith("error")]
    by_check = {(row[0], row[1]): row for row in rows}
    # encode parity, CPU against CPU: every pooled column, a number, zero or tiny
    for column in FEATURE_SETS["all"]:
        value = by_check[("encode", f"max abs diff {column}")][2]
        assert float(value) <= 1e-6, (column, value)
    assert "img/s" in by_check[("encode", "images/s (encode + pool, batches of 8)")][3]
    for column in DESCRIPTORS:
        assert float(by_check[("descriptors", f"max abs diff {column}")][2]) <= 1e-6
    for column in FEATURE_SETS["2lat"]:
        assert float(by_check[("half", f"max abs diff {column}")][2]) <= 1e-6
    tf32 = [row for row in rows if row[0] == "tf32"]
    assert len(tf32) == 4 and "cudnn.allow_tf32=False" in tf32[-1][2]
    levels = by_check[("bitstream", "scale levels (float64, on the CPU for every device): identical")][2]
    same, total = (int(x.replace(",", "")) for x in levels.split(" of "))
    assert same == total > 0
    assert ("ray", "skipped: --quick") in by_check
    assert any(row[0] == "sweep" and row[1].startswith("skipped:") for row in rows)
    faiss_rows = [row for row in rows if row[0] == "faiss"]
    assert faiss_rows
    if not faiss_rows[0][1].startswith("skipped"):
        flat = next(row for row in faiss_rows if row[1].startswith("Flat Flat: recall@10"))
        assert float(flat[2]) == 1.0
        assert any(row[1].startswith("placement of Flat") for row in faiss_rows)
    assert seconds < 240, seconds
