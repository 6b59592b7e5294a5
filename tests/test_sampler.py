"""Batched sampler: shapes, masks at episode ends, per-task parameters, reproducibility."""

from __future__ import annotations

import numpy as np
import torch

import envs
from metarl.adaptation import meta_parameters
from metarl.policies import GaussianMLPPolicy
from metarl.samplers import sample


def setup(seed=0):
    torch.manual_seed(seed)
    engine = envs.make_batch_env("navigation2d", horizon=20)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), init_std=0.05)
    return engine, policy


def test_shapes_and_masks():
    engine, policy = setup()
    rng = np.random.default_rng(0)
    tasks = engine.sample_tasks(3, rng)
    ep = sample(engine, policy, meta_parameters(policy), tasks, 4, rng)
    assert ep.obs.shape == (3, 4, 20, 2) and ep.actions.shape == (3, 4, 20, 2)
    assert ep.rewards.shape == ep.mask.shape == (3, 4, 20)
    assert ep.flat("obs").shape == (3, 80, 2)
    # a mask is 1 up to and including the terminating step, then 0
    diffs = ep.mask[..., 1:] - ep.mask[..., :-1]
    assert (diffs <= 0).all()
    assert torch.all(ep.rewards[ep.mask == 0] == 0)
    assert ep.transitions == int(ep.mask.sum())
    assert torch.allclose(ep.returns(), (ep.rewards * ep.mask).sum(-1))
    # first observation is the start position
    assert torch.all(ep.obs[:, :, 0] == 0)


def test_episodes_end_when_goal_reached():
    engine, policy = setup()
    rng = np.random.default_rng(0)
    tasks = [{"goal": np.array([0.02, 0.0])}]  # reachable in one step of ~0.02
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.copy_(torch.tensor([0.02, 0.0]))
        policy.log_std.fill_(np.log(1e-4))
    ep = sample(engine, policy, meta_parameters(policy), tasks, 5, rng)
    assert torch.all(ep.mask[0, :, 0] == 1)
    assert torch.all(ep.mask[0, :, 1:] == 0)  # all five ended at the first step
    assert torch.all(ep.rewards[0, :, 0] > -0.01)


def test_per_task_parameters_and_seeded_reproducibility():
    engine, policy = setup()
    params = meta_parameters(policy)
    batched = {k: v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in params.items()}
    batched["head.bias"][1] += 0.05  # task 1 drifts right
    tasks = [{"goal": np.array([0.4, 0.0])}] * 2
    a = sample(engine, policy, batched, tasks, 3, np.random.default_rng(5))
    b = sample(engine, policy, batched, tasks, 3, np.random.default_rng(5))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)
    assert (a.obs[1, :, -1, 0] > a.obs[0, :, -1, 0]).all()


def test_sampler_restores_torch_threads():
    engine, policy = setup()
    before = torch.get_num_threads()
    sample(
        engine,
        policy,
        meta_parameters(policy),
        engine.sample_tasks(1, np.random.default_rng(0)),
        1,
        np.random.default_rng(0),
    )
    assert torch.get_num_threads() == before


def test_step_weights_per_episode_and_per_step():
    from metarl.samplers import Episodes

    mask = torch.zeros(2, 2, 4)
    mask[0, 0, :4] = 1  # task 0: lengths 4 and 1
    mask[0, 1, :1] = 1
    mask[1] = 1
    ep = Episodes(torch.zeros(2, 2, 4, 1), torch.zeros(2, 2, 4, 1), torch.zeros(2, 2, 4), mask)
    for mode in ("episode", "step"):
        w = ep.weights(mode).view(2, 2, 4)
        assert torch.allclose(w.sum((1, 2)), torch.ones(2)) and torch.all(w[mask == 0] == 0)
    w = ep.weights("episode").view(2, 2, 4)
    assert torch.allclose(w[0, 0, :4], torch.full((4,), 1 / 8)) and w[0, 1, 0] == 0.5  # each episode half
    w = ep.weights("step").view(2, 2, 4)
    assert torch.allclose(w[0][mask[0] == 1], torch.full((5,), 1 / 5))  # each step a fifth
    assert torch.equal(ep.weights("episode")[1], ep.weights("step")[1])  # equal lengths: the same


def test_weighted_standardisation():
    from metarl.baselines import standardize_per_task

    torch.manual_seed(0)
    adv = torch.randn(3, 4, 5)
    mask = (torch.rand(3, 4, 5) > 0.3).float()
    w = mask / mask.sum((1, 2), keepdim=True)
    out = standardize_per_task(adv, mask, w)
    assert torch.allclose((out * w).sum((1, 2)), torch.zeros(3), atol=1e-6)
    assert torch.allclose((out.pow(2) * w).sum((1, 2)), torch.ones(3), atol=1e-5)
    assert torch.equal(out, standardize_per_task(adv, mask))  # default: every valid step alike


def test_policy_act_equals_distribution():
    """The sampler's fast forward matches functional_call for shared, per-task and mixed (ANIL) parameters."""
    from metarl.policies import distribution

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(5, 3, hidden_sizes=(16, 16), init_std=0.7)
    params = {k: v.detach() for k, v in meta_parameters(policy).items()}
    per_task = {k: v + 0.1 * torch.randn(4, *v.shape) for k, v in params.items()}
    anil = {k: (per_task[k] if k.startswith("head") or k == "log_std" else v) for k, v in params.items()}
    x = torch.randn(4, 6, 5)
    for p in (params, per_task, anil, {}):
        mean, std = policy.act(p, x)
        ref_mean, ref_std = distribution(policy, p, x)
        assert mean.shape == ref_mean.shape == (4, 6, 3) and std.shape == ref_std.shape
        torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(std, ref_std, rtol=0, atol=0)
    mean, std = policy.act(params, x[0])  # one parameter set on (N, obs)
    torch.testing.assert_close(mean, distribution(policy, params, x[0])[0], rtol=1e-6, atol=1e-6)


def test_halfcheetah_episodes_replay_exactly_in_the_single_env():
    """The sampler on the MuJoCo engine: each trajectory's recorded actions, replayed in the gymnasium env
    from the state the sampler's rng drew, give the recorded observations and rewards bit for bit
    (float64 policy, so that the recorded actions are the applied ones)."""
    import copy

    from envs.halfcheetah import HalfCheetahDirEnv

    torch.manual_seed(0)
    engine = envs.make_batch_env("halfcheetah-dir", horizon=15, nthread=1)
    policy = GaussianMLPPolicy(engine.obs_dim, engine.act_dim, hidden_sizes=(8,), init_std=1.0).double()
    tasks = [{"direction": 1.0}, {"direction": -1.0}]
    rng = np.random.default_rng(3)
    qpos, qvel = engine._cheetah.initial_state(4, copy.deepcopy(rng))  # the sampler's first draws
    ep = sample(engine, policy, meta_parameters(policy), tasks, 2, rng)
    assert ep.obs.dtype == torch.float64 and bool(ep.mask.all())  # HalfCheetah never terminates
    env = HalfCheetahDirEnv(horizon=15)
    for i in range(4):
        t, n = divmod(i, 2)
        o, _ = env.reset(options={"task": tasks[t], "qpos": qpos[i], "qvel": qvel[i]})
        for h in range(15):
            assert np.array_equal(ep.obs[t, n, h].numpy(), o)
            o, r, _, _, _ = env.step(ep.actions[t, n, h].numpy())
            assert ep.rewards[t, n, h].item() == r
