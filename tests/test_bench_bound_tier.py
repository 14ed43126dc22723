"""The bound-tier benchmark's pieces: one query per method on a small network, and the report's counts."""

from __future__ import annotations

import numpy as np
from ir_factories import reference_network

from benchmarks.bench_bound_tier import markdown, tier_query


def test_a_query_reports_the_kth_bound_and_the_joint_one_is_not_looser():
    net = reference_network(1, size=16)
    x = np.random.default_rng(2).uniform(0, 1, net.sample_shape)
    target = int(np.argmax(net.forward(x[None])))
    lo, hi = np.clip(x - 0.02, 0, 1), np.clip(x + 0.02, 0, 1)
    frozen, joint = (tier_query(net, lo, hi, target, m) for m in ("frozen", "joint"))
    assert set(frozen) == {"kth", "seconds", "proven"} and frozen["seconds"] > 0
    assert frozen["proven"] == (frozen["kth"] < -1e-4)
    assert joint["proven"] or joint["kth"] <= frozen["kth"] + 1e-9


def _row(model: str, kind: str, frozen: float, joint: float) -> dict:
    return {"model": model, "image": "ex00", "kind": kind, "size": 1.0, "target": 1,
            "frozen": {"kth": frozen, "seconds": 0.5, "proven": frozen < -1e-4},
            "joint": {"kth": joint, "seconds": 0.7, "proven": joint < -1e-4}}


def test_the_report_counts_proven_boxes_and_names_looser_ones():
    rows = [_row("m", "layered", 0.2, -0.1), _row("m", "layered", -0.3, -0.2), _row("m", "linf", 0.1, 0.3)]
    text = markdown({"rows": rows, "machine": {"cpus": 2, "load_average_at_start": [1.0]}, "git": "abc",
                     "command": "python -m benchmarks bound-tier", "seconds": 1.0})
    assert "| m | 2 | layered | 1 | 2 |" in text
    assert "Both prove 1 boxes" in text
    assert "looser than the frozen one: 1 of 2: m/ex00 linf 1 (+0.2000)" in text


def test_a_sequence_grows_then_bisects_and_the_policy_explores_first():
    from benchmarks.bench_bound_tier import GROWTH, VARIANTS, run_sequence, sequence_markdown

    net = reference_network(2, size=16)
    x = np.random.default_rng(2).uniform(0, 1, net.sample_shape)
    target = int(np.argmax(net.forward(x[None])))

    def box_at(size: float):  # size 1.0: radius 0.018, proven by CROWN; 0.019 is not (α-CROWN runs)
        return np.clip(x - 0.018 * size, 0, 1), np.clip(x + 0.018 * size, 0, 1)

    seq = {v: run_sequence(net, box_at, 1.0, target, v, steps=3) for v in VARIANTS}
    for v in VARIANTS:
        assert seq[v]["sizes"][:2] == [1.0, GROWTH] and len(seq[v]["sizes"]) == 5  # 1.0 proven, 1.05 not, 3 steps
        assert seq[v]["largest"] == max([1.0] + [s for s, k in zip(seq[v]["sizes"], seq[v]["kth"]) if k < -1e-4])
        assert seq[v]["proven"] == sum(k < -1e-4 for k in seq[v]["kth"])
    assert seq["off"]["joint_runs"] == 0 and seq["on"]["joint_runs"] == seq["on"]["alpha_calls"] > 0
    choices = [c for c in seq["policy"]["choices"] if c is not None]
    assert choices[:2] == ["joint", "frozen"] and seq["policy"]["choices"][0] is None
    row = {"model": "m", "image": "ex00", "kind": "linf", "target": target, **seq}
    text = sequence_markdown({"rows": [row], "machine": {"cpus": 2, "load_average_at_start": [1.0]}, "git": "abc",
                              "command": "python -m benchmarks bound-tier --sequence", "seconds": 1.0, "steps": 3})
    assert "| m | linf | 1 | 5 / 5 / 5 |" in text and "`·JF" in text
