"""2D-Navigation: a point robot moves towards a per-task goal.

Default semantics (the most used PyTorch reproduction): start at the origin, goal uniform
in [-0.5, 0.5]^2, the observation is the position, the action is the raw policy output
clipped to [-0.1, 0.1] per dimension, reward = -distance to the goal after the move, and
the episode ends once both coordinates are within 0.01 of the goal. `action_rescale=True`
gives the rllab variant of Finn et al. (2017): outputs in [-1, 1] are scaled by 0.1.
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces

MAX_STEP = 0.1
SUCCESS_RADIUS = 0.01


def _check_settings(horizon: int, goal_range: float) -> None:
    from metarl.errors import UserError

    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise UserError(f"2D-Navigation horizon must be a positive integer, not {horizon!r}")
    if isinstance(goal_range, bool) or not isinstance(goal_range, int | float) or not 0 < goal_range < float("inf"):
        raise UserError(f"2D-Navigation goal_range must be a positive finite number, not {goal_range!r}")


def sample_goals(n: int, rng: np.random.Generator, goal_range: float = 0.5) -> list[dict]:
    return [{"goal": g} for g in rng.uniform(-goal_range, goal_range, size=(n, 2))]


def _move(pos: np.ndarray, action: np.ndarray, goal: np.ndarray, rescale: bool):
    """One step for any number of robots: (new position, reward, terminated)."""
    if rescale:
        action = np.clip(action, -1.0, 1.0) * MAX_STEP
    else:
        action = np.clip(action, -MAX_STEP, MAX_STEP)
    pos = pos + action
    delta = pos - goal
    reward = -np.sqrt((delta**2).sum(-1))
    terminated = (np.abs(delta) < SUCCESS_RADIUS).all(-1)
    return pos, reward, terminated


class Navigation2DEnv(gymnasium.Env):
    """Single-environment reference implementation with the task API.

    The task stays until `reset_task` (or `reset(options={"task": ...})`) changes it; the first
    reset draws one from its seed if none was set (as HalfCheetah does).
    """

    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, action_rescale: bool = False) -> None:
        _check_settings(horizon, goal_range)
        self.horizon, self.goal_range, self.action_rescale = horizon, goal_range, action_rescale
        bound = 1.0 if action_rescale else MAX_STEP
        self.action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self._goal: np.ndarray | None = None
        self._pos = np.zeros(2)
        self._t = 0

    def sample_tasks(self, n: int) -> list[dict]:
        return sample_goals(n, self.np_random, self.goal_range)

    def reset_task(self, task: dict) -> None:
        self._goal = np.asarray(task["goal"], dtype=np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.reset_task(options["task"])
        if self._goal is None:
            self.reset_task(self.sample_tasks(1)[0])
        self._pos = np.zeros(2)
        self._t = 0
        return self._pos.astype(np.float32), {"task": {"goal": self._goal.copy()}}

    def step(self, action):
        self._pos, reward, terminated = _move(
            self._pos, np.asarray(action, dtype=np.float64), self._goal, self.action_rescale
        )
        self._t += 1
        truncated = self._t >= self.horizon and not terminated
        return self._pos.astype(np.float32), float(reward), bool(terminated), truncated, {}


class Navigation2DBatch:
    """All robots of a meta-batch as one (B, 2) array; the BatchEnv engine for training."""

    obs_dim = 2
    act_dim = 2

    def __init__(self, horizon: int = 100, goal_range: float = 0.5, action_rescale: bool = False) -> None:
        _check_settings(horizon, goal_range)
        self.horizon, self.goal_range, self.action_rescale = horizon, goal_range, action_rescale

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict]:
        return sample_goals(n, rng, self.goal_range)

    def reset(self, tasks: list[dict], per_task: int, rng: np.random.Generator) -> np.ndarray:
        self._goal = np.repeat(np.stack([np.asarray(t["goal"], dtype=np.float64) for t in tasks]), per_task, 0)
        self._pos = np.zeros_like(self._goal)
        return self._pos.copy()

    def step(self, actions: np.ndarray):
        self._pos, reward, terminated = _move(
            self._pos, np.asarray(actions, dtype=np.float64), self._goal, self.action_rescale
        )
        return self._pos.copy(), reward, terminated
