"""List an ingest source once: a folder or S3 prefix (recursive), or a manifest (Parquet/CSV).

The listing streams: Arrow record batches of a few thousand entries, never a list of per-item
Python objects nor the whole source in memory (the planner spills the batches by id range).

Every item carries a ``version``: what changes when its bytes may have changed, so that a rerun
re-embeds a replaced image (the plan compares versions). A folder or S3 listing gives it (the local
mtime in ns, the S3 ETag). A manifest gives it from its optional columns, per row and in this order
of precedence (:data:`VERSION_COLUMNS`): ``version`` (any text, e.g. an S3 version id or a content
hash), else ``etag`` (quotes removed: the same text an S3 listing gives), else ``mtime`` and ``size``
together (``<mtime>/<size>``, either alone when only one is there; texts as written in the manifest).
Rows left without one, and every row of a manifest without these columns, have no version (""): the
plan keeps the version such an item was planned with (not knowing is no change), and a file replaced
under the same URI is not seen, unless versions are checked (``ingest --check-versions``): each such row's file is then stat'ed (local) or HEAD-requested (S3)
as the listing streams, :data:`VERSION_THREADS` at a time a batch at a time, and gets the version a
folder listing would give ("missing" when it is not there). The first run that knows the versions
of items planned without them redoes them once (``--dry-run`` counts them as changed). The check is
done here, in the listing, and not by the workers: the driver decides which shards to hand out by
their digests, which cover the versions, so the versions must be known before any shard is handed
out (workers that fetched their own would have to be handed every shard to find the changed ones).
:attr:`Listing.versions` says which applies (``ingest --dry-run`` prints it).
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


VERSION_COLUMNS = ("version", "etag", "mtime", "size")  # optional manifest columns, in order of precedence
VERSION_THREADS = 64  # stat/HEAD requests in flight while --check-versions lists a manifest
LISTING_CHUNK = 10_000  # entries turned into Arrow at a time: no per-item Python objects accumulate
MANIFEST_BATCH = 8_192  # manifest rows parsed at a time (the Parquet reader peaks at ~45 MB for 64k, ~20 MB for 8k)
READ_BUFFER = 4 << 20  # a Parquet manifest is read in ranges this size (else a column chunk at once)


@dataclass
class Listing:
    """A listed source, streamed: ``batches`` yields one row per input (``uri``, ``size``,
    ``version``, ``label``, ``family``) a record batch at a time, and once they are consumed
    ``skipped`` counts the files skipped for their suffix (with a few examples). ``versions`` says
    where the items' versions come from: ``listing`` (a folder or prefix), ``manifest:<columns>``
    (the manifest's version columns present, in order of precedence), ``check-versions`` (stat/HEAD
    of each item), ``manifest:<columns>+check-versions`` (the rows the columns leave empty), or
    ``none`` (a manifest without version columns: replaced files are not seen)."""

    batches: Iterator[pa.RecordBatch]
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    versions: str = "listing"

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


def list_source(source: str, labels_from_folders: bool = False, families: dict[str, str] | None = None,
                check_versions: bool = False) -> Listing:
    """List ``source`` once: a manifest file, or a folder / S3 prefix (recursive; S3 prefixes are
    listed in parallel, page by page, a bounded window of top-level folders at a time).
    ``check_versions`` (``ingest --check-versions``): fetch the version of each manifest entry the
    manifest's columns leave without one. A manifest that does not exist is refused at once."""
    listing = (_read_manifest(source, check_versions) if is_manifest(source)
               else _list_tree(source, labels_from_folders))
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


def require_manifest(source: str) -> storage.Location:
    """The manifest's location, refused at once when there is no such file (a usage error, like a
    missing folder): one stat or HEAD, so that a run can refuse before it joins a cluster."""
    location = storage.Location.parse(source)
    if not (storage.exists(location) if location.is_s3 else os.path.isfile(location.key)):
        raise storage.MissingInput(f"no such manifest: {location.uri}")
    return location


def _read_manifest(source: str, check_versions: bool = False) -> Listing:
    """A manifest as a listing, read and converted a batch at a time; its header (a missing ``uri``
    column, which version columns it has) is read at once, and a manifest that does not exist is
    refused at once (a usage error, like a missing folder)."""
    location = require_manifest(source)
    folder = posixpath.dirname(location.key) if location.is_s3 else os.path.dirname(location.key)
    names, batches = _csv_batches(location) if source.lower().endswith(".csv") else _parquet_batches(location)
    present = tuple(name for name in VERSION_COLUMNS if name in names)
    versions = (f"manifest:{','.join(present)}" if present else "") + ("+check-versions" if check_versions else "")
    return Listing((_manifest_rows(batch, location, folder, present, check_versions) for batch in batches),
                   versions=versions.lstrip("+") or "none")


def _csv_batches(location: storage.Location) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """(column names, batches) of a CSV manifest; the text columns stay text (a version or a label of
    digits is not a number), and a value that does not parse is a usage error naming the manifest."""
    import pyarrow.csv as pacsv

    text = {name: pa.string() for name in ("uri", "label", "family", "version", "etag", "mtime")}
    try:
        reader = pacsv.open_csv(pa.BufferReader(storage.read_bytes(location)),
                                convert_options=pacsv.ConvertOptions(column_types=text))
    except pa.ArrowInvalid as error:
        raise UsageError(f"manifest {location.uri} cannot be read as CSV: {error}") from None
    _require_uri(reader.schema.names, location)
    return reader.schema.names, _checked_batches(reader, location)


def _checked_batches(reader, location: storage.Location) -> Iterator[pa.RecordBatch]:
    try:
        yield from reader
    except pa.ArrowInvalid as error:
        raise UsageError(f"manifest {location.uri} cannot be read as CSV: {error}") from None


def _parquet_batches(location: storage.Location) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    names = storage.read_schema(location).names
    _require_uri(names, location)
    columns = [name for name in ("uri", "label", "family", *VERSION_COLUMNS) if name in names]
    return names, _parquet_rows(location, columns)


def _parquet_rows(location: storage.Location, columns: list[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    with storage.parquet_errors(location), storage.filesystem(location).open_input_file(location.fs_path) as handle:
        yield from pq.ParquetFile(handle, buffer_size=READ_BUFFER).iter_batches(MANIFEST_BATCH, columns=columns,
                                                                                use_threads=False)


def _require_uri(columns: list[str], location: storage.Location) -> None:
    if "uri" not in columns:
        raise UsageError(f"manifest {location.uri} has no 'uri' column (columns: {', '.join(columns)})")


def _manifest_rows(batch: pa.RecordBatch, location: storage.Location, folder: str, present: tuple[str, ...] = (),
                   check_versions: bool = False) -> pa.RecordBatch:
    """A batch of manifest entries as listing rows: the size and version its columns give (``present``,
    :data:`VERSION_COLUMNS`), else no size (-1) and an empty version, fetched with ``check_versions``."""
    count = batch.num_rows
    texts = {name: _nullable_text(batch.column(name)) if name in batch.schema.names else pa.nulls(count, pa.string())
             for name in ("label", "family")}
    uris = _absolute_uris(batch.column("uri").cast(pa.string()), location, folder)
    sizes = _sizes(batch.column("size"), location) if "size" in present else pa.array(np.full(count, -1, np.int64))
    versions = _versions(batch, present)
    if check_versions:
        sizes, versions = _fetched(uris, sizes, versions)
    columns = [uris, sizes, versions, texts["label"], texts["family"]]
    return pa.RecordBatch.from_arrays(columns, schema=LISTING_SCHEMA)


def _versions(batch: pa.RecordBatch, present: tuple[str, ...]) -> pa.Array:
    """Each row's version from the manifest's columns, in order of precedence (module docstring); ""
    where they give none."""
    candidates = []
    if "version" in present:
        candidates.append(_nullable_text(batch.column("version")))
    if "etag" in present:
        candidates.append(_nullable_text(pc.utf8_trim(batch.column("etag").cast(pa.string()), '"')))
    stamp = [pc.fill_null(_nullable_text(batch.column(name)), "") for name in ("mtime", "size") if name in present]
    if stamp:  # "<mtime>/<size>", or the one of them a row has
        candidates.append(_nullable_text(pc.utf8_trim(pc.binary_join_element_wise(*stamp, "/"), "/")))
    if not candidates:
        return pc.fill_null(pa.nulls(batch.num_rows, pa.string()), "")
    return pc.fill_null(pc.coalesce(*candidates) if len(candidates) > 1 else candidates[0], "")


def _sizes(column: pa.Array, location: storage.Location) -> pa.Array:
    """The manifest's ``size`` column as int64 (-1 where empty)."""
    try:
        sizes = column if pa.types.is_integer(column.type) else pc.cast(_nullable_text(column), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UsageError(f"manifest {location.uri}: the 'size' column must hold whole numbers of bytes") from None
    return pc.fill_null(sizes.cast(pa.int64()), -1)


def _fetched(uris: pa.Array, sizes: pa.Array, versions: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``sizes`` and ``versions`` with the rows that have no version filled by a stat (local) or a HEAD
    request (S3) of their file (:func:`_file_version`), :data:`VERSION_THREADS` at a time; a store that
    does not answer, or refuses the set-up, stops the listing."""
    from concurrent.futures import ThreadPoolExecutor

    empty = pc.equal(versions, "").to_numpy(zero_copy_only=False)
    positions = np.flatnonzero(empty)
    if not len(positions):
        return sizes, versions
    targets = uris.take(pa.array(positions)).to_pylist()
    with ThreadPoolExecutor(max_workers=min(VERSION_THREADS, len(targets))) as pool:
        found = list(pool.map(_file_version, targets))
    mask = pa.array(empty)
    versions = pc.replace_with_mask(versions, mask, pa.array([version for version, _ in found], pa.string()))
    known = sizes.to_numpy(zero_copy_only=False).copy()
    known[positions] = np.where(known[positions] < 0, [size for _, size in found], known[positions])
    return pa.array(known, pa.int64()), versions


MISSING, UNREADABLE = "missing", "unreadable"  # the version of a file a check did not find, or could not stat


def _file_version(uri: str) -> tuple[str, int]:
    """(version, size) of one file as a folder listing gives them (mtime in ns or ETag); a file that is
    not there has the version "missing" (another one is "unreadable"), so that its row is redone, and its
    worker records the error row, when it goes missing, and again when it comes back."""
    try:
        info = storage.info(uri)
    except FileNotFoundError:
        return MISSING, -1
    except OSError:
        return UNREADABLE, -1
    except storage.StorageError as error:
        if error.systemic:
            raise
        return (MISSING if error.code in ("404", "NoSuchKey", "NotFound") else UNREADABLE), -1
    return info.version, info.size


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
