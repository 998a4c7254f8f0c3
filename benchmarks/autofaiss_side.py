"""The autofaiss side of bench_index.py; runs in its own environment (autofaiss pins numpy<2).

argv: embeddings folder (Parquet, column "embedding"), queries .npy, output folder, k, memory budget.
Writes result.json (build seconds, index key) and ids.npy (the top-k of every query)."""

import json
import sys
import time

import faiss
import numpy as np
from autofaiss import build_index

embeddings, queries_path, out, k, budget = sys.argv[1:6]
started = time.perf_counter()
_, infos = build_index(embeddings=embeddings, index_path=f"{out}/knn.index", index_infos_path=f"{out}/infos.json",
                       file_format="parquet", embedding_column_name="embedding", metric_type="ip",
                       max_index_memory_usage=budget, current_memory_available="8G", verbose=30)
seconds = time.perf_counter() - started
index = faiss.read_index(f"{out}/knn.index")
queries = np.load(queries_path)
_, ids = index.search(queries, int(k))
np.save(f"{out}/ids.npy", ids)
json.dump({"seconds": seconds, "index_key": (infos or {}).get("index_key")}, open(f"{out}/result.json", "w"))
