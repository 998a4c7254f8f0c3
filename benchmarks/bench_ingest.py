"""Ingest throughput: the full Ray pipeline (list, plan, shard workers that fetch and decode on
prefetch threads, encode and write their shards) against a bare loop (read + decode + encode + pool in one process), same images, same run.
Ray's start-up is excluded from both (it is paid once per job); ``--nodes 2`` runs the pipeline on a
two-node local cluster as well."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import make_images, report  # noqa: E402


WARM_UP_IMAGES = 16


def bare_loop(paths: list[Path], batch: int) -> float:
    from latentsweep.codec.embed import Embedder
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.decode import decode_image

    embedder = Embedder(EmbedSettings(feature_set="all", device="cpu", max_batch=batch))
    started = time.perf_counter()
    for start in range(0, len(paths), batch):
        embedder.embed([decode_image(path.read_bytes()) for path in paths[start:start + batch]])
    return time.perf_counter() - started


def pipeline(source: Path, out: Path, batch: int, address: str | None = None,
             workers: int | None = None) -> tuple[float, dict]:
    from latentsweep.codec.settings import EmbedSettings
    from latentsweep.ingest.run import IngestJob, run

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = run(IngestJob(str(source), str(out), EmbedSettings(feature_set="all", device="cpu", max_batch=batch),
                            shard_size=32, quiet=True, address=address, workers=workers))
    return time.perf_counter() - started, summary.images_per_node


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=1, choices=(1, 2))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    paths = make_images(work / "images", args.images, args.size)
    make_images(work / "warm-up", WARM_UP_IMAGES, args.size, seed=1)

    from latentsweep.cluster import connect

    connect(quiet=True)
    bare = bare_loop(paths, args.batch)
    pipeline(work / "warm-up", work / "warm", args.batch)  # Ray worker imports, once per machine
    seconds, nodes = pipeline(work / "images", work / "out", args.batch)
    rows = [{"setup": "bare loop (1 process)", "images": args.images, "seconds": round(bare, 2),
             "img_s": round(args.images / bare, 2), "ratio_vs_bare": 1.0},
            {"setup": "ray pipeline, 1 node", "images": args.images, "seconds": round(seconds, 2),
             "img_s": round(args.images / seconds, 2), "ratio_vs_bare": round(bare / seconds, 3)}]
    if args.nodes == 2:
        import ray
        from ray.cluster_utils import Cluster

        ray.shutdown()
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        connect(cluster.address, quiet=True)
        # one encoder actor per node (the default layout counts 2 CPUs and starts one)
        pipeline(work / "warm-up", work / "warm2", args.batch, cluster.address, workers=2)
        seconds2, nodes2 = pipeline(work / "images", work / "out2", args.batch, cluster.address, workers=2)
        rows.append({"setup": f"ray pipeline, 2 nodes ({len(nodes2)} used)", "images": args.images,
                     "seconds": round(seconds2, 2), "img_s": round(args.images / seconds2, 2),
                     "ratio_vs_bare": round(bare / seconds2, 3)})
        ray.shutdown()
        cluster.shutdown()
    report("ingest: Ray pipeline vs bare loop", rows, Path("benchmarks/results/ingest.json"))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
