"""The batched-engine protocol the samplers drive.

An engine holds every simulation of a meta-batch (tasks x trajectories) at once and
steps them together as arrays, so the sampler never loops over environments in Python.
The single-environment gymnasium classes define the semantics; an engine must match
them step for step.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BatchEnv(Protocol):
    """Many simulations of one environment family, each with its own task."""

    obs_dim: int
    act_dim: int
    horizon: int

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        """Draw `n` task dicts from the task distribution."""

    def reset(self, tasks: list[dict], per_task: int, rng: np.random.Generator) -> np.ndarray:
        """Start `per_task` simulations of every task; rows are task-major, float64 (B, obs_dim)."""

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply raw policy outputs (B, act_dim); return obs (B, obs_dim), reward (B,), terminated (B,).

        The engine applies its own action clipping/scaling. Simulations that terminated
        earlier may keep stepping; the sampler masks them out.
        """
