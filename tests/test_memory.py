"""A meta-iteration frees its tensors by reference counting alone.

Tensors caught in a reference cycle wait for Python's full garbage collection, which a long
run reaches ever more rarely (it is scheduled by the number of long-lived objects): a cycle
in the analytic TRPO step kept every iteration's activations alive and two 500-iteration
HalfCheetah runs were OOM-killed at 14-20 GB. These tests fail on any such cycle.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from test_classification import make_omniglot

from metarl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def tensors_left_in_cycles(step) -> list[torch.Tensor]:
    """Run `step` with the cycle collector off; the tensors only it could have freed."""
    gc.collect()
    gc.disable()
    try:
        step()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        garbage = list(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    return [o for o in garbage if isinstance(o, torch.Tensor)]


def run_iterations(kind_module, config, iterations: int = 2, autograd: bool = False):
    exp = kind_module.make_experiment(config, np.random.default_rng(0))
    if autograd:  # the path of policies the hand-derived passes do not cover
        exp.learner.analytic = None
    exp.iteration(0)  # first-call caches (engines, lazily built helpers) are not garbage

    def step():
        for it in range(1, iterations + 1):
            exp.iteration(it)

    return tensors_left_in_cycles(step)


@pytest.mark.parametrize(
    "config, extra, autograd",
    [
        ("halfcheetah_dir_maml_rllab.yaml", [], False),  # second-order TRPO, analytic path, ReLU
        ("halfcheetah_vel_anil.yaml", [], False),  # head-only, tanh
        ("navigation2d_maml.yaml", ["adaptation.first_order=true"], False),
        ("navigation2d_anil.yaml", ["training.outer=vpg", "adaptation.inner_steps=2"], False),
        ("navigation2d_maml.yaml", [], True),  # second-order TRPO through autograd
    ],
)
def test_rl_iteration_leaves_no_tensor_cycles(config, extra, autograd):
    from metarl import rl

    small = ["env.horizon=20", "training.meta_batch_size=3", "training.trajectories_per_task=2"]
    cfg = load_config(ROOT / "configs" / "rl" / config, small + extra, 0)
    assert run_iterations(rl, cfg, autograd=autograd) == []


@pytest.mark.parametrize("config", ["omniglot_5w1s_maml.yaml", "omniglot_5w1s_anil.yaml"])
def test_classification_iteration_leaves_no_tensor_cycles(tmp_path, config):
    from classification import experiment

    root = make_omniglot(tmp_path / "data")
    small = ["task.ways=3", "training.meta_batch_size=2", "model.filters=4", f"data.root={root}"]
    cfg = load_config(ROOT / "configs" / "classification" / config, small, 0)
    assert run_iterations(experiment, cfg) == []
