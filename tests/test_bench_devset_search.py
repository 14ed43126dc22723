"""benchmarks.bench_devset_search: the two cascade variants and the summary (the searches themselves are measured
by the benchmark, not here)."""

from __future__ import annotations

import pytest

from benchmarks import bench_devset_search as ds


def test_the_variants_differ_only_in_the_joint_intermediate_pass():
    before, after = ds.make_cascade("before"), ds.make_cascade("after")
    assert before.bounds.method == after.bounds.method == "alpha"
    assert before.bounds.alpha_options.joint_intermediate == "off"
    assert after.bounds.alpha_options is None  # the tier's default: joint_intermediate="auto"
    with pytest.raises(SystemExit, match="unknown variant"):
        ds.make_cascade("sideways")


def test_median_counts_a_scale_beyond_the_attack_as_infinite():
    rows = [{"attack_scale": 1.5}, {"attack_scale": ">64"}, {"attack_scale": None}, {"attack_scale": 2.5}]
    assert ds._median(rows, "attack_scale") == 2.5
    assert ds._median([{"attack_scale": ">64"}], "attack_scale") == "inf"
    assert ds._median([{"attack_scale": None}], "attack_scale") is None


def test_markdown_lists_every_run_and_the_medians():
    row = {"model": "dev_a", "image": "ex00", "variant": "before", "size": 1.25, "eps0": 0.01, "layers_eps_pos": 3,
           "layers": 40, "certified": 1, "queries": 12, "attack_scale": 1.8, "stop": "time limit", "search_s": 119.0}
    results = {"command": "python -m benchmarks devset-search", "machine": {"cpus": 2, "processor": "x86_64",
                                                                           "load_average_at_start": [1.0, 1.0, 1.0]},
               "load_average_at_end": [2.0, 2.0, 2.0], "jobs": 2, "git": "abc", "seconds": 60.0,
               "time_limit": 120.0, "restarts": 20, "steps": 200, "violations": [], "notes": "",
               "rows": [row, {**row, "variant": "after", "attack_scale": 1.4}, {"model": "dev_b", "image": "ex02",
                                                                               "variant": "after", "error": "boom"}],
               "summary": {"before": {"runs": 1, "median_attack_scale": 1.8, "median_size": 1.25},
                           "after": {"runs": 2, "median_attack_scale": 1.4, "median_size": 1.25}}}
    text = ds.markdown(results)
    assert "| before | 1 | 1.8 | 1.25 |" in text and "| after | 2 | 1.4 | 1.25 |" in text
    assert "| dev_a | ex00 | after | 1.25 | 0.01 | 3/40 | 1 | 12 | 1.4 | time limit | 119.0 |" in text
    assert "error: boom" in text
