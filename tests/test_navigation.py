"""2D-Navigation semantics, single env against the batched engine."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs
from envs.navigation import Navigation2DBatch


def make(**kw):
    return gymnasium.make("metarl/Navigation2D-v0", **kw).unwrapped


def test_registered_and_passes_env_checker():
    from gymnasium.utils.env_checker import check_env

    env = gymnasium.make("metarl/Navigation2D-v0")
    check_env(env.unwrapped, skip_render_check=True)


def test_reward_is_negative_distance_after_clipped_move():
    env = make()
    env.reset(seed=0)
    env.reset_task({"goal": np.array([0.3, -0.2])})
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.05]))
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=1e-6)  # clipped to [-0.1, 0.1], not rescaled
    assert reward == pytest.approx(-np.hypot(0.3 - 0.1, -0.2 + 0.05))
    assert not terminated and not truncated


def test_rllab_variant_rescales():
    env = make(action_rescale=True)
    env.reset(seed=0)
    env.reset_task({"goal": np.array([0.3, 0.3])})
    obs, *_ = env.step(np.array([0.5, 2.0]))
    np.testing.assert_allclose(obs, [0.05, 0.1], rtol=1e-6)


def test_terminates_within_success_radius_and_truncates_at_horizon():
    env = make(horizon=7)
    env.reset(seed=0)
    env.reset_task({"goal": np.array([0.095, -0.005])})
    *_, terminated, truncated, _ = env.step(np.array([0.1, 0.0]))
    assert terminated and not truncated
    env.reset()
    env.reset_task({"goal": np.array([0.45, 0.45])})
    for t in range(7):
        *_, terminated, truncated, _ = env.step(np.array([0.0, 0.0]))
        assert not terminated
        assert truncated == (t == 6)


def test_task_sampling_is_uniform_in_the_square_and_seeded():
    env = make()
    env.reset(seed=3)
    tasks = env.sample_tasks(2000)
    goals = np.stack([t["goal"] for t in tasks])
    assert goals.shape == (2000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert abs(goals.mean()) < 0.02 and goals.std() == pytest.approx(1 / np.sqrt(12), rel=0.05)
    again = make()  # a fresh env: its first reset also draws its own goal, as this one's did
    again.reset(seed=3)
    assert np.array_equal(goals, np.stack([t["goal"] for t in again.sample_tasks(2000)]))


def test_first_reset_draws_a_goal_from_the_seed_and_keeps_it():
    a, b = make(), make()
    goal = a.reset(seed=0)[1]["task"]["goal"]
    assert np.array_equal(goal, b.reset(seed=0)[1]["task"]["goal"])
    assert np.abs(goal).max() <= 0.5 and np.any(goal != 0)  # not the start position
    assert not np.array_equal(goal, make().reset(seed=1)[1]["task"]["goal"])
    assert np.array_equal(a.reset(seed=5)[1]["task"]["goal"], goal)  # the task persists across resets


def test_batch_engine_matches_single_env_step_for_step():
    rng = np.random.default_rng(0)
    engine = envs.make_batch_env("navigation2d", horizon=100)
    tasks = engine.sample_tasks(3, rng)
    per_task = 2
    obs = engine.reset(tasks, per_task, rng)
    singles = []
    for task in tasks:
        for _ in range(per_task):
            env = make()
            env.reset(seed=0)
            env.reset_task(task)
            singles.append(env)
    assert np.array_equal(obs, np.zeros((6, 2)))
    for _ in range(30):
        actions = rng.normal(scale=0.08, size=(6, 2))
        obs, reward, terminated = engine.step(actions)
        for i, env in enumerate(singles):
            o, r, term, _, _ = env.step(actions[i])
            np.testing.assert_allclose(obs[i], o, rtol=1e-6)
            assert reward[i] == r and terminated[i] == term
    assert isinstance(engine, Navigation2DBatch)


@pytest.mark.parametrize("rescale", [False, True], ids=["clip", "rescale"])
def test_batch_engine_matches_single_env_through_clipping_and_arrival(rescale):
    """Steer at the goal with outputs well beyond the action bound: every step is clipped, and each
    robot arrives (terminates) at its own step, which the engine and the single env must agree on."""
    rng = np.random.default_rng(1)
    engine = envs.make_batch_env("navigation2d", horizon=100, action_rescale=rescale)
    tasks = engine.sample_tasks(4, rng)
    obs = engine.reset(tasks, 2, rng)
    singles = []
    for task in tasks:
        for _ in range(2):
            env = make(action_rescale=rescale)
            env.reset(options={"task": task})
            singles.append(env)
    gain = 10.0 if rescale else 1.0  # a step onto the goal, clipped to the bound while farther than one step
    done = np.zeros(8, dtype=bool)
    for _ in range(100):
        goals = np.repeat(np.stack([t["goal"] for t in tasks]), 2, 0)
        actions = gain * (goals - obs) + rng.normal(scale=1e-3, size=(8, 2))
        obs, reward, terminated = engine.step(actions)
        for i, env in enumerate(singles):
            if done[i]:
                continue
            o, r, term, _, _ = env.step(actions[i])
            np.testing.assert_allclose(obs[i], o, rtol=1e-6)
            assert reward[i] == r and terminated[i] == term
            done[i] = term
    assert done.all()  # every robot arrived, each within the horizon
