"""Policy-gradient meta-RL: a VPG inner loop with a TRPO or VPG (Adam) outer update.

MAML and ANIL are the same algorithm with a different `AdaptationSpec`. The whole
meta-batch is processed at once: adapted parameters carry a leading task axis and every
loss is a per-task weighted mean over valid steps (`Episodes.weights`), so the second-order meta-gradient and the TRPO
Hessian-vector products are a few batched passes, not a loop over tasks. For the
Gaussian MLP policy those passes are written out by hand (`_AnalyticOuter`, built on
`policies.AnalyticMLP`): the same mathematics as the autograd path (`_AutogradOuter`, used
for any other policy), without autograd's bookkeeping, with every forward trace computed
once per outer step and reused by all curvature products.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import vector_to_parameters

from metarl.adaptation import AdaptationSpec, Params, inner_update, meta_parameters
from metarl.baselines import advantages
from metarl.policies import AnalyticMLP, Trace, body_features, distribution, kl_divergence, log_prob, per_row
from metarl.samplers import Episodes


def task_mean(x: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean over each task's steps, (T, M) -> (T,); see `Episodes.weights`."""
    return (x * weights).sum(-1)


def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    """Approximately solve H x = b with H given only through products H v."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        hp = hvp(p)
        alpha = rr / (p @ hp)
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class OuterConfig:
    outer: str = "trpo"  # or "vpg"
    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_backtrack_ratio: float = 0.8
    ls_max_steps: int = 15
    outer_lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 1.0
    baseline_reg: float = 1e-5
    baseline_clip_obs: float | None = None
    step_weighting: str = "episode"  # or "step": see Episodes.weights
    # "pre": the post-adaptation batch's baseline is the one fitted on the task's pre-adaptation
    # batch, as pytorch-maml-rl's first release had it; "own": each batch is fitted on itself.
    post_baseline: str = "own"


class MetaLearner:
    """One policy, one adaptation spec; `step` performs a meta-update from sampled episodes."""

    def __init__(
        self,
        policy: nn.Module,
        spec: AdaptationSpec,
        inner_lrs: list[float],
        first_order: bool,
        cfg: OuterConfig,
    ) -> None:
        self.policy, self.spec, self.inner_lrs, self.first_order, self.cfg = (
            policy,
            spec,
            inner_lrs,
            first_order,
            cfg,
        )
        self.adapted_names = spec.resolve(policy)
        head = set(policy.adaptation_layers()[-1][1])
        # ANIL fast path: the body runs once per task and the inner steps see only the head.
        self.head_only = bool(self.adapted_names) and set(self.adapted_names) <= head
        # Hand-derived passes for the Gaussian MLP policy (same mathematics, no autograd).
        self.analytic = AnalyticMLP(policy) if AnalyticMLP.supports(policy) else None
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.outer_lr) if cfg.outer == "vpg" else None

    def advantages(self, ep: Episodes, fit_on: Episodes | None = None) -> Tensor:
        """Standardised advantages of `ep`, its baseline fitted on `fit_on` (else on `ep`)."""
        c = self.cfg
        w = self.weights(ep).view_as(ep.mask)
        other = None if fit_on is None else (fit_on.obs, fit_on.rewards, fit_on.mask)
        adv = advantages(
            ep.obs, ep.rewards, ep.mask, c.gamma, c.gae_lambda, c.baseline_reg, c.baseline_clip_obs, w, other
        )
        return adv.reshape(ep.num_tasks, -1)

    def weights(self, ep: Episodes) -> Tensor:
        return ep.weights(self.cfg.step_weighting)

    def pg_loss(self, params: Params, x: Tensor, ep: Episodes, adv: Tensor, stage: str = "full") -> Tensor:
        """REINFORCE loss per task, -mean(log pi(a|s) A): (T,)."""
        mean, std = distribution(self.policy, params, x, stage)
        return -task_mean(log_prob(mean, std, ep.flat("actions")) * adv, self.weights(ep))

    def adapt(
        self,
        params: Params,
        ep: Episodes,
        adv: Tensor,
        first_order: bool | None = None,
        lrs: list[float] | None = None,
        batched: bool = False,
    ) -> Params:
        """Per-task adapted parameters (leading task axis) after the inner VPG steps on `ep`.

        `batched` says the adapted parameters already carry the task axis (a further step
        at test time).
        """
        first_order = self.first_order if first_order is None else first_order
        lrs = self.inner_lrs if lrs is None else lrs
        if first_order and self.analytic is not None and self.adapted_names:
            # The first-order inner gradient is a constant for autograd: compute it by hand,
            # chunk by chunk of tasks, and take the very same steps.
            adapted, params, per_task = self.adapted_names, dict(params), batched
            obs, actions, w = ep.flat("obs"), ep.flat("actions"), self.weights(ep)
            chunks = _task_chunks(ep.num_tasks, obs.shape[1])
            inners = [_InnerLoss(obs[s], actions[s], w[s], adv[s]) for s in chunks]
            for lr in lrs:
                with torch.no_grad():
                    parts = [
                        inner.step(self.analytic, _tasks(params, s, adapted if per_task else []), adapted)
                        for inner, s in zip(inners, chunks, strict=True)
                    ]
                    grads = {n: torch.cat([pt.grads[n] for pt in parts]) for n in adapted}
                params.update({n: params[n] - lr * grads[n] for n in adapted})
                per_task = True
            if not per_task:  # no steps: still one parameter set per task, as inner_update returns
                params.update({n: params[n].unsqueeze(0).expand(ep.num_tasks, *params[n].shape) for n in adapted})
            return params
        if self.head_only:
            x, stage = body_features(self.policy, params, ep.flat("obs")), "head"
        else:
            x, stage = ep.flat("obs"), "full"
        return inner_update(
            params,
            lambda p: self.pg_loss(p, x, ep, adv, stage).sum(),
            self.adapted_names,
            lrs,
            first_order,
            task_dim=None if batched else ep.num_tasks,
        )

    def post_distribution(
        self, params: Params, pre: Episodes, pre_adv: Tensor, post_obs: Tensor, first_order: bool
    ) -> tuple[Tensor, Tensor]:
        """(mean, std) of every task's adapted policy on its post-adaptation observations."""
        adapted = self.adapt(params, pre, pre_adv, first_order)
        return distribution(self.policy, adapted, post_obs)

    def surrogate(self, mean: Tensor, std: Tensor, post: Episodes, post_adv: Tensor, old_logp: Tensor) -> Tensor:
        """-mean(exp(log pi_new - log pi_old) A), per-task weighted means averaged over tasks."""
        ratio = torch.exp(log_prob(mean, std, post.flat("actions")) - old_logp)
        return -task_mean(ratio * post_adv, self.weights(post)).mean()

    def kl(self, old: tuple[Tensor, Tensor], mean: Tensor, std: Tensor, post: Episodes) -> Tensor:
        return task_mean(kl_divergence(old[0], old[1], mean, std), self.weights(post)).mean()

    def step(self, pre: Episodes, post: Episodes, pre_adv: Tensor | None = None) -> dict[str, float]:
        """One outer update from pre- and post-adaptation episodes of the same tasks (`pre_adv`: the
        advantages of `pre` if already computed, as the sampler's inner step has)."""
        pre_adv = self.advantages(pre) if pre_adv is None else pre_adv
        post_adv = self.advantages(post, pre if self.cfg.post_baseline == "pre" else None)
        params = meta_parameters(self.policy)
        make = _AnalyticOuter if self.analytic is not None else _AutogradOuter
        problem = make(self, params, pre, pre_adv, post, post_adv)
        if self.cfg.outer == "trpo":
            return self._trpo(problem, post, post_adv)
        return self._vpg(problem, post, post_adv)

    def _vpg(self, problem: _OuterProblem, post: Episodes, post_adv: Tensor) -> dict[str, float]:
        self.optimizer.zero_grad()
        for p, g in zip(self.policy.parameters(), _split(problem.g, list(problem.theta.values())), strict=True):
            p.grad = g.clone()
        self.optimizer.step()
        with torch.no_grad():
            new_params = torch.cat([p.reshape(-1) for p in self.policy.parameters()])
            trial = problem.trial(new_params)
            new_loss = self.surrogate(*trial, post, post_adv, problem.old_logp)
            kl = self.kl(problem.old, *trial, post)
        return {"surrogate_loss": new_loss.item(), "kl": kl.item(), "line_search_steps": 0.0}

    def _trpo(self, problem: _OuterProblem, post: Episodes, post_adv: Tensor) -> dict[str, float]:
        c = self.cfg

        def fvp(v: Tensor) -> Tensor:
            return problem.fvp(v) + c.cg_damping * v

        step = conjugate_gradient(fvp, -problem.g, c.cg_iters)
        shs = 0.5 * (step @ fvp(step))
        full_step = step * math.sqrt(c.max_kl / max(shs.item(), 1e-12))
        theta_vec = torch.cat([t.reshape(-1) for t in problem.theta.values()])
        for i in range(c.ls_max_steps):
            candidate = theta_vec + (c.ls_backtrack_ratio**i) * full_step
            with torch.no_grad():
                trial = problem.trial(candidate)
                new_loss = self.surrogate(*trial, post, post_adv, problem.old_logp).item()
                new_kl = self.kl(problem.old, *trial, post).item()
            if new_loss < problem.loss and new_kl <= c.max_kl:
                with torch.no_grad():
                    vector_to_parameters(candidate, self.policy.parameters())
                return {"surrogate_loss": new_loss, "kl": new_kl, "line_search_steps": float(i + 1)}
        return {"surrogate_loss": problem.loss, "kl": 0.0, "line_search_steps": float(c.ls_max_steps + 1)}


class _OuterProblem:
    """What the outer update needs at theta: the surrogate's value `loss` and gradient `g`,
    the old policy (`old`, `old_logp`), KL-curvature products `fvp(v)` (without damping)
    and `trial(theta')`, the (first-order adapted) post-adaptation distribution at theta'.
    Vectors are flat, in the module's parameter order."""

    theta: Params
    loss: float
    g: Tensor
    old: tuple[Tensor, Tensor]
    old_logp: Tensor

    def fvp(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def trial(self, vec: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class _AutogradOuter(_OuterProblem):
    """Any policy: autograd through `functional_call` and `inner_update`."""

    def __init__(self, learner: MetaLearner, params: Params, pre, pre_adv, post, post_adv) -> None:
        self.learner, self.pre, self.pre_adv, self.obs = learner, pre, pre_adv, post.flat("obs")
        self.theta = {n: p.detach() for n, p in params.items()}
        self.leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
        self.tensors = list(self.leaves.values())
        mean, std = learner.post_distribution(self.leaves, pre, pre_adv, self.obs, learner.first_order)
        self.old = (mean.detach(), std.detach())
        self.old_logp = log_prob(*self.old, post.flat("actions"))
        loss = learner.surrogate(mean, std, post, post_adv, self.old_logp)
        self.loss = loss.item()
        self.g = _flat(torch.autograd.grad(loss, self.tensors, retain_graph=True))
        self.mean, self.std = mean, std
        post_w = learner.weights(post)
        self.metric = (post_w / post_w.shape[0]).unsqueeze(-1) / self.old[1].pow(2)
        self.jt_u = None

    def fvp(self, v: Tensor) -> Tensor:
        # At theta the new policy equals the old one, so the KL's gradient with respect to
        # the outputs vanishes and its Hessian through the adaptation is exactly J^T M J
        # (J: Jacobian of the outputs w.r.t. theta, M: the Gaussian's Fisher metric on
        # mean and std). J v comes from differentiating the linear map u -> J^T u once
        # more, J^T w from the outputs' graph: two backward passes per product, no
        # third-order graph.
        if self.jt_u is None:
            self.u = (torch.zeros_like(self.mean, requires_grad=True), torch.zeros_like(self.std, requires_grad=True))
            self.jt_u = torch.autograd.grad((self.mean, self.std), self.tensors, self.u, create_graph=True)
        jv_mean, jv_std = torch.autograd.grad(self.jt_u, self.u, _split(v, self.tensors), retain_graph=True)
        w = (self.metric * jv_mean, 2.0 * self.metric * jv_std)
        return _flat(torch.autograd.grad((self.mean, self.std), self.tensors, w, retain_graph=True))

    def trial(self, vec: Tensor) -> tuple[Tensor, Tensor]:
        # The adapted value is the same first- or second-order; only its gradient differs.
        with torch.no_grad():
            return self.learner.post_distribution(_unflat(vec, self.theta), self.pre, self.pre_adv, self.obs, True)


# Rows per chunk of tasks and per torch thread on the analytic path: every (rows, 64)
# float32 intermediate of a chunk is ~2 MB per thread and stays in cache between the dozens
# of passes of a curvature product, which measured ~2x faster than streaming
# whole-meta-batch arrays through memory.
CHUNK_ROWS = 8192


def _task_chunks(num_tasks: int, rows_per_task: int) -> list[slice]:
    size = max(1, CHUNK_ROWS * torch.get_num_threads() // max(rows_per_task, 1))
    return [slice(i, min(i + size, num_tasks)) for i in range(0, num_tasks, size)]


@dataclass
class _InnerPoint:
    """One inner step's primal values: parameters, forward trace, gradients, adjoint caches."""

    params: Params
    trace: Trace
    grads: Params
    deltas: list
    curv: list
    r: Tensor  # actions - mean
    civ: Tensor  # c / std^2
    cr: Tensor  # c (actions - mean) / std^2


class _InnerLoss:
    """Every task's inner loss, -mean(log pi(a|s) A) = sum_m c_m (|a - mean|^2 / 2 std^2 + log std)
    + const with c = A w (w: the per-step weights), and its derivatives with respect to the policy's
    outputs: d/dmean = -c r / std^2 (r = a - mean), d/dlog_std = sum_m c (1 - r^2 / std^2)."""

    def __init__(self, obs: Tensor, actions: Tensor, weights: Tensor, adv: Tensor) -> None:
        self.c = (adv * weights).unsqueeze(-1)
        self.x, self.actions = obs, actions

    def step(self, mlp: AnalyticMLP, params: Params, adapted: list[str], second_order: bool = False) -> _InnerPoint:
        """Inner gradients at `params`; `second_order` keeps what Hessian products need."""
        wanted = dict.fromkeys(adapted, True)
        deep = mlp.lowest_layer(wanted) < len(mlp.layers) - 1
        tr = mlp.trace(params, self.x, slopes=deep or second_order)
        r = self.actions - tr.mean
        civ = self.c * per_row(-2.0 * tr.log_std).exp()
        cr = civ * r
        g_ls = self.c.sum(1) - (cr * r).sum(1)
        grads, deltas, curv = mlp.vjp(params, tr, -cr, g_ls, wanted, keep=second_order)
        return _InnerPoint(params, tr, grads, deltas, curv, r, civ, cr)

    @staticmethod
    def tangent(pt: _InnerPoint, dmean: Tensor | None, dls: Tensor | None) -> tuple[Tensor, Tensor]:
        """Tangents of the two output derivatives along (dmean, dls), using r' = -dmean and
        (1/std^2)' = -2 dls / std^2."""
        dmean = torch.zeros_like(pt.r) if dmean is None else dmean
        dG = pt.civ * dmean
        if dls is None:
            return dG, 2.0 * (pt.cr * dmean).sum(1)
        dls = per_row(dls)
        dG.addcmul_(pt.cr, dls, value=2.0)
        return dG, 2.0 * (pt.cr * (dmean + pt.r * dls)).sum(1)


def _adapt_by_hand(mlp: AnalyticMLP, inner: _InnerLoss, params: Params, adapted: list[str], lrs) -> Params:
    """First-order inner steps (no autograd): the adapted parameters, task axis first."""
    for lr in lrs if adapted else []:
        grads = inner.step(mlp, params, adapted).grads
        params = {**params, **{n: params[n] - lr * grads[n] for n in adapted}}
    return params


class _TaskBlock:
    """The analytic outer quantities of one chunk of tasks (see `_AnalyticOuter`).

    It copies what it needs from `outer` rather than keeping `outer` itself: a block <-> outer
    reference cycle made every meta-iteration's traces (hundreds of MB) wait for Python's
    full garbage collection, which a long run reaches rarely; two rllab runs were OOM-killed.
    """

    def __init__(self, outer: _AnalyticOuter, inner: _InnerLoss, obs: Tensor) -> None:
        self.mlp, self.theta, self.adapted, self.first_order = outer.mlp, outer.theta, outer.adapted, outer.first_order
        self.inner, self.obs = inner, obs
        self.points, phi = [], outer.theta
        for lr in outer.lrs if self.adapted else []:
            pt = inner.step(self.mlp, phi, self.adapted, not self.first_order)
            self.points.append((lr, pt))
            phi = {**phi, **{n: phi[n] - lr * pt.grads[n] for n in self.adapted}}
        self.phi, self.post_trace = phi, self.mlp.trace(phi, obs)

    def hvp(self, pt: _InnerPoint, t: Params, wanted: dict[str, bool]) -> Params:
        """Inner-loss Hessian at `pt` times `t`: forward-over-reverse on the cached trace."""
        mlp = self.mlp
        dacts, dmean, dls = mlp.jvp(pt.params, pt.trace, t)
        dg_mean, dg_ls = self.inner.tangent(pt, dmean, dls)
        return mlp.vjp_tangent(pt.params, pt.trace, pt.deltas, pt.curv, t, dacts, dg_mean, dg_ls, wanted)

    def adjoint(self, g_mean: Tensor, g_ls: Tensor | None) -> Params:
        """J^T (g_mean, g_ls): cotangents of the post-adaptation outputs -> theta-gradient, summed."""
        names, adapted = list(self.theta), set(self.adapted)
        u, _, _ = self.mlp.vjp(self.phi, self.post_trace, g_mean, g_ls, {n: n in adapted for n in names})
        total = {n: u[n] for n in names if n not in adapted}
        ua = {n: u[n] for n in self.adapted}
        for k in reversed(range(0 if self.first_order else len(self.points))):
            lr, pt = self.points[k]
            # at phi_0 = theta every task shares the parameters: sum over tasks inside the pass
            h = self.hvp(pt, ua, {n: n in adapted and k > 0 for n in names})
            for n in names:
                if n not in adapted:
                    total[n] = total[n] - lr * h[n]
                elif k > 0:
                    ua[n] = ua[n] - lr * h[n]
                else:
                    total[n] = ua.pop(n).sum(0) - lr * h[n]
        total.update({n: x.sum(0) for n, x in ua.items()})
        return total

    def tangent(self, v: Params) -> tuple[Tensor | None, Tensor | None]:
        """J v: tangents of the post-adaptation mean and clamped log-std along v."""
        for lr, pt in [] if self.first_order else self.points:
            h = self.hvp(pt, v, dict.fromkeys(self.adapted, True))
            v = {**v, **{n: v[n] - lr * h[n] for n in self.adapted}}
        _, dmean, dls = self.mlp.jvp(self.phi, self.post_trace, v)
        return dmean, dls


class _AnalyticOuter(_OuterProblem):
    """The Gaussian MLP policy: the same quantities from the hand-derived passes.

    Inner step k maps phi_k to phi_{k+1} = phi_k - lr_k grad L(phi_k) on the adapted names,
    so its tangent is d_{k+1} = d_k - lr_k H_k d_k and its adjoint u_k = u_{k+1} - lr_k H_k
    u_{k+1}, H_k the inner loss's Hessian at phi_k (symmetric; restricted to the adapted rows
    in the tangent and columns in the adjoint). Each H_k x is one forward-over-reverse pass
    (`jvp`, `_InnerLoss.tangent`, `vjp_tangent`) reusing phi_k's trace, which is computed
    once per outer step and shared by the gradient, all CG products and their J v / J^T w
    halves. First-order adaptation drops the H_k terms. Tasks are independent until the
    final sum over tasks, so everything runs chunk by chunk (`CHUNK_ROWS`).
    """

    def __init__(self, learner: MetaLearner, params: Params, pre, pre_adv, post, post_adv) -> None:
        self.mlp, self.adapted, self.first_order = learner.analytic, learner.adapted_names, learner.first_order
        self.lrs = learner.inner_lrs
        self.theta = {n: p.detach() for n, p in params.items()}
        obs, actions, post_w = post.flat("obs"), post.flat("actions"), learner.weights(post)
        self.chunks = _task_chunks(post.num_tasks, obs.shape[1])
        pre_obs, pre_actions, pre_w = pre.flat("obs"), pre.flat("actions"), learner.weights(pre)
        with torch.no_grad():
            self.blocks = [
                _TaskBlock(self, _InnerLoss(pre_obs[s], pre_actions[s], pre_w[s], pre_adv[s]), obs[s])
                for s in self.chunks
            ]
            mean = torch.cat([b.post_trace.mean for b in self.blocks])
            std = torch.cat([self.mlp.std(b.post_trace) for b in self.blocks])
            self.old = (mean, std)
            self.old_logp = log_prob(mean, std, actions)
            self.loss = learner.surrogate(mean, std, post, post_adv, self.old_logp).item()
            # Surrogate -sum_m w A exp(logp - old_logp): its derivatives on (mean, log_std).
            weight = (post_w / post_w.shape[0]).unsqueeze(-1)
            rho = weight * (post_adv * torch.exp(log_prob(mean, std, actions) - self.old_logp)).unsqueeze(-1)
            r, ivar = actions - mean, std.pow(-2)
            g_mean, g_ls = -rho * r * ivar, -(rho * (r * r * ivar - 1.0)).sum(1)
            self.g = self._sum(b.adjoint(g_mean[s], g_ls[s]) for b, s in zip(self.blocks, self.chunks, strict=True))
            # KL(old || new) near theta: metric weight/std^2 on the mean, 2 weight/std^2 on
            # the std, i.e. 2 sum_m weight on the log-std.
            self.metric = weight * ivar
            self.metric_ls = 2.0 * (self.metric * std * std).sum(1)

    def _sum(self, grads) -> Tensor:
        total = None
        for g in grads:
            flat = _flat(g[n] for n in self.theta)
            total = flat if total is None else total.add_(flat)
        return total

    def _block_fvp(self, b: _TaskBlock, s: slice, v: Params) -> Params:
        dmean, dls = b.tangent(v)
        metric = self.metric[s]
        g_mean = torch.zeros_like(metric) if dmean is None else metric * dmean
        return b.adjoint(g_mean, None if dls is None else self.metric_ls[s] * dls)

    def fvp(self, v: Tensor) -> Tensor:
        with torch.no_grad():
            v = _unflat(v, self.theta)
            return self._sum(self._block_fvp(b, s, v) for b, s in zip(self.blocks, self.chunks, strict=True))

    def trial(self, vec: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            theta = _unflat(vec, self.theta)
            means, stds = [], []
            for b in self.blocks:
                tr = self.mlp.trace(_adapt_by_hand(self.mlp, b.inner, theta, self.adapted, self.lrs), b.obs, False)
                means.append(tr.mean)
                stds.append(self.mlp.std(tr))
            return torch.cat(means), torch.cat(stds)


def _split(vec: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def _tasks(params: Params, s: slice, per_task: list[str]) -> Params:
    """The parameters of the tasks in `s`: the names in `per_task` carry a task axis."""
    return {n: p[s] if n in per_task else p for n, p in params.items()}


def _flat(tensors) -> Tensor:
    return torch.cat([x.reshape(-1) for x in tensors])


def _unflat(vec: Tensor, like: Params) -> Params:
    return dict(zip(like, _split(vec, list(like.values())), strict=True))
