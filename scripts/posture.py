#!/usr/bin/env python
"""Does a HalfCheetah policy run on its back? Torso pitch before and after one test-time step.

A cheetah that flips over can still move, but the gait it learns upside down is a different
local optimum from running upright; stalled Direction runs are the suspects. Observation
entry 1 is the torso's pitch (qpos[2], the root hinge about y); |pitch| > pi/2 counts as on
its back. Each checkpoint is evaluated like `metarl evaluate RUN --tasks N --inner-steps 1`
(same test tasks, seed and trajectories), and its rows are split by task value (direction).

Usage: .venv/bin/python scripts/posture.py RUN [RUN/snapshots/iter_000100.pt ...] [--tasks 40]
A run directory means its final checkpoint; a .pt file inside a run means that snapshot.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from metarl.adaptation import evaluation_step_sizes
from metarl.rl import _policy_and_learner, finetune
from metarl.runs import RunDir

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("paths", nargs="+")
parser.add_argument("--tasks", type=int, default=40)
args = parser.parse_args()

print(f"{'checkpoint':<46} {'direction':>9}  {'stage':<6} {'return':>8} {'on back':>8} {'mean |pitch|':>12}")
for p in args.paths:
    path = Path(p)
    run = RunDir.open(path if path.is_dir() else path.parent.parent)
    config = run.config()
    state = run.load_checkpoint(None if path.is_dir() else path)
    engine, policy, learner = _policy_and_learner(config, state["model"]["policy"], config["adaptation"]["spec"])
    rng = np.random.default_rng(config["evaluation"]["seed"])
    task_list = engine.sample_tasks(args.tasks, rng)
    episodes = finetune(
        engine,
        policy,
        learner,
        task_list,
        config["evaluation"]["trajectories_per_task"],
        evaluation_step_sizes(config, 1),
        rng,
    )
    key = next(iter(task_list[0]))
    values = np.array([float(np.asarray(t[key])) for t in task_list])
    name = f"{run.path.name}@{state['iteration']}"
    for stage, ep in zip(["before", "after"], episodes, strict=True):
        # wrapped to [-pi, pi]: a cheetah that turned full circle is upright again
        pitch = (torch.remainder(ep.obs[..., 1] + math.pi, 2 * math.pi) - math.pi).abs()
        mask = ep.mask
        returns = ep.returns().mean(1)
        for v in sorted(set(values.tolist())):
            sel = torch.as_tensor(values == v)
            m = mask[sel]
            back = ((pitch[sel] > math.pi / 2).float() * m).sum() / m.sum()
            mean_pitch = (pitch[sel] * m).sum() / m.sum()
            print(f"{name:<46} {v:>9g}  {stage:<6} {returns[sel].mean():8.1f} {back:8.2f} {mean_pitch:12.2f}")
