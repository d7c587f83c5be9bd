"""Files that survive a crash: atomic writes (temp file, fsync, rename) with the umask's
permissions, JSON and JSON-lines with one rule for a torn line, bounded YAML (no aliases),
SHA-256 of a file's bytes, and a lock file a dead process cannot leave held."""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import suppress
from pathlib import Path

import yaml

from .errors import ConfigError, StorageError

try:
    import fcntl
except ImportError:  # Windows: no flock, so nothing is locked there (docs/reliability.md)
    fcntl = None

YAML_MAX_BYTES = 1 << 20  # configs and presets are a few hundred bytes


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write bytes so that `path` holds either its old content or the new, never a mix. A
    failed write (full disk, read-only folder) is one line saying the old file is intact."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a plain open() would not
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            kept = "its previous version is intact" if path.exists() else "nothing was written"
            raise StorageError(f"cannot write {str(path)!r}: {e.strerror or e}; {kept}") from None
        raise
    with suppress(OSError):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_temp_file(path: Path) -> bool:
    """A leftover of an interrupted `atomic_write` (.NAME.XXXX.tmp)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def jsonable(value):
    """JSON has no NaN or infinity: NaN becomes null, +-inf the string 'inf' / '-inf'."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def write_json(path: str | Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def json_line(record: dict) -> str:
    """One JSON-lines record (non-finite floats as in `jsonable`), newline included."""
    return json.dumps({k: jsonable(v) for k, v in record.items()}) + "\n"


def read_jsonl(path: str | Path) -> tuple[list[dict], list[str]]:
    """(records, their raw lines) of a JSON-lines file, up to its first line that is not a
    JSON object. Lines are only ever appended, so a crash can tear the last one only: nothing
    after a torn line is trusted. A missing file has no records."""
    path = Path(path)
    records, lines = [], []
    if not path.is_file():
        return records, lines
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(record, dict):
            break
        records.append(record)
        lines.append(line)
    return records, lines


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return file_digest(path, "sha256")


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks (md5 only as a checksum, never for
    security: the datasets' official checksums are md5)."""
    h = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases (`*name`): a config never needs them, and they are
    how a small file becomes a huge or self-referencing object."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed here", self.peek_event().start_mark)
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def load_yaml(text: str):
    """Parse YAML text of at most YAML_MAX_BYTES, without aliases. Raises yaml.YAMLError
    (its first line says what is wrong) for invalid, oversized or too deeply nested text."""
    if len(text) > YAML_MAX_BYTES:
        raise yaml.YAMLError(f"larger than {YAML_MAX_BYTES} bytes")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def read_yaml(path: str | Path, what: str):
    """A YAML file parsed by `load_yaml`; any problem is a ConfigError naming `what`."""
    path = Path(path)
    try:
        if path.stat().st_size > YAML_MAX_BYTES:
            raise yaml.YAMLError(f"larger than {YAML_MAX_BYTES} bytes")
        return load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} is not valid YAML: {str(e).splitlines()[0]}") from None


def dump_yaml(data: dict) -> str:
    """YAML text of plain data, in key order, never with anchors or aliases."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)


class FileLock:
    """An exclusive lock of this process on `path`, from `acquire` to `release`. It is a
    flock, which the kernel drops when the process dies however it dies, so the lock file of
    a killed run is simply taken over by the next process; the file's content (who holds it)
    is only for the message of the process refused. Without fcntl (Windows) it locks nothing."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, holder: dict) -> dict | None:
        """None once this process holds the lock (`holder` written into the file); else the
        holding process's record as read from the file ({} if it has not written it yet).
        OSError when the file cannot be created."""
        if fcntl is None or self.fd is not None:
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = _read_lock_record(fd)
                os.close(fd)
                return held
            try:  # its previous holder may have removed the file between our open and flock
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self.fd = fd
        return None

    def release(self) -> None:
        """Remove the file, then drop the lock (in that order: a process that opened the file
        meanwhile finds it gone after its flock and locks a new one)."""
        if self.fd is None:
            return
        with suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None


def _read_lock_record(fd: int) -> dict:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
