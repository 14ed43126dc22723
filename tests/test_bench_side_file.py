"""The side-file benchmark measures what it says: both codings of the same counterexamples, each read back exact."""

from __future__ import annotations

import json

import numpy as np

from benchmarks.bench_side_file import main, measure, synthetic


def test_measure_codes_pgd_like_counterexamples_smaller_than_xor(tmp_path):
    clean, mask, xs = synthetic(3, shape=(3, 40, 40), interior=5)
    assert all(np.all((x >= 0) & (x <= 1)) and not np.array_equal(x, clean) for x in xs)
    row = measure(clean, mask, xs, tmp_path)
    assert row["count"] == 3 and row["corner"]["corner_coded"] == 3 and row["xor"]["xor_coded"] == 3
    assert row["corner"]["bytes"] * 3 < row["xor"]["bytes"]


def test_main_writes_the_table_and_json(tmp_path, monkeypatch):
    import benchmarks.bench_side_file as bench

    monkeypatch.setattr(bench, "synthetic", lambda count, float32=False: synthetic(count, float32=float32,
                                                                                     shape=(1, 30, 30)))
    out = tmp_path / "side.md"
    assert main(["--count", "2", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [r["case"] for r in rows] == ["synthetic PGD-like, float64", "synthetic PGD-like, float32"]
    assert "| synthetic PGD-like, float32 | 2 |" in out.read_text()
