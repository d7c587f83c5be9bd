"""`zerograd report`: report.md and PNG plots rebuilt from run folders only (config.yaml,
metrics.jsonl, eval.json, evals/*.json, checkpoints/).

Per run: validation clean / FGSM / PGD accuracy per epoch with catastrophic-overfitting (CO)
events and rollbacks marked, and the diagnostics (weight-update size, perturbation change,
sign disagreement, gradient alignment) next to PGD accuracy, in the shape of the paper's
Figs. 1-2. Over runs: a table grouped by setting with mean +- std over seeds (the paper's
Table 1), every evaluation file, and the input-gradient figure of Fig. 3. The tables are
written here; the figures are drawn by plots.py, and runs are read by analysis.py.
"""
from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from .analysis import (
    Prediction,
    RunRecord,
    co_epoch,
    co_summary,
    differ,
    distinct_labels,
    eps_text,
    finite_number,
    fmt,
    persistent_co_epoch,
    reaches,
    read_run,
    rescued,
    setting_key,
    verdict,
)
from .errors import ConfigError
from .files import atomic_write
from .plots import gradient_figure, plot_overview, plot_run
from .results import attack_title
from .runfolder import PLOTS, REPORT, RESULT, RunFolder


def mean_std(values: list[float]) -> str:
    """'mean +- std' in percent ('n/a' without values; no std for one value)."""
    vals = [v for v in values if finite_number(v) is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{100 * vals[0]:.2f}"
    return f"{100 * statistics.mean(vals):.2f} ± {100 * statistics.stdev(vals):.2f}"


def final_eval(run: RunRecord) -> dict | None:
    return next((e for name, e in run.evals if name == RESULT), None)


def autoattack_eval(run: RunRecord, version: str = "standard",
                    attacks: tuple[str, ...] | None = None) -> dict | None:
    """The run's AutoAttack result (standard, unless `version`; a custom one with exactly
    `attacks`) of the checkpoint, images and eps its eval.json used (the newest, if several),
    so the column compares the same model on the same points under the same budget."""
    final = final_eval(run) or {}
    same = [e for _, e in run.evals if (e.get("attack") or {}).get("name") == "autoattack"
            and (e["attack"].get("version") or "standard") == version
            and (version != "custom" or tuple(e["attack"].get("attacks") or ()) == tuple(attacks or ()))
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
    lines = [("| setting | runs | seeds | CO (runs) | CO epochs | CO at end | rollbacks | clean % | robust % | attack "
              "| AutoAttack % | s/epoch |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for members in groups.values():
        evals = [final_eval(r) for r in members]
        attacks = {_attack_name(e) for e in evals if e}
        cos = [co_epoch(r) for r in members]
        times = [x["time/epoch_s"] for r in members for x in r.epochs if finite_number(x.get("time/epoch_s")) is not None]
        rollbacks = sum(1 for r in members for e in r.events if e.get("event") == "rollback")
        seconds = f"{statistics.mean(times):.1f}" if times else "-"
        lines.append(
            f"| {labels[setting_key(members[0].config)]} | {run_names([r.name for r in members])} | {len(members)} | "
            f"{sum(c is not None for c in cos)}/{len(members)} | "
            f"{', '.join(str(c) for c in cos if c is not None) or '-'} | "
            f"{_at_end_cell([persistent_co_epoch(r) for r in members])} | {rollbacks} | "
            f"{_of_runs([e['clean_acc'] for e in evals if e], len(members))} | "
            f"{_of_runs([e['robust_acc'] for e in evals if e], len(members))} | {'; '.join(sorted(attacks)) or '-'} | "
            f"{_autoattack_cell(members)} | {seconds} |")
    return lines


def prediction_rows(runs: list[RunRecord], predictions: list[Prediction]) -> list[str]:
    """Markdown rows: per prediction, its row's finished seeds (those with eval.json), the
    evidence (the runs whose collapse persists, or the final robust accuracies against the
    bar's) and the verdict by the rule (pending while the seeds to come could still change it)."""
    def finished(names: tuple[str, ...]) -> list[RunRecord]:
        return [r for r in runs if r.name in names and final_eval(r)]

    def robust(members: list[RunRecord]) -> list[float]:
        return [v for r in members if (v := finite_number(final_eval(r).get("robust_acc"))) is not None]

    lines = ["| prediction | row | seeds finished | evidence | verdict |", "|---|---|---|---|---|"]
    for p in predictions:
        members = finished(p.runs)
        if p.expect in ("reaches", "rescued_by_rollback"):
            bar = finished(p.bar_runs)
            values, bar_values = robust(members), robust(bar)
            against = f"against `{p.bar}`'s {mean_std(bar_values)} % ({len(bar)} of {p.bar_seeds} seeds)"
            if p.expect == "reaches":
                evidence, judged = f"robust {mean_std(values)} % {against}", reaches(p, values, bar_values)
            else:
                seeds = [(any(e.get("co/detected") for e in r.events), bool(final_eval(r).get("stopped")),
                          finite_number(final_eval(r).get("robust_acc"))) for r in members]
                overfit = [v for detected, _, v in seeds if detected]
                evidence = (f"CO detected {len(overfit)}/{len(seeds)}"
                            + (f", their robust {mean_std([v for v in overfit if v is not None])} % {against}"
                               if overfit else ""))
                judged = rescued(p, seeds, bar_values)
        else:
            onsets = [persistent_co_epoch(r) for r in members]
            evidence, judged = f"CO at end {_at_end_cell(onsets)}", verdict(p, onsets)
        lines.append(f"| {p.claim} | `{p.row}` | {len(members)} of {p.seeds} | {evidence} | {judged} |")
    return lines


def run_names(names: list[str]) -> str:
    """The run folders of a setting, short: 'fgsm_rs-a2-s{0,1,2}' for seeds of one name (as
    `zerograd reproduce` names them), else the names joined."""
    parts = [re.fullmatch(r"(.+)-s(\d+)", n) for n in names]
    if len(names) > 1 and all(parts) and len({m[1] for m in parts}) == 1:
        return f"{parts[0][1]}-s{{{','.join(m[2] for m in parts)}}}"
    return ", ".join(names)


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
    """mean +- std of standard AutoAttack over the runs that have it; when only some do, the
    seeds it is of ('31.80 (seed 0)'), since it is often run on one seed of a setting."""
    found = [(r, e) for r in members if (e := autoattack_eval(r)) is not None]
    if not found:
        return "-"
    cell = mean_std([e["robust_acc"] for _, e in found])
    if len(found) == len(members):
        return cell
    seeds = [str(r.config.get("seed", "?")) for r, _ in found]
    return f"{cell} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"


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
                  and (v := finite_number(r.get(key))) is not None]
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
        values = {e["epoch"]: v for e in r.epochs if (v := finite_number(e.get(SIZE_KEY))) is not None}
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
            lines.append(f"| {r.name} | {name} | {_checkpoint_cell(e)} | {_attack_cell(e['attack'])} | "
                         f"{e.get('n', '-')} | {_pct(e.get('clean_acc'))} | {_pct(e.get('robust_acc'))} |")
    return lines


def _checkpoint_cell(e: dict) -> str:
    """'last, epoch 40': the kind of checkpoint and its epoch, the same words for eval.json and
    for a `zerograd eval` results file (which records the checkpoint's path)."""
    kind = str(_checkpoint_kind(e) or "-")
    kind = Path(kind).name if "/" in kind or kind.endswith(".pt") else kind
    epoch = e.get("checkpoint_epoch")
    return kind + (f", epoch {epoch}" if isinstance(epoch, int) and not kind.startswith("epoch-") else "")


def _attack_cell(attack: dict) -> str:
    """'PGD-50-10, eps 8/255, step 0.25 eps': the attack as people name it, with its budget."""
    parts = [attack_title(attack)]
    if attack.get("eps") is not None:
        parts.append(f"eps {eps_text(attack['eps'])}")
    if attack.get("alpha") is not None:
        parts.append(f"step {fmt(attack['alpha'])} eps")
    if attack.get("attacks"):
        parts.append(" + ".join(attack["attacks"]))
    return ", ".join(parts)


def cost_rows(runs: list[RunRecord], names: list[str]) -> list[str]:
    """Markdown rows: the hours each run took, from its own files, and their sum: training steps
    (`time/epoch_s` of every epoch trained, rolled-back ones too), validation and diagnostics at
    epoch ends (`time/epoch_end_s`, '-' if the run predates it), and its results files' `seconds`."""
    lines = ["| run | training h | epoch ends h | evaluations h | total h |", "|---|---|---|---|---|"]
    sums = [0.0, 0.0, 0.0]
    recorded = unrecorded = False
    for r, name in zip(runs, names):
        train = sum(v for e in r.epochs if (v := finite_number(e.get("time/epoch_s"))) is not None)
        ends = [v for e in r.epochs if (v := finite_number(e.get("time/epoch_end_s"))) is not None]
        recorded, unrecorded = recorded or bool(ends), unrecorded or len(ends) < len(r.epochs)
        spent = [train, sum(ends), sum(r.seconds.values())]
        sums = [a + b for a, b in zip(sums, spent)]
        lines.append(f"| {name} | {spent[0] / 3600:.2f} | {f'{spent[1] / 3600:.2f}' if ends else '-'} | "
                     f"{spent[2] / 3600:.2f} | {sum(spent) / 3600:.2f} |")
    ends = "-" if not recorded else f"{sums[1] / 3600:.2f}{' (not all recorded)' if unrecorded else ''}"
    lines.append(f"| all | {sums[0] / 3600:.2f} | {ends} | "
                 f"{sums[2] / 3600:.2f} | {sum(sums) / 3600:.2f} |")
    return lines


CURVE_COLUMNS = 9  # epochs in the curve table when none are chosen


def curve_epochs(runs: list[RunRecord], chosen: list[int] | None = None) -> list[int]:
    """The epochs of the curve table: the chosen ones, else CURVE_COLUMNS spread evenly over
    the longest run, its last epoch included."""
    if chosen:
        return sorted(set(chosen))
    last = max((int(e["epoch"]) for r in runs for e in r.epochs if isinstance(e.get("epoch"), int)), default=0)
    if last <= CURVE_COLUMNS:
        return list(range(1, last + 1))
    return sorted({round(1 + i * (last - 1) / (CURVE_COLUMNS - 1)) for i in range(CURVE_COLUMNS)})


def curve_rows(runs: list[RunRecord], names: list[str], epochs: list[int]) -> list[str]:
    """Markdown rows: each run's validation PGD accuracy (FGSM accuracy in brackets) at the given
    epochs; of an epoch trained again after a rollback, the value it kept (its last record).
    Where the runs' eps differ, each name says the eps its accuracies are at."""
    eps_differ = differ(r.config.get("eps") for r in runs)
    lines = ["| run | " + " | ".join(str(e) for e in epochs) + " |", "|---" * (len(epochs) + 1) + "|"]
    for r, name in zip(runs, names):
        kept: dict = {}
        for e in r.records:  # a rollback abandons the epochs after the one it goes back to
            if e.get("event") == "rollback" and isinstance(e.get("to_epoch"), int):
                kept = {k: v for k, v in kept.items() if isinstance(k, int) and k <= e["to_epoch"]}
            elif "train/loss" in e:
                kept[e.get("epoch")] = e
        cells = []
        for epoch in epochs:
            e = kept.get(epoch, {})
            pgd, fgsm = finite_number(e.get("val/pgd_acc")), finite_number(e.get("val/fgsm_acc"))
            cells.append("-" if pgd is None else f"{100 * pgd:.1f}" + ("" if fgsm is None else f" ({100 * fgsm:.1f})"))
        label = f"{name} (at {eps_text(r.config.get('eps'))})" if eps_differ else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _pct(v) -> str:
    return f"{100 * v:.2f}" if finite_number(v) is not None else "n/a"


def build_report(paths: list[str | Path], out: str | Path | None = None, *,
                 gradient_images: int = 4, data_dir=None, epochs: list[int] | None = None,
                 predictions: list[Prediction] | None = None) -> Path:
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
    bad = [e for e in epochs or [] if isinstance(e, bool) or not isinstance(e, int) or e < 1]
    if bad:
        raise ConfigError(f"--epochs {bad[0]!r} is invalid: epochs are whole numbers >= 1")
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
             "same checkpoint, images and eps as `eval.json`, where one exists ('(seed 0)': of those "
             "seeds only)."), ""]
    lines += comparison_table(runs)
    if len(runs) > 1:
        plot_overview(runs, plots / "overview.png")
        lines += ["", f"![validation PGD accuracy of every run]({PLOTS}/overview.png)"]
    if predictions:
        lines += ["", "## Predictions", "",
                  ("The experiment's predictions, judged from the runs given here: \"overfits\" needs a "
                   "collapse that persists (CO at end) in a majority of the planned seeds, \"does not overfit\" "
                   "in none; a row reaches another's accuracy if its mean final robust accuracy is at least the "
                   "other's minus the larger standard deviation, judged once both have all their seeds (held "
                   "sooner, once the bar has them, if it would hold even with the seeds to come at 0 %); rescued by "
                   "rolling back: the guard detected CO in most seeds, and each of those ended, not stopped, at the "
                   "bar's accuracy (could not be tested if too few seeds overfit). Pending "
                   "while the seeds still to come could change it. Only runs with an `eval.json` count."), ""]
        lines += prediction_rows(runs, predictions)
    columns = curve_epochs(runs, epochs)
    if columns:
        lines += ["", "## Validation accuracy by epoch", "",
                  ("Each run's validation PGD accuracy in %, FGSM accuracy in brackets, at these epochs "
                   "(`--epochs`); of an epoch trained again after a rollback, the value it kept."), ""]
        lines += curve_rows(runs, names, columns)
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
