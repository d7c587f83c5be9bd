"""The results file of one evaluation: a flat JSON object that says what was evaluated (the
checkpoint's path, SHA-256 and how it was chosen), on what (dataset, split, n), how (attack and
parameters, eps, seed), what came out (clean and robust accuracy, sanity checks, time) and with
which software, so a quoted number can be traced back to the exact weights. Also the one way
an attack is named, in file names and on screen."""
from __future__ import annotations

import time

from .runtime import environment

RESULTS_FORMAT = "zerograd-eval-1"


def attack_label(attack: dict) -> str:
    """A short name for file names: pgd-50-10, fgsm, autoattack-standard, autoattack-custom-..."""
    if attack["name"] == "pgd":
        return f"pgd-{attack['steps']}-{attack['restarts']}"
    if attack["name"] == "autoattack":
        if attack.get("version") == "custom":
            return "autoattack-custom-" + "+".join(attack["attacks"])
        return f"autoattack-{attack.get('version', 'standard')}"
    return attack["name"]


def attack_title(attack: dict) -> str:
    """The name people read: PGD-50-10, FGSM, AutoAttack (standard)."""
    if attack["name"] == "pgd":
        return f"PGD-{attack['steps']}-{attack['restarts']}"
    if attack["name"] == "autoattack":
        return f"AutoAttack ({attack.get('version', 'standard')})"
    return attack["name"].upper()


def is_result(obj) -> bool:
    """A results file's content as zerograd writes it: accuracies numbers (or null), n an
    integer, and an attack that `attack_label` / `attack_title` can name."""
    def number(v) -> bool:
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not (isinstance(obj, dict) and number(obj.get("robust_acc")) and number(obj.get("clean_acc"))
            and isinstance(obj.get("n", 0), int) and isinstance(obj.get("attack"), dict)):
        return False
    attack = obj["attack"]
    if not isinstance(attack.get("name"), str):
        return False
    fields = {"pgd": ("steps", "restarts"), "autoattack": ()}.get(attack["name"], ())
    if not all(isinstance(attack.get(k), int) and not isinstance(attack.get(k), bool) for k in fields):
        return False
    version, attacks = attack.get("version", "standard"), attack.get("attacks")
    return isinstance(version, str) and (attack["name"] != "autoattack" or version != "custom" or (
        isinstance(attacks, list) and all(isinstance(a, str) for a in attacks)))


def record(result: dict, facts: dict, cfg, *, device: str, run: str | None,
           trained: bool = True) -> dict:
    """The flat results object: facts about the checkpoint and run, then the result. Weights
    zerograd did not train (`trained=False`) have no method or training eps: those are null."""
    return {
        "format": RESULTS_FORMAT,
        **facts,
        "run": run,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "method": cfg.method if trained else None,
        "method_args": dict(cfg.method_args) if trained else None,
        "train_eps": cfg.eps if trained else None,
        **result,
        "device": device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **environment(),
    }
