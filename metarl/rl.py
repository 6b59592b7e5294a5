"""Meta-RL experiments: build engine, policy and learner from a config; train; evaluate."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

import envs
from metarl.adaptation import AdaptationSpec, Params, evaluation_step_sizes, meta_parameters, step_sizes
from metarl.algorithms import MetaLearner, OuterConfig
from metarl.config import evaluation_options
from metarl.errors import UserError
from metarl.policies import GaussianMLPPolicy
from metarl.runs import checkpoint_part, load_weights
from metarl.samplers import Episodes, sample


def build_engine(config: dict[str, Any], **extra):
    env = config["env"]
    try:
        return envs.make_batch_env(env["name"], horizon=env["horizon"], **env["settings"], **extra)
    except TypeError as e:
        raise UserError(f"env.settings for {env['name']!r}: {e}") from None


def build_policy(config: dict[str, Any], engine) -> GaussianMLPPolicy:
    p = config["policy"]
    return GaussianMLPPolicy(
        engine.obs_dim,
        engine.act_dim,
        hidden_sizes=p["hidden_sizes"],
        activation=p["activation"],
        init_std=p["init_std"],
        min_std=p["min_std"],
        adapt_log_std=p["adapt_log_std"],
    )


def build_learner(config: dict[str, Any], policy: GaussianMLPPolicy, spec: str | None = None) -> MetaLearner:
    a, t = config["adaptation"], config["training"]
    outer = OuterConfig(**{k: t[k] for k in OuterConfig.__dataclass_fields__})
    return MetaLearner(
        policy,
        AdaptationSpec(a["spec"] if spec is None else spec),
        step_sizes(a["inner_lr"], a["inner_steps"]),
        a["first_order"],
        outer,
    )


def detached(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


class RLExperiment:
    """One meta-iteration = sample, adapt, sample again, outer update."""

    tensorboard_tags = {
        "pre_return": "return/pre_adaptation",
        "post_return": "return/post_adaptation",
        "kl": "train/kl",
        "surrogate_loss": "train/surrogate_loss",
        "line_search_steps": "train/line_search_steps",
        "transitions_per_s": "perf/transitions_per_s",
        "iteration_s": "perf/iteration_s",
        "rss_mb": "perf/rss_mb",
    }
    progress = {"pre": "pre_return", "post": "post_return"}

    def __init__(self, config: dict[str, Any], rng: np.random.Generator) -> None:
        torch.set_num_threads(config["training"]["torch_threads"])
        self.config, self.rng = config, rng
        self.engine = build_engine(config)
        self.policy = build_policy(config, self.engine)
        self.learner = build_learner(config, self.policy)
        self.iterations = config["training"]["iterations"]

    def sample_pair(self, tasks: list[dict]) -> tuple[Episodes, Episodes, Tensor]:
        """Pre-adaptation episodes, then episodes of the (first-order) adapted policies, and the
        pre-adaptation advantages (the outer step reuses them rather than fitting the baseline again).

        `last_adapt_s` times the baseline fit and that inner step: the `inner_update_s` of the metrics.
        The outer step repeats the inner update differentiably (second order for MAML), inside
        `outer_update_s`."""
        per_task = self.config["training"]["trajectories_per_task"]
        params = meta_parameters(self.policy)
        pre = sample(self.engine, self.policy, params, tasks, per_task, self.rng)
        t0 = time.perf_counter()
        pre_adv = self.learner.advantages(pre)
        adapted = self.learner.adapt(params, pre, pre_adv, first_order=True)
        self.last_adapt_s = time.perf_counter() - t0
        post = sample(self.engine, self.policy, detached(adapted), tasks, per_task, self.rng)
        return pre, post, pre_adv

    def iteration(self, it: int) -> dict[str, float]:
        tasks = self.engine.sample_tasks(self.config["training"]["meta_batch_size"], self.rng)
        pre, post, pre_adv = self.sample_pair(tasks)
        t0 = time.perf_counter()
        metrics = self.learner.step(pre, post, pre_adv)
        outer_s = time.perf_counter() - t0
        seconds = pre.seconds + post.seconds
        metrics.update(
            pre_return=pre.returns().mean().item(),
            post_return=post.returns().mean().item(),
            transitions_per_s=(pre.transitions + post.transitions) / seconds,
            sampling_s=seconds,
            inner_update_s=self.last_adapt_s,
            outer_update_s=outer_s,
        )
        return metrics

    def state(self) -> dict[str, Any]:
        opt = self.learner.optimizer
        return {"policy": self.policy.state_dict(), "optimizer": opt.state_dict() if opt else None}

    def load_state(self, state: dict[str, Any]) -> None:
        load_weights(self.policy, checkpoint_part(state, "policy"))
        if self.learner.optimizer is not None and state.get("optimizer"):
            load_weights(self.learner.optimizer, state["optimizer"])


def finetune_step(learner: MetaLearner, params: Params, ep: Episodes, lr: float, k: int) -> Params:
    """Test-time inner step `k` (from 0) on `ep`, first order, as Finn et al. fine-tune at test time."""
    return learner.adapt(params, ep, learner.advantages(ep), first_order=True, lrs=[lr], batched=k > 0)


def finetune(engine, policy, learner, task_list: list[dict], per_task: int, lrs: list[float], rng) -> list[Episodes]:
    """Episodes before adaptation and after each test-time step (Finn et al. 2017): step k samples fresh
    trajectories with the policy adapted k times, then takes its inner step on them.

    `evaluate` reads returns from these, `analysis_probe` representations, so both see the same policies.
    """
    params, episodes = meta_parameters(policy), []
    for k in range(len(lrs) + 1):
        episodes.append(sample(engine, policy, detached(params), task_list, per_task, rng))
        if k < len(lrs):
            params = finetune_step(learner, params, episodes[-1], lrs[k], k)
    return episodes


def evaluate(
    config: dict[str, Any],
    policy_state: dict[str, Any],
    adapt: str,
    inner_steps: int,
    tasks: int,
    seed: int,
) -> dict[str, Any]:
    """Average return over `tasks` test tasks before adaptation and after each inner step.

    Each step samples fresh trajectories with the current (adapted) policy and takes one
    inner VPG step on them, as in Finn et al. (2017).
    """
    engine, policy, learner = _policy_and_learner(config, policy_state, adapt)
    lrs = evaluation_step_sizes(config, inner_steps)
    rng = np.random.default_rng(seed)
    task_list = engine.sample_tasks(tasks, rng)
    episodes = finetune(engine, policy, learner, task_list, config["evaluation"]["trajectories_per_task"], lrs, rng)
    per_task_returns = [ep.returns().mean(1).double() for ep in episodes]
    means = [r.mean().item() for r in per_task_returns]
    ci = [1.96 * r.std(unbiased=True).item() / math.sqrt(tasks) if tasks > 1 else 0.0 for r in per_task_returns]
    return {
        "adapt": adapt,
        "tasks": tasks,
        "inner_steps": inner_steps,
        "inner_lrs": lrs,
        "seed": seed,
        "returns": means,
        "ci95": ci,
        # each test task with its mean return before adaptation and after each step (a per-task breakdown,
        # e.g. forward against backward on HalfCheetah-Direction)
        "per_task": [
            {
                "task": {k: np.asarray(v).tolist() for k, v in task.items()},
                "returns": [r[i].item() for r in per_task_returns],
            }
            for i, task in enumerate(task_list)
        ],
    }


def make_experiment(config: dict[str, Any], rng: np.random.Generator) -> RLExperiment:
    return RLExperiment(config, rng)


def evaluate_run(config: dict[str, Any], state: dict[str, Any], args) -> dict[str, Any]:
    """`metarl evaluate` for RL runs: CLI options override the config's evaluation section."""
    adapt, inner_steps, tasks, seed = evaluation_options(config, args)
    return evaluate(config, checkpoint_part(state["model"], "policy"), adapt, inner_steps, tasks, seed)


def _policy_and_learner(config: dict[str, Any], policy_state: dict[str, Any], spec: str | None = None):
    if spec == "nil":
        raise UserError("--adapt nil is a classification read-out; RL runs take full, head, none or freeze:K")
    torch.set_num_threads(config["training"]["torch_threads"])
    engine = build_engine(config)
    policy = build_policy(config, engine)
    load_weights(policy, policy_state)
    return engine, policy, build_learner(config, policy, spec=spec)


def analysis_probe(config: dict[str, Any], state: dict[str, Any], tasks: int, seed: int, max_states: int = 1000):
    """Tasks, the support episodes of each test-time inner step, and query states after the last.

    The inner steps are `evaluation.inner_steps` and draw their episodes as `evaluate` does (step k
    samples with the policy after k steps), so for the same seed the returns equal its readings.
    """
    steps = config["evaluation"]["inner_steps"]
    if steps < 1:
        raise UserError("analysis compares a policy before and after adaptation: it needs inner_steps >= 1")
    engine, policy, learner = _policy_and_learner(config, checkpoint_part(state["model"], "policy"))
    rng = np.random.default_rng(seed)
    task_list = engine.sample_tasks(tasks, rng)
    per_task = config["evaluation"]["trajectories_per_task"]
    *support, query = finetune(engine, policy, learner, task_list, per_task, evaluation_step_sizes(config, steps), rng)
    returns = [ep.returns().mean(1).mean().item() for ep in (*support, query)]
    obs, mask = query.flat("obs"), query.flat("mask").bool()
    states = [obs[t][mask[t]][:max_states] for t in range(len(task_list))]
    return {"support": support, "states": states, "returns": returns}


def capture(config: dict[str, Any], state: dict[str, Any], probe, spec: str | None = None, adapt: bool = True):
    """Every layer's output on the probe's states, before and after the inner steps on its support episodes.

    Another checkpoint or `spec` takes its steps on the same episodes (those of the probe's own
    policy), so that every model is compared on the same data. `adapt=False` skips the steps
    (post is None): comparing two models needs only their outputs before adaptation.
    """
    _, policy, learner = _policy_and_learner(config, checkpoint_part(state["model"], "policy"), spec)
    params = meta_parameters(policy)
    lrs = evaluation_step_sizes(config, len(probe["support"]))
    with torch.no_grad():
        adapted = params
        for k, ep in enumerate(probe["support"] if adapt else []):
            adapted = finetune_step(learner, adapted, ep, lrs[k], k)
        adapted = detached(adapted)
        pre: dict[str, list] = {}
        post: dict[str, list] = {}
        for t, states in enumerate(probe["states"]):
            task_params = {k: v[t] if v.dim() > params[k].dim() else v for k, v in adapted.items()}
            for out, p in ((pre, params), (post, task_params))[: 2 if adapt else 1]:
                for layer, x in functional_call(policy, p, (states,), {"stage": "layers"}).items():
                    out.setdefault(layer, []).append(x.double().numpy())
    return pre, post if adapt else None
