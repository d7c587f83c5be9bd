"""Every subcommand, every option, hostile values generated from the option's type (NaN, inf,
huge, negative, zero, empty, wrong type, a YAML alias): the CLI answers with exit 0, or one
line and exit 2, never a traceback or an internal error. Each case starts from a valid, tiny
command line and replaces one option's value."""
import argparse
import dataclasses
from pathlib import Path

import pytest

from zerograd.cli import build_parser, main

TINY = ["epochs=1", "model_args.width=2", "val_size=20", "train_subset=32", "test_n=8",
        "test_restarts=1", "test_pgd_steps=1", "val_pgd_steps=1"]
HOSTILE = {
    "int": ["nan", "inf", "-1", "0", "99999999999999999999999", "", "abc", "1.5"],
    "float": ["nan", "inf", "-inf", "1e999", "-1", "0", "", "abc"],
    "str": ["", "nan", "-1", "99999999999999999999999", "&a [*a, *a]", "x" * 300, "../..", "a=b=c"],
}


def base_args(command: str, run: Path, tmp: Path) -> list[str]:
    """A valid, quick command line for each subcommand."""
    sets = [a for s in TINY for a in ("--set", s)]
    return {
        "train": ["train", "--preset", "quickstart", "--quiet", "--out", str(tmp / "t"), *sets],
        "eval": ["eval", str(run), "--n", "8", "--steps", "1", "--restarts", "1", "--no-checks",
                 "--quiet", "--out", str(tmp / "e.json")],
        "export": ["export", str(run), "--out", str(tmp / "x")],
        "methods": ["methods"],
        "presets": ["presets"],
        "bench": ["bench", "--model", "small_cnn", "--batch-size", "2", "--repeats", "1",
                  "--methods", "fgsm", "--json"],
        "report": ["report", str(run), "--out", str(tmp / "r"), "--gradient-images", "0"],
        "reproduce": ["reproduce", "cpu-co", "--dry-run", "--out", str(tmp / "p")],
        "selftest": ["selftest", "--device", "cpu", "--no-distributed"],
        "measure": ["measure", str(run), "--table", "4", "--n", "8", "--methods", "fgsm", "--json"],
    }[command]


def kind(action: argparse.Action) -> str | None:
    if action.nargs == 0:  # flags
        return None
    if action.choices:
        return "str"
    return getattr(action.type, "__name__", "str").replace("int64", "int").replace("finite", "float")


def cases() -> list[tuple[str, str, str]]:
    parser = build_parser()
    sub = next(a for a in parser._subparsers._group_actions if a.choices)
    found = []
    for command, p in sub.choices.items():
        for action in p._actions:
            k = kind(action)
            if k is None:
                continue
            name = action.option_strings[0] if action.option_strings else action.dest
            found += [(command, name, value) for value in HOSTILE[k]]
    return found


CONFIG_VALUES = {  # --set key=VALUE by the key's type, as YAML text
    "int": ["-1", "1e30", ".nan", "", "[1]"],
    "float": [".nan", ".inf", "-1", "1e308", "abc"],
    "bool": ["2", "", "nan"],
    "str": ["", "-1", "&a [*a]"],
    "dict": ["[1]", "nan", "&a [*a]", "{a: &x [*x]}"],
}


def config_cases() -> list[tuple[str, str]]:
    from zerograd.config import FIELDS
    from zerograd.methods import METHODS
    from zerograd.options import DiagnosticsOptions, GuardOptions

    types = {name: str(f.type) for name, f in FIELDS.items()}
    types.update({f"method_args.{k}": p.annotation for k, p in METHODS.params("zerograd").items()})
    for section, options in (("diagnostics", DiagnosticsOptions), ("guard", GuardOptions)):
        types.update({f"{section}.{f.name}": str(f.type) for f in dataclasses.fields(options)})
    found = []
    for name, annotation in types.items():
        kind = annotation.split("|")[0].strip()
        found += [(name, value) for value in CONFIG_VALUES.get(kind, CONFIG_VALUES["str"])]
    return found


def with_value(args: list[str], option: str, value: str, positional: bool) -> list[str]:
    if positional:  # the first positional after the command
        return [args[0], value, *args[2:]] if len(args) > 1 and not args[1].startswith("-") else [*args, value]
    if option in args:
        i = args.index(option)
        return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, option, value]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main(base_args("train", out, out.parent)[:-2 * len(TINY)] + [
        a for s in TINY for a in ("--set", s)]) == 0
    return out


@pytest.mark.parametrize("command, option, value", cases())
def test_hostile_value_gets_one_line_or_runs(command, option, value, run, tmp_path, monkeypatch, capsys):
    from zerograd import download

    monkeypatch.setattr(download, "fetch", lambda url, dest: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.chdir(tmp_path)
    args = with_value(base_args(command, run, tmp_path), option, value, not option.startswith("-"))
    try:
        code = main(args)
    except SystemExit as e:  # argparse: usage errors (exit 2)
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    assert code in (0, 2), (args, err)
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("zerograd: error: "), (args, err)


@pytest.mark.parametrize("key, value", config_cases())
def test_hostile_config_value_gets_one_line_or_runs(key, value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*base_args("train", tmp_path, tmp_path), "--set", f"{key}={value}"]
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, (args, err)
    assert code in (0, 2), (args, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("zerograd: error: "), (args, err)
