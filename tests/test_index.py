"""Index: scaler, merge, auto choice, sharded build/search/add, checksums, refusals, S3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from latentsweep_lab.zoo.embeddings import DIMS, clustered, exact_search, write_ingest_output
from latentsweep import storage
from latentsweep.errors import JobFailed, UsageError
from latentsweep.index import factory
from latentsweep.index.build import (FILE_BYTES_PER_DIM, METADATA_ROW_BYTES, WORKER_BYTES, IndexJob, add, allocate,
                                     build, check, recall_at_k, shard_memory)
from latentsweep.decision.calibration import table_key
from latentsweep.decision.vote import votes
from latentsweep.index.scaler import Scaler
from latentsweep.index.shards import ShardedIndex, merge

DIM = sum(DIMS.values())
LABELS = ["sg2", "sg3", "sana", "sd"]
FAMILIES = {"sg2": "gan", "sg3": "gan", "sana": "dm", "sd": "dm"}


def test_streamed_scaler_matches_sklearn():
    rng = np.random.default_rng(1)
    data = rng.normal(5, 3, size=(5000, 16)) * rng.uniform(0.01, 100, size=16)
    data[:, 3] = 7.0  # a constant dimension: scale 1, like scikit-learn
    merged = Scaler.empty(16)
    for chunk in np.array_split(data, 7):
        merged = merged.merge(Scaler.fit(chunk))
    reference = StandardScaler().fit(data)
    np.testing.assert_allclose(merged.mean, reference.mean_, rtol=1e-9)
    np.testing.assert_allclose(merged.scale, reference.scale_, rtol=1e-9)
    z = reference.transform(data)
    expected = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(merged.transform(data), expected, atol=1e-6)
    assert Scaler.from_dict(json.loads(json.dumps(merged.to_dict()))).count == 5000


def test_merge_keeps_the_best_and_handles_short_shards():
    a = (np.array([[0.9, 0.5, 0.1]], np.float32), np.array([[1, 2, 3]]))
    b = (np.array([[0.95, 0.2, -1.0]], np.float32), np.array([[4, 5, -1]]))
    scores, ids = merge([a, b], 4)
    assert ids.tolist() == [[4, 1, 2, 5]]
    np.testing.assert_allclose(scores, [[0.95, 0.9, 0.5, 0.2]])
    _, padded = merge([(np.array([[0.3]], np.float32), np.array([[7]]))], 3)
    assert padded.tolist() == [[7, -1, -1]]


def test_auto_choice_follows_the_memory_arithmetic():
    small = factory.choose(10_000, 256, 4 * 2**30)
    assert small.spec == "Flat" and any("n*(4d+8)" in r for r in small.reasons)
    middle = factory.choose(5_000_000, 256, 8 * 2**30)
    assert middle.spec.startswith("HNSW")
    large = factory.choose(100_000_000, 256, 8 * 2**30)
    assert large.spec.startswith("IVF") and "PQ" in large.spec and large.search_params.startswith("nprobe=")
    assert factory.ivfpq_bytes(100_000_000, 256, factory.nlist_for(100_000_000),
                               int(large.spec.split("PQ")[1])) <= 8 * 2**30
    with pytest.raises(UsageError, match="do not fit"):
        factory.choose(10**10, 256, 2**30)


@pytest.fixture(scope="module")
def reference_set(tmp_path_factory):
    vectors, assignment = clustered(3000, len(LABELS), DIM, seed=3)
    root = tmp_path_factory.mktemp("embeddings")
    labels = [LABELS[a] for a in assignment]
    ids = write_ingest_output(str(root), vectors, labels, FAMILIES, files=6)
    return root, vectors, np.array(ids), labels


@pytest.fixture(scope="module")
def flat_index(reference_set, tmp_path_factory, ray_session):
    root, *_ = reference_set
    out = tmp_path_factory.mktemp("index")
    manifest = build(IndexJob([str(root)], str(out), shards=4, quiet=True))
    return out, manifest


def test_sharded_flat_equals_brute_force(reference_set, flat_index):
    _, vectors, ids, _ = reference_set
    out, manifest = flat_index
    assert manifest.vectors == 3000 and len(manifest.shards) == 4 and manifest.index_spec == "Flat"
    assert manifest.labels == {label: int(c) for label, c in zip(*np.unique(reference_set[3], return_counts=True))}
    assert manifest.families == FAMILIES
    index = ShardedIndex.load(str(out))
    rng = np.random.default_rng(9)
    queries = np.concatenate([vectors[rng.choice(3000, 50)] + rng.normal(size=(50, DIM)) * 0.1,
                              rng.normal(size=(50, DIM)) * 3]).astype(np.float32)
    scores, found = index.search(index.prepare(queries), 10)
    expected_scores, positions = exact_search(vectors, queries, 10)
    assert np.array_equal(found, ids[positions])
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_sharded_flat_equals_brute_force_on_random_data(tmp_path, ray_session):
    rng = np.random.default_rng(21)
    vectors = rng.normal(size=(1500, DIM)).astype(np.float32) * rng.uniform(0.1, 10, DIM).astype(np.float32)
    ids = np.array(write_ingest_output(str(tmp_path / "emb"), vectors, ["x"] * 1500, {}, files=5))
    build(IndexJob([str(tmp_path / "emb")], str(tmp_path / "index"), shards=3, quiet=True))
    index = ShardedIndex.load(str(tmp_path / "index"))
    queries = rng.normal(size=(40, DIM)).astype(np.float32)
    scores, found = index.search(index.prepare(queries), 15)
    expected_scores, positions = exact_search(vectors, queries, 15)
    assert np.array_equal(found, ids[positions])
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


def test_ids_survive_save_load_and_add(reference_set, flat_index, tmp_path, ray_session):
    root, vectors, ids, _ = reference_set
    out, _ = flat_index
    index_copy = tmp_path / "index"
    import shutil

    shutil.copytree(out, index_copy)
    extra, _ = clustered(200, 2, DIM, seed=11)
    extra_ids = write_ingest_output(str(tmp_path / "more"), extra, ["new"] * 200, {"new": "dm"},
                                    files=2, id_offset=10_000)
    before = json.loads((index_copy / "manifest.json").read_text())
    manifest = add(IndexJob([str(tmp_path / "more")], str(index_copy), shards=1, quiet=True))
    assert manifest.vectors == 3200 and len(manifest.shards) == 5
    assert manifest.scaler == before["scaler"]  # the scaler stays fixed
    assert [s.index_sha256 for s in manifest.shards[:4]] == [s["index_sha256"] for s in before["shards"]]
    assert manifest.labels["new"] == 200 and manifest.families["new"] == "dm"
    index = ShardedIndex.load(str(index_copy))
    probe = np.concatenate([vectors[:20], extra[:20]])
    _, found = index.search(index.prepare(probe), 1)
    assert found[:, 0].tolist() == list(ids[:20]) + extra_ids[:20]
    assert set(index.metadata.column("id").to_pylist()) == set(ids.tolist()) | set(extra_ids)


@pytest.mark.parametrize("spec,bound", [("HNSW32", 0.9), ("IVF16,Flat", 0.9), ("IVF16,PQ16x4", 0.4)])
def test_approximate_recall_on_clustered_data(reference_set, flat_index, tmp_path, spec, bound):
    """The build measures recall@10 against exact search on sampled vectors (at most 1,000; a fifth of
    3,000 for types that train, which never train on them) at each search params of the ladder and
    records it; the test's own measurement agrees."""
    root, vectors, _, _ = reference_set
    out = tmp_path / spec.replace(",", "_")
    lines = []
    manifest = build(IndexJob([str(root)], str(out), index_spec=spec, shards=3, quiet=True, train_sample=3000,
                              log=lines.append))
    assert manifest.index_spec == spec
    sampled = 600 if factory.needs_training(spec) else 1000
    assert manifest.recall_queries == manifest.open_set_queries == sampled and manifest.recall_at_10 >= bound
    assert [t["search_params"] for t in manifest.recall_tried] == factory.search_ladder(spec)
    assert manifest.search_params in [t["search_params"] for t in manifest.recall_tried]
    print(f"{spec}: recorded {manifest.recall_tried}")
    assert any(f"recall@10 {manifest.recall_at_10:.3f} against exact search on {sampled} held-out" in line
               for line in lines)
    exact = ShardedIndex.load(str(flat_index[0]))
    approximate = ShardedIndex.load(str(out))
    queries = vectors[::15] + np.random.default_rng(2).normal(size=(200, DIM)).astype(np.float32) * 0.2
    _, truth = exact.search(exact.prepare(queries), 10)
    _, found = approximate.search(approximate.prepare(queries), 10)
    recall = np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)])
    print(f"{spec}: recall@10 = {recall:.3f}")
    assert recall >= bound


def test_corrupt_shard_is_refused_naming_the_file(flat_index, tmp_path):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(flat_index[0], copy)
    shard = copy / flat_index[1].shards[2].index_file
    assert shard.name == "shard-00002.faiss" and shard.parent.parent.name == flat_index[1].build_version
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(JobFailed, match="shard-00002.faiss"):
        ShardedIndex.load(str(copy))


def test_wrong_dimension_and_mixed_codecs_are_refused(flat_index, tmp_path, ray_session):
    index = ShardedIndex.load(str(flat_index[0]))
    with pytest.raises(UsageError, match="dims"):
        index.prepare(np.zeros((2, DIM + 1), np.float32))
    vectors, assignment = clustered(100, 2, DIM, seed=5)
    write_ingest_output(str(tmp_path / "a"), vectors, ["x"] * 100, {}, files=1, weights="w1")
    write_ingest_output(str(tmp_path / "b"), vectors, ["x"] * 100, {}, files=1, weights="w2", id_offset=500)
    with pytest.raises(UsageError, match="different spaces"):
        build(IndexJob([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"), quiet=True))
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(UsageError, match="lack"):
        build(IndexJob([str(tmp_path / "a")], str(tmp_path / "out2"), features="selected", quiet=True))


def test_s3_roundtrip(reference_set, s3_env, ray_session):
    root, vectors, ids, _ = reference_set
    bucket = s3_env["bucket"]
    for path in sorted((root / "embeddings").iterdir()):
        storage.write_bytes(f"s3://{bucket}/emb/embeddings/{path.name}", path.read_bytes())
    build(IndexJob([f"s3://{bucket}/emb"], f"s3://{bucket}/index", shards=2, quiet=True))
    index = ShardedIndex.load(f"s3://{bucket}/index")
    _, found = index.search(index.prepare(vectors[:5]), 1)
    assert found[:, 0].tolist() == list(ids[:5])
    for _ in range(2):  # versions on S3: the third build removes the first, the second stays loadable
        build(IndexJob([f"s3://{bucket}/emb"], f"s3://{bucket}/index", shards=1, quiet=True))
    assert not storage.exists(f"s3://{bucket}/index/v-000001/manifest.json")
    assert not list(storage.list_files(f"s3://{bucket}/index/v-000001", missing_ok=True))
    pinned = ShardedIndex.load(f"s3://{bucket}/index/v-000002")
    assert pinned.root == f"s3://{bucket}/index" and len(pinned.indices) == 1
    _, found = pinned.search(pinned.prepare(vectors[:5]), 1)
    assert found[:, 0].tolist() == list(ids[:5])


def test_truncated_embeddings_and_tampered_manifest_are_refused(flat_index, tmp_path, ray_session):
    """A truncated Parquet input stops the build with an error naming the file and writes no index;
    a manifest whose recorded checksum does not match its shard is refused naming the shard."""
    import shutil

    from latentsweep.storage import StorageError

    vectors, assignment = clustered(200, 2, DIM, seed=6)
    write_ingest_output(str(tmp_path / "emb"), vectors, [LABELS[a] for a in assignment], FAMILIES, files=2)
    victim = sorted((tmp_path / "emb" / "embeddings").glob("*.parquet"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(StorageError, match=victim.name):
        build(IndexJob([str(tmp_path / "emb")], str(tmp_path / "out"), quiet=True))
    assert not (tmp_path / "out" / "manifest.json").exists()

    copy = tmp_path / "index"
    shutil.copytree(flat_index[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["shards"][1]
    entry["index_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(JobFailed, match=entry["index_file"].rsplit("/", 1)[-1]):
        ShardedIndex.load(str(copy))


def test_task_memory_arithmetic_and_sample_shares():
    """Shard tasks request memory=: the worker, the index twice (it and its serialised copy), every
    row's metadata, one file in flight and the recall queries; samples split evenly over uneven files."""
    d, n, largest = 256, 1_000_000, 10_000
    flat = shard_memory("Flat", d, n, largest)
    assert flat == WORKER_BYTES + 2 * n * (4 * d + 8) + n * METADATA_ROW_BYTES + largest * (
        d * FILE_BYTES_PER_DIM + METADATA_ROW_BYTES)
    assert flat == 2_575_955_456  # 2.40 GiB: 1.92 GiB of them the index twice
    ivfpq = shard_memory("IVF4096,PQ32", d, n, largest)
    assert ivfpq - shard_memory("IVF4096,PQ32", d, 0, largest) == n * (2 * (32 + 8) + METADATA_ROW_BYTES)
    assert factory.index_bytes("IVF4096,PQ32", n, d) == factory.ivfpq_bytes(n, d, 4096, 32)
    assert factory.index_bytes("HNSW32", n, d) == factory.hnsw_bytes(n, d)
    assert factory.index_bytes("IVF16,PQ16x4", 100, 32) == 100 * (8 + 8) + 16 * 32 * 4 + 16 * 32 * 4
    assert shard_memory("Flat", d, n, largest, queries=1000) > flat
    assert factory.min_train_points("IVF1024,Flat") == 39 * 1024
    assert factory.min_train_points("IVF16,PQ32") == 39 * 256 and factory.min_train_points("HNSW32") == 0
    assert factory.search_ladder("IVF16,Flat") == ["nprobe=8", "nprobe=16"]
    assert factory.search_ladder("HNSW32")[:2] == ["efSearch=128", "efSearch=256"]
    assert factory.search_ladder("PQ8") == [""]
    assert allocate([5, 100, 100], 60) == [5, 28, 27]
    assert allocate([5, 100], 1000) == [5, 100] and allocate([3, 0, 9], 0) == [0, 0, 0]
    rng = np.random.default_rng(4)
    for _ in range(200):
        capacities = rng.integers(0, 50, size=rng.integers(1, 8)).tolist()
        total = int(rng.integers(0, 300))
        shares = allocate(capacities, total)
        assert sum(shares) == min(total, sum(capacities)) and all(0 <= s <= c for s, c in zip(shares, capacities))
        assert all(s >= max(shares) - 1 for s, c in zip(shares, capacities) if s < c)  # even where rows allow
    truth = np.array([[7, 1, 2, 3], [8, 4, 5, -1]])
    found = np.array([[1, 7, 9, 3], [4, 6, -1, -1]])
    assert recall_at_k(truth, found, np.array([7, 8]), 3) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_check_refuses_a_recall_floor_outside_zero_one(reference_set):
    with pytest.raises(UsageError, match="--min-recall"):
        check(IndexJob([str(reference_set[0])], "unused", min_recall=1.5), existing=None)


def test_check_refuses_an_open_set_target_outside_zero_one():
    with pytest.raises(UsageError, match="--open-set-target"):
        check(IndexJob(["unused"], "unused", open_set_target=1.0), existing=None)


def test_build_calibrates_the_open_set_threshold_on_its_references(reference_set, flat_index):
    """About the target share of all references (5%; 1,000 of 3,000 sampled) score below the stored
    threshold against their nearest other reference, searched exactly."""
    _, vectors, _, _ = reference_set
    out, manifest = flat_index
    assert manifest.open_set_target == 0.05 and manifest.open_set_queries == 1000
    prepared = ShardedIndex.load(str(out)).prepare(vectors)
    similarity = prepared @ prepared.T
    np.fill_diagonal(similarity, -np.inf)
    below = float((similarity.max(axis=1) < manifest.open_set_threshold).mean())
    assert 0.02 <= below <= 0.09, below


def test_build_calibrates_the_votes_confidence_on_its_references(tmp_path, ray_session):
    """One table per k up to 10 and vote kind, fitted on the 1,000 sampled references of overlapping
    classes (wide clusters); at k = 10 the tables' average probability is the leave-one-out vote
    accuracy of all 3,000 references (searched exactly here) within sampling error, and a larger vote
    share never reads as less likely."""
    vectors, assignment = clustered(3000, len(LABELS), DIM, seed=8, spread=2.5)
    labels = [LABELS[a] for a in assignment]
    write_ingest_output(str(tmp_path / "embeddings"), vectors, labels, FAMILIES, files=3)
    manifest = build(IndexJob([str(tmp_path / "embeddings")], str(tmp_path / "index"), shards=2, quiet=True))
    assert set(manifest.confidence) == {table_key(k, w) for k in range(1, 11) for w in (False, True)}
    table = manifest.confidence[table_key(10, False)]
    assert sum(table["queries"]) == 1000 and np.all(np.diff(table["probability"]) >= 0)
    prepared = ShardedIndex.load(str(tmp_path / "index")).prepare(vectors)
    similarity = prepared @ prepared.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :10]
    codes = np.array([LABELS.index(label) for label in labels])
    decided = votes(codes[nearest], np.take_along_axis(similarity, nearest, axis=1))
    accuracy = float((decided.codes == codes).mean())
    expected = np.dot(table["probability"], table["queries"]) / 1000
    assert abs(expected - accuracy) < 0.05, (expected, accuracy)
    assert 0.3 < accuracy < 0.995  # the fixture's clusters overlap: a table that could be wrong


def _corrupt_column(path, column: str) -> None:
    """Overwrite the bytes of ``column``'s chunk in every row group of a Parquet file."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for group in range(meta.num_row_groups):
        for position in range(meta.num_columns):
            chunk = meta.row_group(group).column(position)
            if chunk.path_in_schema.split(".")[0] == column:
                start = chunk.dictionary_page_offset or chunk.data_page_offset
                data[start:start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))


def test_reads_only_the_columns_the_index_uses(tmp_path, ray_session):
    """Scan and shard tasks read id, uri, label, family, the provenance and the feature columns only:
    with an unused tensor and ``sha256`` destroyed in every file the index still builds, and exactly."""
    from latentsweep.index import reader

    rng = np.random.default_rng(8)
    vectors = rng.normal(size=(400, DIM)).astype(np.float32)
    extra = {**DIMS, "residual_luma": 16}
    padded = np.concatenate([vectors, rng.normal(size=(400, 16)).astype(np.float32)], axis=1)
    ids = np.array(write_ingest_output(str(tmp_path / "emb"), padded, ["x"] * 400, {}, files=2, dims=extra))
    files = sorted((tmp_path / "emb" / "embeddings").glob("*.parquet"))
    for path in files:
        _corrupt_column(path, "residual_luma")
        _corrupt_column(path, "sha256")
    with pytest.raises(Exception):
        reader.read(str(files[0]), "2lat")  # a full read fails on the destroyed columns
    build(IndexJob([str(tmp_path / "emb")], str(tmp_path / "index"), shards=2, quiet=True))
    index = ShardedIndex.load(str(tmp_path / "index"))
    _, found = index.search(index.prepare(vectors[:30]), 5)
    _, positions = exact_search(vectors, vectors[:30], 5)
    assert np.array_equal(found, ids[positions])


def test_training_sample_has_39_points_per_centroid_or_says_why(reference_set, tmp_path, ray_session):
    """IVF trains on at least 39 vectors per list even when --train-sample asks for fewer; with too few
    vectors the build says so, and refuses a type with more lists than training vectors."""
    root, *_ = reference_set
    lines = []
    build(IndexJob([str(root)], str(tmp_path / "ivf16"), index_spec="IVF16,Flat", shards=2, train_sample=100,
                   log=lines.append))
    assert any("training IVF16,Flat on 624 sampled vectors (39 per centroid" in line for line in lines), lines
    small, _ = clustered(500, 2, DIM, seed=12)
    write_ingest_output(str(tmp_path / "small"), small, ["x"] * 500, {}, files=3)
    lines.clear()
    manifest = build(IndexJob([str(tmp_path / "small")], str(tmp_path / "ivf64"), index_spec="IVF64,Flat",
                              shards=2, log=lines.append))
    assert any("warning: training IVF64,Flat on 400 vectors, fewer than FAISS's recommended 39 per centroid "
               "(2496)" in line and "100 more are held out" in line for line in lines), lines
    assert manifest.recall_queries == 100
    with pytest.raises(UsageError, match="IVF1024,Flat trains 1024 centroids"):
        build(IndexJob([str(tmp_path / "small")], str(tmp_path / "ivf1024"), index_spec="IVF1024,Flat", quiet=True))
    assert not (tmp_path / "ivf1024" / "manifest.json").exists()


def test_scaler_is_merged_in_windows_in_file_order(reference_set, flat_index, tmp_path, monkeypatch, ray_session):
    """The driver merges scan results SCAN_WINDOW at a time, in file order: the same scaler to the bit."""
    from latentsweep.index import build as build_module

    monkeypatch.setattr(build_module, "SCAN_WINDOW", 4)
    manifest = build(IndexJob([str(reference_set[0])], str(tmp_path / "index"), shards=2, quiet=True))
    assert manifest.scaler == flat_index[1].scaler


def test_a_rebuild_leaves_readers_of_the_old_version_on_it(tmp_path, ray_session):
    """Each build writes a new version folder and switches manifest.json last: an engine loaded before
    the rebuild, and any load of the old version's address, keep the old results (checksums verified);
    a fresh load of the index gets the new ones; the build after next removes the oldest version."""
    from latentsweep.index.manifest import load, locate, version_uri
    from latentsweep.query.actor import QueryEngine

    old, _ = clustered(300, 3, DIM, seed=31)
    new, _ = clustered(300, 3, DIM, seed=32)
    old_ids = write_ingest_output(str(tmp_path / "old"), old, ["a"] * 300, {"a": "gan"}, files=2)
    new_ids = write_ingest_output(str(tmp_path / "new"), new, ["b"] * 300, {"b": "dm"}, files=2, id_offset=5000)
    index = str(tmp_path / "index")
    first = build(IndexJob([str(tmp_path / "old")], index, shards=2, quiet=True))
    assert first.build_version == "v-000001"
    assert all(s.index_file.startswith("v-000001/shards/") for s in first.shards)
    engine = QueryEngine(index, use_gpu=False)
    pinned = version_uri(index, first)
    probe = old[:10]
    _, before, labels_before = engine.search(probe, 3)
    assert before[:, 0].tolist() == old_ids[:10] and set(labels_before.reshape(-1)) == {"a"}

    second = build(IndexJob([str(tmp_path / "new")], index, shards=2, quiet=True))
    assert second.build_version == "v-000002" and load(index).build_version == "v-000002"
    _, during, labels_during = engine.search(probe, 3)  # loaded before the switch: the old version
    assert np.array_equal(during, before) and set(labels_during.reshape(-1)) == {"a"}
    assert locate(pinned)[1].build_version == "v-000001"
    pinned_engine = QueryEngine(pinned, use_gpu=False)  # started on the old manifest after the rebuild
    assert np.array_equal(pinned_engine.search(probe, 3)[1], before)
    fresh = ShardedIndex.load(index)
    _, found = fresh.search(fresh.prepare(new[:10]), 1)
    assert found[:, 0].tolist() == new_ids[:10] and set(fresh.metadata.column("label").to_pylist()) == {"b"}
    assert (tmp_path / "index" / "v-000001").is_dir() and (tmp_path / "index" / "v-000002").is_dir()

    victim = tmp_path / "index" / first.shards[1].index_file  # the old version is still verified
    victim.write_bytes(victim.read_bytes()[:-3] + b"xyz")
    with pytest.raises(JobFailed, match="shard-00001.faiss"):
        ShardedIndex.load(pinned)

    third = build(IndexJob([str(tmp_path / "old")], index, shards=1, quiet=True))
    assert third.build_version == "v-000003"
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["manifest.json", "v-000002", "v-000003"]
    assert ShardedIndex.load(version_uri(index, second)).manifest.vectors == 300  # the previous one stays
    with pytest.raises(UsageError, match="no index"):
        ShardedIndex.load(pinned)


def test_duplicate_ids_are_refused_by_build_and_skipped_by_add(tmp_path, ray_session):
    """An id in two input files stops the build naming it and both files; the same ingest passed twice is
    read once; ``add`` skips ids already indexed and says how many; adding an indexed ingest adds nothing."""
    vectors, _ = clustered(400, 2, DIM, seed=41)
    first = write_ingest_output(str(tmp_path / "a"), vectors[:200], ["x"] * 200, {}, files=2)
    write_ingest_output(str(tmp_path / "b"), vectors[150:], ["y"] * 250, {}, files=2, id_offset=150)
    with pytest.raises(UsageError, match=r"id -?\d+ appears in both .*a/embeddings/shard-0000\d.parquet and "
                                         r".*b/embeddings/shard-00000.parquet"):
        build(IndexJob([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "refused"), quiet=True))
    assert not (tmp_path / "refused" / "manifest.json").exists()

    index = str(tmp_path / "index")
    twice = build(IndexJob([str(tmp_path / "a"), str(tmp_path / "a")], index, shards=2, quiet=True))
    assert twice.vectors == 200 and twice.skipped_existing_ids == 0
    lines = []
    grown = add(IndexJob([str(tmp_path / "b")], index, shards=1, log=lines.append))
    assert grown.vectors == 400 and grown.skipped_existing_ids == 50 and grown.labels == {"x": 200, "y": 200}
    assert any("added 200, skipped 50 ids already in the index" in line for line in lines), lines
    assert grown.build_version == "v-000002" and grown.shards[-1].index_file.startswith("v-000002/")
    index_ids = ShardedIndex.load(index).metadata.column("id").to_numpy()
    assert len(index_ids) == len(set(index_ids)) == 400 and set(first) <= set(index_ids)
    lines.clear()
    again = add(IndexJob([str(tmp_path / "b"), str(tmp_path / "a")], index, log=lines.append))
    assert again.vectors == 400 and again.skipped_existing_ids == 450 and again.build_version == "v-000002"
    assert any("all 450 ids" in line and "nothing to add" in line for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["manifest.json", "v-000001", "v-000002"]


def test_auto_refuses_a_type_below_the_recall_floor(reference_set, tmp_path, ray_session):
    """--auto measures recall@10 of its choice, tries larger nprobe first, records the params that reach
    --min-recall, and refuses (saying what it tried) when none does, leaving no index behind."""
    root, vectors, ids, _ = reference_set
    with pytest.raises(UsageError) as refused:  # 120 kB: IVF256,PQ8, 4 dims per byte of code
        build(IndexJob([str(root)], str(tmp_path / "small"), auto=True, memory_budget=120_000, shards=2,
                       quiet=True))
    message = str(refused.value)
    print(message)
    assert "IVF256,PQ8" in message and "below --min-recall 0.9" in message
    assert "nprobe=8: " in message and "nprobe=256: " in message
    assert not (tmp_path / "small").exists() or not any((tmp_path / "small").iterdir())
    lines = []
    manifest = build(IndexJob([str(root)], str(tmp_path / "larger"), auto=True, memory_budget=190_000, shards=2,
                              log=lines.append))
    assert manifest.index_spec == "IVF256,PQ32" and manifest.recall_at_10 >= 0.9
    reached = next(t for t in manifest.recall_tried if t["recall_at_10"] >= 0.9)
    assert manifest.search_params == reached["search_params"] != "nprobe=8"
    assert manifest.recall_tried[0]["recall_at_10"] < 0.9  # the default nprobe was not enough
    print(manifest.recall_tried)
    index = ShardedIndex.load(str(tmp_path / "larger"))
    _, found = index.search(index.prepare(vectors[:50]), 1)
    assert np.mean(found[:, 0] == ids[:50]) >= 0.9
