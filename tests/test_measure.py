"""`zerograd measure` (the paper's Tables 10 and 4 on one model): a linear model, whose input
gradient has one sign over the whole eps-ball, gives zero sign disagreement for every method
and FGSM's mean |delta| x 255 = eps x 255; Table 10 is the mean over mini-batches of the
per-batch fraction; no random start means FGSM-RS equals FGSM; the model's mode, batch-norm
statistics and the global RNG are left as found; a digits run end to end through the CLI
writes its results file; bad arguments are one-line errors before any work."""
import json

import pytest
import torch

from tests.conftest import Linear2
from zerograd import ConfigError, load_config, train
from zerograd.cli import main
from zerograd.data import Split
from zerograd.measure import MEASURED, REFERENCE, measure_model, measure_path, rows_of
from zerograd.methods import METHODS
from zerograd.training.diagnostics import sign_disagreement

FAST = ["epochs=1", "test_restarts=1", "test_pgd_steps=2", "model_args.width=4", "test_n=20"]


def interior_split(n: int = 6, d: tuple = (3, 4, 4), seed: int = 0) -> Split:
    """uint8 images well inside (0, 255), so an eps step is never clipped by the box."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(60, 196, (n, *d), generator=g, dtype=torch.uint8)
    return Split(x, torch.randint(0, 2, (n,), generator=g))


def test_linear_model_no_disagreement_and_full_fgsm_size():
    model, split, eps = Linear2(48), interior_split(), 8 / 255
    t10 = measure_model(model, split, table=10, eps=eps, batch_size=4)
    assert set(t10) == set(rows_of(10)) and all(v == 0 for v in t10.values()), t10
    t4 = measure_model(model, split, table=4, eps=eps, batch_size=4)
    assert t4["fgsm"] == pytest.approx(8.0, abs=1e-4)  # every entry moves by eps
    assert t4["pgd10"] == pytest.approx(8.0, abs=1e-4)  # 10 steps of eps/4 reach the corner
    assert t4["multigrad"] == pytest.approx(8.0, abs=1e-4)  # all starts agree on a linear model
    assert t4["fgsm_rs-a1"] < t4["fgsm_rs-a1.25"] < 8.0  # random starts shrink the mean


def test_table10_is_the_mean_of_per_batch_fractions(tiny_cnn):
    split, eps, names = interior_split(n=8), 8 / 255, ["fgsm", "zerograd", "pgd2"]
    got = measure_model(tiny_cnn, split, table=10, eps=eps, methods=names, batch_size=3)
    tiny_cnn.train()
    fractions = {n: [] for n in names}
    for i in range(0, 8, 3):  # batches of 3, 3 and 2: a mean over batches, not over entries
        x, y = split.x[i:i + 3].float() / 255, split.y[i:i + 3]
        ref = METHODS["pgd"](tiny_cnn, x, y, eps=eps, **REFERENCE)
        for n in names:
            row = MEASURED[n]
            fractions[n].append(sign_disagreement(METHODS[row.method](tiny_cnn, x, y, eps=eps, **row.no_start), ref))
    for n in names:
        assert got[n] == pytest.approx(sum(fractions[n]) / 3, abs=1e-7), n
    assert got["fgsm"] > 0
    # a last batch of one image cannot go through batch norm in training mode: left out
    assert measure_model(tiny_cnn, interior_split(n=7), table=10, eps=eps, methods=["fgsm"],
                         batch_size=3)["fgsm"] >= 0


def test_without_random_start_fgsm_rs_is_fgsm_and_the_model_is_left_as_found(tiny_cnn):
    split = interior_split()
    tiny_cnn.eval()
    buffers = [b.clone() for b in tiny_cnn.buffers()]
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    t10 = measure_model(tiny_cnn, split, table=10, eps=8 / 255, batch_size=4)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is untouched
    assert not tiny_cnn.training
    assert all(torch.equal(a, b) for a, b in zip(buffers, tiny_cnn.buffers()))
    assert t10["fgsm_rs"] == t10["fgsm"] == t10["n_fgsm"]
    assert 0 <= t10["zerograd"] <= t10["fgsm"]  # zeroing entries can only remove disagreements


def test_digits_run_through_the_cli_writes_the_table(tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config("quickstart", FAST + ["method=fgsm"]), run, quiet=True)
    assert main(["measure", str(run), "--table", "10", "--n", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["split"] == "train" and result["table"] == 10
    assert set(result["values"]) == set(rows_of(10))
    written = json.loads((run / "evals" / "table10-last-n40.json").read_text())
    assert written["values"] == result["values"]
    assert main(["measure", str(run), "--table", "4", "--n", "40", "--methods", "fgsm", "pgd10"]) == 0
    out = capsys.readouterr().out
    assert "Table 4" in out and "pgd10" in out and "zerograd" not in out
    # a last batch of one image is left out: the record says how many images were measured
    assert main(["measure", str(run), "--table", "4", "--n", "41", "--batch-size", "20", "--methods", "fgsm",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["images_asked"] == 41


@pytest.mark.parametrize("kw, fragment", [
    ({"table": 5}, "--table=5 is invalid"),
    ({"split": "tran"}, "--split='tran' is invalid"),
    ({"n": 0}, "--n=0 is invalid"),
    ({"methods": ["zerogad"]}, "did you mean 'zerograd'"),
    ({"table": 10, "methods": ["pgd10"]}, "none of pgd10 is in Table 10"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(tmp_path, kw, fragment):
    with pytest.raises(ConfigError) as e:
        measure_path(tmp_path / "missing", **kw)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def no_val_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("measure") / "run"
    train(load_config("quickstart", FAST + ["val_size=0"]), run, quiet=True)
    return run


def test_an_empty_validation_split_is_one_line_not_a_division_by_zero(no_val_run):
    with pytest.raises(ConfigError, match="has no images .*val_size=0"):
        measure_path(no_val_run, split="val", quiet=True)
    assert not (no_val_run / "evals").exists()


def test_another_split_or_a_subset_never_overwrites_the_whole_table(no_val_run):
    whole = measure_path(no_val_run, n=20, quiet=True)
    test = measure_path(no_val_run, split="test", n=20, quiet=True)
    subset = measure_path(no_val_run, n=20, methods=["fgsm"], quiet=True)
    evals = no_val_run / "evals"
    assert test["results_file"] == str(evals / "table10-test-last-n20.json")
    assert subset["results_file"] == str(evals / "table10-fgsm-last-n20.json")
    kept = json.loads((evals / "table10-last-n20.json").read_text())
    assert kept["split"] == "train" and kept["values"] == whole["values"] and len(kept["values"]) > 1
