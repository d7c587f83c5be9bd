"""The run folder, zerograd's unit of output, and the only module that knows its file names:

    RUN/config.yaml          the resolved config, with versions and device
    RUN/metrics.jsonl        one flushed JSON object per line (epochs, diagnostics, events)
    RUN/checkpoints/         last.pt, best.pt, epoch-N.pt
    RUN/eval.json            the end-of-training test evaluation (its presence: the run is done)
    RUN/evals/               one results file per `zerograd eval`
    RUN/export/              `zerograd export`
    W.<dataset>.<attack>-nN.json   `zerograd eval --weights W.safetensors` (no run folder)
    RUN/tensorboard/         TensorBoard events mirroring metrics.jsonl (optional)
    RUN/.lock                while a process writes the run: who (see `RunFolder.lock`)
    REPORT/report.md, REPORT/plots/   `zerograd report`

A run's small files (config.yaml, metrics.jsonl, eval.json, evals/*.json) are all `zerograd
report` needs for its tables and curves; `RunFolder.keep_small_files` copies them to a folder
a repository can hold (`zerograd reproduce --keep`).
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import yaml

from .checkpoint import load_checkpoint, load_weights
from .config import (
    FIELDS,
    Config,
    apply,
    from_yaml_dict,
    load_config,
    model_for,
    parse_override,
    to_yaml,
    validate,
)
from .errors import ConfigError
from .files import (
    FileLock,
    atomic_write,
    is_temp_file,
    json_line,
    load_yaml,
    read_jsonl,
    sha256_file,
    write_json,
)
from .models import is_user_model, needs_user_model, user_model

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
RESULT = "eval.json"
CHECKPOINTS = "checkpoints"
EVALS = "evals"
EXPORT = "export"
TENSORBOARD = "tensorboard"
REPORT = "report.md"
PLOTS = "plots"
LOCK = ".lock"
# Keys a resumed run may change: where the data lives and which device runs it.
MAY_DIFFER = ("data_dir", "device", "stream", "data_budget", "loader_workers")  # results are equal either way
# Keys `--resume RUN --set key=value` may change deliberately (recorded in config.yaml and as a
# 'config_change' event): the method's arguments (as a rollback does), CO detection and
# diagnostics, the NaN policy, the final evaluation and how often a resume point is written.
# Not the data, model, schedule, batch or
# seed: those would make the rest of the run a different experiment.
RESUME_CHANGEABLE = ("method_args", "guard", "diagnostics", "nan_policy", "nan_lr_factor",
                     "nan_max_rollbacks", "final_checkpoint", "test_n", "test_pgd_steps",
                     "test_restarts", "test_alpha", "tensorboard", "checkpoint_every_steps",
                     "checkpoint_every_minutes")


class RunFolder:
    """Paths and reads/writes of one run folder (which need not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: FileLock | None = None
        self._created: list[Path] = []  # folders `lock` made, removed by `unlock` if still empty

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ paths

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS

    @property
    def result_file(self) -> Path:
        return self.path / RESULT

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def evals(self) -> Path:
        return self.path / EVALS

    @property
    def export(self) -> Path:
        return self.path / EXPORT

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    def checkpoint(self, which: str | int) -> Path:
        """checkpoints/last.pt, best.pt, or epoch-N.pt for an integer N."""
        return self.checkpoints / (f"epoch-{which}.pt" if isinstance(which, int) else f"{which}.pt")

    def exists(self) -> bool:
        """A zerograd run folder: it has a config.yaml or a metrics.jsonl."""
        return self.path.is_dir() and (self.config_file.is_file() or self.metrics_file.is_file())

    @property
    def finished(self) -> bool:
        return self.result_file.is_file()

    # ------------------------------------------------------------------ writing

    def lock(self) -> None:
        """Take the folder (made if need be) for this process until `unlock`, before any work:
        a folder another living process writes is one ConfigError naming it; the lock of a
        process that died is taken over (FileLock). Only the process that writes the folder
        takes it (rank 0 of a torchrun); readers (`zerograd eval`, `report`) never do."""
        path = self.path
        self._require_folder()
        self._created = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output folder {str(path)!r}: {e.strerror}") from None
        lock = FileLock(path / LOCK)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
        try:
            holder = lock.acquire(me)
        except OSError as e:
            self._remove_created()
            raise ConfigError(f"output folder {str(path)!r} is not writable: {e.strerror}") from None
        if holder is not None:
            self._remove_created()
            who = (f"process {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})"
                   if holder else "another process")
            raise ConfigError(f"run folder {str(path)!r} is in use by {who}; wait for it to end or stop it")
        self._lock = lock

    def unlock(self) -> None:
        """Release `lock` (no-op if not held); folders it made that stayed empty are removed."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            self._remove_created()

    def _remove_created(self) -> None:
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def _require_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"output {str(self.path)!r} exists and is not a folder")

    def prepare(self, *, force: bool = False, resume: bool = False) -> None:
        """Check that the folder may be written (before any work) and create it. A non-empty
        folder is refused unless resuming or forced."""
        path = self.path
        self._require_folder()
        if path.is_dir() and any(p.name != LOCK for p in path.iterdir()) and not (force or resume):
            raise ConfigError(f"output folder {str(path)!r} is not empty; choose another --out, "
                              "resume it with --resume, or pass --force to overwrite")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output folder {str(path)!r}: {e.strerror}") from None
        try:  # a real write, not os.access: that one is wrong for root, ACLs and read-only mounts
            with tempfile.TemporaryFile(dir=self.checkpoints):
                pass
        except OSError as e:
            raise ConfigError(f"output folder {str(path)!r} is not writable: {e.strerror}") from None

    def start(self, cfg: Config, facts: dict) -> None:
        """A fresh (or forced) run: no result, an empty metrics log, the resolved config."""
        self.result_file.unlink(missing_ok=True)
        self.keep_metrics(0)
        atomic_write(self.config_file, to_yaml(cfg, facts).encode())

    def rewrite_config(self, cfg: Config) -> None:
        """config.yaml after a deliberate change on resume: the new values, the recorded facts kept."""
        facts = {k: v for k, v in self.read_config_dict().items() if k not in FIELDS}
        atomic_write(self.config_file, to_yaml(cfg, facts).encode())

    def remove_temp_files(self) -> None:
        """Delete the temp files of atomic writes that a kill interrupted."""
        for folder in (self.path, self.checkpoints):
            for path in folder.glob(".*.tmp"):
                if is_temp_file(path):
                    path.unlink(missing_ok=True)

    def write_result(self, result: dict) -> None:
        write_json(self.result_file, result)

    def open_metrics(self, tensorboard: bool = False) -> MetricsLog:
        return MetricsLog(self.metrics_file, self.tensorboard if tensorboard else None)

    # ------------------------------------------------------------------ reading

    def read_metrics(self) -> list[dict]:
        """Every record of metrics.jsonl before its first torn line (see files.read_jsonl),
        each checked (`check_record`): a complete line with wrong values is a ConfigError."""
        records = read_jsonl(self.metrics_file)[0]
        for number, record in enumerate(records, 1):
            check_record(record, f"{str(self.metrics_file)!r} line {number}")
        return records

    def keep_metrics(self, records: int) -> list[dict]:
        """Keep the first `records` complete lines of metrics.jsonl (those a checkpoint
        covers), atomically; returns them parsed."""
        kept, lines = read_jsonl(self.metrics_file)
        kept, lines = kept[:records], lines[:records]
        if self.metrics_file.is_file() or records:
            atomic_write(self.metrics_file, "".join(line + "\n" for line in lines).encode())
        return kept

    def read_config_dict(self) -> dict:
        """config.yaml as a mapping (YAML safe_load), or a ConfigError naming the file."""
        path = self.config_file
        if not path.is_file():
            raise ConfigError(f"{str(self.path)!r} is not a zerograd run folder (no {CONFIG})")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{str(path)!r} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{str(path)!r} is not a zerograd config (expected a mapping of keys)")
        return data

    def read_config(self) -> Config:
        """The Config recorded in config.yaml, checked like any other config."""
        data = self.read_config_dict()
        return validate(apply(Config(), {k: v for k, v in data.items() if k in FIELDS}, source=CONFIG))

    def small_files(self) -> list[Path]:
        """config.yaml, metrics.jsonl, eval.json and evals/*.json that exist: what `zerograd
        report` reads, without checkpoints, exports or TensorBoard events."""
        return [f for f in [self.config_file, self.metrics_file, *self.result_files()] if f.is_file()]

    def keep_small_files(self, dest: str | Path) -> RunFolder:
        """Copy this finished run's small files into the run folder `dest` (created), each
        atomically; evals/*.json that this run no longer has are removed from `dest`, so `dest`
        mirrors it. `dest`'s eval.json goes first and comes back last: a copy cut short over
        an earlier kept run leaves an unfinished run, never the old results beside the new
        config and metrics. Returns RunFolder(dest)."""
        if not self.finished:
            raise ConfigError(f"{str(self.path)!r} is not a finished run (no {RESULT}); nothing kept")
        kept = RunFolder(dest)
        if kept.path.resolve() == self.path.resolve():
            raise ConfigError(f"cannot keep {str(self.path)!r} into itself")
        try:
            kept.evals.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create {str(kept.path)!r}: {e.strerror}") from None
        files = self.small_files()
        kept.result_file.unlink(missing_ok=True)
        for f in sorted(files, key=lambda f: f == self.result_file):  # eval.json last
            atomic_write(kept.path / f.relative_to(self.path), f.read_bytes())
        names = {f.name for f in files if f.parent == self.evals}
        for stale in kept.evals.glob("*.json"):
            if stale.name not in names:
                stale.unlink()
        return kept

    def result_files(self) -> list[Path]:
        """eval.json and every evals/*.json that exist."""
        return [f for f in [self.result_file, *sorted(self.evals.glob("*.json"))] if f.is_file()]


INTEGER_KEYS = ("epoch", "step", "to_epoch", "to_step")
TEXT_KEYS = ("event", "reason")
MEASURED = ("train/", "val/", "time/", "diag/")  # numbers; co/ holds text as well


def check_record(record: dict, where: str) -> None:
    """A metrics record as zerograd writes it: epoch/step integers, event/reason text, and
    every measured value (train/, val/, time/, diag/, lr) a number, null or 'inf'/'-inf'."""
    def bad(key, expected):
        raise ConfigError(f"{where} is not a zerograd metrics record ({key}={record[key]!r}: "
                          f"expected {expected}); restore or delete that line")

    for key, value in record.items():
        if key in INTEGER_KEYS and (isinstance(value, bool) or not isinstance(value, int)):
            bad(key, "an integer")
        elif key in TEXT_KEYS and not isinstance(value, str):
            bad(key, "text")
        elif (key.startswith(MEASURED) or key in ("lr", "lr_scale")) and not (
                value is None or value in ("inf", "-inf")
                or (isinstance(value, (int, float)) and not isinstance(value, bool))):
            bad(key, "a number")


def require_tensorboard() -> None:
    """tensorboard=true needs the tensorboard package; checked before anything is written."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            "tensorboard=true needs the tensorboard package: pip install 'zerograd[tensorboard]'"
        ) from None


class MetricsLog:
    """Appends one JSON object per line, flushed so a crash loses at most the current line;
    mirrors scalar values to TensorBoard when asked."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self._tb = None
        if tensorboard_dir is not None:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict) -> None:
        self._file.write(json_line(record))
        self._file.flush()
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and "/" in key:
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


# --------------------------------------------------------------------------- checkpoints


def run_folder_of(ckpt_path: str | Path) -> RunFolder | None:
    """The run folder holding a checkpoint (RUN/checkpoints/X.pt with RUN/config.yaml), else None."""
    ckpt_path = Path(ckpt_path)
    run = RunFolder(ckpt_path.parent.parent)
    if ckpt_path.parent.name == CHECKPOINTS and run.config_file.is_file():
        return run
    return None


def resolve_checkpoint(path: str | Path, which: str | None = None) -> Path:
    """A run folder (its checkpoint `which`, last by default) or a checkpoint file (then no
    `which`: a file is the checkpoint it is, and choosing another one would be ignored) ->
    the checkpoint file to load."""
    path = Path(path)
    if path.is_dir():
        which = which or "last"
        ckpt = RunFolder(path).checkpoint(which)
        if not ckpt.is_file():
            raise ConfigError(f"{str(path)!r} has no {CHECKPOINTS}/{which}.pt: is it a zerograd run folder?")
        return ckpt
    if not path.exists():
        raise ConfigError(f"{str(path)!r} does not exist: give a run folder or a checkpoint file")
    if which is not None:
        raise ConfigError(f"--checkpoint {which} chooses a run folder's checkpoint, but {str(path)!r} is a "
                          "checkpoint file: give the run folder, or the file without --checkpoint")
    return path


def load_checkpoint_model(path, which: str | None = None, *, device="cpu", data_dir=None, model=None):
    """(model, config, checkpoint path, checkpoint dict) from a run folder or checkpoint,
    loaded as data only. A checkpoint of a user model needs `model`: the same spec (imported
    only then) or a module of the recorded class; none is imported by itself."""
    ckpt_path = resolve_checkpoint(path, which)
    state = load_checkpoint(ckpt_path, map_location=device)
    if not isinstance(state.get("model"), dict) or not isinstance(state.get("config"), dict):
        raise ConfigError(f"checkpoint {str(ckpt_path)!r} is not a zerograd checkpoint (no model/config)")
    cfg = from_yaml_dict(state["config"])
    if data_dir is not None:
        cfg.data_dir = str(data_dir)
    user = None
    if is_user_model(cfg.model):
        if model is None:
            raise ConfigError(needs_user_model(cfg.model, f"checkpoint {str(ckpt_path)!r}"))
        user = user_model(model, recorded=cfg.model)
    elif model is not None:
        raise ConfigError(f"checkpoint {str(ckpt_path)!r} holds the built-in model {cfg.model!r}: "
                          "load it without --model")
    model = model_for(cfg, user).to(device)
    load_weights(model, state["model"], ckpt_path)
    return model, cfg, ckpt_path, state


def load_model(path, which: str | None = None, *, device="cpu", data_dir=None, model=None):
    """(model, config, checkpoint path) from a run folder or checkpoint, loaded as data only."""
    return load_checkpoint_model(path, which, device=device, data_dir=data_dir, model=model)[:3]


def checkpoint_facts(ckpt_path: str | Path, state: dict, cfg: Config) -> dict:
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


def results_path(ckpt_path: str | Path, label: str, n: int, eps_tag: str = "") -> Path:
    """RUN/evals/<label>-<checkpoint>-n<N>.json for a checkpoint in a run folder, else
    <checkpoint stem>.<label>-n<N>.json beside the checkpoint file."""
    ckpt_path = Path(ckpt_path)
    run = run_folder_of(ckpt_path)
    if run is not None:
        return run.evals / f"{label}{eps_tag}-{ckpt_path.stem}-n{n}.json"
    return ckpt_path.with_name(f"{ckpt_path.stem}.{label}{eps_tag}-n{n}.json")


def external_results_path(weights: str | Path, dataset: str, label: str, n: int, tag: str = "") -> Path:
    """<weights stem>.<dataset>.<label><tag>-n<N>.json beside a weights file zerograd did not
    write (`zerograd eval --weights`): never inside a run folder's evals/, whose files are the
    run's own results."""
    weights = Path(weights)
    kind, sep, path = dataset.partition(":")
    if sep:  # your own data: its folder or file name, not the whole (recorded absolute) path
        dataset = f"{kind}-{Path(path).stem or 'data'}"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dataset)
    return weights.with_name(f"{weights.stem}.{safe}.{label}{tag}-n{n}.json")


def export_folder(ckpt_path: str | Path) -> Path:
    """RUN/export for a checkpoint in a run folder, else <checkpoint stem>-export beside it."""
    ckpt_path = Path(ckpt_path)
    run = run_folder_of(ckpt_path)
    return run.export if run is not None else ckpt_path.with_name(f"{ckpt_path.stem}-export")


def check_output(path: Path, what: str) -> None:
    """Before any work: `path` can be written, and is not one of a run folder's own files
    (its config, metrics or final result), which an evaluation or a measurement written
    there would replace."""
    if path.name in (CONFIG, METRICS, RESULT) and (path.parent / CONFIG).is_file():
        raise ConfigError(f"{what} {str(path)!r} is the run's own {path.name}, written by training: "
                          f"choose another --out (the default goes to {EVALS}/ in the run folder)")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is not a "
                          "writable folder")


# --------------------------------------------------------------------------- resuming


def differences(a: Config, b: Config, ignore=MAY_DIFFER) -> list[str]:
    """'key: a != b' for every config key (outside `ignore`) on which a and b disagree."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} != {db[k]!r}" for k in da if k not in ignore and da[k] != db[k]]


def resume_config(run_dir: str | Path, preset: str | None = None, overrides=(),
                  data_dir: str | None = None) -> tuple[Config, tuple[str, ...]]:
    """(the config to resume `run_dir` with, the keys deliberately changed). A preset must
    reproduce the recorded config; `--set` overrides may change the RESUME_CHANGEABLE keys
    and nothing else; data_dir may point elsewhere."""
    run = RunFolder(run_dir)
    if not run.path.is_dir():
        raise ConfigError(f"--resume {str(run_dir)!r}: no such run folder")
    if not run.config_file.is_file():
        raise ConfigError(f"--resume {str(run_dir)!r} is not a zerograd run folder (no {CONFIG})")
    cfg = run.read_config()
    if preset:
        diff = differences(cfg, load_config(preset))
        if diff:
            raise ConfigError(f"--resume {str(run_dir)!r}: preset {preset!r} differs from the run's "
                              f"{CONFIG} ({'; '.join(diff)[:300]}); resume without --preset")
    given = cfg
    for text in overrides:
        given = validate(apply(given, parse_override(text), source="--set"))
    fixed = [d for d in differences(cfg, given, MAY_DIFFER + RESUME_CHANGEABLE)]
    if fixed:
        raise ConfigError(f"--resume {str(run_dir)!r}: --set cannot change {'; '.join(fixed)[:300]} "
                          "of a half-finished run (only method_args, guard, diagnostics, nan_*, "
                          "final_checkpoint, test_*, tensorboard, checkpoint_every_*)")
    changed = tuple(k for k in RESUME_CHANGEABLE if getattr(cfg, k) != getattr(given, k))
    if data_dir:
        given = apply(given, {"data_dir": str(data_dir)})
    return given, changed
