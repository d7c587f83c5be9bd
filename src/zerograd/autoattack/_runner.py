"""The AutoAttack ensemble: attacks in order, each on the points still robust, resumable."""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import content_digest, save_checkpoint
from ..errors import ConfigError
from ..registry import Registry, did_you_mean
from ._apgd import apgd_ce, apgd_dlr, apgd_t
from ._common import check_data, check_eps, eval_mode, predict, project
from ._fab import fab, fab_t
from ._square import square

ATTACKS: Registry = Registry("attack", fixed=("model", "x", "y", "eps", "seed"))
for _name, _fn in (("apgd-ce", apgd_ce), ("apgd-dlr", apgd_dlr), ("apgd-t", apgd_t), ("fab", fab),
                   ("fab-t", fab_t), ("square", square)):
    ATTACKS.register(_name, _fn)

VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
CUSTOM = "custom"

# Settings that differ from each attack's defaults (the defaults are the standard version's).
VERSION_PARAMS: dict[str, dict[str, dict]] = {
    "standard": {},
    "plus": {"apgd-ce": {"n_restarts": 5}, "apgd-dlr": {"n_restarts": 5},
             "fab": {"n_restarts": 5}},
    "rand": {"apgd-ce": {"eot_iter": 20}, "apgd-dlr": {"eot_iter": 20}},
    CUSTOM: {},
}

STATE_FORMAT = 1


@dataclass
class AutoAttackResult:
    """Per-sample outcome of an AutoAttack run (flags on the CPU, x_adv on x's device)."""

    robust: Tensor  # bool: clean-correct and no attack succeeded
    clean: Tensor  # bool: correctly classified without perturbation
    robust_after: dict[str, float]  # robust accuracy after each attack, in run order
    x_adv: Tensor  # the successful adversarial example, else the clean input
    seconds: dict[str, float]  # wall time per attack (summed over resumed runs)

    @property
    def clean_accuracy(self) -> float:
        return self.clean.float().mean().item()

    @property
    def robust_accuracy(self) -> float:
        return self.robust.float().mean().item()


def attack_param_names(name: str) -> list[str]:
    """The tunable keyword parameters of an attack (its signature is the schema)."""
    return list(ATTACKS.params(name))


def resolve_plan(version: str, attacks: Sequence[str] | None,
                 attack_params: Mapping[str, Mapping] | None) -> tuple[list[str], dict]:
    """(attack names in order, full keyword parameters per attack), or a ConfigError."""
    if version not in VERSIONS and version != CUSTOM:
        valid = ", ".join([*VERSIONS, CUSTOM])
        raise ConfigError(f"unknown AutoAttack version {version!r}"
                          f"{did_you_mean(version, [*VERSIONS, CUSTOM])}; valid: {valid}")
    if version == CUSTOM:
        if not attacks or isinstance(attacks, str):
            raise ConfigError("version='custom' needs attacks=[...], a list of attack names "
                              f"from: {', '.join(sorted(ATTACKS))}")
        names = [n for n in attacks]
        for n in names:
            ATTACKS[n]  # unknown names: one line with did-you-mean
        if len(set(names)) != len(names):
            raise ConfigError(f"attacks lists an attack twice: {names}")
    elif attacks is not None:
        raise ConfigError(f"attacks={list(attacks)} needs version='custom' (version "
                          f"{version!r} runs {', '.join(VERSIONS[version])})")
    else:
        names = list(VERSIONS[version])

    params = {}
    for n in names:
        params[n] = ATTACKS.defaults(n)
        params[n].update(VERSION_PARAMS[version].get(n, {}))
    for n, overrides in (attack_params or {}).items():
        if n not in params:
            raise ConfigError(f"attack_params names {n!r}, which this run does not use"
                              f"{did_you_mean(n, params)}; it runs {', '.join(names)}")
        for key, value in overrides.items():
            if key not in params[n]:
                raise ConfigError(f"{n} has no parameter {key!r}{did_you_mean(key, params[n])}; "
                                  f"valid: {', '.join(params[n])}")
            params[n][key] = value
    return names, params


def _digest(t: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (to recognise the same data on resume)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _save_state(path: Path, state: dict) -> None:
    """Write atomically, so a kill mid-write leaves the previous state readable."""
    save_checkpoint(path, state)


def _load_state(path: Path, fingerprint: dict) -> dict:
    """The saved state if it belongs to this exact run, else a ConfigError saying what differs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file gets the same user error
        raise ConfigError(f"state_path {str(path)!r} is not a readable AutoAttack state "
                          f"({type(e).__name__}); delete it or pass another state_path") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"state_path {str(path)!r} is not an AutoAttack state of format "
                          f"{STATE_FORMAT}; delete it or pass another state_path")
    saved = state["fingerprint"]
    diff = [k for k in fingerprint if saved.get(k) != fingerprint[k]]
    if diff:
        raise ConfigError(f"state_path {str(path)!r} was written for a different run "
                          f"({', '.join(diff)} differ); delete it or pass another state_path")
    return state


def _warn_if_unsuitable(model, x: Tensor, logits: Tensor, version: str) -> None:
    """The official sanity checks: probabilities instead of logits, and a randomized model
    evaluated without the rand version (both make the evaluation unreliable)."""
    if logits.min() >= 0 and logits.max() <= 1 and \
            torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-5):
        warnings.warn("the model seems to output probabilities; AutoAttack needs logits",
                      stacklevel=3)
    if version != "rand" and not torch.allclose(predict(model, x), logits, rtol=1e-4, atol=1e-5):
        warnings.warn("the model's output is random (two passes differ); use version='rand'",
                      stacklevel=3)


def autoattack(model, x: Tensor, y: Tensor, *, eps: float, version: str = "standard",
               attacks: list[str] | None = None, batch_size: int = 500, seed: int = 0,
               state_path: str | Path | None = None,
               progress: Callable[[str, int, int], None] | None = None,
               attack_params: Mapping[str, Mapping] | None = None) -> AutoAttackResult:
    """Run AutoAttack (l_inf) and return per-sample robustness (worst case over attacks).

    Each attack runs only on the points no earlier attack broke, in batches of batch_size.
    With state_path, the state is saved after every (attack, batch) and a later call with the
    same arguments resumes from it. progress(attack, batches_done, n_batches) is called after
    each batch. attack_params overrides attack settings, e.g. {"square": {"n_queries": 1000}}.
    eps = 0 is allowed and means no perturbation (robust == clean).
    """
    names, params = resolve_plan(version, attacks, attack_params)
    eps = check_eps(eps)
    check_data(x, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    path = Path(state_path) if state_path is not None else None
    n = x.shape[0]
    fingerprint = None if path is None else {
        # the model's weights: a state file of another model or checkpoint is refused
        "model": content_digest(model.state_dict()) if isinstance(model, torch.nn.Module) else None,
        "n": n, "x": _digest(x), "y": _digest(y), "eps": eps, "attacks": names,
        "params": repr(params), "batch_size": batch_size, "seed": int(seed)}

    with eval_mode(model):
        if path is not None and path.exists():
            state = _load_state(path, fingerprint)
        else:
            clean = torch.zeros(n, dtype=torch.bool)
            for start in range(0, n, batch_size):
                logits = predict(model, x[start:start + batch_size])
                if logits.dim() != 2 or logits.shape[1] < 2:
                    raise ConfigError(f"the model must return logits of shape (batch, classes>=2),"
                                      f" got {tuple(logits.shape)}")
                clean[start:start + batch_size] = \
                    (logits.argmax(1) == y[start:start + batch_size]).cpu()
                if start == 0:
                    _warn_if_unsuitable(model, x[:batch_size], logits, version)
            state = {"format": STATE_FORMAT, "fingerprint": fingerprint, "clean": clean,
                     "robust": clean.clone(), "adv_rows": x[:0].detach().cpu().clone(), "done": [],
                     "start_flags": {}, "robust_after": {}, "seconds": {}}
            if path is not None:
                _save_state(path, state)

        robust = state["robust"]
        x_adv = x.detach().clone()
        x_adv[(state["clean"] & ~robust).to(x.device)] = state["adv_rows"].to(x)
        done = set(state["done"])
        for name in names:
            if name in state["robust_after"]:
                continue
            _run_attack(model, x, y, name, params[name], eps, seed, batch_size, state, robust,
                        x_adv, done, path, progress)
            state["robust_after"][name] = robust.float().mean().item()
            if path is not None:
                _save_state(path, state)

    return AutoAttackResult(robust=robust.clone(), clean=state["clean"].clone(),
                            robust_after=dict(state["robust_after"]), x_adv=x_adv,
                            seconds={k: state["seconds"].get(k, 0.0) for k in names})


def _run_attack(model, x, y, name, params, eps, seed, batch_size, state, robust, x_adv, done,
                path, progress) -> None:
    """One attack over the points robust when it started, batch by batch, saving each batch."""
    start_flags = state["start_flags"].setdefault(name, robust.clone())
    todo = start_flags.nonzero().squeeze(1)
    n_batches = math.ceil(len(todo) / batch_size) if eps > 0 else 0
    state["seconds"].setdefault(name, 0.0)
    for b in range(n_batches):
        key = f"{name}:{b}"
        if key in done:
            continue
        t0 = time.perf_counter()
        idx = todo[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx.to(x.device)], y[idx.to(y.device)]
        adv = project(ATTACKS[name](model, xb, yb, eps=eps, seed=seed, **params), xb, eps)
        broken = (predict(model, adv).argmax(1) != yb).cpu()
        robust[idx[broken]] = False
        x_adv[idx[broken].to(x.device)] = adv[broken.to(adv.device)].to(x_adv.dtype)
        done.add(key)
        state["done"] = sorted(done)
        state["seconds"][name] += time.perf_counter() - t0
        if path is not None:
            state["adv_rows"] = x_adv[(state["clean"] & ~robust).to(x.device)].detach().cpu()
            _save_state(path, state)
        if progress is not None:
            progress(name, b + 1, n_batches)
