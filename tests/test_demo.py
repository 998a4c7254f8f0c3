"""`latentsweep demo` (what `make demo` runs), small: every stage runs, tables print, reruns resume."""

from __future__ import annotations


def test_demo_runs_end_to_end_and_resumes(tmp_path, ray_session):
    from latentsweep_lab import demo

    lines: list[str] = []
    assert demo.run(tmp_path, per_generator=4, queries_per_generator=2, log=lines.append) == 0
    text = "\n".join(lines)
    assert "SYNTHETIC zoo corpus of 28 images" in text and "By label (Table 3)" in text
    assert "attributed 14 held-out queries" in text
    reports = list((tmp_path / "results").rglob("report.html"))
    assert len(reports) == 1 and (tmp_path / "evaluation" / "metrics.json").exists()
    again: list[str] = []
    demo.run(tmp_path, per_generator=4, queries_per_generator=2, log=again.append)
    rerun = "\n".join(again)
    assert "SYNTHETIC zoo corpus" not in rerun and "1/1 shards already done" in rerun
