"""The adaptation interface: which parameters the inner loop touches, and that nothing else moves."""

from __future__ import annotations

import pytest
import torch

from metarl.adaptation import AdaptationSpec, inner_update, meta_parameters, step_sizes
from metarl.errors import UserError
from metarl.policies import GaussianMLPPolicy, distribution


@pytest.fixture
def policy():
    torch.manual_seed(0)
    return GaussianMLPPolicy(4, 2, hidden_sizes=(8, 8, 8))


def names(policy, text):
    return AdaptationSpec(text).resolve(policy)


def test_spec_resolution(policy):
    every = [n for n, _ in policy.named_parameters()]
    assert sorted(names(policy, "full")) == sorted(every)
    assert names(policy, "head") == ["head.weight", "head.bias", "log_std"]
    assert names(policy, "none") == []
    assert names(policy, "freeze:2") == ["hidden.2.weight", "hidden.2.bias", "head.weight", "head.bias", "log_std"]
    assert names(policy, "freeze:4") == []
    assert names(policy, "head.bias,log_std") == ["head.bias", "log_std"]
    policy.adapt_log_std = False
    assert names(policy, "head") == ["head.weight", "head.bias"]
    assert "log_std" not in names(policy, "full")


@pytest.mark.parametrize("bad", ["freeze:x", "freeze:", "", " full", "freeze:9", "head.bogus", "head.bias,head.bias"])
def test_bad_specs_are_user_errors(policy, bad):
    with pytest.raises(UserError):
        AdaptationSpec(bad).resolve(policy)


def adapt(policy, text, steps=3, task_dim=None):
    torch.manual_seed(1)
    x = torch.randn(task_dim or 1, 16, 4)
    target = torch.randn(task_dim or 1, 16, 2)

    def loss(p):
        mean, std = distribution(policy, p, x)
        return ((mean - target) ** 2 / std).sum()

    params = meta_parameters(policy)
    return params, inner_update(params, loss, names(policy, text), step_sizes(0.1, steps), task_dim=task_dim)


@pytest.mark.parametrize("task_dim", [None, 3])
def test_head_leaves_body_bit_identical(policy, task_dim):
    params, adapted = adapt(policy, "head", task_dim=task_dim)
    for name in ["hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.2.bias"]:
        assert adapted[name] is params[name]
        assert torch.equal(adapted[name], params[name])
    assert not torch.equal(adapted["head.weight"][0] if task_dim else adapted["head.weight"], params["head.weight"])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_freeze_k_leaves_first_k_layers_bit_identical(policy, k):
    params, adapted = adapt(policy, f"freeze:{k}")
    for i in range(3):
        for p in ("weight", "bias"):
            name = f"hidden.{i}.{p}"
            assert torch.equal(adapted[name], params[name]) == (i < k), name


def test_none_adapts_nothing_and_full_adapts_everything(policy):
    params, adapted = adapt(policy, "none")
    assert all(adapted[n] is params[n] for n in params)
    params, adapted = adapt(policy, "full")
    assert all(not torch.equal(adapted[n], params[n]) for n in params)


def test_step_sizes_per_step():
    assert step_sizes(0.1, 3) == [0.1, 0.1, 0.1]
    assert step_sizes([0.1, 0.05], 2) == [0.1, 0.05]
    with pytest.raises(UserError):
        step_sizes([0.1], 2)


def test_per_step_sizes_are_used(policy):
    """Two steps with sizes (a, b) equal one step of a followed by one step of b."""
    x = torch.randn(1, 5, 4)

    def loss(p):
        return distribution(policy, p, x)[0].pow(2).sum()

    params = meta_parameters(policy)
    adapted = names(policy, "full")
    two = inner_update(params, loss, adapted, [0.1, 0.03])
    one = inner_update(inner_update(params, loss, adapted, [0.1]), loss, adapted, [0.03])
    for n in params:
        assert torch.allclose(two[n], one[n])


def test_batched_inner_update_equals_per_task_updates(policy):
    """With a task axis, each task's adapted parameters are those of its own loss."""
    torch.manual_seed(2)
    x = torch.randn(3, 6, 4)

    def loss_for(xs):
        return lambda p: distribution(policy, p, xs)[0].pow(2).mean(dim=(-1, -2)).sum()

    params = meta_parameters(policy)
    adapted_names = names(policy, "full")
    batched = inner_update(params, loss_for(x), adapted_names, [0.2, 0.1], task_dim=3)
    for t in range(3):
        single = inner_update(params, loss_for(x[t : t + 1]), adapted_names, [0.2, 0.1])
        for n in adapted_names:
            assert torch.allclose(batched[n][t], single[n], atol=1e-6)
