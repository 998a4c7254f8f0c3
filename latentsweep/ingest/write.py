"""Write one shard: ``embeddings/shard-N.parquet``, ``errors/shard-N.parquet``, then the done marker.

Each file is written atomically; the marker comes last, so a crash leaves either a finished shard or
one that the next run redoes (overwriting the same names: no duplicates). Rows carry the input's
version, so a shard rewritten after its items changed keeps the rows of the items that did not
(:meth:`ShardWriter.reusable`): nothing is encoded twice.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from latentsweep import schema, storage
from latentsweep.ingest.decode import Fetched
from latentsweep.schema import DONE_FOLDER, shard_name

REFERENCE_CODEC = ("jpegai-reference", "reference")  # codec, weights of rows read from .pt exports
DECODE_ERRORS = ("not_image", "truncated", "too_large", "too_small", "unreadable")


@dataclass
class ShardResult:
    shard_id: int
    embedded: int
    errors: dict[str, int]
    encoded: int  # items fetched and encoded by this write (the others' rows were kept)


def shard_files(out: storage.Location, shard_id: int) -> tuple[storage.Location, ...]:
    """A shard's embeddings file, errors file and done marker: its id decides all three names."""
    name = shard_name(shard_id)
    return (out.join("embeddings", f"{name}.parquet"), out.join("errors", f"{name}.parquet"),
            out.join(DONE_FOLDER, f"{name}.json"))


DONE_INDEX = "_done.parquet"  # the markers as of the last run's end: name, version, record


def done_records(out: storage.Location) -> list[dict]:
    """The done markers of ``out``, in name order."""
    return [json.loads(text) for _, _, text in _markers(out)]


def write_done_index(out: storage.Location) -> None:
    """Record every marker of ``out`` with its version, for the next run's :func:`done_records`."""
    markers = _markers(out)
    storage.write_table(out.join(DONE_INDEX), pa.table({
        column: pa.array([marker[position] for marker in markers], pa.string())
        for position, column in enumerate(("name", "version", "record"))}))


def _markers(out: storage.Location) -> list[tuple[str, str, str]]:
    """(name, version, JSON text) of every marker. Markers are one small object a shard (written by
    the workers), so reading them all costs a GET a shard on every run (390,000 at 100M items): the
    index ``_done.parquet`` keeps each marker's text with its version (ETag or mtime) as of the last
    run's end, and only markers missing from it or changed since are read. Listing costs one request
    per 1,000 markers."""
    from concurrent.futures import ThreadPoolExecutor

    listed = list(storage.list_files(out.join(DONE_FOLDER), missing_ok=True))
    known: dict[str, tuple[str, str]] = {}
    if storage.exists(out.join(DONE_INDEX)):
        index = storage.read_table(out.join(DONE_INDEX))
        known = {name: (version, text) for name, version, text in zip(
            *(index.column(column).to_pylist() for column in ("name", "version", "record")))}
    names = [_marker_name(info.uri) for info in listed]
    stale = [info for name, info in zip(names, listed) if known.get(name, ("",))[0] != info.version]
    with ThreadPoolExecutor(max_workers=storage.LISTING_THREADS) as pool:
        fresh = dict(zip((_marker_name(info.uri) for info in stale),
                         pool.map(lambda info: storage.read_bytes(info.uri).decode(), stale)))
    return [(name, info.version, fresh[name] if name in fresh else known[name][1])
            for name, info in zip(names, listed)]


def _marker_name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


class ShardWriter:
    def __init__(self, out: storage.Location, columns: dict[str, int], provenance: dict[str, str]):
        self.out = out
        self.columns = columns
        self.provenance = provenance  # codec, weights_digest, feature_set, pooling
        self.embedding_schema = schema.embedding_schema(columns)


    def reusable(self, shard_id: int, planned: pa.Table) -> tuple[pa.Table, pa.Table]:
        """The rows of the shard's previous files that still describe a planned item: same id and
        version (and, for embeddings, label and family). Files of another schema version keep nothing."""
        keys = {item_id: (version, label, family) for item_id, version, label, family in zip(
            *(planned.column(name).to_pylist() for name in ("id", "version", "label", "family")))}
        kept = []
        for location, kind, fields in zip(shard_files(self.out, shard_id), ("embeddings", "errors"),
                                          (("version", "label", "family"), ("version",))):
            table = self._previous(location, kind)
            width = len(fields)
            mask = [keys.get(row[0], (None,) * 3)[:width] == row[1:] for row in zip(
                *(table.column(name).to_pylist() for name in ("id", *fields)))]
            kept.append(table.filter(pa.array(mask, pa.bool_())))
        embeddings, errors = kept
        errors = errors.filter(pa.array(~np.isin(errors.column("id").to_numpy(), embeddings.column("id").to_numpy())))
        return embeddings, errors

    def _previous(self, location: storage.Location, kind: str) -> pa.Table:
        empty = (self.embedding_schema if kind == "embeddings" else schema.ERROR_SCHEMA).empty_table()
        if not storage.exists(location):
            return empty
        table = storage.read_table(location)
        try:
            schema.check(table.schema, kind, location.uri)
        except schema.SchemaError:
            return empty
        return table if table.schema.equals(empty.schema, check_metadata=False) else empty

    def write(self, shard_id: int, digest: str, planned: pa.Table, fetched: list[Fetched],
              vectors: dict[str, np.ndarray], kept: tuple[pa.Table, pa.Table]) -> ShardResult:
        """``fetched[i]`` and row i of ``vectors`` belong to the planned item with ``fetched[i].uri``."""
        by_uri = {uri: row for row, uri in enumerate(planned.column("uri").to_pylist())}
        rows = planned.take(pa.array([by_uri[item.uri] for item in fetched], pa.int64()))
        failed = np.array([bool(item.error_type) for item in fetched], bool)
        new_embeddings = embedding_table(rows.filter(pa.array(~failed)), [f for f in fetched if not f.error_type],
                                         {name: values[~failed] for name, values in vectors.items()},
                                         self.columns, self.provenance)
        bad = [item for item in fetched if item.error_type]
        failed_rows = rows.filter(pa.array(failed))
        new_errors = pa.table({
            "id": failed_rows.column("id"), "uri": failed_rows.column("uri"), "version": failed_rows.column("version"),
            "stage": pa.array(["decode" if item.error_type in DECODE_ERRORS else "encode" for item in bad], pa.string()),
            "error_type": pa.array([item.error_type for item in bad], pa.string()),
            "message": pa.array([item.message for item in bad], pa.string()),
        }, schema=schema.ERROR_SCHEMA)
        embeddings = pa.concat_tables([kept[0], new_embeddings]).sort_by("id")
        errors = pa.concat_tables([kept[1], new_errors]).sort_by("id")
        embeddings_file, errors_file, marker_file = shard_files(self.out, shard_id)
        storage.write_table(embeddings_file, embeddings)
        storage.write_table(errors_file, errors)
        counts = Counter(errors.column("error_type").to_pylist())
        result = ShardResult(shard_id, embeddings.num_rows, dict(sorted(counts.items())), len(fetched))
        marker = {"shard_id": shard_id, "digest": digest, "embedded": result.embedded, "errors": result.errors,
                  "encoded": result.encoded}
        storage.write_bytes(marker_file, json.dumps(marker).encode())
        return result


def embedding_table(rows: pa.Table, fetched: list[Fetched], vectors: dict[str, np.ndarray], columns: dict[str, int],
                    provenance: dict[str, str]) -> pa.Table:
    """The embeddings rows of ``fetched`` (read without error): ``rows`` are their planned rows (id, uri,
    version, label, family, in the same order), ``vectors`` their pooled columns ``columns``, and
    ``provenance`` the codec, weights digest, feature set and pooling that made them."""
    count = rows.num_rows
    latents = [item.source == "latents" for item in fetched]
    arrays = [
        rows.column("id"), rows.column("uri"), pa.array([item.sha256 for item in fetched], pa.string()),
        rows.column("version"), rows.column("label"), rows.column("family"),
        pa.array([item.width for item in fetched], pa.int32()), pa.array([item.height for item in fetched], pa.int32()),
        pa.array([item.source for item in fetched], pa.string()),
        pa.array([REFERENCE_CODEC[0] if x else provenance["codec"] for x in latents], pa.string()),
        pa.array([REFERENCE_CODEC[1] if x else provenance["weights_digest"] for x in latents], pa.string()),
        pa.array([provenance["feature_set"]] * count, pa.string()),
        pa.array([provenance["pooling"]] * count, pa.string()),
    ]
    # what each image declares; .pt latents and .jai bitstreams: nothing read (NULL)
    declared = [item.declared or {} for item in fetched]
    arrays += [pa.array([row.get(field.name) for row in declared], field.type) for field in schema.DECLARED_FIELDS]
    # a descriptor row the encoder left NaN (.pt latents and .jai bitstreams carry no pixels) is NULL
    for name, dim in columns.items():
        values = np.ascontiguousarray(vectors[name], dtype=np.float32)
        missing = pa.array(np.isnan(values).all(axis=1)) if name in schema.DESCRIPTORS else None
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim, mask=missing))
    return pa.Table.from_arrays(arrays, schema=schema.embedding_schema(columns))
