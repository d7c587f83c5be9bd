"""`zerograd eval --model SPEC --weights FILE --dataset NAME`: weights zerograd did not train,
evaluated by the same code as a run. The clean accuracy equals an independent forward pass
(with and without a normalization in front); safetensors, a plain .pt state_dict, one under
'state_dict' or 'model', and DataParallel's `module.` prefix all load; a zerograd export or
checkpoint evaluates as its run does; every bad input is one line and exit 2, before any work."""
import json
import re
import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zerograd.cli import main
from zerograd.data import DATASETS, load_data, to_float
from zerograd.evaluate import evaluate_external
from zerograd.runfolder import RunFolder, external_results_path

NET = """
import torch
from torch import nn

def make(num_classes, in_channels, hidden=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))

class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1))
        self.register_buffer("std", torch.ones(1))

    def forward(self, x):
        return (x - self.mean) / self.std

def own_normalize(num_classes, in_channels):  # keys 0.mean, 0.std, 1.*: a zerograd export's
    return nn.Sequential(Scale(), nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes)))

def not_a_module(num_classes, in_channels):
    return "net"

def for_32px(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, num_classes))

def three_classes(num_classes, in_channels):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, 3))
"""
N = 120
QUICK = ["--n", str(N), "--steps", "3", "--restarts", "1", "--eps", "0.1", "--quiet"]


def make_net(hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def fitted(shift: float = 0.0, scale: float = 1.0) -> nn.Module:
    """The factory's network, fitted in a moment on digits seen as (x - shift) / scale, so its
    accuracies are far from chance and depend on the normalization it gets."""
    torch.manual_seed(0)
    net = make_net()
    train = load_data("digits", val_size=0).train
    x, y = (to_float(train.x) - shift) / scale, train.y
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def accuracy_of(net: nn.Module, shift=0.0, scale=1.0, n: int = N) -> float:
    """Clean accuracy on the first n test digits, computed here without zerograd's evaluation."""
    test = load_data("digits", val_size=0, test_subset=n).test
    with torch.no_grad():
        logits = net((to_float(test.x) - torch.tensor(shift).reshape(1, -1, 1, 1))
                     / torch.tensor(scale).reshape(1, -1, 1, 1))
    return (logits.argmax(1) == test.y).float().mean().item()


@pytest.fixture
def spec(tmp_path) -> str:
    (tmp_path / "net.py").write_text(NET)
    return f"module:{tmp_path / 'net.py'}:make"


def run_json(capsys, *argv) -> dict:
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_weights_format_gives_the_independent_clean_accuracy(tmp_path, spec, capsys):
    net = fitted()
    expected = accuracy_of(net)
    assert expected > 0.5
    state = net.state_dict()
    files = {"plain.safetensors": None, "plain.pt": state, "wrapped.pth": {"state_dict": state},
             "entry.pt": {"model": state, "epoch": 3},
             "recipe.pt": {"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}, "loss": 0.1},
             "parallel.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()}}}
    results = []
    for name, content in files.items():
        path = tmp_path / name
        if content is None:
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(content, path)
        result = run_json(capsys, "--model", spec, "--weights", str(path), "--dataset", "digits",
                          *QUICK)
        assert result["clean_acc"] == pytest.approx(expected, abs=1e-9), name
        assert 0 <= result["robust_acc"] <= result["clean_acc"]
        assert result["checkpoint_kind"] == "external" and result["normalization"] is None
        assert result["method"] is None and result["train_eps"] is None and result["run"] is None
        assert result["model"] == spec and result["model_args"] == {}  # the factory's defaults
        target = external_results_path(path, "digits", "pgd-3-1", N, "-eps0.1")
        assert result["results_file"] == str(target)
        assert json.loads(target.read_text())["clean_acc"] == result["clean_acc"]
        results.append(result)
    # the same network, the same seed: the same attack result whichever file held it
    assert len({(r["clean_acc"], r["robust_acc"]) for r in results}) == 1
    assert all(r["checks_passed"] is not None and len(r["checks"]) >= 3 for r in results)


def test_normalization_goes_in_front_only_when_asked(tmp_path, spec, capsys):
    info = DATASETS["digits"]
    mean, std = list(info.mean), list(info.std)
    net = fitted(mean[0], std[0])  # a network trained on normalized inputs
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    common = ["--model", spec, "--weights", str(tmp_path / "w.safetensors"), "--dataset", "digits",
              "--no-checks", *QUICK]
    raw = run_json(capsys, *common)
    by_dataset = run_json(capsys, *common, "--normalize", "dataset")
    given = run_json(capsys, *common, "--mean", "0.5", "--std", "0.25")
    assert raw["clean_acc"] == pytest.approx(accuracy_of(net), abs=1e-9)
    assert by_dataset["clean_acc"] == pytest.approx(accuracy_of(net, mean, std), abs=1e-9)
    assert given["clean_acc"] == pytest.approx(accuracy_of(net, [0.5], [0.25]), abs=1e-9)
    assert by_dataset["clean_acc"] > raw["clean_acc"] + 0.05  # the normalization it was trained with
    assert by_dataset["normalization"] == {"mean": pytest.approx(mean), "std": pytest.approx(std),
                                           "from": "dataset"}
    assert given["normalization"]["from"] == "options" and raw["normalization"] is None
    assert by_dataset["results_file"].endswith("w.digits.pgd-3-1-eps0.1-normalized-n120.json")
    assert raw["results_file"].endswith("w.digits.pgd-3-1-eps0.1-n120.json")


def test_model_args_reach_the_factory_and_the_python_api_takes_a_module(tmp_path, spec, capsys):
    torch.manual_seed(1)
    net = make_net(hidden=7).eval()
    torch.save(net.state_dict(), tmp_path / "h7.pt")
    result = run_json(capsys, "--model", spec, "--set", "model_args.hidden=7", "--weights",
                      str(tmp_path / "h7.pt"), "--dataset", "digits", "--no-checks", *QUICK)
    assert result["model_args"] == {"hidden": 7}
    assert result["clean_acc"] == pytest.approx(accuracy_of(net), abs=1e-9)
    architecture = make_net(hidden=7)
    before = {k: v.clone() for k, v in architecture.state_dict().items()}
    same = evaluate_external(tmp_path / "h7.pt", model=architecture, dataset="digits", n=N,
                             steps=3, restarts=1, eps="0.1", checks=False, write=False)
    assert all(torch.equal(v, before[k]) for k, v in architecture.state_dict().items())  # a copy
    assert (same["clean_acc"], same["robust_acc"]) == (result["clean_acc"], result["robust_acc"])
    assert same["model"].startswith("object:")


def test_a_network_with_its_own_normalize_layer_first_is_not_taken_for_zerograds(tmp_path, capsys):
    (tmp_path / "net.py").write_text(NET)
    net = runpy.run_path(str(tmp_path / "net.py"))["own_normalize"](10, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        net[0].mean.fill_(0.3)
        net[0].std.fill_(0.4)
        net[1][1].weight.normal_()
    save_file(net.state_dict(), str(tmp_path / "own.safetensors"))
    result = run_json(capsys, "--model", f"{tmp_path / 'net.py'}:own_normalize", "--weights",
                      str(tmp_path / "own.safetensors"), "--dataset", "digits", "--no-checks",
                      *QUICK)
    assert result["normalization"] is None  # the network's own layer, loaded as the network's
    assert result["clean_acc"] == pytest.approx(accuracy_of(net), abs=1e-9)


def test_a_zerograd_export_or_checkpoint_evaluates_as_its_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "quickstart", "--quiet", "--out", str(run), "--set", "epochs=1",
                 "--set", "model_args.width=4", "--set", "val_size=50", "--set", "test_n=20",
                 "--set", "test_pgd_steps=2", "--set", "test_restarts=1",
                 "--set", "val_pgd_steps=2"]) == 0
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    args = ["--n", "100", "--steps", "3", "--restarts", "1", "--no-checks", "--quiet"]
    own = run_json(capsys, str(run), *args)
    model = ["--model", "small_cnn", "--set", "model_args.width=4", "--dataset", "digits",
             "--eps", "0.2"]
    for weights in (RunFolder(run).export / "model.safetensors", RunFolder(run).checkpoint("last")):
        other = run_json(capsys, *model, "--weights", str(weights), *args)
        assert (other["clean_acc"], other["robust_acc"]) == (own["clean_acc"], own["robust_acc"])
        assert other["normalization"]["from"] == "weights"  # the export's own Normalize
        assert other["checkpoint_sha256"] != own["checkpoint_sha256"] or weights.suffix == ".pt"
    assert not list(RunFolder(run).evals.glob("*digits*"))  # never among the run's own results
    assert main(["eval", *model, "--weights", str(RunFolder(run).export / "model.safetensors"),
                 "--normalize", "dataset", *args]) == 2
    assert "its own normalization" in capsys.readouterr().err


BAD = [  # (argv after `eval`, with W = a good weights file, a pattern of the one line)
    (["--weights", "W", "--dataset", "digits"], r"missing: --model SPEC$"),
    (["--model", "SPEC", "--dataset", "digits"], r"missing: --weights FILE$"),
    (["--model", "SPEC", "--weights", "W"], r"missing: --dataset NAME$"),
    ([], r"missing: --model SPEC, --weights FILE, --dataset NAME$"),
    (["RUNX", "--weights", "W"], r"--weights is for a model zerograd did not train.*not both$"),
    (["RUNX", "--dataset", "digits"], r"--dataset is for a model zerograd did not train"),
    (["--model", "SPEC", "--weights", "gone.safetensors", "--dataset", "digits"],
     r"weights file '.*gone.safetensors' does not exist$"),
    (["--model", "SPEC", "--weights", "W.bin", "--dataset", "digits"],
     r"has an unknown type '.bin': expected .safetensors, .pt, .pth$"),
    (["--model", "SPEC", "--weights", "junk.safetensors", "--dataset", "digits"],
     r"is not a readable safetensors file"),
    (["--model", "SPEC", "--weights", "junk.pt", "--dataset", "digits"],
     r"weights file '.*junk.pt' is truncated or corrupt"),
    (["--model", "SPEC", "--weights", "empty.pt", "--dataset", "digits"],
     r"weights file '.*empty.pt' is not a state_dict: it holds no tensors$"),
    (["--model", "SPEC", "--weights", ".", "--dataset", "digits"],
     r"weights file '.' is a folder: give the file inside it"),
    (["--model", "SPEC", "--weights", "text.pt", "--dataset", "digits"],
     r"holds no state_dict: .*\(its keys: name, epoch\)$"),
    (["--model", "SPEC", "--weights", "nan.safetensors", "--dataset", "digits"],
     r"holds non-finite values \(NaN or inf\) in '3.bias'"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--set", "model_args.hidden=8"],
     r"does not fit model '.*': 1.weight is \(16, 64\) in the file, \(8, 64\) in the model \(3 shapes"),
    (["--model", "mlp", "--weights", "W", "--dataset", "digits"],  # lazy layers: shapes unknown
     r"does not fit model 'mlp': the model expects 5.weight, 5.bias, missing from the file"),
    (["--model", "net.py:for_32px", "--weights", "w32.safetensors", "--dataset", "digits"],
     r"model '.*for_32px' fails on a test image of shape \(1, 1, 8, 8\): RuntimeError: mat1"),
    (["--model", "net.py:three_classes", "--weights", "w3.safetensors", "--dataset", "digits"],
     r"returned \(1, 3\) for one test image; the evaluation needs logits of shape \(1, 10\)"),
    (["--model", "SPEC", "--weights", "other.safetensors", "--dataset", "digits"],
     (r"the model expects 1.weight, 1.bias, 3.weight, ... \(4 in all\), missing from the file; "
      r"the file has head, which the model does not$")),
    (["--model", "net.py:nope", "--weights", "W", "--dataset", "digits"], r"has no attribute 'nope'"),
    (["--model", "net.py:not_a_module", "--weights", "W", "--dataset", "digits"],
     r"returned str, not a torch.nn.Module"),
    (["--model", "missing.py:make", "--weights", "W", "--dataset", "digits"], r"no such file"),
    (["--model", "small_cn", "--weights", "W", "--dataset", "digits"],
     r"unknown model 'small_cn' \(did you mean 'small_cnn'\?\)"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digts"],
     r"unknown dataset 'digts' \(did you mean 'digits'\?\)"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--set", "eps=0.1"],
     r"takes only model_args.KEY=VALUE here"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--mean", "0.5"],
     r"--mean and --std go together"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--mean", "0.5", "0.5", "--std",
      "1", "1"], r"mean=\[0.5, 0.5\] is invalid: digits needs 1 values"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--mean", "0.5", "--std", "1",
      "--normalize", "dataset"], r"both choose the normalization"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--checkpoint", "best"],
     r"--checkpoint chooses a run folder's checkpoint"),
    (["--model", "SPEC", "--weights", "W", "--dataset", "digits", "--eps", "2"],
     r"--eps=2 is invalid"),
    (["--model", "SPEC", "--weights", "whole.pt", "--dataset", "digits"],
     (r"was refused: it asks to run .*, not plain data; nothing in it was executed; save the "
     r"network's weights instead: torch.save\(net.state_dict\(\), FILE\)$")),
]


@pytest.mark.parametrize("argv, pattern", BAD, ids=[" ".join(a) or "nothing" for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2_before_any_work(argv, pattern, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in make_net().state_dict().items()}
    save_file(state, "W.safetensors")
    Path("W.bin").write_bytes(Path("W.safetensors").read_bytes())
    Path("junk.safetensors").write_bytes(bytes(range(256)) * 8)
    Path("junk.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"name": "net", "epoch": 3}, "text.pt")
    torch.save({}, "empty.pt")
    torch.save(make_net(), "whole.pt")  # the whole pickled network, not its state_dict
    save_file({**state, "3.bias": torch.full((10,), float("nan"))}, "nan.safetensors")
    save_file({"head": torch.ones(2)}, "other.safetensors")
    factories = runpy.run_path("net.py")  # the file's own factories, for weights that fit them
    for name, out in (("for_32px", "w32.safetensors"), ("three_classes", "w3.safetensors")):
        save_file(factories[name](10, 1).state_dict(), out)
    before = sorted(p.name for p in tmp_path.iterdir())
    words = [{"SPEC": "net.py:make", "W": "W.safetensors"}.get(w, w) for w in argv]
    try:
        code = main(["eval", *words, "--n", "5"])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("zerograd: error: "), err
    assert re.search(pattern, err.rstrip("\n")), err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == before


def test_hostile_values_of_every_eval_option_with_weights(tmp_path, capsys, monkeypatch):
    """tests/test_hostile.py's values for every option of `eval`, from a valid `--weights`
    command line (that file's walk starts from `eval RUN`): exit 0, or one line and exit 2."""
    from .test_hostile import HOSTILE, kind, with_value

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    torch.manual_seed(0)
    save_file(make_net().state_dict(), "w.safetensors")
    base = ["eval", "--model", "net.py:make", "--weights", "w.safetensors", "--dataset", "digits",
            "--n", "8", "--steps", "1", "--restarts", "1", "--no-checks", "--quiet", "--out", "e.json"]
    from zerograd.cli import build_parser

    sub = next(a for a in build_parser()._subparsers._group_actions if a.choices)
    tried = 0
    for action in sub.choices["eval"]._actions:
        if kind(action) is None or not action.option_strings:
            continue
        for value in HOSTILE[kind(action)]:
            args = with_value(base, action.option_strings[0], value, False)
            try:
                code = main(args)
            except SystemExit as e:
                code = e.code
            captured = capsys.readouterr()
            assert code in (0, 2) and "internal error" not in captured.err, (args, captured.err)
            if code == 2:
                assert len(captured.err.strip().splitlines()) == 1, (args, captured.err)
            tried += 1
    assert tried > 100


def test_results_of_your_own_data_are_named_by_its_folder_or_file():
    """Not by the whole absolute path the config records."""
    assert external_results_path("m/w.pt", "folder:/data/sets/my_images", "pgd-50-10", 60).name \
        == "w.folder-my_images.pgd-50-10-n60.json"
    assert external_results_path("w.pt", "arrays:../x/faces.npz", "fgsm", 9).name == "w.arrays-faces.fgsm-n9.json"


def test_image_size_lets_weights_be_evaluated_on_a_folder_of_mixed_sizes(tmp_path, capsys, monkeypatch):
    """A folder of mixed sizes needs image_size (as in training); eval --weights takes it as
    --image-size, and the size tags the results file (two sizes, two files)."""
    import numpy as np
    from PIL import Image

    from .test_userdata import make_folder

    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    root = make_folder(tmp_path / "imgs", n=24, size=(8, 8))
    Image.fromarray(np.zeros((11, 9, 3), np.uint8)).save(root / "test" / "c1" / "big.png")
    torch.save(runpy.run_path("net.py")["make"](3, 3).state_dict(), "w.pt")
    argv = ["eval", "--model", "net.py:make", "--weights", "w.pt", "--dataset", f"folder:{root}",
            "--n", "4", "--steps", "1", "--restarts", "1", "--no-checks", "--quiet", "--json"]
    assert main(argv) == 2
    assert "images differ in size" in capsys.readouterr().err
    assert main([*argv, "--image-size", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["results_file"].endswith("w.folder-imgs.pgd-1-1-8x8px-n4.json")
    assert main([*argv, "--image-size", "8", "--normalize", "dataset"]) == 2
    assert re.search(r"--normalize dataset: folder:.*imgs has no built-in mean/std \(a run computes them "
                     r"from its training split\); give --mean M... --std S... instead\n$", capsys.readouterr().err)
    assert main([*argv, "--image-size", "8", "8", "8"]) == 2
    assert capsys.readouterr().err == ("zerograd: error: --image-size 8 8 8: give one size (square) or "
                                       "two (height width)\n")
