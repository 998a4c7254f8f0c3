"""Run every benchmark in turn (``make bench``); each prints its table and writes benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["bench_codec.py", "bench_ingest.py", "bench_sweep.py", "bench_bounds.py", "bench_scale.py", "bench_query_memory.py",
              "bench_bitstream.py"]

if __name__ == "__main__":
    failed = [name for name in BENCHMARKS if subprocess.run([sys.executable, str(HERE / name)]).returncode]
    sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
