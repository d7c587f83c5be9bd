"""Mixed precision: which autocast a config gets (and the errors), every method under CPU
bf16 autocast keeps float32 deltas inside its bounds with float32 thresholds and votes, and a
short bf16 training run on the CPU learns while really running in bf16."""
import pytest
import torch

from zerograd import load_config, train
from zerograd.errors import ConfigError
from zerograd.methods import METHODS, delta_bound, quantile_threshold, sign_votes, zero_small
from zerograd.precision import amp_dtype, grad_scaler

EPS = 8 / 255
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_dtype_choices_and_errors():
    assert amp_dtype(True, "auto", CPU) is None  # auto: float32 on the CPU
    assert amp_dtype(True, "bf16", CPU) is torch.bfloat16
    assert amp_dtype(False, "bf16", CPU) is None
    assert amp_dtype(True, "fp16", CUDA) is torch.float16
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        amp_dtype(True, "fp16", CPU)
    with pytest.raises(ConfigError, match="amp_dtype='fp8' is invalid"):
        load_config("quickstart", ["amp_dtype=fp8"])
    assert grad_scaler(torch.float16, CPU).is_enabled()
    assert not grad_scaler(torch.bfloat16, CPU).is_enabled()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_under_bf16_autocast_keeps_float32_and_its_bound(name, tiny_cnn):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 12, 12, generator=g), torch.randint(0, 10, (6,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tiny_cnn(x).dtype is torch.bfloat16  # autocast is really on
        delta = METHODS[name](tiny_cnn, x, y, eps=EPS)
    assert delta.dtype is torch.float32
    assert delta.abs().max() <= delta_bound(name, EPS) + 1e-6
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1 and delta.abs().sum() > 0


def test_threshold_of_a_bf16_gradient_is_taken_in_float32():
    g = torch.randn(4, 3, 8, 8).to(torch.bfloat16)
    out = zero_small(g, 0.35)
    a = g.abs().flatten(1).float()
    t = torch.quantile(a, 0.35, dim=1)
    assert torch.equal(quantile_threshold(a, 0.35), t)
    assert out.dtype is torch.bfloat16
    assert torch.equal(out != 0, ((a >= t[:, None]) & (a != 0)).view_as(g))


def test_multigrad_votes_under_autocast_are_exact_float32_counts(tiny_cnn):
    x, y = torch.rand(5, 3, 12, 12), torch.randint(0, 10, (5,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        votes = sign_votes(tiny_cnn, x, y, eps=EPS, n=3)
    assert votes.dtype is torch.float32
    assert torch.equal(votes, votes.round()) and votes.abs().max() <= 3
    assert set(votes.unique().tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0}


def test_bf16_training_on_cpu_learns_and_differs_from_float32():
    sets = ["epochs=4", "model_args.width=8", "test_restarts=1", "test_pgd_steps=5", "val_size=100",
            "test_n=200", "device=cpu"]
    bf16 = train(load_config("quickstart", sets + ["amp=true", "amp_dtype=bf16"]), quiet=True)
    fp32 = train(load_config("quickstart", sets), quiet=True)
    losses = [m["train/loss"] for m in bf16.history if "train/loss" in m]
    assert losses[-1] < losses[0] and bf16.result["clean_acc"] > 0.5  # chance is 0.1
    w16, w32 = (next(r.model.parameters()) for r in (bf16, fp32))
    assert w16.dtype is torch.float32 and not torch.equal(w16, w32)
