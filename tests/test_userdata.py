"""Your own data: an ImageFolder of PNGs and an .npz train end to end, mean/std are computed and
recorded, every bad input is one line before any work, and the streamed training split gives
the in-memory results bit for bit (any number of loader workers, resumed mid-epoch, sharded)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zerograd import ConfigError, load_config, train
from zerograd.augment import draw_resized, resized_crop
from zerograd.config import augmentation, validate
from zerograd.data import Split, StreamedSplit, batches, load_data
from zerograd.files import read_yaml
from zerograd.runfolder import resume_config
from zerograd.runtime import epoch_generator
from zerograd.training.distributed import Parallel
from zerograd.userdata import _inspected, canonical, fingerprint, inspect, parse_bytes

from .conftest import Crash, CrashAt

TINY = ["epochs=2", "batch_size=16", "val_size=8", "test_restarts=1", "test_pgd_steps=2",
        "val_pgd_steps=2", "lr_max=0.05", "model_args.width=4"]


def make_folder(root: Path, n: int = 48, size=(12, 12), classes=3, mode="RGB", test=True,
                val: int = 0, ext=".png", seed=0) -> Path:
    """A folder of PNGs whose class sets the mean brightness (learnable, not trivial)."""
    rng = np.random.RandomState(seed)
    splits = [("train", n)] + ([("test", max(n // 4, classes))] if test else []) + ([("val", val)] if val else [])
    for split, count in splits:
        for i in range(count):
            c = i % classes
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            img = (rng.rand(*shape) * 60 + c * 90).astype(np.uint8)
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, mode).save(folder / f"img{i:03d}{ext}")
    return root


def make_npz(path: Path, n: int = 48, layout="NHWC", classes=3, **override) -> Path:
    rng = np.random.RandomState(1)

    def images(k):
        x = (rng.rand(k, 10, 10, 3) * 255).astype(np.uint8)
        return x if layout == "NHWC" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    arrays = {"x_train": images(n), "y_train": np.arange(n) % classes,
              "x_test": images(12), "y_test": np.arange(12) % classes}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def config(dataset: str, *extra: str):
    return load_config("quickstart", [f"dataset={dataset}", *TINY, *extra])


def records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key in ("time/epoch_s", "time/epoch_end_s"):
            record.pop(key, None)
        out.append(record)
    return out


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


# --------------------------------------------------------------------------- end to end


def test_a_folder_of_pngs_trains_and_records_the_computed_mean_and_std(tmp_path):
    root = make_folder(tmp_path / "imgs")
    run = train(config(f"folder:{root}"), tmp_path / "run", quiet=True)
    recorded = read_yaml(tmp_path / "run" / "config.yaml", "config")
    assert recorded["dataset"] == f"folder:{root}"
    files = sorted((root / "train").rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(f)) for f in files]).astype(np.float64) / 255
    train_idx = np.random.RandomState(0).permutation(len(files))[8:]  # val_size 8 carved first
    ours = pixels[train_idx]
    assert recorded["mean"] == pytest.approx(ours.mean((0, 1, 2)).tolist(), abs=1e-6)
    assert recorded["std"] == pytest.approx(ours.std((0, 1, 2)).tolist(), abs=1e-6)
    assert run.model[0].mean.flatten().tolist() == pytest.approx(recorded["mean"])
    assert run.data.info.shape == (3, 12, 12) and run.data.info.num_classes == 3
    assert len(run.data.train) == 40 and len(run.data.val) == 8 and run.result["n"] == 12
    assert augmentation(run.cfg)["augment"] is True  # your own data is augmented by default


def test_an_npz_trains_nhwc_and_nchw_alike(tmp_path):
    nhwc = make_npz(tmp_path / "a.npz", layout="NHWC")
    nchw = make_npz(tmp_path / "b.npz", layout="NCHW")
    a = load_data(f"arrays:{nhwc}", val_size=8)
    b = load_data(f"arrays:{nchw}", val_size=8)
    assert a.train.x.shape == (40, 3, 10, 10) and torch.equal(a.train.x, b.train.x)
    assert torch.equal(a.test.y, b.test.y) and a.info.num_classes == 3
    run = train(config(f"arrays:{nchw}"), tmp_path / "run", quiet=True)
    assert len(run.cfg.mean) == 3 and run.result["n"] == 12


def test_a_val_folder_is_used_capped_by_val_size_and_grayscale_stays_one_channel(tmp_path):
    root = make_folder(tmp_path / "g", mode="L", val=10, ext=".PNG")
    data = load_data(f"folder:{root}", val_size=6)
    assert data.info.shape == (1, 12, 12)
    assert len(data.train) == 48 and len(data.val) == 6  # nothing carved from train
    whole = load_data(f"folder:{root}", val_size=100)
    assert len(whole.val) == 10


def test_image_size_resizes_mixed_sizes(tmp_path):
    root = make_folder(tmp_path / "m", n=6)
    Image.fromarray(np.zeros((20, 16, 3), np.uint8)).save(root / "train" / "c0" / "big.png")
    with pytest.raises(ConfigError, match=r"images differ in size: .*big.png is 16x20, .*img000.png is 12x12 .*image_size"):
        load_data(f"folder:{root}")
    data = load_data(f"folder:{root}", image_size=(8, 10), val_size=0)
    assert data.train.x.shape[1:] == (3, 8, 10) and data.test.x.shape[1:] == (3, 8, 10)
    cfg = validate(config(f"folder:{root}", "image_size=8"))
    assert cfg.image_size == [8, 8]


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("extra", [["crop=pad", "diagnostics.probe=8"], ["crop=resized"]])
def test_streaming_gives_the_in_memory_results_bit_for_bit(tmp_path, extra):
    root = make_folder(tmp_path / "imgs", n=40)
    runs = {}
    for name, keys in (("memory", ["stream=false"]), ("w0", ["stream=true", "loader_workers=0"]),
                       ("w2", ["stream=true", "loader_workers=2"])):
        run = train(config(f"folder:{root}", *keys, *extra), tmp_path / name, quiet=True)
        runs[name] = tmp_path / name
        assert isinstance(run.data.train, StreamedSplit) == (name != "memory")
    for name in ("w0", "w2"):
        assert records(runs[name]) == records(runs["memory"])
        a, b = weights(runs[name]), weights(runs["memory"])
        assert all(torch.equal(a[k], b[k]) for k in b)


def streamed_and_memory(tmp_path, workers=1):
    root = make_folder(tmp_path / "imgs", n=37)
    memory = load_data(f"folder:{root}", val_size=0)
    streamed = load_data(f"folder:{root}", val_size=0, stream=True, workers=workers)
    return memory, streamed


def test_start_on_the_streamed_split_is_the_tail_of_a_full_pass(tmp_path):
    memory, streamed = streamed_and_memory(tmp_path)
    kw = {"shuffle": True, "augment": True, "rotate": 10.0}
    full = list(batches(memory.train, 8, generator=epoch_generator(0, 3), **kw))
    tail = list(batches(streamed.train, 8, generator=epoch_generator(0, 3), start=2, **kw))
    assert len(full) == 5 and len(tail) == 3
    for (x, y), (xs, ys) in zip(full[2:], tail):
        assert torch.equal(x, xs) and torch.equal(y, ys)


@pytest.mark.parametrize("world, spread", [(3, 1), (4, 2)])
def test_a_rank_reads_only_its_rows_and_gets_its_shard_of_the_full_batch(tmp_path, world, spread):
    memory, streamed = streamed_and_memory(tmp_path, workers=0)
    kw = {"shuffle": True, "augment": True, "crop": "resized"}
    for rank in range(world):
        par = Parallel(device=torch.device("cpu"), rank=rank, world_size=world, spread=spread)
        full = batches(memory.train, 10, generator=epoch_generator(1, 1), **kw)
        mine = batches(streamed.train, 10, generator=epoch_generator(1, 1), rows=par.rows, **kw)
        for (x, y), (xs, ys) in zip(full, mine, strict=True):
            lo, hi = par.rows(len(y))
            assert len(xs) == hi - lo < len(y)
            a, b = par.split(x, y), par.split(xs, ys)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.part == b.part


def test_the_training_split_streams_above_the_budget(tmp_path):
    root = make_folder(tmp_path / "imgs", n=12)
    nbytes = 12 * 3 * 12 * 12
    assert isinstance(load_data(f"folder:{root}", val_size=0, stream="auto", budget=nbytes - 1).train,
                      StreamedSplit)
    assert isinstance(load_data(f"folder:{root}", val_size=0, stream="auto", budget=nbytes).train, Split)
    npz = f"arrays:{make_npz(tmp_path / 'a.npz')}"  # already in host memory: on the CPU, never by auto
    assert isinstance(load_data(npz, val_size=0, stream="auto", budget=0).train, Split)
    assert isinstance(load_data(npz, val_size=0, stream=True).train, StreamedSplit)
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1.5 MB") == 1_500_000 and parse_bytes(7) == 7


# --------------------------------------------------------------------------- random-resized-crop


def test_random_resized_crop_shapes_range_determinism_and_identity():
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    draws = draw_resized(6, torch.Generator().manual_seed(5), True)
    out = resized_crop(x, draws)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, resized_crop(x, draw_resized(6, torch.Generator().manual_seed(5), True)))
    assert not torch.equal(out, resized_crop(x, draw_resized(6, torch.Generator().manual_seed(6), True)))
    same = draw_resized(6, torch.Generator().manual_seed(5), False, scale=(1, 1), ratio=(1, 1))
    torch.testing.assert_close(resized_crop(x, same), x, atol=1e-6, rtol=0)
    flipped = (*same[:4], torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(resized_crop(x, flipped), x.flip(3), atol=1e-6, rtol=0)
    quarter = draw_resized(1, None, False, scale=(0.25, 0.25), ratio=(1, 1))
    quarter = (quarter[0], quarter[1], torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
               quarter[4])  # the top-left 8x8 corner, zoomed 2x
    corner = resized_crop(x[:1], quarter)
    torch.testing.assert_close(corner[..., 1:-1:2, 1:-1:2].mean(), x[:1, :, :8, :8][..., :-1, :-1].mean(),
                               atol=0.05, rtol=0)
    assert math.isclose(float(quarter[0]), 0.25)


# --------------------------------------------------------------------------- bad input


def _truncated(root: Path) -> str:
    make_folder(root)
    f = root / "train" / "c1" / "img004.png"
    f.write_bytes(f.read_bytes()[:60])  # the header survives, the pixels do not
    return f"folder:{root}"


def _bad_case(tmp: Path, case: str):
    """(dataset value, extra keys, a regex of the one line)."""
    if case == "missing":
        return f"folder:{tmp / 'nope'}", [], r"dataset='folder:.*nope': no such folder"
    if case == "no images":
        (tmp / "e" / "train" / "a").mkdir(parents=True)
        (tmp / "e" / "test").mkdir()
        return f"folder:{tmp / 'e'}", [], r"dataset folder .* has no images under .*train"
    if case == "one class":
        root = make_folder(tmp / "one", classes=1)
        return f"folder:{root}", [], r"has one class \('c0'\)"
    if case == "no test":
        return f"folder:{make_folder(tmp / 'nt', test=False)}", [], r"has no test folder"
    if case == "unknown class":
        root = make_folder(tmp / "u")
        (root / "test" / "zebra").mkdir()
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "test" / "zebra" / "z.png")
        return f"folder:{root}", [], r"test/zebra is not a class of train \(c0, c1, c2\)"
    if case == "unreadable":
        root = make_folder(tmp / "bad")
        (root / "train" / "c0" / "junk.jpg").write_bytes(b"not an image")
        return f"folder:{root}", [], r"cannot read image .*junk.jpg: UnidentifiedImageError"
    if case == "corrupt":
        return _truncated(tmp / "cor"), [], r"cannot read image .*img004.png: "
    if case == "corrupt streamed":
        return _truncated(tmp / "cor"), ["stream=true", "loader_workers=1"], r"cannot read image .*img004.png: "
    if case == "16-bit":
        root = make_folder(tmp / "deep")
        Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(root / "train" / "c2" / "deep.png")
        return f"folder:{root}", [], r"image .*deep.png has 16-bit pixels \(mode I;16\), which would be clipped"
    if case == "mixed sizes":
        root = make_folder(tmp / "mix")
        Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(root / "test" / "c1" / "small.png")
        return f"folder:{root}", [], r"images differ in size: .*small.png is 12x9"
    if case == "image_size on npz":
        return f"arrays:{make_npz(tmp / 'a.npz')}", ["image_size=8"], r"image_size=8 resizes folder: datasets only"
    if case == "npz labels":
        path = make_npz(tmp / "l.npz", y_test=np.arange(12) % 5)
        return f"arrays:{path}", [], r"y_test labels span 0..4; expected 0..2"
    if case == "npz key":
        return f"arrays:{make_npz(tmp / 'k.npz', x_test=None)}", [], r"has no x_test"
    if case == "npz dtype":
        path = make_npz(tmp / "d.npz", x_train=np.zeros((48, 10, 10, 3), np.float32))
        return f"arrays:{path}", [], r"x_train has dtype float32; expected uint8"
    if case == "npz float labels":
        path = make_npz(tmp / "f.npz", y_train=np.zeros(48))
        return f"arrays:{path}", [], r"y_train has dtype float64"
    if case == "npz ambiguous":
        path = make_npz(tmp / "amb.npz", x_train=np.zeros((48, 3, 5, 3), np.uint8))
        return f"arrays:{path}", [], r"channel axis is ambiguous"
    if case == "npz pickle":
        path = tmp / "p.npz"
        np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1, int),
                 x_test=np.zeros(1), y_test=np.zeros(1, int))
        return f"arrays:{path}", [], r"x_train has dtype object"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "no images", "one class", "no test", "unknown class",
                                  "unreadable", "corrupt", "corrupt streamed", "16-bit", "mixed sizes",
                                  "image_size on npz", "npz labels", "npz key", "npz dtype",
                                  "npz float labels", "npz ambiguous", "npz pickle"])
def test_bad_data_is_one_line_before_any_work(tmp_path, case):
    dataset, extra, pattern = _bad_case(tmp_path, case)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=pattern) as e:
        train(config(dataset, *extra) if case not in ("missing",) else load_config(
            "quickstart", [f"dataset={dataset}"]), out, quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_a_streamed_run_resumes_bitwise_with_other_loader_settings(tmp_path):
    from zerograd.cli import main
    from zerograd.runfolder import RunFolder

    from .conftest import Crash, CrashAt

    root = make_folder(tmp_path / "imgs", n=40)
    cfg = config(f"folder:{root}", "stream=true", "loader_workers=1", "epochs=3")
    train(cfg, tmp_path / "whole", quiet=True)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callbacks=[CrashAt(5)])  # in epoch 2 of 3 steps
    assert RunFolder(tmp_path / "cut").read_config().mean == cfg_mean(tmp_path / "whole")
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet", "--set", "loader_workers=0",
                 "--set", "stream=false"]) == 0
    assert records(tmp_path / "cut") == records(tmp_path / "whole")
    a, b = weights(tmp_path / "cut"), weights(tmp_path / "whole")
    assert all(torch.equal(a[k], b[k]) for k in b)


def cfg_mean(run: Path) -> list:
    return read_yaml(run / "config.yaml", "config")["mean"]


def test_two_processes_streaming_their_shards_match_two_in_memory(tmp_path):
    from tests.test_distributed import SMALL, torchrun

    root = make_folder(tmp_path / "imgs", n=64, classes=3)
    keys = [*SMALL[:3], "val_size=16", "test_n=12", "test_restarts=1", "test_pgd_steps=2",
            f"dataset=folder:{root}", "batch_size=15", "crop=resized"]
    for name, extra in (("memory", ["stream=false"]), ("streamed", ["stream=true", "loader_workers=1"])):
        sets = [a for s in keys + extra for a in ("--set", s)]
        proc = torchrun(["train", "--preset", "quickstart", *sets, "--out", str(tmp_path / name), "--quiet"])
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert records(tmp_path / "streamed") == records(tmp_path / "memory")
    a, b = weights(tmp_path / "streamed"), weights(tmp_path / "memory")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_hidden_files_and_folders_are_not_images_or_classes(tmp_path):
    """macOS copies leave .DS_Store and ._name.png resource forks (not images) beside the
    pictures; Jupyter leaves .ipynb_checkpoints. None is a class or an image."""
    root = make_folder(tmp_path / "imgs")
    for split in ("train", "test"):
        (root / split / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (root / split / "c0" / "._img000.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(hidden / "x.png")
    facts = inspect(canonical(f"folder:{root}"))
    assert facts.classes == ("c0", "c1", "c2") and facts.sizes == {"train": 48, "test": 12}


def test_images_in_sub_folders_of_a_class_belong_to_it(tmp_path):
    """As torchvision's ImageFolder: train/c0/2019/x.png is a c0 image, not silently dropped
    (half a class lost would train and report on less data than the user has)."""
    root = make_folder(tmp_path / "imgs")
    for split in ("train", "test"):
        for c in ("c0", "c1", "c2"):
            nested = root / split / c / "more" / "deeper"
            nested.mkdir(parents=True)
            for f in sorted((root / split / c).glob("*.png"))[::2]:
                f.rename(nested / f.name)
    facts = inspect(canonical(f"folder:{root}"))
    assert facts.classes == ("c0", "c1", "c2") and facts.sizes == {"train": 48, "test": 12}
    _, splits, _ = _inspected(canonical(f"folder:{root}"), None)
    files, labels = splits["train"]
    assert all(f"/c{y}/" in f for f, y in zip(files, labels)) and any("/deeper/" in f for f in files)


def test_resuming_on_a_changed_folder_is_refused_and_on_the_same_one_continues(tmp_path):
    """An image removed between the crash and --resume shifts the validation carve and every
    epoch's order: the resumed run would silently be another run. Refused in one line, before
    any file of the run changes; with the image back, the run resumes."""
    root = make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(config(f"folder:{root}"), out, quiet=True, callbacks=[CrashAt(3)])
    gone = root / "train" / "c2" / "img005.png"
    kept = gone.read_bytes()
    gone.unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"changed since the run started \(images train 48 -> 47, "
                                          r"test 12 -> 12; ") as e:
        train(resume_config(out)[0], out, quiet=True, resume=True)
    assert "\n" not in str(e.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    text = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(text.replace("  images:\n", "  images: [1]\n  was:\n"))
    with pytest.raises(ConfigError, match=r"\(images train \? -> 47, test \? -> 12; "):
        train(resume_config(out)[0], out, quiet=True, resume=True)  # a hand-edited record: still one line
    (out / "config.yaml").write_text(text)
    gone.write_bytes(kept)
    assert train(resume_config(out)[0], out, quiet=True, resume=True).result["n"] == 12


def test_an_npz_fingerprint_sees_changed_pixels_of_the_same_shape(tmp_path):
    """From the zip directory's CRC-32s: no array is read, and a relabelled or edited .npz
    (same shapes, same size) is still another fingerprint."""
    path = make_npz(tmp_path / "a.npz")
    first = fingerprint(f"arrays:{path}")
    assert first["images"] == {"train": 48, "test": 12}
    assert fingerprint(f"arrays:{path}") == first
    make_npz(path, y_train=(np.arange(48) + 1) % 3)
    assert fingerprint(f"arrays:{path}")["fingerprint"] != first["fingerprint"]


def test_an_image_added_in_a_class_sub_folder_is_seen_by_the_next_inspection(tmp_path):
    """The inspection cache is keyed by folder times: a class's sub-folders count too."""
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "c1" / "more").mkdir()
    name = canonical(f"folder:{root}")
    assert inspect(name).sizes["train"] == 48
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "train" / "c1" / "more" / "x.png")
    assert inspect(name).sizes["train"] == 49
