#!/usr/bin/env python
"""Scale of a 2D-Navigation policy against its action range: why ANIL drifts under the default semantics.

For each run's final checkpoint, over states drawn uniformly from the goal square, prints the mean
squared norm of the last hidden features (an inner step on the head alone moves the action mean by
about lr x that), and the mean |action mean| and the policy std divided by the largest step the
environment applies (0.1 for raw clipped outputs, 1.0 before rescaling with action_rescale).

Usage: .venv/bin/python scripts/nav_scale.py RUN [RUN ...]
"""

import sys

import torch

from envs.navigation import MAX_STEP
from metarl.rl import build_engine, build_policy
from metarl.runs import RunDir


def scale(run_dir: str, states: int = 4000) -> dict[str, float]:
    run = RunDir.open(run_dir)
    config = run.config()
    engine = build_engine(config)
    policy = build_policy(config, engine)
    policy.load_state_dict(run.load_checkpoint()["model"]["policy"])
    largest = 1.0 if engine.action_rescale else MAX_STEP  # before rescaling, the output's clip is 1
    obs = (torch.rand(states, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1) * engine.goal_range
    with torch.no_grad():
        features = policy(obs, stage="body")
        mean, std = policy(obs)
    return {
        "features_sq_norm": float(features.pow(2).sum(-1).mean()),
        "mean_over_max_step": float(mean.abs().mean()) / largest,
        "std_over_max_step": float(std.mean()) / largest,
    }


if __name__ == "__main__":
    print(f"{'run':<34} {'|h|^2':>6} {'|mean|/max':>10} {'std/max':>8}")
    for name in sys.argv[1:]:
        s = scale(name)
        print(f"{name:<34} {s['features_sq_norm']:6.1f} {s['mean_over_max_step']:10.2f} {s['std_over_max_step']:8.2f}")
