"""Every row of docs/errors.md: the bad input (config value, CLI argument, file, folder, data)
gets exactly the documented message, as one line on stderr, exit code 2, no traceback, and
leaves every file and folder as it was. A few rows also run through a real subprocess."""
import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zerograd.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
ROW = re.compile(r"^\| (\d+) \| [^|]+ \| `(.+)` \| `(.+)` \|$")
SUBPROCESS_ROWS = {  # through `python -m zerograd`; none that would try a download
    "zerograd fly", "zerograd eval EVIL", "zerograd train --resume BROKEN",
    "zerograd train --preset cifar10-zerograd --data-dir JUNKDATA --out OUT"}
TINY = ["epochs=1", "model_args.width=4", "val_size=50", "test_n=20", "test_restarts=1",
        "test_pgd_steps=2", "val_pgd_steps=2"]


def rows() -> list[tuple[str, str, str]]:
    found = []
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            found.append((m[1], m[2], m[3].replace("\\|", "|")))
    return found


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("made") / "run"
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", str(out),
                 *[a for s in TINY for a in ("--set", s)]]) == 0
    return out


def _copy_file(src: Path, dest: Path) -> Path:
    dest.write_bytes(src.read_bytes())
    return dest


def _copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def flip_a_weight_byte(ckpt: Path) -> bytes:
    """The checkpoint's bytes with one byte flipped inside its largest tensor's data (a zip
    entry stored uncompressed): still a readable file, with one changed weight."""
    import zipfile

    data = bytearray(ckpt.read_bytes())
    with zipfile.ZipFile(ckpt) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    header = data[info.header_offset:info.header_offset + 30]
    start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    data[start + info.file_size // 2] ^= 0x40
    return bytes(data)


def fake_cifar10(root: Path, data=None, labels=None) -> Path:
    """A CIFAR-10 folder of 10-image pickles: int64 pixel values `data`, or labels as pairs."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x = np.full((10, 3072), 7 if data is None else data, dtype=np.int64)
    y = [[i % 10, 0] for i in range(10)] if labels == "pairs" else [i % 10 for i in range(10)]
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({b"data": x, b"labels": y}))
    return root


def autoattack_state_of_another_model(run: Path, tmp: Path) -> Path:
    """An AutoAttack state file written, with the arguments row AASTATE uses, for the run's
    checkpoint with its weights changed (another model, same data and settings)."""
    from zerograd.evaluate import evaluate_path

    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt.pop("sha256")
    other = tmp / "other.pt"
    torch.save({**ckpt, "model": {k: v * 1.5 if v.is_floating_point() else v
                                  for k, v in ckpt["model"].items()}}, other)
    state = tmp / "aa.state.pt"
    evaluate_path(other, attack="autoattack", version="custom", attacks=["apgd-ce"], n=4,
                  state=state, checks=False, write=False)
    other.unlink()
    return state


def make_places(tmp: Path, run: Path, needed=()) -> dict[str, Path]:
    """The files and folders the table's placeholders stand for, made under `tmp`."""
    from tests.test_checkpoint import Payload

    p = {"OUT": tmp / "out", "MISSING": tmp / "missing", "RUN": _copy(run, tmp / "run")}
    p["UNFINISHED"] = _copy(run, tmp / "unfinished")
    (p["UNFINISHED"] / "eval.json").unlink()
    p["BROKEN"] = _copy(p["UNFINISHED"], tmp / "broken")
    last = p["BROKEN"] / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:300])
    p["OLDRUN"] = _copy(p["UNFINISHED"], tmp / "oldrun")
    old = torch.load(p["OLDRUN"] / "checkpoints" / "last.pt", weights_only=True)
    old.pop("sha256")  # an older zerograd's file: no content digest
    torch.save({**old, "format": "zerograd-checkpoint-1"}, p["OLDRUN"] / "checkpoints" / "last.pt")
    p["EDITED"] = _copy(p["UNFINISHED"], tmp / "edited")
    text = (p["EDITED"] / "config.yaml").read_text()
    (p["EDITED"] / "config.yaml").write_text(text.replace("\nepochs: 1\n", "\nepochs: 4\n"))
    p["BADCFG"] = _copy(p["UNFINISHED"], tmp / "badcfg")
    (p["BADCFG"] / "config.yaml").write_text("epochs: [1\n")
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt.pop("sha256")  # the files made from it are other checkpoints, written without one
    p["EVIL"] = tmp / "evil.pt"
    torch.save({**ckpt, "extra": Payload(tmp / "pwned")}, p["EVIL"])
    p["TRUNC"] = tmp / "trunc.pt"
    p["TRUNC"].write_bytes((run / "checkpoints" / "last.pt").read_bytes()[:1000])
    p["JUNK"] = tmp / "junk.pt"
    p["JUNK"].write_bytes(bytes(range(256)) * 8)
    p["WRONG"] = tmp / "wrong.pt"
    torch.save({**ckpt, "config": {**ckpt["config"], "model_args": {"width": 16}}}, p["WRONG"])
    p["NOCFG"] = tmp / "nocfg.pt"
    torch.save({"model": ckpt["model"]}, p["NOCFG"])
    p["BADINSIDE"] = tmp / "badinside.pt"
    torch.save({"model": [1, 2], "config": "cifar10"}, p["BADINSIDE"])
    p["EMPTYDIR"] = tmp / "emptydir"
    p["EMPTYDIR"].mkdir()
    p["NONEMPTY"] = tmp / "nonempty"
    p["NONEMPTY"].mkdir()
    (p["NONEMPTY"] / "notes.txt").write_text("mine")
    p["FILE"] = tmp / "file.txt"
    p["FILE"].write_text("not a folder")
    p["BADYAML"] = tmp / "bad.yaml"
    p["BADYAML"].write_text("epochs: [3\n")
    p["LISTYAML"] = tmp / "list.yaml"
    p["LISTYAML"].write_text("- epochs\n- 3\n")
    for name in needed & set(LAZY):
        p[name] = LAZY[name](tmp, run, p)
    p["DATA"] = tmp / "data"
    p["DATA"].mkdir()
    p["JUNKDATA"] = tmp / "junkdata"
    batches = p["JUNKDATA"] / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / name).write_bytes(b"\x80\x04 not a pickle")
    return p


def _bomb(tmp: Path, run: Path, p: dict) -> Path:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp / "bomb.yaml").write_text("\n".join(lines) + "\ndescription: *a8\n")
    return tmp / "bomb.yaml"


def _recursive(tmp: Path, run: Path, p: dict) -> Path:
    (tmp / "rec.yaml").write_text("model_args: &a {width: *a}\n")
    return tmp / "rec.yaml"


def _flipped(tmp: Path, run: Path, p: dict) -> Path:
    (tmp / "flipped.pt").write_bytes(flip_a_weight_byte(run / "checkpoints" / "last.pt"))
    return tmp / "flipped.pt"


def _q_edited(tmp: Path, run: Path, p: dict) -> Path:
    folder = _copy(p["UNFINISHED"], tmp / "qedited")
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text.replace("\n  q: 0.35\n", "\n  q: 0.5\n"))
    return folder


def _bad_metrics(tmp: Path, run: Path, p: dict) -> Path:
    folder = _copy(run, tmp / "badmetrics")
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"epoch": "one", "train/loss": 1.0}\n')
    return folder


def _bad_metrics_unfinished(tmp: Path, run: Path, p: dict) -> Path:
    folder = _copy(p["UNFINISHED"], tmp / "badmetricsu")
    lines = (folder / "metrics.jsonl").read_text().splitlines(keepends=True)
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "lr": "fast"}\n' + "".join(lines[1:]))
    return folder


def _bad_config_run(tmp: Path, run: Path, p: dict) -> Path:
    folder = _copy(run, tmp / "badcfgrun")
    with open(folder / "config.yaml", "a") as f:
        f.write("method_args: [1]\n")
    return folder


def _not_json_result(tmp: Path, run: Path, p: dict) -> Path:
    folder = _copy(run, tmp / "notjson")
    (folder / "eval.json").write_text('{"robust_acc": 0.5, "clean_')
    return folder


def _bad_result(tmp: Path, run: Path, p: dict) -> Path:
    folder = _copy(run, tmp / "badresult")
    (folder / "eval.json").write_text('{"robust_acc": 0.5, "clean_acc": 0.9, "attack": {"name": "pgd"}}')
    return folder


HELD = []  # lock files held open for the rest of the session (a run folder "in use")


def _locked(tmp: Path, run: Path, p: dict) -> Path:
    """An unfinished run held by another process: its lock file flocked (by another open
    file, which conflicts even within this process), naming a process elsewhere."""
    import fcntl
    import json

    folder = _copy(p["UNFINISHED"], tmp / "locked")
    lock = folder / ".lock"
    lock.write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "since": "2026-01-01 00:00:00"}))
    f = open(lock, "rb")  # noqa: SIM115 (held until the session ends)
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD.append(f)
    return folder


def _changed_data(tmp: Path, run: Path, p: dict) -> Path:
    """An unfinished run on a folder of images (CHANGEDIMAGES) that has lost a training image
    since the run started: config.yaml records 7 training images, the folder holds 6."""
    from tests.test_userdata import make_folder

    folder = _copy(p["UNFINISHED"], tmp / "changeddata")
    p["CHANGEDIMAGES"] = make_folder(tmp / "changedimages", n=6, mode="L")
    text = (folder / "config.yaml").read_text()
    assert text.startswith("dataset: digits\n")
    text = text.replace("dataset: digits\n", f"dataset: folder:{p['CHANGEDIMAGES']}\n", 1)
    text += "data:\n  fingerprint: 0123456789abcdef\n  images: {train: 7, test: 3}\n"
    (folder / "config.yaml").write_text(text)
    return folder


def _no_val(tmp: Path, run: Path, p: dict) -> Path:
    """A checkpoint of a run trained without a validation split (val_size=0)."""
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    ckpt.pop("sha256")
    torch.save({**ckpt, "config": {**ckpt["config"], "val_size": 0}}, tmp / "noval.pt")
    return tmp / "noval.pt"


def _stale_out(tmp: Path, run: Path, p: dict) -> Path:
    """An --out folder whose run r-s0 finished with epochs=1 (the experiment STALEEXP now says 2)."""
    import shutil

    shutil.copytree(run, tmp / "staleout" / "r-s0")
    return tmp / "staleout"


def _bad_autoattack(tmp: Path, run: Path, p: dict) -> Path:
    """An experiment whose autoattack block asks for no run per row."""
    import yaml

    (tmp / "badautoattack.yaml").write_text(yaml.safe_dump({"runs": {"a": {}}, "autoattack": {"per_row": 0}}))
    return tmp / "badautoattack.yaml"


def _bad_prediction(tmp: Path, run: Path, p: dict) -> Path:
    """An experiment of runs a and b whose prediction names a row it does not have."""
    import yaml

    spec = {"runs": {"a": {}, "b": {}}, "predictions": [{"claim": "x", "row": "nope", "expect": "overfits"}]}
    (tmp / "badprediction.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "badprediction.yaml"


def _stale_experiment(tmp: Path, run: Path, p: dict) -> Path:
    """An experiment of one run, r, with the finished run's config but epochs=2."""
    import yaml

    from zerograd.runfolder import RunFolder

    base = {**RunFolder(run).read_config().to_dict(), "epochs": 2}
    base.pop("seed")
    (tmp / "stale.yaml").write_text(yaml.safe_dump({"base": base, "seeds": [0], "runs": {"r": {}}}))
    return tmp / "stale.yaml"


def _nan_weights(tmp: Path, run: Path, p: dict) -> Path:
    from safetensors.torch import save_file

    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    save_file({**state, "1.0.weight": torch.full_like(state["1.0.weight"], float("nan"))},
              str(tmp / "nan.safetensors"))
    return tmp / "nan.safetensors"


def _junk_weights(tmp: Path, run: Path, p: dict) -> Path:
    (tmp / "junk.safetensors").write_bytes(bytes(range(256)) * 8)
    return tmp / "junk.safetensors"


def _empty_weights(tmp: Path, run: Path, p: dict) -> Path:
    torch.save({"state_dict": {}}, tmp / "empty.pt")
    return tmp / "empty.pt"


NETS = """
from torch import nn

def for_32px(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, num_classes))

def three_classes(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 3))
"""


def _net_spec(factory: str):
    """A spec of a factory in a file the test writes: the placeholder is the whole spec."""
    def make(tmp: Path, run: Path, p: dict) -> Path:
        (tmp / "nets.py").write_text(NETS)
        return Path(f"module:{tmp / 'nets.py'}:{factory}")
    return make


def _net_weights(inputs: int, classes: int, name: str):
    def make(tmp: Path, run: Path, p: dict) -> Path:
        from safetensors.torch import save_file

        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(inputs, classes))
        save_file(net.state_dict(), str(tmp / name))
        return tmp / name
    return make


def _folder(kind: str):
    """A folder: dataset the rows of your own data use (tests/test_userdata.py makes them)."""
    def make(tmp: Path, run: Path, p: dict) -> Path:
        import numpy as np
        from PIL import Image

        from tests.test_userdata import make_folder

        root = tmp / kind.lower()
        if kind == "NOIMAGES":
            (root / "train" / "a").mkdir(parents=True)
            (root / "test").mkdir()
            return root
        make_folder(root, n=6, classes=1 if kind == "ONECLASS" else 3, test=kind != "NOTEST")
        if kind == "UNKNOWNCLASS":
            (root / "test" / "zebra").mkdir()
            Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(root / "test" / "zebra" / "z.png")
        if kind == "BADIMAGE":
            (root / "train" / "c0" / "junk.jpg").write_bytes(b"not an image")
        if kind == "DEEPIMAGE":
            Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(root / "train" / "c0" / "deep.png")
        if kind == "MIXEDSIZES":
            Image.fromarray(np.zeros((9, 12, 3), np.uint8)).save(root / "test" / "c1" / "small.png")
        return root
    return make


def _npz(kind: str):
    def make(tmp: Path, run: Path, p: dict) -> Path:
        import numpy as np

        from tests.test_userdata import make_npz

        change = {"BADLABELSNPZ": {"y_test": np.arange(12) % 5}, "NOKEYNPZ": {"x_test": None},
                  "FLOATNPZ": {"x_train": np.zeros((48, 10, 10, 3), np.float32)},
                  "AMBIGUOUSNPZ": {"x_train": np.zeros((48, 3, 5, 3), np.uint8)},
                  "FLOATLABELSNPZ": {"y_train": np.zeros(48)}}[kind]
        return make_npz(tmp / f"{kind.lower()}.npz", **change)
    return make


LAZY = {  # placeholders made only for the rows that use them
    "NANWEIGHTS": _nan_weights, "JUNKWEIGHTS": _junk_weights, "EMPTYWEIGHTS": _empty_weights,
    "NET32": _net_spec("for_32px"), "W32": _net_weights(1024, 10, "w32.safetensors"),
    "NET3": _net_spec("three_classes"), "W3": _net_weights(64, 3, "w3.safetensors"),
    "LOCKED": _locked, "CHANGEDDATA": _changed_data, "NOVAL": _no_val,
    "STALEOUT": _stale_out, "STALEEXP": _stale_experiment, "BADPREDICTION": _bad_prediction,
    "BADAUTOATTACK": _bad_autoattack,
    "CKPTFILE": lambda tmp, run, p: _copy_file(run / "checkpoints" / "epoch-1.pt", tmp / "epoch-1.pt"),
    "KEPTCOPY": lambda tmp, run, p: _copy(p["RUN"], tmp / "kept"),
    **{k: _folder(k) for k in ("NOIMAGES", "ONECLASS", "NOTEST", "UNKNOWNCLASS", "BADIMAGE", "MIXEDSIZES",
                                      "DEEPIMAGE")},
    **{k: _npz(k) for k in ("BADLABELSNPZ", "NOKEYNPZ", "FLOATNPZ", "AMBIGUOUSNPZ", "FLOATLABELSNPZ")},
    "BADCFGRUN": _bad_config_run, "BADRESULT": _bad_result, "NOTJSON": _not_json_result,
    "BOMBYAML": _bomb, "RECYAML": _recursive, "FLIPPED": _flipped, "QEDITED": _q_edited,
    "BADMETRICS": _bad_metrics, "BADMETRICSU": _bad_metrics_unfinished,
    "HOTDATA": lambda tmp, run, p: fake_cifar10(tmp / "hotdata", data=300),
    "BADLABELS": lambda tmp, run, p: fake_cifar10(tmp / "badlabels", labels="pairs"),
    "AASTATE": lambda tmp, run, p: autoattack_state_of_another_model(run, tmp),
}


def snapshot(root: Path) -> dict:
    """Every path under root with its content hash (folders: None)."""
    return {str(q.relative_to(root)): None if q.is_dir() else hashlib.sha256(q.read_bytes()).hexdigest()
            for q in sorted(root.rglob("*"))}


def registries() -> dict[str, str]:
    """The name lists messages print, as the placeholders the table shows them by (so a new
    preset or method does not change the table)."""
    from zerograd.config import preset_names
    from zerograd.data import DATASETS
    from zerograd.methods import METHODS
    from zerograd.models import MODELS

    return {"PRESETS": ", ".join(preset_names()), "METHODS": ", ".join(sorted(METHODS)),
            "MODELS": ", ".join(sorted(MODELS)), "DATASETS": ", ".join(sorted(DATASETS))}


def substitute(text: str, places: dict[str, Path]) -> str:
    for name in sorted(places, key=lambda n: -len(str(places[n]))):  # longest path first
        text = text.replace(str(places[name]), name)
    for name, names in registries().items():
        text = text.replace(f"valid: {names}", f"valid: {name}")
    return text.replace(f"(choose from {subcommands()})", "(choose from COMMANDS)")


def subcommands() -> str:
    """The CLI's subcommands as argparse lists them, so new ones don't break the table."""
    from zerograd.cli import build_parser

    action = next(a for a in build_parser()._subparsers._group_actions if a.choices)
    return ", ".join(repr(c) for c in action.choices)


def test_the_table_has_at_least_25_distinct_rows():
    table = rows()
    assert len(table) >= 25
    assert SUBPROCESS_ROWS <= {r[1] for r in table}
    assert len({r[0] for r in table}) == len(table) and len({r[1] for r in table}) == len(table)


@pytest.mark.parametrize("num, command, message", rows(), ids=[r[0] for r in rows()])
def test_bad_input_gets_the_documented_line(num, command, message, tmp_path, finished_run, capsys,
                                            monkeypatch):
    from zerograd import download

    monkeypatch.setattr(download, "fetch", lambda url, dest: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)[1:]  # drop "zerograd"
    places = make_places(tmp_path, finished_run, needed={p for w in words for p in re.split("[=:/]", w)})
    argv = [str(places.get(w, w)) for w in words]
    argv = [re.sub(r"(?<=:)[A-Z]+$", lambda m: str(places.get(m[0], m[0])), w) for w in argv]
    argv = [re.sub(r"^[A-Z]+(?=/)", lambda m: str(places.get(m[0], m[0])), w) for w in argv]  # RUN/eval.json
    before = snapshot(tmp_path)
    if command in SUBPROCESS_ROWS:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ZEROGRAD_DATA_DIR": str(places["DATA"])}
        proc = subprocess.run([sys.executable, "-m", "zerograd", *argv], capture_output=True, text=True,
                              check=False, env=env, timeout=300, cwd=tmp_path)
        code, err = proc.returncode, proc.stderr
    else:
        try:
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code
        err = capsys.readouterr().err
    assert code == 2, shlex.join(argv)
    assert substitute(err, places) == message + "\n"  # exactly one line, no traceback
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "pwned").exists()
