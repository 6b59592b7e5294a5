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
from torch.nn.utils import parameters_to_vector, vector_to_parameters

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
        with torch.enable_grad():
            return inner_update(
                params,
                lambda p: self.pg_loss(p, x, ep, adv, stage).sum(),
                self.adapted_names,
                self.inner_lrs if lrs is None else lrs,
                self.first_order if first_order is None else first_order,
                task_dim=None if batched else ep.num_tasks,
            )

    def objective(
        self,
        params: Params,
        pre: Episodes,
        pre_adv: Tensor,
        post: Episodes,
        post_adv: Tensor,
        old: tuple[Tensor, Tensor, Tensor],
        first_order: bool,
    ) -> tuple[Tensor, Tensor]:
        """(surrogate loss, KL(old || new)) of the post-adaptation policy, averaged over tasks."""
        old_mean, old_std, old_logp = old
        adapted = self.adapt(params, pre, pre_adv, first_order)
        mean, std = distribution(self.policy, adapted, post.flat("obs"))
        mask = post.flat("mask")
        ratio = torch.exp(log_prob(mean, std, post.flat("actions")) - old_logp)
        loss = -task_mean(ratio * post_adv, mask).mean()
        kl = task_mean(kl_divergence(old_mean, old_std, mean, std), mask).mean()
        return loss, kl

    def step(self, pre: Episodes, post: Episodes) -> dict[str, float]:
        """One outer update from pre- and post-adaptation episodes of the same tasks."""
        pre_adv, post_adv = self.advantages(pre), self.advantages(post)
        params = meta_parameters(self.policy)
        with torch.no_grad():
            adapted = self.adapt(params, pre, pre_adv, first_order=True)
            mean, std = distribution(self.policy, adapted, post.flat("obs"))
            old = (mean.detach(), std.detach(), log_prob(mean, std, post.flat("actions")).detach())
        if self.cfg.outer == "trpo":
            return self._trpo(params, pre, pre_adv, post, post_adv, old)
        return self._vpg(params, pre, pre_adv, post, post_adv, old)

    def _vpg(self, params, pre, pre_adv, post, post_adv, old) -> dict[str, float]:
        loss, _ = self.objective(params, pre, pre_adv, post, post_adv, old, self.first_order)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        new_loss, kl = self.objective(meta_parameters(self.policy), pre, pre_adv, post, post_adv, old, True)
        return {"surrogate_loss": new_loss.item(), "kl": kl.item(), "line_search_steps": 0.0}

    def _trpo(self, params, pre, pre_adv, post, post_adv, old) -> dict[str, float]:
        c = self.cfg
        names = list(params)
        tensors = [params[n] for n in names]
        loss, kl = self.objective(params, pre, pre_adv, post, post_adv, old, self.first_order)
        g = parameters_to_vector(torch.autograd.grad(loss, tensors, retain_graph=True))
        grad_kl = parameters_to_vector(torch.autograd.grad(kl, tensors, create_graph=True))

        def hvp(v: Tensor) -> Tensor:
            hv = torch.autograd.grad(grad_kl @ v, tensors, retain_graph=True)
            return parameters_to_vector(hv) + c.cg_damping * v

        step = conjugate_gradient(hvp, -g, c.cg_iters)
        shs = 0.5 * (step @ hvp(step))
        full_step = step * math.sqrt(c.max_kl / max(shs.item(), 1e-12))
        theta = parameters_to_vector(tensors).detach()
        old_loss = loss.item()
        for i in range(c.ls_max_steps):
            candidate = theta + (c.ls_backtrack_ratio**i) * full_step
            trial = self._unflatten(candidate, names, tensors)
            # The adapted value is the same first- or second-order; only its gradient differs.
            new_loss, new_kl = self.objective(trial, pre, pre_adv, post, post_adv, old, first_order=True)
            if new_loss.item() < old_loss and new_kl.item() <= c.max_kl:
                with torch.no_grad():
                    vector_to_parameters(candidate, self.policy.parameters())
                return {"surrogate_loss": new_loss.item(), "kl": new_kl.item(), "line_search_steps": float(i + 1)}
        return {"surrogate_loss": old_loss, "kl": 0.0, "line_search_steps": float(c.ls_max_steps + 1)}

    @staticmethod
    def _unflatten(vec: Tensor, names: list[str], like: list[Tensor]) -> Params:
        out, i = {}, 0
        for name, t in zip(names, like, strict=True):
            out[name] = vec[i : i + t.numel()].view_as(t).detach().requires_grad_(t.requires_grad)
            i += t.numel()
        return out
