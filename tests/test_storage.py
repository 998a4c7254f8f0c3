"""The storage layer against the local filesystem and a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from latentsweep import storage
from latentsweep.storage import Location, StorageError


def test_parse_uris(tmp_path):
    assert Location.parse("s3://bucket/a/b") == Location("s3", "bucket", "a/b")
    assert Location.parse(f"file://{tmp_path}/x").key == f"{tmp_path}/x"
    assert Location.parse("relative/dir").key == os.path.abspath("relative/dir")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        Location.parse("gs://bucket/x")
    with pytest.raises(StorageError, match="without a bucket"):
        Location.parse("s3:///key")


def test_join_refuses_to_leave_the_prefix():
    root = Location.parse("s3://bucket/out")
    assert root.join("part-00001.parquet").uri == "s3://bucket/out/part-00001.parquet"
    for bad in ("../escape", "a/../../b", "/abs"):
        with pytest.raises(StorageError, match="refusing to leave"):
            root.join(bad)


def roundtrip(uri: str) -> None:
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "uri": ["a", "b", "c"]})
    storage.write_table(uri, table, metadata={"latentsweep.schema": "errors/1"})
    back = storage.read_table(uri)
    assert back.select(["id", "uri"]).equals(table)
    assert back.schema.metadata[b"latentsweep.schema"] == b"errors/1"
    assert storage.exists(uri)
    storage.delete(uri)
    assert not storage.exists(uri)


def test_parquet_roundtrip_local(tmp_path):
    roundtrip(str(tmp_path / "deep" / "t.parquet"))


def test_parquet_roundtrip_s3(s3_env):
    roundtrip(f"s3://{s3_env['bucket']}/deep/t.parquet")


def test_listing_follows_pagination_on_s3(s3_env):
    bucket = s3_env["bucket"]
    for index in range(23):
        storage.write_bytes(f"s3://{bucket}/many/{index:03d}.bin", bytes([index]))
    storage.write_bytes(f"s3://{bucket}/other/x.bin", b"x")
    listed = list(storage.list_files(f"s3://{bucket}/many", page_size=5))
    assert [info.uri.rsplit("/", 1)[1] for info in listed] == [f"{i:03d}.bin" for i in range(23)]
    assert all(info.size == 1 and info.version for info in listed)


def test_listing_local_is_recursive_and_sorted(tmp_path):
    for name in ("b/2.png", "a/1.png", "a/0.png", "c.txt"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"12")
    names = [os.path.relpath(info.uri, tmp_path) for info in storage.list_files(str(tmp_path))]
    assert names == ["a/0.png", "a/1.png", "b/2.png", "c.txt"]  # same order as an S3 listing


def test_failed_local_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(TypeError):
        storage.write_bytes(str(target), object())  # type: ignore[arg-type]
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_s3_multipart_write_leaves_no_object(s3_env, monkeypatch):
    """Interrupt a multipart upload half-way: S3 must not show a partial object."""
    uri = f"s3://{s3_env['bucket']}/big.bin"
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    client = storage.s3_client()
    original = client.upload_part
    calls = {"n": 0}

    def failing_upload_part(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("network dropped")
        return original(**kwargs)

    monkeypatch.setattr(client, "upload_part", failing_upload_part)
    with pytest.raises(StorageError, match="cannot write"):
        storage.write_bytes(uri, os.urandom(12 * 1024 * 1024))
    assert calls["n"] >= 2
    assert not storage.exists(uri)


def test_wrong_credentials_give_a_clear_error_without_the_secret(s3_env, monkeypatch):
    secret = "WRONG-secret-value-4242"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage._s3_client.cache_clear()
    with pytest.raises(StorageError) as caught:
        storage.write_bytes(f"s3://{s3_env['bucket']}/x.bin", b"data")
    message = str(caught.value)
    assert "check AWS_ACCESS_KEY_ID" in message
    assert secret not in message
    with pytest.raises(StorageError, match="cannot list"):
        list(storage.list_files(f"s3://{s3_env['bucket']}/"))


def test_download_is_atomic_and_exact(s3_env, tmp_path):
    payload = os.urandom(300_000)
    uri = f"s3://{s3_env['bucket']}/d/file.bin"
    storage.write_bytes(uri, payload)
    target = tmp_path / "got" / "file.bin"
    storage.download(uri, str(target))
    assert target.read_bytes() == payload
    with pytest.raises(StorageError):
        storage.download(f"s3://{s3_env['bucket']}/d/missing.bin", str(tmp_path / "missing.bin"))
    assert not (tmp_path / "missing.bin").exists() and not (tmp_path / "missing.bin.part").exists()


def test_redact_hides_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue")
    assert storage.redact("failed with supersecretvalue inside") == "failed with *** inside"


def test_parse_table_reads_bytes_and_names_the_file_on_corruption(tmp_path):
    table = pa.table({"id": [1, 2]})
    data = storage.table_bytes(table)
    assert storage.parse_table(data, str(tmp_path / "a.parquet")).equals(table)
    with pytest.raises(StorageError, match="a.parquet"):
        storage.parse_table(data[: len(data) // 2], str(tmp_path / "a.parquet"))
