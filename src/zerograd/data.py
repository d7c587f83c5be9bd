"""Datasets as uint8 tensors on the target device, plus a batched, repeatable augmenting loader.

Images stay uint8 on the device (4x less memory than float, moved once); `batches` converts each
batch to float32 in [0, 1] and does augmentation with batched tensor ops. All randomness comes
from one CPU `torch.Generator`, so a run is bitwise repeatable whatever the device.

Dataset files are read from a data directory (argument, else $ZEROGRAD_DATA_DIR, else ./data)
and downloaded from the official URLs (md5-checked) when missing. `check_available` raises a
one-line ConfigError before any work when they are missing and cannot be fetched.
"""
from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from . import userdata
from .augment import CROPS, PAD_MODES, draw_pad, draw_resized, pad_crop, resized_crop
from .download import download_files
from .errors import ConfigError
from .registry import Registry

try:  # numpy >= 2 spelling first; both name the same function
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = [
    "DATASETS",
    "Data",
    "DatasetInfo",
    "Split",
    "StreamedSplit",
    "batches",
    "check_available",
    "dataset_info",
    "load_data",
    "pixel_stats",
    "resolve_data_dir",
    "to_float",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape, normalisation constants, files and source."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...] | None  # per channel, for pixels in [0, 1] (None: computed from
    std: tuple[float, ...] | None  # the training split when a run starts, then recorded)
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

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images at `indices`, on the split's device."""
        return self.x[indices.to(self.x.device)]

    def chunks(self, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of each index chunk, in order (what `batches` reads a batch with)."""
        return (self.take(c) for c in chunks)


@dataclass(eq=False)
class StreamedSplit:
    """A split too large for the device: labels on the device, images read on demand from
    `source` (a `userdata` source) by `workers` loader processes, as uint8 (N, C, H, W)."""

    source: object
    y: torch.Tensor
    workers: int = 0

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 images at `indices`, read here (a few: a sample, the diagnostics' probe)."""
        return torch.from_numpy(self.source.read(indices.cpu().numpy())).to(self.y.device)

    def chunks(self, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        return userdata.stream(self.source, [c.cpu().numpy() for c in chunks],
                               min(self.workers, len(chunks)), self.y.device)


@dataclass(eq=False)
class Data:
    info: DatasetInfo
    train: Split | StreamedSplit  # streamed when it exceeds the device budget (load_data)
    val: Split
    test: Split


def dataset_info(name: str, data_dir: str | Path | None = None,
                 image_size: tuple[int, int] | None = None) -> DatasetInfo:
    """The facts of a registered dataset, or of your own (`folder:PATH`, `arrays:FILE.npz`,
    inspected without decoding; mean and std None: computed when training starts). Unknown
    names: one line with did-you-mean. The one place a dataset's facts come from."""
    if not userdata.is_user_data(name):
        return DATASETS[name]
    name = userdata.canonical(name)
    facts = userdata.inspect(name, image_size)
    return DatasetInfo(name, facts.num_classes, facts.shape, None, None, True, (), None)


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
    if userdata.is_user_data(name):
        return  # your own data: dataset_info has checked it
    info = DATASETS[name]
    root = resolve_data_dir(data_dir)
    if not _missing(info, root):
        return
    reason = "download disabled"
    if download:
        try:
            download_files(_DOWNLOADS[name], root)
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
    image_size: tuple[int, int] | None = None,
    stream: bool | str = False,
    budget: int | None = None,
    workers: int = 0,
) -> Data:
    """Load a dataset as uint8 tensors on `device`. Validation is the source's own val split
    (at most val_size images of it, a fixed random choice) or else carved from training data.
    The training split is streamed (a `StreamedSplit` read by `workers` processes) when
    `stream` is True, or "auto" and its bytes exceed `budget` (None: `userdata.device_budget`);
    validation and test stay in memory."""
    info = dataset_info(name, data_dir, image_size)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None
    if test_subset is not None and test_subset < 1:
        raise ConfigError(f"test_subset {test_subset} must be >= 1")
    splits = _open_splits(info, data_dir, download, image_size)
    train_src, y_tr = splits["train"]
    if "val" in splits:
        train_idx, _ = _split_indices(len(y_tr), 0, train_subset, seed)
        val_src, y_va = splits["val"]
        val_idx = np.random.RandomState(seed).permutation(len(y_va))[:val_size]
    else:
        train_idx, val_idx = _split_indices(len(y_tr), val_size, train_subset, seed)
        val_src, y_va = train_src, y_tr
    test_src, y_te = splits["test"]
    if test_subset is not None and test_subset > len(y_te):
        raise ConfigError(f"test_subset {test_subset} (test_n, or eval's --n) exceeds the {len(y_te)} "
                          "test images")
    test_idx = np.arange(len(y_te) if test_subset is None else test_subset)

    def labels(y: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y[idx], dtype=np.int64)).to(dev)

    def memory(src, y: np.ndarray, idx: np.ndarray) -> Split:
        if isinstance(src, userdata.ArraySource):
            x = torch.from_numpy(np.ascontiguousarray(src.read(idx))).to(dev)
        else:
            x = userdata.read_all(src, idx, workers, dev)
        return Split(x, labels(y, idx))

    nbytes = len(train_idx) * int(np.prod(info.shape))
    held = isinstance(train_src, userdata.ArraySource) and dev.type == "cpu"  # streaming saves nothing
    if stream is True or (stream == "auto" and not held
                          and nbytes > (userdata.device_budget(dev) if budget is None else budget)):
        train = StreamedSplit(userdata.Subset(train_src, train_idx), labels(y_tr, train_idx), workers)
    else:
        train = memory(train_src, y_tr, train_idx)
    return Data(info, train, memory(val_src, y_va, val_idx), memory(test_src, y_te, test_idx))


def _open_splits(info: DatasetInfo, data_dir, download: bool, image_size) -> dict:
    """{split: (userdata source, int64 labels)}: your own data's, or a built-in's arrays."""
    if userdata.is_user_data(info.name):
        return userdata.open_splits(info.name, image_size)
    root = resolve_data_dir(data_dir)
    check_available(info.name, root, download=download)
    x_tr, y_tr, x_te, y_te = _READERS[info.name](root)
    _check_arrays(info, x_tr, y_tr, "train")
    _check_arrays(info, x_te, y_te, "test")
    return {"train": (userdata.ArraySource(x_tr), y_tr), "test": (userdata.ArraySource(x_te), y_te)}


def pixel_stats(split: Split | StreamedSplit, chunk: int = 512) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a split's pixels in [0, 1] (float64 sums, one pass in a
    fixed order: the same numbers on every rank and every run); std at least 1/255, so a
    constant channel still normalizes."""
    n = len(split)
    s = s2 = count = 0
    for x in split.chunks([torch.arange(i, min(i + chunk, n)) for i in range(0, n, chunk)]):
        xf = x.to(torch.float64).div_(255)
        s = s + xf.sum((0, 2, 3))
        s2 = s2 + xf.square().sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise ConfigError("cannot compute mean/std of an empty training split")
    mean = s / count
    std = (s2 / count - mean.square()).clamp_min(0).sqrt().clamp_min(1 / 255)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


# --------------------------------------------------------------------------- batching


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> a new float32 tensor in [0, 1] (x / 255); float pixels (already in
    [0, 1]) as float32. The argument is never modified."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255)  # .to made a copy: dividing in place is safe
    if x.is_floating_point():
        return x.to(torch.float32)
    raise ConfigError(f"images must be uint8 (0..255) or float pixels in [0, 1], got {x.dtype}")


def batches(
    split: Split | StreamedSplit,
    batch_size: int,
    *,
    shuffle: bool,
    augment: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    pad_mode: str = "zeros",
    flip: bool = True,
    rotate: float = 0.0,
    crop: str = "pad",
    start: int = 0,
    rows: Callable[[int], tuple[int, int]] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x float32 in [0, 1], y) batches on the split's device.

    With `shuffle`, one permutation per call (i.e. per epoch) is drawn from `generator` before
    any augmentation draws, then each batch draws its augmentation: `crop="pad"` crop offsets,
    flips and angles (`pad_mode`, `flip`, `rotate` as in `pad_crop`), `crop="resized"` a
    random-resized crop and flips (`resized_crop`). `start`: begin at that batch of the
    epoch, drawing (not applying) the skipped batches' augmentation and reading none of their
    images, so batch k is bitwise the batch k of a full pass (what resuming in the middle of
    an epoch needs). `rows(n)`: the rows (lo, hi) of a batch of n that the caller needs (a
    process's shard); only their images are read and augmented, with the whole batch's draws,
    and y stays the whole batch's. A `StreamedSplit` reads ahead in its loader processes;
    every random number is drawn here, in the main process, in the same order either way.
    """
    if pad_mode not in PAD_MODES:
        raise ConfigError(f"pad_mode={pad_mode!r} is invalid: must be one of {', '.join(PAD_MODES)}")
    if crop not in CROPS:
        raise ConfigError(f"crop={crop!r} is invalid: must be one of {', '.join(CROPS)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size {batch_size} must be >= 1")
    if generator is not None and generator.device.type != "cpu":
        raise ConfigError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
    if start < 0:
        raise ConfigError(f"start {start} must be >= 0 (a batch index)")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    firsts = range(0, stop, batch_size)
    parts = [(0, min(batch_size, n - first)) if rows is None else rows(min(batch_size, n - first))
             for first in firsts]
    images = split.chunks([order[first:first + batch_size][lo:hi]
                           for (lo, hi), first in zip(parts[start:], firsts[start:])])
    for number, first in enumerate(firsts):
        size = min(batch_size, n - first)
        draws = None
        if augment:
            draws = (draw_pad(size, generator, flip, rotate) if crop == "pad"
                     else draw_resized(size, generator, flip))
        if number < start:
            continue
        lo, hi = parts[number]
        x = next(images)
        y = split.y[order[first:first + batch_size].to(split.y.device)]
        if draws is None:
            yield to_float(x), y
            continue
        draws = tuple(None if d is None else d[lo:hi] for d in draws)
        yield (to_float(pad_crop(x, draws, pad_mode)) if crop == "pad"
               else resized_crop(to_float(x), draws)), y
