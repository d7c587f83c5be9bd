"""AutoAttack (Croce & Hein, ICML 2020) for the l_inf threat model.

`autoattack(model, x, y, eps=...)` runs the standard ensemble APGD-CE, APGD-T, FAB-T, Square,
each on the points still robust, and reports per-sample worst-case robustness. Every attack is
also callable alone through ATTACKS: `ATTACKS[name](model, x, y, eps=..., seed=..., **params)`
returns x_adv (the adversarial example where one was found, else x), within eps and in [0, 1],
with the model in eval mode (its previous modes restored) and no parameter gradients touched.
"""
from ._apgd import apgd_ce, apgd_dlr, apgd_t, dlr_loss, dlr_targeted_loss
from ._fab import fab, fab_t, project_hyperplane_box
from ._runner import ATTACKS, VERSIONS, AutoAttackResult, autoattack, resolve_plan
from ._square import square

__all__ = [
           "ATTACKS",
           "VERSIONS",
           "AutoAttackResult",
           "apgd_ce",
           "apgd_dlr",
           "apgd_t",
           "autoattack",
           "dlr_loss",
           "dlr_targeted_loss",
           "fab",
           "fab_t",
           "project_hyperplane_box",
           "resolve_plan",
           "square",
]
