"""CO diagnostics: each measure against a hand-computed value (weight-update MSE, perturbation
norms, sign disagreement, gradient cosine, zeroed fractions), the probe leaving the run
bitwise unchanged (RNG and batch-norm statistics restored), and a digits run logging every
diagnostic under its documented key."""
import math

import pytest
import torch

from zerograd import ConfigError, load_config, train
from zerograd.methods import zeroed_fraction
from zerograd.methods.perturbations import multigrad
from zerograd.runtime import isolated
from zerograd.training.diagnostics import (
    gradient_alignment,
    perturbation_norms,
    sign_disagreement,
    weight_update,
)

FAST = ["epochs=2", "test_restarts=1", "test_pgd_steps=5", "model_args.width=8"]


def test_weight_update_is_the_mean_squared_change():
    before = {"conv.weight": torch.zeros(2, 3), "conv.bias": torch.zeros(2)}
    after = {"conv.weight": torch.full((2, 3), 2.0), "conv.bias": torch.ones(2)}
    out = weight_update(before, after)
    assert out["diag/weight_mse/conv.weight"] == 4.0
    assert "diag/weight_mse/conv.bias" not in out  # per-layer: kernels only
    assert out["diag/weight_mse"] == pytest.approx((6 * 4 + 2 * 1) / 8)


def test_perturbation_norms_in_pixel_levels():
    delta = torch.zeros(2, 1, 2, 2)
    delta[0, 0, 0, 0], delta[0, 0, 1, 1] = 3 / 255, -4 / 255
    n = perturbation_norms(delta)
    assert n["mean_abs_x255"].tolist() == pytest.approx([7 / 4, 0])  # Table 4's unit: per entry
    assert n["l1_sum_x255"].tolist() == pytest.approx([7, 0])
    assert n["l2_x255"].tolist() == pytest.approx([5, 0])
    assert n["linf_x255"].tolist() == pytest.approx([4, 0])


def test_sign_disagreement_counts_nonzero_entries_of_opposite_sign():
    d = torch.tensor([[1.0, -1.0, 0.0, 1.0]])
    ref = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    assert sign_disagreement(d, ref) == 0.5  # entries 1 and 3; the zero entry does not count


def test_gradient_alignment_of_a_linear_model_is_one(tiny_cnn):
    from tests.conftest import Linear2

    model = Linear2(12)
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 0, 1, 1])
    # cross-entropy's input gradient of a linear model is (p - onehot) W: same direction
    # up to a positive factor for 2 classes wherever the label is the same
    assert gradient_alignment(model, x, y, eps=8 / 255) == pytest.approx(1.0, abs=1e-5)
    x = torch.rand(4, 3, 8, 8)
    cos = gradient_alignment(tiny_cnn, x, torch.arange(4), eps=0.5)
    assert -1 <= cos < 0.9999


def test_zeroed_fractions(tiny_cnn):
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8) * 0.8 + 0.1, torch.arange(4)
    frac = zeroed_fraction("zerograd", tiny_cnn, x, y, None, eps=8 / 255, q=0.4)
    assert frac == pytest.approx(0.4, abs=1 / 192)  # per-sample quantile of 192 entries
    delta = multigrad(tiny_cnn, x, y, eps=8 / 255, n=3)
    frac = zeroed_fraction("multigrad", tiny_cnn, x, y, delta, eps=8 / 255)
    assert frac == pytest.approx((delta == 0).float().mean().item()) and 0 < frac < 1
    assert zeroed_fraction("fgsm_rs", tiny_cnn, x, y, delta, eps=8 / 255) is None


def test_isolated_restores_rng_and_batch_norm_statistics(tiny_cnn):
    torch.manual_seed(1)
    buffers = [b.clone() for b in tiny_cnn.buffers()]
    expected = torch.rand(3)
    torch.manual_seed(1)
    tiny_cnn.train()
    with isolated(tiny_cnn, torch.device("cpu"), seed=123):
        tiny_cnn(torch.rand(8, 3, 8, 8))  # updates running statistics, draws random numbers
        assert not all(torch.equal(a, b) for a, b in zip(buffers, tiny_cnn.buffers()))
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(a, b) for a, b in zip(buffers, tiny_cnn.buffers()))


def test_probe_leaves_the_run_bitwise_unchanged_and_logs_every_key(tmp_path):
    plain = train(load_config("quickstart", FAST + ["diagnostics.weights=false", "diagnostics.norms=false",
                                                    "diagnostics.fgsm_val=false"]), quiet=True)
    probed = train(load_config("quickstart", FAST + ["diagnostics.probe=32", "diagnostics.every=7"]),
                   tmp_path / "r", quiet=True)
    for (k, a), b in zip(plain.model.state_dict().items(), probed.model.state_dict().values()):
        assert torch.equal(a, b), k
    epochs = [m for m in probed.history if "train/loss" in m]
    keys = {"diag/weight_mse", "diag/delta_mean_abs_x255", "diag/delta_l1_sum_x255", "diag/delta_l2_x255",
            "diag/delta_linf_x255", "val/fgsm_acc",
            "diag/sign_disagree", "diag/grad_cosine", "diag/zeroed_frac"}
    assert all(keys <= set(m) for m in epochs)
    assert {"diag/delta_mse", "diag/delta_mse/fgsm_rs", "diag/delta_mse/zeroed"} <= set(epochs[1])
    assert "diag/delta_mse" not in epochs[0]  # nothing to compare with yet
    steps = [m for m in probed.history if "diag/sign_disagree" in m and "train/loss" not in m]
    assert [m["step"] for m in steps] == [7, 14, 21, 28, 35]  # 20 steps per digits epoch
    eps255 = 0.2 * 255
    assert all(m["diag/delta_linf_x255"] <= eps255 + 1e-3 for m in epochs)
    assert all(0 <= m["diag/sign_disagree"] <= 1 and math.isfinite(m["diag/grad_cosine"]) for m in epochs)
    assert epochs[0]["diag/weight_mse"] > 0
    assert all(m["diag/delta_mean_abs_x255"] == pytest.approx(m["diag/delta_l1_sum_x255"] / 64)
               for m in epochs)  # 8x8 digits: 64 entries per image
    assert all(0 < m["diag/delta_mean_abs_x255"] <= eps255 for m in epochs)


def test_bad_diagnostics_options_are_config_errors():
    with pytest.raises(ConfigError, match="diagnostics.every=5 needs a probe batch"):
        load_config("quickstart", ["diagnostics.every=5"])
    with pytest.raises(ConfigError, match=r"unknown key diagnostics.prob \(did you mean 'probe'\?\)"):
        load_config("quickstart", ["diagnostics.prob=5"])
