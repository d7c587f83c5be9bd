"""`zerograd eval` and its results file, on a run trained in-process on digits: the file holds
the checkpoint's true SHA-256 and epoch, how `best` was chosen, the data, attack, seed,
accuracies that match an independent computation, the gradient-masking checks and the
versions; an interrupted AutoAttack evaluation resumes to the uninterrupted result; bad
arguments are one-line errors that write nothing."""
import hashlib
import importlib
import json
import shutil

import pytest
import torch

import zerograd
from zerograd.attacks import correct
from zerograd.cli import main
from zerograd.config import load_config
from zerograd.data import load_data, to_float
from zerograd.errors import ConfigError
from zerograd.evaluate import evaluate_path
from zerograd.runfolder import RunFolder, load_model
from zerograd.train import train

TINY_AA = {"apgd-ce": {"n_iter": 5}, "square": {"n_queries": 20}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = load_config("quickstart", ["epochs=3", "val_size=100", "test_n=20", "test_restarts=1",
                                     "test_pgd_steps=2", "model_args.width=8"])
    train(cfg, out, quiet=True)
    return out


def test_results_file_describes_the_evaluation(run):
    result = evaluate_path(run, n=40, steps=4, restarts=2, check_steps=2)
    path = run / "evals" / "pgd-4-2-last-n40.json"
    assert result["results_file"] == str(path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    ckpt = run / "checkpoints" / "last.pt"
    assert result["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert (result["checkpoint_kind"], result["checkpoint_epoch"]) == ("last", 3)
    assert result["best_selected_by"] is None and result["run"] == str(run)
    assert (result["dataset"], result["split"], result["n"], result["seed"]) == ("digits", "test", 40, 0)
    assert result["attack"] == {"name": "pgd", "eps": 0.2, "steps": 4, "restarts": 2,
                                "alpha": pytest.approx(0.25)}
    assert result["zerograd_version"] == zerograd.__version__
    assert result["torch_version"] == torch.__version__
    model, cfg, _ = load_model(run)
    test = load_data("digits", val_size=cfg.val_size, test_subset=40, seed=cfg.seed).test
    with torch.no_grad():
        clean = correct(model.eval(), to_float(test.x), test.y).float().mean().item()
    assert result["clean_acc"] == pytest.approx(clean)
    assert result["robust_acc"] <= result["clean_acc"]
    checks = {c["name"]: c for c in result["checks"]}
    # PGD-4-2 shares its first restart's starts with the probes, so the ladder must hold
    assert checks["more_steps_not_weaker"]["detail"].count(">=") == 2
    assert checks["more_steps_not_weaker"]["passed"]
    assert result["checks_passed"] == all(c["passed"] for c in result["checks"])


def test_another_pgd_step_gets_its_own_results_file(run):
    """--alpha other than the run's test_alpha is another attack: its results file is tagged,
    so it does not overwrite the one of the run's own step (as --eps is tagged)."""
    default = evaluate_path(run, n=20, steps=2, restarts=1, checks=False)
    other = evaluate_path(run, n=20, steps=2, restarts=1, alpha=0.05, checks=False)
    assert other["results_file"] == str(run / "evals" / "pgd-2-1-alpha0.05-last-n20.json")
    kept = json.loads((run / "evals" / "pgd-2-1-last-n20.json").read_text())
    assert kept["attack"]["alpha"] == pytest.approx(0.25) and kept["robust_acc"] == default["robust_acc"]


def test_best_checkpoint_records_how_it_was_chosen(run):
    result = evaluate_path(run, attack="fgsm", which="best", n=20, checks=False)
    scores = [r["val/pgd_acc"] for r in RunFolder(run).read_metrics() if "val/pgd_acc" in r]
    assert result["checkpoint_kind"] == "best"
    assert result["checkpoint_epoch"] == 1 + scores.index(max(scores))
    assert "val/pgd_acc" in result["best_selected_by"] and "100 validation" in result["best_selected_by"]
    assert (run / "evals" / "fgsm-best-n20.json").is_file()
    assert "checks" not in result


def test_a_checkpoint_file_with_another_checkpoint_chosen_is_refused(run, tmp_path):
    """`zerograd eval RUN/checkpoints/epoch-1.pt --checkpoint best` asks for two checkpoints:
    one line, rather than silently evaluating epoch-1 as if it were best."""
    for which in ("best", "last"):
        with pytest.raises(ConfigError, match=f"--checkpoint {which} chooses a run folder's checkpoint"):
            evaluate_path(run / "checkpoints" / "epoch-1.pt", which=which, n=10, checks=False)
    assert not list((run / "evals").glob("*epoch-1*"))


def test_checkpoint_outside_a_run_gets_its_results_beside_it(run, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copy(run / "checkpoints" / "last.pt", ckpt)
    result = evaluate_path(ckpt, attack="fgsm", n=20, checks=False)
    assert (result["checkpoint_kind"], result["run"]) == ("file", None)
    assert (tmp_path / "model.fgsm-n20.json").is_file()


class Interrupt(Exception):
    pass


def test_interrupted_autoattack_resumes_to_the_same_result(run, tmp_path, monkeypatch):
    kw = {"attack": "autoattack", "version": "custom", "attacks": ["apgd-ce", "square"], "n": 40,
          "batch_size": 16, "attack_params": TINY_AA, "checks": False}
    whole = evaluate_path(run, out=tmp_path / "whole.json", **kw)
    assert not list(tmp_path.glob(".*state.pt"))  # the default state file is removed when done

    def stop_in_square(name, done, total):
        if name == "square" and done == 1:
            raise Interrupt

    evaluate_module = importlib.import_module("zerograd.evaluate")  # the package's name is a function
    monkeypatch.setattr(evaluate_module, "_progress_printer", lambda quiet: stop_in_square)
    with pytest.raises(Interrupt):
        evaluate_path(run, out=tmp_path / "resumed.json", **kw)
    assert len(list(tmp_path.glob(".resumed.*.state.pt"))) == 1
    monkeypatch.undo()
    resumed = evaluate_path(run, out=tmp_path / "resumed.json", **kw)
    assert resumed["robust_after"] == whole["robust_after"]
    assert resumed["robust_acc"] == whole["robust_acc"]
    assert resumed["attack"]["params"]["square"]["n_queries"] == 20
    assert not list(tmp_path.glob(".*state.pt"))


@pytest.mark.parametrize("kw, message", [
    ({"attack": "autoatack"}, "did you mean 'autoattack'"),
    ({"attack": "pgd", "version": "rand"}, "need --attack autoattack"),
    ({"attack": "autoattack", "version": "custom"}, "needs attacks=[...]"),
    ({"attack": "autoattack", "version": "custom", "attacks": ["apgd-xx"]}, "apgd-xx"),
    ({"check_steps": 0}, "--check-steps=0"),
    ({"eps": "2"}, "--eps=2"),
    ({"eps": "8/0"}, "--eps='8/0'"),
])
def test_bad_arguments_write_nothing(run, tmp_path, kw, message):
    target = tmp_path / "evals" / "r.json"
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        evaluate_path(run, out=target, **kw)
    assert not target.parent.exists()


def test_unwritable_results_file_is_refused_before_work(run, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a writable folder"):
        evaluate_path(run, out=tmp_path / "file" / "r.json")


def test_cli_prints_checks_and_json_matches_the_file(run, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["eval", str(run), "--attack", "fgsm", "--n", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gradient-masking checks" in text and f"results: {out}" in text
    assert main(["eval", str(run), "--attack", "fgsm", "--n", "20", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed["robust_acc"] == saved["robust_acc"] and printed["checks"] == saved["checks"]
    assert main(["eval", str(run), "--attack", "pgd", "--attacks", "square"]) == 2
    assert capsys.readouterr().err.startswith("zerograd: error: --version/--attacks")
