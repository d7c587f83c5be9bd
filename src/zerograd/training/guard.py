"""Catastrophic-overfitting detection and automatic rolling back (Golgooni et al., Sec. 5.2
and Appendix B.2), as a training-loop hook.

What the paper says (Sec. 5.2): once CO occurs, stop, raise q from q_0 to a larger q_1 and
continue with ZeroGrad "resuming from a saved checkpoint at the epoch right before
catastrophic overfitting"; on CIFAR-10 it went from q_0 = 0.25 to 0.45. It states no
intermediate q sequence and no detection rule beyond "using a validation dataset" (App. B.2).

zerograd's own choices (each an option of `GuardOptions`): CO is flagged when validation PGD
accuracy falls below (1 - drop) = 50 % of its best while FGSM accuracy keeps at least
fgsm_hold = 50 % of its value at that best (the rule that caught every collapse in
docs/reproduction.md; 80 % hid one there). The guard checks at each epoch's end and, if asked,
every `every` steps on the first `check_n` validation images. On CO it reloads the last epoch
whose check passed (the epoch right before the flagged one: the paper's rule; `rollback_to:
best` reloads the best-PGD epoch instead, `margin` goes further back) and raises q by `q_step`
(0.1); a method without q stops or continues with a smaller alpha. At most `max_rollbacks`.
"""
from __future__ import annotations

from dataclasses import asdict

from ..detector import Detector
from ..methods import METHODS
from ..options import GuardOptions
from ..runtime import isolated
from .events import EPOCH_END, STEP_END, Hook, Rollback, Stop


class Guard(Hook):
    """The CO detector as a hook returning `Rollback` or `Stop` (or, with action='log',
    only recording the event). Its state is a plain dict (`state_dict`) for checkpoints. It
    reads the epoch's validation PGD and FGSM accuracy from the epoch's metrics."""

    def __init__(self, options: GuardOptions | None = None):
        self.opt = options or GuardOptions()
        self.acts_on = (STEP_END, EPOCH_END) if self.opt.every else (EPOCH_END,)
        args = (self.opt.drop, self.opt.fgsm_hold, self.opt.min_best)
        self.detectors = {"epoch": Detector(*args), "step": Detector(*args)}
        self.healthy_epoch = 0  # the last epoch whose check passed (the paper's rollback target)
        self.best_epoch = 0  # the epoch of the best validation PGD accuracy
        self.events = 0

    def state_dict(self) -> dict:
        return {"options": asdict(self.opt), "healthy_epoch": self.healthy_epoch, "best_epoch": self.best_epoch,
                "events": self.events,
                "detectors": {k: d.state_dict() for k, d in self.detectors.items()}}

    def load_state_dict(self, d: dict) -> None:
        """The detectors' memory; the options stay the config's (resume checks that they are the
        recorded ones, or that they were changed deliberately with --set)."""
        self.healthy_epoch, self.events = int(d["healthy_epoch"]), int(d["events"])
        self.best_epoch = int(d["best_epoch"])
        for k, det in self.detectors.items():
            det.load_state_dict(d["detectors"][k])

    def on_step(self, state):
        if not self.opt.every or state.step % self.opt.every:
            return None
        return self.check(state, "step", *self.measure(state, min(self.opt.check_n, len(state.data.val))))

    def measure(self, state, n: int) -> tuple[float, float]:
        """(PGD, FGSM) accuracy on the first n validation images, seeded by the step; each
        process checks its part of them, and the run's RNG is left alone."""
        cfg, subset, flags = state.cfg, state.probe_split(n), state.par.robust_flags
        with isolated(state.model, state.device, cfg.seed + state.step):
            _, pgd = flags(state.model, subset, "pgd", eps=cfg.eps, batch_size=cfg.eval_batch_size,
                           steps=cfg.val_pgd_steps, restarts=1, alpha=cfg.val_alpha)
            _, fgsm = flags(state.model, subset, "fgsm", eps=cfg.eps, batch_size=cfg.eval_batch_size)
        return pgd.float().mean().item(), fgsm.float().mean().item()

    def on_epoch(self, state):
        m = state.metrics
        if "val/pgd_acc" not in m:
            return None
        return self.check(state, "epoch", m["val/pgd_acc"], m.get("val/fgsm_acc"))

    def check(self, state, source: str, pgd: float, fgsm: float | None):
        """Update the detector of `source` ('epoch' or 'step'); on CO return the action."""
        det = self.detectors[source]
        best = det.best
        if not det.update(pgd, None if self.opt.fgsm_hold == 0 else fgsm):
            if source == "epoch":
                self.healthy_epoch = state.epoch
                if det.best > best:
                    self.best_epoch = state.epoch
            return None
        self.events += 1
        info = {"co/detected": 1, "co/source": source, "co/epoch": state.epoch, "co/step": state.step,
                "co/pgd_acc": pgd, "co/fgsm_acc": fgsm, "co/best_pgd_acc": best}
        if self.opt.action == "log":
            return info
        return self.respond(state, info)

    def respond(self, state, info: dict):
        """Rollback with a larger q (or a smaller alpha), or Stop."""
        cfg = state.cfg
        what = (f"catastrophic overfitting at epoch {info['co/epoch']} step {info['co/step']}: "
                f"val PGD {info['co/pgd_acc']:.3f} < {1 - self.opt.drop:g} x best {info['co/best_pgd_acc']:.3f}")
        if self.opt.action == "stop":
            return Stop(f"{what}; stopping", info)
        if state.rollbacks >= self.opt.max_rollbacks:
            return Stop(f"{what}; {state.rollbacks} rollbacks already (max_rollbacks): stopping", info)
        target = self.best_epoch if self.opt.rollback_to == "best" else self.healthy_epoch
        target = max(target - self.opt.margin, 0)
        if not state.checkpoints.has(target):
            return Stop(f"{what}; no checkpoint of epoch {target} to roll back to (no run folder?): "
                        "stopping", info)
        params = {**METHODS.defaults(cfg.method), **cfg.method_args}
        if "q" in params:
            q = round(params["q"] + self.opt.q_step, 6)
            if q > self.opt.q_max:
                return Stop(f"{what}; q would exceed q_max={self.opt.q_max:g}: stopping", info)
            change = {"q": q}
        elif self.opt.no_q == "lower_alpha" and "alpha" in params:
            change = {"alpha": round(params["alpha"] * self.opt.alpha_factor, 6)}
        else:
            return Stop(f"{what}; method {cfg.method!r} has no q: stopping", info)
        setting = ", ".join(f"{k}={v:g}" for k, v in change.items())
        return Rollback(target, change, f"{what}; back to epoch {target} with {setting}", info)
