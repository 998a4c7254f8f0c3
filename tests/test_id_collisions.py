"""Two URIs whose 64-bit ids collide (about once in 37 corpora of 1B items) are both ingested: the
second takes an alternative id, recorded in the plan and the same on every run. The collision is
forced by giving two chosen files the same hash in the planning driver; everything else is real."""

from __future__ import annotations

import numpy as np

from images import photo_corpus
from latentsweep import schema, storage
from latentsweep.codec.settings import EmbedSettings
from latentsweep.index.build import IndexJob, build
from latentsweep.ingest import plan as planning
from latentsweep.ingest.run import IngestJob, run

COLLIDING = ("alpha/001.png", "beta/002.png")


def test_colliding_uris_both_get_rows_and_keep_their_ids_across_runs(tmp_path, monkeypatch, ray_session):
    photo_corpus(tmp_path / "corpus", labels=("alpha", "beta"), per_label=3)
    forced = schema.stable_id(str(tmp_path / "corpus" / COLLIDING[0]))
    monkeypatch.setattr(planning, "stable_id",
                        lambda uri: forced if uri.endswith(COLLIDING) else schema.stable_id(uri))

    def ingest():
        return run(IngestJob(str(tmp_path / "corpus"), str(tmp_path / "emb"),
                             EmbedSettings(weights="untrained", feature_set="2lat", device="cpu"),
                             shard_size=2, labels_from_folders=True, augment="none", quiet=True))

    first = ingest()
    assert first.collisions == 1 and first.embedded == 6 and first.failed == 0
    rows = storage.read_table(str(tmp_path / "emb" / "embeddings"), columns=["id", "uri"])
    ids = dict(zip(rows.column("uri").to_pylist(), rows.column("id").to_pylist()))
    colliding = [ids[uri] for uri in ids if uri.endswith(COLLIDING)]
    assert len(set(ids.values())) == 6 and forced in colliding and len(set(colliding)) == 2
    again = ingest()
    assert again.collisions == 1 and again.shards_already_done == again.shards and again.items_encoded == 0
    rows = storage.read_table(str(tmp_path / "emb" / "embeddings"), columns=["id", "uri"])
    assert dict(zip(rows.column("uri").to_pylist(), rows.column("id").to_pylist())) == ids
    manifest = build(IndexJob([str(tmp_path / "emb")], str(tmp_path / "index"), shards=1, quiet=True))
    assert manifest.vectors == 6


def test_an_alternative_id_stays_in_its_id_range_and_depends_on_the_uri_alone():
    base = schema.stable_id("s3://bucket/a.png")
    one, two = (planning.alternative_id(base, "s3://bucket/b.png", attempt) for attempt in (1, 2))
    assert one != two and one != base
    ranges = planning._partition(np.array([base, one, two], np.int64))
    assert len(set(ranges.tolist())) == 1
    assert planning.alternative_id(base, "s3://bucket/b.png", 1) == one
