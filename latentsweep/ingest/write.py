"""Write one shard: ``embeddings/shard-N.parquet``, ``errors/shard-N.parquet``, then the done marker.

Each file is written atomically; the marker comes last, so a crash leaves either a finished shard or
one that the next run redoes (overwriting the same names: no duplicates).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from latentsweep import schema, storage
from latentsweep.ingest.plan import Shard

DONE_FOLDER = "_done"
REFERENCE_CODEC = ("jpegai-reference", "reference")  # codec, weights of rows read from .pt exports


@dataclass
class ShardResult:
    shard_id: int
    embedded: int
    errors: dict[str, int]


def done_markers(out: storage.Location) -> dict[int, str]:
    """``{shard_id: digest}`` of the shards finished in ``out``."""
    return {int(record["shard_id"]): record["digest"]
            for record in storage.read_json_folder(out.join(DONE_FOLDER))}


class ShardWriter:
    def __init__(self, out: storage.Location, columns: dict[str, int], provenance: dict[str, str]):
        self.out = out
        self.columns = columns
        self.provenance = provenance  # codec, weights_digest, feature_set, pooling
        self.embedding_schema = schema.embedding_schema(columns)

    def write(self, shard: Shard, rows: dict[str, np.ndarray]) -> ShardResult:
        order = np.argsort(rows["id"], kind="stable")
        rows = {name: values[order] for name, values in rows.items()}
        failed = np.array([bool(e) for e in rows["error_type"]], dtype=bool)
        ok = ~failed
        storage.write_table(self.out.join("embeddings", f"{shard.name}.parquet"), self._embeddings(shard, rows, ok))
        errors = pa.table({
            "id": pa.array(rows["id"][failed], pa.int64()),
            "uri": pa.array(list(rows["uri"][failed]), pa.string()),
            "stage": pa.array(["decode" if e in ("not_image", "truncated", "too_large", "too_small",
                                                 "unreadable") else "encode"
                               for e in rows["error_type"][failed]], pa.string()),
            "error_type": pa.array(list(rows["error_type"][failed]), pa.string()),
            "message": pa.array(list(rows["message"][failed]), pa.string()),
        }, schema=schema.ERROR_SCHEMA)
        storage.write_table(self.out.join("errors", f"{shard.name}.parquet"), errors)
        counts = Counter(rows["error_type"][failed])
        result = ShardResult(shard.shard_id, int(ok.sum()), dict(sorted(counts.items())))
        marker = {"shard_id": shard.shard_id, "digest": shard.digest, "embedded": result.embedded,
                  "errors": result.errors}
        storage.write_bytes(self.out.join(DONE_FOLDER, f"{shard.name}.json"), json.dumps(marker).encode())
        return result

    def _embeddings(self, shard: Shard, rows: dict[str, np.ndarray], ok: np.ndarray) -> pa.Table:
        count = int(ok.sum())
        # Labels come from the plan, not through the pipeline: Ray Data turns a batch column of
        # nothing but None (an unlabelled night) into float NaN.
        planned = {item.id: item for item in shard.items}
        labelled = [planned[int(item_id)] for item_id in rows["id"][ok]]
        latents = np.array([source == "latents" for source in rows["source"][ok]], dtype=bool)
        codec = np.where(latents, REFERENCE_CODEC[0], self.provenance["codec"])
        digest = np.where(latents, REFERENCE_CODEC[1], self.provenance["weights_digest"])
        size = lambda name: pa.array([None if v < 0 else int(v) for v in rows[name][ok]], pa.int32())
        text = lambda name: pa.array([None if v is None or v == "" else str(v) for v in rows[name][ok]],
                                     pa.string())
        arrays = [
            pa.array(rows["id"][ok], pa.int64()), text("uri"), text("sha256"),
            pa.array([item.label for item in labelled], pa.string()),
            pa.array([item.family for item in labelled], pa.string()), size("width"), size("height"), text("source"),
            pa.array(codec.tolist(), pa.string()), pa.array(digest.tolist(), pa.string()),
            pa.array([self.provenance["feature_set"]] * count, pa.string()),
            pa.array([self.provenance["pooling"]] * count, pa.string()),
        ]
        for name, dim in self.columns.items():
            values = np.ascontiguousarray(np.stack(list(rows[name][ok])) if count else
                                          np.zeros((0, dim), np.float32), dtype=np.float32)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim))
        return pa.Table.from_arrays(arrays, schema=self.embedding_schema)
