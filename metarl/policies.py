"""Gaussian MLP policy whose parameters may carry a leading task axis.

Every linear layer is written as a broadcasting matmul, so the same module evaluates one
parameter set on (N, obs) inputs or T per-task parameter sets (weights (T, out, in)) on
(T, N, obs) inputs. With `torch.func.functional_call` that lets a whole meta-batch of
adapted policies run as a handful of batched ops instead of a Python loop over tasks.
`AnalyticMLP` writes out the same network's forward, tangent and adjoint passes by hand
for the learner's fast path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metarl.adaptation import Params
from metarl.errors import UserError

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def _linear(x: Tensor, layer: nn.Linear) -> Tensor:
    return x @ layer.weight.transpose(-1, -2) + layer.bias.unsqueeze(-2)


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian with an MLP mean and a state-independent log-std.

    Layers are `layer1..layerL` and `head` (the last linear layer of the mean network),
    the names `head` and `freeze:K` refer to. `adapt_log_std` puts the log-std into the
    head's adaptable group, so ANIL can adapt the exploration noise or not; every spec resolves
    through these groups, so `false` also keeps MAML's (`full`) inner step off the log-std.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_sizes: tuple[int, ...] | list[int] = (64, 64),
        activation: str = "tanh",
        init_std: float = 1.0,
        min_std: float = 1e-6,
        adapt_log_std: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UserError(f"policy.activation {activation!r}: choose one of {sorted(ACTIVATIONS)}")
        sizes = [obs_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.head = nn.Linear(sizes[-1], act_dim)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.activation = ACTIVATIONS[activation]
        self.min_log_std = math.log(min_std)
        self.adapt_log_std = adapt_log_std
        for layer in [*self.hidden, self.head]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def adaptation_layers(self) -> list[tuple[str, list[str]]]:
        layers = [(f"layer{i + 1}", [f"hidden.{i}.weight", f"hidden.{i}.bias"]) for i in range(len(self.hidden))]
        head = ["head.weight", "head.bias"] + (["log_std"] if self.adapt_log_std else [])
        return [*layers, ("head", head)]

    def forward(self, x: Tensor, stage: str = "full") -> Tensor | tuple[Tensor, Tensor] | dict[str, Tensor]:
        """`full`: obs -> (mean, std); `body`: obs -> last hidden features; `head`: features -> (mean, std);
        `layers`: obs -> every layer's output by name (for representation analysis)."""
        outputs = {}
        if stage != "head":
            for i, layer in enumerate(self.hidden):
                x = outputs[f"layer{i + 1}"] = self.activation(_linear(x, layer))
            if stage == "body":
                return x
        if stage == "layers":
            return {**outputs, "head": _linear(x, self.head)}
        mean = _linear(x, self.head)
        return mean, self._std(self.log_std, mean)

    def _std(self, log_std: Tensor, mean: Tensor) -> Tensor:
        """The clamped std, (A,) or per task (T, A), broadcast to the shape of `mean`."""
        return log_std.clamp(min=self.min_log_std).exp().unsqueeze(-2).expand_as(mean)

    @torch.no_grad()
    def act(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """`forward(x)` with `params` (shared, or per task with a leading axis) for the sampler.

        The sampler calls this once per environment step between MuJoCo steps, so it skips
        `functional_call`'s parameter swapping and fuses each bias into its matmul: about a
        third less time per step of 800 observations. Tests check it equals `distribution`.
        """

        def get(name: str) -> Tensor:  # names absent from `params` keep the module's own values
            return params[name] if name in params else self.get_parameter(name)

        def linear(h: Tensor, name: str) -> Tensor:
            w, b = get(f"{name}.weight"), get(f"{name}.bias")
            if w.dim() == 3:  # per task: h is (T, N, in)
                return torch.baddbmm(b.unsqueeze(-2), h, w.transpose(-1, -2))
            return torch.addmm(b, h.reshape(-1, h.shape[-1]), w.t()).view(*h.shape[:-1], -1)

        h = x
        for i in range(len(self.hidden)):
            h = self.activation(linear(h, f"hidden.{i}"))
        mean = linear(h, "head")
        return mean, self._std(get("log_std"), mean)


def distribution(policy: nn.Module, params: Params, x: Tensor, stage: str = "full") -> tuple[Tensor, Tensor]:
    """(mean, std) of the policy with `params` substituted, the module itself untouched."""
    return functional_call(policy, params, (x,), {"stage": stage})


def body_features(policy: nn.Module, params: Params, obs: Tensor) -> Tensor:
    return functional_call(policy, params, (obs,), {"stage": "body"})


def log_prob(mean: Tensor, std: Tensor, actions: Tensor) -> Tensor:
    """Log-density of a diagonal Gaussian, summed over action dimensions."""
    z = (actions - mean) / std
    return (-0.5 * z.pow(2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def kl_divergence(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = std_p.pow(2), std_q.pow(2)
    return (torch.log(std_q / std_p) + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)


# --- Hand-derived derivatives: the learner's fast path ------------------------------------
#
# Autograd's double backward through a batched MLP spends most of its time on generic
# bookkeeping (tanh_backward recomputed from z, gradient accumulation adds, expanded
# weight copies). For this one architecture the passes are short enough to write out.
# With z_i = a_i W_i^T + b_i, a_{i+1} = s(z_i) for hidden layers and mean = z_L:
#   tangent (J v):    dz_i = da_i W_i^T + a_i dW_i^T + db_i,  da_{i+1} = s'_i * dz_i
#   adjoint (J^T w):  gW_i = d_i^T a_i, gb_i = sum d_i,  e_i = d_i W_i,  d_{i-1} = e_i * s'_{i-1}
#   tangent of the adjoint (second order, for Hessian-vector products): differentiate the
#   adjoint along (dW, da, dd_L):  dgW_i = dd_i^T a_i + d_i^T da_i,
#   de_i = dd_i W_i + d_i dW_i,  dd_{i-1} = de_i * s'_{i-1} + e_i * s''_{i-1} * dz_{i-1},
#   where for tanh s' = 1 - a^2 and s'' dz = -2 a da (relu: s'' = 0).
# The log-std enters through clamp: its derivative is 1 above the clamp and 0 below.


@dataclass
class Trace:
    """Primal values of one forward pass, reused by every derivative pass at that point.

    `acts[0]` is the input and `acts[i + 1]` the output of hidden layer i; `slopes[i]`
    is the activation's derivative there, computed from that output.
    """

    acts: list[Tensor]
    slopes: list[Tensor]
    mean: Tensor
    log_std: Tensor  # clamped, (A,) or (T, A)
    gate: Tensor  # d clamp(log_std) / d log_std


def _t(w: Tensor) -> Tensor:
    return w.transpose(-1, -2)


def _rows(x: Tensor, w: Tensor) -> Tensor:
    """x @ w^T for (T, M, in) rows and a shared (out, in) or per-task (T, out, in) weight."""
    return x @ _t(w)


def per_row(b: Tensor) -> Tensor:
    """A bias or log-std, shared (n,) or per task (T, n), shaped to broadcast over rows."""
    return b.unsqueeze(-2) if b.dim() == 2 else b


def _weight_grad(d: Tensor, a: Tensor, per_task: bool, out: Tensor | None = None) -> Tensor:
    """sum over rows of d^T a: per task (T, out, in), or summed over tasks too (out, in); adds to `out`."""
    if per_task:
        return torch.bmm(_t(d), a) if out is None else out.baddbmm_(_t(d), a)
    d2, a2 = d.reshape(-1, d.shape[-1]), a.reshape(-1, a.shape[-1])
    return d2.t() @ a2 if out is None else out.addmm_(d2.t(), a2)


def _matmul_into(out: Tensor | None, x: Tensor, w: Tensor) -> Tensor:
    """out + x @ w for (T, M, k) rows and a shared (k, n) or per-task (T, k, n) matrix,
    accumulated in place (one pass over `out` instead of a product and an add)."""
    if out is None:
        return x @ w
    if w.dim() == 2:
        out.view(-1, out.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]), w)
        return out
    return out.baddbmm_(x, w)


def _bias_grad(d: Tensor, per_task: bool) -> Tensor:
    return d.sum(-2) if per_task else d.sum((0, 1))


class AnalyticMLP:
    """Forward, tangent and adjoint passes of a `GaussianMLPPolicy`, written out by hand.

    Parameters are a `Params` dict whose entries are shared or carry a leading task axis;
    inputs are (T, M, obs) rows. Tangents are dicts too, a missing name meaning zero.
    Gradients are requested through `wanted`: name -> True for per-task (T, ...) values,
    False for the sum over tasks. Verified against autograd (float64) in the test suite.
    """

    def __init__(self, policy: GaussianMLPPolicy) -> None:
        self.layers = [(f"hidden.{i}.weight", f"hidden.{i}.bias") for i in range(len(policy.hidden))]
        self.layers.append(("head.weight", "head.bias"))
        self.tanh = policy.activation is torch.tanh
        self.min_log_std = policy.min_log_std

    @staticmethod
    def supports(policy: nn.Module) -> bool:
        return (
            isinstance(policy, GaussianMLPPolicy)
            and type(policy).forward is GaussianMLPPolicy.forward
            and policy.activation in (torch.tanh, torch.relu)
        )

    def trace(self, params: Params, x: Tensor, slopes: bool = True) -> Trace:
        acts, slope = [x], []
        for w, b in self.layers[:-1]:
            a = _rows(acts[-1], params[w]).add_(per_row(params[b]))
            a = a.tanh_() if self.tanh else a.relu_()
            acts.append(a)
            if slopes:
                slope.append((a * a).neg_().add_(1.0) if self.tanh else (a > 0).to(a))
        w, b = self.layers[-1]
        mean = _rows(acts[-1], params[w]).add_(per_row(params[b]))
        log_std = params["log_std"]
        return Trace(acts, slope, mean, log_std.clamp(min=self.min_log_std), (log_std >= self.min_log_std).to(log_std))

    def std(self, tr: Trace) -> Tensor:
        return per_row(tr.log_std).exp().expand_as(tr.mean)

    def lowest_layer(self, wanted: dict[str, bool]) -> int:
        """Index of the first layer with a wanted parameter (len(layers) if none)."""
        return min((i for i, (w, b) in enumerate(self.layers) if w in wanted or b in wanted), default=len(self.layers))

    def jvp(self, params: Params, tr: Trace, t: Params) -> tuple[list[Tensor | None], Tensor | None, Tensor | None]:
        """Tangents of the hidden outputs, of the mean and of the clamped log-std along `t`."""
        dacts: list[Tensor | None] = [None]
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            dz = None if dacts[-1] is None else _rows(dacts[-1], params[w])
            if w in t:
                dz = _matmul_into(dz, tr.acts[i], _t(t[w]))
            fresh = dz is not None  # a new full-size tensor: later steps may work in place
            if b in t:
                dz = dz.add_(per_row(t[b])) if fresh else per_row(t[b])
            if i < last:
                dacts.append(None if dz is None else dz.mul_(tr.slopes[i]) if fresh else dz * tr.slopes[i])
        dmean = None if dz is None else dz.expand_as(tr.mean)
        dls = tr.gate * t["log_std"] if "log_std" in t else None
        return dacts, dmean, dls

    def vjp(
        self,
        params: Params,
        tr: Trace,
        g_mean: Tensor,
        g_log_std: Tensor | None,
        wanted: dict[str, bool],
        keep: bool = False,
    ) -> tuple[Params, list[Tensor | None], list[Tensor | None]]:
        """Gradients for the cotangents (g_mean (T, M, A), g_log_std (T, A) of the clamped log-std).

        With `keep`, also returns what `vjp_tangent` needs, down to the lowest wanted layer:
        the cotangents d_i of z_i, and the curvature terms e_i s''_i / s'_i of the hidden
        layers (-2 e_i a_{i+1} for tanh, none for relu).
        """
        n, lowest = len(self.layers), self.lowest_layer(wanted)
        grads: Params = {}
        deltas: list[Tensor | None] = [None] * n
        curv: list[Tensor | None] = [None] * n
        d = g_mean
        for i in range(n - 1, lowest - 1, -1):
            w, b = self.layers[i]
            if keep:
                deltas[i] = d
            if w in wanted:
                grads[w] = _weight_grad(d, tr.acts[i], wanted[w])
            if b in wanted:
                grads[b] = _bias_grad(d, wanted[b])
            if i > lowest:
                e = d @ params[w]
                if keep and self.tanh:
                    curv[i - 1] = (-2.0 * e).mul_(tr.acts[i])
                d = e.mul_(tr.slopes[i - 1])
        if "log_std" in wanted and g_log_std is not None:
            g = tr.gate * g_log_std
            grads["log_std"] = g if wanted["log_std"] else g.sum(0)
        return grads, deltas, curv

    def vjp_tangent(
        self,
        params: Params,
        tr: Trace,
        deltas: list[Tensor | None],
        curv: list[Tensor | None],
        t: Params,
        dacts: list[Tensor | None],
        dg_mean: Tensor,
        dg_log_std: Tensor | None,
        wanted: dict[str, bool],
    ) -> Params:
        """Tangent of `vjp`'s gradients when the parameters move along `t` (hidden outputs
        along `dacts`, from `jvp`) and the cotangents along (dg_mean, dg_log_std)."""
        n, lowest = len(self.layers), self.lowest_layer(wanted)
        grads: Params = {}
        dd = dg_mean
        for i in range(n - 1, lowest - 1, -1):
            w, b = self.layers[i]
            if w in wanted:
                g = _weight_grad(dd, tr.acts[i], wanted[w])
                grads[w] = g if dacts[i] is None else _weight_grad(deltas[i], dacts[i], wanted[w], out=g)
            if b in wanted:
                grads[b] = _bias_grad(dd, wanted[b])
            if i > lowest:
                de = dd @ params[w]
                if w in t:
                    de = _matmul_into(de, deltas[i], t[w])
                dd = de.mul_(tr.slopes[i - 1])
                if curv[i - 1] is not None and dacts[i] is not None:
                    dd.addcmul_(curv[i - 1], dacts[i])
        if "log_std" in wanted and dg_log_std is not None:
            g = tr.gate * dg_log_std
            grads["log_std"] = g if wanted["log_std"] else g.sum(0)
        return grads
