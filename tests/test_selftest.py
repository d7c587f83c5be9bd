"""Checks of `zerograd selftest`: on this CPU every method passes in every supported variant
and the two-process step equals one process; a broken method or a diverging variant is a
FAIL line and exit code 1."""

from zerograd.cli import main
from zerograd.methods import METHODS
from zerograd.selftest import selftest, settings


def test_every_method_and_variant_passes_on_this_cpu():
    checks = selftest("cpu", distributed=False)
    names = {c.name for c in checks}
    for setting in settings():
        assert {f"{setting} fp32", f"{setting} bf16", f"{setting} channels_last"} <= names
    assert all(c.passed for c in checks), [c.line() for c in checks if not c.passed]


def test_a_method_leaving_its_ball_fails_and_exits_1(monkeypatch, capsys):
    def too_far(model, x, y, *, eps, alpha=1.0):
        return ((x + 3 * eps).clamp(0, 1) - x).detach()

    monkeypatch.setitem(METHODS._entries, "fgsm", too_far)
    assert main(["selftest", "--device", "cpu", "--no-distributed"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  fgsm fp32" in out and "|delta|" in out
    assert "ok    zerograd fp32" in out


def test_two_processes_give_one_process_weights():
    checks = selftest("cpu", distributed=True, report=lambda c: None)
    ddp = [c for c in checks if c.name.startswith("ddp")]
    assert len(ddp) == 1 and ddp[0].passed, ddp[0].line()
    assert float(ddp[0].detail.split()[3]) < 1e-5
