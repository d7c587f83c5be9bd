"""The catastrophic-overfitting (CO) detector: a rule on a stream of validation accuracies,
shared by the training guard and by `zerograd report` (which applies it to finished runs)."""
from __future__ import annotations


class Detector:
    """Flags CO on a stream of (PGD, FGSM) accuracies measured on one fixed set of images:
    PGD below (1 - drop) x its best so far while FGSM is at least fgsm_hold x its value at
    that best. A collapse of both is not CO (e.g. divergence) and is not flagged."""

    def __init__(self, drop: float = 0.5, fgsm_hold: float = 0.5, min_best: float = 0.05):
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
