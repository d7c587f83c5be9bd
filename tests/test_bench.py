"""`zerograd bench --paper`: the paper's Sec. 4.4 table assembled beside measured ratios and
compute-bound limits (checked on hand-made timings, never on the clock), a tiny real run
carrying every row, and --paper refusing --methods. Speed itself belongs to benchmarks."""
import pytest

from zerograd import ConfigError
from zerograd.bench import PAPER_TIMES, paper_table, run_bench


def test_paper_table_ratios_and_limits_from_given_timings():
    costs = {"a": 1.0, "u": 2.0, "g": 5.0}
    steps = {"fgsm_rs": 4.0, "zerograd": 4.4, "multigrad_chunk": 6.0, "gradalign": 18.0,
             "pgd2": 5.0, "pgd10": 13.0}
    methods = {k: {"s_per_step": v, "ratio": v / 4.0} for k, v in steps.items()}
    rows = {r["method"]: r for r in paper_table(methods, costs)}
    assert list(rows) == list(PAPER_TIMES)
    assert rows["MultiGrad"]["paper_ratio"] == pytest.approx(43.9 / 22.5)
    assert rows["PGD-10"]["paper_ratio"] == pytest.approx(124.2 / 22.5)
    assert rows["ZeroGrad"]["ratio"] == pytest.approx(1.1)
    # limits: FGSM-RS a+u = 3, MultiGrad 3a+u = 5, PGD-10 10a+u = 12, GradAlign 2a+u+g = 9
    assert [rows[m]["limit_s"] for m in ("FGSM-RS", "ZeroGrad", "MultiGrad", "GradAlign", "PGD-2", "PGD-10")] \
        == [3.0, 3.0, 5.0, 9.0, 4.0, 12.0]
    assert rows["PGD-10"]["limit_ratio"] == pytest.approx(4.0) and rows["PGD-10"]["limit"] == "10a+u"
    assert rows["GradAlign"]["limit"] == "2a+u+g" and rows["FGSM-RS"]["limit"] == "a+u"
    assert rows["GradAlign"]["over_limit"] == pytest.approx(2.0)


def test_paper_run_reports_every_row_and_the_passes():
    report = run_bench(model="small_cnn", batch_size=2, repeats=1, image_size=8, quiet=True, paper=True)
    assert [r["method"] for r in report["paper"]] == list(PAPER_TIMES)
    assert set(report["passes"]) == {"a", "u", "g"} and all(v > 0 for v in report["passes"].values())
    assert set(report["methods"]) == {row[0] for row in PAPER_TIMES.values()}


def test_paper_refuses_a_method_subset():
    with pytest.raises(ConfigError, match="--paper"):
        run_bench(methods=["fgsm"], paper=True)
