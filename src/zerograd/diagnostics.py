"""Catastrophic-overfitting (CO) diagnostics: training-loop callbacks that measure, while a
model trains, the quantities Golgooni et al. plot and tabulate to explain CO.

Cheap ones are on by default: the weight-update size of each epoch (Fig. 1), the norms of
the training perturbations (Table 4) and FGSM accuracy on the validation split (so the
FGSM-PGD gap of CO is visible). The probe measures run on one fixed batch of training
images, at each epoch's end and every `every` steps if asked, and are off unless `probe > 0`:
perturbation change between consecutive probes (Fig. 2), sign disagreement with PGD-10
(Table 10), gradient alignment (GradAlign's cosine) and the fraction of entries ZeroGrad or
MultiGrad zero. Measuring never changes the run: the global RNG and batch-norm statistics
are restored afterwards, so a run is bitwise the same with or without diagnostics.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import to_float
from .errors import ConfigError
from .evaluate import robust_flags
from .perturb import fgsm_rs, input_grad, pgd, random_start, zero_small, zerograd


@dataclass
class DiagnosticsOptions:
    """The `diagnostics` config section (e.g. `--set diagnostics.probe=256`)."""

    weights: bool = True  # weight-update size per epoch, per layer and overall (Fig. 1)
    norms: bool = True  # mean l1/l2/linf x255 of the training perturbations (Table 4)
    fgsm_val: bool = True  # FGSM accuracy on the validation split
    probe: int = 0  # size of the fixed probe batch; 0 turns the probe measures off
    every: int = 0  # also probe every k steps (0: at epoch ends only)
    compare_alpha: float = 2.0  # step (units of eps) of the FGSM-RS comparisons of Fig. 2
    compare_q: float = 0.35  # fraction zeroed by the "FGSM-RS with small gradients zeroed"
    pgd_steps: int = 10  # the PGD reference of the sign disagreement (Table 10)

    def check(self, cfg) -> None:
        for name in ("probe", "every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"diagnostics.{name}={getattr(self, name)} is invalid: must be >= 0")
        if self.compare_alpha <= 0:
            raise ConfigError(f"diagnostics.compare_alpha={self.compare_alpha} is invalid: "
                              "must be > 0 (a multiple of eps)")
        if not 0 <= self.compare_q < 1:
            raise ConfigError(f"diagnostics.compare_q={self.compare_q} is invalid: must be in [0, 1)")
        if self.pgd_steps < 1:
            raise ConfigError(f"diagnostics.pgd_steps={self.pgd_steps} is invalid: must be >= 1")
        if self.every and not self.probe:
            raise ConfigError(f"diagnostics.every={self.every} needs a probe batch: "
                              "set diagnostics.probe to its size (e.g. 256)")


# --------------------------------------------------------------------------- measuring quietly


@contextlib.contextmanager
def isolated(model: torch.nn.Module, device: torch.device, seed: int):
    """Run measurements seeded with `seed` and leave no trace: the global RNG (CPU and the
    model's device) and every buffer (batch-norm running statistics) are restored."""
    buffers = [b.detach().clone() for b in model.buffers()]
    devices = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers):
                    b.copy_(saved)


def weight_update(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """Mean squared change of the parameters: overall ('diag/weight_mse') and per weight
    tensor of a layer (conv and linear kernels, 'diag/weight_mse/<name>'), as in Fig. 1."""
    out, total, count = {}, 0.0, 0
    for name, a in after.items():
        sq = (a.detach().float() - before[name].float()).pow(2)
        total += sq.sum().item()
        count += sq.numel()
        if a.dim() > 1:
            out[f"diag/weight_mse/{name}"] = sq.mean().item()
    out["diag/weight_mse"] = total / max(count, 1)
    return out


def perturbation_norms(delta: Tensor) -> dict[str, Tensor]:
    """Per-sample l1, l2 and l_inf norms of delta, x255 (pixel levels), as in Table 4."""
    d = delta.detach().flatten(1).float() * 255
    return {"l1": d.abs().sum(1), "l2": d.norm(dim=1), "linf": d.abs().amax(1)}


def sign_disagreement(delta: Tensor, reference: Tensor) -> float:
    """Fraction of all entries where delta is non-zero and its sign differs from the
    reference (PGD-10) perturbation's, as in Table 10."""
    return ((delta != 0) & (delta.sign() != reference.sign())).float().mean().item()


def gradient_alignment(model, x: Tensor, y: Tensor, eps: float) -> float:
    """Mean cosine between the input gradients at x and at a uniform random point of the
    eps-ball: GradAlign's measure of local linearity (it falls at CO)."""
    g0 = input_grad(model, x, y, torch.zeros_like(x)).flatten(1)
    g1 = input_grad(model, x, y, random_start(x, eps)).flatten(1)
    return F.cosine_similarity(g0, g1, dim=1).mean().item()


def zeroed_fraction(model, x: Tensor, y: Tensor, method: str, eps: float, args: dict,
                    delta: Tensor) -> float | None:
    """Fraction of input entries whose step the method zeroed: for ZeroGrad, entries below
    the q-quantile of |grad| at a random start; for MultiGrad, entries without a sign
    agreement, i.e. delta == 0 where x is strictly inside (0, 1). None for other methods."""
    if method == "zerograd":
        q = args.get("q", 0.35)
        g = input_grad(model, x, y, random_start(x, eps))
        return (zero_small(g, q) == 0).float().mean().item()
    if method == "multigrad":
        inside = (x > 0) & (x < 1)
        return ((delta == 0) & inside).float().sum().item() / max(inside.sum().item(), 1)
    return None


# --------------------------------------------------------------------------- callbacks


class WeightUpdate:
    """Weight-update size of each epoch (the weights at its start vs at its end). A lazy
    layer's weights do not exist before the first forward pass; its first epoch is skipped."""

    def on_epoch_start(self, state) -> None:
        self.before = {k: p.detach().clone() for k, p in state.model.named_parameters()
                       if not isinstance(p, torch.nn.parameter.UninitializedParameter)}

    def on_epoch(self, state) -> dict:
        after = {k: p for k, p in state.model.named_parameters() if k in self.before}
        return weight_update(self.before, after)


class PerturbationNorms:
    """Mean per-sample l1, l2, l_inf (x255) of the training perturbations of an epoch."""

    def on_epoch_start(self, state) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def on_step(self, state) -> None:
        # sums stay on the device (no host sync per step); read once per epoch
        for k, v in perturbation_norms(state.delta).items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float().sum()
        self.n += len(state.delta)

    def on_epoch(self, state) -> dict:
        return {f"diag/delta_{k}": float(v) / max(self.n, 1) for k, v in self.sums.items()}


class ValFGSM:
    """FGSM accuracy (step eps from the clean point) on the validation split."""

    def on_epoch(self, state) -> dict:
        if len(state.data.val) == 0:
            return {}
        _, robust = robust_flags(state.model, state.data.val, "fgsm", eps=state.cfg.eps,
                                 batch_size=max(state.cfg.batch_size, 256))
        return {"val/fgsm_acc": robust.float().mean().item()}


class Probe:
    """The probe measures on a fixed batch of training images (no augmentation), with the
    model in training mode as the training attack sees it. Perturbation change ('delta_mse',
    in (1/255)^2 units) compares each probe with the previous one at the same cadence
    (epoch ends, or every k steps); a rollback starts the comparison afresh."""

    def __init__(self, options: DiagnosticsOptions):
        self.opt = options
        self.x = self.y = None
        self.prev: dict[str, dict[str, Tensor]] = {}
        self.rollbacks = 0

    def on_epoch_start(self, state) -> None:
        if self.x is None:
            g = torch.Generator().manual_seed(state.cfg.seed)
            n = min(self.opt.probe, len(state.data.train))
            idx = torch.randperm(len(state.data.train), generator=g)[:n].to(state.data.train.x.device)
            self.x, self.y = to_float(state.data.train.x[idx]), state.data.train.y[idx]
        if state.rollbacks != self.rollbacks:
            self.rollbacks, self.prev = state.rollbacks, {}

    def on_step(self, state) -> dict | None:
        if self.opt.every and state.step % self.opt.every == 0:
            return self.measure(state, "step")
        return None

    def on_epoch(self, state) -> dict:
        return self.measure(state, "epoch")

    def measure(self, state, cadence: str) -> dict:
        cfg, model, x, y, eps = state.cfg, state.model, self.x, self.y, state.cfg.eps
        was_training = model.training
        model.train()
        with isolated(model, state.device, cfg.seed):
            deltas = {
                "": state.attack(model, x, y),
                "/fgsm_rs": fgsm_rs(model, x, y, eps=eps, alpha=self.opt.compare_alpha),
                "/zeroed": zerograd(model, x, y, eps=eps, alpha=self.opt.compare_alpha,
                                    q=self.opt.compare_q),
            }
            reference = pgd(model, x, y, eps=eps, alpha=0.25, steps=self.opt.pgd_steps)
            out = {"diag/sign_disagree": sign_disagreement(deltas[""], reference),
                   "diag/grad_cosine": gradient_alignment(model, x, y, eps)}
            zeroed = zeroed_fraction(model, x, y, cfg.method, eps, cfg.method_args, deltas[""])
        model.train(was_training)
        if zeroed is not None:
            out["diag/zeroed_frac"] = zeroed
        prev = self.prev.get(cadence)
        if prev is not None:
            for k, d in deltas.items():
                out[f"diag/delta_mse{k}"] = ((d - prev[k]) * 255).pow(2).mean().item()
        self.prev[cadence] = deltas
        return out


def callbacks_for(cfg) -> list:
    """The diagnostics and the CO guard a config asks for, in the order they must run
    (the guard reads the validation FGSM accuracy measured before it)."""
    from .guard import Guard, GuardOptions

    opt = DiagnosticsOptions(**cfg.diagnostics)
    found: list = []
    if opt.weights:
        found.append(WeightUpdate())
    if opt.norms:
        found.append(PerturbationNorms())
    if opt.fgsm_val:
        found.append(ValFGSM())
    if opt.probe:
        found.append(Probe(opt))
    guard = GuardOptions(**cfg.guard)
    if guard.enabled:
        found.append(Guard(guard))
    return found
