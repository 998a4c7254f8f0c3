"""Readers take only whole outputs: an index or a sweep over an ingest that is running or stopped
before its end is refused unless --allow-partial; a sweep rerun takes the partition's completion
record away before it touches a part, and keeps only the parts of the night's current query files."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from images import photo_corpus
from latentsweep import storage
from latentsweep.index.build import IndexJob, build
from latentsweep.query.sweep import SUCCESS, SweepJob, sweep
from latentsweep_lab.zoo.embeddings import DIMS, clustered, write_ingest_output
from processes import LATENTSWEEP, files_in, interrupt_when, run_command

LABELS = ["a", "b", "c"]
DATE = "2026-11-23"


def test_an_interrupted_ingest_is_refused_by_index_build_and_sweep_unless_allow_partial(tmp_path, ray_session):
    photo_corpus(tmp_path / "corpus", per_label=6)
    out, index = tmp_path / "emb", tmp_path / "index"
    ingest = [*LATENTSWEEP, "ingest", str(tmp_path / "corpus"), "--out", str(out), "--labels-from-folders",
              "--augment", "none", "--weights", "untrained", "--device", "cpu", "--feature-set", "2lat",
              "--shard-size", "2",
              "--batch-size", "2", "--workers", "1"]
    code, _ = interrupt_when(ingest, lambda: files_in(out / "_done") >= 1, signal.SIGKILL)
    assert code != 0 and 1 <= files_in(out / "_done") < 9
    refused = run_command([*LATENTSWEEP, "index", "build", str(out), "--out", str(index), "--shards", "1"])
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "not a complete ingest" in lines[0], refused.stderr
    assert "--allow-partial" in lines[0] and not index.exists()
    partial = run_command([*LATENTSWEEP, "index", "build", str(out), "--out", str(index), "--shards", "1",
                           "--allow-partial"])
    assert partial.returncode == 0, partial.stderr[-2000:]
    assert "--allow-partial:" in partial.stderr and "planned shards are written" in partial.stderr
    night = run_command([*LATENTSWEEP, "sweep", str(out), "--index", str(index), "--out", str(tmp_path / "res"),
                         "--date", DATE, "-q"])
    assert night.returncode == 2 and "not a complete ingest" in night.stderr
    assert not (tmp_path / "res" / f"date={DATE}" / SUCCESS).exists()
    resumed = run_command(ingest)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert build(IndexJob([str(out)], str(tmp_path / "index2"), shards=1, quiet=True)).vectors == 18


@pytest.fixture(scope="module")
def index(tmp_path_factory, ray_session):
    vectors, assignment = clustered(300, len(LABELS), sum(DIMS.values()), seed=1, spread=0.25)
    root = tmp_path_factory.mktemp("references")
    write_ingest_output(str(root), vectors, [LABELS[a] for a in assignment], {}, files=2)
    folder = tmp_path_factory.mktemp("index")
    build(IndexJob([str(root)], str(folder), shards=1, quiet=True))
    return folder


def night(root, offset: int):
    vectors, assignment = clustered(40, len(LABELS), sum(DIMS.values()), seed=1 + offset, spread=0.25)
    write_ingest_output(str(root), vectors, [LABELS[a] for a in assignment], {}, files=1, id_offset=offset)
    return str(root)


def test_a_sweep_rerun_drops_stale_parts_and_takes_the_record_away_first(index, tmp_path):
    first, second = night(tmp_path / "first", 10_000), night(tmp_path / "second", 20_000)
    partition = tmp_path / "results" / f"date={DATE}"

    def run(*queries: str, **settings):
        return sweep(SweepJob(list(queries), str(index), str(tmp_path / "results"), date=DATE, quiet=True,
                              workers=1, **settings))

    assert run(first, second).parts == 2
    assert run(first).parts == 1
    record = json.loads((partition / SUCCESS).read_text())
    parts = sorted(p.name for p in partition.glob("part-*.parquet"))
    assert [entry["file"] for entry in record["parts"] if entry["file"].startswith("part-")] == parts
    assert len(parts) == 1 and files_in(partition / "_done") == 1
    # a rerun that fails midway (a damaged query file) leaves no record claiming the partition is whole
    damaged = tmp_path / "third" / "embeddings"
    damaged.mkdir(parents=True)
    (damaged / "shard-00000.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(Exception):
        run(first, str(tmp_path / "third"), k=5)
    assert not (partition / SUCCESS).exists()
    assert run(first).queries == 40 and (partition / SUCCESS).exists()
    assert storage.exists(str(partition / parts[0]))
    np.testing.assert_equal(len(list(partition.glob("part-*.parquet"))), 1)
    # --overwrite starts the partition afresh: every earlier file goes, the new night's files come
    (partition / "notes.txt").write_text("written by hand into the partition")
    assert run(second, overwrite=True).parts == 1
    assert not (partition / "notes.txt").exists() and (partition / SUCCESS).exists()
    assert [entry["file"] for entry in json.loads((partition / SUCCESS).read_text())["parts"]
            if entry["file"].startswith("part-")] == sorted(p.name for p in partition.glob("part-*.parquet"))
