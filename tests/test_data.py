"""Tests for zerograd.data: dataset loading, splits, batching/augmentation, download safety.

Checks digits shapes/dtypes/split sizes and determinism, the hard-coded digits mean/std,
disjoint and seed-dependent train/val splits, that `batches` visits every example once per
epoch and is bitwise repeatable per generator seed, that augmentation yields zero-padded
shifted/flipped copies (and nothing when off), the CIFAR-10 shared copy (skipped if absent),
CIFAR-100 and SVHN readers on tiny fake files, the ConfigErrors for unknown names, missing
files offline, bad sizes and checksums, unsafe tar members, and a malicious pickle. No network.
"""
from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from zerograd import augment, download
from zerograd import data as D
from zerograd.data import DATASETS, Split, batches, check_available, load_data
from zerograd.errors import ConfigError

torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# --------------------------------------------------------------------------- helpers


def _images(n: int, shape=(3, 32, 32), seed: int = 0) -> np.ndarray:
    """Random uint8 images with no zero pixels, so zero padding is recognisable."""
    return np.random.RandomState(seed).randint(1, 256, size=(n, *shape)).astype(np.uint8)


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar10(root: Path, n: int = 20) -> None:
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = _images(n, seed=i).reshape(n, -1)
        labels = [int(v) for v in np.arange(n) % 10]
        _write_pickle(root / "cifar-10-batches-py" / name, {b"data": x, b"labels": labels})


def _tar_of(src_dir: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        for item in sorted(src_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return dest


class _Evil:
    """Pickles to a call of os.system: loading it with plain pickle would run `cmd`."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# --------------------------------------------------------------------------- digits and splits


def test_digits_shapes_dtypes_sizes_and_determinism():
    a = load_data("digits", val_size=200)
    assert (len(a.train), len(a.val), len(a.test)) == (1797 - 360 - 200, 200, 360)
    for s in (a.train, a.val, a.test):
        assert s.x.dtype == torch.uint8 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == (1, 8, 8) and s.x.device.type == "cpu"
        assert 0 <= int(s.y.min()) and int(s.y.max()) <= 9
    assert int(a.train.x.max()) == 255  # 16 maps to 255
    assert a.info is DATASETS["digits"] and a.info.augment is False
    b = load_data("digits", val_size=200)
    for s, t in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(s.x, t.x) and torch.equal(s.y, t.y)


def test_digits_mean_std_constants_match_train_part():
    x_tr, _, x_te, _ = D._read_digits(Path("."))
    assert len(x_tr) == 1437 and len(x_te) == 360
    pixels = x_tr.astype(np.float64) / 255
    info = DATASETS["digits"]
    assert info.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
    assert info.std[0] == pytest.approx(pixels.std(), abs=1e-4)


def test_split_indices_disjoint_and_seeded():
    tr, va = D._split_indices(500, 100, None, seed=0)
    assert len(va) == 100 and len(tr) == 400
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(500))
    tr2, va2 = D._split_indices(500, 100, None, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    _, va3 = D._split_indices(500, 100, None, seed=1)
    assert not np.array_equal(np.sort(va), np.sort(va3))
    sub, va4 = D._split_indices(500, 100, 50, seed=0)
    assert np.array_equal(sub, tr[:50]) and np.array_equal(va4, va)
    empty_tr, empty_va = D._split_indices(500, 0, None, seed=0)
    assert len(empty_va) == 0 and len(empty_tr) == 500


def test_load_data_uses_the_split_indices():
    x_tr, y_tr, _, _ = D._read_digits(Path("."))
    d = load_data("digits", val_size=300, train_subset=100, seed=3)
    tr, va = D._split_indices(len(y_tr), 300, 100, seed=3)
    assert torch.equal(d.train.x, torch.from_numpy(x_tr[tr]))
    assert torch.equal(d.val.y, torch.from_numpy(y_tr[va]))
    other = load_data("digits", val_size=300, train_subset=100, seed=4)
    assert not torch.equal(d.val.x, other.val.x)
    assert len(load_data("digits", val_size=0).val) == 0
    assert len(load_data("digits", test_subset=7).test) == 7


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"val_size": 1437}, ["1437"]),
        ({"val_size": 2000}, ["2000", "1437"]),
        ({"val_size": -1}, ["-1"]),
        ({"val_size": 1000, "train_subset": 0}, ["train_subset 0"]),
        ({"val_size": 1000, "train_subset": 438}, ["train_subset 438", "437"]),
        ({"test_subset": 361}, ["test_subset 361 (test_n, or eval's --n) exceeds the 360 test images"]),
        ({"test_subset": 0}, ["test_subset 0"]),
    ],
)
def test_bad_sizes_raise_config_error(kwargs, needles):
    with pytest.raises(ConfigError) as e:
        load_data("digits", **kwargs)
    for needle in needles:
        assert needle in str(e.value)


# --------------------------------------------------------------------------- batches


def _index_split(n: int) -> Split:
    """Labels are the example indices, so batches reveal which examples they hold."""
    return Split(torch.from_numpy(_images(n, (3, 8, 8))), torch.arange(n))


def test_batches_cover_every_index_once_per_epoch():
    split = _index_split(103)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # each call is one epoch
        ys = [y for _, y in batches(split, 10, shuffle=True, augment=True, generator=g)]
        assert [len(y) for y in ys] == [10] * 10 + [3]
        seen = torch.cat(ys)
        assert sorted(seen.tolist()) == list(range(103))
        assert not torch.equal(seen, torch.arange(103))  # actually shuffled
    dropped = [y for _, y in batches(split, 10, shuffle=False, augment=False, drop_last=True)]
    assert [len(y) for y in dropped] == [10] * 10
    assert torch.equal(torch.cat(dropped), torch.arange(100))


def _epoch(split: Split, seed: int):
    g = torch.Generator().manual_seed(seed)
    return list(batches(split, 16, shuffle=True, augment=True, generator=g))


def test_same_generator_seed_gives_bitwise_identical_batches():
    split = _index_split(50)
    a, b, c = _epoch(split, 7), _epoch(split, 7), _epoch(split, 8)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    assert a[0][0].dtype == torch.float32


def test_augmentation_is_a_zero_padded_shifted_or_flipped_copy():
    n, pad, h, w = 256, augment.PAD, 8, 8
    split = _index_split(n)
    g = torch.Generator().manual_seed(0)
    (x_aug, y), = batches(split, n, shuffle=False, augment=True, generator=g)
    padded = torch.nn.functional.pad(D.to_float(split.x), (pad, pad, pad, pad))

    def candidate(i, dy, dx, flip):
        crop = padded[i, :, dy:dy + h, dx:dx + w]
        return crop.flip(-1) if flip else crop

    used = set()
    for i in range(n):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(x_aug[i], candidate(i, dy, dx, flip))
        ]
        assert matches, f"augmented image {i} is not a padded crop/flip of the original"
        used.update(matches)
    assert len({(dy, dx) for dy, dx, _ in used}) > 40  # offsets vary
    assert {0, 2 * pad} <= {dy for dy, _, _ in used} and {0, 2 * pad} <= {dx for _, dx, _ in used}
    assert {f for _, _, f in used} == {False, True}  # both flipped and unflipped
    assert torch.equal(y, torch.arange(n))


def test_no_augmentation_returns_exact_scaled_pixels():
    split = _index_split(20)
    xs = torch.cat([x for x, _ in batches(split, 6, shuffle=False, augment=False)])
    assert torch.equal(xs, split.x.float() / 255)
    assert torch.equal(D.to_float(split.x), split.x.float() / 255)


def test_batches_rejects_bad_batch_size():
    with pytest.raises(ConfigError, match="batch_size 0"):
        next(batches(_index_split(4), 0, shuffle=False, augment=False))


# --------------------------------------------------------------------------- real and fake files


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(), reason="no shared CIFAR-10")
def test_cifar10_shared_copy():
    d = load_data("cifar10", data_dir=SHARED, val_size=1000, train_subset=2000, test_subset=500,
                  download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (2000, 1000, 500)
    for s in (d.train, d.val, d.test):
        assert s.x.dtype == torch.uint8 and s.x.shape[1:] == (3, 32, 32)
        assert s.y.dtype == torch.int64
        assert int(s.y.min()) == 0 and int(s.y.max()) == 9
    assert d.info.augment is True and d.info.num_classes == 10


def test_cifar100_reader_on_fake_files(tmp_path):
    n = 12
    rows = {}
    for name in ("train", "test"):
        rows[name] = _images(n, seed=len(name)).reshape(n, -1)
        _write_pickle(tmp_path / "cifar-100-python" / name, {
            b"data": rows[name], b"fine_labels": list(range(88, 88 + n)),
            b"coarse_labels": [0] * n,
        })
    d = load_data("cifar100", data_dir=tmp_path, val_size=2, download=False)
    assert (len(d.train), len(d.val), len(d.test)) == (10, 2, 12)
    assert d.test.y.tolist() == list(range(88, 100))  # fine labels, not coarse
    # rows are channel-planar RGB: pixel (c, h, w) sits at c*1024 + h*32 + w
    assert int(d.test.x[5, 2, 3, 4]) == int(rows["test"][5, 2 * 1024 + 3 * 32 + 4])
    _write_pickle(tmp_path / "cifar-100-python" / "train",
                  {b"data": rows["train"], b"fine_labels": [100] * n})
    with pytest.raises(ConfigError, match=r"labels span 100\.\.100; expected 0\.\.99"):
        load_data("cifar100", data_dir=tmp_path, val_size=2, download=False)


def test_svhn_reader_on_fake_files(tmp_path):
    sio = pytest.importorskip("scipy.io")
    n = 6
    xs = {}
    for name in ("train", "test"):
        xs[name] = _images(n, shape=(32, 32, 3), seed=len(name)).transpose(1, 2, 3, 0).copy()
        y = np.array([[10], [1], [2], [3], [10], [9]], dtype=np.uint8)
        sio.savemat(tmp_path / f"{name}_32x32.mat", {"X": xs[name], "y": y})
    d = load_data("svhn", data_dir=tmp_path, val_size=1, download=False)
    assert d.test.y.tolist() == [0, 1, 2, 3, 0, 9]  # label 10 means digit 0
    assert d.test.x.shape == (6, 3, 32, 32) and d.test.x.dtype == torch.uint8
    assert int(d.test.x[4, 1, 7, 20]) == int(xs["test"][7, 20, 1, 4])  # HWCN -> NCHW


def test_svhn_without_scipy_says_pip_install(tmp_path, monkeypatch):
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes the import fail
    with pytest.raises(ConfigError, match="pip install scipy"):
        load_data("svhn", data_dir=tmp_path, download=False)


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_1",
                  {b"data": _Evil(f"touch {marker}"), b"labels": [0]})
    with pytest.raises(ConfigError, match=r"refusing global (posix|os|nt)\.system"):
        load_data("cifar10", data_dir=tmp_path, val_size=1, download=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- names, paths, downloads


def test_unknown_dataset_suggests_close_name(tmp_path):
    with pytest.raises(ConfigError, match=r"did you mean 'cifar10'"):
        load_data("cifar1")
    with pytest.raises(ConfigError, match="unknown dataset"):
        check_available("imagenet", tmp_path)


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEROGRAD_DATA_DIR", str(tmp_path / "env"))
    assert D.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert D.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("ZEROGRAD_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert D.resolve_data_dir(None) == tmp_path / "data"


def test_missing_files_offline_names_file_and_url(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError("no network\nat all")

    monkeypatch.setattr(download, "fetch", offline)
    with pytest.raises(ConfigError) as e:
        check_available("cifar10", tmp_path)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert DATASETS["cifar10"].url in msg and "download failed" in msg and "--data-dir" in msg
    assert not list(tmp_path.glob(".*.part"))  # temp download removed


def test_missing_files_without_download_never_fetches(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", lambda url, dest: pytest.fail("network used"))
    with pytest.raises(ConfigError, match="download disabled") as e:
        load_data("svhn", data_dir=tmp_path, download=False)
    assert "train_32x32.mat" in str(e.value) and "ufldl.stanford.edu" in str(e.value)
    check_available("digits", tmp_path, download=False)  # bundled: nothing to fetch


def test_download_verifies_md5_then_extracts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write_cifar10(src)
    archive = _tar_of(src, tmp_path / "cifar.tar.gz")
    fetched = []

    def fake_fetch(url, dest):
        fetched.append(url)
        Path(dest).write_bytes(archive.read_bytes())

    monkeypatch.setattr(download, "fetch", fake_fetch)
    root = tmp_path / "root"
    monkeypatch.setitem(D._DOWNLOADS, "cifar10", ((D._CIFAR10_URL, "0" * 32),))
    with pytest.raises(ConfigError, match="checksum mismatch"):
        check_available("cifar10", root)
    assert not (root / "cifar-10-batches-py").exists() and not list(root.glob(".*"))

    monkeypatch.setitem(D._DOWNLOADS, "cifar10", ((D._CIFAR10_URL, download._md5(archive)),))
    check_available("cifar10", root)
    assert fetched == [D._CIFAR10_URL] * 2
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no leftovers
    d = load_data("cifar10", data_dir=root, val_size=10, download=False)
    assert len(d.train) == 90 and len(d.test) == 20


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "ok/../../escape.txt", "/tmp/zerograd-abs.txt"])
def test_safe_extract_refuses_paths_outside(tmp_path, name):
    archive = _tar_with(tmp_path / "bad.tar.gz", tarfile.TarInfo(name))
    dest = tmp_path / "dest"
    with pytest.raises(ConfigError, match="unsafe path"):
        download.safe_extract(archive, dest)
    assert not (tmp_path / "escape.txt").exists() and not list(dest.rglob("*"))


def test_safe_extract_refuses_links(tmp_path):
    link = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ConfigError, match="link or device"):
        download.safe_extract(_tar_with(tmp_path / "bad.tar.gz", link), tmp_path / "dest")


def _crops_and_flips(x_aug: torch.Tensor, original: torch.Tensor, padded: torch.Tensor) -> set:
    """The (dy, dx, flip) each augmented image is a crop of `padded` with; asserts one exists."""
    h, w = original.shape[-2:]
    pad = (padded.shape[-1] - w) // 2
    used = set()
    for i in range(len(x_aug)):
        matches = {(dy, dx, flip) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   for flip in (False, True)
                   if torch.equal(x_aug[i], padded[i, :, dy:dy + h, dx:dx + w].flip(-1) if flip
                                  else padded[i, :, dy:dy + h, dx:dx + w])}
        assert matches, f"augmented image {i} is not a padded crop/flip of the original"
        used |= matches
    return used


def test_reflect_padding_crops_a_reflected_copy_with_the_same_draws():
    split, n = _index_split(64), 64
    x = D.to_float(split.x)

    def run(**kw):
        g = torch.Generator().manual_seed(0)
        return next(batches(split, n, shuffle=False, augment=True, generator=g, **kw))[0]

    reflect = run(pad_mode="reflect")
    used = _crops_and_flips(reflect, x, torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect"))
    assert {f for _, _, f in used} == {False, True}
    assert (reflect == 0).float().mean() < 0.05 < (run() == 0).float().mean()  # no zero border
    inner = run()[..., 2:-2, 2:-2] == reflect[..., 2:-2, 2:-2]  # same offsets and flips drawn
    assert inner.float().mean() > 0.5


def test_flip_off_never_flips():
    split = _index_split(64)
    x = D.to_float(split.x)
    g = torch.Generator().manual_seed(0)
    (x_aug, _), = batches(split, 64, shuffle=False, augment=True, generator=g, flip=False)
    used = _crops_and_flips(x_aug, x, torch.nn.functional.pad(x, (4, 4, 4, 4)))
    assert {f for _, _, f in used} == {False}


def test_rotation_source_of_a_quarter_turn_is_rot90_counter_clockwise():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.uint8).reshape(2, 3, 5, 5)
    i = torch.arange(5).view(1, 5, 1).expand(2, 5, 5)
    j = torch.arange(5).view(1, 1, 5).expand(2, 5, 5)
    for degrees, k in ((90.0, 1), (-90.0, -1), (0.0, 0)):
        si, sj, inside = augment._rotated_source(i, j, torch.full((2, 1, 1), degrees, dtype=torch.float64))
        assert bool(inside.all())
        out = x.permute(0, 2, 3, 1)[torch.arange(2)[:, None, None], si, sj].permute(0, 3, 1, 2)
        assert torch.equal(out, torch.rot90(x, k, dims=(-2, -1)))


def test_rotation_is_repeatable_moves_pixels_and_fills_zeros():
    split = _index_split(32)

    def run(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return next(batches(split, 32, shuffle=False, augment=True, generator=g, **kw))[0]

    rotated = run(0, rotate=15.0)
    assert torch.equal(rotated, run(0, rotate=15.0)) and not torch.equal(rotated, run(1, rotate=15.0))
    plain = run(0)
    assert not torch.equal(rotated, plain)
    # nearest-pixel rotation: every value is a pixel of the image or the zero fill
    for a, img in zip(rotated, D.to_float(split.x)):
        assert set(a.unique().tolist()) <= set(img.unique().tolist()) | {0.0}


def test_bad_pad_mode_is_refused():
    with pytest.raises(ConfigError, match="pad_mode='wrap' is invalid: must be one of zeros, reflect"):
        next(batches(_index_split(4), 4, shuffle=False, augment=True, pad_mode="wrap"))


@pytest.mark.parametrize("rotate", [0.0, 10.0])
def test_batches_from_start_equal_the_tail_of_a_full_pass(rotate):
    """Resuming mid-epoch starts at batch k: it must be bitwise batch k of the whole epoch."""
    split = _index_split(50)

    def epoch(start):
        g = torch.Generator().manual_seed(3)
        return list(batches(split, 8, shuffle=True, augment=True, generator=g, rotate=rotate, start=start))

    full = epoch(0)
    for k in (1, 4, 6, 7):
        tail = epoch(k)
        assert len(tail) == len(full) - k
        for (xa, ya), (xb, yb) in zip(full[k:], tail):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(ConfigError, match="start -1"):
        next(batches(split, 8, shuffle=False, augment=False, start=-1))
