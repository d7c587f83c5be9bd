"""`zerograd report` and `zerograd reproduce`: the report is rebuilt from run folders only
(synthetic ones here, with a known collapse), groups seeds of a setting with the right mean
and std, counts CO runs, lists every evaluation file, writes real PNGs; bad input is a
one-line error before anything is written; a reproduction trains, reports, and on a second
call keeps the runs already done."""
import json
import shutil

import pytest
import yaml

from zerograd import ConfigError
from zerograd.analysis import co_epoch, persistent_co_epoch, read_run, setting_label
from zerograd.cli import main
from zerograd.report import build_report
from zerograd.reproduce import command_line, plan, reproduce

PNG = b"\x89PNG\r\n\x1a\n"


def make_run(folder, *, seed, pgd, fgsm, robust, method="fgsm_rs", args=None, extra_events=()):
    folder.mkdir(parents=True)
    cfg = {"method": method, "method_args": args or {"alpha": 2.0}, "seed": seed, "eps": 8 / 255,
           "dataset": "cifar10", "model": "small_cnn", "environment": {"torch_version": "x"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for i, (p, f) in enumerate(zip(pgd, fgsm), 1):
        lines.append({"epoch": i, "step": 10 * i, "train/loss": 1.0, "time/epoch_s": 2.0, "val/clean_acc": 0.5,
                      "val/pgd_acc": p, "val/fgsm_acc": f, "diag/weight_mse": 1e-4 * i,
                      "diag/delta_mse": 10.0 * i, "diag/sign_disagree": 0.2})
    lines += list(extra_events)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    ev = {"clean_acc": 0.5, "robust_acc": robust, "n": 100, "checkpoint": "last",
          "attack": {"name": "pgd", "steps": 50, "restarts": 10, "eps": 8 / 255, "alpha": 0.25}}
    (folder / "eval.json").write_text(json.dumps(ev))
    return folder


def comparison(row: str) -> dict[str, str]:
    """A row of the report's comparison table, by column name."""
    header = ["setting", "runs", "seeds", "CO (runs)", "CO epochs", "CO at end", "rollbacks", "clean %",
              "robust %", "attack", "AutoAttack %", "s/epoch"]
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    assert len(cells) == len(header), row
    return dict(zip(header, cells))


def planned(row: str, seeds: int) -> tuple[str, ...]:
    """The run folders `zerograd reproduce` plans for a row of `seeds` seeds."""
    return tuple(f"{row}-s{s}" for s in range(seeds))


@pytest.fixture
def runs(tmp_path):
    collapse = ([0.2, 0.3, 0.02], [0.3, 0.4, 0.9])
    healthy = ([0.2, 0.3, 0.32], [0.3, 0.4, 0.42])
    a = make_run(tmp_path / "rs-s0", seed=0, pgd=collapse[0], fgsm=collapse[1], robust=0.0)
    b = make_run(tmp_path / "rs-s1", seed=1, pgd=healthy[0], fgsm=healthy[1], robust=0.2)
    c = make_run(tmp_path / "zg-s0", seed=0, pgd=healthy[0], fgsm=healthy[1], robust=0.3, method="zerograd",
                 args={"q": 0.25}, extra_events=[{"event": "rollback", "epoch": 1, "step": 10, "to_epoch": 1,
                                                  "method_args": {"q": 0.35}, "reason": "test", "co/detected": 1,
                                                  "co/epoch": 2, "co/step": 20}])
    (c / "evals").mkdir()
    (c / "evals" / "aa.json").write_text(json.dumps({"clean_acc": 0.5, "robust_acc": 0.25, "n": 50,
                                                     "checkpoint": "best", "attack": {"name": "autoattack",
                                                                                      "version": "standard"}}))
    return [a, b, c]


def test_co_epoch_from_metrics_and_from_logged_events(runs):
    assert co_epoch(read_run(runs[0])) == 3
    assert co_epoch(read_run(runs[1])) is None
    assert co_epoch(read_run(runs[2])) == 2  # the guard's logged event


def test_report_groups_seeds_and_lists_evaluations(runs, tmp_path):
    out = tmp_path / "rep"
    path = build_report(runs, out, gradient_images=0)
    text = path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| fgsm_rs alpha=2 |"))
    cells = comparison(row)
    assert cells["runs"] == "rs-s{0,1}" and cells["seeds"] == "2"
    assert cells["CO (runs)"] == "1/2" and cells["CO epochs"] == "3" and cells["CO at end"] == "1/2 (3)"
    assert cells["robust %"] == "10.00 ± 14.14"  # robust 0.0 and 0.2: mean 10%, sample std 14.14%
    assert cells["AutoAttack %"] == "-"  # no AutoAttack result
    zg = next(line for line in text.splitlines() if line.startswith("| zerograd q=0.25 |"))
    # the guard's CO event counts as a flag; the run recovered, so no CO at the end;
    # its AutoAttack file is of another checkpoint (best) and n, so it is not the column's
    assert "| 1/1 | 2 | 0/1 | 1 |" in zg and "30.00" in zg and comparison(zg)["AutoAttack %"] == "-"
    assert "| zg-s0 | evals/aa.json | best | AutoAttack (standard) |" in text
    assert "| rs-s0 | eval.json | last | PGD-50-10, eps 8/255, step 0.25 eps | 100 | 50.00 | 0.00 |" in text
    for name in ("overview", "rs-s0", "rs-s1", "zg-s0"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == PNG
        assert f"plots/{name}.png" in text


def test_setting_label_names_non_default_hyperparameters():
    assert setting_label({"method": "zerograd", "method_args": {"q": 0.35, "alpha": 2.0}}) == "zerograd"
    assert setting_label({"method": "fgsm", "method_args": {}, "grad_align": 0.2}) == "fgsm + GradAlign 0.2"
    assert setting_label({"method": "zerograd", "guard": {"enabled": True, "q_step": 0.15, "drop": 0.5}}) \
        == "zerograd + guard (q_step=0.15)"


def test_report_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "is not a zerograd run folder" in capsys.readouterr().err
    assert main(["report", str(runs[0]), str(runs[1])]) == 2
    assert "need --out" in capsys.readouterr().err
    assert not (runs[0] / "report.md").exists() and not (runs[0] / "plots").exists()


def write_experiment(tmp_path):
    spec = {"base": {"dataset": "digits", "model": "small_cnn", "model_args": {"width": 4}, "epochs": 1,
                     "batch_size": 64, "eps": 0.2, "val_size": 100, "test_n": 50, "test_restarts": 1,
                     "test_pgd_steps": 3},
            "seeds": [0, 1],
            "runs": {"fgsm_rs": {"method": "fgsm_rs"},
                     "zg": {"method": "zerograd", "method_args": {"q": 0.25}, "seeds": [3]}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_reproduce_trains_reports_and_keeps_finished_runs(tmp_path, capsys):
    exp = write_experiment(tmp_path)
    names = [n for n, _ in plan(str(exp))]
    assert names == ["fgsm_rs-s0", "fgsm_rs-s1", "zg-s3"]
    out = tmp_path / "out"
    report = reproduce(str(exp), out, quiet=True, only=["zg"])
    comparison = report.read_text().split("## Comparison over seeds")[1].split("\n## ")[0]
    assert (out / "zg-s3" / "eval.json").is_file() and comparison.count("| zerograd q=0.25 |") == 1
    stamp = (out / "zg-s3" / "eval.json").stat().st_mtime_ns
    reproduce(str(exp), out, quiet=True, only=["zg"])
    assert (out / "zg-s3" / "eval.json").stat().st_mtime_ns == stamp
    assert main(["reproduce", str(exp), "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("zerograd train ") and "--set method=fgsm_rs" in printed[0]
    assert "--set seed=1" in printed[1] and printed[-1].startswith("zerograd report ")


def test_command_line_round_trips_through_the_config_parser(tmp_path):
    from zerograd.config import load_config

    exp = write_experiment(tmp_path)
    _, cfg = plan(str(exp))[2]
    sets = command_line(cfg, tmp_path / "x").split("--set ")[1:]
    again = load_config(None, [s.strip().split(" --out")[0] for s in sets])
    assert again == cfg


def test_unknown_experiment_and_run_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        plan("nope")
    with pytest.raises(ConfigError, match="--only 'zz' is not a run"):
        plan(str(write_experiment(tmp_path)), only=["zz"])


@pytest.mark.slow
def test_cpu_co_experiment_fgsm_rs_overfits_and_zerograd_does_not(tmp_path, shared_data):
    """The shipped `cpu-co` experiment, one seed (two runs of ~4 min on one idle thread): FGSM-RS
    with alpha=2 catastrophically overfits and ZeroGrad with q=0.65 does not."""
    report = reproduce("cpu-co", tmp_path, seeds=[0], only=["fgsm_rs-a2", "zerograd-q0.65"],
                       data_dir=str(shared_data), quiet=True)
    assert co_epoch(read_run(tmp_path / "fgsm_rs-a2-s0")) is not None
    assert co_epoch(read_run(tmp_path / "zerograd-q0.65-s0")) is None
    row = next(line for line in report.read_text().splitlines() if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["runs"] == "fgsm_rs-a2-s0" and comparison(row)["CO (runs)"] == "1/1"


def test_settings_that_differ_in_epochs_eps_or_model_get_distinct_labels():
    from zerograd.analysis import distinct_labels, setting_key

    base = {"method": "zerograd", "method_args": {}, "epochs": 10, "eps": 0.2, "model": "small_cnn", "seed": 0}
    configs = [base, {**base, "seed": 1}, {**base, "epochs": 20}, {**base, "eps": 0.1, "model": "preact_resnet18"}]
    labels = distinct_labels(configs)
    assert len(labels) == 3 and len(set(labels.values())) == 3  # seeds are one setting
    assert labels[setting_key(configs[2])] == "zerograd · epochs=20 eps=0.2 model=small_cnn"
    at_255 = distinct_labels([{**base, "eps": 8 / 255}, {**base, "eps": 16 / 255}])
    assert sorted(at_255.values()) == ["zerograd · eps=16/255", "zerograd · eps=8/255"]  # as they were set


def test_co_at_end_tells_a_persistent_collapse_from_a_dip(tmp_path):
    dip = make_run(tmp_path / "dip", seed=0, pgd=[0.2, 0.04, 0.25, 0.3], fgsm=[0.3, 0.3, 0.35, 0.4], robust=0.3)
    stays = make_run(tmp_path / "stays", seed=0, pgd=[0.2, 0.04, 0.05, 0.09], fgsm=[0.3, 0.3, 0.4, 0.5],
                     robust=0.0)
    never = make_run(tmp_path / "never", seed=0, pgd=[0.2, 0.25, 0.3], fgsm=[0.3, 0.35, 0.4], robust=0.3)
    assert [co_epoch(read_run(r)) for r in (dip, stays, never)] == [2, 2, None]
    assert [persistent_co_epoch(read_run(r)) for r in (dip, stays, never)] == [None, 2, None]


def test_the_onset_of_a_persistent_collapse_is_after_an_early_dip(tmp_path):
    """A dip flagged at epoch 2 that recovers, then the collapse that stays from epoch 5."""
    run = make_run(tmp_path / "r", seed=0, pgd=[0.1, 0.04, 0.12, 0.1, 0.05, 0.0, 0.01],
                   fgsm=[0.2, 0.2, 0.25, 0.3, 0.3, 0.3, 0.4], robust=0.0)
    assert co_epoch(read_run(run)) == 2 and persistent_co_epoch(read_run(run)) == 5
    row = next(line for line in build_report([run], tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["CO at end"] == "1/1 (5)"


def test_autoattack_column_averages_the_same_checkpoint_and_images(tmp_path):
    runs = [make_run(tmp_path / f"s{i}", seed=i, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3) for i in range(3)]
    for run, acc in zip(runs[:2], (0.2, 0.3)):
        (run / "evals").mkdir()
        (run / "evals" / "aa.json").write_text(json.dumps({
            "clean_acc": 0.5, "robust_acc": acc, "n": 100, "checkpoint": "last",
            "attack": {"name": "autoattack", "version": "standard"}}))
    row = next(line for line in build_report(runs, tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["AutoAttack %"] == "25.00 ± 7.07 (seeds 0, 1)"


def test_the_diagnostics_jump_at_the_onset_is_tabled(tmp_path):
    """make_run's weight_mse is 1e-4 x epoch: at onset 7, epochs 5..7 (largest 7e-4) against
    epochs 0..4 (largest 4e-4) give 1.75; delta_mse (10 x epoch) the same ratio."""
    run = make_run(tmp_path / "r", seed=0, pgd=[0.2, 0.25, 0.3, 0.3, 0.3, 0.3, 0.01, 0.0],
                   fgsm=[0.3] * 8, robust=0.0)
    assert persistent_co_epoch(read_run(run)) == 7
    text = build_report([run], tmp_path / "rep", gradient_images=0).read_text()
    assert "| r | 7 | `diag/weight_mse` | 0.0007 | 0.0004 | 1.75 |" in text
    assert "| r | 7 | `diag/delta_mse` | 70 | 40 | 1.75 |" in text
    assert "diag/delta_mse/zeroed" not in text  # not measured in this run: no row


def test_the_recorded_data_fingerprint_is_a_fact_not_a_setting():
    """config.yaml's `data:` (your own data's fingerprint, per run) neither splits seeds into
    settings nor shows in labels, like `environment`."""
    from zerograd.analysis import distinct_labels, setting_key

    base = {"method": "zerograd", "method_args": {}, "dataset": "folder:/d/a", "seed": 0,
            "data": {"fingerprint": "0123", "images": {"train": 9, "test": 3}}}
    other = {**base, "dataset": "folder:/d/b", "data": {"fingerprint": "4567", "images": {"train": 9, "test": 3}}}
    configs = [base, {**base, "seed": 1}, other]
    labels = distinct_labels(configs)
    assert setting_key(configs[0]) == setting_key(configs[1]) and len(labels) == 2
    assert labels[setting_key(other)] == "zerograd · dataset=folder:/d/b"


def test_the_size_of_the_training_perturbations_is_tabled_at_epoch_2_and_the_last(tmp_path):
    """Table 4's numbers: each run's delta_mean_abs_x255 at epoch 2 and its last epoch; a run
    without the diagnostic gets no row; a NaN at the last epoch falls back to the last finite one."""
    a = make_run(tmp_path / "a", seed=0, pgd=[0.2, 0.3, 0.3, 0.3], fgsm=[0.3] * 4, robust=0.3)
    b = make_run(tmp_path / "b", seed=0, pgd=[0.2, 0.3, 0.3], fgsm=[0.3] * 3, robust=0.3, method="zerograd",
                 args={"q": 0.35})
    make_run(tmp_path / "c", seed=0, pgd=[0.2, 0.3], fgsm=[0.3] * 2, robust=0.3, method="fgsm", args={})
    for run, values in ((a, [7.0, 6.5, 6.25, float("nan")]), (b, [6.0, 5.5, 5.125])):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for row, v in zip(rows, values):
            row["diag/delta_mean_abs_x255"] = v
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = build_report([a, b, tmp_path / "c"], tmp_path / "rep", gradient_images=0).read_text()
    assert "| a | fgsm_rs alpha=2 | 6.50 | 3 | 6.25 |" in text
    assert "| b | zerograd | 5.50 | 3 | 5.12 |" in text
    assert "| c |" not in text.split("## Size of the training perturbations")[1].split("## Evaluations")[0]


def test_autoattack_column_finds_the_results_files_zerograd_eval_writes(tmp_path):
    """`zerograd eval` records the checkpoint's path (and its kind and epoch), eval.json only
    its kind and epoch: the column matches them by kind and epoch, so an AutoAttack of the
    same last.pt counts and one of an earlier last.pt (evaluated mid-training) does not."""
    runs = [make_run(tmp_path / f"s{i}", seed=i, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3) for i in range(2)]
    for run, acc, epoch in zip(runs, (0.2, 0.1), (2, 1)):
        final = json.loads((run / "eval.json").read_text())
        (run / "eval.json").write_text(json.dumps({**final, "checkpoint_epoch": 2}))
        (run / "evals").mkdir()
        (run / "evals" / "autoattack-standard-last-n100.json").write_text(json.dumps({
            "clean_acc": 0.5, "robust_acc": acc, "n": 100, "checkpoint": str(run / "checkpoints" / "last.pt"),
            "checkpoint_kind": "last", "checkpoint_epoch": epoch,
            "attack": {"name": "autoattack", "version": "standard"}}))
    row = next(line for line in build_report(runs, tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["AutoAttack %"] == "20.00 (seed 0)"


def test_null_and_inf_values_in_metrics_are_skipped_not_a_crash(tmp_path):
    """metrics.jsonl may hold null (a NaN) or 'inf' for a measured value (check_record accepts
    them): the CO rules and the s/epoch column skip such values, as the plots do."""
    run = make_run(tmp_path / "r", seed=0, pgd=[0.2, 0.3, 0.02, 0.01], fgsm=[0.3, 0.4, 0.9, 0.9], robust=0.0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records[0].update({"val/pgd_acc": None, "time/epoch_s": "inf"})
    records[1]["val/fgsm_acc"] = "inf"
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert co_epoch(read_run(run)) == 3 and persistent_co_epoch(read_run(run)) == 3
    row = next(line for line in build_report([run], tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["CO (runs)"] == "1/1" and comparison(row)["s/epoch"] == "2.0"


def test_autoattack_column_ignores_an_evaluation_at_another_eps(tmp_path):
    """`zerograd eval RUN --attack autoattack --eps 16/255` is another budget: newer or not,
    it is not the AutoAttack accuracy of the run's own eps."""
    run = make_run(tmp_path / "s0", seed=0, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3)
    (run / "evals").mkdir()
    for name, eps, acc, created in (("aa.json", 8 / 255, 0.2, "2026-01-01"), ("aa-eps.json", 16 / 255, 0.05, "2026-02-01")):
        (run / "evals" / name).write_text(json.dumps({
            "clean_acc": 0.5, "robust_acc": acc, "n": 100, "checkpoint": "last", "created": created,
            "attack": {"name": "autoattack", "version": "standard", "eps": eps}}))
    row = next(line for line in build_report([run], tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["AutoAttack %"] == "20.00"


def test_a_failed_write_keeps_the_previous_report_whole(tmp_path, monkeypatch):
    """A write that fails part-way (here: the file-size limit, as a full disk would) leaves
    the previous report.md as it was, not a truncated new one."""
    import resource
    import signal

    from zerograd import report

    run = make_run(tmp_path / "r", seed=0, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3)
    old = build_report([run], tmp_path / "rep", gradient_images=0).read_bytes()
    (run / "eval.json").write_text((run / "eval.json").read_text().replace("0.3", "0.25"))
    monkeypatch.setattr(report, "plot_run", lambda *args: None)  # only report.md is written
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(old) // 2, limit[1]))
    try:
        with pytest.raises(OSError):
            build_report([run], tmp_path / "rep", gradient_images=0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert (tmp_path / "rep" / "report.md").read_bytes() == old


def test_a_results_file_that_is_not_json_is_one_line_not_a_silent_gap(tmp_path):
    """A damaged eval.json (zerograd writes it atomically) would leave the run's row with
    'n/a' and no word why: it is refused in one line naming the file, before anything is written."""
    run = make_run(tmp_path / "r", seed=0, pgd=[0.2], fgsm=[0.3], robust=0.3)
    (run / "eval.json").write_text('{"clean_acc": 0.5, "rob')
    with pytest.raises(ConfigError, match="eval.json' is not JSON"):
        build_report([run], tmp_path / "rep", gradient_images=0)
    assert not (tmp_path / "rep").exists()


def test_a_mean_over_fewer_runs_than_the_setting_has_says_so(tmp_path):
    """Reporting while a seed is still training (no eval.json yet): the clean and robust
    cells average the finished runs only and say '(2/3)', as the AutoAttack cell does."""
    runs = [make_run(tmp_path / f"s{i}", seed=i, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.1 * (i + 1))
            for i in range(3)]
    (runs[2] / "eval.json").unlink()
    row = next(line for line in build_report(runs, tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    cells = comparison(row)
    assert cells["seeds"] == "3" and cells["runs"] == "s0, s1, s2"
    assert cells["clean %"] == "50.00 ± 0.00 (2/3)" and cells["robust %"] == "15.00 ± 7.07 (2/3)"


def test_a_run_given_twice_is_refused_not_counted_as_two_seeds(tmp_path, monkeypatch):
    """`zerograd report runs/*-s0 runs/fgsm*` names fgsm-s0 twice: it would be two seeds of
    its setting (a halved std, a doubled weight), so it is one line before anything is written."""
    a = make_run(tmp_path / "a", seed=0, pgd=[0.2], fgsm=[0.3], robust=0.1)
    b = make_run(tmp_path / "b", seed=1, pgd=[0.2], fgsm=[0.3], robust=0.3)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"run folder 'a' is given twice \(also as '.*a'\)"):
        build_report([a, b, "a/"], tmp_path / "rep", gradient_images=0)
    assert not (tmp_path / "rep").exists()


def test_every_run_gets_its_own_plot_file(tmp_path):
    """Runs named s0 (twice), s0-2 and overview: each plot file is one run's (the overview
    plot of all runs included), none overwritten by another."""
    from zerograd.report import _unique_names

    folders = [tmp_path / "a" / "s0", tmp_path / "b" / "s0", tmp_path / "c" / "s0-2", tmp_path / "d" / "overview",
               tmp_path / "e" / "x", tmp_path / "f" / "x-gradients"]
    runs = [read_run(make_run(f, seed=i, pgd=[0.2], fgsm=[0.3], robust=0.1)) for i, f in enumerate(folders)]
    names = _unique_names(runs)
    files = [p for n in names for p in (n, f"{n}-gradients")] + ["overview"]
    assert len(set(files)) == len(files) and names[0] == "s0"


def test_how_data_is_read_and_checkpoints_are_written_do_not_split_seeds(tmp_path):
    """Streaming, loader workers, the data budget and checkpoint frequency give equal results:
    two seeds differing in them are one setting; a different alpha is another."""
    runs = [make_run(tmp_path / f"s{i}", seed=i, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.1 * (i + 1))
            for i in range(3)]
    changes = [{"loader_workers": 0, "stream": True, "checkpoint_every_steps": 5},
               {"loader_workers": 2, "data_budget": "1GiB", "keep_epoch_checkpoints": False},
               {"method_args": {"alpha": 1.0}}]
    for run, change in zip(runs, changes):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, **change}))
    table = build_report(runs, tmp_path / "rep", gradient_images=0).read_text().split("## Comparison")[1]
    rows = [line for line in table.splitlines() if line.startswith("| fgsm_rs")]
    assert len(rows) == 2 and any(comparison(r)["seeds"] == "2" and "15.00 ± 7.07" in r for r in rows)


def test_a_seed_scored_at_its_best_checkpoint_shows_in_the_attack_column(tmp_path):
    """A guard that stops a run scores its best checkpoint; averaged with seeds scored at their
    last, the row names both, so the mix is visible."""
    runs = [make_run(tmp_path / f"s{i}", seed=i, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3) for i in range(2)]
    ev = json.loads((runs[1] / "eval.json").read_text())
    (runs[1] / "eval.json").write_text(json.dumps({**ev, "checkpoint": "best", "stopped": "guard"}))
    row = next(line for line in build_report(runs, tmp_path / "rep", gradient_images=0).read_text().splitlines()
               if line.startswith("| fgsm_rs alpha=2 |"))
    assert comparison(row)["attack"] == "PGD-50-10, n=100; PGD-50-10, n=100, best checkpoint"


def test_a_kept_copy_beside_its_original_is_refused_not_counted_as_a_second_seed(tmp_path):
    import shutil

    run = make_run(tmp_path / "r-s0", seed=0, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3)
    copy = shutil.copytree(run, tmp_path / "kept" / "r-s0")
    other = make_run(tmp_path / "r-s1", seed=1, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.1)
    with pytest.raises(ConfigError, match="same setting with the same seed"):
        build_report([run, other, copy], tmp_path / "rep", gradient_images=0)
    assert not (tmp_path / "rep").exists()
    assert build_report([run, other], tmp_path / "rep", gradient_images=0).is_file()


def test_labels_name_a_hyperparameter_the_compared_runs_of_a_method_differ_in_even_at_its_default():
    """fgsm_rs at its default alpha (1.25) beside fgsm_rs alpha=2 is 'fgsm_rs alpha=1.25', not a bare
    'fgsm_rs' that reads like the other; alone, the default stays unnamed."""
    from zerograd.analysis import distinct_labels, setting_key

    default = {"method": "fgsm_rs", "method_args": {"alpha": 1.25}, "seed": 0}
    two = {"method": "fgsm_rs", "method_args": {"alpha": 2.0}, "seed": 0}
    zg = {"method": "zerograd", "method_args": {}, "seed": 0}
    labels = distinct_labels([default, two, zg])
    assert [labels[setting_key(c)] for c in (default, two, zg)] == ["fgsm_rs alpha=1.25", "fgsm_rs alpha=2",
                                                                    "zerograd"]
    assert distinct_labels([default])[setting_key(default)] == "fgsm_rs"


def test_a_run_s_section_says_whether_its_collapse_persists(tmp_path):
    """An early dip the run recovers from, then a collapse that stays: the section names both epochs."""
    runs = [make_run(tmp_path / "late", seed=0, pgd=[0.1, 0.04, 0.12, 0.1, 0.05, 0.0, 0.01],
                     fgsm=[0.2, 0.2, 0.25, 0.3, 0.3, 0.3, 0.4], robust=0.0),
            make_run(tmp_path / "dip", seed=1, pgd=[0.2, 0.04, 0.25, 0.3], fgsm=[0.3, 0.3, 0.35, 0.4], robust=0.3),
            make_run(tmp_path / "stays", seed=2, pgd=[0.2, 0.04, 0.05, 0.09], fgsm=[0.3, 0.3, 0.4, 0.5],
                     robust=0.0)]
    text = build_report(runs, tmp_path / "rep", gradient_images=0).read_text()
    assert "CO: flagged at epoch 2 (recovered), persistent from epoch 5 ·" in text
    assert "CO: epoch 2, recovered (a transient dip or a rollback) ·" in text
    assert "CO: epoch 2, persists to the end ·" in text
    assert "· fgsm_rs alpha=2 · seed 0 ·" in text  # the section names the setting as the table does


def test_the_cost_section_sums_training_epoch_ends_and_evaluations_from_the_files(tmp_path):
    """Two epochs of 1800 s of training and 900 s of epoch-end work, and a measurement file of 3600 s;
    the other run (2 s epochs) predates time/epoch_end_s, and the total says so."""
    new = make_run(tmp_path / "new", seed=0, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3)
    records = [json.loads(line) for line in (new / "metrics.jsonl").read_text().splitlines()]
    (new / "metrics.jsonl").write_text("".join(json.dumps({**m, "time/epoch_s": 1800.0, "time/epoch_end_s": 900.0}) + "\n" for m in records))
    (new / "evals").mkdir()
    (new / "evals" / "table10.json").write_text(json.dumps({"table": 10, "seconds": 3600.0}))
    old = make_run(tmp_path / "old", seed=1, pgd=[0.2, 0.3], fgsm=[0.3, 0.4], robust=0.3)
    for f in (new, old):  # eval.json: 1800 s of attack and 360 s of sanity checks
        ev = json.loads((f / "eval.json").read_text())
        (f / "eval.json").write_text(json.dumps({**ev, "seconds": 1800.0, "checks_seconds": 360.0}))
    text = build_report([new, old], tmp_path / "rep", gradient_images=0).read_text()
    assert "| new | 1.00 | 0.50 | 1.60 | 3.10 |" in text  # files: 3600 + 1800 + 360 s
    assert "| old | 0.00 | - | 0.60 | 0.60 |" in text
    assert "| all | 1.00 | 0.50 (not all recorded) | 2.20 | 3.70 |" in text
    alone = build_report([old], tmp_path / "rep2", gradient_images=0).read_text()
    assert "| all | 0.00 | - | 0.60 | 0.60 |" in alone  # nothing recorded: not a measured zero


def test_a_rollback_is_annotated_with_what_it_changed(runs):
    """Only the hyperparameter the rollback changed (q), not every method argument, so the notes
    of rollbacks a few epochs apart stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zerograd.plots import _mark_events

    fig, ax = plt.subplots()
    _mark_events(ax, read_run(runs[2]), annotate=True)
    assert [t.get_text() for t in ax.texts] == ["→ 1: q=0.35"]
    plt.close(fig)


def test_the_evaluations_table_names_a_checkpoint_the_same_way_for_every_results_file():
    """eval.json records the kind ('last'); a `zerograd eval` file records the path and the kind apart."""
    from zerograd.report import _checkpoint_cell

    assert _checkpoint_cell({"checkpoint": "last", "checkpoint_epoch": 40}) == "last, epoch 40"
    assert _checkpoint_cell({"checkpoint": "runs/r/checkpoints/last.pt", "checkpoint_kind": "last",
                             "checkpoint_epoch": 40}) == "last, epoch 40"
    assert _checkpoint_cell({"checkpoint": "runs/r/checkpoints/epoch-13.pt", "checkpoint_kind": "epoch-13",
                             "checkpoint_epoch": 13}) == "epoch-13"
    assert _checkpoint_cell({"checkpoint": "weights.pt"}) == "weights.pt"


def test_the_curve_table_shows_pgd_and_fgsm_at_chosen_epochs_and_the_value_a_rollback_kept(tmp_path):
    a = make_run(tmp_path / "a", seed=0, pgd=[0.1, 0.2, 0.3], fgsm=[0.2, 0.3, 0.4], robust=0.1)
    b = make_run(tmp_path / "b", seed=1, pgd=[0.15, 0.25, 0.35], fgsm=[0.2, 0.3, 0.4], robust=0.1)
    b_cfg = yaml.safe_load((b / "config.yaml").read_text())
    (b / "config.yaml").write_text(yaml.safe_dump({**b_cfg, "eps": 16 / 255}))
    with open(b / "metrics.jsonl", "a") as f:  # epoch 2 trained again after a rollback: 0.05 kept
        f.write(json.dumps({"epoch": 2, "step": 20, "train/loss": 1.0, "val/pgd_acc": 0.05}) + "\n")
    text = build_report([a, b], tmp_path / "rep", gradient_images=0, epochs=[3, 2]).read_text()
    assert "| run | 2 | 3 |" in text
    assert "| a (at 8/255) | 20.0 (30.0) | 30.0 (40.0) |" in text
    assert "| b (at 16/255) | 5.0 | 35.0 (40.0) |" in text


def test_the_curve_table_spreads_nine_epochs_over_the_longest_run_by_default(tmp_path):
    from zerograd.report import curve_epochs
    long = make_run(tmp_path / "a", seed=0, pgd=[0.1] * 40, fgsm=[0.2] * 40, robust=0.1)
    assert curve_epochs([read_run(long)]) == [1, 6, 11, 16, 20, 25, 30, 35, 40]
    short = make_run(tmp_path / "b", seed=0, pgd=[0.1] * 3, fgsm=[0.2] * 3, robust=0.1)
    assert curve_epochs([read_run(short)]) == [1, 2, 3]
    text = build_report([long], tmp_path / "rep", gradient_images=0).read_text()
    assert "| a | 10.0 (20.0) |" in text and "(at " not in text  # one eps: no eps in the names


@pytest.mark.parametrize("bad", [[0], [-3], [2, True]])
def test_a_bad_curve_epoch_is_one_line_before_anything_is_written(runs, tmp_path, bad):
    with pytest.raises(ConfigError, match="--epochs"):
        build_report(runs, tmp_path / "rep", gradient_images=0, epochs=bad)
    assert not (tmp_path / "rep").exists()


def test_the_overview_compares_runs_at_each_eps_apart_smallest_first(tmp_path):
    from zerograd.analysis import runs_by_eps
    folders = [make_run(tmp_path / n, seed=0, pgd=[0.1, 0.2], fgsm=[0.2, 0.3], robust=0.1) for n in "abc"]
    for folder, eps in zip(folders, (16 / 255, 8 / 255, 16 / 255)):
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        (folder / "config.yaml").write_text(yaml.safe_dump({**cfg, "eps": eps}))
    groups = runs_by_eps([read_run(f) for f in folders])
    assert list(groups) == ["8/255", "16/255"]
    assert [r.name for r in groups["16/255"]] == ["a", "c"] and [r.name for r in groups["8/255"]] == ["b"]


def test_a_setting_names_its_run_folders_seeds_of_one_name_compactly():
    from zerograd.report import run_names
    assert run_names(["fgsm_rs-a2-s0", "fgsm_rs-a2-s1", "fgsm_rs-a2-s2"]) == "fgsm_rs-a2-s{0,1,2}"
    assert run_names(["zerograd-s0"]) == "zerograd-s0"
    assert run_names(["a-s0", "b-s1"]) == "a-s0, b-s1"  # two names: both shown
    assert run_names(["rs-s0", "rs"]) == "rs-s0, rs"


@pytest.mark.parametrize("expect, onsets, seeds, judged", [
    ("overfits", [14, 11], 3, "held"),  # 2 of 3 already: the third cannot change it
    ("overfits", [14], 3, "pending"),
    ("overfits", [None, None], 3, "did not hold"),  # at most 1 of 3 can overfit now
    ("overfits", [14, None, None], 3, "did not hold"),
    ("overfits", [None, 5], 3, "pending"),
    ("overfits", [7], 1, "held"),
    ("does_not_overfit", [17], 3, "did not hold"),  # one seed that overfits decides it
    ("does_not_overfit", [None, None], 3, "pending"),
    ("does_not_overfit", [None, None, None], 3, "held"),
    ("does_not_overfit", [None], 1, "held"),
])
def test_a_prediction_is_decided_as_soon_as_the_seeds_to_come_cannot_change_it(expect, onsets, seeds, judged):
    from zerograd.analysis import Prediction, verdict
    assert verdict(Prediction("claim", "row", expect, planned("row", seeds)), onsets) == judged


def test_the_report_judges_an_experiment_s_predictions_from_its_finished_runs(tmp_path):
    from zerograd.analysis import Prediction
    collapse, healthy = ([0.2, 0.3, 0.02], [0.3, 0.4, 0.9]), ([0.2, 0.3, 0.32], [0.3, 0.4, 0.42])
    runs = [make_run(tmp_path / "rs-s0", seed=0, pgd=collapse[0], fgsm=collapse[1], robust=0.0),
            make_run(tmp_path / "rs-s1", seed=1, pgd=collapse[0], fgsm=collapse[1], robust=0.0),
            make_run(tmp_path / "zg-s0", seed=0, pgd=healthy[0], fgsm=healthy[1], robust=0.3, method="zerograd"),
            make_run(tmp_path / "zg-s1", seed=1, pgd=collapse[0], fgsm=collapse[1], robust=0.0, method="zerograd")]
    (runs[3] / "eval.json").unlink()  # still training: not counted
    found = [Prediction("rs overfits", "rs", "overfits", planned("rs", 3)),
             Prediction("zg holds", "zg", "does_not_overfit", planned("zg", 3)),
             Prediction("r overfits", "r", "overfits", planned("r", 3))]  # 'r' is not 'rs': no runs
    text = build_report(runs, tmp_path / "rep", gradient_images=0, predictions=found).read_text()
    assert "| rs overfits | `rs` | 2 of 3 | CO at end 2/2 (3, 3) | held |" in text
    assert "| zg holds | `zg` | 1 of 3 | CO at end 0/1 | pending |" in text
    assert "| r overfits | `r` | 0 of 3 | CO at end 0/0 | pending |" in text
    assert "## Predictions" not in build_report(runs, tmp_path / "rep2", gradient_images=0).read_text()


@pytest.mark.parametrize("entry, message", [
    ({"claim": "x", "row": "nope", "expect": "overfits"}, "names row 'nope', not a run of it"),
    ({"claim": "x", "row": "zg", "expect": "reaches", "bar": "nope"}, "names bar 'nope', not a run of it"),
    ({"claim": "x", "row": "zg", "expect": "reaches"}, "and bar, the row to reach, with expect: reaches"),
    ({"claim": "x", "row": ["zg"], "expect": "overfits"}, "names row ['zg'], not a run of it"),
    ({"claim": "x", "row": "zg", "expect": "collapses"}, "expects 'collapses'; valid: overfits, does_not_overfit"),
    ({"claim": "x", "row": "zg"}, "must be a mapping of exactly claim (text), row and expect"),
])
def test_a_bad_prediction_in_an_experiment_is_one_line_before_any_run(tmp_path, capsys, entry, message):
    exp = write_experiment(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    exp.write_text(yaml.safe_dump({**spec, "predictions": [entry]}))
    with pytest.raises(ConfigError, match="prediction 1 "):
        plan(str(exp))
    assert main(["reproduce", str(exp), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["report", str(tmp_path), "--experiment", str(exp)]) == 2
    assert message in capsys.readouterr().err


def test_the_shipped_experiments_predictions_name_their_rows():
    from zerograd.reproduce import experiment_names, predictions
    found = {name: predictions(name) for name in experiment_names()}
    assert [p.row for p in found["resnet-co"]][:3] == ["fgsm_rs-a2", "zerograd", "multigrad"]
    assert all(p.seeds == 3 for p in found["resnet-co"])
    assert {(p.row, p.bar, p.bar_seeds) for p in found["resnet-co"] if p.expect == "reaches"} == {
        ("zerograd", "fgsm_rs-a1.25", 3), ("multigrad", "fgsm_rs-a1.25", 3)}
    assert [(p.row, p.bar) for p in found["resnet-co"] if p.expect == "rescued_by_rollback"] == [
        ("zerograd-q0.25-rollback", "fgsm_rs-a1.25")]


@pytest.mark.parametrize("robust, bar, judged", [
    ([0.30, 0.32, 0.34], [0.20, 0.25, 0.30], "held"),
    ([0.20, 0.25, 0.30], [0.27, 0.28, 0.29], "held"),  # 0.25 >= 0.28 - 0.05 (the larger std), not - 0.01
    ([0.10, 0.11, 0.12], [0.25, 0.26, 0.27], "did not hold"),
    ([0.25, 0.30], [0.20, 0.25, 0.30], "pending"),  # the seed to come at 0 %: 0.183 < 0.25 - 0.05
    ([0.30], [0.20, 0.25, 0.30], "pending"),  # 0.10 if the seeds to come are at 0 %
    ([0.30, 0.32], [0.20, 0.25, 0.30], "held"),  # 0.207 >= 0.20 even if the seed to come is at 0 %
    ([0.30, 0.32], [0.0, 0.0, 0.0], "held"),
    ([0.0], [0.0, 0.0, 0.0], "held"),  # a collapsed bar is reached by anything (and the page says so)
    ([0.30, 0.32, 0.34], [0.0], "pending"),  # seeds of the bar still to come
])
def test_a_row_reaches_a_bar_when_its_mean_is_within_the_spread_once_all_seeds_are_in(robust, bar, judged):
    from zerograd.analysis import Prediction, reaches
    assert reaches(Prediction("c", "mg", "reaches", planned("mg", 3), "rs", planned("rs", 3)), robust, bar) == judged


def test_the_report_judges_a_bar_from_the_final_robust_accuracies(tmp_path):
    from zerograd.analysis import Prediction
    healthy = ([0.2, 0.3, 0.32], [0.3, 0.4, 0.42])
    runs = [make_run(tmp_path / "mg-s0", seed=0, pgd=healthy[0], fgsm=healthy[1], robust=0.37, method="multigrad",
                     args={"n": 3}),
            make_run(tmp_path / "rs-s0", seed=0, pgd=healthy[0], fgsm=healthy[1], robust=0.0)]
    text = build_report(runs, tmp_path / "rep", gradient_images=0,
                        predictions=[Prediction("mg reaches rs", "mg", "reaches", planned("mg", 1), "rs",
                                                planned("rs", 1))]).read_text()
    assert "| mg reaches rs | `mg` | 1 of 1 | robust 37.00 % against `rs`'s 0.00 % (1 of 1 seeds) | held |" in text


@pytest.mark.parametrize("seeds, bar, judged", [
    ([(False, False, 0.0), (False, False, 0.0)], [0.1] * 3, "could not be tested"),  # 2 of 3 not rolled back
    ([(False, False, 0.0)], [0.1] * 3, "pending"),
    ([(True, True, 0.3)], [0.1] * 3, "pending"),  # stopped, but seeds 1 and 2 may not overfit at all
    ([(True, True, 0.3), (True, False, 0.3)], [0.1] * 3, "did not hold"),  # 2 overfit, one stopped
    ([(True, False, 0.05), (True, False, 0.3)], [0.1, 0.1, 0.1], "did not hold"),  # one below the bar
    ([(True, False, 0.05), (True, False, 0.3)], [0.0, 0.1, 0.2], "pending"),  # 0.05 >= 0.1 - 0.1: inside
    ([(True, False, 0.3), (True, False, 0.3)], [0.1], "pending"),  # the bar is not complete
    ([(True, False, 0.3), (True, False, 0.2), (False, False, 0.0)], [0.1] * 3, "held"),
    ([(True, False, 0.3), (True, False, 0.2)], [0.1] * 3, "pending"),  # the third could still fail
])
def test_rescue_by_rollback_needs_most_seeds_rolled_back_and_each_rescued(seeds, bar, judged):
    from zerograd.analysis import Prediction, rescued
    assert rescued(Prediction("c", "zg", "rescued_by_rollback", planned("zg", 3), "rs", planned("rs", 3)),
                   seeds, bar) == judged


def test_the_report_counts_the_rollbacks_of_a_rescue_prediction(runs, tmp_path):
    from zerograd.analysis import Prediction
    found = [Prediction("zg rescued", "zg", "rescued_by_rollback", planned("zg", 1), "rs", planned("rs", 2))]
    text = build_report(runs, tmp_path / "rep", gradient_images=0, predictions=found).read_text()
    assert ("| zg rescued | `zg` | 1 of 1 | CO detected 1/1, their robust 30.00 % against `rs`'s 10.00 ± 14.14 % "
            "(2 of 2 seeds) | held |") in text


def test_reproduce_judges_its_predictions_and_report_refuses_a_run_of_another_config(tmp_path, capsys):
    exp = write_experiment(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    spec["predictions"] = [{"claim": "zg holds", "row": "zg", "expect": "does_not_overfit"}]
    exp.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    text = reproduce(str(exp), out, quiet=True, only=["zg"]).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| zg holds |"))
    assert row.startswith("| zg holds | `zg` | 1 of 1 | CO at end ") and row.endswith(" |")
    assert row.rsplit("|", 2)[1].strip() in ("held", "did not hold")  # one seed of one planned: decided
    assert main(["reproduce", str(exp), "--dry-run", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"--out {out} --experiment {exp}")
    assert main(["report", str(out / "zg-s3"), "--out", str(tmp_path / "rep"), "--gradient-images", "0",
                 "--experiment", str(exp)]) == 0
    assert "| zg holds | `zg` | 1 of 1 |" in (tmp_path / "rep" / "report.md").read_text()
    other = tmp_path / "other" / "zg-s3"  # the same name, another q: not this experiment's run
    shutil.copytree(out / "zg-s3", other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump({**cfg, "method_args": {**cfg["method_args"], "q": 0.5}}))
    capsys.readouterr()
    assert main(["report", str(other), "--out", str(tmp_path / "rep3"), "--experiment", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "is named as run 'zg-s3'" in err and "holds another config" in err and "q" in err
    assert not (tmp_path / "rep3").exists()


def test_the_curve_table_drops_epochs_a_rollback_abandoned(tmp_path):
    run = make_run(tmp_path / "a", seed=0, pgd=[0.1, 0.2, 0.3, 0.02], fgsm=[0.2, 0.3, 0.4, 0.5], robust=0.1)
    with open(run / "metrics.jsonl", "a") as f:  # back to epoch 2 at epoch 4; epoch 3 retrained, then a stop
        f.write(json.dumps({"event": "rollback", "epoch": 4, "step": 40, "to_epoch": 2, "co/detected": 1}) + "\n")
        f.write(json.dumps({"epoch": 3, "step": 30, "train/loss": 1.0, "val/pgd_acc": 0.25, "val/fgsm_acc": 0.3}) + "\n")
    text = build_report([run], tmp_path / "rep", gradient_images=0, epochs=[2, 3, 4]).read_text()
    assert "| a | 20.0 (30.0) | 25.0 (30.0) | - |" in text  # epoch 4 was abandoned, never trained again


@pytest.mark.parametrize("change, message", [
    ({"runs": {"fgsm_rs": {"method": "fgsm_rs", "seeds": []}}}, "is about row 'fgsm_rs', which plans no seeds"),
    ({"predictions": {}}, "'predictions' must be a list"),
])
def test_a_prediction_without_seeds_or_a_predictions_mapping_is_refused(tmp_path, change, message):
    exp = write_experiment(tmp_path)
    spec = yaml.safe_load(exp.read_text())
    spec["predictions"] = [{"claim": "x", "row": "fgsm_rs", "expect": "overfits"}]
    exp.write_text(yaml.safe_dump({**spec, **change}))
    with pytest.raises(ConfigError, match=message):
        plan(str(exp))


def test_the_overview_legend_of_a_panel_names_only_what_its_settings_differ_in(tmp_path, monkeypatch):
    """One panel per eps: its title says the eps, so its legend does not repeat it (nor the
    attack steps that go with it), and still tells its settings apart."""
    import matplotlib.pyplot as plt

    from zerograd.plots import plot_overview
    runs = []
    for name, eps, alpha in (("a", 8, 2.0), ("b", 8, 1.25), ("c", 16, 0.875), ("d", 16, 0.75)):
        folder = make_run(tmp_path / name, seed=0, pgd=[0.1, 0.2], fgsm=[0.2, 0.3], robust=0.1, args={"alpha": alpha})
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        (folder / "config.yaml").write_text(yaml.safe_dump({**cfg, "eps": eps / 255, "val_alpha": 4 / eps}))
        runs.append(read_run(folder))
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real_close(fig)))
    plot_overview(runs, tmp_path / "overview.png")
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in figures[0].axes]
    assert [ax.get_title() for ax in figures[0].axes] == ["eps = 8/255", "eps = 16/255"]
    assert legends == [["fgsm_rs alpha=2", "fgsm_rs alpha=1.25"], ["fgsm_rs alpha=0.875", "fgsm_rs alpha=0.75"]]
