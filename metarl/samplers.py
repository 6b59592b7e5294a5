"""Batched trajectory sampling: every task and trajectory of a meta-batch steps together.

The sampler knows nothing about the physics: it drives any `envs.base.BatchEnv` engine
(numpy for 2D-Navigation, `mujoco.batch.Batch` for HalfCheetah) with one batched policy
evaluation per time step, for one shared parameter set or one per task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from envs.base import BatchEnv
from metarl.adaptation import Params
from metarl.policies import GaussianMLPPolicy


@dataclass
class Episodes:
    """A meta-batch of trajectories; tensors are (T tasks, N trajectories, H steps, ...)."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor  # 1 for steps that happened, 0 after an episode ended
    seconds: float = 0.0

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]

    @property
    def transitions(self) -> int:
        return int(self.mask.sum().item())

    def flat(self, name: str) -> Tensor:
        """(T, N*H, ...) view, the layout the batched policy consumes."""
        x = getattr(self, name)
        return x.reshape(x.shape[0], -1, *x.shape[3:])

    def weights(self, mode: str = "episode") -> Tensor:
        """Per-step weights (T, N*H) that sum to 1 within each task, zero after episode ends.

        `episode` weighs every trajectory alike, each by the mean over its own steps (the
        most used PyTorch reproduction); `step` weighs every valid step alike, so long
        trajectories count more. They differ only when episodes end early (2D-Navigation).
        """
        m = self.mask
        if mode == "step":
            w = m / m.sum((1, 2), keepdim=True).clamp(min=1.0)
        else:
            w = m / m.sum(2, keepdim=True).clamp(min=1.0) / m.shape[1]
        return w.reshape(m.shape[0], -1)

    def returns(self) -> Tensor:
        """Undiscounted return of every trajectory, (T, N)."""
        return (self.rewards * self.mask).sum(-1)


@torch.no_grad()
def sample(
    engine: BatchEnv,
    policy: GaussianMLPPolicy,
    params: Params,
    tasks: list[dict],
    per_task: int,
    rng: np.random.Generator,
) -> Episodes:
    """Roll out `per_task` trajectories of every task for the engine's horizon.

    `params` may hold one parameter set or per-task sets with a leading task axis; the policy
    runs through `GaussianMLPPolicy.act`, its forward pass without autograd.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's idle threads would spin on the cores MuJoCo's threads need
    try:
        return _sample(engine, policy, params, tasks, per_task, rng)
    finally:
        torch.set_num_threads(threads)


def _sample(engine, policy, params, tasks, per_task, rng) -> Episodes:
    start = time.perf_counter()
    T, N, H = len(tasks), per_task, engine.horizon
    dtype = next(iter(params.values())).dtype
    obs_buf = np.zeros((H, T * N, engine.obs_dim), dtype=np.float64)
    act_buf = np.zeros((H, T * N, engine.act_dim), dtype=np.float64)
    rew_buf = np.zeros((H, T * N), dtype=np.float64)
    mask_buf = np.zeros((H, T * N), dtype=np.float64)
    alive = np.ones(T * N, dtype=bool)
    obs = engine.reset(tasks, per_task, rng)
    for t in range(H):
        obs_buf[t] = obs
        mask_buf[t] = alive
        mean, std = policy.act(params, torch.as_tensor(obs, dtype=dtype).view(T, N, -1))
        noise = rng.standard_normal((T * N, engine.act_dim))
        actions = mean.reshape(T * N, -1).double().numpy() + std.reshape(T * N, -1).double().numpy() * noise
        act_buf[t] = actions
        obs, reward, terminated = engine.step(actions)
        rew_buf[t] = reward * alive
        alive &= ~terminated
        if not alive.any():
            break

    # (H, T*N, ...) -> (T, N, H, ...); steps after everyone finished stay zero-masked
    def to_tensor(x: np.ndarray) -> Tensor:
        x = torch.from_numpy(x).to(dtype)
        x = x.reshape(H, T, N, *x.shape[2:])
        return x.movedim(0, 2).contiguous()

    return Episodes(
        obs=to_tensor(obs_buf),
        actions=to_tensor(act_buf),
        rewards=to_tensor(rew_buf),
        mask=to_tensor(mask_buf),
        seconds=time.perf_counter() - start,
    )
