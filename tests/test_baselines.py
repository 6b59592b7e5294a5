"""The batched baseline and GAE against a plain per-episode computation from setups.md's definition.

The batched code works on (tasks, episodes, steps) arrays with a mask for episodes that end early;
the reference below walks each episode as a Python list, as rllab-style code does, so a slip in
the masking, the time features or the end-of-episode bootstrap shows up as a mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.baselines import advantages, discounted_returns, fit_linear_baseline, gae
from metarl.samplers import Episodes

GAMMA, LAM, REG = 0.99, 0.95, 1e-5


def _batch(clip: float | None = None):
    """Two tasks of four episodes of up to 7 steps; three episodes end early."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 4, 7, 3, generator=g, dtype=torch.float64) * (20.0 if clip else 3.0)
    rewards = torch.randn(2, 4, 7, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 4, 7, dtype=torch.float64)
    mask[0, 1, 4:] = 0
    mask[1, 2, 2:] = 0
    mask[1, 3, 6:] = 0
    return obs * mask[..., None], rewards * mask, mask


def _episodes(obs, rewards, mask, t):
    lengths = mask[t].sum(1).long().tolist()
    return [(obs[t, n, :L].numpy(), rewards[t, n, :L].numpy()) for n, L in enumerate(lengths)]


def _features(o: np.ndarray, clip: float | None) -> np.ndarray:
    o = o if clip is None else np.clip(o, -clip, clip)
    steps = np.arange(len(o))[:, None] / 100.0
    return np.concatenate([o, o**2, steps, steps**2, steps**3, np.ones((len(o), 1))], axis=1)


def _returns(r: np.ndarray, gamma: float) -> np.ndarray:
    out, run = np.zeros_like(r), 0.0
    for k in reversed(range(len(r))):
        run = r[k] + gamma * run
        out[k] = run
    return out


def _reference(obs, rewards, mask, clip=None, fit_on=None):
    """Per task: ridge fit on that task's episodes (or on those of `fit_on`, another batch), GAE with
    value 0 after the last step, then standardised with the mean of per-episode means (each episode
    weighs the same)."""
    out = []
    for t in range(obs.shape[0]):
        eps = _episodes(obs, rewards, mask, t)
        fit = eps if fit_on is None else _episodes(*fit_on, t)
        x = np.concatenate([_features(o, clip) for o, _ in fit])
        y = np.concatenate([_returns(r, GAMMA) for _, r in fit])
        coef = np.linalg.solve(x.T @ x + REG * np.eye(x.shape[1]), x.T @ y)
        advs = []
        for o, r in eps:
            v = np.append(_features(o, clip) @ coef, 0.0)
            advs.append(_returns(r + GAMMA * v[1:] - v[:-1], GAMMA * LAM))
        mean = np.mean([a.mean() for a in advs])
        std = np.sqrt(np.mean([((a - mean) ** 2).mean() for a in advs]))
        out.append([(a - mean) / (std + 1e-8) for a in advs])
    return out


@pytest.mark.parametrize("clip", [None, 10.0])
def test_advantages_match_per_episode_reference(clip):
    obs, rewards, mask = _batch(clip)
    w = Episodes(obs, torch.zeros(*mask.shape, 1, dtype=torch.float64), rewards, mask).weights("episode")
    got = advantages(obs, rewards, mask, GAMMA, LAM, REG, clip, w.view_as(mask))
    for t, per_episode in enumerate(_reference(obs, rewards, mask, clip)):
        for n, ref in enumerate(per_episode):
            np.testing.assert_allclose(got[t, n, : len(ref)].numpy(), ref, rtol=0, atol=1e-10)
            assert (got[t, n, len(ref) :] == 0).all()  # nothing leaks past an episode's end


def test_advantages_with_the_baseline_of_another_batch_match_the_reference():
    """training.post_baseline=pre: the post-adaptation batch's values come from the fit on the same task's
    pre-adaptation batch (other episodes, other lengths), not from a fit on itself."""
    obs, rewards, mask = _batch()
    g = torch.Generator().manual_seed(3)
    pre_mask = torch.ones_like(mask)
    pre_mask[0, 2, 3:] = 0
    pre = (
        torch.randn(obs.shape, generator=g, dtype=torch.float64) * pre_mask[..., None],
        torch.randn(mask.shape, generator=g, dtype=torch.float64) * pre_mask,
        pre_mask,
    )
    w = Episodes(obs, torch.zeros(*mask.shape, 1, dtype=torch.float64), rewards, mask).weights("episode")
    got = advantages(obs, rewards, mask, GAMMA, LAM, REG, None, w.view_as(mask), pre)
    own = advantages(obs, rewards, mask, GAMMA, LAM, REG, None, w.view_as(mask))
    for t, per_episode in enumerate(_reference(obs, rewards, mask, fit_on=pre)):
        for n, ref in enumerate(per_episode):
            np.testing.assert_allclose(got[t, n, : len(ref)].numpy(), ref, rtol=0, atol=1e-10)
            assert (got[t, n, len(ref) :] == 0).all()
    assert not torch.allclose(got, own)  # the other batch's fit is not this batch's


def test_returns_and_gae_stop_at_episode_end():
    obs, rewards, mask = _batch()
    values = torch.randn(rewards.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * mask
    ret, adv = discounted_returns(rewards, mask, GAMMA), gae(rewards, values, mask, GAMMA, LAM)
    for t in range(2):
        for n, (_, r) in enumerate(_episodes(obs, rewards, mask, t)):
            np.testing.assert_allclose(ret[t, n, : len(r)].numpy(), _returns(r, GAMMA), atol=1e-12)
            v = np.append(values[t, n, : len(r)].numpy(), 0.0)
            ref = _returns(r + GAMMA * v[1:] - v[:-1], GAMMA * LAM)
            np.testing.assert_allclose(adv[t, n, : len(r)].numpy(), ref, atol=1e-12)
    # lambda = 1 with the true returns as values leaves nothing to explain, lambda = 1 and zero values gives the returns
    np.testing.assert_allclose(gae(rewards, ret, mask, GAMMA, 1.0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(gae(rewards, torch.zeros_like(ret), mask, GAMMA, 1.0).numpy(), ret.numpy(), atol=1e-12)


def test_baseline_fit_is_per_task_and_recovers_a_linear_target():
    """Returns that are an exact linear function of the features are fitted exactly, each task with its own
    coefficients; a rank-deficient feature matrix (zero observations, one step) still solves through the regulariser."""
    obs, _, mask = _batch()
    got = fit_linear_baseline(obs, discounted_returns(torch.zeros_like(mask), mask, GAMMA), mask, REG)
    assert got.shape == mask.shape and torch.isfinite(got).all()
    coef = torch.randn(2, 3 * 2 + 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    feats = torch.from_numpy(
        np.stack([np.stack([_features(obs[t, n].numpy(), None) for n in range(4)]) for t in range(2)])
    )
    target = torch.einsum("tnhf,tf->tnh", feats, coef) * mask
    fitted = fit_linear_baseline(obs, target, mask, 1e-12)
    np.testing.assert_allclose((fitted * mask).numpy(), target.numpy(), atol=1e-6)
    flat = fit_linear_baseline(
        torch.zeros(1, 2, 1, 3, dtype=torch.float64), torch.ones(1, 2, 1), torch.ones(1, 2, 1), REG
    )
    assert torch.isfinite(flat).all()


def test_a_bad_task_leaves_the_other_tasks_fits_alone():
    """The regulariser is raised task by task (setups.md: fitted per task), and a task whose batch cannot be
    solved (an infinite observation) gives non-finite values for itself only, not an error or another fit."""
    obs, rewards, mask = _batch()
    returns = discounted_returns(rewards, mask, GAMMA)
    alone = fit_linear_baseline(obs[:1], returns[:1], mask[:1], REG)
    obs[1, 0, 0, 0] = float("inf")
    both = fit_linear_baseline(obs, returns, mask, REG)
    assert torch.equal(both[0], alone[0]) and not torch.isfinite(both[1]).all()
