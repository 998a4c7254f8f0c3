"""Plan an ingest: stable ids, deterministic shards, and what is left to do. Pure functions.

Same inputs -> same ids -> same shards -> same file names. A shard's digest covers its items' URIs
and versions and the embedding settings, so a shard is redone when any of these change, and skipped
when its done marker carries the same digest.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from latentsweep.ingest.sources import SourceItem
from latentsweep.schema import shard_of, stable_id


@dataclass(frozen=True)
class PlannedItem:
    id: int
    shard: int
    uri: str
    size: int
    version: str
    label: str | None
    family: str | None


@dataclass(frozen=True)
class Shard:
    shard_id: int
    items: tuple[PlannedItem, ...]
    digest: str

    @property
    def name(self) -> str:
        return shard_name(self.shard_id)


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def num_shards_for(count: int, shard_size: int) -> int:
    return max(1, math.ceil(count / max(1, shard_size)))


def plan(items: list[SourceItem], shard_size: int, settings: dict) -> list[Shard]:
    """Assign ids and shards; duplicate URIs are collapsed (one id each); empty shards are left out."""
    unique = {item.uri: item for item in items}
    count = num_shards_for(len(unique), shard_size)
    planned: dict[int, list[PlannedItem]] = {index: [] for index in range(count)}
    for item in unique.values():
        item_id = stable_id(item.uri)
        shard = shard_of(item_id, count)
        planned[shard].append(PlannedItem(item_id, shard, item.uri, item.size, item.version,
                                          item.label, item.family))
    settings_text = json.dumps(settings, sort_keys=True)
    shards = []
    for shard_id, members in planned.items():
        if not members:  # hashing leaves some shards of a small job empty: nothing to write or redo
            continue
        members.sort(key=lambda p: p.id)
        hasher = hashlib.sha256(settings_text.encode())
        for member in members:
            hasher.update(f"{member.id}\t{member.uri}\t{member.version}\t{member.label}\t{member.family}\n".encode())
        shards.append(Shard(shard_id, tuple(members), hasher.hexdigest()))
    return shards


def pending(shards: list[Shard], done: dict[int, str]) -> list[Shard]:
    """Shards whose done marker is missing or carries another digest."""
    return [shard for shard in shards if done.get(shard.shard_id) != shard.digest]
