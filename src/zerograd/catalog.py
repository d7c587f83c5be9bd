"""`zerograd presets`: the list of presets, and docs/presets.md generated from the presets'
own `reference:` metadata (what each reproduces, the paper's numbers, the source of each
setting, every deliberate difference), so the page cannot drift from the YAML files."""
from __future__ import annotations

from fractions import Fraction

from .config import (
    OWNED,
    REGISTRIES,
    Config,
    load_config,
    preset_names,
    preset_reference,
    read_preset,
)

OWNER_OF = {section: owner for owner, section in OWNED.items()}

HEADER = """# Presets

Generated from `src/zerograd/presets/*.yaml` by `zerograd presets --markdown > docs/presets.md`;
`tests/test_catalog.py` fails when this page is stale. Each preset's `reference:` block holds
what it reproduces, the numbers the paper reports, the source of each setting and every
deliberate difference from that source with its expected effect; `zerograd train` ignores it.

Reported numbers are the paper's: clean / PGD-50 accuracy in % on the test set (PGD with 10
restarts, step 2/255), mean ± std over its seeds where it gives one.

Sources cited below:
- **paper**: Golgooni et al., "ZeroGrad: Mitigating and Explaining Catastrophic Overfitting in
  FGSM Adversarial Training" (sections, tables and figures by number).
- **paper code**: github.com/rohban-lab/catastrophic_overfitting @ f239dbe (the authors' code;
  `train_cifar.py`, `train_cifar100.py`, `train_svhn.py`, `preactresnet.py`, `README.md`).
- **GradAlign code**: github.com/tml-epfl/understanding-fast-adv-training @ ceed494
  (Andriushchenko & Flammarion 2020; `train.py`, `utils.py`, `data.py`, `models.py`,
  `sh/exps_diff_eps_*.sh`).
- **N-FGSM code**: github.com/pdejorge/N-FGSM @ 0a9e4f0 (de Jorge et al. 2022).
- **FGSM-RS code**: github.com/locuslab/fast_adversarial @ 54f7287 (Wong et al. 2020).

UNVERIFIED marks a choice neither the paper nor the code settles; the reason for the choice is
given beside it.
"""


def preset_lines() -> list[str]:
    """One line per preset: its name and description."""
    return [f"{name:<36} {read_preset(name).get('description', '')}" for name in preset_names()]


def presets_markdown() -> str:
    """docs/presets.md: a summary table, then one section per preset."""
    names = preset_names()
    refs = {name: preset_reference(name) for name in names}
    rows = ["| preset | reproduces | paper reports |", "|---|---|---|"]
    rows += [f"| `{n}` | {refs[n].get('reproduces', 'not a paper setting')} | {refs[n].get('reported', '—')} |"
             for n in names]
    parts = [HEADER, "## Summary\n", "\n".join(rows) + "\n"]
    for name in names:
        parts.append(_section(name, refs[name]))
    return "\n".join(parts).rstrip("\n") + "\n"


def _section(name: str, ref: dict) -> str:
    cfg = load_config(name)
    lines = [f"## {name}\n", f"{cfg.description}\n"]
    if "reproduces" in ref:
        lines.append(f"- **Reproduces**: {ref['reproduces']}")
        lines.append(f"- **Paper reports**: {ref.get('reported', '—')}")
    lines.append(f"- **Settings** (beyond zerograd's defaults): {_settings(cfg)}\n")
    if ref["sources"]:
        lines += ["| setting | source |", "|---|---|"]
        lines += [f"| {key} | {text} |" for key, text in ref["sources"].items()]
        lines.append("")
    if ref["differences"]:
        lines.append("Deliberate differences from the source, and their expected effect:\n")
        lines += [f"- **{key}**: {text}" for key, text in ref["differences"].items()]
        lines.append("")
    return "\n".join(lines)


def _settings(cfg: Config) -> str:
    """The config values that differ from Config()'s, as `key=value`: the method's arguments in
    full, a model's or schedule's only where they differ from its signature's defaults."""
    default, values = Config().to_dict(), cfg.to_dict()
    default["method_args"] = {}
    for section, registry in REGISTRIES.items():
        if section == "method_args":
            continue
        owner = values[OWNER_OF[section]]
        defaults = registry.defaults(owner)
        values[section] = {k: v for k, v in values[section].items() if defaults.get(k, object()) != v}
        default[section] = {}
    shown = [f"`{key}={_value(key, value)}`" for key, value in values.items()
             if key != "description" and value != default[key]]
    return ", ".join(shown) or "none"


def _value(key: str, value) -> str:
    if key == "eps":
        return f"{Fraction(value * 255).limit_denominator(100)}/255"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(k, v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
