"""`zerograd reproduce NAME`: train every run of a named experiment, then `zerograd report`.

An experiment is a YAML file in `experiments/` (or a path): `base` config keys shared by all
runs, `seeds`, and `runs`, a mapping name -> config keys (a run may set its own `seeds`); and
optionally `predictions`, claims written down before the runs ({claim, row, expect: overfits |
does_not_overfit | reaches | rescued_by_rollback, and bar: ROW for the last two}), which the
report judges.
Runs land in OUT/<name>-s<seed>; a run whose folder already holds eval.json is kept (a
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
from pathlib import Path

import yaml

from .analysis import EXPECTATIONS, Prediction
from .config import Config, apply, validate
from .errors import ConfigError
from .files import read_yaml
from .models import is_user_model
from .registry import did_you_mean
from .report import build_report
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
              quiet: bool = False, keep: str | Path | None = None) -> Path | None:
    """Train the experiment's runs that are not done yet, then write OUT/report.md. With
    `keep`, copy every finished run's small files to KEEP/<run> (those finished earlier too)."""
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
        for folder, cfg in runs:
            print(command_line(cfg, out / folder))
        judge = f" --experiment {name}" if predictions(name) else ""
        print(f"zerograd report {' '.join(str(out / f) for f, _ in runs)} --out {out}{judge}")
        if keep is not None:
            print(f"# each finished run's small files are copied to {keep}/<run>")
        return None
    for i, (folder, cfg) in enumerate(runs, 1):
        run = RunFolder(out / folder)
        if not run.finished:
            resume = interrupted(run, cfg)
            if not quiet:
                how = " (resumed from its last checkpoint)" if resume else ""
                print(f"[{i}/{len(runs)}] {folder}{how}", file=sys.stderr, flush=True)
            # the experiment file is the user's own input to this run: its model spec is theirs
            own = cfg.model if is_user_model(cfg.model) else None
            train(cfg, run.path, quiet=True, force=not resume, resume=resume, model=own)
        if keep is not None and run.finished:  # a run the guard stopped has no results to keep
            run.keep_small_files(keep / folder)
    return build_report([out / f for f, _ in runs], out, predictions=predictions(name))
