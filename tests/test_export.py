"""`zerograd export`: the exported model (safetensors + model.json) loads with
`load_exported` and gives bitwise the outputs of the checkpoint's model, also for a model whose
first linear layer is lazy; the JSON names architecture, classes, normalization and threat
model; a non-empty folder is refused without --force; corrupt or unknown exports are one-line
errors."""
import json

import pytest
import torch
from safetensors.torch import load_file

from zerograd.checkpoint import load_checkpoint, save_checkpoint
from zerograd.cli import main
from zerograd.config import load_config, to_yaml
from zerograd.data import DATASETS
from zerograd.errors import ConfigError
from zerograd.export import export_model, load_exported
from zerograd.models import build_model
from zerograd.runfolder import load_model


def fake_run(root, model="small_cnn", **model_args):
    """A run folder with a checkpoint of random weights (export needs no training)."""
    sets = [f"model={model}"] + [f"model_args.{k}={v}" for k, v in model_args.items()]
    cfg = load_config("quickstart", sets)
    info = DATASETS[cfg.dataset]
    torch.manual_seed(0)
    net = build_model(cfg.model, num_classes=info.num_classes, in_channels=info.shape[0],
                      mean=info.mean, std=info.std, **cfg.model_args)
    net.eval()(torch.rand(2, *info.shape))  # materialises lazy layers
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    save_checkpoint(run / "checkpoints" / "last.pt", {"model": net.state_dict(),
                                                      "config": cfg.to_dict(), "epoch": 4})
    return run


@pytest.mark.parametrize("model, args", [("small_cnn", {"width": 4}), ("mlp", {"hidden": 16})])
def test_round_trip_gives_identical_outputs(tmp_path, model, args):
    run = fake_run(tmp_path, model, **args)
    out = export_model(run)
    assert out == run / "export"
    original, _, _ = load_model(run)
    exported = load_exported(out)
    assert not exported.training
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(exported(x), original.eval()(x))
    weights = load_file(str(out / "model.safetensors"))
    assert weights.keys() == original.state_dict().keys()


def test_metadata_describes_the_model(tmp_path):
    run = fake_run(tmp_path, width=4)
    meta = json.loads((export_model(run) / "model.json").read_text())
    info = DATASETS["digits"]
    assert (meta["architecture"], meta["model_args"], meta["num_classes"]) == ("small_cnn", {"width": 4, "batch_norm": True}, 10)  # every effective value
    assert meta["mean"] == list(info.mean) and meta["std"] == list(info.std)
    assert meta["input_range"] == [0.0, 1.0] and meta["threat_model"] == "Linf"
    assert meta["eps"] == 0.2 and meta["dataset"] == "digits" and meta["checkpoint_epoch"] == 4


def test_existing_export_needs_force_and_cli_reports_it(tmp_path, capsys):
    run = fake_run(tmp_path, width=4)
    assert main(["export", str(run)]) == 0
    assert "exported to" in capsys.readouterr().out
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zerograd: error: export folder") and len(err.strip().splitlines()) == 1
    assert main(["export", str(run), "--force"]) == 0


def test_bad_exports_are_refused(tmp_path):
    out = export_model(fake_run(tmp_path, width=4))
    meta = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**meta, "architecture": "small_cn"}))
    with pytest.raises(ConfigError, match="did you mean 'small_cnn'"):
        load_exported(out)
    (out / "model.json").write_text(json.dumps(meta))
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_exported(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.safetensors is missing"):
        load_exported(out)


def test_a_failed_export_keeps_the_previous_weights_whole(tmp_path, monkeypatch):
    """--force over an export whose write fails (full disk) leaves the old model.safetensors
    loadable and no temp file behind."""
    import errno
    import os

    from zerograd.errors import StorageError

    run = fake_run(tmp_path, width=4)
    out = export_model(run)
    before = (out / "model.safetensors").read_bytes()
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")  # new weights to export
    ckpt["model"] = {k: v * 2 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    save_checkpoint(run / "checkpoints" / "last.pt", ckpt)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="previous version is intact"):
        export_model(run, force=True)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == before
    assert load_file(str(out / "model.safetensors")).keys()
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]


def test_force_failing_after_the_weights_never_pairs_them_with_the_old_json(tmp_path, monkeypatch):
    """--force over an export of another checkpoint: the new weights are written, then
    model.json fails. The old model.json (another source checkpoint, epoch and SHA-256) must
    not describe the new weights; the export is refused as incomplete instead."""
    from zerograd import export
    from zerograd.errors import StorageError

    run = fake_run(tmp_path, width=4)
    out = export_model(run)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    ckpt["model"] = {k: v * 2 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    ckpt["epoch"] = 9
    save_checkpoint(run / "checkpoints" / "last.pt", ckpt)

    def full(path, obj):
        raise StorageError(f"cannot write {str(path)!r}: No space left on device")

    monkeypatch.setattr(export, "write_json", full)
    with pytest.raises(StorageError):
        export_model(run, force=True)
    with pytest.raises(ConfigError, match="model.json is missing"):
        load_exported(out)
