"""The index manifest (JSON, versioned) and checksum verification of everything it lists.

Every build or add writes its files under a version folder of its own (``INDEX/v-NNNNNN/``) with a
copy of its manifest there, then replaces ``INDEX/manifest.json`` in one write: a reader that loaded
the previous manifest keeps reading the previous version's files, which the next build leaves in
place (it removes only versions older than the one it replaces). ``INDEX/v-NNNNNN`` itself is a
loadable index address pinned to that version: file paths in a manifest are relative to the index
root, so a version folder resolves them against its parent.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field

from latentsweep import storage
from latentsweep.errors import JobFailed, UsageError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 2          # 2: version folders, recall, skipped ids (version 1 manifests still load)
READABLE_VERSIONS = (1, 2)
VERSION_FOLDER = re.compile(r"^v-(\d{6,})$")


@dataclass
class ShardEntry:
    shard_id: int
    index_file: str        # relative to the index root
    index_sha256: str
    index_bytes: int
    metadata_file: str
    metadata_sha256: str
    count: int
    copies_file: str | None = None    # (id, source) of the shard's processed copies (ingest/augment.py)
    copies_sha256: str | None = None


@dataclass
class Manifest:
    dimension: int
    features: str
    columns: list[str]
    pooling: str
    codec: str
    weights_digest: str
    scaler: dict
    index_spec: str
    search_params: str
    shards: list[ShardEntry]
    labels: dict[str, int] = field(default_factory=dict)      # label -> reference count
    families: dict[str, str] = field(default_factory=dict)    # label -> family
    sources: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    metric: str = "inner_product"
    version: int = MANIFEST_VERSION
    build_version: str = ""                                   # "v-000003": the folder of this version's files
    recall_at_10: float | None = None                         # ANN types: vs exact search, self excluded
    recall_queries: int = 0                                   # held-out vectors the recall was measured on
    recall_tried: list[dict] = field(default_factory=list)    # [{"search_params", "recall_at_10"}], cheapest first
    skipped_existing_ids: int = 0                             # ids the last ``index add`` found already indexed
    open_set_threshold: float | None = None                   # sweeps' default: calibrated leave-one-out at build
    open_set_target: float | None = None                      # the false-unknown rate it was calibrated for
    open_set_queries: int = 0                                 # sampled references it was calibrated on
    confidence: dict = field(default_factory=dict)            # vote setting -> P(right | vote share), same sample
    copies_per_source: int = 0                                # at most this many processed copies share a source

    def files(self) -> set[str]:
        """Every file this manifest lists, relative to the index root, with its version's manifest copy."""
        listed = {name for shard in self.shards for name in (shard.index_file, shard.metadata_file, shard.copies_file)
                  if name}
        return listed | ({f"{self.build_version}/{MANIFEST_NAME}"} if self.build_version else set())

    @property
    def vectors(self) -> int:
        return sum(shard.count for shard in self.shards)

    def to_json(self) -> str:
        data = asdict(self)
        data["vectors"] = self.vectors
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str) -> "Manifest":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise JobFailed(f"{source} is not valid JSON: {error}") from None
        if data.get("version") not in READABLE_VERSIONS:
            raise UsageError(f"{source} is index manifest version {data.get('version')}; this latentsweep "
                             f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: rebuild the index")
        data.pop("vectors", None)
        data["shards"] = [ShardEntry(**entry) for entry in data["shards"]]
        return cls(**data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(root: str) -> Manifest:
    """The manifest of the index at ``root``: its current version, or the version ``root`` names when
    it is a version folder (``INDEX/v-NNNNNN``)."""
    location = storage.Location.parse(root).join(MANIFEST_NAME)
    if not storage.exists(location):
        raise UsageError(f"no index at {root}: {location.uri} is missing")
    return Manifest.from_json(storage.read_bytes(location).decode(), location.uri)


def locate(uri: str) -> tuple[str, Manifest]:
    """(index root, manifest) of an index address: ``INDEX`` (its current version) or ``INDEX/v-NNNNNN``
    (that version, whatever ``INDEX/manifest.json`` says now); the manifest's file paths are relative
    to the returned root."""
    location = storage.Location.parse(uri)
    manifest = load(location.uri)
    parent, _, name = location.uri.rstrip("/").rpartition("/")
    if manifest.build_version and name == manifest.build_version and parent:
        return parent, manifest
    return location.uri, manifest


def version_uri(root: str, manifest: Manifest) -> str:
    """The address that pins ``manifest``'s version (for readers that must not follow a rebuild)."""
    location = storage.Location.parse(root)
    return location.join(manifest.build_version).uri if manifest.build_version else location.uri


def save(root: str, manifest: Manifest) -> None:
    """Write ``manifest``: first its copy in its version folder, then ``root/manifest.json`` in one
    atomic write (a temporary file renamed locally, one PUT on S3), which switches readers over."""
    location, text = storage.Location.parse(root), manifest.to_json().encode()
    if manifest.build_version:
        storage.write_bytes(location.join(manifest.build_version, MANIFEST_NAME), text)
    storage.write_bytes(location.join(MANIFEST_NAME), text)


def version_number(relative: str) -> int | None:
    """The counter of a path below the index root that lies in a version folder, else None."""
    found = VERSION_FOLDER.match(relative.split("/", 1)[0])
    return int(found.group(1)) if found else None


def clean(root: str, keep: list[Manifest]) -> list[str]:
    """Delete the files of versions no manifest in ``keep`` lists (the current one and the one it
    replaced, which a running sweep may still read), and of the layout before versions
    (``shards/``, ``metadata/``) when no kept manifest lists them. Returns what was deleted."""
    location = storage.Location.parse(root)
    kept = set().union(*(manifest.files() for manifest in keep))
    deleted = [relative for relative in (location.relative(info.uri)
                                         for info in storage.list_files(location, missing_ok=True))
               if relative not in kept and (version_number(relative) is not None
                                            or relative.split("/", 1)[0] in ("shards", "metadata"))]
    storage.delete_many(location.join(relative) for relative in deleted)
    if not location.is_s3:  # local folders outlive their files: drop the emptied version folders
        import os

        for name in sorted({relative.split("/", 1)[0] for relative in deleted}):
            for folder, _, _ in sorted(os.walk(location.join(name).key), reverse=True):
                if not os.listdir(folder):
                    os.rmdir(folder)
    return deleted
