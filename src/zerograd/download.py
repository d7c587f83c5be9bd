"""Fetching dataset files safely: a temporary file, the official md5, then an atomic rename
or a tar extraction that refuses links, devices and paths outside its folder, so an interrupted
or tampered download never leaves a half-written or foreign file where data is read."""
from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from .errors import ConfigError
from .files import file_digest

log = logging.getLogger(__name__)


def fetch(url: str, dest: Path) -> None:
    """Stream `url` to `dest` (the one network call; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def _md5(path: Path) -> str:
    return file_digest(path, "md5")


def _verify_md5(path: Path, expected: str) -> None:
    actual = _md5(path)
    if actual != expected:
        raise ConfigError(f"checksum mismatch for {path}: md5 {actual}, expected {expected}")


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar into `dest`, refusing anything that could land outside it.

    Only regular files and directories with relative paths free of '..' are accepted (no links,
    devices or absolute paths). Extraction goes to a temporary directory inside `dest` and is
    then renamed into place, so an interrupted run never leaves half-written dataset files.
    """
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if Path(m.name).is_absolute() or m.name.startswith(("/", "\\")) or ".." in parts:
                raise ConfigError(f"unsafe path {m.name!r} in archive {archive}; refusing to extract")
            if not (m.isfile() or m.isdir()):
                raise ConfigError(f"unsupported member {m.name!r} (link or device) in {archive}")
        dest.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
        try:
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **extra)
            _move_into(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into(src: Path, dest: Path) -> None:
    """Atomically rename each entry of `src` into `dest`, merging into directories that exist."""
    for item in src.iterdir():
        target = dest / item.name
        if item.is_dir() and target.is_dir():
            _move_into(item, target)
        else:
            os.replace(item, target)


def download_files(files: tuple[tuple[str, str], ...], root: Path) -> None:
    """Fetch the dataset's missing files: temp file -> md5 check -> extract or rename into place."""
    root.mkdir(parents=True, exist_ok=True)
    for url, md5 in files:
        filename = url.rsplit("/", 1)[1]
        is_archive = filename.endswith(".tar.gz")
        if not is_archive and (root / filename).is_file():
            continue
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}-", suffix=".part", dir=root)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s into %s", url, root)
            fetch(url, tmp)
            _verify_md5(tmp, md5)
            if is_archive:
                safe_extract(tmp, root)
            else:
                os.replace(tmp, root / filename)
        finally:
            tmp.unlink(missing_ok=True)
