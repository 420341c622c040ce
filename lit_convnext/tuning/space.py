"""The search space: which ``fit`` options a trial changes, within which ranges, centred on the starting recipe.

A space maps an option's dotted name (``model.lr``) to a range: ``{low, high, log}`` for a number (``int: true``
for an integer) or ``{choices: [...]}``. The default space (:func:`default_space`) is computed from the run's own
configuration, so it is centred on whatever recipe the command line gives (``configs/finetune.yaml``, a quickstart,
a user's YAML); ``--tune.space`` entries replace its entries of the same name, and an entry set to ``null`` leaves
that option out. The ranges and why they are what they are: docs/tuning.md ("The search space").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lit_convnext.errors import UserError

#: How far the default space reaches around the recipe's learning rate (log scale, both ways): the official
#: per-256 base rates of the ConvNeXt fine-tunes span 2.5e-5 to 8e-4, a factor of ~4 around the app's 4e-4 on each
#: side of the recipes that fine-tune a pretrained network (docs/tuning.md).
LR_FACTOR = 4.0


def default_space(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The default space around the recipe ``config`` (a parsed ``fit`` configuration as a nested dict).

    Learning rate x/÷ 4 (log), weight decay 0.01-0.3 (log: the official 0.05 and V2 atto's 0.3), layer decay
    0.6-1.0 when the recipe uses it (the official 0.6, 0.7, 0.8, 0.9; 1.0 is none), drop path 0-0.3 (the official
    fine-tunes' 0.1-0.4 for networks up to base, lower for a small folder), label smoothing 0-0.2 (official 0.1 and
    0.2), Mixup/CutMix off or on at the official 0.8/1.0, and warm-up 0 up to a tenth of the epochs (official: none
    for V1 fine-tunes, 7-13 % of the epochs for V2's).
    """
    model = config["model"]
    epochs = config["trainer"].get("max_epochs") or 30
    lr = float(model["lr"])
    space: dict[str, dict[str, Any]] = {
        "model.lr": {"low": lr / LR_FACTOR, "high": lr * LR_FACTOR, "log": True},
        "model.weight_decay": {"low": 0.01, "high": 0.3, "log": True},
        "model.drop_path_rate": {"low": 0.0, "high": 0.3},
        "model.label_smoothing": {"low": 0.0, "high": 0.2},
        "model.mixup_alpha": {"choices": [0.0, 0.8]},
        "model.cutmix_alpha": {"choices": [0.0, 1.0]},
        "model.warmup_epochs": {"low": 0.0, "high": max(1.0, round(epochs / 10, 1))},
    }
    if model.get("layer_decay") is not None:  # null: nothing pretrained to protect, and nothing to search
        space["model.layer_decay"] = {"low": 0.6, "high": 1.0}
    return space


def read_space(value: str | None) -> dict[str, Any]:
    """``--tune.space``: a YAML file, or a YAML mapping written inline."""
    if value is None:
        return {}
    path = Path(value)
    text = path.read_text(encoding="utf-8") if path.suffix in (".yaml", ".yml") or path.is_file() else value
    try:
        space = yaml.safe_load(text) if text.strip() else {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"--tune.space {value}: not a YAML mapping ({err}); write `option: {{low: L, high: H}}` "
                        "entries") from err
    if not isinstance(space, dict):
        raise UserError(f"--tune.space {value}: not a YAML mapping; write `model.lr: {{low: 1e-4, high: 1e-3, log: "
                        "true}` entries, one per option")
    return space


def merge_space(default: dict[str, dict[str, Any]], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``default`` with ``overrides``'s entries in place of its own, and those set to null left out."""
    space = {name: check_entry(name, spec) for name, spec in default.items()}
    for name, spec in overrides.items():
        if spec is None:
            space.pop(name, None)
        else:
            space[str(name)] = check_entry(str(name), spec)
    if not space:
        raise UserError("--tune.space leaves nothing to search: name at least one option with a range")
    return space


def check_entry(name: str, spec: Any) -> dict[str, Any]:
    """One entry's own form (the option's existence and its values are checked against the parser later)."""
    if isinstance(spec, dict) and "choices" in spec and isinstance(spec["choices"], list) and spec["choices"]:
        return {"choices": list(spec["choices"])}
    if isinstance(spec, dict) and {"low", "high"} <= set(spec):
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise UserError(f"--tune.space {name}: low {low} and high {high} must be numbers with low <= high")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise UserError(f"--tune.space {name}: a log range needs low > 0, got {low}")
        return {"low": low, "high": high, "log": log, **({"int": True} if spec.get("int") else {})}
    raise UserError(f"--tune.space {name}: {spec!r} is no range; write {{low: L, high: H}} (log: true for a log "
                    "scale, int: true for integers) or {choices: [A, B]}, or null to leave the option out")


def missing_options(space: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The space's names that are no option of ``fit`` (``config``: the whole parsed configuration)."""
    missing = []
    for name in space:
        node: Any = config
        for part in name.split("."):
            if not isinstance(node, Mapping) or part not in node:
                missing.append(name)
                break
            node = node[part]
    return missing


def suggest(trial: Any, space: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's values (Optuna's ``trial.suggest_*``), by option name."""
    values = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif spec.get("int"):
            values[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec["log"])
        else:
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=spec["log"])
    return values


def as_arguments(values: Mapping[str, Any]) -> list[str]:
    """``{"model.lr": 1e-3}`` -> ``["--model.lr", "0.001"]`` (YAML scalars, as the command line takes them)."""
    arguments = []
    for name, value in values.items():
        arguments += [f"--{name}", yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")]
    return arguments


def starting_values(space: Mapping[str, dict[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's own value of each option in the space (the first trial runs the recipe as it is), for those
    within the space's range; an option whose recipe value lies outside is left to the sampler."""
    values = {}
    for name, spec in space.items():
        node: Any = config
        for part in name.split("."):
            node = node[part]
        inside = node in spec["choices"] if "choices" in spec else (
            isinstance(node, (int, float)) and not isinstance(node, bool) and spec["low"] <= node <= spec["high"])
        if inside:
            values[name] = node
    return values
