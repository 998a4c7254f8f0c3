"""List an ingest source once: a folder or S3 prefix (recursive), or a manifest (Parquet/CSV).

The listing streams: Arrow record batches of a few thousand entries, never a list of per-item
Python objects nor the whole source in memory (the planner spills the batches by id range).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from latentsweep import storage
from latentsweep.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
LATENT_SUFFIXES = (".pt",)
BITSTREAM_SUFFIXES = (".jai",)  # latentsweep compress output (codec/container.py)
MANIFEST_SUFFIXES = (".parquet", ".csv")


LISTING_CHUNK = 10_000  # entries turned into Arrow at a time: no per-item Python objects accumulate
MANIFEST_BATCH = 8_192  # manifest rows parsed at a time (the Parquet reader peaks at ~45 MB for 64k, ~20 MB for 8k)
READ_BUFFER = 4 << 20  # a Parquet manifest is read in ranges this size (else a column chunk at once)


@dataclass
class Listing:
    """A listed source, streamed: ``batches`` yields one row per input (``uri``, ``size``,
    ``version``, ``label``, ``family``) a record batch at a time, and once they are consumed
    ``skipped`` counts the files skipped for their suffix (with a few examples)."""

    batches: Iterator[pa.RecordBatch]
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)

    def items(self) -> list[dict]:
        """The rows as dicts (small listings only: tests and experiments)."""
        return pa.Table.from_batches(list(self.batches), LISTING_SCHEMA).to_pylist()


LISTING_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("version", pa.string()),
                            ("label", pa.string()), ("family", pa.string())])


def listing_table(rows: list[tuple]) -> pa.Table:
    """``(uri, size, version, label, family)`` tuples -> a listing table."""
    columns = list(zip(*rows)) if rows else [[]] * 5
    return pa.Table.from_arrays([pa.array(column, field.type) for column, field in zip(columns, LISTING_SCHEMA)],
                                schema=LISTING_SCHEMA)


def parse_families(spec: list[str] | str | None) -> dict[str, str]:
    """``["gan=stylegan2,stylegan3", "dm=sana"]`` or a YAML/JSON file -> ``{label: family}``."""
    if not spec:
        return {}
    if isinstance(spec, str):
        spec = [spec]
    if len(spec) == 1 and "=" not in spec[0]:
        import yaml

        data = yaml.safe_load(storage.read_bytes(spec[0]))
        if not isinstance(data, dict):
            raise UsageError(f"{spec[0]} must map each family to a list of labels")
        spec = [f"{family}={','.join(labels)}" for family, labels in data.items()]
    mapping: dict[str, str] = {}
    for entry in spec:
        family, sep, labels = entry.partition("=")
        if not sep or not family or not labels:
            raise UsageError(f"bad family entry {entry!r}: expected family=label1,label2")
        for label in labels.split(","):
            if label.strip():
                mapping[label.strip()] = family.strip()
    return mapping


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES)


def list_source(source: str, labels_from_folders: bool = False,
                families: dict[str, str] | None = None) -> Listing:
    """List ``source`` once: a manifest file, or a folder / S3 prefix (recursive; S3 prefixes are
    listed in parallel, one request stream per top-level common prefix)."""
    listing = _read_manifest(source) if is_manifest(source) else _list_tree(source, labels_from_folders)
    if families:
        listing.batches = (_with_families(batch, families) for batch in listing.batches)
    return listing


def _with_families(batch: pa.RecordBatch, families: dict[str, str]) -> pa.RecordBatch:
    """``batch`` with the family of each label that has none (mapped once per distinct label)."""
    labels = batch.column("label").dictionary_encode()
    mapped = pa.array([families.get(label) for label in labels.dictionary.to_pylist()], pa.string())
    family = pc.coalesce(batch.column("family"), mapped.take(labels.indices))
    return batch.set_column(batch.schema.get_field_index("family"), "family", family)


def _list_tree(source: str, labels_from_folders: bool) -> Listing:
    listing = Listing(iter(()))
    listing.batches = _tree_batches(storage.Location.parse(source), labels_from_folders, listing)
    return listing


def _tree_batches(root: storage.Location, labels_from_folders: bool, listing: Listing) -> Iterator[pa.RecordBatch]:
    """The files below ``root`` as listing batches; files of other suffixes are counted in ``listing``."""
    rows = []
    for info in storage.list_tree(root):
        if not info.uri.lower().endswith(IMAGE_SUFFIXES + LATENT_SUFFIXES + BITSTREAM_SUFFIXES):
            listing.skipped += 1
            if len(listing.skipped_examples) < 3:
                listing.skipped_examples.append(info.uri)
            continue
        label = None
        if labels_from_folders:
            parts = PurePosixPath(root.relative(info.uri).replace(os.sep, "/")).parts
            label = parts[0] if len(parts) > 1 else None
        rows.append((info.uri, info.size, info.version, label, None))
        if len(rows) == LISTING_CHUNK:
            yield from listing_table(rows).to_batches()
            rows = []
    yield from listing_table(rows).to_batches()


def _read_manifest(source: str) -> Listing:
    """A manifest as a listing, read and converted a batch at a time."""
    location = storage.Location.parse(source)
    folder = posixpath.dirname(location.key) if location.is_s3 else os.path.dirname(location.key)
    batches = _csv_batches(location) if source.lower().endswith(".csv") else _parquet_batches(location)
    return Listing(_manifest_rows(batch, location, folder) for batch in batches)


def _csv_batches(location: storage.Location) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    reader = pacsv.open_csv(pa.BufferReader(storage.read_bytes(location)), convert_options=pacsv.ConvertOptions(
        column_types={"uri": pa.string(), "label": pa.string(), "family": pa.string()}))
    _require_uri(reader.schema.names, location)
    yield from reader


def _parquet_batches(location: storage.Location) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    names = storage.read_schema(location).names
    _require_uri(names, location)
    columns = [name for name in ("uri", "label", "family") if name in names]
    with storage.parquet_errors(location), storage.filesystem(location).open_input_file(location.fs_path) as handle:
        yield from pq.ParquetFile(handle, buffer_size=READ_BUFFER).iter_batches(MANIFEST_BATCH, columns=columns,
                                                                                use_threads=False)


def _require_uri(columns: list[str], location: storage.Location) -> None:
    if "uri" not in columns:
        raise UsageError(f"manifest {location.uri} has no 'uri' column (columns: {', '.join(columns)})")


def _manifest_rows(batch: pa.RecordBatch, location: storage.Location, folder: str) -> pa.RecordBatch:
    """A batch of manifest entries as listing rows (no size, an empty version)."""
    count = batch.num_rows
    texts = {name: _nullable_text(batch.column(name)) if name in batch.schema.names else pa.nulls(count, pa.string())
             for name in ("label", "family")}
    columns = [_absolute_uris(batch.column("uri").cast(pa.string()), location, folder),
               pa.array(np.full(count, -1, np.int64)), pc.fill_null(pa.nulls(count, pa.string()), ""),
               texts["label"], texts["family"]]
    return pa.RecordBatch.from_arrays(columns, schema=LISTING_SCHEMA)


def _nullable_text(column: pa.Array) -> pa.Array:
    """A manifest column as strings, empty strings as NULL (no label)."""
    text = column.cast(pa.string())
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _absolute_uris(uris: pa.Array, manifest: storage.Location, folder: str) -> pa.Array:
    """Manifest entries as URIs, column-wise: URIs and absolute paths stay; relative entries are
    joined to the manifest's folder (and normalised in Python: they may climb out with "..")."""
    relative = pc.invert(pc.or_(pc.match_substring(uris, "://"), pc.starts_with(uris, "/")))
    if not pc.any(relative).as_py():
        return uris
    positions = np.flatnonzero(relative.to_numpy(zero_copy_only=False))
    joined = pa.array([_absolute(uri, manifest, folder) for uri in uris.take(pa.array(positions)).to_pylist()],
                      pa.string())
    mask = np.zeros(len(uris), bool)
    mask[positions] = True
    return pc.replace_with_mask(uris, pa.array(mask), joined)


def _absolute(uri: str, manifest: storage.Location, folder: str) -> str:
    """A manifest entry as a URI; relative entries are relative to the manifest (and may climb out)."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    if manifest.is_s3:
        return f"s3://{manifest.bucket}/{posixpath.normpath(posixpath.join(folder, uri)).lstrip('/')}"
    return os.path.normpath(os.path.join(folder, uri))
