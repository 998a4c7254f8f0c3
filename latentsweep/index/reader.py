"""Read embedding Parquet for an index: which files (an ingest output's planned shards), which columns,
their provenance, as float32 matrices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from latentsweep import schema, storage
from latentsweep.errors import UsageError
from latentsweep.schema import FEATURE_SETS

PROVENANCE = ("codec", "weights_digest", "pooling")


class IncompleteIngest(UsageError):
    """An ingest output that has not finished its plan, read without ``--allow-partial``."""

METADATA_COLUMNS = ("id", "uri", "label", "family")


def embedding_files(sources: list[str], allow_partial: bool = False, log=None) -> list[str]:
    """Parquet files of one or many ingest outputs (``DEST``), folders of Parquet, or files. An
    ingest output contributes the shard files of its current plan only (``DEST/shards.parquet``):
    files of shards an earlier plan had and this one dropped are never read. An ingest output that
    is running, or stopped before its end, is refused (an index of part of a corpus would report
    success); ``allow_partial`` takes the shards it has written, saying what is missing."""
    files: list[str] = []
    for source in sources:
        location = storage.Location.parse(source)
        if source.endswith(".parquet"):
            files.append(location.uri)
            continue
        found = _planned(location, allow_partial, log)
        if found is None:
            found = [info.uri for info in _list(location) if info.uri.endswith(".parquet")
                     and not set(location.relative(info.uri).split("/")) & set(schema.INGEST_PLAN_FILES)]
        if not found:
            raise UsageError(f"no embedding Parquet found in {source}")
        files += found
    return sorted(set(files))


def _planned(location: storage.Location, allow_partial: bool = False, log=None) -> list[str] | None:
    """The embedding files of the ingest output at ``location`` (None when it is not one), refused
    unless the ingest finished its plan (``schema.INGEST_COMPLETE_FILE``) or ``allow_partial``."""
    import hashlib
    import json

    shards = location.join(schema.INGEST_SHARDS_FILE)
    if not storage.exists(shards):
        return None
    data = storage.read_bytes(shards)
    names = {f"{schema.shard_name(shard)}.parquet" for shard in
             storage.parse_table(data, shards).column("shard").to_pylist()}
    found = [info.uri for info in _list(location.join("embeddings")) if info.uri.rsplit("/", 1)[-1] in names]
    complete = location.join(schema.INGEST_COMPLETE_FILE)
    record = json.loads(storage.read_bytes(complete)) if storage.exists(complete) else {}
    if record.get("plan_sha256") != hashlib.sha256(data).hexdigest():
        state = (f"{len(found)} of its {len(names)} planned shards are written; the ingest is running or "
                 f"stopped before its end")
        if not allow_partial:
            raise IncompleteIngest(f"{location.uri} is not a complete ingest: {state}. Rerun the ingest to finish "
                             f"it, or pass --allow-partial to use the shards written so far")
        if log:
            log(f"--allow-partial: {location.uri}: {state}; using those {len(found)} shards")
    return found


def _list(location: storage.Location):
    return list(storage.list_files(location, missing_ok=True))


# ``index build`` without --features: the descriptor measured best on software no choice ever saw
# (docs/descriptors.md), where the embeddings hold it; else the paper's 2lat (exported .pt latents,
# --no-descriptors, ingests made before the descriptor existed).
DEFAULT_FEATURES = "default"
BEST_DESCRIPTOR = "self_description"


def default_features(tensor_columns: dict[str, int]) -> str:
    """What :data:`DEFAULT_FEATURES` builds for embeddings holding ``tensor_columns``."""
    return BEST_DESCRIPTOR if BEST_DESCRIPTOR in tensor_columns else "2lat"


def resolve_columns(tensor_columns: dict[str, int], features: str) -> list[str]:
    """A feature set name (2lat, selected, all, default) or a comma list of columns -> columns present."""
    if features == DEFAULT_FEATURES:
        features = default_features(tensor_columns)
    if features in FEATURE_SETS:
        wanted = list(FEATURE_SETS[features]) if features != "all" else [
            name for name in tensor_columns if name not in schema.DESCRIPTORS]
    else:
        wanted = [name.strip() for name in features.split(",") if name.strip()]
    missing = [name for name in wanted if name not in tensor_columns]
    if missing:
        raise UsageError(f"the embeddings lack {', '.join(missing)} (they hold: {', '.join(tensor_columns)}); "
                         f"ingest with a larger --feature-set or choose other features")
    return wanted


def concrete(uri: str, features: str) -> str:
    """``features`` with :data:`DEFAULT_FEATURES` resolved against one embeddings file's columns."""
    if features != DEFAULT_FEATURES:
        return features
    return default_features(schema.tensor_columns(storage.read_schema(uri)))


def columns_of(uri: str, features: str) -> dict[str, int]:
    """``{column: dim}`` that ``features`` selects in one embeddings file, from its schema alone: a
    check that costs one footer read, made before any Ray task starts."""
    return _chosen(storage.read_schema(uri), uri, features)


def _chosen(file_schema: pa.Schema, uri: str, features: str) -> dict[str, int]:
    """``{column: dim}`` of ``features`` in a file of ``file_schema``, descriptor versions checked."""
    schema.check(file_schema, "embeddings", uri)
    present = schema.tensor_columns(file_schema)
    chosen = resolve_columns(present, features)
    for name in chosen:
        if name in schema.DESCRIPTORS:
            made, current = schema.descriptor_version(file_schema.field(name)), schema.DESCRIPTORS[name][1]
            if made != current:
                raise UsageError(f"{uri} holds {name} version {made}; this latentsweep makes and indexes version "
                                 f"{current}: ingest again (--overwrite) to index {name}")
    return {name: present[name] for name in chosen}


def provenance_of(uri: str) -> set[tuple[str, str, str]]:
    """(codec, weights_digest, pooling) of every row of one embeddings file (three small columns)."""
    table = storage.read_table(uri, columns=list(PROVENANCE))
    return set(zip(*(table.column(name).to_pylist() for name in PROVENANCE)))


@dataclass
class Batch:
    ids: np.ndarray        # int64 (n,)
    vectors: np.ndarray    # float32 (n, d)
    metadata: pa.Table     # id, uri, label, family
    provenance: set[tuple[str, str, str]]


def read(uri: str, features: str) -> tuple[Batch, list[str]]:
    """One embeddings file -> vectors of the chosen columns concatenated in order."""
    table = storage.read_table(uri)
    columns = list(_chosen(table.schema, uri, features))
    return batch_of(table, columns, list(METADATA_COLUMNS), uri), columns


def read_columns(uri: str, columns: list[str], with_uri: bool = False) -> Batch:
    """Only what an index needs from one embeddings file: ``id``, ``label``, ``family``, the provenance
    columns, ``uri`` when ``with_uri`` (the shard metadata), and the feature ``columns`` concatenated in
    order; Parquet reads those column chunks and skips the others (``sha256``, sizes, unused tensors).
    The schema is checked from the footer first (a missing column is a usage error naming it); the
    batch's metadata holds id, uri (when read), label and family."""
    columns_of(uri, ",".join(columns))
    small = ["id", *(["uri"] if with_uri else []), "label", "family"]
    return batch_of(storage.read_table(uri, columns=small + list(PROVENANCE) + list(columns)), columns, small, uri)


def read_queries(uri: str, columns: list[str]) -> pa.Table:
    """What a sweep reads of one query file: ids, URIs, labels, provenance, what each file declared
    (``schema.DECLARED_COLUMNS``) and the feature ``columns``, whose presence is checked first. Processed
    copies of references (an ingest of labelled images with ``--augment``) are left out: they never query."""
    from latentsweep.ingest.augment import originals

    columns_of(uri, ",".join(columns))
    wanted = ["id", "uri", "label", "family", *PROVENANCE, *schema.DECLARED_COLUMNS, *columns]
    table = storage.read_table(uri, columns=list(dict.fromkeys(wanted)))
    ids = table.column("id").to_numpy()
    kept = originals(ids, table.column("uri").to_pylist())
    return table if kept.all() else table.filter(pa.array(kept))


def batch_of(table: pa.Table, columns: list[str], metadata: list[str], uri: str) -> Batch:
    """The feature ``columns`` of ``table`` (read from ``uri``) concatenated in order, with its ids,
    ``metadata`` columns and provenance. Null vectors (descriptors of rows that had no pixels) are
    refused: an index holds every row of its sources."""
    for name in columns:
        if table.column(name).null_count:
            raise UsageError(f"{table.column(name).null_count} rows of {uri} have no {name}: they were ingested "
                             f"from .pt latents, which carry no pixels; index latent features for them")
    parts = [np.asarray(table.column(name).combine_chunks().flatten(), dtype=np.float32)
             .reshape(table.num_rows, -1) for name in columns]
    vectors = np.concatenate(parts, axis=1) if parts else np.zeros((table.num_rows, 0), np.float32)
    provenance = provenance_in(table)
    return Batch(table.column("id").to_numpy().astype(np.int64, copy=False), np.ascontiguousarray(vectors),
                 table.select(metadata), provenance)


def provenance_in(table: pa.Table) -> set[tuple[str, str, str]]:
    """The (codec, weights digest, pooling) of ``table``'s rows."""
    return set(zip(*(table.column(name).to_pylist() for name in PROVENANCE)))


def check_provenance(provenance: set[tuple[str, str, str]], where: str) -> tuple[str, str, str]:
    """Refuse to mix vectors from different codecs, weights or poolings in one index."""
    if len(provenance) != 1:
        listed = "; ".join(f"codec={c} weights={w[:12]} pooling={p}" for c, w, p in sorted(provenance))
        raise UsageError(f"{where} mixes embeddings that live in different spaces ({listed}): "
                         f"index each codec/weights/pooling separately")
    return next(iter(provenance))
