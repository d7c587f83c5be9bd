"""Your own model: a factory named by a file or module spec, or an nn.Module passed to
`zerograd.train`. Trained, crashed and resumed bitwise, evaluated and exported; and never
imported from a run folder, a checkpoint or an export by itself."""
import re
import sys

import pytest
import torch
from torch import nn

from zerograd import ConfigError, load_config, train
from zerograd.cli import main
from zerograd.evaluate import evaluate_path
from zerograd.export import export_model, load_exported
from zerograd.runfolder import RunFolder, load_model

from .conftest import Crash, CrashAt

SETS = ["dataset=digits", "epochs=2", "method=fgsm_rs", "batch_size=64", "test_n=60",
        "test_restarts=1", "test_pgd_steps=3", "val_size=100", "val_pgd_steps=3"]
STEPS_PER_EPOCH = 21  # ceil((1797 - 360 test - 100 val) / 64)

NET = """
import torch
from torch import nn

IMPORTS = []  # how often this file was imported (a list survives in sys.modules)
IMPORTS.append(1)

class Tiny(nn.Module):
    def __init__(self, num_classes, in_channels, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)

def make(num_classes, in_channels, hidden=16):
    return Tiny(num_classes, in_channels, hidden)

def not_a_module(num_classes, in_channels):
    return 3

def raises(num_classes, in_channels):
    raise RuntimeError("no GPU here")

NOT_CALLABLE = 5
"""


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET)
    return f"module:{path}:make"


def imports_of(spec: str) -> int:
    """How often the file of `spec` was executed in this process."""
    path = spec.split(":")[1]
    return sum(len(m.IMPORTS) for m in list(sys.modules.values())
               if getattr(m, "__file__", None) == path and hasattr(m, "IMPORTS"))


def test_file_spec_trains_crashes_resumes_bitwise_evaluates_and_exports(tmp_path, spec):
    cfg = load_config(None, [*SETS, f"model={spec}", "model_args.hidden=8"])
    whole = train(cfg, tmp_path / "whole", quiet=True)
    assert isinstance(whole.model[1], nn.Module) and type(whole.model[1]).__name__ == "Tiny"
    assert type(whole.model[0]).__name__ == "Normalize"  # zerograd's normalization still first
    assert RunFolder(tmp_path / "whole").read_config().model == spec
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callbacks=[CrashAt(STEPS_PER_EPOCH + 5)])
    cut = RunFolder(tmp_path / "cut")
    recorded = cut.read_config()
    with pytest.raises(ConfigError, match="imports no code on its own.*--model"):
        train(recorded, cut.path, quiet=True, resume=True)
    with pytest.raises(ConfigError, match="does not match"):
        train(recorded, cut.path, quiet=True, resume=True, model=spec.replace("make", "raises"))
    resumed = train(recorded, cut.path, quiet=True, resume=True, model=spec)
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())

    result = evaluate_path(cut.path, model=spec, n=60, steps=3, restarts=1, checks=False)
    assert 0 <= result["robust_acc"] <= result["clean_acc"] <= 1
    out = export_model(cut.path, model=spec)
    loaded = load_exported(out, model=spec)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), resumed.model.eval()(x))


def test_checkpoints_and_exports_never_import_code_by_themselves(tmp_path, spec, capsys):
    cfg = load_config(None, [*SETS, "epochs=1", f"model={spec}"])
    train(cfg, tmp_path / "run", quiet=True)
    export_model(tmp_path / "run", model=spec)
    before = imports_of(spec)
    (tmp_path / "net.py").write_text("raise SystemExit('imported!')\n")  # importing it now would show
    for load in (lambda: load_model(tmp_path / "run"),
                 lambda: evaluate_path(tmp_path / "run", n=10),
                 lambda: export_model(tmp_path / "run", tmp_path / "other"),
                 lambda: load_exported(tmp_path / "run" / "export"),
                 lambda: train(RunFolder(tmp_path / "run").read_config(), tmp_path / "run", resume=True)):
        with pytest.raises(ConfigError, match=f"{spec}"):
            load()
    assert imports_of(spec) == before
    assert main(["eval", str(tmp_path / "run"), "--n", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--model {spec}" in err
    assert main(["eval", str(tmp_path / "run"), "--model", "module:other.py:make", "--n", "10"]) == 2
    assert "does not match" in capsys.readouterr().err


def test_eval_and_export_with_the_spec_on_the_command_line(tmp_path, spec, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [*SETS, "epochs=1", "model=module:net.py:make"])  # relative to here
    train(cfg, "run", quiet=True)
    assert RunFolder("run").read_config().model == spec  # recorded with its absolute path
    assert main(["eval", "run", "--model", "module:net.py:make", "--n", "30", "--steps", "2",
                 "--restarts", "1", "--no-checks", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["export", "run", "--model", spec]) == 0
    assert main(["eval", "run", "--model", spec.replace("make", "not_a_module"), "--n", "5"]) == 2


@pytest.mark.parametrize("model, message", [
    ("module:missing.py:make", "no such file"),
    ("module:net.py:nope", "has no attribute 'nope'"),
    ("module:net.py:NOT_CALLABLE", "not a factory"),
    ("module:net.py:not_a_module", "returned int, not a torch.nn.Module"),
    ("net.py:raises", "the factory raised RuntimeError: no GPU here"),
    ("no_such_package_zg.mod:make", "no module named 'no_such_package_zg'"),
    ("net.py:make --set model_args.depth=3", "unexpected keyword argument 'depth'"),
    ("module:net.py:make-it", "model spec .* is invalid"),
])
def test_bad_factories_get_one_line_before_any_work(tmp_path, spec, capsys, monkeypatch,
                                                    model, message):
    monkeypatch.chdir(tmp_path)
    first, *rest = model.split(" ")
    assert main(["train", "--out", "run", "--set", "dataset=digits", "--set", f"model={first}",
                 *rest]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_a_python_module_trains_resumes_and_needs_its_class_to_load(tmp_path):
    cfg = load_config(None, SETS)
    torch.manual_seed(1)
    whole = train(cfg, tmp_path / "whole", quiet=True, model=Tiny())
    recorded = RunFolder(tmp_path / "whole").read_config()
    assert recorded.model == f"object:{__name__}.Tiny" and recorded.model_args == {}
    torch.manual_seed(1)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, model=Tiny(), callbacks=[CrashAt(STEPS_PER_EPOCH + 3)])
    with pytest.raises(ConfigError, match="cannot be rebuilt from disk"):
        train(cfg, tmp_path / "cut", quiet=True, resume=True)
    with pytest.raises(ConfigError, match="same class"):
        train(cfg, tmp_path / "cut", quiet=True, resume=True, model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    resumed = train(cfg, tmp_path / "cut", quiet=True, resume=True, model=Tiny())
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())
    with pytest.raises(ConfigError, match="cannot be rebuilt from disk"):
        evaluate_path(tmp_path / "cut", n=10)
    result = evaluate_path(tmp_path / "cut", model=Tiny(), n=30, steps=2, restarts=1, checks=False)
    assert result["clean_acc"] == pytest.approx(resumed.result["clean_acc"], abs=0.5)
    out = export_model(tmp_path / "cut", model=Tiny())
    with pytest.raises(ConfigError, match="cannot be rebuilt from disk"):
        load_exported(out)
    assert same_weights(load_exported(out, model=Tiny()).state_dict(), resumed.model.state_dict())


def test_an_object_record_is_not_a_spec(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--set", "dataset=digits",
                 "--set", "model=object:foo.Net"]) == 2
    assert "cannot be rebuilt from disk" in capsys.readouterr().err
