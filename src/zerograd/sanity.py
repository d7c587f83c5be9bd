"""Gradient-masking sanity checks, printed with every evaluation and stored in its results file.

An evaluation whose attacks follow misleading gradients reports robustness the model does not
have (Athalye et al., ICML 2018; Carlini et al., "On evaluating adversarial robustness", 2019).
These relations hold for any model whose gradients are informative, so a failed one is a
warning to read the robust accuracy with suspicion:

- iterative PGD is no weaker than single-step FGSM;
- more PGD steps never raise accuracy (PGD-k vs PGD-2k from the same random starts; for a
  deterministic model this holds point by point, so a failure means a randomized model);
- AutoAttack is no weaker than PGD;
- the black-box Square attack breaks (almost) nothing the white-box attacks left robust;
- at a large eps (0.5 of the pixel range, or 4 eps if larger) accuracy goes to ~0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

from .accuracy import robust_flags
from .data import Split
from .results import attack_title

LARGE_EPS = 0.5  # a perturbation this large can turn any image into a gray one
LARGE_EPS_MAX_ACC = 0.01
SQUARE_MAX_GAIN = 0.005  # fraction of all points Square may break after the white-box attacks
WHITE_BOX = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t")


@dataclass
class Check:
    """One sanity check: its name, whether it passed, and a one-line statement with numbers."""

    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_accuracies(model, split: Split, *, eps: float, steps: int = 10, alpha: float = 0.25,
                     seed: int = 0, batch_size: int = 256) -> dict:
    """The extra attacks the checks need, on the same points: FGSM, PGD-`steps` and
    PGD-2·`steps` from the same random starts (1 restart each), and PGD-`steps` at a large
    eps. alpha is in units of eps. Returns accuracies keyed by attack."""
    def acc(attack, e, **params):
        _, robust = robust_flags(model, split, attack, eps=e, batch_size=batch_size, seed=seed,
                                 **params)
        return robust.float().mean().item()

    large = min(1.0, max(LARGE_EPS, 4 * eps))
    return {
        "seed": seed,
        "alpha": alpha,
        "fgsm": acc("fgsm", eps),
        "pgd_steps": steps,
        "pgd": acc("pgd", eps, steps=steps, restarts=1, alpha=alpha),
        "pgd_2x": acc("pgd", eps, steps=2 * steps, restarts=1, alpha=alpha),
        "large_eps": large,
        "pgd_large_eps": acc("pgd", large, steps=steps, restarts=1, alpha=alpha),
    }


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def sanity_checks(accuracies: dict, result: dict) -> list[Check]:
    """Checks from `check_accuracies` and an evaluation result (`evaluate_path`'s dict, whose
    "attack" names the main attack). Checks that do not apply to that attack are left out."""
    k = accuracies["pgd_steps"]
    attack = result["attack"]
    robust = result["robust_acc"]
    pgd_k, pgd_2k = f"PGD-{k}", f"PGD-{2 * k}"
    checks = []

    pgd_runs = [(pgd_2k, accuracies["pgd_2x"])]
    main_pgd = None
    if attack["name"] == "pgd":
        main_pgd = attack_title(attack)
        pgd_runs.append((main_pgd, robust))
    worst_name, worst = min(pgd_runs, key=lambda t: t[1])
    checks.append(Check("pgd_not_weaker_than_fgsm", worst <= accuracies["fgsm"],
                        f"{worst_name} {_pct(worst)} <= FGSM {_pct(accuracies['fgsm'])}"))

    ladder = [(pgd_k, accuracies["pgd"]), (pgd_2k, accuracies["pgd_2x"])]
    # a main PGD with the acc' seed and step shares its first restart's iterates with them
    if main_pgd is not None and attack["steps"] >= 2 * k and attack["alpha"] == accuracies["alpha"] \
            and result.get("seed") == accuracies["seed"]:
        ladder.append((main_pgd, robust))
    ok = all(b[1] <= a[1] for a, b in pairwise(ladder))
    checks.append(Check("more_steps_not_weaker", ok,
                        " >= ".join(f"{n} {_pct(v)}" for n, v in ladder)))

    if attack["name"] == "autoattack":
        pgd_name, pgd_acc = min([(pgd_k, accuracies["pgd"]), (pgd_2k, accuracies["pgd_2x"])],
                                key=lambda t: t[1])
        checks.append(Check("autoattack_not_weaker_than_pgd", robust <= pgd_acc,
                            f"AutoAttack {_pct(robust)} <= {pgd_name} {_pct(pgd_acc)}"))
        order = list(result.get("robust_after", {}))
        if "square" in order and any(a in WHITE_BOX for a in order[:order.index("square")]):
            i = order.index("square")
            before = result["robust_after"][order[i - 1]]
            gain = before - result["robust_after"]["square"]
            checks.append(Check(
                "square_adds_little", gain <= SQUARE_MAX_GAIN,
                f"Square broke {_pct(gain)} of points the white-box attacks left robust "
                f"({_pct(before)} -> {_pct(result['robust_after']['square'])}; allowed "
                f"{_pct(SQUARE_MAX_GAIN)})"))

    checks.append(Check("large_eps_breaks_all", accuracies["pgd_large_eps"] <= LARGE_EPS_MAX_ACC,
                        f"{pgd_k} at eps={accuracies['large_eps']:.3f}: "
                        f"{_pct(accuracies['pgd_large_eps'])} <= {_pct(LARGE_EPS_MAX_ACC)}"))
    return checks


def format_checks(checks: list[dict]) -> str:
    """Lines for the terminal: 'ok' or 'FAIL', the check's name and its statement."""
    lines = ["gradient-masking checks:"]
    for c in checks:
        lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'}  {c['name']:<31} {c['detail']}")
    if not all(c["passed"] for c in checks):
        lines.append("  a failed check suggests gradient masking: treat the robust accuracy as "
                     "an upper bound")
    return "\n".join(lines)
