"""HalfCheetah-Direction/-Velocity: the single envs against gymnasium's HalfCheetah-v5, the
batched engines against the single envs (bit for bit), the task API and the settings."""

from __future__ import annotations

import gymnasium
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.halfcheetah import (
    XML_PATH,
    HalfCheetahDirBatch,
    HalfCheetahDirEnv,
    HalfCheetahVelBatch,
    HalfCheetahVelEnv,
    sample_tasks,
)
from metarl.errors import UserError

FAMILIES = [
    pytest.param(HalfCheetahDirEnv, HalfCheetahDirBatch, [{"direction": 1.0}, {"direction": -1.0}], id="dir"),
    pytest.param(HalfCheetahVelEnv, HalfCheetahVelBatch, [{"velocity": 0.3}, {"velocity": 1.7}], id="vel"),
]


def _states(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random initial states (qpos, qvel), wider than the reset noise so that rollouts differ."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.3, 0.3, size=(n, 9)), rng.normal(0.0, 0.5, size=(n, 9))


# Finn et al.'s rllab variant: no frame skip, raw control, the centre of mass's velocity
RLLAB = {"frame_skip": 1, "velocity": "com", "action_scale": 1.0}
# and, closer still, rllab's observed centre of mass and reset noise
RLLAB_ENV = {**RLLAB, "obs_position": "com", "reset_noise": "rllab"}


@pytest.mark.parametrize(("env_cls", "batch_cls", "tasks"), FAMILIES)
@pytest.mark.parametrize(
    ("obs_dim", "variant"),
    [(20, {}), (17, {}), (20, RLLAB), (20, RLLAB_ENV), (20, {"obs_position": "com"})],
    ids=["20d", "17d", "rllab", "rllab-env", "com-5-substeps"],
)
def test_batch_matches_single_env_bit_for_bit(env_cls, batch_cls, tasks, obs_dim, variant):
    per_task, horizon = 3, 100
    nsim = len(tasks) * per_task
    qpos, qvel = _states(nsim, seed=1)
    # raw outputs around the scale of 10, many beyond it, so the clipping is exercised
    actions = np.random.default_rng(2).normal(0.0, 8.0, size=(horizon, nsim, 6)).astype(np.float32)

    batch = batch_cls(obs_dim=obs_dim, nthread=2, **variant)
    obs = [batch.reset(tasks, per_task, qpos=qpos, qvel=qvel)]
    rewards = []
    for t in range(horizon):
        o, r, terminated = batch.step(actions[t])
        assert not terminated.any()
        obs.append(o)
        rewards.append(r)
    obs, rewards = np.stack(obs, 1), np.stack(rewards, 1)
    assert obs.shape == (nsim, horizon + 1, obs_dim) and obs.dtype == np.float64

    env = env_cls(obs_dim=obs_dim, **variant)
    for i in range(nsim):
        task = tasks[i // per_task]  # rows are task-major
        o, _ = env.reset(options={"task": task, "qpos": qpos[i], "qvel": qvel[i]})
        single_obs, single_rewards = [o], []
        for t in range(horizon):
            o, r, _, _, _ = env.step(actions[t, i])
            single_obs.append(o)
            single_rewards.append(r)
        assert np.array_equal(obs[i], np.stack(single_obs)), f"observations differ in sim {i}"
        assert np.array_equal(rewards[i], np.array(single_rewards)), f"rewards differ in sim {i}"
    assert np.abs(obs[:, -1] - obs[:, 0]).max() > 0.5  # the cheetahs really moved


@pytest.mark.parametrize(("env_cls", "batch_cls", "tasks"), FAMILIES)
def test_a_reused_batch_from_drawn_states_matches_the_single_env_over_rllabs_full_horizon(env_cls, batch_cls, tasks):
    """As the sampler uses it: one Batch reset again and again, initial states drawn from the rng, here with
    the rllab variant's 200 steps of 0.01 s."""
    per_task, horizon = 2, 200
    nsim = len(tasks) * per_task
    batch = batch_cls(horizon=horizon, nthread=2, **RLLAB_ENV)
    env = env_cls(horizon=horizon, **RLLAB_ENV)
    for episode in range(2):  # the second episode reuses the Batch the first one stepped
        qpos, qvel = batch._cheetah.initial_state(nsim, np.random.default_rng(10 + episode))
        obs = batch.reset(tasks, per_task, np.random.default_rng(10 + episode))
        actions = np.random.default_rng(20 + episode).normal(0.0, 1.5, size=(horizon, nsim, 6))
        trajectory, rewards = [obs], []
        for t in range(horizon):
            o, r, _ = batch.step(actions[t])
            trajectory.append(o)
            rewards.append(r)
        trajectory, rewards = np.stack(trajectory, 1), np.stack(rewards, 1)
        for i in range(nsim):
            o, _ = env.reset(options={"task": tasks[i // per_task], "qpos": qpos[i], "qvel": qvel[i]})
            single, single_rewards = [o], []
            for t in range(horizon):
                o, r, _, truncated, _ = env.step(actions[t, i])
                single.append(o)
                single_rewards.append(r)
            assert truncated  # the horizon ends the episode
            assert np.array_equal(trajectory[i], np.stack(single)), f"episode {episode}, sim {i}"
            assert np.array_equal(rewards[i], np.array(single_rewards)), f"episode {episode}, sim {i}"


def test_rllab_velocity_is_mujocos_subtree_com_velocity_and_leaves_the_dynamics_alone():
    qpos, qvel = _states(1, seed=11)
    state = {"task": {"direction": 1.0}, "qpos": qpos[0], "qvel": qvel[0]}
    com, root = HalfCheetahDirEnv(**RLLAB), HalfCheetahDirEnv(frame_skip=1, action_scale=1.0)
    assert com.dt == root.dt == pytest.approx(0.01)
    com.reset(options=state)
    root.reset(options=state)
    check = mujoco.MjData(com.model)
    rng = np.random.default_rng(12)
    speeds = []
    for _ in range(60):
        action = rng.uniform(-1.0, 1.0, size=6)
        o_com, r, _, _, info = com.step(action)
        o_root, _, _, _, info_root = root.step(action)
        # the extra kinematics pass changes nothing in the state: the trajectories stay equal
        assert np.array_equal(o_com[:17], o_root[:17])
        # MuJoCo's own subtree velocity at the new state (rllab's get_body_comvel("torso"))
        check.qpos[:], check.qvel[:] = com.data.qpos, com.data.qvel
        mujoco.mj_forward(com.model, check)
        mujoco.mj_subtreeVel(com.model, check)
        torso = com.model.body("torso").id
        assert info["x_velocity"] == pytest.approx(check.subtree_linvel[torso, 0], abs=1e-12)
        assert r == info["x_velocity"] - 0.05 * np.sum(np.square(action))
        # the observed torso position is current, not one substep behind as in the default
        assert np.array_equal(o_com[17:], check.xpos[torso])
        speeds.append(info["x_velocity"] - info_root["x_velocity"])
    assert np.abs(speeds).max() > 1e-3  # the two velocities are different quantities


def test_rllab_observation_ends_with_the_whole_bodys_centre_of_mass():
    """rllab's get_body_com("torso") is the torso subtree's centre of mass: the mass-weighted mean of every
    body's centre of mass, here current after each step as rllab's forward() leaves it."""
    qpos, qvel = _states(1, seed=14)
    state = {"task": {"direction": -1.0}, "qpos": qpos[0], "qvel": qvel[0]}
    com, torso = HalfCheetahDirEnv(**RLLAB_ENV), HalfCheetahDirEnv(**RLLAB)
    mass = com.model.body_mass[1:]  # body 0 is the world
    rng = np.random.default_rng(15)
    gaps = []
    for t in range(50):
        if t == 0:
            o_com, o_torso = com.reset(options=state)[0], torso.reset(options=state)[0]
        else:
            action = rng.uniform(-1.0, 1.0, size=6)
            o_com, o_torso = com.step(action)[0], torso.step(action)[0]
        assert np.array_equal(o_com[:17], o_torso[:17])  # the same dynamics
        whole = (mass[:, None] * com.data.xipos[1:]).sum(0) / mass.sum()
        assert o_com[17:] == pytest.approx(whole, abs=1e-12)
        assert np.array_equal(o_torso[17:], torso.data.xpos[torso.model.body("torso").id])
        gaps.append(np.abs(o_com[17:] - o_torso[17:]).max())
    assert min(gaps) > 1e-3  # the legs pull the centre of mass away from the torso body


def test_rllab_reset_noise_is_normal_around_qpos0():
    env = HalfCheetahDirEnv(**RLLAB_ENV)
    cheetah = env._cheetah
    qpos, qvel = cheetah.initial_state(20000, np.random.default_rng(16))
    assert np.abs(qpos.mean(0) - env.model.qpos0).max() < 1e-3
    assert qpos.std(0) == pytest.approx(np.full(9, 0.01), rel=0.03)
    assert np.abs(qvel.mean(0)).max() < 1e-2 and qvel.std(0) == pytest.approx(np.full(9, 0.1), rel=0.03)
    assert np.abs(qpos - env.model.qpos0).max() > 0.03  # normal tails, unlike v5's uniform +-0.1 ...
    default_qpos, _ = HalfCheetahDirEnv()._cheetah.initial_state(20000, np.random.default_rng(16))
    assert default_qpos.std(0) == pytest.approx(np.full(9, 0.2 / np.sqrt(12)), rel=0.03)  # ... of std 0.058
    # a seeded reset of the single env starts from the engine's first draw
    o, _ = env.reset(seed=17)
    (q,), (v,) = cheetah.initial_state(1, np.random.default_rng(17))
    assert np.array_equal(env.data.qpos, q) and np.array_equal(env.data.qvel, v)


def test_frame_skip_is_that_many_substeps_of_one():
    qpos, qvel = _states(1, seed=13)
    state = {"task": {"velocity": 1.0}, "qpos": qpos[0], "qvel": qvel[0]}
    five, one = HalfCheetahVelEnv(), HalfCheetahVelEnv(frame_skip=1)
    assert five.dt == pytest.approx(0.05) and one.dt == pytest.approx(0.01)
    five.reset(options=state)
    one.reset(options=state)
    action = np.full(6, 3.0, np.float32)
    o5, r5, _, _, info5 = five.step(action)
    velocities = [one.step(action)[4]["x_velocity"] for _ in range(5)]
    assert np.array_equal(five.data.qpos, one.data.qpos) and np.array_equal(five.data.qvel, one.data.qvel)
    assert info5["x_velocity"] == pytest.approx(np.mean(velocities), rel=1e-9)  # root displacement / dt


def test_single_env_matches_gymnasium_halfcheetah_v5():
    """With v5's settings (17-d, cost 0.1, raw control) the env is v5, bit for bit."""
    reference = gymnasium.make("HalfCheetah-v5").unwrapped
    env = HalfCheetahDirEnv(obs_dim=17, ctrl_cost_weight=0.1, action_scale=1.0)
    env.reset_task({"direction": 1.0})
    # the same seed gives the same initial state: same noise, drawn in the same order
    o_ref, _ = reference.reset(seed=3)
    o, _ = env.reset(seed=3)
    assert np.array_equal(o, o_ref)
    # and an exact state set from outside
    qpos, qvel = _states(1, seed=4)
    reference.set_state(qpos[0], qvel[0])
    o, _ = env.reset(options={"qpos": qpos[0], "qvel": qvel[0]})
    assert np.array_equal(o, reference._get_obs())
    rng = np.random.default_rng(5)
    for _ in range(100):
        # float64: v5 computes the control cost in the action's dtype (float32 costs differ ~1e-8)
        action = rng.uniform(-1.0, 1.0, size=6)
        o_ref, r_ref, _, _, info_ref = reference.step(action)
        o, r, terminated, _, info = env.step(action)
        assert np.array_equal(o, o_ref)
        assert info["x_velocity"] == info_ref["x_velocity"]
        assert info["reward_ctrl"] == info_ref["reward_ctrl"]
        assert info["reward_forward"] == info_ref["reward_forward"]  # direction +1: the run term is v5's
        assert r == r_ref and not terminated
    reference.close()


def test_model_without_the_deprecated_settotalmass_equals_gymnasiums_compile():
    """The total mass set on the compiled model gives every array of the XML's own `settotalmass`."""
    ours = HalfCheetahDirEnv().model
    theirs = mujoco.MjModel.from_xml_path(str(XML_PATH))  # gymnasium's compile, deprecated attribute and all
    arrays = [name for name in dir(theirs) if isinstance(getattr(theirs, name, None), np.ndarray)]
    assert len(arrays) > 100 and "body_mass" in arrays and "body_inertia" in arrays
    assert theirs.body_mass.sum() == pytest.approx(14.0)
    assert [name for name in arrays if not np.array_equal(getattr(ours, name), getattr(theirs, name))] == []
    for stat in ("meaninertia", "meanmass", "meansize", "extent"):  # meaninertia scales the solver's tolerance
        assert getattr(ours.stat, stat) == getattr(theirs.stat, stat), stat
    assert np.array_equal(ours.stat.center, theirs.stat.center)


# check_env's advice for the unbounded observation and the +-action_scale raw-output range
@pytest.mark.filterwarnings("ignore:.*(symmetric and normalized|infinity):UserWarning")
@pytest.mark.parametrize("gym_id", ["metarl/HalfCheetahDir-v0", "metarl/HalfCheetahVel-v0"])
def test_registered_envs_pass_check_env_and_truncate_at_horizon(gym_id):
    assert gym_id in gymnasium.registry  # registered by `import envs`
    env = gymnasium.make(gym_id)
    assert env.spec.max_episode_steps is None  # the env truncates itself
    check_env(env.unwrapped)
    env.reset(seed=0)
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(100)]
    assert flags[-1] == (False, True)
    assert not any(terminated or truncated for terminated, truncated in flags[:-1])


def test_sample_tasks_distribution():
    rng = np.random.default_rng(0)
    directions = np.array([t["direction"] for t in sample_tasks("direction", 400, rng)])
    assert set(directions) == {-1.0, 1.0}
    assert 0.4 < (directions > 0).mean() < 0.6
    velocities = np.array([t["velocity"] for t in sample_tasks("velocity", 400, rng)])
    assert velocities.min() >= 0.0 and velocities.max() <= 2.0
    assert velocities.min() < 0.1 and velocities.max() > 1.9
    custom = np.array([t["velocity"] for t in sample_tasks("velocity", 400, rng, (0.5, 3.0))])
    assert custom.min() >= 0.5 and custom.max() <= 3.0 and custom.max() > 2.8
    with pytest.raises(UserError):
        sample_tasks("goal", 1, rng)

    # the env and the engine draw from the same distribution function
    env = HalfCheetahVelEnv(velocity_range=(1.0, 1.5))
    env.reset(seed=0)
    assert all(1.0 <= t["velocity"] <= 1.5 for t in env.sample_tasks(50))
    engine = HalfCheetahVelBatch(velocity_range=(1.0, 1.5))
    assert engine.sample_tasks(3, np.random.default_rng(7)) == sample_tasks(
        "velocity", 3, np.random.default_rng(7), (1.0, 1.5)
    )


def test_task_persists_and_seeded_reset_is_reproducible():
    env = HalfCheetahDirEnv()
    o1, info = env.reset(seed=11)
    assert info["task"]["direction"] in (-1.0, 1.0)  # the first reset draws a task
    env.reset_task({"direction": -1.0})
    o2, info = env.reset(seed=11)
    assert np.array_equal(o1, o2) and info["task"] == {"direction": -1.0}
    with pytest.raises(UserError):
        env.reset_task({"velocity": 1.0})


def _one_step(env, task: dict, action: np.ndarray):
    qpos, qvel = _states(1, seed=8)
    env.reset(options={"task": task, "qpos": qpos[0], "qvel": qvel[0]})
    return env.step(action)


def test_direction_reward_formula_and_sign_flip():
    env = HalfCheetahDirEnv()
    action = np.array([12.0, -3.0, 5.0, -20.0, 0.5, 7.0], dtype=np.float32)
    expected_ctrl = -0.05 * np.sum(np.clip(action.astype(np.float64) / 10.0, -1, 1) ** 2)
    _, r_fwd, _, _, info_fwd = _one_step(env, {"direction": 1.0}, action)
    _, r_bwd, _, _, info_bwd = _one_step(env, {"direction": -1.0}, action)
    assert info_fwd["x_velocity"] == info_bwd["x_velocity"] != 0.0
    assert info_fwd["reward_run"] == info_fwd["x_velocity"] == -info_bwd["reward_run"]
    assert info_fwd["reward_ctrl"] == info_bwd["reward_ctrl"] == pytest.approx(expected_ctrl, rel=1e-12)
    assert r_fwd == info_fwd["reward_run"] + info_fwd["reward_ctrl"]
    assert r_bwd == info_bwd["reward_run"] + info_bwd["reward_ctrl"]


def test_velocity_reward_formula():
    env = HalfCheetahVelEnv()
    action = np.full(6, 4.0, dtype=np.float32)
    for goal in (0.0, 1.2):
        _, r, _, _, info = _one_step(env, {"velocity": goal}, action)
        assert info["reward_run"] == -abs(info["x_velocity"] - goal)
        assert info["reward_ctrl"] == pytest.approx(-0.05 * 6 * 0.4**2, rel=1e-12)
        assert r == info["reward_run"] + info["reward_ctrl"]


def test_settings_obs_dim_ctrl_cost_and_action_scale():
    qpos, qvel = _states(1, seed=9)
    state = {"task": {"direction": 1.0}, "qpos": qpos[0], "qvel": qvel[0]}
    full, short = HalfCheetahDirEnv(), HalfCheetahDirEnv(obs_dim=17)
    o20, _ = full.reset(options=state)
    o17, _ = short.reset(options=state)
    assert o20.shape == (20,) and o17.shape == (17,) and short.observation_space.shape == (17,)
    assert np.array_equal(o20[:17], o17)
    assert np.array_equal(o20[17:], full.data.body("torso").xpos)

    free = HalfCheetahDirEnv(ctrl_cost_weight=0.0)
    free.reset(options=state)
    assert free.step(np.ones(6, np.float32))[4]["reward_ctrl"] == 0.0

    raw = HalfCheetahDirEnv(action_scale=1.0)
    assert np.array_equal(raw.action_space.high, np.ones(6, np.float32))
    assert np.array_equal(full.action_space.high, np.full(6, 10.0, np.float32))
    raw.reset(options=state)
    raw.step(np.array([0.5, -2.0, 2.0, 0.0, -0.25, 1.0], np.float32))
    assert np.array_equal(raw.data.ctrl, [0.5, -1.0, 1.0, 0.0, -0.25, 1.0])
    full.step(np.array([5.0, -20.0, 20.0, 0.0, -2.5, 10.0], np.float32))
    assert np.array_equal(full.data.ctrl, [0.5, -1.0, 1.0, 0.0, -0.25, 1.0])


def test_settings_horizon():
    env = HalfCheetahVelEnv(horizon=5)
    env.reset(seed=0)
    truncated = [env.step(np.zeros(6, np.float32))[3] for _ in range(5)]
    assert truncated == [False, False, False, False, True]
    env.reset()
    assert not env.step(np.zeros(6, np.float32))[3]
    assert HalfCheetahVelBatch(horizon=7).horizon == 7


@pytest.mark.parametrize(
    "settings",
    [
        {"obs_dim": 18},
        {"action_scale": 0.0},
        {"horizon": 0},
        {"velocity_range": (0.0, 1.0)},
        {"frame_skip": 0},
        {"frame_skip": 2.5},
        {"velocity": "torso"},
        {"obs_position": "body"},
        {"obs_position": "com", "obs_dim": 17},
        {"reset_noise": "mujoco"},
    ],
)
def test_bad_settings_are_user_errors(settings):
    with pytest.raises(UserError):
        HalfCheetahDirEnv(**settings)
    with pytest.raises(UserError):
        HalfCheetahDirBatch(**settings)


def test_batch_reset_draws_task_major_states_and_reuses_the_batch():
    engine = envs.make_batch_env("halfcheetah-vel", velocity_range=(0.0, 3.0), nthread=2)
    assert (engine.obs_dim, engine.act_dim, engine.horizon) == (20, 6, 100)
    tasks = engine.sample_tasks(4, np.random.default_rng(0))
    obs = engine.reset(tasks, 5, np.random.default_rng(1))
    assert obs.shape == (20, 20)
    assert np.array_equal(engine.goals, np.repeat([t["velocity"] for t in tasks], 5))
    # initial states: qpos[1:] in +-0.1 (qpos0 is 0 for these joints), qvel ~ 0.1 N(0, 1)
    assert np.abs(obs[:, :8]).max() <= 0.1 and 0.05 < obs[:, 8:17].std() < 0.2
    assert np.array_equal(obs, engine.reset(tasks, 5, np.random.default_rng(1)))
    batch = engine._batch
    engine.reset(tasks[::-1], 5, np.random.default_rng(2))
    assert engine._batch is batch  # same size: the Batch is reused
    obs, reward, terminated = engine.step(np.zeros((20, 6)))
    assert obs.shape == (20, 20) and reward.shape == (20,) and terminated.dtype == bool
    engine.reset(tasks[:2], 3, np.random.default_rng(3))
    assert engine.nsim == 6 and engine._batch is not batch
    with pytest.raises(ValueError):
        engine.step(np.zeros((20, 6)))
    with pytest.raises(UserError):
        engine.reset(tasks, 5)  # neither an rng nor exact states


def test_sb3_ppo_trains_on_a_fixed_task():
    torch = pytest.importorskip("torch")
    from stable_baselines3 import PPO

    env = HalfCheetahVelEnv(horizon=50)
    env.reset_task({"velocity": 1.0})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
        model.learn(total_timesteps=128)
    finally:
        torch.set_num_threads(threads)
    assert model.num_timesteps == 128
    assert env.task == {"velocity": 1.0}  # resets keep the task


def test_sampler_benchmark_physics_limit_replays_the_sampler_rollout():
    """(b) steps exactly the controls (a) applied from the same states; the bench raises if the replay diverges."""
    from metarl.bench import sampler

    r = sampler("halfcheetah-vel", repeats=1, tasks=2, per_task=2)
    rates = ("sampler", "physics", "physics_uniform_controls", "gymnasium")
    assert all(r[f"{k}_transitions_per_s"] > 0 for k in rates)
    assert r["sampler_over_physics"] == r["sampler_transitions_per_s"] / r["physics_transitions_per_s"]
    assert r["sampler_over_physics_per_repeat"] == [r["sampler_over_physics"]]  # one repetition: its own ratio
    assert r["sampler_over_physics_paired_median"] == r["sampler_over_physics"]
    assert r["simulations"] == 4 and r["horizon"] == 100
    split = r["sampler_split_ms_per_step"]  # one repetition: its parts add up to its own time per step
    assert set(split) == {"physics", "policy", "other"} and min(split.values()) > 0
    per_step_ms = 1e3 * r["simulations"] / r["sampler_transitions_per_s"]
    assert sum(split.values()) == pytest.approx(per_step_ms, rel=1e-9)
