"""`zerograd report`: report.md and PNG plots rebuilt from run folders only (config.yaml,
metrics.jsonl, eval.json, evals/*.json, checkpoints/).

Per run: validation clean / FGSM / PGD accuracy per epoch with catastrophic-overfitting (CO)
events and rollbacks marked, and the diagnostics (weight-update size, perturbation change,
sign disagreement, gradient alignment) next to PGD accuracy, in the shape of the paper's
Figs. 1-2. Over runs: a table grouped by setting with mean +- std over seeds (the paper's
Table 1), every evaluation file, and the input-gradient figure of Fig. 3.
"""
from __future__ import annotations

import json
import math
import statistics
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import data_options
from .data import load_data, to_float
from .detector import Detector
from .errors import ConfigError
from .files import atomic_write
from .methods import METHODS, input_grad
from .options import GuardOptions
from .results import attack_title, is_result
from .runfolder import MAY_DIFFER, PLOTS, REPORT, RESULT, RunFolder, load_model

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
        if isinstance(obj, dict) and _number(obj.get("seconds")) is not None:  # evaluations, measurements
            seconds[str(f.relative_to(run.path))] = obj["seconds"] + (_number(obj.get("checks_seconds")) or 0)
        if isinstance(obj, dict) and "robust_acc" in obj:
            if not is_result(obj):
                raise ConfigError(f"{str(f)!r} is not a zerograd results file (accuracies, n or "
                                  "attack of the wrong type); restore or delete it")
            evals.append((str(f.relative_to(run.path)), obj))
    return RunRecord(run.path, config, run.read_metrics(), evals, seconds)


# --------------------------------------------------------------------------- analysis


def co_epoch(run: RunRecord, options: GuardOptions | None = None) -> int | None:
    """The first epoch the CO detector flags in a run's validation accuracies (whether or not
    the run had the guard on), or the epoch of a logged CO event; None if neither."""
    for e in run.events:
        if e.get("co/detected"):
            return int(e.get("co/epoch", e.get("epoch", 0)))
    opt = options or GuardOptions()
    det = Detector(opt.drop, opt.fgsm_hold, opt.min_best)
    for r in run.epochs:
        pgd = _number(r.get("val/pgd_acc"))
        if pgd is not None and det.update(pgd, _number(r.get("val/fgsm_acc"))):
            return int(r["epoch"])
    return None


def _number(v) -> float | None:
    """A finite measured value, else None: metrics.jsonl may hold null or 'inf' for one."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def persistent_co_epoch(run: RunRecord, options: GuardOptions | None = None) -> int | None:
    """The onset of a collapse that persists: the first epoch the detector flags from which
    the validation PGD accuracy stays below (1 - drop) x its best so far up to the last epoch.
    None for a run without CO, and for one whose every flag it recovered from (a transient
    dip, or a collapse the guard rolled back)."""
    opt = options or GuardOptions()
    det = Detector(opt.drop, opt.fgsm_hold, opt.min_best)
    epochs = [r for r in run.epochs if _number(r.get("val/pgd_acc")) is not None]
    flagged = [det.update(r["val/pgd_acc"], _number(r.get("val/fgsm_acc"))) for r in epochs]
    below, best = [], -1.0
    for r in epochs:
        best = max(best, r["val/pgd_acc"])
        below.append(r["val/pgd_acc"] < (1 - opt.drop) * best)
    for i, flag in enumerate(flagged):
        if flag and all(below[i:]):
            return int(epochs[i]["epoch"])
    return None


def _method_args(config: dict) -> tuple[dict, dict]:
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
    resolved, defaults = _method_args(config)
    args = {k: v for k, v in resolved.items()
            if k in named or (k in (config.get("method_args") or {}) and defaults.get(k) != v)}
    label = method + (" " + " ".join(f"{k}={_fmt(v)}" for k, v in sorted(args.items())) if args else "")
    if config.get("grad_align"):
        label += f" + GradAlign {_fmt(config['grad_align'])}"
    guard = config.get("guard") or {}
    if guard.get("enabled"):
        defaults = GuardOptions().__dict__
        changed = {k: v for k, v in guard.items() if k != "enabled" and defaults.get(k) != v}
        label += " + guard" + (f" ({' '.join(f'{k}={_fmt(v)}' for k, v in sorted(changed.items()))})"
                               if changed else "")
    return label


LABELLED = ("method", "method_args", "grad_align", "guard")  # what setting_label names already


def distinct_labels(configs: list[dict]) -> dict[str, str]:
    """setting_key -> a label that tells settings apart: setting_label plus every other key on
    which the compared settings differ (e.g. epochs, eps, model), so no two share a label."""
    keys = sorted({k for c in configs for k in c if k not in NOT_SETTING + LABELLED})
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    labels = {}
    for c in configs:
        extra = " ".join(f"{k}={_eps(c.get(k)) if k == 'eps' else _fmt(c.get(k))}" for k in varying)
        named = _varying_method_args(configs, c.get("method"))
        labels[setting_key(c)] = setting_label(c, named) + (f" · {extra}" if extra else "")
    return labels


def _varying_method_args(configs: list[dict], method) -> frozenset:
    """The hyperparameters on which the compared runs of one method differ: a label names them
    even at their default, so 'fgsm_rs alpha=1.25' stands beside 'fgsm_rs alpha=2', not 'fgsm_rs'."""
    resolved = [_method_args(c)[0] for c in configs if c.get("method") == method]
    keys = {k for r in resolved for k in r}
    return frozenset(k for k in keys
                     if len({json.dumps(r.get(k), sort_keys=True, default=str) for r in resolved}) > 1)


def setting_key(config: dict) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in NOT_SETTING}, sort_keys=True,
                      default=str)


def _eps(v) -> str:
    """An eps as the n/255 it was set as (8/255, not 0.0313725), where that is the shorter."""
    if isinstance(v, (int, float)) and math.isfinite(v) and abs(v * 255 - round(v * 255)) < 1e-6:
        return min(_fmt(v), f"{round(v * 255)}/255", key=len)
    return _fmt(v)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def mean_std(values: list[float]) -> str:
    """'mean +- std' in percent ('n/a' without values; no std for one value)."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{100 * vals[0]:.2f}"
    return f"{100 * statistics.mean(vals):.2f} ± {100 * statistics.stdev(vals):.2f}"


def final_eval(run: RunRecord) -> dict | None:
    return next((e for name, e in run.evals if name == RESULT), None)


def autoattack_eval(run: RunRecord) -> dict | None:
    """The run's standard AutoAttack result of the checkpoint, images and eps its eval.json
    used (the newest, if several), so the column compares the same model on the same points
    under the same budget."""
    final = final_eval(run) or {}
    same = [e for _, e in run.evals if (e.get("attack") or {}).get("name") == "autoattack"
            and (e["attack"].get("version") or "standard") == "standard"
            and _checkpoint_kind(e) == final.get("checkpoint") and e.get("n") == final.get("n")
            and e.get("checkpoint_epoch") == final.get("checkpoint_epoch") and _same_eps(e, final)]
    return max(same, key=lambda e: str(e.get("created", "")), default=None)


def _same_eps(e: dict, final: dict) -> bool:
    """An evaluation at eval.json's eps (`zerograd eval --eps` evaluates at another one)."""
    eps, at = e["attack"].get("eps"), (final.get("attack") or {}).get("eps")
    if eps is None or at is None:  # a file that does not say: taken at its word
        return True
    return isinstance(eps, (int, float)) and isinstance(at, (int, float)) and math.isclose(eps, at, rel_tol=1e-9)


def _checkpoint_kind(e: dict):
    """last, best, epoch-N: eval.json's `checkpoint` names the kind, while a `zerograd eval`
    results file holds the checkpoint's path there and its kind in `checkpoint_kind`."""
    return e.get("checkpoint_kind", e.get("checkpoint"))


def comparison_table(runs: list[RunRecord]) -> list[str]:
    """Markdown rows: one per setting, mean +- std over its runs of the final test accuracy."""
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(setting_key(r.config), []).append(r)
    labels = distinct_labels([r.config for r in runs])
    lines = [("| setting | seeds | CO (runs) | CO epochs | CO at end | rollbacks | clean % | robust % | attack "
              "| AutoAttack % | s/epoch |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for members in groups.values():
        evals = [final_eval(r) for r in members]
        attacks = {_attack_name(e) for e in evals if e}
        cos = [co_epoch(r) for r in members]
        times = [x["time/epoch_s"] for r in members for x in r.epochs if _number(x.get("time/epoch_s")) is not None]
        rollbacks = sum(1 for r in members for e in r.events if e.get("event") == "rollback")
        seconds = f"{statistics.mean(times):.1f}" if times else "-"
        lines.append(
            f"| {labels[setting_key(members[0].config)]} | {len(members)} | "
            f"{sum(c is not None for c in cos)}/{len(members)} | "
            f"{', '.join(str(c) for c in cos if c is not None) or '-'} | "
            f"{_at_end_cell([persistent_co_epoch(r) for r in members])} | {rollbacks} | "
            f"{_of_runs([e['clean_acc'] for e in evals if e], len(members))} | "
            f"{_of_runs([e['robust_acc'] for e in evals if e], len(members))} | {'; '.join(sorted(attacks)) or '-'} | "
            f"{_autoattack_cell(members)} | {seconds} |")
    return lines


def _of_runs(values: list[float], runs: int) -> str:
    """mean +- std, with '(k/n)' when only k of the setting's n runs have an eval.json (the
    others unfinished or stopped before it), so a mean over fewer seeds says so."""
    cell = mean_std(values)
    return cell if len(values) in (0, runs) else f"{cell} ({len(values)}/{runs})"


def _at_end_cell(onsets: list[int | None]) -> str:
    """'k/n' runs whose collapse persists, with the epochs it began: '2/3 (14, 17)'."""
    found = [str(e) for e in onsets if e is not None]
    return f"{len(found)}/{len(onsets)}" + (f" ({', '.join(found)})" if found else "")


def _autoattack_cell(members: list[RunRecord]) -> str:
    """mean +- std of standard AutoAttack over the runs that have it ('(k/n)' when only some do)."""
    found = [e for e in map(autoattack_eval, members) if e is not None]
    if not found:
        return "-"
    return _of_runs([e["robust_acc"] for e in found], len(members))


def _attack_name(e: dict) -> str:
    """The attack, its images and, when it is not the last one, the checkpoint scored (a guard
    that stops a run scores its best), so a setting whose seeds were scored differently shows both."""
    a = e.get("attack") or {}
    if not isinstance(a, dict) or "name" not in a:
        return str(a)
    which = e.get("checkpoint")
    return f"{attack_title(a)}, n={e.get('n')}" + ("" if which in (None, "last") else f", {which} checkpoint")


JUMP_KEYS = ("diag/weight_mse", "diag/delta_mse", "diag/delta_mse/zeroed", "diag/sign_disagree")
JUMP_NEAR, JUMP_BEFORE = 2, 5  # epochs CO-2..CO against the five before them


def co_jump(run: RunRecord, key: str, onset: int) -> tuple[float, float] | None:
    """(largest value of `key` over epochs onset-2..onset, largest over the five epochs
    before); None when either window has no finite value (e.g. CO too early)."""
    def largest(first: int, last: int) -> float | None:
        values = [v for r in run.epochs if first <= r.get("epoch", -1) <= last
                  and (v := _number(r.get(key))) is not None]
        return max(values) if values else None

    near = largest(onset - JUMP_NEAR, onset)
    before = largest(onset - JUMP_NEAR - JUMP_BEFORE, onset - JUMP_NEAR - 1)
    return None if near is None or before is None else (near, before)


def co_jump_rows(runs: list[RunRecord], names: list[str]) -> list[str]:
    """Markdown rows: per run with a persistent collapse, each diagnostic's jump at its onset."""
    lines = ["| run | CO onset | diagnostic | largest near CO | largest before | ratio |", "|---|---|---|---|---|---|"]
    for r, name in zip(runs, names):
        onset = persistent_co_epoch(r)
        if onset is None:
            continue
        for key in JUMP_KEYS:
            pair = co_jump(r, key, onset)
            if pair is not None:
                ratio = f"{pair[0] / pair[1]:.2f}" if pair[1] > 0 else "-"
                lines.append(f"| {name} | {onset} | `{key}` | {pair[0]:.4g} | {pair[1]:.4g} | {ratio} |")
    return lines


SIZE_KEY, SIZE_EPOCH = "diag/delta_mean_abs_x255", 2  # the paper's Table 4: epoch 2 and the last


def perturbation_size_rows(runs: list[RunRecord], names: list[str], settings: list[str]) -> list[str]:
    """Markdown rows: per run that measured it, the mean |delta| x 255 of its own training
    perturbations at epoch 2 and at its last epoch (Table 4's comparison of methods)."""
    lines = [f"| run | setting | epoch {SIZE_EPOCH} | last epoch | value at last |", "|---|---|---|---|---|"]
    for r, name, setting in zip(runs, names, settings):
        values = {e["epoch"]: v for e in r.epochs if (v := _number(e.get(SIZE_KEY))) is not None}
        if not values:
            continue
        early, last = values.get(SIZE_EPOCH), max(values)
        lines.append(f"| {name} | {setting} | {'-' if early is None else f'{early:.2f}'} | "
                     f"{last} | {values[last]:.2f} |")
    return lines


def evaluation_rows(runs: list[RunRecord]) -> list[str]:
    lines = ["| run | file | checkpoint | attack | n | clean % | robust % |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        for name, e in r.evals:
            a = e.get("attack")
            attack = json.dumps(a, sort_keys=True) if isinstance(a, dict) else str(a)
            lines.append(f"| {r.name} | {name} | {Path(str(e.get('checkpoint', '-'))).name} | `{attack}` | "
                         f"{e.get('n', '-')} | {_pct(e.get('clean_acc'))} | {_pct(e.get('robust_acc'))} |")
    return lines


def cost_rows(runs: list[RunRecord], names: list[str]) -> list[str]:
    """Markdown rows: the hours each run took, from its own files, and their sum: training steps
    (`time/epoch_s` of every epoch trained, rolled-back ones too), validation and diagnostics at
    epoch ends (`time/epoch_end_s`, '-' if the run predates it), and its results files' `seconds`."""
    lines = ["| run | training h | epoch ends h | evaluations h | total h |", "|---|---|---|---|---|"]
    sums = [0.0, 0.0, 0.0]
    recorded = unrecorded = False
    for r, name in zip(runs, names):
        train = sum(v for e in r.epochs if (v := _number(e.get("time/epoch_s"))) is not None)
        ends = [v for e in r.epochs if (v := _number(e.get("time/epoch_end_s"))) is not None]
        recorded, unrecorded = recorded or bool(ends), unrecorded or len(ends) < len(r.epochs)
        spent = [train, sum(ends), sum(r.seconds.values())]
        sums = [a + b for a, b in zip(sums, spent)]
        lines.append(f"| {name} | {spent[0] / 3600:.2f} | {f'{spent[1] / 3600:.2f}' if ends else '-'} | "
                     f"{spent[2] / 3600:.2f} | {sum(spent) / 3600:.2f} |")
    ends = "-" if not recorded else f"{sums[1] / 3600:.2f}{' (not all recorded)' if unrecorded else ''}"
    lines.append(f"| all | {sums[0] / 3600:.2f} | {ends} | "
                 f"{sums[2] / 3600:.2f} | {sum(sums) / 3600:.2f} |")
    return lines


def _pct(v) -> str:
    return f"{100 * v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


# --------------------------------------------------------------------------- plots


def _series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(x, y) of `key` over epoch records, x = epoch; after a rollback the x values repeat,
    so x is the position in training: the k-th epoch record trained is at x = k."""
    xs, ys = [], []
    for i, r in enumerate(records, 1):
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(i)
            ys.append(v)
    return xs, ys


def _mark_events(ax, run: RunRecord, annotate: bool = False) -> None:
    """Dashed red line at each CO detection the guard logged, green at each rollback, on the
    trained-epoch axis; for a run without the guard's detections, a dotted red line at the
    onset of a collapse that persists and a grey one at an earlier flag the run recovered from."""
    trained, rollbacks = 0, 0
    before = _method_args(run.config)[0]
    for r in run.records:
        if "train/loss" in r:
            trained += 1
        if r.get("co/detected") or r.get("event") in ("rollback", "stop"):
            x = trained + (0.5 if r.get("co/source") == "step" else 0)
            if r.get("co/detected"):
                ax.axvline(x, color="red", ls="--", lw=1)
            if r.get("event") == "rollback":
                after = r.get("method_args") or {}
                changed = " ".join(f"{k}={_fmt(v)}" for k, v in after.items() if before.get(k) != v)
                before = {**before, **after}
                ax.axvline(x + 0.1, color="green", lw=1.5)
                if annotate:  # stacked, so rollbacks epochs apart stay readable
                    ax.text(x + 0.15, 0.97 - 0.16 * (rollbacks % 4), f"→ {r.get('to_epoch')}: {changed}",
                            color="green", fontsize=7, va="top", transform=ax.get_xaxis_transform())
                rollbacks += 1
            if r.get("event") == "stop":
                ax.text(x, 0.5, "stop", color="red", fontsize=7, transform=ax.get_xaxis_transform())
    if any(e.get("co/detected") for e in run.events):
        return  # the guard's own detections are drawn above
    co, onset = co_epoch(run), persistent_co_epoch(run)
    for epoch, colour, text, y in ((co, "grey", "CO flag,\nrecovered", 0.75), (onset, "red", "CO onset,\npersists", 0.97)):
        if epoch is None or (colour == "grey" and epoch == onset):
            continue
        idx = next(i for i, r in enumerate(run.epochs, 1) if r["epoch"] == epoch)
        ax.axvline(idx, color=colour, ls=":", lw=1)
        if annotate:
            ax.text(idx + 0.15, y, text, color=colour, fontsize=7, va="top",
                    transform=ax.get_xaxis_transform())


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


def plot_run(run: RunRecord, path: Path, setting: str | None = None) -> None:
    """One PNG per run: accuracy panel, then one panel per diagnostic the run logged, each
    with validation PGD accuracy on a second axis (red) as in the paper's Figs. 1-2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = run.epochs
    panels = [("accuracy (validation)", [("val/clean_acc", "clean"), ("val/fgsm_acc", "FGSM"),
                                         ("val/pgd_acc", "PGD")], False)]
    candidates = [
        ("weight-update size (MSE per epoch)", [("diag/weight_mse", "all weights")], True),
        ("perturbation change on the probe batch (MSE, 1/255²)",
         [("diag/delta_mse", "this run's method"), ("diag/delta_mse/fgsm_rs", "FGSM-RS"),
          ("diag/delta_mse/zeroed", "FGSM-RS, small grads zeroed")], True),
        ("sign disagreement with PGD-10", [("diag/sign_disagree", "fraction of entries")], False),
        ("input-gradient alignment (cosine)", [("diag/grad_cosine", "x vs random point")], False),
        ("training perturbation: mean |δ| per entry ×255 (Table 4's unit)",
         [("diag/delta_mean_abs_x255", "mean |δ|×255")], False),
    ]
    panels += [p for p in candidates if any(_series(ep, k)[0] for k, _ in p[1])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys, log) in zip(axes[:, 0], panels):
        for key, label in keys:
            xs, ys = _series(ep, key)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=label)
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        if title.startswith("accuracy"):
            ax.set_ylim(0, 1)
        else:
            twin = ax.twinx()
            xs, ys = _series(ep, "val/pgd_acc")
            twin.plot(xs, ys, color="red", alpha=0.5, lw=1)
            twin.set_ylabel("val PGD acc", color="red", fontsize=7)
            twin.tick_params(axis="y", labelsize=7, colors="red")
        _mark_events(ax, run, annotate=title.startswith("accuracy"))
    from matplotlib.ticker import MaxNLocator

    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("epoch trained (rolled-back epochs count again)")
    title = [f"{run.name}, seed {run.config.get('seed', '?')}",
             *textwrap.wrap(setting or setting_label(run.config), 90)]  # a long label stays inside the figure
    fig.suptitle("\n".join(title), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_overview(runs: list[RunRecord], path: Path) -> None:
    """Validation PGD accuracy per epoch of every run, one colour (and label) per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = distinct_labels([r.config for r in runs])
    labels = list(dict.fromkeys(names[setting_key(r.config)] for r in runs))
    # tab10's hues are distinct; tab20 pairs a dark and a light shade of each, read as one setting
    colours, count = (plt.get_cmap("tab10"), 10) if len(labels) <= 10 else (plt.get_cmap("tab20"), 20)
    fig, ax = plt.subplots(figsize=(9, 4.5 + 0.22 * len(labels)))
    for r in runs:
        label = names[setting_key(r.config)]
        xs, ys = _series(r.epochs, "val/pgd_acc")
        i = labels.index(label)
        ax.plot(xs, ys, color=colours(i % count), alpha=0.8, label=label if r is next(
            q for q in runs if names[setting_key(q.config)] == label) else None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch trained")
    ax.set_ylabel("validation PGD accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.15))  # below: long labels keep the axes wide
    fig.tight_layout()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- Fig. 3


def gradient_figure(run_path: Path, path: Path, n: int = 4, data_dir=None) -> None:
    """Fig. 3 of the paper for the first n test images: the image, its input gradient and
    the gradient masked to the entries where MultiGrad's 3 random starts agree in sign."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, cfg, _ = load_model(run_path, "last", data_dir=data_dir)
    model.eval()
    data = load_data(cfg.dataset, **data_options(cfg, "cpu", val_size=0, train_subset=None, test_subset=n,
                                                 stream=True))
    x = to_float(data.test.x)
    y = data.test.y
    torch.manual_seed(0)
    g = input_grad(model, x, y, torch.zeros_like(x))
    agree = METHODS["multigrad"](model, x, y, eps=cfg.eps, n=3) != 0
    masked = g * agree
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.4), squeeze=False)
    for j in range(n):
        for i, (img, title) in enumerate([(x[j], "input"), (_visible(g[j]), "∇x loss"),
                                          (_visible(masked[j]), "MultiGrad-masked")]):
            ax = axes[i, j]
            ax.imshow(img.permute(1, 2, 0).squeeze(-1).detach().cpu().numpy(),
                      cmap="gray" if img.shape[0] == 1 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle(f"{run_path.name}: {cfg.method}, eps={cfg.eps * 255:.0f}/255", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _visible(g):
    """A gradient as an image: scaled by 3 standard deviations into [0, 1], grey = 0."""
    s = g.std().clamp_min(1e-12) * 3
    return (0.5 + 0.5 * (g / s)).clamp(0, 1)


# --------------------------------------------------------------------------- report.md


def build_report(paths: list[str | Path], out: str | Path | None = None, *,
                 gradient_images: int = 4, data_dir=None) -> Path:
    """Write `out`/report.md and `out`/plots/*.png for the given run folders; returns the
    report's path. Every folder is read before anything is written."""
    if not paths:
        raise ConfigError("report needs at least one run folder")
    runs = [read_run(p) for p in paths]
    seen: dict[Path, Path] = {}
    for r in runs:  # overlapping globs: a run given twice would count as two seeds
        first = seen.setdefault(r.path.resolve(), r.path)
        if first is not r.path:
            raise ConfigError(f"run folder {str(r.path)!r} is given twice (also as {str(first)!r}); "
                              "each run counts once: give it once")
    same: dict[tuple[str, object], Path] = {}
    for r in runs:  # a kept copy beside its original: the same run, not a second seed
        first = same.setdefault((setting_key(r.config), r.config.get("seed")), r.path)
        if first is not r.path:
            raise ConfigError(f"runs {str(first)!r} and {str(r.path)!r} are the same setting with the same "
                              f"seed ({r.config.get('seed')!r}), so they would count as two seeds: give one "
                              "(e.g. not both a kept copy and its original)")
    if out is None:
        if len(runs) > 1:
            raise ConfigError("several runs need --out DIR for the report")
        out = runs[0].path
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder")
    if gradient_images < 0:
        raise ConfigError(f"--gradient-images={gradient_images} is invalid: must be >= 0")
    plots = out / PLOTS
    plots.mkdir(parents=True, exist_ok=True)
    names = _unique_names(runs)
    labels = distinct_labels([r.config for r in runs])
    settings = [labels[setting_key(r.config)] for r in runs]

    lines = ["# zerograd report", "", f"Runs: {', '.join(f'`{r.path}`' for r in runs)}", "",
             "## Comparison over seeds", "",
             ("Final test accuracy from each run's `eval.json` (mean ± std over the runs of a setting; "
             "'(k/n)': only k of its n runs have one yet). "
             "CO: runs where the catastrophic-overfitting detector (validation PGD accuracy below half its "
             "best while FGSM accuracy holds) fired, logged by the guard or found afterwards in "
             "`metrics.jsonl`. CO at end: runs whose collapse persists (from a flagged epoch on, validation "
             "PGD accuracy stays below half its best to the last epoch; not a dip the run recovered from or a "
             "collapse rolled back), with the epoch it began. "
             "AutoAttack: the standard AutoAttack result (`zerograd eval RUN --attack autoattack`) of the "
             "same checkpoint, images and eps as `eval.json`, where one exists."), ""]
    lines += comparison_table(runs)
    if len(runs) > 1:
        plot_overview(runs, plots / "overview.png")
        lines += ["", f"![validation PGD accuracy of every run]({PLOTS}/overview.png)"]
    jumps = co_jump_rows(runs, names)
    if len(jumps) > 2:
        lines += ["", "## The diagnostics at the onset of CO", "",
                  ("For each run whose collapse persists (onset epoch CO): each diagnostic's largest value "
                   f"over epochs CO-{JUMP_NEAR}..CO, its largest over the {JUMP_BEFORE} epochs before "
                   f"(CO-{JUMP_NEAR + JUMP_BEFORE}..CO-{JUMP_NEAR + 1}), and their ratio (the jump of the "
                   "paper's Figs. 1-2 shows as a large ratio)."), ""] + jumps
    sizes = perturbation_size_rows(runs, names, settings)
    if len(sizes) > 2:
        lines += ["", "## Size of the training perturbations", "",
                  (f"`{SIZE_KEY}`: the mean |delta| x 255 of each run's own training perturbations over "
                   f"the epoch's training images (the per-entry l1 norm of the paper's Table 4), at epoch {SIZE_EPOCH} and "
                   "at the last epoch that measured it."), ""] + sizes
    lines += ["", "## Evaluations", ""] + evaluation_rows(runs)
    lines += ["", "## Cost", "",
              ("Hours of compute each run took, as its own files record them: training steps "
               "(`time/epoch_s`, every epoch trained, rolled-back ones too), validation and diagnostics at "
               "epoch ends (`time/epoch_end_s`; '-' for runs that predate it), and the evaluations and "
               "measurements in its results files (`seconds`). Wall-clock hours of the processes that "
               "ran them, on whatever else shared the machine."), ""] + cost_rows(runs, names)
    lines += ["", "## Runs", ""]
    for r, name, setting in zip(runs, names, settings):
        ep = r.epochs
        plot_run(r, plots / f"{name}.png", setting)
        last = ep[-1] if ep else {}
        lines += [f"### {name}", "", (f"`{r.path}` · {setting} · seed {r.config.get('seed', '?')} · "
                  f"{len(ep)} epochs trained · CO: {co_summary(r)} · "
                  f"last val clean / FGSM / PGD: {_pct(last.get('val/clean_acc'))} / "
                  f"{_pct(last.get('val/fgsm_acc'))} / {_pct(last.get('val/pgd_acc'))} %"), ""]
        for e in r.events:
            lines.append(f"- {e.get('event', 'co')} at epoch {e.get('co/epoch', e.get('epoch'))} step "
                         f"{e.get('co/step', e.get('step'))}: {e.get('reason', '')}")
        lines += ["", f"![{name}]({PLOTS}/{name}.png)", ""]
        if gradient_images and RunFolder(r.path).checkpoint("last").is_file():
            try:
                gradient_figure(r.path, plots / f"{name}-gradients.png", gradient_images, data_dir)
                lines += [f"![input gradients of {name}]({PLOTS}/{name}-gradients.png)", ""]
            except ConfigError as e:
                lines += [f"(no gradient figure: {e})", ""]
    report = out / REPORT
    atomic_write(report, ("\n".join(lines) + "\n").encode("utf-8"))  # a crash keeps the old report
    return report


def _unique_names(runs: list[RunRecord]) -> list[str]:
    """A name per run for its plots (NAME.png, NAME-gradients.png) that no other plot has:
    runs of the same folder name get -2, -3, ...; never overview.png or another's file."""
    names, taken = [], {"overview"}
    for r in runs:
        n, k = r.name, 1
        while n in taken or f"{n}-gradients" in taken:
            k += 1
            n = f"{r.name}-{k}"
        taken.update((n, f"{n}-gradients"))
        names.append(n)
    return names
