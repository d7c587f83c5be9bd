"""Compare zerograd.autoattack with the authors' implementation (PyPI `pyautoattack`).

Trains two tiny models on scikit-learn's 8x8 digits for a few seconds (a linear model and a
small CNN), then runs every attack of both implementations alone with the standard AutoAttack
settings, and the full standard ensemble, on the same test points and eps. Prints robust
accuracy, the fraction of points on which both agree (robust or not), and wall time.
Exact agreement is not expected: the random starts and Square's samples differ.

    python benchmarks/autoattack_agreement.py [--n 200] [--eps 0.1] [--threads 1]
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from zerograd.autoattack import VERSIONS, autoattack

ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): 8x8 digits scaled to [0, 1], shape (N, 1, 8, 8)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def make_model(kind: str) -> torch.nn.Module:
    if kind == "linear":
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10))


def train(kind: str, x, y, epochs: int = 30, seed: int = 0) -> torch.nn.Module:
    """A few seconds of Adam; the models need to be accurate, not robust."""
    torch.manual_seed(seed)
    model = make_model(kind)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def robust_flags(model, x_adv, y) -> torch.Tensor:
    return model(x_adv).argmax(1) == y


def run_ours(model, x, y, eps, attacks, seed=0):
    """(robust flags, seconds, robust_after) for our implementation."""
    t0 = time.perf_counter()
    res = autoattack(model, x, y, eps=eps, version="custom", attacks=list(attacks),
                     batch_size=len(x), seed=seed)
    return res.robust, time.perf_counter() - t0, res.robust_after


def run_official(model, x, y, eps, attacks, seed=0):
    """(robust flags, seconds, robust_after) for pyautoattack with the standard settings."""
    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    adversary = AutoAttack(model, eps=eps, norm="Linf", version="standard", seed=seed,
                           device="cpu")
    adversary.attacks_to_run = list(attacks)
    t0 = time.perf_counter()
    after = {}
    # one attack at a time to record robust accuracy after each (same total work)
    x_adv = x.clone()
    robust = robust_flags(model, x, y)
    for name in attacks:
        adversary.attacks_to_run = [name]
        idx = robust.nonzero().squeeze(1)
        if len(idx):
            adv, _ = adversary.run_standard_evaluation(x[idx], y[idx], batch_size=len(x))
            broken = ~robust_flags(model, adv, y[idx])
            x_adv[idx[broken]] = adv[broken]
            robust[idx[broken]] = False
        after[name] = robust.float().mean().item()
    return robust, time.perf_counter() - t0, after


def compare(model, x, y, eps, seed=0, attacks=ATTACKS, ensemble=True):
    """Rows of (what, ours acc, official acc, agreement, ours s, official s)."""
    rows = []
    for name in attacks:
        ours, t_ours, _ = run_ours(model, x, y, eps, [name], seed)
        theirs, t_theirs, _ = run_official(model, x, y, eps, [name], seed)
        rows.append((name, ours.float().mean().item(), theirs.float().mean().item(),
                     (ours == theirs).float().mean().item(), t_ours, t_theirs))
    if ensemble:
        standard = VERSIONS["standard"]
        ours, t_ours, after_ours = run_ours(model, x, y, eps, standard, seed)
        theirs, t_theirs, after_theirs = run_official(model, x, y, eps, standard, seed)
        for name in standard[:-1]:
            rows.append((f"  AA after {name}", after_ours[name], after_theirs[name], None,
                         None, None))
        rows.append(("AA standard (final)", ours.float().mean().item(),
                     theirs.float().mean().item(), (ours == theirs).float().mean().item(),
                     t_ours, t_theirs))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test points")
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1])
    ap.add_argument("--models", nargs="+", default=["linear", "cnn"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-ensemble", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte = digits()
    x, y = xte[:args.n], yte[:args.n]
    print(f"{'model':7} {'eps':>5} {'attack':22} {'ours':>6} {'official':>8} {'agree':>6} "
          f"{'ours s':>7} {'off. s':>7}")
    for kind in args.models:
        t0 = time.perf_counter()
        model = train(kind, xtr, ytr)
        clean = robust_flags(model, x, y).float().mean().item()
        print(f"{kind:7} {'':5} {'clean (trained ' + format(time.perf_counter() - t0, '.0f') + ' s)':22}"
              f" {clean:6.3f} {clean:8.3f}")
        for eps in args.eps:
            for what, a, b, agree, ta, tb in compare(model, x, y, eps,
                                                     ensemble=not args.no_ensemble):
                agree_s = f"{agree:6.3f}" if agree is not None else " " * 6
                times = f"{ta:7.1f} {tb:7.1f}" if ta is not None else ""
                print(f"{kind:7} {eps:5.3f} {what:22} {a:6.3f} {b:8.3f} {agree_s} {times}",
                      flush=True)


if __name__ == "__main__":
    main()
