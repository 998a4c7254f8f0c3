"""The index manifest (JSON, versioned) and checksum verification of everything it lists."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

from latentsweep import storage
from latentsweep.errors import JobFailed, UsageError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class ShardEntry:
    shard_id: int
    index_file: str        # relative to the index root
    index_sha256: str
    index_bytes: int
    metadata_file: str
    metadata_sha256: str
    count: int


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
        if data.get("version") != MANIFEST_VERSION:
            raise UsageError(f"{source} is index manifest version {data.get('version')}; this latentsweep "
                             f"reads version {MANIFEST_VERSION}: rebuild the index")
        data.pop("vectors", None)
        data["shards"] = [ShardEntry(**entry) for entry in data["shards"]]
        return cls(**data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(root: str) -> Manifest:
    location = storage.Location.parse(root).join(MANIFEST_NAME)
    if not storage.exists(location):
        raise UsageError(f"no index at {root}: {location.uri} is missing")
    return Manifest.from_json(storage.read_bytes(location).decode(), location.uri)


def save(root: str, manifest: Manifest) -> None:
    storage.write_bytes(storage.Location.parse(root).join(MANIFEST_NAME), manifest.to_json().encode())


def read_verified(root: str, relative: str, expected_sha256: str) -> bytes:
    """Bytes of a file the manifest lists, refused when its checksum differs."""
    location = storage.Location.parse(root).join(relative)
    data = storage.read_bytes(location)
    if sha256(data) != expected_sha256:
        raise JobFailed(f"checksum mismatch for {location.uri}: the file is corrupt or was replaced "
                        f"(expected sha256 {expected_sha256[:16]}..., found {sha256(data)[:16]}...)")
    return data
