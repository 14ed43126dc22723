"""Neighborhoods at the boundary: two-sided answers per layer (refuted epsilons backed by counterexamples that re-run
on the network, bracketing the true per-layer boundary), anytime results on Ctrl-C, and the object's epsilon kept
at a share of its own robust radius."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_search_oracles import ExactLpVerifier, exact_worst_margin, tiny_case

from mlrobust.neighborhood import LayeredNeighborhood
from mlrobust.search.intervals import attack_upper_bounds, known_upper_bounds
from mlrobust.search.problem import Budget, SearchProblem
from mlrobust.search.run import SearchOptions, run_search
from mlrobust.verify.counterexample import TopKProperty, check_points
from mlrobust.verify.verdict import ROBUST_TOLERANCE

DELTA = 0.01


def problem(seed, hidden=3, classes=3, **kw):
    net, image, target, mask = tiny_case(seed, hidden=hidden, classes=classes)
    nbhd = LayeredNeighborhood.build(image, mask, net.sample_shape)
    return SearchProblem(net, nbhd, target, ExactLpVerifier(), k=2, budget=Budget(time_limit=120), **kw)


def truth(pb, eps):
    return exact_worst_margin(pb.network, pb.box(pb.clip(eps)), pb.target, pb.k)[0]


def layer_boundary(pb, eps, d, tol=1e-3):
    """The true boundary of layer d (the other layers at eps), bracketed by exact bisection: ``(lo, hi)`` with
    ``lo`` robust (or eps_d) and ``hi`` not robust (or the saturation), ``hi - lo <= tol``."""
    lo, hi = float(eps[d]), float(pb.saturation[d])

    def at(v):
        e = eps.copy()
        e[d] = v
        return e

    if truth(pb, at(hi)) < -ROBUST_TOLERANCE:
        return hi, hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if truth(pb, at(mid)) < -ROBUST_TOLERANCE:
            lo = mid
        else:
            hi = mid
    return lo, hi


def assert_refutations_rerun(pb, res):
    """Every refuted_eps is backed by a counterexample in the box of (eps* with layer d at refuted_eps) that
    violates top-k when re-run on the network (both executors), and lies above eps*."""
    eps = np.asarray(res.epsilons)
    found = 0
    for d, m in enumerate(res.maximality):
        if m.refuted_eps is None:
            continue
        found += 1
        assert m.refuted_eps >= eps[d]
        assert m.counterexample is not None and m.gap == pytest.approx(m.refuted_eps - eps[d])
        grown = eps.copy()
        grown[d] = m.refuted_eps
        box = pb.box(grown)
        assert box.contains(m.counterexample)
        point = check_points(pb.network, box, [m.counterexample], TopKProperty(pb.target, pb.k))[0]
        assert point.confirmed and point.margin >= 0
        if m.status == "refuted":
            assert m.gap <= res.delta * (1 + 1e-9)
    return found


#: (seed, hidden, classes) of tiny nets that break somewhere inside the full range
BREAKING = [(4, 3, 3), (6, 3, 3), pytest.param(0, 4, 4, marks=pytest.mark.slow),
            pytest.param(8, 4, 4, marks=pytest.mark.slow)]


@pytest.mark.parametrize("seed,hidden,classes", BREAKING)
def test_refuted_eps_rerun_and_bracket_the_true_boundary(seed, hidden, classes):
    pb = problem(seed, hidden, classes)
    res = run_search(pb, SearchOptions(delta=DELTA))
    assert res.verified and truth(pb, res.epsilons) < -ROBUST_TOLERANCE
    eps = np.asarray(res.epsilons)
    found = assert_refutations_rerun(pb, res)
    assert found >= 1  # the tiny nets break somewhere: there is an upper bound to report
    for d, m in enumerate(res.maximality):
        lo, hi = layer_boundary(pb, eps, d)
        assert eps[d] <= hi  # eps* is robust: the boundary is not below it
        if m.refuted_eps is not None:
            assert lo <= m.refuted_eps  # a robust value is never refuted: the upper bound is above the boundary
        if m.certified and m.status != "saturated":
            assert lo - eps[d] <= DELTA  # certified: within delta of the true boundary
    data = res.to_json()
    for m, row in zip(res.maximality, data["maximality"]):
        assert row["refuted_eps"] == (None if m.refuted_eps is None else pytest.approx(m.refuted_eps))
        assert (row["counterexample"] is None) == (m.counterexample is None)
    assert data["summary"]["upper_bounded_layers"] == res.upper_bounded_layers >= found


def test_attack_upper_bounds_find_points_outside_a_small_vector():
    pb = problem(8, 4, 4)
    pb.query(np.zeros(pb.num_layers))
    eps = np.array([0.8, 0.05, 0.05, 0.0])
    assert pb.query(eps).is_robust
    stats = attack_upper_bounds(pb, eps, DELTA)
    uppers = known_upper_bounds(pb, eps)
    assert stats["found"] >= 1 and any(u is not None for u in uppers)
    for d, up in enumerate(uppers):
        if up is None:
            continue
        assert up.eps > eps[d]
        cex = pb.counterexamples[up.index]
        grown = eps.copy()
        grown[d] = up.eps
        assert pb.box(grown).contains(cex.x.reshape(pb.x0.shape), atol=1e-12)
        assert truth(pb, grown) >= 0  # the exact worst case agrees: the layer breaks there


class InterruptAfter:
    """A progress callback that presses Ctrl-C after ``n`` queries."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self, event):
        if event.kind == "query":
            self.seen += 1
            if self.seen >= self.n:
                raise KeyboardInterrupt


@pytest.mark.parametrize("after", [4, 12])
def test_ctrl_c_returns_the_best_proven_vector_flagged(after):
    pb = problem(4, progress=InterruptAfter(after))
    res = run_search(pb, SearchOptions(delta=DELTA))
    assert res.interrupted and "interrupted" in res.stop_reason
    assert res.verified
    assert truth(pb, res.epsilons) < -ROBUST_TOLERANCE  # re-verified by the exact oracle
    # the best proven vector: nothing proven by a query is larger
    proven = [r.eps for r in pb.records if r.verdict.is_robust]
    assert res.size >= max(pb.size(e) for e in proven) - 1e-12
    assert_refutations_rerun(pb, res)
    data = json.loads(json.dumps(res.to_json()))
    assert data["interrupted"] is True and data["summary"]["interrupted"] is True


def test_finished_search_is_not_flagged():
    res = run_search(problem(4), SearchOptions(delta=DELTA))
    assert not res.interrupted and res.to_json()["interrupted"] is False


def object_radius(pb, tol=1e-3):
    """The object's own robust radius (layer 0 alone), by exact bisection."""
    lo, hi = 0.0, float(pb.saturation[0])
    e = np.zeros(pb.num_layers)

    def robust(v):
        e[0] = v
        return truth(pb, e) < -ROBUST_TOLERANCE

    if robust(hi):
        return hi
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if robust(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize("seed,hidden,classes", BREAKING)
def test_object_keeps_half_of_its_own_radius(seed, hidden, classes):
    pb = problem(seed, hidden, classes)
    res = run_search(pb, SearchOptions(delta=DELTA))
    r0 = object_radius(pb)
    assert res.eps0 >= 0.5 * r0 - DELTA / 2  # the search's own radius is found to delta
    assert res.object_radius is not None and res.object_radius <= r0 + 1e-3
    assert res.to_json()["object"]["eps"] == pytest.approx(res.eps0)


def test_object_share_zero_leaves_the_weights_alone():
    res = run_search(problem(4), SearchOptions(delta=DELTA, object_share=0.0))
    assert res.object_radius is None and "object" not in res.details


def test_cli_writes_the_interrupted_result_and_exits_130(monkeypatch, capsys, tmp_path):
    """Ctrl-C during ``mlrobust verify``: the JSON and the heatmap of the best proven vector are written, the quiet
    line says so, and the exit code is 130."""
    from test_api import tiny_onnx
    from test_verify_cli import run_cli

    from mlrobust.neighborhood.image_io import write_image, write_mask
    from mlrobust.search.problem import SearchProblem as Problem

    net, image, target, mask = tiny_case(4, hidden=3, classes=3)
    write_image(tmp_path / "img.png", image)
    write_mask(tmp_path / "mask.png", mask)
    tiny_onnx(net, tmp_path / "tiny.onnx")
    original = Problem.query
    calls = {"n": 0}

    def query(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Problem, "query", query)
    out_json, out_png = tmp_path / "r.json", tmp_path / "h.png"
    code, out, err = run_cli(monkeypatch, capsys, "verify", tmp_path / "tiny.onnx", tmp_path / "img.png", "--target",
                             target, "--object-mask", tmp_path / "mask.png", "--quiet", "--json", out_json,
                             "--heatmap", out_png)
    assert code == 130, err
    assert "interrupted" in out and "eps0=" in out and "median_gap=" in out and "Traceback" not in err
    data = json.loads(out_json.read_text())
    assert data["interrupted"] is True and data["verified"] is True
    assert out_png.stat().st_size > 0


# --- the certificate-gradient search ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed,hidden,classes", [(4, 3, 3), (0, 4, 4)])
def test_certificate_matches_crown_and_bounds_every_sampled_margin(seed, hidden, classes):
    from mlrobust.bounds.alpha_crown import AlphaOptions
    from mlrobust.bounds.margin import margin_bounds
    from mlrobust.search.certificate import certificate

    pb = problem(seed, hidden, classes)
    rng = np.random.default_rng(seed)
    ref = rng.uniform(0.05, 0.3, pb.num_layers)
    cert = certificate(pb, ref)
    box = pb.box(pb.clip(ref))
    _, hi = margin_bounds(pb.network, box.lower, box.upper, pb.target)
    # concretised over its own box, the certificate is CROWN's back-substituted margin bound; the verifier's bound
    # also intersects it with the output intervals, so it is never looser than the certificate
    assert np.all(cert.upper(pb.clip(ref)) >= np.delete(hi, pb.target) - 1e-9)
    # the α-CROWN certificate: never looser than CROWN's on its box
    cert_a = certificate(pb, ref, AlphaOptions(iterations=10))
    assert np.all(cert_a.upper(pb.clip(ref)) <= cert.upper(pb.clip(ref)) + 1e-6)
    for _ in range(3):
        eps = pb.clip(ref * rng.uniform(0, 1, pb.num_layers))  # a layered box inside the certificate's
        inner = pb.box(eps)
        xs = inner.lower + rng.uniform(size=(400, *inner.shape)) * (inner.upper - inner.lower)
        logits = pb.network.logits(xs)
        margins = np.delete(logits - logits[:, [pb.target]], pb.target, axis=1)  # (N, C - 1) as the rows
        assert np.all(margins <= cert.upper(eps)[None, :] + 1e-9)
        assert np.all(margins <= cert_a.upper(eps)[None, :] + 1e-9)


@pytest.mark.parametrize("seed,hidden,classes", [(4, 3, 3), (6, 3, 3)])
def test_certificate_method_is_robust_and_beats_uniform(seed, hidden, classes):
    pb = problem(seed, hidden, classes)
    res = run_search(pb, SearchOptions(method="certificate", delta=DELTA))
    assert res.method == "certificate" and res.verified
    assert truth(pb, res.epsilons) < -ROBUST_TOLERANCE
    assert "certificate" in res.details and res.details["certificate"]["iterations"] >= 1
    assert_refutations_rerun(pb, res)
    uni = run_search(problem(seed, hidden, classes), SearchOptions(method="uniform", delta=DELTA))
    assert res.size >= uni.size - 1e-9


@pytest.mark.slow
def test_object_keeps_half_of_its_bound_proven_radius_on_a_shipped_model():
    """On the PGD-trained example model: the default search's eps0 is at least half of the object's own robust
    radius as the bounds prove it (a uniform search over the object alone with the bound verifier)."""
    from pathlib import Path

    from mlrobust import api
    from mlrobust.search.baselines import bisect_scale

    root = Path(__file__).resolve().parent.parent / "examples"
    model = root / "models" / "mnist2_pgd.onnx"
    image, mask = root / "images" / "ex00.png", root / "images" / "ex00_perturbed.png"
    res = api.maximize(model, image, 1, object_mask=mask, time_limit=40, certify=False)
    prep = api.prepare(model, image, 1, object_mask=mask)
    pb = SearchProblem(prep.network, prep.nbhd, 1, api.make_verifier("bounds"), k=2, budget=Budget(time_limit=60))
    n = pb.num_layers

    def alone(v):
        e = np.zeros(n)
        e[0] = v
        return pb.clip(e)

    radius = bisect_scale(pb, alone, 0.0, float(pb.saturation[0]), res.delta, "object alone")
    assert radius > 0 and res.verified
    assert res.eps0 >= 0.5 * radius - res.delta
    assert res.object_radius is not None and res.object_radius >= radius - res.delta
