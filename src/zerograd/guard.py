"""Catastrophic-overfitting detection and automatic rolling back (Golgooni et al., Sec. 5.2
and Appendix B.2), as a training-loop callback.

CO shows as validation PGD accuracy collapsing relative to its best while FGSM accuracy
holds (the model has learnt to mask its gradient, not to resist). The guard watches both at
each epoch's end and, if asked, every `every` steps on the first `check_n` validation
images. On CO it reloads the checkpoint of the best validation PGD accuracy (or of the last
epoch not flagged) and raises ZeroGrad's
q by `q_step` (0.25 -> 0.35 -> 0.45, as in the paper); a method without q stops (keeping
the best checkpoint) or continues with a smaller alpha. At most `max_rollbacks` rollbacks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .diagnostics import isolated
from .errors import ConfigError
from .evaluate import robust_flags
from .perturb import method_params

ACTIONS = ("rollback", "stop", "log")
NO_Q_ACTIONS = ("stop", "lower_alpha")
ROLLBACK_TO = ("best", "healthy")


@dataclass
class GuardOptions:
    """The `guard` config section (e.g. `--set guard.enabled=true --set guard.q_step=0.1`)."""

    enabled: bool = False
    drop: float = 0.5  # CO: val PGD accuracy below (1 - drop) x its best so far ...
    fgsm_hold: float = 0.8  # ... while val FGSM accuracy is at least fgsm_hold x its value then
    min_best: float = 0.05  # no verdict before the best PGD accuracy reaches this
    every: int = 0  # also check every k steps on `check_n` validation images (0: epochs only)
    check_n: int = 256
    action: str = "rollback"  # rollback | stop | log
    rollback_to: str = "best"  # best: the epoch of the best val PGD accuracy; healthy: the last unflagged
    margin: int = 0  # go back this many epochs further (the weights may be damaged before PGD shows it)
    q_step: float = 0.1  # how much a rollback raises q
    q_max: float = 0.9  # a q above this stops the run instead
    no_q: str = "stop"  # for methods without q: stop | lower_alpha
    alpha_factor: float = 0.75  # lower_alpha multiplies alpha by this
    max_rollbacks: int = 3  # one more CO stops the run

    def check(self, cfg) -> None:
        def bad(name: str, valid: str) -> ConfigError:
            return ConfigError(f"guard.{name}={getattr(self, name)!r} is invalid: must be {valid}")

        if not 0 < self.drop < 1:
            raise bad("drop", "in (0, 1)")
        if not 0 <= self.fgsm_hold <= 1:
            raise bad("fgsm_hold", "in [0, 1] (0 ignores FGSM accuracy)")
        if not 0 <= self.min_best < 1:
            raise bad("min_best", "in [0, 1)")
        for name in ("every", "max_rollbacks", "margin"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        if self.check_n < 1:
            raise bad("check_n", ">= 1")
        if self.action not in ACTIONS:
            raise bad("action", f"one of {', '.join(ACTIONS)}")
        if self.rollback_to not in ROLLBACK_TO:
            raise bad("rollback_to", f"one of {', '.join(ROLLBACK_TO)}")
        if self.no_q not in NO_Q_ACTIONS:
            raise bad("no_q", f"one of {', '.join(NO_Q_ACTIONS)}")
        if not 0 < self.q_step < 1:
            raise bad("q_step", "in (0, 1)")
        if not 0 < self.q_max < 1:
            raise bad("q_max", "in (0, 1)")
        if not 0 < self.alpha_factor < 1:
            raise bad("alpha_factor", "in (0, 1)")
        if self.enabled and cfg.val_size == 0:
            raise ConfigError("guard.enabled=true needs a validation split: set val_size > 0")
        if self.enabled and self.action == "rollback" and not cfg.keep_epoch_checkpoints:
            raise ConfigError("guard.action='rollback' needs keep_epoch_checkpoints=true "
                              "(it reloads the epoch checkpoint before the collapse)")


class Detector:
    """Flags CO on a stream of (PGD, FGSM) accuracies measured on one fixed set of images:
    PGD below (1 - drop) x its best so far while FGSM is at least fgsm_hold x its value at
    that best. A collapse of both is not CO (e.g. divergence) and is not flagged."""

    def __init__(self, drop: float = 0.5, fgsm_hold: float = 0.8, min_best: float = 0.05):
        self.drop, self.fgsm_hold, self.min_best = drop, fgsm_hold, min_best
        self.best = -1.0
        self.fgsm_at_best: float | None = None

    def update(self, pgd: float, fgsm: float | None = None) -> bool:
        collapsed = (
            self.best >= self.min_best
            and pgd < (1 - self.drop) * self.best
            and (fgsm is None or self.fgsm_at_best is None
                 or fgsm >= self.fgsm_hold * self.fgsm_at_best)
        )
        if not collapsed and pgd > self.best:
            self.best, self.fgsm_at_best = pgd, fgsm
        return collapsed

    def state_dict(self) -> dict:
        return {"best": self.best, "fgsm_at_best": self.fgsm_at_best}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.fgsm_at_best = float(d["best"]), d["fgsm_at_best"]


class Guard:
    """The CO detector as a callback returning `Rollback` or `Stop` (or, with action='log',
    only recording the event). Its state is a plain dict (`state_dict`) for checkpoints."""

    def __init__(self, options: GuardOptions | None = None):
        self.opt = options or GuardOptions()
        args = (self.opt.drop, self.opt.fgsm_hold, self.opt.min_best)
        self.detectors = {"epoch": Detector(*args), "step": Detector(*args)}
        self.healthy_epoch = 0  # the last epoch whose check passed
        self.best_epoch = 0  # the epoch of the best validation PGD accuracy
        self.events = 0

    def state_dict(self) -> dict:
        return {"options": asdict(self.opt), "healthy_epoch": self.healthy_epoch, "best_epoch": self.best_epoch,
                "events": self.events,
                "detectors": {k: d.state_dict() for k, d in self.detectors.items()}}

    def load_state_dict(self, d: dict) -> None:
        self.opt = GuardOptions(**d["options"])
        self.healthy_epoch, self.events = int(d["healthy_epoch"]), int(d["events"])
        self.best_epoch = int(d["best_epoch"])
        for k, det in self.detectors.items():
            det.load_state_dict(d["detectors"][k])

    def on_step(self, state):
        if not self.opt.every or state.step % self.opt.every:
            return None
        cfg, val = state.cfg, state.data.val
        n = min(self.opt.check_n, len(val))
        subset = type(val)(val.x[:n], val.y[:n])
        with isolated(state.model, state.device, cfg.seed + state.step):  # leaves the run's RNG alone
            _, pgd = robust_flags(state.model, subset, "pgd", eps=cfg.eps, batch_size=max(cfg.batch_size, 256),
                                  steps=cfg.val_pgd_steps, restarts=1, alpha=cfg.val_alpha)
            _, fgsm = robust_flags(state.model, subset, "fgsm", eps=cfg.eps, batch_size=max(cfg.batch_size, 256))
        return self.check(state, "step", pgd.float().mean().item(), fgsm.float().mean().item())

    def on_epoch(self, state):
        m = state.metrics
        if "val/pgd_acc" not in m:
            return None
        fgsm = m.get("val/fgsm_acc")
        if fgsm is None and self.opt.fgsm_hold > 0:
            _, flags = robust_flags(state.model, state.data.val, "fgsm", eps=state.cfg.eps,
                                    batch_size=max(state.cfg.batch_size, 256))
            fgsm = flags.float().mean().item()
        return self.check(state, "epoch", m["val/pgd_acc"], fgsm)

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
        from .train import Rollback, Stop

        cfg = state.cfg
        what = (f"catastrophic overfitting at epoch {info['co/epoch']} step {info['co/step']}: "
                f"val PGD {info['co/pgd_acc']:.3f} < {1 - self.opt.drop:g} x best {info['co/best_pgd_acc']:.3f}")
        if self.opt.action == "stop":
            return Stop(f"{what}; stopping", info)
        if state.rollbacks >= self.opt.max_rollbacks:
            return Stop(f"{what}; {state.rollbacks} rollbacks already (max_rollbacks): stopping", info)
        target = self.best_epoch if self.opt.rollback_to == "best" else self.healthy_epoch
        target = max(target - self.opt.margin, 0)
        if target > 0 and state.run_dir is None:
            return Stop(f"{what}; no run folder to roll back from: stopping", info)
        params = {**method_params(cfg.method), **cfg.method_args}
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
