"""Checks for zerograd.models.

Every MODELS entry (looped over, so new entries are covered automatically) must give
(B, num_classes) logits on 8x8x1 and 32x32x3 inputs, have a finite non-zero input
gradient, apply Normalize inside build_model, and reproduce its outputs after a
state_dict round trip (normalization included). Parameter counts match the published
networks; check_model_args / build_model reject bad names and values with ConfigError.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zerograd.errors import ConfigError
from zerograd.models import MODELS, Normalize, build_model, check_model_args, model_params

torch.set_num_threads(1)

NUM_CLASSES = 5
# Small hyperparameters so the big networks run fast on a CPU; entries not listed use defaults.
SMALL = {
    "preact_resnet18": {"width": 8},
    "wide_resnet": {"depth": 10, "widen_factor": 1},
    "wrn34_10": {"widen_factor": 1},
    "small_cnn": {"width": 8},
}
NAMES = sorted(MODELS)


def _stats(channels, shift=0.0):
    mean = torch.linspace(0.3, 0.6, channels) + shift
    std = torch.linspace(0.2, 0.3, channels) + shift
    return mean, std


def _build(name, channels=3, seed=0, shift=0.0):
    torch.manual_seed(seed)
    mean, std = _stats(channels, shift)
    return build_model(name, num_classes=NUM_CLASSES, in_channels=channels, mean=mean, std=std,
                       **SMALL.get(name, {}))


@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
@pytest.mark.parametrize("name", NAMES)
def test_logits_shape_and_finite_input_gradient(name, channels, size):
    model = _build(name, channels)
    x = torch.rand(3, channels, size, size, requires_grad=True)
    logits = model(x)
    assert logits.shape == (3, NUM_CLASSES)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([0, 1, 2])), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_normalize_is_applied_inside(name):
    model = _build(name).eval()
    assert isinstance(model[0], Normalize) and model[0].mean.shape == (1, 3, 1, 1)
    x = torch.rand(2, 3, 8, 8)
    mean, std = _stats(3)
    expected = model[1]((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    x = torch.rand(2, 3, 8, 8)
    source = _build(name, seed=0).eval()
    target = _build(name, seed=1, shift=0.1).eval()  # other weights and other mean/std
    assert not torch.allclose(source(x), target(x))
    state = source.state_dict()
    assert {"0.mean", "0.std"} <= set(state)
    target.load_state_dict(state)
    assert torch.equal(source(x), target(x))


def test_lazy_model_loads_before_first_forward():
    """A fresh one_layer_cnn/mlp must accept a checkpoint before it has seen any input."""
    x = torch.rand(2, 3, 8, 8)
    source = _build("one_layer_cnn").eval()
    expected = source(x)
    target = _build("one_layer_cnn", seed=1).eval()
    target.load_state_dict(source.state_dict())
    assert torch.equal(target(x), expected)


# Counts on the meta device: no memory is allocated for the 46M-parameter network.
# preact_resnet18 has the final BN-ReLU of Wong et al. 2020, so it has 1024 more parameters
# (BN(512) weight + bias) than the often-quoted 11,171,146 of kuangliu's PreActResNet-18,
# which has no final BN. WRN counts are those of TRADES / RobustBench (46.16M, 36.48M).
@pytest.mark.parametrize("name,args,expected", [
    ("preact_resnet18", {}, 11_171_146 + 1024),
    ("wide_resnet", {}, 46_160_474),
    ("wrn34_10", {}, 46_160_474),
    ("wide_resnet", {"depth": 28, "widen_factor": 10}, 36_479_194),
])
def test_parameter_counts(name, args, expected):
    with torch.device("meta"):
        net = MODELS[name](num_classes=10, in_channels=3, **args)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_small_cnn_batch_norm_switch():
    has_bn = [any(isinstance(m, nn.BatchNorm2d) for m in MODELS["small_cnn"](10, 3, batch_norm=b)
                  .modules()) for b in (True, False)]
    assert has_bn == [True, False]


@pytest.mark.parametrize("name,expected", [
    ("preact_resnet18", {"width": 64, "shortcut": "input"}),
    ("wide_resnet", {"depth": 34, "widen_factor": 10, "dropout": 0.0}),
    ("wrn34_10", {"depth": 34, "widen_factor": 10, "dropout": 0.0}),
    ("small_cnn", {"width": 32, "batch_norm": True}),
    ("one_layer_cnn", {"filters": 4, "kernel_size": 3}),
    ("mlp", {"hidden": 256, "depth": 2}),
])
def test_model_params_defaults(name, expected):
    assert model_params(name) == expected


@pytest.mark.parametrize("name", NAMES)
def test_defaults_and_small_args_pass_check(name):
    check_model_args(name, model_params(name))
    check_model_args(name, SMALL.get(name, {}))


@pytest.mark.parametrize("name,args,message", [
    ("preact_resnet", {}, "did you mean 'preact_resnet18'"),
    ("preact_resnet18", {"widht": 8}, r"'widht' \(did you mean 'width'\?\); valid: width"),
    ("wide_resnet", {"depth": 12}, r"depth=12 .*10, 16, 22, 28, 34, 40"),
    ("wide_resnet", {"dropout": 1.0}, r"dropout=1.0 .*\[0, 1\)"),
    ("wide_resnet", {"dropout": "0.1"}, "must be a number"),
    ("preact_resnet18", {"width": 0}, "width=0 .*integer >= 1"),
    ("preact_resnet18", {"width": 8.0}, "width=8.0 .*integer >= 1"),
    ("small_cnn", {"batch_norm": 1}, "batch_norm=1 .*true or false"),
])
def test_check_model_args_errors(name, args, message):
    with pytest.raises(ConfigError, match=message):
        check_model_args(name, args)


@pytest.mark.parametrize("kwargs,message", [
    ({"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}, "mean has 2 values"),
    ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, "must be > 0"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "num_classes": 0}, "num_classes=0"),
    ({"mean": [0.5] * 3, "std": [0.2] * 3, "widht": 4}, "did you mean 'width'"),
])
def test_build_model_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_model("small_cnn", **{"num_classes": 10, **kwargs})


def _block_by_hand(block, x, shortcut_input):
    out = block.conv1(F.relu(block.bn1(x)))
    out = block.conv2(F.relu(block.bn2(out)))
    return out + block.shortcut(shortcut_input)


@pytest.mark.parametrize("shortcut", ["input", "activated"])
def test_preact_shortcut_conv_sees_the_raw_or_the_activated_input(shortcut):
    torch.manual_seed(0)
    net = MODELS["preact_resnet18"](num_classes=5, in_channels=3, width=8, shortcut=shortcut).eval()
    block = net.layers[1][0]  # the first block of stage 2 has a 1x1 conv shortcut
    for bn in (block.bn1, block.bn2):  # non-trivial statistics, so relu(bn1(x)) differs from x
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 8, 16, 16)
    fed = x if shortcut == "input" else F.relu(block.bn1(x))
    assert torch.allclose(block(x), _block_by_hand(block, x, fed), atol=1e-6)
    assert not torch.allclose(block(x), _block_by_hand(block, x, F.relu(block.bn1(x)) if shortcut == "input" else x))


def test_preact_default_shortcut_is_the_input_one_with_the_same_weights():
    """Older checkpoints do not record `shortcut`: the default must compute what they trained."""
    torch.manual_seed(0)
    default = MODELS["preact_resnet18"](num_classes=5, in_channels=3, width=8)
    paper = MODELS["preact_resnet18"](num_classes=5, in_channels=3, width=8, shortcut="activated")
    paper.load_state_dict(default.state_dict())  # same parameters and buffers
    raw = MODELS["preact_resnet18"](num_classes=5, in_channels=3, width=8, shortcut="input")
    raw.load_state_dict(default.state_dict())
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(default(x), raw(x)) and not torch.allclose(default(x), paper(x))


def test_preact_bad_shortcut_is_refused():
    with pytest.raises(ConfigError, match="model_args.shortcut='raw' is invalid: must be one of input, activated"):
        check_model_args("preact_resnet18", {"shortcut": "raw"})
