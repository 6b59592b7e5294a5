"""YAML run configs: defaults, overrides and validation.

A config is a nested dict checked against the defaults of its `kind` (rl or
classification): unknown keys and wrong types are errors, never silently ignored, so a
typo cannot turn into a run with a different setting than the user wrote.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from metarl.errors import UserError

# A default of None means "any of these types" per OPTIONAL below; otherwise the
# default's own type is required (an int is accepted where a float is expected).
RL_DEFAULTS: dict[str, Any] = {
    "kind": "rl",
    "seed": 0,
    "env": {"name": "navigation2d", "horizon": 100, "settings": {}},
    "policy": {
        "hidden_sizes": [64, 64],
        "activation": "tanh",
        "init_std": 1.0,
        "min_std": 1e-6,
        "adapt_log_std": True,
    },
    "adaptation": {"spec": "head", "inner_lr": 0.1, "inner_steps": 1, "first_order": False},
    "training": {
        "outer": "trpo",
        "iterations": 500,
        "meta_batch_size": 20,
        "trajectories_per_task": 20,
        "gamma": 0.99,
        "gae_lambda": 1.0,
        "max_kl": 0.01,
        "cg_iters": 10,
        "cg_damping": 1e-5,
        "ls_backtrack_ratio": 0.8,
        "ls_max_steps": 15,
        "outer_lr": 1e-3,
        "baseline_reg": 1e-5,
        "baseline_clip_obs": None,
        "step_weighting": "episode",
        "post_baseline": "own",
        "torch_threads": 1,
    },
    "evaluation": {"tasks": 40, "inner_steps": 1, "inner_lr": None, "trajectories_per_task": 20, "seed": 1000},
    "logging": {"checkpoint_every": 1, "snapshot_every": 50},
}

# Keys whose value may take several types (None stands for "not set").
OPTIONAL: dict[str, tuple[type, ...]] = {
    "adaptation.inner_lr": (float, int, list),
    "evaluation.inner_lr": (float, int, list, type(None)),
    "training.baseline_clip_obs": (float, int, type(None)),
}

# Integer keys that may be 0 (no inner step, no snapshots, no line search); every other
# integer key must be >= 1, and seeds (any key ending in "seed") lie in [0, 2**32).
ZERO_OK = ("inner_steps", "snapshot_every", "ls_max_steps")
# Integer keys with a higher floor: a 1-way task has nothing to tell apart (its loss is 0 whatever the weights).
AT_LEAST = {"ways": 2}

# Real-valued settings outside these ranges would fail deep inside a run or train nonsense quietly.
# Every real value must also be finite; a list of step sizes is checked entry by entry.
RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "adaptation.inner_lr": (">= 0", lambda v: v >= 0),
    "evaluation.inner_lr": (">= 0", lambda v: v >= 0),
    "training.outer_lr": ("> 0", lambda v: v > 0),
    "training.gamma": ("in (0, 1]", lambda v: 0 < v <= 1),
    "training.gae_lambda": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "training.max_kl": ("> 0", lambda v: v > 0),
    "training.cg_damping": (">= 0", lambda v: v >= 0),
    "training.ls_backtrack_ratio": ("in (0, 1)", lambda v: 0 < v < 1),
    "training.baseline_reg": (">= 0", lambda v: v >= 0),
    "training.baseline_clip_obs": ("> 0", lambda v: v > 0),
    "policy.init_std": ("> 0", lambda v: v > 0),
    "policy.min_std": (">= 0", lambda v: v >= 0),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "kind": ("rl", "classification"),
    "training.outer": ("trpo", "vpg"),
    "training.step_weighting": ("episode", "step"),
    "training.post_baseline": ("own", "pre"),
    "policy.activation": ("tanh", "relu"),
}

DEFAULTS: dict[str, dict[str, Any]] = {"rl": RL_DEFAULTS}


def register_defaults(kind: str, defaults: dict[str, Any], optional: dict | None = None, choices: dict | None = None):
    """Let another experiment family (classification) declare its own schema."""
    DEFAULTS[kind] = defaults
    OPTIONAL.update(optional or {})
    CHOICES.update(choices or {})


def _type_name(t: type) -> str:
    return {type(None): "null", dict: "mapping", list: "list"}.get(t, t.__name__)


# PyYAML reads YAML 1.1, where an exponent without a dot ("1e-3") is a string, not a float.
_EXPONENT_FLOAT = re.compile(r"[-+]?\d+[eE][-+]?\d+")


def _check(value: Any, default: Any, key: str) -> Any:
    allowed = OPTIONAL.get(key)
    if allowed is None:
        if isinstance(default, bool):
            allowed = (bool,)
        elif isinstance(default, float):
            allowed = (float, int)
        else:
            allowed = (type(default),)
    if float in allowed and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(_type_name(t) for t in allowed)
        raise UserError(f"config key {key!r} must be {names}, got {value!r} ({_type_name(type(value))})")
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"config key {key!r} must be one of {list(CHOICES[key])}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float not in allowed:
        _check_count(value, key)
    if isinstance(value, list) and isinstance(default, list) and default and all(type(v) is int for v in default):
        if not all(type(v) is int and v >= 1 for v in value):
            raise UserError(f"config key {key!r} must be a list of integers >= 1, got {value!r}")
    if float in allowed and isinstance(value, list):  # step sizes, one per inner step
        if not value or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            raise UserError(f"config key {key!r} must be a number or a non-empty list of numbers, got {value!r}")
        return [_check_real(float(v), key) for v in value]
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # a real setting written as an integer: checked (range, finite) as the real it is
    return _check_real(value, key) if isinstance(value, float) else value


def _check_real(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise UserError(f"config key {key!r} must be a finite number, got {value!r}")
    if key in RANGES and not RANGES[key][1](value):
        raise UserError(f"config key {key!r} must be {RANGES[key][0]}, got {value!r}")
    return value


def _check_count(value: int, key: str) -> None:
    """Integer settings are counts, sizes or seeds: a bad one would fail deep inside a run."""
    name = key.rsplit(".", 1)[-1]
    low = 0 if name in ZERO_OK or name.endswith("seed") else AT_LEAST.get(name, 1)
    if value < low:
        raise UserError(f"config key {key!r} must be >= {low}, got {value}")
    if name.endswith("seed") and value >= 2**32:
        raise UserError(f"config key {key!r} must be < 2**32, got {value}")


def merge(defaults: dict[str, Any], overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Defaults updated by overrides, validating every key and type on the way."""
    out = copy.deepcopy(defaults)
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            raise UserError(f"unknown config key {path!r}; known keys here: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, dict) and default:
            if not isinstance(value, dict):
                raise UserError(f"config key {path!r} must be a mapping, got {value!r}")
            out[key] = merge(default, value, path + ".")
        else:
            out[key] = _check(value, default, path)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a config file; an empty file is an error, not "all defaults"
    (a run's config.yaml emptied by accident must not resume as another experiment)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {str(path)!r} is a directory")
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML: {problem}{where}") from None
    if data is None:
        raise UserError(f"config file {str(path)!r} is empty")
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=value` strings (values parsed as YAML) into a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. training.iterations=10")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r} conflicts with another --set of {part!r}")
        node[parts[-1]] = value
    return out


def refuse_data_root(config: dict[str, Any], data_root: str | None) -> None:
    if data_root and config["kind"] != "classification":
        raise UserError("--data-root is for classification runs; RL runs read no data")


def deep_update(base: dict[str, Any], extra: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`base` with `extra`'s keys set; a nested key under a value that is not a mapping is refused
    (a file's malformed section must not vanish under an override and fall back to defaults)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and out.get(k) is not None and not isinstance(out[k], dict):
            raise UserError(f"config key {prefix + k!r} must be a mapping, got {out[k]!r}")
        out[k] = deep_update(out[k], v, f"{prefix}{k}.") if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, overrides: list[str] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Read, override and validate a config; the result is complete (every key present)."""
    raw = deep_update(read_yaml(path), parse_overrides(overrides or []))
    if seed is not None:
        raw["seed"] = seed
    kind = raw.get("kind", "rl")
    _import_kind(kind)
    return merge(DEFAULTS[kind], raw)


def _import_kind(kind: Any) -> None:
    """Register the schema of `kind` (classification lives in its own package)."""
    if not isinstance(kind, str) or kind not in CHOICES["kind"]:
        raise UserError(f"config key 'kind' must be one of {sorted(CHOICES['kind'])}, got {kind!r}")
    if kind == "classification":
        import classification.config  # noqa: F401  (registers its defaults)


def evaluation_options(config: dict[str, Any], args: Any) -> tuple[str, int, int, int]:
    """(adapt, inner_steps, tasks, seed): `metarl evaluate`'s options, else the config's evaluation section."""
    ev = config["evaluation"]
    adapt = config["adaptation"]["spec"] if args.adapt is None else args.adapt
    inner_steps = ev["inner_steps"] if args.inner_steps is None else args.inner_steps
    tasks = ev["tasks"] if args.tasks is None else args.tasks
    seed = ev["seed"] if args.seed is None else args.seed
    return adapt, inner_steps, tasks, seed


def dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
