"""The results file of one evaluation: a flat JSON object that says what was evaluated (the
checkpoint's path, SHA-256 and how it was chosen), on what (dataset, split, n), how (attack and
parameters, eps, seed), what came out (clean and robust accuracy, sanity checks, time) and with
which software, so a quoted number can be traced back to the exact weights."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

RESULTS_FORMAT = "zerograd-eval-1"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_folder_of(ckpt_path: str | Path) -> Path | None:
    """The run folder holding a checkpoint (RUN/checkpoints/X.pt with RUN/config.yaml), else None."""
    ckpt_path = Path(ckpt_path)
    run = ckpt_path.parent.parent
    if ckpt_path.parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


def checkpoint_facts(ckpt_path: str | Path, state: dict, cfg) -> dict:
    """Which checkpoint was evaluated: path, SHA-256, kind (last, best, epoch-N or file), the
    epoch it was saved at and, for best, how it was chosen."""
    ckpt_path = Path(ckpt_path)
    kind = ckpt_path.stem if run_folder_of(ckpt_path) is not None else "file"
    facts = {
        "checkpoint": str(ckpt_path),
        "checkpoint_sha256": sha256_file(ckpt_path),
        "checkpoint_kind": kind,
        "checkpoint_epoch": state.get("epoch"),
        "best_selected_by": None,
    }
    if kind == "best":
        facts["best_selected_by"] = (
            f"highest val/pgd_acc over epochs: PGD-{cfg.val_pgd_steps} (alpha {cfg.val_alpha} eps, "
            f"1 restart) on {cfg.val_size} validation images held out from the training set; "
            f"value {state.get('best_val_pgd')}")
    return facts


def attack_label(attack: dict) -> str:
    """A short name for file names: pgd-50-10, fgsm, autoattack-standard, autoattack-custom-..."""
    if attack["name"] == "pgd":
        return f"pgd-{attack['steps']}-{attack['restarts']}"
    if attack["name"] == "autoattack":
        if attack["version"] == "custom":
            return "autoattack-custom-" + "+".join(attack["attacks"])
        return f"autoattack-{attack['version']}"
    return attack["name"]


def results_path(ckpt_path: str | Path, label: str, n: int, eps_tag: str = "") -> Path:
    """RUN/evals/<label>-<checkpoint>-n<N>.json for a checkpoint in a run folder, else
    <checkpoint stem>.<label>-n<N>.json beside the checkpoint file."""
    ckpt_path = Path(ckpt_path)
    run = run_folder_of(ckpt_path)
    if run is not None:
        return run / "evals" / f"{label}{eps_tag}-{ckpt_path.stem}-n{n}.json"
    return ckpt_path.with_name(f"{ckpt_path.stem}.{label}{eps_tag}-n{n}.json")


def record(result: dict, facts: dict, cfg, *, device: str) -> dict:
    """The flat results object: facts about the checkpoint and run, then the result."""
    from .train import environment

    run = run_folder_of(facts["checkpoint"])
    return {
        "format": RESULTS_FORMAT,
        **facts,
        "run": None if run is None else str(run),
        "dataset": cfg.dataset,
        "model": cfg.model,
        "method": cfg.method,
        "method_args": dict(cfg.method_args),
        "train_eps": cfg.eps,
        **result,
        "device": device,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **environment(),
    }
