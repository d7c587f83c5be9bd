"""`zerograd reproduce NAME`: train every run of a named experiment, then `zerograd report`.

An experiment is a YAML file in `experiments/` (or a path): `base` config keys shared by all
runs, `seeds`, and `runs`, a mapping name -> config keys (a run may set its own `seeds`); and
optionally `predictions`, claims written down before the runs ({claim, row, expect: overfits |
does_not_overfit | reaches | rescued_by_rollback, and bar: ROW for the last two}), which the
report judges, and `autoattack` ({version, attacks, per_row}): AutoAttack of each run that does
not overfit, right after it trains, while its checkpoint is at hand.
Runs land in OUT/<name>-s<seed>; a run whose folder already holds eval.json (or whose small
files KEEP holds, of the same config) is not trained again (a
finished run of another config there, e.g. after the experiment file changed, is refused
before any work rather than reported as this one), and an interrupted run of the same config
is resumed from its last checkpoint, so an interrupted reproduction continues where it stopped. Every config is validated before the
first run starts. With `keep`, each finished run's small files (config, metrics, results; no
checkpoints) are copied to KEEP/<name>-s<seed> as it finishes, so a repository can hold them
and `zerograd report KEEP/* --experiment NAME` rebuilds the table and judges the predictions
without rerunning.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .analysis import EXPECTATIONS, Prediction, persistent_co_epoch, read_run
from .autoattack import resolve_plan
from .config import Config, apply, validate
from .errors import ConfigError
from .evaluate import evaluate_path
from .files import read_yaml
from .models import is_user_model
from .registry import did_you_mean
from .report import autoattack_eval, build_report, final_eval
from .runfolder import RunFolder, differences
from .train import train

EXPERIMENT_DIR = Path(__file__).parent / "experiments"


def experiment_names() -> list[str]:
    return sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml"))


def read_experiment(name: str) -> dict:
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = EXPERIMENT_DIR / f"{name}.yaml"
        if not path.is_file():
            names = experiment_names()
            raise ConfigError(f"unknown experiment {name!r}{did_you_mean(name, names)}; valid: {', '.join(names)}")
    spec = read_yaml(path, f"experiment {str(path)!r}") or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), dict) or not spec["runs"]:
        raise ConfigError(f"experiment {str(path)!r} needs a non-empty 'runs' mapping")
    _predictions(spec, str(path))  # a bad prediction is refused before any run
    _autoattack(spec, str(path))
    return spec


def predictions(name: str) -> list[Prediction]:
    """The experiment's written-down predictions (its `predictions` list), for the report."""
    spec = read_experiment(name)
    return _predictions(spec, name)


BARRED = ("reaches", "rescued_by_rollback")  # the predictions that compare with a bar row


def _predictions(spec: dict, where: str) -> list[Prediction]:
    entries = spec.get("predictions")
    entries = [] if entries is None else entries
    if not isinstance(entries, list):
        raise ConfigError(f"experiment {where!r}: 'predictions' must be a list of {{claim, row, expect}}")
    runs = spec["runs"]
    out = []
    for i, e in enumerate(entries, 1):
        keys = {"claim", "row", "expect", "bar"} if isinstance(e, dict) and e.get("expect") in BARRED \
            else {"claim", "row", "expect"}
        if not isinstance(e, dict) or set(e) != keys or not isinstance(e["claim"], str):
            raise ConfigError(f"experiment {where!r}: prediction {i} must be a mapping of exactly claim (text), "
                              f"row and expect (and bar, the row to reach, with expect: {' or '.join(BARRED)}), got {e!r}")
        if e["expect"] not in EXPECTATIONS:
            raise ConfigError(f"experiment {where!r}: prediction {i} expects {e['expect']!r}; valid: "
                              f"{', '.join(EXPECTATIONS)}")
        for role in ("row", "bar") if "bar" in e else ("row",):
            if not isinstance(e[role], str) or e[role] not in runs:
                raise ConfigError(f"experiment {where!r}: prediction {i} names {role} {e[role]!r}, not a run "
                                  f"of it{did_you_mean(str(e[role]), runs)}; valid: {', '.join(runs)}")
        planned = {role: _planned_runs(spec, e[role], f"experiment {where!r}: prediction {i}")
                   for role in ("row", "bar") if role in e}
        out.append(Prediction(e["claim"], e["row"], e["expect"], planned["row"], e.get("bar"),
                              planned.get("bar", ())))
    return out


@dataclass(frozen=True)
class AutoAttackPlan:
    """The experiment's `autoattack` block: AutoAttack of a run's final model on the images of
    its own final evaluation (test_n), for each run that does not overfit (no collapse that
    lasts to its last epoch), at most `per_row` runs of a row (None: all of them)."""
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    per_row: int | None = None

    def command(self, run: Path, n: int | None) -> str:
        attacks = f" --attacks {' '.join(self.attacks)}" if self.attacks else ""
        images = f" --n {n}" if n is not None else ""
        return f"zerograd eval {run} --attack autoattack --version {self.version}{attacks}{images}"


AUTOATTACK_KEYS = ("version", "attacks", "per_row")


def _autoattack(spec: dict, where: str) -> AutoAttackPlan | None:
    block = spec.get("autoattack")
    if block is None:
        return None
    if not isinstance(block, dict) or not set(block) <= set(AUTOATTACK_KEYS):
        raise ConfigError(f"experiment {where!r}: 'autoattack' must be a mapping of "
                          f"{', '.join(AUTOATTACK_KEYS)} (each optional), got {block!r}")
    per_row = block.get("per_row")
    if per_row is not None and (type(per_row) is not int or per_row < 1):
        raise ConfigError(f"experiment {where!r}: autoattack per_row={per_row!r} is invalid: must be a "
                          "whole number >= 1 (or left out: every run that does not overfit)")
    version, attacks = block.get("version", "standard"), block.get("attacks")
    if not isinstance(version, str) or not (attacks is None or isinstance(attacks, list)):
        raise ConfigError(f"experiment {where!r}: autoattack needs version as text and attacks as a "
                          f"list, got version={version!r}, attacks={attacks!r}")
    try:
        resolve_plan(version, attacks, None)
    except ConfigError as e:
        raise ConfigError(f"experiment {where!r}: autoattack: {e}") from None
    return AutoAttackPlan(version, tuple(attacks) if attacks else None, per_row)


def autoattack_plan(name: str) -> AutoAttackPlan | None:
    """The experiment's `autoattack` block, None if it has none."""
    return _autoattack(read_experiment(name), name)


def _planned_runs(spec: dict, row: str, where: str) -> tuple[str, ...]:
    """The run folders the experiment plans for a row (its own `seeds`, else the experiment's)."""
    keys = spec["runs"][row] if isinstance(spec["runs"][row], dict) else {}
    seeds = keys.get("seeds", spec.get("seeds", [0]))
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds:
        raise ConfigError(f"{where} is about row {row!r}, which plans no seeds: give it seeds")
    return tuple(f"{row}-s{s}" for s in seeds)


def check_planned(name: str, paths: list[str | Path]) -> None:
    """Refuse, in one line, a run folder named as one of the experiment's runs that holds a
    run of another config: judging the experiment's predictions on it would be wrong."""
    planned = dict(plan(name))
    for path in paths:
        run = RunFolder(path)
        cfg = planned.get(run.path.name)
        diff = _other_config(run, cfg) if cfg is not None and run.config_file.is_file() else None
        if diff:
            raise ConfigError(f"{str(run.path)!r} is named as run {run.path.name!r} of {name!r} but holds "
                              f"another config ({diff}): its predictions cannot be judged "
                              "on it; give the experiment's own runs, or leave out --experiment")


def _other_config(run: RunFolder, cfg: Config) -> str | None:
    """How the run's recorded config differs from cfg ('key: a != b; ...', one line), None if
    it does not: a run of another config must never be reported as this one."""
    diff = differences(run.read_config(), cfg)
    return "; ".join(diff)[:300] if diff else None


def plan(name: str, *, seeds: list[int] | None = None, only: list[str] | None = None,
         data_dir: str | None = None) -> list[tuple[str, Config]]:
    """[(folder name, validated Config)] of an experiment, in order."""
    spec = read_experiment(name)
    runs = spec["runs"]
    for r in only or ():
        if r not in runs:
            raise ConfigError(f"--only {r!r} is not a run of {name!r}{did_you_mean(r, runs)}; "
                              f"valid: {', '.join(runs)}")
    base = apply(Config(), spec.get("base") or {}, source=f"experiment {name!r}")
    if data_dir is not None:
        base = apply(base, {"data_dir": str(data_dir)})
    out = []
    for run, keys in runs.items():
        if only and run not in only:
            continue
        keys = dict(keys or {})
        run_seeds = keys.pop("seeds", spec.get("seeds", [0]))
        cfg = apply(base, keys, source=f"experiment {name!r}, run {run!r}")
        chosen = seeds if seeds is not None else run_seeds
        repeated = sorted({s for s in chosen if chosen.count(s) > 1}, key=str)
        if repeated:  # one folder per seed: a repeat would be reported as a second seed
            raise ConfigError(f"seed {repeated[0]!r} is given twice for run {run!r} of {name!r}; "
                              "give each seed once")
        for seed in chosen:
            out.append((f"{run}-s{seed}", validate(apply(cfg, {"seed": seed}))))
    return out


def command_line(cfg: Config, out: Path) -> str:
    """The `zerograd train` command equivalent to cfg (only keys that differ from defaults)."""
    default = Config().to_dict()
    parts = []
    for key, value in cfg.to_dict().items():
        if isinstance(value, dict):
            parts += [f"--set {key}.{k}={_yaml(v)}" for k, v in value.items()
                      if default[key].get(k, object()) != v]
        elif value != default[key]:
            parts.append(f"--set {key}={_yaml(value)}")
    return f"zerograd train {' '.join(parts)} --out {out}"


def _yaml(v) -> str:
    if isinstance(v, dict):  # e.g. guard: {...} given whole
        return "'" + yaml.safe_dump(v, default_flow_style=True).strip() + "'"
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...").removesuffix("...").strip()


def interrupted(run: RunFolder, cfg: Config) -> bool:
    """An unfinished run of this very config (where the data lives and the device aside) that
    got as far as a checkpoint: it can be resumed instead of started again."""
    if run.finished or not (run.config_file.is_file() and run.checkpoint("last").is_file()):
        return False
    try:
        return not differences(run.read_config(), cfg)
    except ConfigError:  # an unreadable config.yaml: start the run afresh
        return False


def reproduce(name: str, out: str | Path | None = None, *, seeds: list[int] | None = None,
              only: list[str] | None = None, dry_run: bool = False, data_dir: str | None = None,
              quiet: bool = False, keep: str | Path | None = None, autoattack: bool = True) -> Path | None:
    """Train the experiment's runs that are not done yet, then write OUT/report.md. With
    `keep`, copy every finished run's small files to KEEP/<run> (those finished earlier too);
    a run KEEP holds of the same config counts as done, even when OUT no longer has it. With
    the experiment's `autoattack` block (and `autoattack`), attack each run that does not
    overfit right after it trains."""
    runs = plan(name, seeds=seeds, only=only, data_dir=data_dir)
    out = Path(out) if out is not None else Path("runs") / Path(name).stem
    keep = Path(keep) if keep is not None else None
    if keep is not None and keep.resolve() == out.resolve():
        raise ConfigError(f"--keep {str(keep)!r} is the --out folder: keep the small files elsewhere")
    for folder, cfg in runs:  # before any work: never report a run of another config as this one
        stale = RunFolder(out / folder)
        diff = _other_config(stale, cfg) if stale.finished else None
        if diff:
            raise ConfigError(f"{str(stale.path)!r} holds a finished run of another config "
                              f"({diff}): delete it, or choose another --out")
    if dry_run:
        _print_commands(name, runs, out, keep)
        return None
    spec = read_experiment(name)
    aa = _autoattack(spec, name) if autoattack else None
    reported = []
    for i, (folder, cfg) in enumerate(runs, 1):
        run = RunFolder(out / folder)
        kept = RunFolder(keep / folder) if keep is not None else None
        # the experiment file is the user's own input to this run: its model spec is theirs
        own = cfg.model if is_user_model(cfg.model) else None
        instead = _kept_instead(out, keep, folder, cfg)
        if instead is not None:  # the report needs its small files only
            if not quiet:
                print(f"[{i}/{len(runs)}] {folder}: finished earlier, kept in {keep}", file=sys.stderr, flush=True)
            reported.append(instead.path)
            if aa is not None:
                _autoattack_target(instead, folder, aa, spec, out, keep)  # names it if it lacks one
            continue
        if not run.finished:
            resume = interrupted(run, cfg)
            if not quiet:
                how = " (resumed from its last checkpoint)" if resume else ""
                print(f"[{i}/{len(runs)}] {folder}{how}", file=sys.stderr, flush=True)
            train(cfg, run.path, quiet=True, force=not resume, resume=resume, model=own)
        reported.append(run.path)
        if kept is not None and run.finished:  # a run the guard stopped has no results to keep
            run.keep_small_files(kept.path)
        target = _autoattack_target(run, folder, aa, spec, out, keep) if aa is not None and run.finished else None
        if target is not None:
            if not quiet:
                print(f"[{i}/{len(runs)}] {folder}: AutoAttack ({aa.version})", file=sys.stderr, flush=True)
            which, n = target
            evaluate_path(run.path, attack="autoattack", version=aa.version,
                          attacks=list(aa.attacks) if aa.attacks else None, n=n, which=which,
                          device=cfg.device, data_dir=cfg.data_dir, quiet=quiet, model=own)
            if kept is not None:
                run.keep_small_files(kept.path)
    return build_report(reported, out, predictions=predictions(name))


def _print_commands(name: str, runs: list[tuple[str, Config]], out: Path, keep: Path | None) -> None:
    """--dry-run: the train commands, the AutoAttack that follows a surviving run, the report."""
    for folder, cfg in runs:
        print(command_line(cfg, out / folder))
    aa = autoattack_plan(name)
    if aa is not None:
        most = {None: "", 1: " (one per row)"}.get(aa.per_row, f" (the first {aa.per_row} of its row)")
        print(f"# after each run that does not overfit{most}: "
              f"{aa.command(out / '<run>', runs[0][1].test_n if runs else None)}")
    judge = f" --experiment {name}" if predictions(name) else ""
    folders = [(_kept_instead(out, keep, f, cfg) or RunFolder(out / f)).path for f, cfg in runs]
    print(f"zerograd report {' '.join(map(str, folders))} --out {out}{judge}")
    if keep is not None:
        print(f"# each finished run's small files are copied to {keep}/<run>")


def _kept_instead(out: Path, keep: Path | None, folder: str, cfg: Config) -> RunFolder | None:
    """KEEP's copy of a run that OUT has not finished but that finished earlier, of this very
    config: it needs no training again (its checkpoints may be long gone). None otherwise."""
    if keep is None or RunFolder(out / folder).finished or not RunFolder(keep / folder).finished:
        return None
    try:
        return None if _other_config(RunFolder(keep / folder), cfg) else RunFolder(keep / folder)
    except ConfigError:  # an unreadable config.yaml: train it again
        return None


def _has_autoattack(path: Path, aa: AutoAttackPlan) -> bool:
    """A finished run folder holding AutoAttack results of its final model, as the plan asks."""
    if not RunFolder(path).finished:
        return False
    return autoattack_eval(read_run(path), aa.version, aa.attacks) is not None


def _autoattack_target(run: RunFolder, folder: str, aa: AutoAttackPlan, spec: dict, out: Path,
                       keep: Path | None) -> tuple[str, int] | None:
    """(checkpoint, images) of the final evaluation if this finished run is to be attacked: it
    does not overfit, has no such result yet (here or in KEEP), its row has fewer than
    `per_row` (in OUT or KEEP) and that checkpoint is at hand (one that is not is named on
    stderr); else None."""
    if _has_autoattack(run.path, aa) or (keep is not None and _has_autoattack(keep / folder, aa)):
        return None
    record = read_run(run.path)
    if persistent_co_epoch(record) is not None:
        return None
    row = folder.rsplit("-s", 1)[0]  # plan names a run folder ROW-s<seed>
    if aa.per_row is not None:
        peers = _planned_runs(spec, row, f"experiment row {row!r}")
        done = sum(_has_autoattack(out / f, aa) or (keep is not None and _has_autoattack(keep / f, aa))
                   for f in peers)
        if done >= aa.per_row:
            return None
    final = final_eval(record)
    which = final.get("checkpoint") if final.get("checkpoint") in ("last", "best") else "last"
    if not run.checkpoint(which).is_file():
        print(f"{folder}: no AutoAttack: its {which} checkpoint is gone", file=sys.stderr, flush=True)
        return None
    return which, final["n"]
