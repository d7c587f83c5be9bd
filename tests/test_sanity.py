"""Gradient-masking checks: on a linear model (minimal l_inf flip known in closed form) every
check passes and AutoAttack's accuracy is the analytic one; the same model with zeroed input
gradients fails the Square and large-eps checks while AutoAttack still finds the analytic
answer; PGD with more steps from the same seeded starts never rescues a point; each check's
rule flags the numbers it should."""
from itertools import pairwise

import pytest
import torch

from zerograd.accuracy import evaluate_autoattack, robust_flags
from zerograd.data import Split
from zerograd.sanity import SQUARE_MAX_GAIN, check_accuracies, sanity_checks

from .conftest import Linear2
from .test_autoattack import ZeroGrad  # identity with zero gradient

EPS = 0.1
FAST_AA = {"apgd-ce": {"n_iter": 20}, "apgd-t": {"n_iter": 20, "n_target_classes": 1},
           "fab-t": {"n_iter": 20, "n_target_classes": 1}, "square": {"n_queries": 300}}


class Masked(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(ZeroGrad.apply(x))


def linear_points(n=40, seed=0):
    """(model, split, distance): points of a 2-class linear model on the uint8 grid, labelled
    by the model, whose minimal l_inf flip is < 0.7 eps or in (1.3 eps, 0.25)."""
    model = Linear2(d=16, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = (0.3 + 0.4 * torch.rand(40 * n, 1, 4, 4, generator=g)).mul(255).round().to(torch.uint8)
    xf = x.float() / 255
    with torch.no_grad():
        logits = model(xf)
    w = model.fc.weight.detach()
    distance = (logits[:, 0] - logits[:, 1]).abs() / (w[0] - w[1]).abs().sum()
    near = (distance < 0.7 * EPS).nonzero()[:n // 2, 0]
    far = ((distance > 1.3 * EPS) & (distance < 0.25)).nonzero()[:n - n // 2, 0]
    keep = torch.cat([near, far])
    assert len(keep) == n
    return model, Split(x=x[keep], y=logits[keep].argmax(1)), distance[keep]


def checks_of(model, split, square_windows="shared"):
    params = {**FAST_AA, "square": {**FAST_AA["square"], "windows": square_windows}}
    result = evaluate_autoattack(model, split, eps=EPS, attack_params=params, batch_size=64)
    probes = check_accuracies(model, split, eps=EPS, steps=5, seed=0)
    return result, {c.name: c for c in sanity_checks(probes, result)}


def test_linear_model_passes_every_check_and_autoattack_is_exact():
    """Minimal flip = margin / ||w_0 - w_1||_1; the box never binds at these points."""
    model, split, distance = linear_points()
    result, checks = checks_of(model, split)
    assert result["clean_acc"] == 1.0
    assert result["robust_acc"] == pytest.approx((distance > EPS).float().mean().item())
    assert set(checks) == {"pgd_not_weaker_than_fgsm", "more_steps_not_weaker",
                           "autoattack_not_weaker_than_pgd", "square_adds_little",
                           "large_eps_breaks_all"}
    assert all(c.passed for c in checks.values()), [c.detail for c in checks.values()]


def test_masked_gradients_are_flagged_and_square_still_finds_the_truth():
    net, split, distance = linear_points()
    # the standard (official) Square never moves a window onto the last row or column once
    # windows are smaller than the 4x4 image, so one of these points can stay out of its
    # reach; the per-image windows reach every entry
    result, checks = checks_of(Masked(net), split, square_windows="per_image")
    assert result["robust_acc"] == pytest.approx((distance > EPS).float().mean().item())
    assert result["robust_after"]["fab-t"] > result["robust_after"]["square"]
    assert not checks["square_adds_little"].passed
    assert not checks["large_eps_breaks_all"].passed
    assert checks["autoattack_not_weaker_than_pgd"].passed


def test_more_steps_from_seeded_starts_never_rescue_a_point():
    model = Linear2(d=3 * 8 * 8, classes=10).eval()
    x = torch.randint(0, 256, (48, 3, 8, 8), generator=torch.Generator().manual_seed(0),
                      dtype=torch.uint8)
    with torch.no_grad():
        split = Split(x=x, y=model(x.float() / 255).argmax(1))
    flags = [robust_flags(model, split, "pgd", eps=4 / 255, batch_size=16, seed=3, steps=s,
                          restarts=r, alpha=0.25)[1] for s, r in ((2, 1), (4, 1), (8, 3))]
    for fewer, more in pairwise(flags):
        assert not (more & ~fewer).any()
    assert flags[0].sum() > flags[1].sum() > flags[2].sum() > 0


def probes(**kw):
    base = {"seed": 0, "alpha": 0.25, "fgsm": 0.5, "pgd_steps": 10, "pgd": 0.4, "pgd_2x": 0.38,
            "large_eps": 0.5, "pgd_large_eps": 0.0}
    return {**base, **kw}


def aa_result(robust_after):
    return {"attack": {"name": "autoattack"}, "robust_acc": list(robust_after.values())[-1],
            "robust_after": robust_after, "seed": 0}


@pytest.mark.parametrize("p, result, failing", [
    (probes(pgd_2x=0.55, pgd=0.6), aa_result({"apgd-ce": 0.5}), {"pgd_not_weaker_than_fgsm"}),
    (probes(pgd_2x=0.41), aa_result({"apgd-ce": 0.35}), {"more_steps_not_weaker"}),
    (probes(), aa_result({"apgd-ce": 0.39}), {"autoattack_not_weaker_than_pgd"}),
    (probes(), aa_result({"apgd-ce": 0.36, "square": 0.36 - 2 * SQUARE_MAX_GAIN}),
     {"square_adds_little"}),
    (probes(), aa_result({"apgd-ce": 0.36, "square": 0.36 - SQUARE_MAX_GAIN / 2}), set()),
    (probes(pgd_large_eps=0.05), aa_result({"apgd-ce": 0.3}), {"large_eps_breaks_all"}),
    (probes(), {"attack": {"name": "pgd", "steps": 50, "restarts": 10, "alpha": 0.25},
                "robust_acc": 0.39, "seed": 0}, {"more_steps_not_weaker"}),
    (probes(), {"attack": {"name": "pgd", "steps": 50, "restarts": 10, "alpha": 0.5},
                "robust_acc": 0.39, "seed": 0}, set()),  # other step size: not comparable
])
def test_each_rule_flags_what_it_should(p, result, failing):
    checks = sanity_checks(p, result)
    assert {c.name for c in checks if not c.passed} == failing
