"""Stage 1: image corpus -> embedding Parquet.

sources (list once) -> plan (ids, stable shards; pure) -> manifest (the plan on storage) -> worker
(per shard: decode on prefetch threads, encode, write its files named by the shard id, then a done
marker) -> run (the control plane: plans, dispatches shards, counts).
"""
