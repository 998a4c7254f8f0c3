"""Stage 2: embedding Parquet -> sharded FAISS index with a manifest, a scaler and ids.

features (columns -> matrix) -> scaler (streaming z-score) -> factory (index type, --auto) ->
build (Ray tasks, one per shard) -> manifest (checksums, vocabulary) -> shards (load, search, merge).
"""
