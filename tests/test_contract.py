"""The library contract of docs/api.md: METHODS and zerograd.evaluate refuse inputs outside
[0, 1] (and NaN) with one clear error, never modify the caller's tensors, and evaluate gives
the same numbers for float pixels as for their uint8 originals."""
import pytest
import torch

import zerograd
from zerograd.data import Split
from zerograd.errors import ConfigError


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (12, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (12,), generator=g)
    return x8, y


@pytest.mark.parametrize("name", list(zerograd.METHODS))
def test_every_method_refuses_normalized_inputs_and_keeps_the_callers_tensors(name, tiny_cnn, images):
    x8, y = images
    x = x8.float() / 255
    normalized = (x - 0.5) / 0.25
    with pytest.raises(ConfigError, match=r"pixels in \[0, 1\].*docs/api.md"):
        zerograd.METHODS[name](tiny_cnn, normalized, y, eps=8 / 255)
    with pytest.raises(ConfigError, match=r"pixels in \[0, 1\]"):
        zerograd.METHODS[name](tiny_cnn, x.clone().fill_(float("nan")), y, eps=8 / 255)
    with pytest.raises(ConfigError, match="eps="):
        zerograd.METHODS[name](tiny_cnn, x, y, eps=float("nan"))
    before_x, before_y = x.clone(), y.clone()
    delta = zerograd.METHODS[name](tiny_cnn, x, y, eps=8 / 255)
    assert not delta.requires_grad
    assert torch.equal(x, before_x) and torch.equal(y, before_y)


def test_evaluate_accepts_float_pixels_and_never_modifies_them(tiny_cnn, images):
    x8, y = images
    x = x8.float() / 255
    kept = x.clone()
    kw = {"eps": 8 / 255, "steps": 3, "restarts": 1, "seed": 0}
    as_uint8 = zerograd.evaluate(tiny_cnn, Split(x8, y), **kw)
    as_float = zerograd.evaluate(tiny_cnn, Split(x, y), **kw)
    assert torch.equal(x, kept)
    assert (as_float["clean_acc"], as_float["robust_acc"]) == (as_uint8["clean_acc"], as_uint8["robust_acc"])


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: Split((x - 0.5) / 0.25, y), r"pixels in \[0, 1\]"),
    (lambda x, y: Split(x, y.float()), "integer labels"),
    (lambda x, y: Split(x, y[:3]), "integer labels"),
])
def test_evaluate_refuses_a_split_outside_the_contract(bad, match, tiny_cnn, images):
    x8, y = images
    with pytest.raises(ConfigError, match=match):
        zerograd.evaluate(tiny_cnn, bad(x8.float() / 255, y), eps=8 / 255, steps=1, restarts=1)


@pytest.mark.parametrize("kw", [{"eps": float("nan")}, {"alpha": float("nan")}, {"alpha": float("inf")},
                                {"steps": 0}, {"restarts": -1}, {"eps": 2.0}])
def test_evaluate_refuses_non_finite_or_out_of_range_numbers(kw, tiny_cnn, images):
    x8, y = images
    with pytest.raises(ConfigError):
        zerograd.evaluate(tiny_cnn, Split(x8, y), **{"eps": 8 / 255, "steps": 1, "restarts": 1, **kw})


def test_zerograd_evaluate_stays_the_function_after_the_app_module_is_imported():
    import zerograd.evaluate

    assert callable(zerograd.evaluate) and zerograd.evaluate.__module__ == "zerograd.accuracy"
