"""The issue's whole path in one place: your own network (a factory in a .py file, named by a
spec) trained on your own images (a generated ImageFolder of PNGs, and an .npz), killed in the
middle of an epoch and resumed from its mid-epoch point, bitwise equal to an uninterrupted
run; then evaluated as weights zerograd did not train, with the same clean accuracy."""
import pytest
import torch

from zerograd import load_config, train
from zerograd.checkpoint import load_checkpoint
from zerograd.evaluate import evaluate_external, evaluate_path
from zerograd.export import export_model

from .conftest import Crash, CrashAt
from .test_resume import comparable, same_weights
from .test_userdata import make_folder, make_npz

NET = """
from torch import nn

def convnet(num_classes, in_channels, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(width * 4, num_classes))
"""
STEPS_PER_EPOCH = 5  # 96 training images, 16 carved for validation, batch 16


@pytest.mark.parametrize("source", ["folder", "arrays"])
def test_your_network_on_your_data_resumes_bitwise_after_a_kill(tmp_path, source):
    (tmp_path / "net.py").write_text(NET)
    spec = f"module:{tmp_path / 'net.py'}:convnet"
    data = make_folder(tmp_path / "imgs", n=96) if source == "folder" else make_npz(tmp_path / "d.npz", n=96)
    cfg = load_config("quickstart", [
        f"dataset={source}:{data}", f"model={spec}", "model_args.width=6", "epochs=2", "batch_size=16",
        "val_size=16", "test_n=12", "test_pgd_steps=3", "test_restarts=1", "val_pgd_steps=3",
        "checkpoint_every_steps=2"])
    whole = train(cfg, tmp_path / "whole", quiet=True)
    with pytest.raises(Crash):
        train(cfg, tmp_path / "cut", quiet=True, callbacks=[CrashAt(STEPS_PER_EPOCH + 3)])
    point = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (point["epoch"], point["in_epoch"]["batch"]) == (2, 1)  # written after step 6, inside epoch 2
    resumed = train(cfg, tmp_path / "cut", quiet=True, resume=True, model=spec)
    assert same_weights(whole.model.state_dict(), resumed.model.state_dict())
    assert comparable(resumed.history) == comparable(whole.history)
    assert resumed.result["clean_acc"] == whole.result["clean_acc"]
    assert resumed.result["robust_acc"] == whole.result["robust_acc"]
    assert resumed.cfg.mean == whole.cfg.mean and len(whole.cfg.mean) == 3  # computed, recorded

    # the exported weights, evaluated as a model zerograd did not train: same clean accuracy
    exported = export_model(tmp_path / "whole", model=spec) / "model.safetensors"
    ours = evaluate_path(tmp_path / "whole", model=spec, n=12, steps=3, restarts=1)
    theirs = evaluate_external(exported, model=spec, dataset=f"{source}:{data}", model_args={"width": 6},
                               n=12, steps=3, restarts=1)
    assert theirs["clean_acc"] == ours["clean_acc"]
    assert torch.isfinite(torch.tensor([theirs["robust_acc"]])).all()
