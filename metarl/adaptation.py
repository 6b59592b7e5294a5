"""Which parameters the inner loop adapts, and the functional inner update itself.

MAML, ANIL, "no inner loop" and layer freezing differ only in the set of parameters the
inner loop may change. One `AdaptationSpec` names that set for any model (policy or
classifier) that lists its layers in order through `adaptation_layers()`; the update
never touches the module in place, so the same module serves as meta-parameters and
as the template for every task's adapted copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from metarl.errors import UserError

Params = dict[str, Tensor]


class Adaptable(Protocol):
    def adaptation_layers(self) -> list[tuple[str, list[str]]]:
        """Ordered (layer name, adaptable parameter names); the last entry is the head."""


@dataclass(frozen=True)
class AdaptationSpec:
    """`full` (MAML), `head` (ANIL), `none`, `freeze:K`, or comma-separated parameter names."""

    text: str

    def __post_init__(self) -> None:
        kind = self.text.split(":")[0]
        if kind == "freeze":
            k = self.text[len("freeze:") :]
            if not k.isdigit():
                raise UserError(f"adaptation spec {self.text!r}: freeze needs a layer count, e.g. freeze:2")
        elif not self.text or self.text.strip() != self.text:
            raise UserError(f"adaptation spec {self.text!r} is empty or has stray spaces")

    @property
    def is_head_only(self) -> bool:
        return self.text == "head"

    def resolve(self, model: nn.Module) -> list[str]:
        """The parameter names the inner loop adapts, in the model's own order."""
        layers = model.adaptation_layers()
        if self.text == "full":
            return [n for _, names in layers for n in names]
        if self.text == "head":
            return list(layers[-1][1])
        if self.text == "none":
            return []
        if self.text.startswith("freeze:"):
            k = int(self.text[len("freeze:") :])
            if k > len(layers):
                raise UserError(
                    f"adaptation spec {self.text!r}: the model has only {len(layers)} layers "
                    f"({', '.join(name for name, _ in layers)})"
                )
            return [n for _, names in layers[k:] for n in names]
        names = self.text.split(",")
        if len(set(names)) < len(names):
            raise UserError(f"adaptation spec {self.text!r} names a parameter twice")
        known = dict(model.named_parameters())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UserError(f"adaptation spec names unknown parameters {unknown}; the model has {sorted(known)}")
        return names


def meta_parameters(model: nn.Module) -> Params:
    """The module's own parameters as a dict: the meta-initialisation, with grad attached."""
    return dict(model.named_parameters())


def step_sizes(lr: float | Sequence[float], steps: int) -> list[float]:
    """One step size per inner step: a scalar repeats, a list must have one entry per step."""
    if isinstance(lr, int | float):
        return [float(lr)] * steps
    lrs = [float(x) for x in lr]
    if len(lrs) != steps:
        raise UserError(f"{len(lrs)} inner step sizes given for {steps} inner steps")
    return lrs


def evaluation_step_sizes(config: dict, inner_steps: int) -> list[float]:
    """Test-time step sizes: evaluation.inner_lr (else adaptation.inner_lr), one per step.

    A list shorter than the number of test steps repeats its last entry, so Finn et al.'s
    schedule (0.1, then 0.05) is written [0.1, 0.05] for any number of steps.
    """
    lr = config["evaluation"]["inner_lr"]
    lr = config["adaptation"]["inner_lr"] if lr is None else lr
    lrs = step_sizes(lr, len(lr)) if isinstance(lr, list) else step_sizes(lr, inner_steps)
    return (lrs + lrs[-1:] * inner_steps)[:inner_steps]


def inner_update(
    params: Params,
    loss_fn: Callable[[Params], Tensor],
    adapted: Sequence[str],
    lrs: Sequence[float],
    first_order: bool = False,
    task_dim: int | None = None,
) -> Params:
    """Take `len(lrs)` gradient steps on `loss_fn`, changing only the names in `adapted`.

    Parameters outside `adapted` are passed through as the very same tensors, so they stay
    bit-identical and the backward pass of the inner gradient stops where they begin: for
    ANIL it never enters the body, which is where its speed comes from. With
    `first_order` the inner gradient is detached (no second-order terms). With
    `task_dim=T` the adapted parameters are first broadcast to a leading task axis of
    size T; `loss_fn` must then return the *sum* of independent per-task losses, so one
    backward pass yields every task's own gradient. The gradient is taken with
    `torch.func.grad`, so the update composes with outer autograd (the second-order
    meta-gradient) and with `torch.func.jvp`/`vjp` (TRPO's curvature products).
    """
    params = dict(params)
    if task_dim is not None:
        for name in adapted:
            p = params[name]
            params[name] = p.unsqueeze(0).expand(task_dim, *p.shape)
    if not adapted:
        return params
    for lr in lrs:
        fixed = {k: v for k, v in params.items() if k not in adapted}
        grads = torch.func.grad(lambda a, fixed=fixed: loss_fn({**fixed, **a}))({n: params[n] for n in adapted})
        for name in adapted:
            g = grads[name].detach() if first_order else grads[name]
            params[name] = params[name] - lr * g
    return params
