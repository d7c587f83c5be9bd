"""Your own images: an ImageFolder tree (`folder:PATH`) or a .npz of uint8 arrays
(`arrays:FILE.npz`), and the loader that streams any image source in worker processes.

    folder:PATH        PATH/train/<class>/*.png|jpg|jpeg, PATH/test/<class>/..., optional
                       PATH/val/<class>/...; classes are train's sub-folder names, sorted
    arrays:FILE.npz    uint8 x_train, x_test (NHWC or NCHW), integer y_train, y_test,
                       optional x_val/y_val and num_classes

Inspecting a source (`inspect`) is cheap, so config validation can call it: it lists files and
reads image headers (or .npy headers and the labels), checks everything it can, and is cached
by path and modification time. Reading (`Source.read`) gives uint8 NCHW numpy arrays for a list
of indices; Pillow decodes. A source is plain data (paths, arrays), so a DataLoader worker can
read from it; `stream` runs those workers and returns uint8 tensors on the device, in order.
Nothing here draws a random number: the order and the augmentation stay in `data.batches`.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import ConfigError

__all__ = ["ARRAYS", "FOLDER", "ArraySource", "FileSource", "Subset", "UserData", "canonical",
           "device_budget", "fingerprint", "inspect", "is_user_data", "open_splits", "parse_bytes", "stream"]

FOLDER = "folder:"
ARRAYS = "arrays:"
EXTENSIONS = (".png", ".jpg", ".jpeg")
GRAY_MODES = ("1", "L")  # folders of only these decode as one channel (L); anything else as RGB
DEEP_MODES = ("I", "F")  # and "I;16...": more than 8 bits, which converting to L/RGB clips at 255
FOLDER_FORM = "PATH/train/<class>/*.png|jpg|jpeg and PATH/test/<class>/..."


def is_user_data(name: object) -> bool:
    return isinstance(name, str) and name.startswith((FOLDER, ARRAYS))


def canonical(name: str) -> str:
    """`folder:`/`arrays:` with an absolute path (config.yaml then works from any directory);
    a ConfigError if the path does not exist."""
    kind = FOLDER if name.startswith(FOLDER) else ARRAYS
    text = name[len(kind):]
    path = Path(os.path.abspath(Path(text).expanduser())) if text else None
    if path is None or not path.exists():
        what = "folder" if kind == FOLDER else ".npz file"
        raise ConfigError(f"dataset={name!r}: no such {what} {text!r}; expected "
                          + (f"{kind}{FOLDER_FORM}" if kind == FOLDER else "arrays:FILE.npz"))
    if kind == FOLDER and not path.is_dir():
        raise ConfigError(f"dataset={name!r}: {str(path)!r} is not a folder; use arrays:FILE.npz for a file")
    if kind == ARRAYS and not path.is_file():
        raise ConfigError(f"dataset={name!r}: {str(path)!r} is not a file (expected a .npz)")
    return f"{kind}{path}"


@dataclass(frozen=True)
class UserData:
    """What validation needs to know about a source, found without decoding images."""

    num_classes: int
    shape: tuple[int, int, int]  # (C, H, W) of the images training sees (after image_size)
    classes: tuple[str, ...]
    sizes: dict  # split -> number of images ("val" only when the source has one)


# --------------------------------------------------------------------------- sources


class ArraySource:
    """uint8 NCHW images held in host memory (an .npz's, or a built-in dataset's)."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.x[np.asarray(indices, dtype=np.int64)]


class FileSource:
    """Image files decoded by Pillow to uint8 (C, H, W): converted to `mode` (L or RGB) and,
    when `size` (H, W) differs from a file's, resized bilinearly (Pillow's resize filters
    over the whole footprint when shrinking, i.e. antialiased)."""

    def __init__(self, files: Sequence[str], mode: str, size: tuple[int, int]):
        self.files, self.mode, self.size = tuple(files), mode, tuple(size)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (1 if self.mode == "L" else 3, *self.size)

    def read(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((len(indices), *self.shape), dtype=np.uint8)
        for k, i in enumerate(np.asarray(indices, dtype=np.int64)):
            out[k] = self.decode(self.files[i])
        return out

    def decode(self, path: str) -> np.ndarray:
        h, w = self.size
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                pixels = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ConfigError(f"cannot read image {path}: {_one_line(e)}") from None
        return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


class Subset:
    """Some of a source's images, by index (the training images left after validation)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    def read(self, indices: np.ndarray) -> np.ndarray:
        return self.source.read(self.indices[np.asarray(indices, dtype=np.int64)])


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


# --------------------------------------------------------------------------- the loader


class _Chunks(torch.utils.data.Dataset):
    """Index arrays -> uint8 image arrays; a ConfigError comes back as its text, so the main
    process raises it as one line (a worker's exception would arrive with a traceback)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, indices):
        try:
            return torch.from_numpy(self.source.read(indices))
        except ConfigError as e:
            return str(e)


def stream(source, chunks: Sequence[np.ndarray], workers: int,
           device: torch.device) -> Iterator[torch.Tensor]:
    """The images of each index chunk, in order, as uint8 tensors on `device`. With workers,
    a DataLoader reads ahead in worker processes (pinned memory on CUDA, copied without
    blocking). The loader gets its own generator: it would otherwise draw its workers' seed
    from the global torch RNG and shift the training's random starts."""
    if workers == 0:
        for chunk in chunks:
            yield torch.from_numpy(source.read(chunk)).to(device)
        return
    loader = torch.utils.data.DataLoader(
        _Chunks(source), batch_size=None, sampler=list(chunks), num_workers=workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(), prefetch_factor=4)
    for item in loader:
        if isinstance(item, str):
            raise ConfigError(item)
        yield item.to(device, non_blocking=True)


def read_all(source, indices: np.ndarray, workers: int, device: torch.device,
             chunk: int = 256) -> torch.Tensor:
    """The images at `indices` as one uint8 tensor on `device` (an in-memory split)."""
    parts = [indices[i:i + chunk] for i in range(0, len(indices), chunk)]
    out = torch.empty((len(indices), *source.shape), dtype=torch.uint8, device=device)
    at = 0
    for images in stream(source, parts, min(workers, len(parts)), device):
        out[at:at + len(images)] = images
        at += len(images)
    return out


# --------------------------------------------------------------------------- budgets

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BUDGET_FRACTION = 0.5  # of the device's free memory, when data_budget is null


def parse_bytes(value, name: str = "data_budget") -> int:
    """An int, or a string like '2GiB' / '500MB' / '1e9', as a number of bytes (>= 0)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-z]*)\s*", str(value).lower())
        if not m or m[2] not in _UNITS:
            raise ConfigError(f"{name}={value!r} is invalid: expected bytes as an integer or a "
                              "string like '2GiB' or '500MB'")
        number = int(float(m[1]) * _UNITS[m[2]])
    if number < 0 or number > 2**63 - 1:
        raise ConfigError(f"{name}={value!r} is invalid: must be in 0..{2**63 - 1} bytes")
    return number


def device_budget(device: torch.device) -> int:
    """BUDGET_FRACTION of the device's free memory: CUDA's free bytes, else the host's
    available physical pages."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # not POSIX: assume 4 GiB
            free = 4 * 2**30
    return int(free * BUDGET_FRACTION)


# --------------------------------------------------------------------------- inspection

_CACHE: dict = {}


def inspect(name: str, image_size: tuple[int, int] | None = None) -> UserData:
    """The facts of a canonical `folder:`/`arrays:` name (see `canonical`), every check that
    needs no decoding done; cached by path, image_size and modification times."""
    return _inspected(name, image_size)[0]


def _inspected(name: str, image_size) -> tuple:
    path = Path(name.split(":", 1)[1])
    key = (name, image_size, _stamp(path))
    if key not in _CACHE:
        found = _inspect_folder(path, image_size) if name.startswith(FOLDER) else _inspect_arrays(path)
        _CACHE.clear()  # one entry: validation asks about the same source again and again
        _CACHE[key] = found
    return _CACHE[key]


def _stamp(path: Path) -> tuple:
    """Modification times that change when a file is added, removed or replaced."""
    if path.is_file():
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    stamps = []
    for split in ("train", "val", "test"):
        folder = path / split
        if folder.is_dir():  # every folder's time: images may sit in a class's sub-folders
            stamps += [(top, os.stat(top).st_mtime_ns) for top, _ in _walk(folder)]
    return tuple(stamps)


def _hidden(p: Path) -> bool:
    """Names starting with '.' (macOS's .DS_Store and ._name.png resource forks, an editor's
    .ipynb_checkpoints) are never images or classes, as in `ls`."""
    return p.name.startswith(".")


def _walk(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder, file names) for `folder` and every sub-folder not hidden, symlinks followed
    once (a link back up would otherwise loop forever)."""
    seen = set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield top, names


def _images(folder: Path) -> list[Path]:
    """A class folder's images, in its sub-folders too (as torchvision's ImageFolder: images
    sorted into train/cat/2019/ are cats, not silently left out)."""
    found = []
    for top, names in _walk(folder):
        found += [p for p in map(Path(top).joinpath, names)
                  if p.suffix.lower() in EXTENSIONS and not _hidden(p) and p.is_file()]
    return sorted(found)


def _list_folder(root: Path) -> tuple[tuple[str, ...], dict]:
    """(classes, {split: (files, labels)}), every layout rule checked."""
    train = root / "train"
    if not train.is_dir():
        raise ConfigError(f"dataset folder {root} has no train folder: expected {FOLDER_FORM} "
                          f"(PATH = {root})")
    per_class = {d.name: _images(d) for d in sorted(train.iterdir()) if d.is_dir() and not _hidden(d)}
    classes = tuple(c for c, files in per_class.items() if files)
    if not classes:
        raise ConfigError(f"dataset folder {root} has no images under {train}: expected "
                          f"train/<class>/*.png|jpg|jpeg")
    if len(classes) == 1:
        raise ConfigError(f"dataset folder {root} has one class ({classes[0]!r}) under {train}: "
                          "a classifier needs at least two class folders with images")
    splits = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            if split == "test":
                raise ConfigError(f"dataset folder {root} has no test folder: expected "
                                  f"{folder}/<class>/*.png|jpg|jpeg (the run ends with a test evaluation)")
            continue
        files, labels = [], []
        for d in sorted(folder.iterdir()):
            if not d.is_dir() or _hidden(d):
                continue
            found = per_class[d.name] if split == "train" else _images(d)  # train: listed above
            if found and d.name not in classes:
                raise ConfigError(f"dataset folder {root}: {split}/{d.name} is not a class of "
                                  f"train ({', '.join(classes)})")
            files += [str(p) for p in found]
            labels += [classes.index(d.name)] * len(found)
        if not files:
            raise ConfigError(f"dataset folder {root} has no images under {folder}")
        splits[split] = (files, np.asarray(labels, dtype=np.int64))
    return classes, splits


def _inspect_folder(root: Path, image_size) -> tuple[UserData, dict, str]:
    """The facts, the splits' files and labels, and the decoding mode, from image headers."""
    classes, splits = _list_folder(root)
    modes, first = set(), None
    for files, _ in splits.values():
        for f in files:
            try:
                with Image.open(f) as im:
                    size, mode = im.size, im.mode
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise ConfigError(f"cannot read image {f}: {_one_line(e)}") from None
            if mode in DEEP_MODES or mode.startswith("I;"):
                raise ConfigError(f"image {f} has {'16-bit' if '16' in mode else '32-bit'} pixels "
                                  f"(mode {mode}), which would be clipped to white at 255: convert "
                                  "it to 8 bits per channel (L or RGB) first")
            modes.add(mode)
            if first is None:
                first = (f, size)
            elif image_size is None and size != first[1]:
                raise ConfigError(f"images differ in size: {first[0]} is {first[1][0]}x{first[1][1]}, "
                                  f"{f} is {size[0]}x{size[1]} (width x height); set image_size "
                                  "(e.g. image_size=64 or image_size=[64, 48]) to resize them all")
    mode = "L" if modes <= set(GRAY_MODES) else "RGB"
    hw = tuple(image_size) if image_size is not None else (first[1][1], first[1][0])
    facts = UserData(len(classes), (1 if mode == "L" else 3, *hw), classes,
                     {k: len(v[0]) for k, v in splits.items()})
    return facts, splits, mode


def fingerprint(name: str) -> dict:
    """What a run records of its data, to refuse resuming on other data (a changed folder
    shifts every index: the validation carve, the epoch order, a mid-epoch position).
    Cheap, never cached, nothing decoded: a folder's listing (classes, each image's path
    relative to it, its label), an .npz's member names, sizes and CRC-32s (from the zip
    directory). An image replaced under the same name is not seen, on purpose: a corrupt
    image a streamed epoch stopped at can be replaced by a good copy and the run resumed."""
    path = Path(name.split(":", 1)[1])
    h = hashlib.sha256()
    if name.startswith(FOLDER):
        classes, splits = _list_folder(path)
        h.update(repr(classes).encode())
        for split, (files, labels) in splits.items():
            for f, y in zip(files, labels):
                h.update(f"{split}\0{os.path.relpath(f, path)}\0{int(y)}\n".encode())
        images = {split: len(files) for split, (files, _) in splits.items()}
    else:
        try:
            with zipfile.ZipFile(path) as z:
                members = sorted((i.filename, i.file_size, i.CRC) for i in z.infolist())
        except (OSError, zipfile.BadZipFile) as e:
            raise ConfigError(f"cannot read {path} as a .npz of arrays: {_one_line(e)}") from None
        h.update(repr(members).encode())
        images = dict(inspect(name).sizes)
    return {"fingerprint": h.hexdigest()[:16], "images": images}


# .npz members: required, then optional
_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _npy_header(z: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    with z.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return shape, dtype


def _layout(shape: tuple[int, ...], path: Path, key: str) -> str:
    """NCHW or NHWC, from which axis holds 1 or 3 channels."""
    if len(shape) != 4:
        raise ConfigError(f"{path}: {key} has shape {shape}; expected 4 dimensions (N, H, W, C) or (N, C, H, W)")
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first == last:
        raise ConfigError(f"{path}: {key} has shape {shape}, so the channel axis is "
                          f"{'ambiguous' if first else 'unknown'}: expected 1 or 3 channels in axis 1 "
                          "(NCHW) or axis 3 (NHWC), not both")
    return "NCHW" if first else "NHWC"


def _inspect_arrays(path: Path) -> tuple[UserData, dict, str]:
    """The facts, the labels per split and the layout, from the .npy headers and the labels."""
    try:
        with zipfile.ZipFile(path) as z:
            keys = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
            missing = [k for k in _REQUIRED if k not in keys]
            if missing:
                raise ConfigError(f"{path} has no {', '.join(missing)}: expected uint8 x_train, x_test "
                                  "and integer y_train, y_test (x_val/y_val optional)")
            headers = {k: _npy_header(z, k) for k in keys}
        with np.load(path, allow_pickle=False) as npz:
            labels = {k: npz[k] for k in keys if k.startswith("y_") or k == "num_classes"}
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ConfigError(f"cannot read {path} as a .npz of arrays: {_one_line(e)}") from None
    splits = ["train", "test"] + (["val"] if "x_val" in keys or "y_val" in keys else [])
    layout = shape = None
    for split in splits:
        for key in (f"x_{split}", f"y_{split}"):
            if key not in keys:
                raise ConfigError(f"{path} has no {key} (x_{split} and y_{split} come together)")
        (xs, xd), y = headers[f"x_{split}"], labels[f"y_{split}"]
        if xd != np.uint8:
            raise ConfigError(f"{path}: x_{split} has dtype {xd}; expected uint8 pixels 0..255")
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise ConfigError(f"{path}: y_{split} has dtype {y.dtype} and shape {y.shape}; "
                              "expected a 1-D array of integers")
        found = _layout(xs, path, f"x_{split}")
        if layout is not None and found != layout:
            raise ConfigError(f"{path}: x_{split} is {found} but x_train is {layout}")
        layout = found
        chw = xs[1:] if layout == "NCHW" else (xs[3], xs[1], xs[2])
        if shape is not None and chw != shape:
            raise ConfigError(f"{path}: x_{split} images are {chw} (C, H, W) but x_train's are {shape}")
        shape = chw
        if xs[0] != len(y):
            raise ConfigError(f"{path}: x_{split} has {xs[0]} images but y_{split} {len(y)} labels")
        if xs[0] == 0:
            raise ConfigError(f"{path}: x_{split} has no images")
    if "num_classes" in labels:
        k = labels["num_classes"]
        if k.ndim != 0 or k.dtype.kind not in "iu" or int(k) < 2:
            raise ConfigError(f"{path}: num_classes must be one integer >= 2, got {k!r}")
        num_classes = int(k)
    else:
        num_classes = int(labels["y_train"].max()) + 1
    for split in splits:
        y = labels[f"y_{split}"]
        if y.min() < 0 or y.max() >= num_classes:
            raise ConfigError(f"{path}: y_{split} labels span {y.min()}..{y.max()}; expected 0..{num_classes - 1} "
                              f"({num_classes} classes, {'num_classes' if 'num_classes' in labels else 'from y_train'})")
    if num_classes < 2:
        raise ConfigError(f"{path}: y_train has one class (0); a classifier needs at least two")
    facts = UserData(num_classes, tuple(int(v) for v in shape), tuple(map(str, range(num_classes))),
                     {s: len(labels[f"y_{s}"]) for s in splits})
    return facts, {s: labels[f"y_{s}"].astype(np.int64) for s in splits}, layout


def open_splits(name: str, image_size: tuple[int, int] | None = None) -> dict:
    """{split: (source, int64 labels)} for "train", "test" and, when the source has it, "val"."""
    path = Path(name.split(":", 1)[1])
    if name.startswith(FOLDER):
        facts, splits, mode = _inspected(name, image_size)
        return {s: (FileSource(files, mode, facts.shape[1:]), y) for s, (files, y) in splits.items()}
    _, labels, layout = _inspected(name, None)
    out = {}
    with np.load(path, allow_pickle=False) as npz:
        for split, y in labels.items():
            x = npz[f"x_{split}"]
            if layout == "NHWC":
                x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            out[split] = (ArraySource(x), y)
    return out
