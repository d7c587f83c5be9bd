"""Presets as documentation: docs/presets.md is what `zerograd presets --markdown` prints (it
fails when stale), each paper preset says what it reproduces, the paper's numbers and the
source of its settings, and the `reference:` metadata never reaches the Config. Also the
settings the paper fixes that a preset must keep (fp32, the paper's network and augmentation,
the SVHN peak and normalization)."""
from pathlib import Path

import pytest
import yaml

from zerograd.catalog import preset_lines, presets_markdown
from zerograd.cli import main
from zerograd.config import load_config, preset_names, preset_reference, read_preset
from zerograd.errors import ConfigError
from zerograd.methods import METHODS

DOC = Path(__file__).resolve().parents[1] / "docs" / "presets.md"
PAPER = [n for n in preset_names() if n not in ("quickstart", "cifar10-n_fgsm")]


def test_docs_presets_md_is_generated_from_the_presets():
    assert DOC.read_text() == presets_markdown(), (
        "docs/presets.md is stale: run `python -m zerograd presets --markdown > docs/presets.md`")


def test_cli_prints_the_list_and_the_markdown(capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert listed.splitlines() == preset_lines() and "cifar10-zerograd" in listed
    assert main(["presets", "--markdown"]) == 0
    assert capsys.readouterr().out == presets_markdown()


@pytest.mark.parametrize("name", PAPER)
def test_every_paper_preset_has_its_reference(name):
    ref = preset_reference(name)
    assert ref["reproduces"] and ref["reported"] and ref["sources"]
    assert "reference" not in read_preset(name)
    assert load_config(name).amp is False  # the paper trains in float32


def test_reference_is_merged_along_base_and_a_null_drops_an_entry(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"base": "cifar10-zerograd", "method_args": {"q": 0.4},
                                     "reference": {"reproduces": "x", "sources": {"method": "mine"},
                                                   "differences": {"restarts": None}}}))
    ref = preset_reference(str(child))
    assert ref["reproduces"] == "x" and "reported" not in ref
    assert ref["sources"]["method"] == "mine" and ref["sources"]["eps"].startswith("8/255")
    assert "restarts" not in ref["differences"] and "validation" in ref["differences"]
    assert load_config(str(child)).method_args == {**METHODS.defaults("zerograd"), "q": 0.4, "alpha": 2.0}


def test_bad_reference_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"reference": {"reprodcues": "x"}}))
    with pytest.raises(ConfigError, match="reference must be a mapping with keys reproduces, reported"):
        read_preset(str(bad))


def test_paper_settings_the_presets_keep():
    z = load_config("cifar10-zerograd")
    assert (z.model_args["shortcut"], z.pad_mode, z.flip, z.rotate, z.schedule_args) == (
        "activated", "reflect", True, 0.0, {"peak": 0.5})
    c = load_config("cifar100-zerograd")
    assert (c.pad_mode, c.flip, c.rotate, c.method_args["q"]) == ("zeros", True, 15.0, 0.45)
    s = load_config("svhn-zerograd")
    assert (s.schedule_args, s.mean, s.std, s.augment) == ({"peak": 0.4}, [0.5] * 3, [0.5] * 3, False)
    g = load_config("svhn-gradalign")
    assert (g.grad_align, g.lr_max, g.alpha_ramp_epochs, g.flip, g.grad_align_backprop_clean) == (
        2.5, 0.05, 5, False, False)
    n = load_config("cifar10-n_fgsm")
    assert (n.model_args["shortcut"], n.pad_mode) == ("input", "zeros")
    for epochs in (52, 102, 152, 202):
        m = load_config(f"cifar10-onedrop-multigrad-e{epochs}")
        assert m.epochs == epochs and m.schedule_args["drop"] * epochs == pytest.approx(epochs - 2)
    e16 = load_config("cifar10-eps16-zerograd")
    assert e16.eps * 255 == pytest.approx(16) and e16.test_alpha * e16.eps * 255 == pytest.approx(2)
