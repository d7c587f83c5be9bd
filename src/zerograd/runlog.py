"""The run folder, zerograd's unit of output: config.yaml, metrics.jsonl (one flushed JSON
object per line), checkpoints/, eval.json; optionally TensorBoard events mirroring metrics."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from .checkpoint import atomic_write
from .errors import ConfigError


def prepare_run_dir(path: str | Path, *, force: bool = False, resume: bool = False) -> Path:
    """Check that `path` may be written (before any work); create it. A non-empty folder is
    refused unless resuming or forced."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output {str(path)!r} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (force or resume):
        raise ConfigError(
            f"output folder {str(path)!r} is not empty; choose another --out, "
            "resume it with --resume, or pass --force to overwrite"
        )
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output folder {str(path)!r}: {e.strerror}") from None
    try:  # a real write, not os.access: that one is wrong for root, ACLs and read-only mounts
        with tempfile.TemporaryFile(dir=path / "checkpoints"):
            pass
    except OSError as e:
        raise ConfigError(f"output folder {str(path)!r} is not writable: {e.strerror}") from None
    return path


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsLog:
    """Appends one JSON object per line, flushed so a crash loses at most the current line;
    mirrors scalar values to TensorBoard when asked."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "tensorboard=true needs the tensorboard package: pip install 'zerograd[tensorboard]'"
                ) from None
            self._tb = SummaryWriter(str(tensorboard_dir))

    def write(self, record: dict) -> None:
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
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


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete line of a run's metrics.jsonl (a torn last line is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def write_json(path: str | Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())
