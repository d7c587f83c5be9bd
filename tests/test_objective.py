"""The training objective: the ramp-up of eps and alpha over the first epochs (a function of
the step only, so a resumed run ramps exactly as an unbroken one; tests/test_resume.py checks
that end to end) and the step that uses it."""
import pytest
import torch

from zerograd import load_config, train
from zerograd.methods import METHODS
from zerograd.models import build_model
from zerograd.training.objective import Objective, ramp

EPS = 8 / 255


def test_ramp_is_linear_from_zero_then_one():
    assert [ramp(s, 2, 10) for s in (0, 5, 10, 20, 25)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert ramp(0, 0, 10) == 1.0  # no ramp


def _objective(*sets):
    cfg = load_config("quickstart", ["method=fgsm", "eps=8/255", "epochs=5", *sets])
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, mean=(0.5,), std=(0.25,), width=4)
    return Objective(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"),
                     steps_per_epoch=10), model


@pytest.mark.parametrize("sets, step, eps, alpha", [
    (["eps_ramp_epochs=2"], 5, EPS * 0.25, 1.0),  # alpha stays a multiple of the ramped eps
    (["alpha_ramp_epochs=4"], 10, EPS, 0.25),
    (["eps_ramp_epochs=2", "alpha_ramp_epochs=4"], 30, EPS, 0.75),
    (["eps_ramp_epochs=2"], 40, EPS, 1.0),
    ([], 0, EPS, 1.0),
])
def test_the_step_perturbs_with_the_ramped_eps_and_alpha(sets, step, eps, alpha):
    objective, model = _objective(*sets)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    got = objective.method_at(step)(model, x, y)
    assert torch.equal(got, METHODS["fgsm"](model, x, y, eps=eps, alpha=alpha))
    assert torch.equal(objective.method_at(None)(model, x, y), METHODS["fgsm"](model, x, y, eps=EPS))
    batch, _ = objective.step(x=x, y=y, step=step)
    assert torch.equal(batch.delta, got)


def test_the_loop_passes_the_step_so_a_ramp_changes_training():
    sets = ["epochs=1", "model_args.width=4", "train_subset=256", "val_size=50", "test_n=20",
            "test_restarts=1", "test_pgd_steps=1", "val_pgd_steps=1", "device=cpu"]
    plain, ramped = (train(load_config("quickstart", sets + extra), quiet=True)
                     for extra in ([], ["eps_ramp_epochs=1"]))
    assert not torch.equal(next(plain.model.parameters()), next(ramped.model.parameters()))
