"""Stage 1: image corpus -> embedding Parquet.

sources (list once) -> plan (ids, shards; pure) -> decode (CPU tasks) -> encode (actor pool)
-> write (one Parquet file per shard, named by the shard id, then a done marker) -> run (the driver).
"""
