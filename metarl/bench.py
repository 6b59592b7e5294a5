"""Benchmarks that print machine-readable figures, every ratio measured in the same run.

- `meta-step --env E`: seconds per meta-iteration, MAML vs ANIL, split into sampling,
  inner update and outer update; repetitions interleave the two methods so machine noise
  hits both alike, and medians are reported.
- `sampler --env halfcheetah-*`: transitions/s of (a) our sampler with the policy in the
  loop, (b) the raw physics limit of the same `mujoco.batch.Batch` stepping random
  controls, (c) gymnasium's `SyncVectorEnv` over the same number of environments.
  (b) replays the very controls (policy noise) that (a) applied, from the same initial
  states: MuJoCo's cost depends on the motion (contacts, solver iterations), and uniform
  controls in [-1, 1] simulate ~20% faster than the small ones an initial policy applies,
  so only the same controls isolate the sampler's own overhead. The uniform figure is
  reported too, and so is where (a)'s time per step goes: physics, policy, the rest.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from metarl.config import RL_DEFAULTS, merge
from metarl.errors import UserError

RL_PRESETS: dict[str, dict[str, Any]] = {
    "navigation2d": {
        "env": {"name": "navigation2d", "settings": {"action_rescale": True}},  # as the shipped configs
        "training": {"meta_batch_size": 20},
    },
    "halfcheetah-dir": {"env": {"name": "halfcheetah-dir"}, "training": {"meta_batch_size": 40}},
    "halfcheetah-vel": {"env": {"name": "halfcheetah-vel"}, "training": {"meta_batch_size": 40}},
}
METHODS = {"maml": "full", "anil": "head"}


def rl_config(env: str, spec: str, threads: int) -> dict[str, Any]:
    if env not in RL_PRESETS:
        raise UserError(f"--env {env!r}: choose one of {sorted(RL_PRESETS)}")
    cfg = merge(RL_DEFAULTS, RL_PRESETS[env])
    cfg["adaptation"]["spec"] = spec
    cfg["training"]["torch_threads"] = threads
    return cfg


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def meta_step(env: str, repeats: int, threads: int) -> dict[str, Any]:
    from metarl.rl import RLExperiment

    exps = {}
    for name, spec in METHODS.items():
        exps[name] = RLExperiment(rl_config(env, spec, threads), np.random.default_rng(0))
        exps[name].iteration(0)  # warm-up: allocations, MuJoCo batch creation
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in METHODS}
    for it in range(repeats):
        for name, exp in exps.items():
            t0 = time.perf_counter()
            m = exp.iteration(it + 1)
            m["iteration_s"] = time.perf_counter() - t0
            rows[name].append(m)
    keys = ["iteration_s", "sampling_s", "inner_update_s", "outer_update_s"]
    split = {name: {k: _median([r[k] for r in rs]) for k in keys} for name, rs in rows.items()}
    sec = {name: split[name]["iteration_s"] for name in METHODS}
    cfg = rl_config(env, "full", threads)
    return {
        "benchmark": "meta-step",
        "env": env,
        "seconds_per_iteration": sec,
        "maml_over_anil": sec["maml"] / sec["anil"],
        "split": split,
        "repeats": repeats,
        "torch_threads_update": threads,
        "torch_threads_sampling": 1,
        "settings": {
            "tasks": cfg["training"]["meta_batch_size"],
            "trajectories_per_task": cfg["training"]["trajectories_per_task"],
            "horizon": cfg["env"]["horizon"],
            "outer": cfg["training"]["outer"],
            "cg_iters": cfg["training"]["cg_iters"],
            "first_order": cfg["adaptation"]["first_order"],
        },
    }


def sampler(env: str, repeats: int, tasks: int = 40, per_task: int = 20) -> dict[str, Any]:
    import copy

    import gymnasium

    import envs
    from metarl.adaptation import meta_parameters
    from metarl.rl import build_engine, build_policy
    from metarl.samplers import sample

    if not env.startswith("halfcheetah"):
        raise UserError("the sampler benchmark compares against MuJoCo physics: use --env halfcheetah-dir|-vel")
    cfg = rl_config(env, "full", 1)
    torch.set_num_threads(1)
    engine = build_engine(cfg)
    policy = build_policy(cfg, engine)
    params = meta_parameters(policy)
    rng = np.random.default_rng(0)
    nsim, horizon = tasks * per_task, engine.horizon
    task_list = engine.sample_tasks(tasks, rng)
    uniform = rng.uniform(-1.0, 1.0, size=(horizon, nsim, engine.act_dim))
    replay: dict[str, Any] = {}
    engine.reset(task_list, per_task, np.random.default_rng(0))  # makes the Batch that `ours` times

    def timed(fn, key: str, spent: dict[str, float]):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0

        return call

    def ours() -> tuple[float, dict[str, float]]:
        """Transitions/s of one rollout, and its milliseconds per step in physics, policy and the rest."""
        replay["rng"] = copy.deepcopy(rng)  # the initial states the rollout is about to draw
        applied: list[np.ndarray] = []
        step = engine.step
        spent = {"physics": 0.0, "policy": 0.0}

        def recording_step(actions: np.ndarray):
            applied.append(actions.copy())  # a 20 kB copy against a 10 ms physics step
            replay["last_obs"], *rest = step(actions)
            return (replay["last_obs"], *rest)

        # where the time between two physics steps goes: Batch.step, the policy, the rest
        batch = engine._batch
        engine._batch = _Proxy(batch, step=timed(batch.step, "physics", spent))
        engine.step = recording_step
        policy.act = timed(policy.act, "policy", spent)
        try:
            ep = sample(engine, policy, params, task_list, per_task, rng)
        finally:
            del engine.step, policy.act
            engine._batch = batch
        replay["controls"] = engine._cheetah.control(np.stack(applied))
        spent["other"] = ep.seconds - sum(spent.values())
        return ep.transitions / ep.seconds, {key: 1e3 * seconds / len(applied) for key, seconds in spent.items()}

    def physics(controls: np.ndarray, start: np.random.Generator) -> float:
        engine.reset(task_list, per_task, start)
        batch, ctrl = engine._batch, engine._ctrl
        t0 = time.perf_counter()
        for t in range(len(controls)):
            ctrl[:] = controls[t]
            batch.step(nstep=engine._cheetah.frame_skip)
        return nsim * len(controls) / (time.perf_counter() - t0)

    def physics_replay() -> float:
        rate = physics(replay["controls"], copy.deepcopy(replay["rng"]))
        obs = engine._cheetah.observe(engine._qpos, engine._qvel, engine._xpos, engine._subtree_com)
        if not np.array_equal(obs, replay["last_obs"]):
            raise RuntimeError("the physics replay diverged from the sampler's rollout")
        return rate

    gym_id = envs.ENVIRONMENTS[env][0]
    vec = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(gym_id) for _ in range(nsim)])
    scale = vec.single_action_space.high

    def gym() -> float:
        vec.reset(seed=0)
        t0 = time.perf_counter()
        for t in range(horizon):
            vec.step(uniform[t] * scale)
        return nsim * horizon / (time.perf_counter() - t0)

    figures: dict[str, list[float]] = {"sampler": [], "physics": [], "uniform": [], "gymnasium": []}
    split: dict[str, list[float]] = {}  # physics, policy, other: each repetition's ms per step
    ours(), physics_replay()  # warm-up
    for _ in range(repeats):
        rate, ms_per_step = ours()
        figures["sampler"].append(rate)
        for key, ms in ms_per_step.items():
            split.setdefault(key, []).append(ms)
        figures["physics"].append(physics_replay())
        figures["uniform"].append(physics(uniform, np.random.default_rng(1)))
        figures["gymnasium"].append(gym())
    vec.close()
    a, b, u, c = (_median(figures[k]) for k in ("sampler", "physics", "uniform", "gymnasium"))
    paired = [x / y for x, y in zip(figures["sampler"], figures["physics"], strict=True)]
    return {
        "benchmark": "sampler",
        "env": env,
        "sampler_transitions_per_s": a,
        "physics_transitions_per_s": b,
        "physics_uniform_controls_transitions_per_s": u,
        "gymnasium_transitions_per_s": c,
        "sampler_over_physics": a / b,
        # each repetition's own a/b: the machine's speed drifts between repetitions, a and b move together,
        # so the median of these paired ratios is the drift-robust estimate
        "sampler_over_physics_per_repeat": paired,
        "sampler_over_physics_paired_median": _median(paired),
        "sampler_over_physics_uniform_controls": a / u,
        "sampler_over_gymnasium": a / c,
        # medians over the repetitions of (a), milliseconds per time step of all simulations
        "sampler_split_ms_per_step": {key: _median(times) for key, times in split.items()},
        "simulations": nsim,
        "horizon": horizon,
        "mujoco_threads": engine.nthread,
        "torch_threads": 1,
        "repeats": repeats,
        "notes": "sampler: policy (64x64 tanh) in the loop, observations and rewards; physics: the same Batch "
        "replaying the sampler's own controls from the same initial states, nothing else (the replay is checked "
        "to reproduce the rollout exactly); physics_uniform_controls: uniform controls in [-1, 1]; gymnasium: "
        "SyncVectorEnv of the single env, uniform actions, no policy; sampler_split_ms_per_step: the sampler's "
        "time per step in Batch.step (physics), in the policy's forward pass (policy) and in the rest (noise, "
        "controls, rewards, observations, buffers)",
    }


class _Proxy:
    """Stands in for an object with some attributes replaced (a `mujoco.batch.Batch` takes
    attribute writes as writes to its simulations' fields, so its methods cannot be patched)."""

    def __init__(self, target: Any, **replaced: Any) -> None:
        self.__dict__.update(replaced, _target=target)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def run(args) -> dict[str, Any]:
    threads = 1 if args.threads is None else args.threads
    if args.task is not None and (args.env is not None or args.what == "sampler"):
        raise UserError("--task names a classification benchmark of meta-step; --env an RL one: give one")
    if args.what == "sampler" and args.threads is not None:
        raise UserError("--threads sets torch threads for meta-step's updates; the sampler bench runs torch at 1")
    sizes = {k: v for k, v in (("tasks", args.tasks), ("per_task", args.per_task)) if v is not None}
    if sizes and args.what != "sampler":
        raise UserError("--tasks and --per-task size the sampler bench; meta-step runs the reference configs")
    if args.what == "sampler":
        return sampler("halfcheetah-vel" if args.env is None else args.env, args.repeats, **sizes)
    if args.task is not None:
        from classification.bench import meta_step as cls_meta_step

        return cls_meta_step(args.task, args.repeats, threads=threads)
    return meta_step("navigation2d" if args.env is None else args.env, args.repeats, threads)


def format_result(r: dict[str, Any]) -> str:
    if r["benchmark"] == "sampler":
        return (
            f"sampler   {r['sampler_transitions_per_s']:>12,.0f} transitions/s\n"
            f"physics   {r['physics_transitions_per_s']:>12,.0f} transitions/s\n"
            f"gymnasium {r['gymnasium_transitions_per_s']:>12,.0f} transitions/s\n"
            f"sampler/physics {r['sampler_over_physics']:.3f} "
            f"(per-repetition median {r['sampler_over_physics_paired_median']:.3f})   "
            f"sampler/gymnasium {r['sampler_over_gymnasium']:.2f}\n"
            "sampler, ms per step: "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["sampler_split_ms_per_step"].items())
            + "\n"
            f"({r['simulations']} simulations x {r['horizon']} steps, median of {r['repeats']})"
        )
    lines = [f"{r['benchmark']} {r.get('env') or r.get('task')}: seconds per meta-iteration (median)"]
    for name, s in r["seconds_per_iteration"].items():
        extra = ""
        if "split" in r:
            sp = r["split"][name]
            extra = (
                f"  (sampling {sp['sampling_s']:.3f}, inner {sp['inner_update_s']:.3f}, "
                f"outer {sp['outer_update_s']:.3f})"
            )
        lines.append(f"  {name:<7} {s:8.3f}{extra}")
    lines.append(f"  maml/anil {r['maml_over_anil']:.2f}")
    if "inference_seconds_per_batch" in r:
        inf = r["inference_seconds_per_batch"]
        lines.append("inference: seconds to adapt to one meta-batch of new tasks and predict (median)")
        lines += [f"  {name:<7} {s:8.3f}" for name, s in inf.items()]
        lines.append(f"  maml/anil {r['maml_over_anil_inference']:.2f}")
    return "\n".join(lines)
