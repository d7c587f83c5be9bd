"""The nested option sections of a config, `diagnostics` and `guard`: each a dataclass whose
fields are the section's keys (type-checked by config.py) and whose `check` validates ranges
against the whole config before any work starts. The hooks that use them live in training/."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass
class DiagnosticsOptions:
    """The `diagnostics` config section (e.g. `--set diagnostics.probe=256`)."""

    weights: bool = True  # weight-update size per epoch, per layer and overall (Fig. 1)
    norms: bool = True  # training perturbations x255: mean |delta| per entry (Table 4), l1, l2, linf
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


ACTIONS = ("rollback", "stop", "log")
NO_Q_ACTIONS = ("stop", "lower_alpha")
ROLLBACK_TO = ("healthy", "best")


@dataclass
class GuardOptions:
    """The `guard` config section (e.g. `--set guard.enabled=true --set guard.q_step=0.1`).
    The paper (Sec. 5.2) fixes only the rollback target (the epoch right before CO) and one q
    change (0.25 -> 0.45); the detection rule and the q step are zerograd's (training/guard.py)."""

    enabled: bool = False
    drop: float = 0.5  # CO: val PGD accuracy below (1 - drop) x its best so far ...
    fgsm_hold: float = 0.5  # ... while val FGSM accuracy is at least fgsm_hold x its value then
    min_best: float = 0.05  # no verdict before the best PGD accuracy reaches this
    every: int = 0  # also check every k steps on `check_n` validation images (0: epochs only)
    check_n: int = 256
    action: str = "rollback"  # rollback | stop | log
    rollback_to: str = "healthy"  # healthy: the last epoch whose check passed (the paper's); best: best val PGD
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
        if self.enabled and self.action == "rollback" and cfg.keep_epoch_checkpoints is not True:
            raise ConfigError("guard.action='rollback' needs keep_epoch_checkpoints=true "
                              "(it reloads the epoch checkpoint before the collapse)")
