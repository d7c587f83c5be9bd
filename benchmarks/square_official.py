"""Compare zerograd's Square Attack with the official one (fra31/auto-attack) point for point.

Trains the small digits models of `autoattack_agreement.py` (8x8 digits, a few seconds), then
runs Square alone with AutoAttack's standard settings (5000 queries, p_init 0.8, 1 restart,
margin loss, unrescaled schedule) in both implementations on the same test points, eps and
seed, on the CPU, and prints robust accuracy, the points on which they disagree and whether
the adversarial images are identical. `--official DIR` is a folder holding the official
`autoattack` package (e.g. a checkout of github.com/fra31/auto-attack); it is imported from
there, never copied into zerograd.

    python benchmarks/square_official.py --official ../auto-attack [--n 360] [--eps 0.1]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from zerograd.autoattack import square


def _helpers():
    path = Path(__file__).with_name("autoattack_agreement.py")
    spec = importlib.util.spec_from_file_location("autoattack_agreement", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_square(model, x, y, eps: float, seed: int, n_queries: int):
    from autoattack.square import SquareAttack  # the official package, from --official

    attack = SquareAttack(model, norm="Linf", n_queries=n_queries, eps=eps, p_init=0.8,
                          n_restarts=1, seed=seed, verbose=False, device="cpu", loss="margin",
                          resc_schedule=False)
    return attack.perturb(x, y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="folder holding the official autoattack package")
    ap.add_argument("--n", type=int, default=360, help="test points (at most 597)")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--models", nargs="+", default=["linear", "cnn"])
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.official).resolve()))
    torch.set_num_threads(1)
    h = _helpers()
    xtr, ytr, xte, yte = h.digits()
    x, y = xte[:args.n], yte[:args.n]
    print(f"8x8 digits, n={len(x)}, eps={args.eps}, seed={args.seed}, {args.queries} queries")
    print(f"{'model':<8}{'variant':<11}{'ours %':>8}{'official %':>12}{'disagree':>10}{'same x_adv':>12}{'s ours':>8}{'s off.':>8}")
    for kind in args.models:
        model = h.train(kind, xtr, ytr)
        t0 = time.perf_counter()
        theirs = official_square(model, x, y, args.eps, args.seed, args.queries)
        t_off = time.perf_counter() - t0
        r_off = h.robust_flags(model, theirs, y)
        for windows in ("shared", "per_image"):
            t0 = time.perf_counter()
            ours = square(model, x, y, eps=args.eps, seed=args.seed, n_queries=args.queries,
                          windows=windows)
            t_ours = time.perf_counter() - t0
            r_ours = h.robust_flags(model, ours, y)
            same = bool(torch.equal(ours, theirs))
            print(f"{kind:<8}{windows:<11}{100 * r_ours.float().mean():>8.2f}"
                  f"{100 * r_off.float().mean():>12.2f}{int((r_ours != r_off).sum()):>10}"
                  f"{same!s:>12}{t_ours:>8.1f}{t_off:>8.1f}")


if __name__ == "__main__":
    main()
