"""Meta-RL environments with a task API, registered with gymnasium on import.

Each family has a single-environment gymnasium class (the reference semantics) and a
batched engine (what training samples from). `make_batch_env` maps the config name of
an environment to its engine.
"""

from __future__ import annotations

import importlib
import inspect

import gymnasium

from envs.base import BatchEnv

# config name -> (gymnasium id, single-env entry point, batched-engine entry point)
ENVIRONMENTS: dict[str, tuple[str, str, str]] = {
    "navigation2d": (
        "metarl/Navigation2D-v0",
        "envs.navigation:Navigation2DEnv",
        "envs.navigation:Navigation2DBatch",
    ),
    "halfcheetah-dir": (
        "metarl/HalfCheetahDir-v0",
        "envs.halfcheetah:HalfCheetahDirEnv",
        "envs.halfcheetah:HalfCheetahDirBatch",
    ),
    "halfcheetah-vel": (
        "metarl/HalfCheetahVel-v0",
        "envs.halfcheetah:HalfCheetahVelEnv",
        "envs.halfcheetah:HalfCheetahVelBatch",
    ),
}


def _load(entry: str):
    module, name = entry.split(":")
    return getattr(importlib.import_module(module), name)


def make_batch_env(name: str, **settings) -> BatchEnv:
    """Build the batched engine for config name `name` with env settings `settings`."""
    if name not in ENVIRONMENTS:
        from metarl.errors import UserError

        raise UserError(f"unknown environment {name!r}; choose one of {sorted(ENVIRONMENTS)}")
    engine = _load(ENVIRONMENTS[name][2])
    _check_setting_types(engine, settings)
    return engine(**settings)


def _check_setting_types(engine: type, settings: dict) -> None:
    """A setting must have its default's type, by the config schema's own rule (a float takes an int),
    so that a YAML typo is refused when the run starts, not as a TypeError deep in the first iteration."""
    from metarl.config import _check

    params = inspect.signature(engine).parameters
    for key, value in settings.items():
        default = params[key].default if key in params else None
        if default is not None and default is not inspect.Parameter.empty:  # unknown names fail in the call
            settings[key] = _check(value, default, f"env.settings.{key}")


def make_env(name: str, **settings) -> gymnasium.Env:
    """Build the single gymnasium environment for config name `name`."""
    return gymnasium.make(ENVIRONMENTS[name][0], **settings)


for _gym_id, _entry, _ in ENVIRONMENTS.values():
    if _gym_id not in gymnasium.registry:
        gymnasium.register(id=_gym_id, entry_point=_entry)
