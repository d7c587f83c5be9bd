"""Validation at each epoch's end: clean and PGD accuracy on the validation split (the best
checkpoint and CO detection use it, never the test split) and FGSM accuracy when the
diagnostics or the CO guard ask for it. Each process evaluates its part of the split."""
from __future__ import annotations

from ..config import Config
from ..options import DiagnosticsOptions, GuardOptions


def wants_fgsm(cfg: Config) -> bool:
    """FGSM accuracy is measured for the diagnostics, or for the guard's FGSM-hold rule."""
    guard = GuardOptions(**cfg.guard)
    return DiagnosticsOptions(**cfg.diagnostics).fgsm_val or (guard.enabled and guard.fgsm_hold > 0)


def validation_metrics(state) -> dict:
    """{'val/clean_acc', 'val/pgd_acc'[, 'val/fgsm_acc']} of the model now (empty split: {})."""
    cfg, val, flags = state.cfg, state.data.val, state.par.robust_flags
    if len(val) == 0:
        return {}
    clean, robust = flags(state.model, val, "pgd", eps=cfg.eps, batch_size=cfg.eval_batch_size,
                          steps=cfg.val_pgd_steps, restarts=1, alpha=cfg.val_alpha)
    out = {"val/clean_acc": clean.float().mean().item(), "val/pgd_acc": robust.float().mean().item()}
    if wants_fgsm(cfg):
        _, fgsm = flags(state.model, val, "fgsm", eps=cfg.eps, batch_size=cfg.eval_batch_size)
        out["val/fgsm_acc"] = fgsm.float().mean().item()
    return out
