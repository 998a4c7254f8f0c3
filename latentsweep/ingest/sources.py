"""List an ingest source once: a folder or S3 prefix (recursive), or a manifest (Parquet/CSV)."""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath

from latentsweep import storage
from latentsweep.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
LATENT_SUFFIXES = (".pt",)
MANIFEST_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class SourceItem:
    uri: str
    size: int = -1
    version: str = ""
    label: str | None = None
    family: str | None = None


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
                families: dict[str, str] | None = None) -> tuple[list[SourceItem], list[str]]:
    """(items to ingest, skipped URIs with unsupported suffixes). Items are sorted by URI."""
    families = families or {}
    if is_manifest(source):
        items = _read_manifest(source)
        skipped: list[str] = []
    else:
        root = storage.Location.parse(source)
        items, skipped = [], []
        for info in storage.list_files(root):
            if not info.uri.lower().endswith(IMAGE_SUFFIXES + LATENT_SUFFIXES):
                skipped.append(info.uri)
                continue
            label = None
            if labels_from_folders:
                parts = PurePosixPath(root.relative(info.uri).replace(os.sep, "/")).parts
                label = parts[0] if len(parts) > 1 else None
            items.append(SourceItem(info.uri, info.size, info.version, label))
    items = [item if item.family or item.label not in families else
             SourceItem(item.uri, item.size, item.version, item.label, families[item.label])
             for item in items]
    return sorted(items, key=lambda item: item.uri), skipped


def _read_manifest(source: str) -> list[SourceItem]:
    import io

    import pyarrow.csv as pacsv

    location = storage.Location.parse(source)
    if source.lower().endswith(".csv"):
        table = pacsv.read_csv(io.BytesIO(storage.read_bytes(location)))
    else:
        table = storage.read_table(location)
    if "uri" not in table.column_names:
        raise UsageError(f"manifest {source} has no 'uri' column (columns: {', '.join(table.column_names)})")
    folder = posixpath.dirname(location.key) if location.is_s3 else os.path.dirname(location.key)
    items = []
    for row in table.to_pylist():
        uri = str(row["uri"])
        if "://" not in uri and not os.path.isabs(uri):  # relative to the manifest; may climb out of it
            uri = (f"s3://{location.bucket}/{posixpath.normpath(posixpath.join(folder, uri)).lstrip('/')}"
                   if location.is_s3 else os.path.normpath(os.path.join(folder, uri)))
        items.append(SourceItem(uri, label=_text(row.get("label")), family=_text(row.get("family"))))
    return items


def _text(value) -> str | None:
    return None if value is None or value == "" else str(value)
