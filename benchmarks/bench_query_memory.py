"""Resident memory of a query engine (what each sweep actor loads) per reference vector, at 1M
synthetic 256-dim references in a Flat index (4 shards), against the same engine before the
current query memory model (the code of the commit before this benchmark was added, run from a copy of its
tree): that engine held every reference's label and URI as Python strings and read each shard's
bytes before deserialising them.

Each engine is loaded in a fresh interpreter that imports what the engines import, then loads the
engine, searches 1,000 queries (k=10, every vector page touched) and fetches the neighbours' URIs.
The same is done with a tiny index (1,000 references, same layout): what an engine holds per
reference is the difference between the two, divided by the difference in references, so that the
per-process constants (interpreter, Arrow and FAISS runtimes, pandas that pyarrow's ``to_numpy``
imports, thread pools) cancel. Reported per reference: resident memory (anonymous memory and mapped
file pages separately: the new engine maps the Flat vectors, which the kernel can drop and reread),
the peak, and, for transparency, all resident memory above the interpreter's imports divided by the
references (constants included).
Target: at most 4*d + 24 bytes per reference for Flat.

    .venv/bin/python benchmarks/bench_query_memory.py [--vectors 1000000] [--dim 256] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GENERATORS = {"stylegan2": "gan", "stylegan3": "gan", "progan": "gan", "sana": "dm", "sd15": "dm", "sdxl": "dm",
              "flux": "dm"}

CHILD = r"""
import json, os, resource, sys, time
import numpy as np

def status():
    fields = {}
    for line in open("/proc/self/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields

import concurrent.futures, faiss, pyarrow, pyarrow.compute, pyarrow.ipc, pyarrow.parquet  # both engines' imports
from latentsweep.query.actor import QueryEngine
warm = faiss.IndexFlatIP(8); warm.add(np.ones((4, 8), np.float32)); warm.search(np.ones((2, 8), np.float32), 2)
index, dim = sys.argv[1], int(sys.argv[2])
queries = np.random.default_rng(1).standard_normal((1000, dim)).astype(np.float32)
base = status()
started = time.perf_counter()
engine = QueryEngine(index, use_gpu=False)
load_seconds = time.perf_counter() - started
loaded = status()
started = time.perf_counter()
scores, ids, labels = engine.search(queries, 10)
uris = engine.uris(ids)
search_seconds = time.perf_counter() - started
searched = status()
python_objects = 0
for name in ("_labels", "_uris"):  # the engine before the change: object arrays of str
    values = getattr(engine, name, None)
    if values is not None:
        python_objects += values.nbytes + sum(sys.getsizeof(value) for value in values if value is not None)
held = engine.references.nbytes if getattr(engine, "references", None) is not None else None
print(json.dumps({"base": base, "loaded": loaded, "searched": searched, "load_seconds": load_seconds,
                  "search_seconds": search_seconds, "python_objects": python_objects, "references_bytes": held,
                  "sample_uri": uris[0][0], "sample_label": labels[0][0],
                  "module": __import__("latentsweep").__file__}))
"""


def make_index(root: Path, vectors: int, dim: int, shards: int) -> None:
    """A Flat index in the layout ``index build`` writes (version folder, one IDMap,Flat file and one
    metadata Parquet per shard, manifest), from L2-normalised Gaussian vectors and URIs of ~60 chars."""
    import faiss
    import numpy as np
    import pyarrow as pa

    from latentsweep import schema, storage
    from latentsweep.index import factory
    from latentsweep.index.manifest import Manifest, ShardEntry, save, sha256
    from latentsweep.index.scaler import Scaler
    from latentsweep.index.cache import file_sha256

    names = list(GENERATORS)
    rng = np.random.default_rng(0)
    entries, counts, scaler = [], {}, None
    bounds = np.linspace(0, vectors, shards + 1).astype(int)
    for shard in range(shards):
        rows = range(bounds[shard], bounds[shard + 1])
        block = rng.standard_normal((len(rows), dim)).astype(np.float32)
        scaler = scaler or Scaler.fit(block[:10_000])
        faiss.normalize_L2(block)
        labels = [names[i % len(names)] for i in rows]
        uris = [f"s3://forensics-corpus/reference/{label}/{i:010d}.png" for i, label in zip(rows, labels)]
        ids = np.array([schema.stable_id(uri) for uri in uris], np.int64)
        index = factory.create("Flat", dim)
        index.add_with_ids(block, ids)
        del block
        name = f"shard-{shard:05d}"
        index_file, metadata_file = f"v-000001/shards/{name}.faiss", f"v-000001/metadata/{name}.parquet"
        (root / index_file).parent.mkdir(parents=True, exist_ok=True)
        faiss.write_index(index, str(root / index_file))
        del index
        table = pa.table({"id": pa.array(ids), "uri": uris, "label": labels,
                          "family": [GENERATORS[label] for label in labels]})
        data = storage.table_bytes(table)
        storage.write_bytes(str(root / metadata_file), data)
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        entries.append(ShardEntry(shard, index_file, file_sha256(str(root / index_file)),
                                  os.path.getsize(root / index_file), metadata_file, sha256(data), len(rows)))
    save(str(root), Manifest(dimension=dim, features="2lat", columns=["y_hat_luma", "y_hat_chroma"], pooling="gap",
                             codec="jpegai-bop", weights_digest="synthetic", scaler=scaler.to_dict(), index_spec="Flat",
                             search_params="", shards=entries, labels=dict(sorted(counts.items())),
                             families=GENERATORS, sources=["synthetic"], build_version="v-000001"))


def baseline_tree(work: Path) -> tuple[Path, str] | None:
    """A copy of ``latentsweep/`` as it was before this benchmark was added (the parent of the commit
    adding it, or HEAD while it is not committed), or None outside a git checkout."""
    try:
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "benchmarks/bench_query_memory.py"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        revision = f"{added[-1]}^" if added else "HEAD"
        commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        tree = work / f"baseline-{commit}"
        if not tree.exists():
            tree.mkdir(parents=True)
            archive = subprocess.run(["git", "archive", commit, "latentsweep"], cwd=ROOT, capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        return tree, commit
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def measure(index: Path, dim: int, python_path: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(python_path), "LATENTSWEEP_CACHE": str(cache),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))}
    result = subprocess.run([sys.executable, "-c", CHILD, str(index), str(dim)], env=env, capture_output=True,
                            text=True, cwd=str(python_path))
    if result.returncode:
        raise SystemExit(f"engine run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def row(name: str, run: dict, tiny: dict, vectors: int, tiny_vectors: int, dim: int) -> dict:
    big, small = run["searched"], tiny["searched"]
    per = lambda value: round(value / (vectors - tiny_vectors), 1)
    return {"engine": name,
            "rss_mb": round(big["VmRSS"] / 2**20),
            "bytes_per_reference": per(big["VmRSS"] - small["VmRSS"]),
            "anon_per_reference": per(big["RssAnon"] - small["RssAnon"]),
            "mapped_file_per_reference": per(big["RssFile"] - small["RssFile"]),
            "peak_per_reference": per(big["VmHWM"] - small["VmHWM"]),
            "held_beside_index_per_reference": round((run["references_bytes"] if run["references_bytes"] is not None
                                                      else run["python_objects"]) / vectors, 1),
            "all_above_imports_per_reference": round((big["VmRSS"] - run["base"]["VmRSS"]) / vectors, 1),
            "target_4d_plus_24": 4 * dim + 24,
            "load_s": round(run["load_seconds"], 2), "search_and_uris_s": round(run["search_seconds"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench-query-memory"))
    parser.add_argument("--no-baseline", action="store_true", help="measure only the current engine")
    args = parser.parse_args()

    work = Path(args.work)
    tiny_vectors = 1_000
    indices = {}
    for count in (tiny_vectors, args.vectors):
        indices[count] = work / f"index-{count}-{args.dim}-{args.shards}"
        if not (indices[count] / "manifest.json").exists():
            shutil.rmtree(indices[count], ignore_errors=True)
            print(f"writing a synthetic Flat index of {count:,} x {args.dim} in {args.shards} shards to {indices[count]}")
            make_index(indices[count], count, args.dim, args.shards)
    index, tiny_index = indices[args.vectors], indices[tiny_vectors]
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    cold = measure(index, args.dim, ROOT, cache)   # writes the id-sorted metadata copies
    warm = measure(index, args.dim, ROOT, cache)   # reuses them (verified)
    measure(tiny_index, args.dim, ROOT, cache)     # writes the tiny index's copies: the baseline is warm
    tiny = measure(tiny_index, args.dim, ROOT, cache)
    measured = lambda name, run, small: row(name, run, small, args.vectors, tiny_vectors, args.dim)
    rows = [measured("now, first load (writes id-sorted metadata)", cold, tiny),
            measured("now, cached metadata", warm, tiny)]
    baseline = None if args.no_baseline else baseline_tree(work)
    if baseline:
        tree, commit = baseline
        old = measure(index, args.dim, tree, cache)
        old_tiny = measure(tiny_index, args.dim, tree, cache)
        assert old["module"].startswith(str(tree)), old["module"]
        rows.append(measured(f"before ({commit}: labels and URIs as Python str)", old, old_tiny))
        assert old["sample_uri"] == warm["sample_uri"], "both engines must return the same neighbours' URIs"
    for entry in rows:
        entry["meets_target"] = entry["bytes_per_reference"] <= entry["target_4d_plus_24"]
    report(f"Query engine memory per reference ({args.vectors:,} Flat vectors of {args.dim} dims, "
           f"{args.shards} shards)", rows, ROOT / "benchmarks" / "results" / "query_memory.json")


if __name__ == "__main__":
    main()
