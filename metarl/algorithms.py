"""Policy-gradient meta-RL: a VPG inner loop with a TRPO or VPG (Adam) outer update.

MAML and ANIL are the same algorithm with a different `AdaptationSpec`. The whole
meta-batch is processed at once: adapted parameters carry a leading task axis and every
loss is a per-task masked mean, so the second-order meta-gradient and the TRPO
Hessian-vector products are a few batched autograd passes, not a loop over tasks.
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
from metarl.policies import body_features, distribution, kl_divergence, log_prob
from metarl.samplers import Episodes


def task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each task's valid steps: (T, M) -> (T,)."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


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
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.outer_lr) if cfg.outer == "vpg" else None

    def advantages(self, ep: Episodes) -> Tensor:
        c = self.cfg
        adv = advantages(ep.obs, ep.rewards, ep.mask, c.gamma, c.gae_lambda, c.baseline_reg, c.baseline_clip_obs)
        return adv.reshape(ep.num_tasks, -1)

    def pg_loss(self, params: Params, x: Tensor, ep: Episodes, adv: Tensor, stage: str = "full") -> Tensor:
        """REINFORCE loss per task, -mean(log pi(a|s) A): (T,)."""
        mean, std = distribution(self.policy, params, x, stage)
        return -task_mean(log_prob(mean, std, ep.flat("actions")) * adv, ep.flat("mask"))

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
        if self.head_only:
            x, stage = body_features(self.policy, params, ep.flat("obs")), "head"
        else:
            x, stage = ep.flat("obs"), "full"
        return inner_update(
            params,
            lambda p: self.pg_loss(p, x, ep, adv, stage).sum(),
            self.adapted_names,
            self.inner_lrs if lrs is None else lrs,
            self.first_order if first_order is None else first_order,
            task_dim=None if batched else ep.num_tasks,
        )

    def post_distribution(
        self, params: Params, pre: Episodes, pre_adv: Tensor, post_obs: Tensor, first_order: bool
    ) -> tuple[Tensor, Tensor]:
        """(mean, std) of every task's adapted policy on its post-adaptation observations."""
        adapted = self.adapt(params, pre, pre_adv, first_order)
        return distribution(self.policy, adapted, post_obs)

    def surrogate(self, mean: Tensor, std: Tensor, post: Episodes, post_adv: Tensor, old_logp: Tensor) -> Tensor:
        """-mean(exp(log pi_new - log pi_old) A), per-task masked means averaged over tasks."""
        ratio = torch.exp(log_prob(mean, std, post.flat("actions")) - old_logp)
        return -task_mean(ratio * post_adv, post.flat("mask")).mean()

    def kl(self, old: tuple[Tensor, Tensor], mean: Tensor, std: Tensor, post: Episodes) -> Tensor:
        return task_mean(kl_divergence(old[0], old[1], mean, std), post.flat("mask")).mean()

    def step(self, pre: Episodes, post: Episodes) -> dict[str, float]:
        """One outer update from pre- and post-adaptation episodes of the same tasks."""
        pre_adv, post_adv = self.advantages(pre), self.advantages(post)
        params = meta_parameters(self.policy)
        if self.cfg.outer == "trpo":
            return self._trpo(params, pre, pre_adv, post, post_adv)
        return self._vpg(params, pre, pre_adv, post, post_adv)

    def _vpg(self, params, pre, pre_adv, post, post_adv) -> dict[str, float]:
        obs = post.flat("obs")
        mean, std = self.post_distribution(params, pre, pre_adv, obs, self.first_order)
        old = (mean.detach(), std.detach())
        loss = self.surrogate(mean, std, post, post_adv, log_prob(*old, post.flat("actions")))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            new_params = meta_parameters(self.policy)
            mean, std = self.post_distribution(new_params, pre, pre_adv, obs, first_order=True)
            new_loss = self.surrogate(mean, std, post, post_adv, log_prob(*old, post.flat("actions")))
            kl = self.kl(old, mean, std, post)
        return {"surrogate_loss": new_loss.item(), "kl": kl.item(), "line_search_steps": 0.0}

    def _trpo(self, params, pre, pre_adv, post, post_adv) -> dict[str, float]:
        c = self.cfg
        names = list(params)
        obs, actions = post.flat("obs"), post.flat("actions")

        leaves = {n: params[n].detach().requires_grad_() for n in names}
        tensors = [leaves[n] for n in names]
        mean, std = self.post_distribution(leaves, pre, pre_adv, obs, self.first_order)
        old = (mean.detach(), std.detach())
        old_logp = log_prob(*old, actions)
        loss = self.surrogate(mean, std, post, post_adv, old_logp)
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, tensors, retain_graph=True)])

        # At theta the new policy equals the old one, so the KL's gradient with respect to
        # the outputs vanishes and its Hessian through the adaptation is exactly J^T M J
        # (J: Jacobian of the outputs w.r.t. theta, M: the Gaussian's Fisher metric on
        # mean and std). J v comes from differentiating the linear map u -> J^T u once
        # more, J^T w from the outputs' graph: two backward passes per product, no
        # third-order graph.
        mask = post.flat("mask")
        weight = (mask / mask.sum(-1, keepdim=True).clamp(min=1.0) / mask.shape[0]).unsqueeze(-1)
        metric = weight / old[1].pow(2)
        u_mean = torch.zeros_like(mean, requires_grad=True)
        u_std = torch.zeros_like(std, requires_grad=True)
        jt_u = torch.autograd.grad((mean, std), tensors, (u_mean, u_std), create_graph=True)

        def fvp(v: Tensor) -> Tensor:
            jv_mean, jv_std = torch.autograd.grad(jt_u, (u_mean, u_std), _split(v, tensors), retain_graph=True)
            w = (metric * jv_mean, 2.0 * metric * jv_std)
            jt_w = torch.autograd.grad((mean, std), tensors, w, retain_graph=True)
            return torch.cat([x.reshape(-1) for x in jt_w]) + c.cg_damping * v

        step = conjugate_gradient(fvp, -g, c.cg_iters)
        shs = 0.5 * (step @ fvp(step))
        full_step = step * math.sqrt(c.max_kl / max(shs.item(), 1e-12))
        theta_vec = torch.cat([t.detach().reshape(-1) for t in tensors])
        old_loss = loss.item()
        for i in range(c.ls_max_steps):
            candidate = theta_vec + (c.ls_backtrack_ratio**i) * full_step
            with torch.no_grad():
                # The adapted value is the same first- or second-order; only its gradient differs.
                mean, std = self.post_distribution(_unflat(candidate, leaves), pre, pre_adv, obs, True)
                new_loss = self.surrogate(mean, std, post, post_adv, old_logp).item()
                new_kl = self.kl(old, mean, std, post).item()
            if new_loss < old_loss and new_kl <= c.max_kl:
                with torch.no_grad():
                    vector_to_parameters(candidate, self.policy.parameters())
                return {"surrogate_loss": new_loss, "kl": new_kl, "line_search_steps": float(i + 1)}
        return {"surrogate_loss": old_loss, "kl": 0.0, "line_search_steps": float(c.ls_max_steps + 1)}


def _split(vec: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for t in like:
        out.append(vec[i : i + t.numel()].view_as(t))
        i += t.numel()
    return out


def _unflat(vec: Tensor, like: Params) -> Params:
    return dict(zip(like, _split(vec, list(like.values())), strict=True))
