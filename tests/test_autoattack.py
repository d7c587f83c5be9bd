"""Tests for zerograd.autoattack (AutoAttack, l_inf).

What is checked, on tiny models so the fast tests take a few seconds:
- correctness against an analytic answer: for a 2-class linear model the smallest l_inf
  perturbation that flips a point is margin / ||w_1 - w_0||_1; APGD-CE, APGD-T, FAB-T and
  Square break every point below eps and never one above it;
- gradient masking: with zeroed input gradients the gradient attacks fail and Square (which
  needs no gradients) still breaks the points;
- the contract of every ATTACKS entry: x_adv within eps and in [0, 1], eval mode used and every
  submodule's mode restored, no parameter .grad left, same seed -> same output;
- the ensemble: robust accuracy non-increasing across attacks, robust a subset of clean,
  x_adv consistent with the flags, eps=0 -> robust == clean, an interrupted run resumed from its
  state file equals an uninterrupted one, a mismatched state file is refused;
- building blocks against their definitions: FAB's box-constrained hyperplane projection
  (against an LP solver), the DLR losses, the APGD checkpoint schedule;
- Square's standard windows are the official ones (one position and one sign per query for
  the whole batch, never starting at the last position), the per-image variant is an option;
- user errors (bad eps, version, attack name, x range) raise ConfigError before any work.
The slow tests compare with the authors' implementation (pyautoattack; and Square point for
point with the official code when $AUTOATTACK_OFFICIAL names a folder holding its package).
"""
from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from zerograd.autoattack import (
    ATTACKS,
    VERSIONS,
    autoattack,
    dlr_loss,
    dlr_targeted_loss,
    project_hyperplane_box,
)
from zerograd.autoattack._apgd import checkpoint_windows
from zerograd.errors import ConfigError

torch.set_num_threads(1)

EPS = 0.1
BROKEN_RATIOS = (0.3, 0.6, 0.9)  # minimal perturbation / eps
ROBUST_RATIOS = (1.1, 1.5, 2.0)
TINY = {"apgd-ce": {"n_iter": 5}, "apgd-dlr": {"n_iter": 5}, "apgd-t": {"n_iter": 5},
        "fab": {"n_iter": 5}, "fab-t": {"n_iter": 5}, "square": {"n_queries": 30}}
TINY_STANDARD = {k: TINY[k] for k in VERSIONS["standard"]}


class Linear2(torch.nn.Module):
    """logits = (0, <u, x> + c): the distance to the boundary is |<u, x> + c| / ||u||_1."""

    def __init__(self, u: torch.Tensor, c: float, mask_grad: bool = False):
        super().__init__()
        self.u, self.c, self.mask_grad = torch.nn.Parameter(u), c, mask_grad

    def forward(self, x):
        if self.mask_grad:
            x = ZeroGrad.apply(x)
        z = x.flatten(1) @ self.u + self.c
        return torch.stack([torch.zeros_like(z), z], 1)


class ZeroGrad(torch.autograd.Function):
    """Identity whose gradient is zero: a model with perfectly masked gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.zeros_like(g)


def linear_problem(shape, ratios, seed=0, mask_grad=False):
    """(model, x, y, ratio per point): interior points whose minimal flip is ratio * EPS."""
    g = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    u = (torch.rand(d, generator=g) + 0.5) * (torch.randint(0, 2, (d,), generator=g) * 2 - 1)
    model = Linear2(u, c=-0.5 * u.sum().item(), mask_grad=mask_grad)
    r = torch.tensor([s * q for q in ratios for s in (1.0, -1.0)])  # both classes
    z = 0.4 + 0.2 * torch.rand(len(r), d, generator=g)
    offset = (r * EPS * u.abs().sum() - (z @ u + model.c)) / u.abs().sum()
    x = (z + offset[:, None] * u.sign()).reshape(len(r), *shape)
    assert 2 * EPS < x.min() and x.max() < 1 - 2 * EPS  # the box never binds
    y = (r > 0).long()
    return model, x, y, r.abs()


def broken(model, x_adv, y):
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(4 * 8 * 8, 10))


def cnn_data(n=24, seed=0):
    """Points classified as their label (a few relabelled so some start misclassified)."""
    model = small_cnn(seed).eval()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return model, x, y


# --------------------------------------------------------------------------- analytic model


@pytest.mark.parametrize("name", ["apgd-ce", "apgd-t", "fab-t", "square"])
def test_linear_model_minimal_perturbation(name):
    model, x, y, ratio = linear_problem((16,), BROKEN_RATIOS + ROBUST_RATIOS)
    # the official (standard) Square never moves a window onto the last entry once windows
    # are shorter than the input, so the exact optimum can be out of its reach: per image here
    extra = {"windows": "per_image"} if name == "square" else {}
    x_adv = ATTACKS[name](model, x, y, eps=EPS, seed=0, **extra)
    assert (x_adv - x).abs().max() <= EPS + 1e-6
    hit = broken(model, x_adv, y)
    assert hit[ratio < 1].all(), f"{name} missed points within eps: ratios {ratio[~hit]}"
    assert not hit[ratio > 1].any()


def test_masked_gradients_fool_apgd_not_square():
    model, x, y, _ = linear_problem((1, 8, 8), (0.5, 0.6, 0.7), mask_grad=True)
    for name in ("apgd-ce", "apgd-t"):
        assert not broken(model, ATTACKS[name](model, x, y, eps=EPS, seed=0), y).any()
    assert broken(model, ATTACKS["square"](model, x, y, eps=EPS, seed=0), y).all()


def square_first_query_changes(windows: str) -> torch.Tensor:
    """(n, 8, 8) bool: where Square's first query moved each image away from its stripes."""
    model, x, y = cnn_data(n=21)
    seen = []

    def recording(z):
        seen.append(z.detach().clone())
        return model(z)

    ATTACKS["square"](recording, x, y, eps=0.3, seed=0, n_queries=1, windows=windows)
    init, query = seen[1], seen[2]  # seen[0]: the clean prediction of every point
    # each queried image is one of the still-robust stripe images with one window changed
    differs = (query[:, None] != init[None]).flatten(2).sum(2)
    return (query != init[differs.argmin(1)]).any(1)


def test_square_standard_windows_are_shared_by_the_batch_as_in_the_official_code():
    assert ATTACKS.defaults("square")["windows"] == "shared"
    # query 1 on 8x8: side round(sqrt(0.8 * 64)) = 7; the official start is floor((8 - 7) U) = 0
    changed = square_first_query_changes("shared")
    rows, cols = changed.any(2).any(0), changed.any(1).any(0)
    assert changed.any() and not rows[7] and not cols[7]  # one 7x7 window at (0, 0) for all
    per_image = square_first_query_changes("per_image")
    assert per_image.any(2).any(0)[7] or per_image.any(1).any(0)[7]  # windows per image


def test_square_refuses_an_unknown_window_rule():
    model, x, y = cnn_data(n=4)
    with pytest.raises(ConfigError, match="windows='diagonal' is invalid"):
        ATTACKS["square"](model, x, y, eps=0.1, windows="diagonal")


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_contract(name):
    model, x, y = cnn_data()
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    stats = model[1].running_mean.clone()
    x_adv = ATTACKS[name](model, x, y, eps=8 / 255, seed=3, **TINY[name])
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and not model[1].training and model[4].training
    assert torch.equal(model[1].running_mean, stats)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x_adv, ATTACKS[name](model, x, y, eps=8 / 255, seed=3, **TINY[name]))


def test_attacks_find_something_on_cnn():
    model, x, y = cnn_data()
    for name in ATTACKS:
        x_adv = ATTACKS[name](model, x, y, eps=0.1, seed=0, **TINY[name])
        assert broken(model, x_adv, y)[3:].any(), name


# --------------------------------------------------------------------------- ensemble


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_ensemble_invariants(version):
    model, x, y = cnn_data()
    params = {k: TINY[k] for k in VERSIONS[version]}
    if version == "rand":
        params = {k: {**v, "eot_iter": 2} for k, v in params.items()}
    res = autoattack(model, x, y, eps=0.05, version=version, batch_size=10,
                     attack_params=params)
    assert list(res.robust_after) == list(VERSIONS[version])
    accs = [res.clean_accuracy, *res.robust_after.values()]
    assert all(a >= b for a, b in itertools.pairwise(accs))
    assert res.robust_after[VERSIONS[version][-1]] == res.robust_accuracy
    assert not (res.robust & ~res.clean).any()
    assert torch.equal(res.clean, ~broken(model, x, y))
    assert (res.x_adv - x).abs().max() <= 0.05 + 1e-6
    assert torch.equal(res.x_adv[res.robust], x[res.robust])
    fooled = res.clean & ~res.robust
    assert broken(model, res.x_adv[fooled], y[fooled]).all()
    assert set(res.seconds) == set(VERSIONS[version])


def test_eps_zero_robust_equals_clean():
    model, x, y = cnn_data()
    res = autoattack(model, x, y, eps=0.0)
    assert torch.equal(res.robust, res.clean) and torch.equal(res.x_adv, x)
    assert set(res.robust_after.values()) == {res.clean_accuracy}


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 5])
def test_resume_equals_uninterrupted(tmp_path, stop_after):
    model, x, y = cnn_data()
    kw = {"eps": 0.05, "batch_size": 8, "seed": 1, "attack_params": TINY_STANDARD}
    reference = autoattack(model, x, y, **kw)
    calls = []

    def interrupt(attack, batch, n_batches):
        calls.append((attack, batch))
        if len(calls) == stop_after:
            raise Stop

    state = tmp_path / "aa.pt"
    with pytest.raises(Stop):
        autoattack(model, x, y, state_path=state, progress=interrupt, **kw)
    seen = []
    resumed = autoattack(model, x, y, state_path=state, progress=lambda *a: seen.append(a), **kw)
    assert not {(a, b) for a, b, _ in seen} & set(calls)  # done batches are not rerun
    assert torch.equal(resumed.robust, reference.robust)
    assert torch.equal(resumed.clean, reference.clean)
    assert torch.equal(resumed.x_adv, reference.x_adv)
    assert resumed.robust_after == reference.robust_after
    again = autoattack(model, x, y, state_path=state, **kw)  # finished state: nothing to do
    assert torch.equal(again.x_adv, reference.x_adv)


def test_mismatched_state_is_refused(tmp_path):
    model, x, y = cnn_data(n=8)
    state = tmp_path / "aa.pt"
    autoattack(model, x, y, eps=0.05, state_path=state, attack_params=TINY_STANDARD)
    with pytest.raises(ConfigError, match=r"\(eps differ\)"):
        autoattack(model, x, y, eps=0.06, state_path=state, attack_params=TINY_STANDARD)
    with pytest.raises(ConfigError, match=r"\(x differ\)"):
        autoattack(model, x.flip(0), y, eps=0.05, state_path=state, attack_params=TINY_STANDARD)
    state.write_bytes(b"not a state")
    with pytest.raises(ConfigError, match="state"):
        autoattack(model, x, y, eps=0.05, state_path=state)


# --------------------------------------------------------------------------- building blocks


def test_hyperplane_projection_is_the_lp_optimum():
    linprog = pytest.importorskip("scipy.optimize").linprog
    g = torch.Generator().manual_seed(0)
    d = 6
    for trial in range(30):
        t = torch.rand(1, d, generator=g, dtype=torch.float64)
        w = torch.randn(1, d, generator=g, dtype=torch.float64)
        w[0, trial % d] = 0.0
        target = torch.rand(1, d, generator=g, dtype=torch.float64) * (1 + trial % 3)  # may leave the box
        b = (w * target).sum(1)
        delta = project_hyperplane_box(t, w, b)
        assert (t + delta).min() >= -1e-12 and (t + delta).max() <= 1 + 1e-12
        # min s  s.t.  |delta_i| <= s,  <w, delta> = b - <w, t>,  0 <= t + delta <= 1
        res = linprog(np.r_[np.zeros(d), 1.0],
                      A_ub=np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]]),
                      b_ub=np.zeros(2 * d), A_eq=np.r_[w[0].numpy(), 0.0][None],
                      b_eq=[(b - (w * t).sum(1)).item()],
                      bounds=[(-v, 1 - v) for v in t[0].tolist()] + [(0, None)])
        if res.status == 0:
            assert (w * (t + delta)).sum().item() == pytest.approx(b.item(), abs=1e-9)
            assert delta.abs().max().item() == pytest.approx(res.fun, abs=1e-9)
        else:  # infeasible: the box corner that gets closest to the plane
            assert res.status == 2
            moved = (w * delta).sum().item()
            assert abs(moved) == pytest.approx(
                (w.abs() * torch.where(w * (b - (w * t).sum()) > 0, 1 - t, t)).sum().item())


def test_dlr_losses():
    z = torch.tensor([[5.0, 3.0, 1.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([2])
    assert dlr_loss(z, y).item() == pytest.approx(-(5 - 3) / (5 - 1))
    assert dlr_targeted_loss(z, y, t).item() == pytest.approx(-(5 - 1) / (5 - 0.5 * (1 + 0)))
    for loss in (lambda v: dlr_loss(v, y), lambda v: dlr_targeted_loss(v, y, t)):
        assert loss(3 * z + 7).item() == pytest.approx(loss(z).item())


def test_apgd_checkpoints_follow_the_paper():
    first, decrement, minimum = checkpoint_windows(100)
    marks, w = [], first
    while sum(marks[-1:]) + w <= 100:
        marks.append(sum(marks[-1:]) + w)
        w = max(w - decrement, minimum)
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert marks == [round(100 * v) for v in p[1:]] == [22, 41, 57, 70, 80, 87, 93, 99]


# --------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("kw, match", [
    ({"eps": -0.1}, "eps"), ({"eps": 1.5}, "eps"), ({"eps": float("nan")}, "eps"),
    ({"eps": "0.1"}, "eps"),
    ({"eps": 0.1, "version": "standrd"}, "did you mean 'standard'"),
    ({"eps": 0.1, "version": "custom", "attacks": ["apgd-cee"]}, "did you mean 'apgd-ce'"),
    ({"eps": 0.1, "version": "custom"}, "attacks"),
    ({"eps": 0.1, "attacks": ["square"]}, "custom"),
    ({"eps": 0.1, "attack_params": {"square": {"n_query": 5}}}, "n_queries"),
    ({"eps": 0.1, "batch_size": 0}, "batch_size"),
])
def test_config_errors(kw, match):
    model, x, y = cnn_data(n=4)
    calls = []
    with pytest.raises(ConfigError, match=match):
        autoattack(lambda z: calls.append(z) or model(z), x, y, **kw)
    assert not calls  # raised before any work


def test_x_outside_unit_box_is_refused():
    model, x, y = cnn_data(n=4)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        autoattack(model, x * 2, y, eps=0.1)
    with pytest.raises(ConfigError, match="eps"):
        ATTACKS["apgd-ce"](model, x, y, eps=2.0)


def test_warns_on_probabilities_and_randomness():
    model, x, y = cnn_data(n=4)
    with pytest.warns(UserWarning, match="probabilities"):
        autoattack(lambda z: model(z).softmax(1), x, y, eps=0.0)
    with pytest.warns(UserWarning, match="rand"):
        autoattack(lambda z: model(z) + torch.randn(len(z), 10), x, y, eps=0.0)


# --------------------------------------------------------------------------- official code


@pytest.mark.slow
def test_agreement_with_pyautoattack():
    pytest.importorskip("pyautoattack")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "autoattack_agreement.py"
    spec = importlib.util.spec_from_file_location("autoattack_agreement", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    xtr, ytr, xte, yte = bench.digits()
    model = bench.train("linear", xtr, ytr)
    for what, ours, theirs, agree, *_ in bench.compare(model, xte[:100], yte[:100], 0.1,
                                                       ensemble=False):
        assert abs(ours - theirs) <= 0.03 and agree >= 0.95, (what, ours, theirs, agree)


@pytest.mark.slow
def test_square_equals_the_official_code_point_for_point():
    """benchmarks/square_official.py on 100 digits: the same robust points and adversarial
    images (up to float rounding) as fra31/auto-attack's SquareAttack with the same seed."""
    official = os.environ.get("AUTOATTACK_OFFICIAL")
    if not official:
        pytest.skip("set AUTOATTACK_OFFICIAL to a folder holding the official autoattack package")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "square_official.py"
    spec = importlib.util.spec_from_file_location("square_official", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import sys

    sys.path.insert(0, official)
    helpers = bench._helpers()
    xtr, ytr, xte, yte = helpers.digits()
    model = helpers.train("linear", xtr, ytr)
    x, y = xte[:100], yte[:100]
    theirs = bench.official_square(model, x, y, 0.1, 0, 300)
    ours = ATTACKS["square"](model, x, y, eps=0.1, seed=0, n_queries=300)
    assert torch.equal(helpers.robust_flags(model, ours, y), helpers.robust_flags(model, theirs, y))
    assert (ours - theirs).abs().max() <= 1e-6

