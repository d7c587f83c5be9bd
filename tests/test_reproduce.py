"""The shipped ResNet experiments plan and validate without training, their dry runs list
every run; `zerograd reproduce --keep` copies each finished run's small files (and nothing
else) into a folder from which `zerograd report` rebuilds the table."""
import json

import pytest

from zerograd import ConfigError
from zerograd.cli import main
from zerograd.options import GuardOptions
from zerograd.report import build_report
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
    assert [line for line in printed if line.startswith("zerograd train ")] == \
        [line for line in printed[:len(runs)]] and len(printed) == len(runs) + 1
    assert printed[-1].startswith("zerograd report ")


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
