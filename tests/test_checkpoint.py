"""Checkpoint files under fault injection: a malicious pickle runs no code (the same file does
run code under a plain torch.load, so the payload is real); truncated and random files, and
weights of another architecture or number of classes, are one-line errors; a write that dies
midway (full disk, failed rename, an exception mid-write, SIGKILL before the rename) leaves
the previous checkpoint loadable; a read-only output folder is refused before any work."""
import builtins
import errno
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zerograd.checkpoint import load_checkpoint, load_weights, save_checkpoint
from zerograd.cli import main
from zerograd.errors import ConfigError, StorageError
from zerograd.models import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


class Payload:
    """Unpickling this runs `exec(code)`: it writes a marker file."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('pwned')"

    def __reduce__(self):
        return (builtins.exec, (self.code,))


def test_malicious_pickle_runs_no_code_and_gets_one_line(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "x": Payload(marker)}, path)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(path)
    assert not marker.exists()
    msg = str(e.value)
    assert "\n" not in msg and "refused" in msg and "evil.pt" in msg
    torch.load(path, weights_only=False)  # the unsafe load the library never does
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("damage", ["truncate", "random", "empty", "flip"])
def test_damaged_files_are_one_line_errors(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"w": torch.arange(10000.0)})
    data = path.read_bytes()
    damaged = {"truncate": data[: len(data) // 2], "random": os.urandom(4096), "empty": b"",
               "flip": data[:40] + bytes(b ^ 0xFF for b in data[40:200]) + data[200:]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and "c.pt" in str(e.value)


@pytest.mark.parametrize("other", [{"width": 16}, {"num_classes": 100}])
def test_weights_of_another_architecture_or_class_count_are_one_line(other):
    kw = {"num_classes": 10, "in_channels": 3, "mean": (0.5,) * 3, "std": (0.25,) * 3, "width": 8}
    saved = build_model("small_cnn", **{**kw, **other}).state_dict()
    with pytest.raises(ConfigError, match="does not fit this model") as e:
        load_weights(build_model("small_cnn", **kw), saved, "x.pt")
    assert "\n" not in str(e.value)


def _assert_previous_intact(path: Path, previous: torch.Tensor) -> None:
    assert torch.equal(load_checkpoint(path)["w"], previous)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_full_disk_during_fsync_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.zeros(3)})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="No space left on device; its previous version is intact"):
        save_checkpoint(path, {"w": torch.ones(3)})
    monkeypatch.undo()
    _assert_previous_intact(path, torch.zeros(3))


def test_failed_rename_and_exception_mid_write_keep_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.zeros(3)})
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(StorageError, match="I/O error"):
        save_checkpoint(path, {"w": torch.ones(3)})
    monkeypatch.undo()
    _assert_previous_intact(path, torch.zeros(3))

    real_fdopen = os.fdopen

    class DiesMidway:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt  # e.g. Ctrl-C half way through the bytes

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: DiesMidway(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": torch.ones(3)})
    monkeypatch.undo()
    _assert_previous_intact(path, torch.zeros(3))


KILL_BEFORE_RENAME = """
import os, signal, sys, torch
from zerograd.checkpoint import save_checkpoint
def die(fd):
    os.kill(os.getpid(), signal.SIGKILL)  # the new bytes are in the temp file, not yet renamed
os.fsync = die
save_checkpoint(sys.argv[1], {"w": torch.ones(3)})
"""


def test_sigkill_mid_write_keeps_previous(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.zeros(3)})
    proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_RENAME, str(path)], check=False,
                          env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(3))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.pt.")  # an orphan temp file only


@pytest.fixture
def readonly_dir(tmp_path, monkeypatch):
    """A folder nobody may write: chmod 555; under root, which ignores permission bits, the
    kernel's answer (EACCES) is injected for creations inside it."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
        real_mkdir, real_open = os.mkdir, os.open

        def inside(p):
            return str(os.path.abspath(p)).startswith(str(ro))

        def mkdir(p, *a, **k):
            if inside(p):
                raise PermissionError(*denied.args, str(p))
            return real_mkdir(p, *a, **k)

        def open_(p, flags, *a, **k):
            if inside(p) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise PermissionError(*denied.args, str(p))
            return real_open(p, flags, *a, **k)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
    yield ro
    ro.chmod(0o755)


@pytest.mark.parametrize("sub", ["", "run"])
def test_read_only_output_folder_is_one_line_before_any_work(readonly_dir, capsys, sub):
    out = readonly_dir / sub if sub else readonly_dir
    code = main(["train", "--preset", "quickstart", "--quiet", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("zerograd: error: ") and "Permission denied" in err and str(out) in err
    assert list(readonly_dir.iterdir()) == []


def test_many_random_files_are_one_line_errors(tmp_path):
    """Random bytes can parse as a legacy pickle and fail anywhere inside torch's unpickler."""
    path = tmp_path / "c.pt"
    for seed in range(300):  # with the pickle protocol prefix, some fail with IndexError/KeyError
        path.write_bytes(b"\x80\x02" + random.Random(seed).randbytes(256 + seed))
        with pytest.raises(ConfigError) as e:
            load_checkpoint(path)
        assert "\n" not in str(e.value)
