"""Linear feature baseline (rllab), GAE and per-task advantage standardisation.

All functions work on a whole meta-batch at once: tensors are (T tasks, N trajectories,
H steps) with a validity mask, and each task gets its own baseline fit, solved as one
batched linear system.
"""

from __future__ import annotations

import torch
from torch import Tensor


def baseline_features(obs: Tensor, clip_obs: float | None = None) -> Tensor:
    """[o, o^2, t, t^2, t^3, 1] with t = step/100, per step of (T, N, H, obs) observations."""
    if clip_obs is not None:
        obs = obs.clamp(-clip_obs, clip_obs)
    T, N, H, _ = obs.shape
    t = (torch.arange(H, dtype=obs.dtype, device=obs.device) / 100.0).view(1, 1, H, 1).expand(T, N, H, 1)
    return torch.cat([obs, obs.pow(2), t, t.pow(2), t.pow(3), torch.ones_like(t)], dim=-1)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Reward-to-go along the last axis; steps after an episode's end contribute nothing."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = (rewards[..., t] + gamma * running) * mask[..., t]
        out[..., t] = running
    return out


def fit_linear_baseline(
    obs: Tensor,
    returns: Tensor,
    mask: Tensor,
    reg: float = 1e-5,
    clip_obs: float | None = None,
    predict_obs: Tensor | None = None,
) -> Tensor:
    """Per-task ridge regression of returns on the features; returns values (T, N, H) on
    `predict_obs` (another batch of the same tasks), else on the batch fitted.

    As in rllab, the regulariser is multiplied by 10 (up to 5 times) while the solve is
    not finite, task by task: one task's bad batch leaves the others' fits alone. The solve is
    in float64: the normal equations of these features are badly conditioned in float32.
    """
    feats = baseline_features(obs, clip_obs).double()
    T, F = feats.shape[0], feats.shape[-1]
    x = (feats * mask.double().unsqueeze(-1)).reshape(T, -1, F)
    y = (returns.double() * mask.double()).reshape(T, -1, 1)
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(F, dtype=torch.float64, device=obs.device)
    coef = torch.full_like(xty, float("nan"))
    todo = torch.ones(T, dtype=torch.bool, device=obs.device)
    for _ in range(5):
        solved, info = torch.linalg.solve_ex(xtx[todo] + reg * eye, xty[todo])  # info != 0: singular
        coef[todo] = torch.where((info == 0)[:, None, None], solved, float("nan"))
        todo = ~torch.isfinite(coef).all(dim=(1, 2))
        if not todo.any():
            break
        reg *= 10
    if predict_obs is not None:
        feats = baseline_features(predict_obs, clip_obs).double()
    return (feats @ coef.unsqueeze(1)).squeeze(-1).to(returns.dtype)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates; the value after an episode's last step is 0."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    next_value = torch.zeros_like(rewards[..., 0])
    for t in range(rewards.shape[-1] - 1, -1, -1):
        m = mask[..., t]
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = (delta + gamma * lam * running) * m
        adv[..., t] = running
        next_value = values[..., t] * m
    return adv


def standardize_per_task(adv: Tensor, mask: Tensor, weights: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit std within each task (dim 0), under per-step `weights` summing to 1 per
    task (default: every valid step alike)."""
    dims = tuple(range(1, adv.dim()))
    if weights is None:
        weights = mask / mask.sum(dims, keepdim=True)
    mean = (adv * weights).sum(dims, keepdim=True)
    var = ((adv - mean).pow(2) * weights).sum(dims, keepdim=True)
    return (adv - mean) / (var.sqrt() + eps) * mask


def advantages(
    obs: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    reg: float = 1e-5,
    clip_obs: float | None = None,
    weights: Tensor | None = None,
    fit_on: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Fit each task's baseline on its own batch, or on `fit_on` = (obs, rewards, mask) of another
    batch of the same tasks, then standardised GAE on this batch."""
    if fit_on is None:
        values = fit_linear_baseline(obs, discounted_returns(rewards, mask, gamma), mask, reg, clip_obs)
    else:
        f_obs, f_rewards, f_mask = fit_on
        values = fit_linear_baseline(f_obs, discounted_returns(f_rewards, f_mask, gamma), f_mask, reg, clip_obs, obs)
    return standardize_per_task(gae(rewards, values * mask, mask, gamma, lam), mask, weights)
