"""Datasets as uint8 tensors on the target device, plus a batched, repeatable augmenting loader.

Images stay uint8 on the device (4x less memory than float, moved once); `batches` converts each
batch to float32 in [0, 1] and does augmentation with batched tensor ops. All randomness comes
from one CPU `torch.Generator`, so a run is bitwise repeatable whatever the device.

Dataset files are read from a data directory (argument, else $ZEROGRAD_DATA_DIR, else ./data)
and downloaded from the official URLs (md5-checked) when missing. `check_available` raises a
one-line ConfigError before any work when they are missing and cannot be fetched.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from .errors import ConfigError
from .registry import Registry

try:  # numpy >= 2 spelling first; both name the same function
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = [
    "DATASETS",
    "PAD_MODES",
    "Data",
    "DatasetInfo",
    "Split",
    "batches",
    "check_available",
    "load_data",
    "resolve_data_dir",
    "to_float",
]

log = logging.getLogger(__name__)

PAD = 4  # pixels of padding before the random crop (standard CIFAR augmentation)
PAD_MODES = ("zeros", "reflect")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape, normalisation constants, files and source."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, for pixels in [0, 1]
    std: tuple[float, ...]
    augment: bool  # default: random crop (4-px padding) + horizontal flip
    files: tuple[str, ...]  # expected under the data dir (for error messages)
    url: str | None  # official download location (None: bundled with scikit-learn)


_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
_SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"  # only served over http; md5 guards it
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"{_CIFAR10_DIR}/data_batch_{i}" for i in range(1, 6))

DATASETS: Registry[DatasetInfo] = Registry("dataset")
for _info in (
    # mean/std of the 1437-image train part (pixels/255); test_data checks them.
    DatasetInfo("digits", 10, (1, 8, 8), (0.3054,), (0.3757,), False, (), None),
    DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), True,
        (*_CIFAR10_TRAIN, f"{_CIFAR10_DIR}/test_batch"), _CIFAR10_URL,
    ),
    DatasetInfo(
        "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
        (f"{_CIFAR100_DIR}/train", f"{_CIFAR100_DIR}/test"), _CIFAR100_URL,
    ),
    DatasetInfo(
        "svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False,
        ("train_32x32.mat", "test_32x32.mat"), _SVHN_URL,
    ),
):
    DATASETS.register(_info.name, _info)

# (url, md5) of what to fetch; md5s are the official ones (as used by torchvision).
_DOWNLOADS: dict[str, tuple[tuple[str, str], ...]] = {
    "cifar10": ((_CIFAR10_URL, "c58f30108f718f92721af3b95e74349a"),),
    "cifar100": ((_CIFAR100_URL, "eb9058c3a382ffc7106e4002c42a8d85"),),
    "svhn": (
        (_SVHN_URL + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        (_SVHN_URL + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
    ),
}


@dataclass(eq=False)  # tensors have no single truth value, so compare by identity
class Split:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,), on the target device."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(eq=False)
class Data:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


# --------------------------------------------------------------------------- locating / download


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The argument, else $ZEROGRAD_DATA_DIR, else ./data; absolute, so messages are unambiguous."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("ZEROGRAD_DATA_DIR") or "data"
    return Path(os.path.abspath(Path(chosen).expanduser()))


def _missing(info: DatasetInfo, root: Path) -> list[Path]:
    return [root / f for f in info.files if not (root / f).is_file()]


def check_available(name: str, data_dir: str | Path | None = None, *, download: bool = True) -> None:
    """Make sure the dataset's files exist (downloading them if allowed), else raise ConfigError.

    Called before any training work so a missing dataset fails in seconds with a message that
    says which files were expected where and where to get them.
    """
    info = DATASETS[name]
    root = resolve_data_dir(data_dir)
    if not _missing(info, root):
        return
    reason = "download disabled"
    if download:
        try:
            _download(name, root)
            reason = "download did not produce them"
        except (OSError, ValueError, EOFError, tarfile.TarError) as e:  # URLError is an OSError
            detail = " ".join(str(e).split())  # keep the message on one line
            reason = f"download failed ({type(e).__name__}: {detail})"
    missing = _missing(info, root)
    if missing:
        urls = " and ".join(url for url, _ in _DOWNLOADS[name])
        raise ConfigError(
            f"dataset {name!r} not found: expected {', '.join(map(str, missing))}; {reason}; "
            f"fetch {urls} and place/extract it into {root}, "
            "or pass --data-dir (or set ZEROGRAD_DATA_DIR)"
        )


def _fetch(url: str, dest: Path) -> None:
    """Stream `url` to `dest` (the one network call; tests replace it)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_md5(path: Path, expected: str) -> None:
    actual = _md5(path)
    if actual != expected:
        raise ConfigError(f"checksum mismatch for {path}: md5 {actual}, expected {expected}")


def _safe_extract(archive: Path, dest: Path) -> None:
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


def _download(name: str, root: Path) -> None:
    """Fetch the dataset's missing files: temp file -> md5 check -> extract or rename into place."""
    root.mkdir(parents=True, exist_ok=True)
    for url, md5 in _DOWNLOADS[name]:
        filename = url.rsplit("/", 1)[1]
        is_archive = filename.endswith(".tar.gz")
        if not is_archive and (root / filename).is_file():
            continue
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}-", suffix=".part", dir=root)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            log.info("downloading %s into %s", url, root)
            _fetch(url, tmp)
            _verify_md5(tmp, md5)
            if is_archive:
                _safe_extract(tmp, root)
            else:
                os.replace(tmp, root / filename)
        finally:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- readers


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Stand-in for _codecs.encode, which Python 3 protocol-2 pickles use to store bytes."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# The only globals a pickled numpy array needs (numpy 1.x and 2.x spellings, plus the bytes
# helper of Python 3 protocol-2 pickles; the official Python 2 files do not use it).
_PICKLE_GLOBALS = MappingProxyType({
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
})


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    A pickle can call any importable function while loading; dataset files only need
    _PICKLE_GLOBALS, so refusing the rest means a tampered file cannot run code.
    """

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name} (dataset pickles hold only numpy arrays)"
            ) from None


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot read dataset file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"cannot read dataset file {path}: expected a dict, got {type(obj).__name__}")
    return obj


def _read_cifar_files(root: Path, files, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for f in files:
        batch = _load_pickle(root / f)
        if b"data" not in batch or label_key not in batch:
            raise ConfigError(f"dataset file {root / f} has unexpected contents: no "
                              f"{(b'data' if b'data' not in batch else label_key).decode()!r} entry")
        x = _pixels(batch[b"data"], root / f)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise ConfigError(f"dataset file {root / f} has images of shape {x.shape}; expected (N, 3072)")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(_labels(batch[label_key], root / f))
    return np.concatenate(xs), np.concatenate(ys)


def _pixels(value, path: Path) -> np.ndarray:
    """A file's images as uint8, refusing anything that would wrap or round: a non-integer
    dtype, or values outside 0..255."""
    try:
        x = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"dataset file {path} has unreadable images ({e})") from None
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "iu" or x.size == 0:
        raise ConfigError(f"dataset file {path} has images of dtype {x.dtype}; expected integers 0..255")
    low, high = int(x.min()), int(x.max())
    if low < 0 or high > 255:
        raise ConfigError(f"dataset file {path} has pixel values in {low}..{high}; expected 0..255")
    return x.astype(np.uint8)


def _labels(value, path: Path) -> np.ndarray:
    """A file's labels as an int64 vector, refusing anything that is not a 1-D list of ints."""
    try:
        y = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"dataset file {path} has unreadable labels ({e})") from None
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ConfigError(f"dataset file {path} has labels of dtype {y.dtype} and shape {y.shape}; "
                          "expected a 1-D list of integers")
    return y.astype(np.int64)


def _read_cifar10(root: Path):
    return (*_read_cifar_files(root, _CIFAR10_TRAIN, b"labels"),
            *_read_cifar_files(root, [f"{_CIFAR10_DIR}/test_batch"], b"labels"))


def _read_cifar100(root: Path):
    return (*_read_cifar_files(root, [f"{_CIFAR100_DIR}/train"], b"fine_labels"),
            *_read_cifar_files(root, [f"{_CIFAR100_DIR}/test"], b"fine_labels"))


def _read_svhn(root: Path):
    try:
        from scipy.io import loadmat  # optional dependency, only SVHN needs it
    except ImportError:
        raise ConfigError("reading SVHN needs scipy: pip install scipy") from None
    out = []
    for f in ("train_32x32.mat", "test_32x32.mat"):
        try:
            mat = loadmat(root / f)
        except Exception as e:  # noqa: BLE001 (scipy raises many kinds for a foreign file)
            raise ConfigError(f"cannot read dataset file {root / f}: {type(e).__name__}: {e}") from None
        if "X" not in mat or "y" not in mat or np.ndim(mat["X"]) != 4:
            raise ConfigError(f"dataset file {root / f} has unexpected contents: expected X (H, W, C, N) and y")
        x = np.ascontiguousarray(_pixels(mat["X"], root / f).transpose(3, 2, 0, 1))  # HWCN -> NCHW
        y = _labels(np.asarray(mat["y"]).reshape(-1), root / f)
        y[y == 10] = 0  # SVHN stores digit 0 as label 10
        out += [x, y]
    return tuple(out)


def _read_digits(root: Path):
    """scikit-learn's bundled 8x8 digits (0..16 -> 0..255), fixed split: last 360 are test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.data * 255 / 16).astype(np.uint8).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(0).permutation(len(y))
    train, test = perm[:-360], perm[-360:]
    return x[train], y[train], x[test], y[test]


_READERS = {"digits": _read_digits, "cifar10": _read_cifar10, "cifar100": _read_cifar100,
            "svhn": _read_svhn}


def _check_arrays(info: DatasetInfo, x: np.ndarray, y: np.ndarray, what: str) -> None:
    """Catch truncated or foreign files here rather than as a shape error deep in training."""
    if x.shape[1:] != info.shape or len(x) != len(y):
        raise ConfigError(f"{info.name} {what} data has shape {x.shape} with {len(y)} labels; "
                          f"expected (N, {', '.join(map(str, info.shape))}) with N labels")
    if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
        raise ConfigError(f"{info.name} {what} labels span {y.min()}..{y.max()}; "
                          f"expected 0..{info.num_classes - 1}")


# --------------------------------------------------------------------------- splitting / loading


def _split_indices(n_train: int, val_size: int, train_subset: int | None, seed: int):
    """(train_idx, val_idx) into the training set: a fixed permutation from RandomState(seed);
    its first `val_size` entries are validation, the next `train_subset` (or all) are training."""
    if val_size < 0 or val_size >= n_train:
        raise ConfigError(f"val_size {val_size} must be in 0..{n_train - 1} "
                          f"(the training set has {n_train} images)")
    available = n_train - val_size
    if train_subset is not None and not 1 <= train_subset <= available:
        raise ConfigError(f"train_subset {train_subset} must be in 1..{available} "
                          f"({n_train} training images minus val_size {val_size})")
    perm = np.random.RandomState(seed).permutation(n_train)
    stop = n_train if train_subset is None else val_size + train_subset
    return perm[val_size:stop], perm[:val_size]


def load_data(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_size: int = 1000,
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    download: bool = True,
) -> Data:
    """Load a dataset as uint8 tensors on `device`, with validation carved from training data."""
    info = DATASETS[name]
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if test_subset is not None and test_subset < 1:
        raise ConfigError(f"test_subset {test_subset} must be >= 1")
    root = resolve_data_dir(data_dir)
    check_available(name, root, download=download)

    x_tr, y_tr, x_te, y_te = _READERS[name](root)
    _check_arrays(info, x_tr, y_tr, "train")
    _check_arrays(info, x_te, y_te, "test")
    train_idx, val_idx = _split_indices(len(y_tr), val_size, train_subset, seed)
    if test_subset is not None:
        if test_subset > len(y_te):
            raise ConfigError(f"test_subset {test_subset} exceeds the {len(y_te)} test images")
        x_te, y_te = x_te[:test_subset], y_te[:test_subset]

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.ascontiguousarray(x)).to(dev),
                     torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(dev))

    return Data(info, split(x_tr[train_idx], y_tr[train_idx]), split(x_tr[val_idx], y_tr[val_idx]),
                split(x_te, y_te))


# --------------------------------------------------------------------------- batching


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> a new float32 tensor in [0, 1] (x / 255); float pixels (already in
    [0, 1]) as float32. The argument is never modified."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255)  # .to made a copy: dividing in place is safe
    if x.is_floating_point():
        return x.to(torch.float32)
    raise ConfigError(f"images must be uint8 (0..255) or float pixels in [0, 1], got {x.dtype}")


def _augment(x: torch.Tensor, generator: torch.Generator | None, pad_mode: str = "zeros",
             flip: bool = True, rotate: float = 0.0) -> torch.Tensor:
    """Pad PAD pixels (zeros or a reflection), random-crop back to HxW, random horizontal flip
    (if `flip`), then a random rotation by an angle uniform in [-rotate, rotate] degrees about
    the centre (if `rotate`; nearest pixel, zeros outside, as torchvision's RandomRotation).
    One gather, no loop.

    Offsets, flips and angles are drawn on the CPU (rows, columns, flips, then angles; the
    flips are drawn even when unused) and the index maps are computed there, so the result
    does not depend on where the images live, and a run without rotation draws what it did
    before rotation existed.
    """
    b, _, h, w = x.shape
    dy, dx, flipped, angles = _draw(b, generator, flip, rotate)
    i = torch.arange(h).view(1, h, 1)  # output pixel (i, j) of the crop; rows and columns
    j = torch.arange(w).view(1, 1, w)  # stay separable (broadcast) unless rotated
    inside = None  # where the output reads an image pixel, not the zero fill (None: everywhere)
    if angles is not None:
        i, j, inside = _rotated_source(i.expand(b, h, w), j.expand(b, h, w), angles)
    j = torch.where(flipped, w - 1 - j, j)  # flipping the crop = reading its columns backwards
    rows, cols = i + dy - PAD, j + dx - PAD  # in the unpadded image
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:
        valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        inside = valid if inside is None else inside & valid
    dev = x.device
    batch = torch.arange(b, device=dev)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1).to(dev), cols.clamp(0, w - 1).to(dev)]
    if inside is not None:  # (b, h, w, C): zero outside the image
        out = out * inside.to(dev)[..., None].to(out.dtype)
    return out.permute(0, 3, 1, 2).contiguous()


def _draw(b: int, generator: torch.Generator | None, flip: bool, rotate: float):
    """The random numbers `_augment` uses for a batch of b images, in their fixed order
    (rows, columns, flips, then angles when rotating). Skipping a batch (`batches(start=...)`)
    draws them too, so the batches after it are the same as in a run that trained on it."""
    dy = torch.randint(0, 2 * PAD + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b, 1, 1), generator=generator)
    flipped = torch.randint(0, 2, (b, 1, 1), generator=generator).bool() & flip
    angles = None
    if rotate > 0:
        angles = (torch.rand(b, 1, 1, generator=generator, dtype=torch.float64) * 2 - 1) * rotate
    return dy, dx, flipped, angles


def _reflect(index: torch.Tensor, n: int) -> torch.Tensor:
    """Reflection padding's source index (the edge pixel is not repeated), for pads < n."""
    index = index.abs()
    return torch.where(index >= n, 2 * (n - 1) - index, index)


def _rotated_source(i: torch.Tensor, j: torch.Tensor, degrees: torch.Tensor):
    """For output pixels (i, j) of images rotated counter-clockwise by `degrees` about their
    centre: the nearest source pixel and whether it lies inside the image."""
    h, w = i.shape[1], i.shape[2]
    theta = torch.deg2rad(degrees)
    cos, sin = torch.cos(theta), torch.sin(theta)
    y, x = i - (h - 1) / 2, j - (w - 1) / 2  # the inverse rotation (rows point down)
    src_i = torch.round(sin * x + cos * y + (h - 1) / 2).long()
    src_j = torch.round(cos * x - sin * y + (w - 1) / 2).long()
    inside = (src_i >= 0) & (src_i < h) & (src_j >= 0) & (src_j < w)
    return src_i, src_j, inside


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    pad_mode: str = "zeros",
    flip: bool = True,
    rotate: float = 0.0,
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x float32 in [0, 1], y) batches on the split's device.

    With `shuffle`, one permutation per call (i.e. per epoch) is drawn from `generator` before
    any augmentation draws, then each batch draws its crop offsets, flips and angles
    (`pad_mode`, `flip`, `rotate` as in `_augment`). `start`: begin at that batch of the
    epoch, drawing (not applying) the skipped batches' augmentation, so batch k is bitwise the
    batch k of a full pass (what resuming in the middle of an epoch needs).
    """
    if pad_mode not in PAD_MODES:
        raise ConfigError(f"pad_mode={pad_mode!r} is invalid: must be one of {', '.join(PAD_MODES)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be >= 1")
    if generator is not None and generator.device.type != "cpu":
        raise ConfigError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    n = len(split)
    device = split.x.device
    order = torch.randperm(n, generator=generator) if shuffle else None
    if start < 0:
        raise ConfigError(f"start {start} must be >= 0 (a batch index)")
    stop = n - n % batch_size if drop_last else n
    for number, first in enumerate(range(0, stop, batch_size)):
        if number < start:
            if augment:
                _draw(min(batch_size, n - first), generator, flip, rotate)
            continue
        if order is None:
            x, y = split.x[first:first + batch_size], split.y[first:first + batch_size]
        else:
            idx = order[first:first + batch_size].to(device)
            x, y = split.x[idx], split.y[idx]
        if augment:
            x = _augment(x, generator, pad_mode, flip, rotate)
        yield to_float(x), y
