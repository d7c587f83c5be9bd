"""Catastrophic-overfitting (CO) diagnostics: training-loop hooks that measure, while a
model trains, the quantities Golgooni et al. plot and tabulate to explain CO.

Cheap ones are on by default: the weight-update size of each epoch (Fig. 1) and the sizes of
the training perturbations (Table 4's unit: the per-element mean |delta| x 255); FGSM accuracy on the validation split (so the FGSM-PGD
gap of CO is visible) is measured with the validation. The probe measures run on one fixed batch of training
images, at each epoch's end and every `every` steps if asked, and are off unless `probe > 0`:
perturbation change between consecutive probes (Fig. 2), the sign disagreement of this run's
own perturbation (random start included) with PGD-10 (Table 10 itself, every method on one
model without random starts, is `zerograd measure --table 10`), gradient alignment (GradAlign's cosine) and the fraction of entries ZeroGrad or
MultiGrad zero. Measuring never changes the run: the global RNG and batch-norm statistics
are restored afterwards, so a run is bitwise the same with or without diagnostics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import to_float
from ..methods import METHODS, input_grad, random_start, zeroed_fraction
from ..options import DiagnosticsOptions
from ..runtime import isolated
from .events import Hook


def weight_update(before: dict[str, Tensor], after: dict[str, Tensor]) -> dict[str, float]:
    """Mean squared change of the parameters: overall ('diag/weight_mse') and per weight
    tensor of a layer (conv and linear kernels, 'diag/weight_mse/<name>'), as in Fig. 1."""
    out, total, count = {}, 0.0, 0
    for name, a in after.items():
        sq = (a.detach().float() - before[name].to(a.device).float()).pow(2)
        total += sq.sum().item()
        count += sq.numel()
        if a.dim() > 1:
            out[f"diag/weight_mse/{name}"] = sq.mean().item()
    out["diag/weight_mse"] = total / max(count, 1)
    return out


def perturbation_norms(delta: Tensor) -> dict[str, Tensor]:
    """Per-sample sizes of delta in pixel levels (x255), each key naming its unit:
    'mean_abs_x255' the per-element mean |delta| (Table 4's unit: 6-8 at eps 8/255),
    'l1_sum_x255' the per-image sum of |delta| (mean_abs_x255 times the entries per image),
    'l2_x255' and 'linf_x255' the per-image l2 and l_inf norms."""
    d = delta.detach().flatten(1).float() * 255
    return {"mean_abs_x255": d.abs().mean(1), "l1_sum_x255": d.abs().sum(1),
            "l2_x255": d.norm(dim=1), "linf_x255": d.abs().amax(1)}


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


# --------------------------------------------------------------------------- hooks


class WeightUpdate(Hook):
    """Weight-update size of each epoch (the weights at its start vs at its end). A lazy
    layer's weights do not exist before the first forward pass; its first epoch is skipped."""

    acts_on = ()

    def on_epoch_start(self, state) -> None:
        self.before = {k: p.detach().clone() for k, p in state.model.named_parameters()
                       if not isinstance(p, torch.nn.parameter.UninitializedParameter)}

    def on_epoch(self, state) -> dict:
        after = {k: p for k, p in state.model.named_parameters() if k in self.before}
        return weight_update(self.before, after)

    def epoch_state_dict(self) -> dict:
        return {"before": self.before}

    def load_epoch_state_dict(self, d: dict) -> None:
        self.before = dict(d["before"])


class PerturbationNorms(Hook):
    """The epoch's training perturbations, averaged over its images: 'diag/delta_mean_abs_x255'
    (Table 4), 'diag/delta_l1_sum_x255', 'diag/delta_l2_x255', 'diag/delta_linf_x255'."""

    acts_on = ()

    def on_epoch_start(self, state) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def on_step(self, state) -> None:
        # sums stay on the device (no host sync per step); read once per epoch
        delta = state.batch.delta
        for k, v in perturbation_norms(delta).items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float().sum()
        self.n += len(delta)

    def on_epoch(self, state) -> dict:
        return {f"diag/delta_{k}": float(v) / max(self.n, 1) for k, v in self.sums.items()}

    def epoch_state_dict(self) -> dict:
        return {"sums": self.sums, "n": self.n}

    def load_epoch_state_dict(self, d: dict) -> None:
        self.sums, self.n = dict(d["sums"]), int(d["n"])


class Probe(Hook):
    """The probe measures on a fixed batch of training images (no augmentation), with the
    model in training mode as the training attack sees it. Perturbation change ('delta_mse',
    in (1/255)^2 units) compares each probe with the previous one at the same cadence
    (epoch ends, or every k steps); a rollback starts the comparison afresh. The previous
    probes are its checkpointed state, so a resumed run compares as an uninterrupted one."""

    acts_on = ()

    def __init__(self, options: DiagnosticsOptions):
        self.opt = options
        self.x = self.y = None
        self.prev: dict[str, dict[str, Tensor]] = {}
        self.rollbacks = 0

    def on_epoch_start(self, state) -> None:
        if state.rollbacks != self.rollbacks:
            self.rollbacks, self.prev = state.rollbacks, {}

    def state_dict(self) -> dict:
        return {"prev": self.prev, "rollbacks": self.rollbacks}

    def load_state_dict(self, d: dict) -> None:
        self.prev = {c: dict(v) for c, v in d["prev"].items()}
        self.rollbacks = int(d["rollbacks"])

    def images(self, state) -> tuple[Tensor, Tensor]:
        """The fixed probe batch, drawn once from the seed (also after a mid-epoch resume,
        where no EPOCH_START comes first)."""
        if self.x is None:
            g = torch.Generator().manual_seed(state.cfg.seed)
            n = min(self.opt.probe, len(state.data.train))
            idx = torch.randperm(len(state.data.train), generator=g)[:n]
            train = state.data.train  # in memory or streamed: take reads only these images
            self.x, self.y = to_float(train.take(idx)), train.y[idx.to(train.y.device)]
        return self.x, self.y

    def on_step(self, state) -> dict | None:
        if self.opt.every and state.step % self.opt.every == 0:
            return self.measure(state, "step")
        return None

    def on_epoch(self, state) -> dict:
        return self.measure(state, "epoch")

    def measure(self, state, cadence: str) -> dict:
        (x, y), cfg, model, eps = self.images(state), state.cfg, state.model, state.cfg.eps
        was_training = model.training
        model.train()
        with isolated(model, state.device, cfg.seed):
            deltas = {
                "": state.method(model, x, y),
                "/fgsm_rs": METHODS["fgsm_rs"](model, x, y, eps=eps, alpha=self.opt.compare_alpha),
                "/zeroed": METHODS["zerograd"](model, x, y, eps=eps, alpha=self.opt.compare_alpha,
                                               q=self.opt.compare_q),
            }
            reference = METHODS["pgd"](model, x, y, eps=eps, alpha=0.25, steps=self.opt.pgd_steps)
            out = {"diag/sign_disagree": sign_disagreement(deltas[""], reference),
                   "diag/grad_cosine": gradient_alignment(model, x, y, eps)}
            zeroed = zeroed_fraction(cfg.method, model, x, y, deltas[""], eps=eps, **cfg.method_args)
        model.train(was_training)
        if zeroed is not None:
            out["diag/zeroed_frac"] = zeroed
        prev = self.prev.get(cadence)
        if prev is not None:
            for k, d in deltas.items():
                out[f"diag/delta_mse{k}"] = ((d - prev[k].to(d.device)) * 255).pow(2).mean().item()
        self.prev[cadence] = deltas
        return out


def diagnostics_for(options: DiagnosticsOptions) -> list[Hook]:
    """The diagnostic hooks an options section asks for (validation FGSM accuracy is measured
    by the validation itself: see training/validation.py)."""
    found: list[Hook] = []
    if options.weights:
        found.append(WeightUpdate())
    if options.norms:
        found.append(PerturbationNorms())
    if options.probe:
        found.append(Probe(options))
    return found
