"""Gaussian MLP policy whose parameters may carry a leading task axis.

Every linear layer is written as a broadcasting matmul, so the same module evaluates one
parameter set on (N, obs) inputs or T per-task parameter sets (weights (T, out, in)) on
(T, N, obs) inputs. With `torch.func.functional_call` that lets a whole meta-batch of
adapted policies run as a handful of batched ops instead of a Python loop over tasks.
"""

from __future__ import annotations

import math

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
    head's adaptable group, so ANIL can adapt the exploration noise or not.
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

    def forward(self, x: Tensor, stage: str = "full") -> Tensor | tuple[Tensor, Tensor]:
        """`full`: obs -> (mean, std); `body`: obs -> last hidden features; `head`: features -> (mean, std)."""
        if stage != "head":
            for layer in self.hidden:
                x = self.activation(_linear(x, layer))
            if stage == "body":
                return x
        mean = _linear(x, self.head)
        std = self.log_std.clamp(min=self.min_log_std).exp().unsqueeze(-2)
        return mean, std.expand_as(mean)


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
