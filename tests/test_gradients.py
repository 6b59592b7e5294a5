"""Finite-difference checks, in float64 on a small policy: inner update, meta-gradient, curvature."""

from __future__ import annotations

import pytest
import torch

from metarl.adaptation import AdaptationSpec, inner_update, meta_parameters
from metarl.algorithms import MetaLearner, OuterConfig, conjugate_gradient
from metarl.policies import GaussianMLPPolicy, distribution, kl_divergence, log_prob
from metarl.samplers import Episodes

T, N, H, OBS, ACT = 3, 2, 5, 3, 2


@pytest.fixture
def setup():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(OBS, ACT, hidden_sizes=(5, 4), init_std=0.8).double()
    mask = torch.ones(T, N, H, dtype=torch.float64)
    mask[0, 1, 3:] = 0.0  # one episode ends early

    def episodes() -> Episodes:
        return Episodes(
            torch.randn(T, N, H, OBS, dtype=torch.float64),
            torch.randn(T, N, H, ACT, dtype=torch.float64),
            torch.randn(T, N, H, dtype=torch.float64),
            mask,
        )

    return policy, episodes(), episodes()


def flat_params(policy):
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


def as_params(policy, vec):
    out, i = {}, 0
    for name, p in policy.named_parameters():
        out[name] = vec[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def numeric_grad(f, x, eps=1e-6):
    g = torch.zeros_like(x)
    for i in range(x.numel()):
        d = torch.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def learner(policy, spec, outer="trpo", first_order=False, lrs=(0.3,)):
    return MetaLearner(policy, AdaptationSpec(spec), list(lrs), first_order, OuterConfig(outer=outer))


def test_inner_update_gradient_matches_finite_differences(setup):
    policy, pre, _ = setup
    ml = learner(policy, "full")
    adv = ml.advantages(pre)
    theta = flat_params(policy)

    def task_loss(vec, t):
        return ml.pg_loss(as_params(policy, vec), pre.flat("obs"), pre, adv)[t]

    adapted = ml.adapt(meta_parameters(policy), pre, adv, first_order=True)
    for t in range(T):
        g = numeric_grad(lambda v, t=t: task_loss(v, t), theta)
        expected = theta - 0.3 * g
        got = torch.cat([adapted[n][t].detach().reshape(-1) for n, _ in policy.named_parameters()])
        assert torch.allclose(got, expected, atol=1e-8), (got - expected).abs().max()


@pytest.mark.parametrize("spec", ["full", "head", "freeze:1"])
@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(setup, spec, steps):
    policy, pre, post = setup
    ml = learner(policy, spec, lrs=[0.3, 0.2][:steps])
    pre_adv, post_adv = ml.advantages(pre), ml.advantages(post)

    def outer_loss(params):
        adapted = ml.adapt(params, pre, pre_adv)
        mean, std = distribution(policy, adapted, post.flat("obs"))
        logp = log_prob(mean, std, post.flat("actions"))
        return -(logp * post_adv * post.flat("mask")).sum()

    params = meta_parameters(policy)
    auto = torch.cat([g.reshape(-1) for g in torch.autograd.grad(outer_loss(params), list(params.values()))])
    numeric = numeric_grad(lambda v: outer_loss(as_params(policy, v)).detach(), flat_params(policy))
    assert torch.allclose(auto, numeric, rtol=1e-5, atol=1e-7), (auto - numeric).abs().max()


def test_first_order_meta_gradient_drops_inner_hessian(setup):
    """First-order MAML: the meta-gradient is the post-adaptation gradient at the adapted point."""
    policy, pre, post = setup
    ml = learner(policy, "full", first_order=True)
    pre_adv, post_adv = ml.advantages(pre), ml.advantages(post)
    params = meta_parameters(policy)
    adapted = ml.adapt(params, pre, pre_adv)
    mean, std = distribution(policy, adapted, post.flat("obs"))
    loss = -(log_prob(mean, std, post.flat("actions")) * post_adv).sum()
    fo = torch.autograd.grad(loss, list(params.values()))
    # the same loss evaluated at detached adapted parameters, gradient summed over tasks
    leaf = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    mean, std = distribution(policy, leaf, post.flat("obs"))
    loss2 = -(log_prob(mean, std, post.flat("actions")) * post_adv).sum()
    g2 = torch.autograd.grad(loss2, list(leaf.values()))
    for a, b in zip(fo, g2, strict=True):
        b = b.sum(0) if b.dim() > a.dim() else b
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("spec", ["full", "head"])
def test_kl_curvature_product_matches_finite_differences(setup, spec, monkeypatch):
    """The TRPO curvature product equals the KL Hessian through the adaptation (finite differences)."""
    policy, pre, post = setup
    ml = learner(policy, spec)
    pre_adv = ml.advantages(pre)
    captured = {}

    def spy(hvp, b, iters):
        captured["fvp"] = hvp
        return conjugate_gradient(hvp, b, iters)

    monkeypatch.setattr("metarl.algorithms.conjugate_gradient", spy)
    theta = flat_params(policy)
    obs = post.flat("obs")
    with torch.no_grad():
        old = distribution(policy, ml.adapt(meta_parameters(policy), pre, pre_adv, True), obs)

    def kl_grad(vec):
        p = {k: v.clone().requires_grad_() for k, v in as_params(policy, vec).items()}
        mean, std = ml.post_distribution(p, pre, pre_adv, obs, False)
        kl = ml.kl(old, mean, std, post)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(kl, list(p.values()))])

    ml.step(pre, post)  # captures the product at the current theta; then restore theta
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta, policy.parameters())
    torch.manual_seed(1)
    v = torch.randn_like(theta)
    eps = 1e-5
    numeric = (kl_grad(theta + eps * v) - kl_grad(theta - eps * v)) / (2 * eps)
    got = captured["fvp"](v) - ml.cfg.cg_damping * v
    assert torch.allclose(got, numeric, rtol=1e-5, atol=1e-8), (got - numeric).abs().max()


def test_trpo_step_respects_max_kl_and_improves(setup):
    policy, pre, post = setup
    for seed in range(5):
        torch.manual_seed(seed)
        ml = learner(policy, "full")
        ml.cfg.max_kl = 1e-3
        pre_adv = ml.advantages(pre)
        obs = post.flat("obs")
        with torch.no_grad():
            old = distribution(policy, ml.adapt(meta_parameters(policy), pre, pre_adv, True), obs)
        before = flat_params(policy)
        metrics = ml.step(pre, post)
        with torch.no_grad():
            new = ml.post_distribution(meta_parameters(policy), pre, pre_adv, obs, True)
            kl = ml.kl(old, *new, post).item()
        assert kl <= 1e-3 + 1e-12
        assert metrics["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-15)
        if metrics["line_search_steps"] <= ml.cfg.ls_max_steps:
            assert metrics["surrogate_loss"] < 0 and not torch.equal(before, flat_params(policy))
        else:
            assert torch.equal(before, flat_params(policy))


def test_kl_divergence_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    mp, sp = torch.tensor([0.3, -1.0]), torch.tensor([0.5, 1.5])
    mq, sq = torch.tensor([0.0, -0.5]), torch.tensor([0.8, 1.0])
    x = mp + sp * torch.randn(400_000, 2)
    mc = (log_prob(mp, sp, x) - log_prob(mq, sq, x)).mean()
    assert kl_divergence(mp, sp, mq, sq).item() == pytest.approx(mc.item(), abs=5e-3)


def test_inner_update_leaves_module_untouched(setup):
    policy, pre, _ = setup
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    params = meta_parameters(policy)
    inner_update(params, lambda p: distribution(policy, p, pre.flat("obs"))[0].pow(2).sum(), ["head.weight"], [0.5])
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("spec", ["full", "head", "freeze:1", "none", "head.weight,log_std", "hidden.0.bias,head.bias"])
@pytest.mark.parametrize("lrs", [[0.3], [0.3, 0.2]])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("activation,clamp,weighting", [("tanh", False, "episode"), ("relu", True, "step")])
def test_analytic_outer_equals_autograd_outer(spec, lrs, first_order, activation, clamp, weighting):
    """The hand-written fast path computes the same loss, gradient, curvature and trials as autograd."""
    from metarl import algorithms as A

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(
        OBS, ACT, hidden_sizes=(5, 4), init_std=0.8, activation=activation, min_std=0.85 if clamp else 1e-6
    ).double()
    if clamp:
        with torch.no_grad():
            policy.log_std[0] = -1.0  # below the clamp: its gradient must vanish in both paths
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(T, N, H, dtype=torch.float64)
    mask[0, 1, 3:] = 0

    def ep():
        return Episodes(
            torch.randn(T, N, H, OBS, generator=g, dtype=torch.float64),
            torch.randn(T, N, H, ACT, generator=g, dtype=torch.float64),
            torch.randn(T, N, H, generator=g, dtype=torch.float64),
            mask,
        )

    pre, post = ep(), ep()
    ml = A.MetaLearner(policy, AdaptationSpec(spec), lrs, first_order, A.OuterConfig(step_weighting=weighting))
    pre_adv, post_adv = ml.advantages(pre), ml.advantages(post)
    params = meta_parameters(policy)
    ref = A._AutogradOuter(ml, params, pre, pre_adv, post, post_adv)
    new = A._AnalyticOuter(ml, params, pre, pre_adv, post, post_adv)
    assert new.loss == pytest.approx(ref.loss, abs=1e-12)
    assert torch.allclose(new.old[0], ref.old[0], atol=1e-12) and torch.allclose(new.old[1], ref.old[1], atol=1e-12)
    assert torch.allclose(new.g, ref.g, rtol=1e-10, atol=1e-13)
    v = torch.randn(ref.g.shape, generator=g, dtype=torch.float64)
    assert torch.allclose(new.fvp(v), ref.fvp(v), rtol=1e-10, atol=1e-13)
    theta = flat_params(policy) + 0.1 * v
    for a, b in zip(new.trial(theta), ref.trial(theta), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("spec", ["full", "head", "freeze:1", "head.weight,log_std"])
@pytest.mark.parametrize("lrs", [[0.3], [0.3, 0.2]])
def test_analytic_first_order_adapt_equals_inner_update(setup, spec, lrs):
    """The sampler's adapted policies (hand-derived first-order steps) are those of inner_update."""
    policy, pre, _ = setup
    ml = learner(policy, spec, lrs=lrs)
    adv = ml.advantages(pre)
    params = meta_parameters(policy)
    fast = ml.adapt(params, pre, adv, first_order=True)
    ml.analytic = None
    slow = ml.adapt(params, pre, adv, first_order=True)
    assert fast.keys() == slow.keys()
    for n in fast:
        assert fast[n].shape == slow[n].shape and torch.allclose(fast[n], slow[n], atol=1e-12), n


@pytest.mark.parametrize("post_baseline", ["own", "pre"])
def test_the_outer_step_fits_the_post_batch_baseline_where_configured(setup, post_baseline):
    """training.post_baseline: the outer surrogate's advantages come from a baseline fitted on the post
    batch itself ("own") or on the same tasks' pre-adaptation batch ("pre", pytorch-maml-rl v1)."""
    policy, pre, post = setup
    ml = MetaLearner(policy, AdaptationSpec("full"), [0.3], False, OuterConfig(post_baseline=post_baseline))
    seen, fit = [], ml.advantages

    def spy(ep, fit_on=None):
        seen.append((ep, fit_on))
        return fit(ep, fit_on)

    ml.advantages = spy
    ml.step(pre, post)
    assert seen[-1][0] is post and seen[-1][1] is (pre if post_baseline == "pre" else None)
    assert not torch.allclose(fit(post, pre), fit(post))
