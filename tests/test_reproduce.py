"""The shipped ResNet experiments plan and validate without training, their dry runs list
every run; `zerograd reproduce --keep` copies each finished run's small files (and nothing
else) into a folder from which `zerograd report` rebuilds the table."""
import json
import re

import pytest
import yaml

from zerograd import ConfigError
from zerograd.cli import main
from zerograd.options import GuardOptions
from zerograd.analysis import read_run
from zerograd.report import autoattack_eval, build_report
from zerograd.reproduce import experiment_names, plan, reproduce
from zerograd.runfolder import RunFolder, differences

from .test_report import make_run, write_experiment


@pytest.mark.parametrize("name", ["resnet-co", "resnet-co-scale"])
def test_resnet_experiments_plan_and_validate(name, capsys):
    assert name in experiment_names()
    runs = plan(name, data_dir="../shared/data")
    assert runs and len({folder for folder, _ in runs}) == len(runs)
    for _, cfg in runs:
        assert cfg.model == "preact_resnet18" and cfg.model_args["width"] < 64
        assert cfg.dataset == "cifar10" and cfg.train_subset and not cfg.amp and cfg.device == "cpu"
        assert cfg.diagnostics.get("fgsm_val", True)  # the CO detector needs FGSM accuracy
    assert main(["reproduce", name, "--dry-run", "--out", "runs/x"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if line.startswith("zerograd train ")] == printed[:len(runs)]
    autoattack = ["# after each run that does not overfit (one per row): zerograd eval "
                  "runs/x/<run> --attack autoattack --version standard --n 1000"] if name == "resnet-co" else []
    assert printed[len(runs):-1] == autoattack and printed[-1].startswith("zerograd report ")


def test_resnet_co_has_three_seeds_for_every_deciding_row():
    runs = dict(plan("resnet-co"))
    deciding = ["fgsm_rs-a2", "fgsm_rs-a1.25", "zerograd", "multigrad", "zerograd-q0.25-rollback",
                "eps16-multigrad", "eps16-zerograd", "eps16-fgsm_rs-a0.875", "eps16-fgsm_rs-a0.75"]
    for row in deciding:
        assert [runs[f"{row}-s{s}"].seed for s in (0, 1, 2)] == [0, 1, 2]
    for row in ("n_fgsm", "pgd2", "gradalign"):
        assert f"{row}-s0" in runs
    assert runs["zerograd-q0.25-rollback-s0"].guard["enabled"]
    # the exploratory P3 run differs from the P3 row only in the guard's min_best (its default)
    p3, explore = runs["zerograd-q0.25-rollback-s0"], runs["zerograd-q0.25-rollback-min5-s0"]
    assert p3.guard["min_best"] == 0.15 and "min_best" not in explore.guard and GuardOptions().min_best == 0.05
    assert [d for d in differences(p3, explore) if not d.startswith("guard")] == []
    assert runs["eps16-zerograd-s0"].eps == pytest.approx(16 / 255)
    assert runs["fgsm_rs-a2-s0"].eps == pytest.approx(8 / 255)
    assert runs["fgsm_rs-a2-s0"].test_pgd_steps == 50 and runs["fgsm_rs-a2-s0"].test_restarts == 10
    assert runs["fgsm_rs-a2-s0"].diagnostics["probe"] > 0


def test_keep_small_files_copies_what_report_reads_and_no_checkpoint(tmp_path):
    src = make_run(tmp_path / "runs" / "rs-s0", seed=0, pgd=[0.2, 0.3, 0.02], fgsm=[0.3, 0.4, 0.9], robust=0.0)
    run = RunFolder(src)
    run.checkpoints.mkdir()
    run.checkpoint("last").write_bytes(b"weights")
    run.evals.mkdir()
    (run.evals / "aa.json").write_text(json.dumps({"clean_acc": 0.5, "robust_acc": 0.1, "n": 10,
                                                   "attack": {"name": "autoattack"}}))
    dest = tmp_path / "docs" / "rs-s0"
    dest.mkdir(parents=True)
    (dest / "evals").mkdir()
    (dest / "evals" / "stale.json").write_text("{}")
    kept = run.keep_small_files(dest)
    for f in (run.config_file, run.metrics_file, run.result_file, run.evals / "aa.json"):
        assert (dest / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert not kept.checkpoints.exists() and not (kept.evals / "stale.json").exists()
    text = build_report([dest], tmp_path / "rep").read_text()
    assert "| fgsm_rs alpha=2 | rs-s0 | 1 | 1/1 | 3 |" in text and "evals/aa.json" in text


def test_keep_refuses_an_unfinished_run_and_itself(tmp_path):
    src = make_run(tmp_path / "r", seed=0, pgd=[0.2], fgsm=[0.3], robust=0.1)
    with pytest.raises(ConfigError, match="into itself"):
        RunFolder(src).keep_small_files(src)
    RunFolder(src).result_file.unlink()
    with pytest.raises(ConfigError, match="not a finished run"):
        RunFolder(src).keep_small_files(tmp_path / "k")
    with pytest.raises(ConfigError, match="is the --out folder"):
        reproduce(str(write_experiment(tmp_path)), tmp_path / "o", keep=tmp_path / "o", quiet=True)


def test_reproduce_keeps_each_finished_run(tmp_path):
    exp = write_experiment(tmp_path)
    out, keep = tmp_path / "out", tmp_path / "kept"
    assert main(["reproduce", str(exp), "--out", str(out), "--only", "zg", "--keep", str(keep), "--quiet"]) == 0
    kept = RunFolder(keep / "zg-s3")
    assert kept.finished and kept.config_file.is_file() and kept.read_metrics()
    assert not kept.checkpoints.exists() and RunFolder(out / "zg-s3").checkpoint("last").is_file()
    kept.result_file.unlink()  # a run finished earlier is kept again, without retraining
    stamp = (out / "zg-s3" / "eval.json").stat().st_mtime_ns
    reproduce(str(exp), out, only=["zg"], keep=keep, quiet=True)
    assert kept.finished and (out / "zg-s3" / "eval.json").stat().st_mtime_ns == stamp
    assert "| zerograd q=0.25 | zg-s3 | 1 |" in build_report([kept.path], tmp_path / "rep").read_text()


def test_reproduce_resumes_an_interrupted_run_of_the_same_config(tmp_path):
    exp = write_experiment(tmp_path)
    out = tmp_path / "out"
    reproduce(str(exp), out, only=["zg"], quiet=True)
    run = RunFolder(out / "zg-s3")
    metrics, result = run.metrics_file.read_bytes(), json.loads(run.result_file.read_text())
    run.result_file.unlink()  # as if killed after its last checkpoint, before the evaluation
    reproduce(str(exp), out, only=["zg"], quiet=True)
    assert run.metrics_file.read_bytes() == metrics  # resumed: the epochs were not trained again
    assert json.loads(run.result_file.read_text())["robust_acc"] == result["robust_acc"]
    run.result_file.unlink()
    run.config_file.write_text(run.config_file.read_text().replace("q: 0.25", "q: 0.3"))
    reproduce(str(exp), out, only=["zg"], quiet=True)  # another config: started afresh
    assert run.finished and run.read_config().method_args["q"] == 0.25


def test_a_finished_run_of_another_config_is_refused_not_reported(tmp_path):
    """The experiment changed after a run finished (here its q): reproducing into the same
    --out refuses in one line before any work, instead of keeping the old run and reporting
    it as the new setting."""
    exp = write_experiment(tmp_path)
    out = tmp_path / "out"
    reproduce(str(exp), out, only=["zg"], quiet=True)
    exp.write_text(exp.read_text().replace("q: 0.25", "q: 0.3"))
    (out / "report.md").unlink()
    with pytest.raises(ConfigError, match=r"zg-s3' holds a finished run of another config \(method_args: "):
        reproduce(str(exp), out, only=["zg"], quiet=True)
    assert RunFolder(out / "zg-s3").read_config().method_args["q"] == 0.25 and not (out / "report.md").exists()


def test_a_keep_cut_short_over_a_kept_run_leaves_it_unfinished(tmp_path, monkeypatch):
    """Copying a run over an earlier kept one and failing after config.yaml: the kept folder
    must not pair the old eval.json with the new config (report would show old numbers as
    the new setting); it is left unfinished until a copy completes."""
    from zerograd import runfolder

    old = make_run(tmp_path / "old", seed=0, pgd=[0.2], fgsm=[0.3], robust=0.1)
    new = make_run(tmp_path / "new", seed=0, pgd=[0.2], fgsm=[0.3], robust=0.4, method="zerograd")
    dest = tmp_path / "kept"
    RunFolder(old).keep_small_files(dest)
    real, calls = runfolder.atomic_write, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(runfolder, "atomic_write", failing)
    with pytest.raises(OSError):
        RunFolder(new).keep_small_files(dest)
    assert not RunFolder(dest).finished
    monkeypatch.setattr(runfolder, "atomic_write", real)
    RunFolder(new).keep_small_files(dest)
    assert json.loads((dest / "eval.json").read_text())["robust_acc"] == 0.4


def test_a_seed_given_twice_is_refused_before_any_work(tmp_path):
    exp = write_experiment(tmp_path)
    with pytest.raises(ConfigError, match="seed 0 is given twice for run 'fgsm_rs'"):
        reproduce(str(exp), tmp_path / "out", seeds=[0, 0], quiet=True)
    assert not (tmp_path / "out").exists()


def _with_autoattack(exp, block):
    spec = yaml.safe_load(exp.read_text())
    spec["autoattack"] = block
    exp.write_text(yaml.safe_dump(spec))
    return exp


def _autoattacked(folder) -> list[str]:
    return sorted(p.name for p in (folder / "evals").glob("autoattack-*.json"))


FAST_AA = {"version": "custom", "attacks": ["apgd-ce"]}


def test_reproduce_autoattacks_the_first_surviving_run_of_each_row(tmp_path, monkeypatch, capsys):
    """With `autoattack: {per_row: 1}`, a run that does not overfit is attacked right after it
    trains, while its checkpoint is there; the row's next seed is not, nor is a run whose
    collapse persists; the results file is kept with the small files."""
    from zerograd import reproduce as reproduce_module

    exp = _with_autoattack(write_experiment(tmp_path), {**FAST_AA, "per_row": 1})
    out, keep = tmp_path / "out", tmp_path / "kept"
    assert main(["reproduce", str(exp), "--out", str(out), "--only", "fgsm_rs", "--seeds", "0",
                 "--keep", str(keep), "--quiet", "--no-autoattack"]) == 0
    assert RunFolder(out / "fgsm_rs-s0").finished and _autoattacked(out / "fgsm_rs-s0") == []
    reproduce(str(exp), out, only=["fgsm_rs"], keep=keep, quiet=True)  # s0 attacked now, not retrained
    assert _autoattacked(out / "fgsm_rs-s0") == ["autoattack-custom-apgd-ce-last-n50.json"]
    assert _autoattacked(keep / "fgsm_rs-s0") == _autoattacked(out / "fgsm_rs-s0")
    assert _autoattacked(out / "fgsm_rs-s1") == []
    # the final model on its final evaluation's images and eps, as the report matches it
    result = autoattack_eval(read_run(keep / "fgsm_rs-s0"), "custom", ("apgd-ce",))
    assert result is not None and result["robust_acc"] <= result["clean_acc"]
    assert autoattack_eval(read_run(keep / "fgsm_rs-s0")) is None  # not a standard one
    # every survivor (no per_row): s1 now, s0 not attacked again; a collapsed run never
    exp = _with_autoattack(exp, FAST_AA)
    stamp = (out / "fgsm_rs-s0" / "evals").stat().st_mtime_ns
    real = reproduce_module.persistent_co_epoch
    monkeypatch.setattr(reproduce_module, "persistent_co_epoch",
                        lambda r: 1 if r.name == "zg-s3" else real(r))
    reproduce(str(exp), out, keep=keep, quiet=True)
    assert _autoattacked(out / "fgsm_rs-s1") == ["autoattack-custom-apgd-ce-last-n50.json"]
    assert (out / "fgsm_rs-s0" / "evals").stat().st_mtime_ns == stamp
    assert RunFolder(out / "zg-s3").finished and _autoattacked(out / "zg-s3") == []
    assert main(["reproduce", str(exp), "--dry-run", "--out", str(out)]) == 0
    assert "# after each run that does not overfit: zerograd eval " \
           f"{out / '<run>'} --attack autoattack --version custom --attacks apgd-ce --n 50" in capsys.readouterr().out


def test_a_kept_run_is_not_trained_again_and_a_survivor_without_checkpoint_is_named(tmp_path, capsys):
    """OUT lost (a new machine), KEEP in the repository: the kept runs count as done and the
    report is built from them; a survivor that still lacks AutoAttack is named, not retrained."""
    import shutil

    exp = write_experiment(tmp_path)
    out, keep = tmp_path / "out", tmp_path / "kept"
    reproduce(str(exp), out, only=["zg"], keep=keep, quiet=True)
    shutil.rmtree(out)
    exp = _with_autoattack(exp, FAST_AA)
    report = reproduce(str(exp), out, only=["zg"], keep=keep)
    err = capsys.readouterr().err
    assert not (out / "zg-s3").exists() and "zg-s3: finished earlier, kept in" in err
    assert "zg-s3: no AutoAttack: its last checkpoint is gone" in err
    assert "| zerograd q=0.25 | zg-s3 | 1 |" in report.read_text()
    assert main(["reproduce", str(exp), "--dry-run", "--out", str(out), "--keep", str(keep), "--only", "zg"]) == 0
    assert f"zerograd report {keep / 'zg-s3'} --out {out}" in capsys.readouterr().out
    # a kept run of another config is trained again (into OUT) and kept anew
    exp.write_text(exp.read_text().replace("q: 0.25", "q: 0.3"))
    reproduce(str(exp), out, only=["zg"], keep=keep, quiet=True)
    assert RunFolder(out / "zg-s3").finished and RunFolder(keep / "zg-s3").read_config().method_args["q"] == 0.3


@pytest.mark.parametrize("block, message", [
    ({"per_row": 0}, "autoattack per_row=0 is invalid: must be a whole number >= 1"),
    ({"per_row": True}, "autoattack per_row=True is invalid"),
    ({"version": "standrd"}, "autoattack: unknown AutoAttack version 'standrd' (did you mean 'standard'?)"),
    ({"version": "custom"}, "autoattack: version='custom' needs attacks="),
    ({"n": 100}, "'autoattack' must be a mapping of version, attacks, per_row"),
    ("standard", "'autoattack' must be a mapping of"),
    ({"attacks": "apgd-ce", "version": "custom"}, "autoattack needs version as text and attacks as a list"),
])
def test_a_bad_autoattack_block_is_one_line_before_any_run(tmp_path, block, message):
    exp = _with_autoattack(write_experiment(tmp_path), block)
    with pytest.raises(ConfigError, match=re.escape(message)):
        reproduce(str(exp), tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
