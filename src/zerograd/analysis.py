"""What run folders say, read as data: a run's config, metrics and results (`RunRecord`),
when catastrophic overfitting (CO) began in it and whether the collapse lasted, and a short name
for each setting. `zerograd report`'s tables and figures are built on these."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .detector import Detector
from .errors import ConfigError
from .methods import METHODS
from .options import GuardOptions
from .results import is_result
from .runfolder import MAY_DIFFER, RunFolder

# Config keys that do not change what a run measures; runs differing only in these are seeds
# of one setting: how the data is read (MAY_DIFFER, equal results either way), how often and
# which checkpoints are written, and `environment` and `data` (your own data's fingerprint),
# which are recorded facts.
NOT_SETTING = ("seed", "description", "tensorboard", "environment", "data", "checkpoint_every_steps",
               "checkpoint_every_minutes", "keep_epoch_checkpoints") + MAY_DIFFER


@dataclass
class RunRecord:
    """What a run folder holds, read as data (YAML safe_load, JSON)."""

    path: Path
    config: dict
    records: list[dict]
    evals: list[tuple[str, dict]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # results file -> seconds it took

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def epochs(self) -> list[dict]:
        return [r for r in self.records if "train/loss" in r]

    @property
    def events(self) -> list[dict]:
        return [r for r in self.records if "event" in r or "co/detected" in r]


def read_run(path: str | Path) -> RunRecord:
    """A run folder as data; ConfigError if it is not one."""
    run = RunFolder(path)
    if not run.exists():
        raise ConfigError(f"{str(run.path)!r} is not a zerograd run folder (no metrics.jsonl or config.yaml)")
    # the recorded extras (versions, device) and every value checked like any config
    config = {**run.read_config_dict(), **run.read_config().to_dict()} if run.config_file.is_file() else {}
    evals, seconds = [], {}
    for f in run.result_files():
        try:  # written atomically by zerograd: one that does not parse was damaged or replaced
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{str(f)!r} is not JSON, so its results cannot be reported; restore "
                              "or delete it") from None
        if isinstance(obj, dict) and finite_number(obj.get("seconds")) is not None:  # evaluations, measurements
            seconds[str(f.relative_to(run.path))] = obj["seconds"] + (finite_number(obj.get("checks_seconds")) or 0)
        if isinstance(obj, dict) and "robust_acc" in obj:
            if not is_result(obj):
                raise ConfigError(f"{str(f)!r} is not a zerograd results file (accuracies, n or "
                                  "attack of the wrong type); restore or delete it")
            evals.append((str(f.relative_to(run.path)), obj))
    return RunRecord(run.path, config, run.read_metrics(), evals, seconds)


def co_epoch(run: RunRecord, options: GuardOptions | None = None) -> int | None:
    """The first epoch the CO detector flags in a run's validation accuracies (whether or not
    the run had the guard on), or the epoch of a logged CO event; None if neither."""
    for e in run.events:
        if e.get("co/detected"):
            return int(e.get("co/epoch", e.get("epoch", 0)))
    opt = options or GuardOptions()
    det = Detector(opt.drop, opt.fgsm_hold, opt.min_best)
    for r in run.epochs:
        pgd = finite_number(r.get("val/pgd_acc"))
        if pgd is not None and det.update(pgd, finite_number(r.get("val/fgsm_acc"))):
            return int(r["epoch"])
    return None


def finite_number(v) -> float | None:
    """A finite measured value, else None: metrics.jsonl may hold null or 'inf' for one."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def persistent_co_epoch(run: RunRecord, options: GuardOptions | None = None) -> int | None:
    """The onset of a collapse that persists: the first epoch the detector flags from which
    the validation PGD accuracy stays below (1 - drop) x its best so far up to the last epoch.
    None for a run without CO, and for one whose every flag it recovered from (a transient
    dip, or a collapse the guard rolled back)."""
    opt = options or GuardOptions()
    det = Detector(opt.drop, opt.fgsm_hold, opt.min_best)
    epochs = [r for r in run.epochs if finite_number(r.get("val/pgd_acc")) is not None]
    flagged = [det.update(r["val/pgd_acc"], finite_number(r.get("val/fgsm_acc"))) for r in epochs]
    below, best = [], -1.0
    for r in epochs:
        best = max(best, r["val/pgd_acc"])
        below.append(r["val/pgd_acc"] < (1 - opt.drop) * best)
    for i, flag in enumerate(flagged):
        if flag and all(below[i:]):
            return int(epochs[i]["epoch"])
    return None


def method_args_of(config: dict) -> tuple[dict, dict]:
    """(the run's method_args with the method's defaults filled in, those defaults)."""
    try:
        defaults = METHODS.defaults(config.get("method", "?"))
    except ConfigError:
        defaults = {}
    return {**defaults, **(config.get("method_args") or {})}, defaults


def setting_label(config: dict, named: frozenset = frozenset()) -> str:
    """A short name for a run's setting: method, its non-default hyperparameters (and those in
    `named`, even at their default), GradAlign, the guard's changed options."""
    method = config.get("method", "?")
    resolved, defaults = method_args_of(config)
    args = {k: v for k, v in resolved.items()
            if k in named or (k in (config.get("method_args") or {}) and defaults.get(k) != v)}
    label = method + (" " + " ".join(f"{k}={fmt(v)}" for k, v in sorted(args.items())) if args else "")
    if config.get("grad_align"):
        label += f" + GradAlign {fmt(config['grad_align'])}"
    guard = config.get("guard") or {}
    if guard.get("enabled"):
        defaults = GuardOptions().__dict__
        changed = {k: v for k, v in guard.items() if k != "enabled" and defaults.get(k) != v}
        label += " + guard" + (f" ({' '.join(f'{k}={fmt(v)}' for k, v in sorted(changed.items()))})"
                               if changed else "")
    return label


LABELLED = ("method", "method_args", "grad_align", "guard")  # what setting_label names already


def distinct_labels(configs: list[dict]) -> dict[str, str]:
    """setting_key -> a label that tells settings apart: setting_label plus every other key on
    which the compared settings differ (e.g. epochs, eps, model), so no two share a label."""
    keys = sorted({k for c in configs for k in c if k not in NOT_SETTING + LABELLED})
    varying = [k for k in keys if differ(c.get(k) for c in configs)]
    named = {m: _varying_method_args([c for c in configs if c.get("method") == m])
             for m in {c.get("method") for c in configs}}
    labels = {}
    for c in configs:
        extra = " ".join(f"{k}={eps_text(c.get(k)) if k == 'eps' else fmt(c.get(k))}" for k in varying)
        labels[setting_key(c)] = setting_label(c, named[c.get("method")]) + (f" · {extra}" if extra else "")
    return labels


def _varying_method_args(configs: list[dict]) -> frozenset:
    """The hyperparameters on which the compared runs of one method differ: a label names them
    even at their default, so 'fgsm_rs alpha=1.25' stands beside 'fgsm_rs alpha=2', not 'fgsm_rs'."""
    resolved = [method_args_of(c)[0] for c in configs]
    return frozenset(k for k in {k for r in resolved for k in r} if differ(r.get(k) for r in resolved))


def differ(values) -> bool:
    """Whether config values (numbers, lists, dicts) are not all the same."""
    return len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1


def setting_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in NOT_SETTING}, sort_keys=True,
                      default=str)


def eps_text(v) -> str:
    """An eps as the n/255 it was set as (8/255, not 0.0313725), where that is the shorter."""
    if finite_number(v) is not None and abs(v * 255 - round(v * 255)) < 1e-6:
        return min(fmt(v), f"{round(v * 255)}/255", key=len)
    return fmt(v)


def runs_by_eps(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """eps (as eps_text) -> its runs, smallest eps first: accuracies at different eps are
    compared apart."""
    groups: dict[str, list[RunRecord]] = {}
    for r in sorted(runs, key=lambda r: (finite_number(r.config.get("eps")) is None,
                                         finite_number(r.config.get("eps")) or 0.0)):
        groups.setdefault(eps_text(r.config.get("eps")), []).append(r)
    return groups


def fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


EXPECTATIONS = ("overfits", "does_not_overfit", "reaches", "rescued_by_rollback")


@dataclass(frozen=True)
class Prediction:
    """A claim an experiment writes down before its runs, on row `row` (runs ROW-s<seed>,
    `seeds` of them planned): it overfits, or does not, by the persistent-collapse rule; or it
    `reaches` the final robust accuracy of row `bar` (`bar_seeds` planned); or it is
    `rescued_by_rollback`: the guard rolls back most seeds and each of those ends, not stopped,
    at the bar's accuracy."""

    claim: str
    row: str
    expect: str  # one of EXPECTATIONS
    runs: tuple[str, ...]  # the row's planned run folders, ROW-s<seed>
    bar: str | None = None
    bar_runs: tuple[str, ...] = ()

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def bar_seeds(self) -> int:
        return len(self.bar_runs)


def verdict(prediction: Prediction, onsets: list[int | None]) -> str:
    """'held', 'did not hold' or 'pending', from the finished seeds' persistent-CO onsets, as
    soon as the seeds still to come cannot change it: "overfits" needs CO in a majority of the
    planned seeds (2 of 3), "does not overfit" in none."""
    overfit, left = sum(o is not None for o in onsets), max(prediction.seeds - len(onsets), 0)
    if prediction.expect == "overfits":
        need = prediction.seeds // 2 + 1
        if overfit >= need:
            return "held"
        return "did not hold" if overfit + left < need else "pending"
    if overfit:
        return "did not hold"
    return "held" if left == 0 else "pending"


def reaches(prediction: Prediction, robust: list[float], bar_robust: list[float]) -> str:
    """'held' or 'did not hold' once every planned seed of the row and of its bar has a final
    robust accuracy, else 'pending': the row reaches the bar if its mean is at least the bar's
    mean minus the larger of the two standard deviations (a difference inside the spread of the
    seeds is not a difference). 'held' comes early, once the bar is complete, if it would hold
    even were every seed still to come at 0 % (the larger std is never below the bar's)."""
    if len(bar_robust) < prediction.bar_seeds or not bar_robust or not robust:
        return "pending"
    if len(robust) < prediction.seeds:
        lowest_mean = sum(robust) / prediction.seeds
        return "held" if lowest_mean >= statistics.mean(bar_robust) - _std(bar_robust) else "pending"
    spread = max(_std(robust), _std(bar_robust))
    return "held" if statistics.mean(robust) >= statistics.mean(bar_robust) - spread else "did not hold"


def rescued(prediction: Prediction, seeds: list[tuple[bool, bool, float | None]],
            bar_robust: list[float]) -> str:
    """The verdict of a `rescued_by_rollback` prediction from its finished seeds, each (the
    guard detected CO in it, it was stopped, its final robust accuracy): 'could not be tested'
    once too few seeds can still overfit (fewer than a majority of the planned ones: the
    starting setting is not bad enough here); once a majority has overfit, 'did not hold' when
    one of them was stopped or ends below the bar (under the bar's mean minus its standard
    deviation, the bar complete), 'held' when every seed is in and each that overfit was
    rescued; else 'pending'."""
    overfit = [s for s in seeds if s[0]]
    left, need = max(prediction.seeds - len(seeds), 0), prediction.seeds // 2 + 1
    if len(overfit) + left < need:
        return "could not be tested"
    if len(overfit) < need:  # the seeds to come decide whether it can be tested at all
        return "pending"
    if any(stopped for _, stopped, _ in overfit):
        return "did not hold"
    if len(bar_robust) >= prediction.bar_seeds and bar_robust:
        floor = statistics.mean(bar_robust) - _std(bar_robust)
        if any(v is None or v < floor for _, _, v in overfit):
            return "did not hold"
        if left == 0:
            return "held"
    return "pending"


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def co_summary(run: RunRecord) -> str:
    """The run's CO in words: its first flag, and whether the collapse persists (the onset)."""
    co, onset = co_epoch(run), persistent_co_epoch(run)
    if co is None:
        return "none"
    if onset == co:
        return f"epoch {co}, persists to the end"
    if onset is None:
        return f"epoch {co}, recovered (a transient dip or a rollback)"
    return f"flagged at epoch {co} (recovered), persistent from epoch {onset}"
