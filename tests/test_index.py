"""Index: scaler, merge, auto choice, sharded build/search/add, checksums, refusals, S3."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from latentsweep.zoo.embeddings import DIMS, clustered, exact_search, write_ingest_output
from latentsweep import storage
from latentsweep.errors import JobFailed, UsageError
from latentsweep.index import factory
from latentsweep.index.build import IndexJob, add, build
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
    root, vectors, _, _ = reference_set
    out = tmp_path / spec.replace(",", "_")
    manifest = build(IndexJob([str(root)], str(out), index_spec=spec, shards=3, quiet=True, train_sample=3000))
    assert manifest.index_spec == spec
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
    shard = copy / "shards" / "shard-00002.faiss"
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
