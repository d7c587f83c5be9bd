"""Config: presets resolve (with `base:` chains), `--set` overrides are type-checked, "8/255"
parses, and every invalid value is a one-line ConfigError naming the value."""
import pytest

from zerograd.config import (
    Config,
    apply,
    augmentation,
    load_config,
    model_for,
    normalization,
    parse_override,
    preset_names,
    validate,
)
from zerograd.errors import ConfigError
from zerograd.methods import METHODS


def test_every_preset_validates_and_paper_values_hold():
    names = preset_names()
    assert {"quickstart", "cifar10-zerograd", "cifar10-multigrad", "cifar100-zerograd",
            "svhn-zerograd", "cifar10-wrn-zerograd"} <= set(names)
    for name in names:
        load_config(name)
    z = load_config("cifar10-zerograd")
    assert (z.method, z.method_args, z.epochs, z.lr_max, z.schedule) == (
        "zerograd", {"q": 0.35, "alpha": 2.0, "iters": 1, "random_init": True}, 30, 0.2, "cyclic")
    assert abs(z.eps - 8 / 255) < 1e-12
    m = load_config("cifar10-multigrad")
    assert m.method_args == {**METHODS.defaults("multigrad"), "n": 3, "alpha": 1.0, "chunk": 1}  # no q from the base
    assert load_config("cifar100-zerograd").method_args["q"] == 0.45
    s = load_config("svhn-zerograd")
    assert (s.epochs, s.lr_max, s.final_checkpoint, s.method_args["q"]) == (15, 0.01, "best", 0.7)
    w = load_config("cifar10-wrn-zerograd")
    assert (w.model_args, w.schedule, w.epochs) == ({"depth": 34, "widen_factor": 10, "dropout": 0.0}, "onedrop", 52)


def test_overrides_are_parsed_and_coerced():
    cfg = load_config("quickstart", ["eps=8/255", "method_args.q=0.4", "epochs=2", "train_subset=null"])
    assert cfg.eps == pytest.approx(8 / 255) and cfg.method_args["q"] == 0.4 and cfg.epochs == 2
    assert parse_override("method_args.alpha=1.5") == {"method_args": {"alpha": 1.5}}
    cfg = load_config("quickstart", ["method=multigrad", "method_args.n=2"])
    assert cfg.method_args == {**METHODS.defaults("multigrad"), "n": 2}  # the old method's args dropped


@pytest.mark.parametrize("override, message", [
    ("eps=0", "eps=0.0 is invalid"),
    ("eps=1.5", "eps=1.5 is invalid"),
    ("eps=abc", "eps='abc' has the wrong type"),
    ("epochs=0", "epochs=0 is invalid"),
    ("epochs=2.5", "epochs=2.5 has the wrong type"),
    ("batch_size=0", "batch_size=0 is invalid"),
    ("method=zerogard", "did you mean 'zerograd'"),
    ("model=preact_resnet", "did you mean 'preact_resnet18'"),
    ("dataset=cifar1", "did you mean 'cifar10'"),
    ("epoch=3", "unknown --set key 'epoch' (did you mean 'epochs'?)"),
    ("method_args.q=1.2", "method_args.q=1.2 is invalid"),
    ("method_args.q=-0.1", "method_args.q=-0.1 is invalid"),
    ("method_args.qq=0.3", "did you mean 'q'"),
    ("method_args.q=high", "method_args.q='high' has the wrong type"),
    ("model_args.widht=3", "did you mean 'width'"),
    ("optimizer=sgdd", "did you mean 'sgd'"),
    ("schedule=cyclc", "did you mean 'cyclic'"),
    ("seed=x", "seed='x' has the wrong type"),
    ("amp=maybe", "amp='maybe' has the wrong type"),
    ("pad_mode=wrap", "pad_mode='wrap' is invalid: must be one of zeros, reflect"),
    ("rotate=200", "rotate=200.0 is invalid: must be in [0, 180]"),
    ("rotate=x", "rotate='x' has the wrong type"),
    ("flip=2", "flip=2 has the wrong type"),
    ("eps_ramp_epochs=-1", "eps_ramp_epochs=-1 is invalid: must be >= 0 (0: no ramp)"),
    ("alpha_ramp_epochs=-2", "alpha_ramp_epochs=-2 is invalid"),
    ("alpha_ramp_epochs=1.5", "alpha_ramp_epochs=1.5 has the wrong type"),
    ("grad_align_backprop_clean=2", "grad_align_backprop_clean=2 has the wrong type"),
    ("mean=[0.5,0.5,0.5]", "mean=[0.5, 0.5, 0.5] is invalid: digits needs 1 values"),
    ("mean=0.5", "mean=0.5 has the wrong type: expected a list"),
    ("std=[a]", "std[0]='a' has the wrong type"),
    ("std=[0]", "std=[0.0] is invalid: must be > 0"),
    ("lr_max=-1", "lr_max=-1.0 is invalid"),
    ("eps", "is not of the form key=value"),
    ("epochs.x=1", "'epochs' has no sub-keys"),
])
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("quickstart", [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_multigrad_n_must_be_positive_and_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="n=0"):
        load_config("cifar10-multigrad", ["method_args.n=0"])
    with pytest.raises(ConfigError, match="did you mean 'quickstart'"):
        load_config("quickstar")


def test_validate_returns_coerced_nested_values():
    cfg = validate(apply(Config(), {"method": "multigrad", "method_args": {"n": 2.0}}))
    assert cfg.method_args["n"] == 2 and isinstance(cfg.method_args["n"], int)


def test_normalization_override_reaches_the_model_and_defaults_to_the_dataset():
    cfg = load_config("quickstart")
    assert normalization(cfg) == ([0.3054], [0.3757]) and cfg.mean is None
    cfg = load_config("quickstart", ["mean=[0.5]", "std=[0.25]"])
    norm = model_for(cfg)[0]
    assert norm.mean.flatten().tolist() == [0.5] and norm.std.flatten().tolist() == [0.25]
    assert (cfg.mean, cfg.std) == ([0.5], [0.25])  # recorded in the run's config.yaml as given


def test_augmentation_keys_follow_the_dataset_default():
    assert augmentation(load_config("quickstart")) == {"augment": False, "pad_mode": "zeros", "flip": True, "crop": "pad",
                                                       "rotate": 0.0}
    cfg = load_config("quickstart", ["augment=true", "pad_mode=reflect", "flip=false", "rotate=15"])
    assert augmentation(cfg) == {"augment": True, "pad_mode": "reflect", "flip": False, "rotate": 15.0,
                                 "crop": "pad"}


def test_a_text_key_given_yaml_mapping_syntax_keeps_the_text():
    """`--set dataset=folder:` (no path yet) or `dataset=folder: my images` parse as YAML
    mappings; a text key takes the text, so the message names the path, not a dict."""
    assert parse_override("dataset=folder:") == {"dataset": "folder:"}
    assert parse_override("dataset=folder: my images") == {"dataset": "folder: my images"}
    assert parse_override("method_args=q: 0.3") == {"method_args": {"q": 0.3}}
    with pytest.raises(ConfigError, match=r"^dataset='folder:': no such folder ''; expected folder:PATH"):
        load_config("quickstart", ["dataset=folder:"])
