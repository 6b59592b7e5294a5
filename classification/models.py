"""conv4 backbones of Finn et al. (2017), evaluated for a whole meta-batch of tasks at once.

Inputs are (B, C, H, W) images of one task, or (T, B, C, H, W) for T tasks; any parameter may
carry a leading task axis (the inner loop's adapted copies) or not (shared meta-parameters).
Inside the body the T tasks live side by side on the channel axis, (B, T*C, H, W), so a
per-task convolution is one grouped convolution (groups=T) and batch norm over that tensor
computes each task's own statistics: no Python loop over tasks and no vmap, so the module
also runs under plain autograd with its buffers updated in place (running statistics).
Measured on CPU (torch 2.13, oneDNN): the grouped convolution costs the same as one plain
convolution over all T*B images; a Python loop over tasks was 1.3-2.5x slower per layer, and
torch.func.vmap over tasks, im2col + batched matmul, and channels-last were no faster for a
whole second-order MAML iteration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metarl.errors import UserError

BACKBONES = {
    # name: (default filters, conv stride, 2x2 max-pool after each block, features = mean over space)
    "conv4-omniglot": (64, 2, False, True),
    "conv4-miniimagenet": (32, 1, True, False),
}


class ShiftBatchNorm(nn.Module):
    """Batch norm with a learned shift and no scale, as in Finn's code (TF `batch_norm` defaults).

    `mode="batch"` always normalises with the current batch's statistics (transductive, also at
    test time). `mode="running"` does so in training mode and uses running averages in eval
    mode; the averages are updated only while `tracking` is on (see `tracking_stats`), which the
    experiment turns on for outer-level forward passes, never inside the inner loop's transforms.
    """

    def __init__(self, channels: int, mode: str = "batch", eps: float = 1e-3, momentum: float = 0.1) -> None:
        super().__init__()
        if mode not in ("batch", "running"):
            raise UserError(f"model.batch_norm {mode!r}: choose batch or running")
        self.mode, self.eps, self.momentum, self.tracking = mode, eps, momentum, False
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, h: Tensor, tasks: int) -> Tensor:
        """`h`: (B, T*C, H, W) with T = `tasks`; statistics are per task and channel."""
        shift = self.bias.expand(tasks, -1).flatten()
        if self.mode == "batch" or self.training:
            if self.tracking and self.mode == "running":
                self._track(h, tasks)
            return F.batch_norm(h, None, None, None, shift, training=True, eps=self.eps)
        mean, var = self.running_mean.repeat(tasks), self.running_var.repeat(tasks)
        return F.batch_norm(h, mean, var, None, shift, training=False, eps=self.eps)

    @torch.no_grad()
    def _track(self, h: Tensor, tasks: int) -> None:
        d = h.detach().transpose(0, 1).reshape(tasks, -1, h.shape[0], h[0, 0].numel())
        self.running_mean.lerp_(d.mean((2, 3)).mean(0), self.momentum)
        self.running_var.lerp_(d.flatten(2).var(2).mean(0), self.momentum)


def _conv(h: Tensor, conv: nn.Conv2d, tasks: int) -> Tensor:
    """Convolve (B, T*C, H, W) with shared (O, C, k, k) or per-task (T, O, C, k, k) weights."""
    w, b = conv.weight, conv.bias
    if w.ndim == 4 and tasks == 1:
        return F.conv2d(h, w, b, conv.stride, conv.padding)
    w, b = w.expand(tasks, *w.shape[-4:]), b.expand(tasks, -1)
    return F.conv2d(h, w.flatten(0, 1), b.flatten(), conv.stride, conv.padding, groups=tasks)


class Conv4(nn.Module):
    """4 x [conv3x3 + shift-only batch norm + ReLU (+ 2x2 max-pool)] -> features -> linear head.

    Layers are `conv1`..`conv4` and `head`; `adaptation_layers()` lists each conv's weight and
    bias and the head's. The batch norms' shifts belong to no group: they are meta-learned in
    the outer loop but never adapted in the inner loop (Finn et al.; the ANIL paper).
    """

    def __init__(
        self,
        ways: int,
        in_channels: int = 1,
        image_size: int = 28,
        backbone: str = "conv4-omniglot",
        filters: int | None = None,
        batch_norm: str = "batch",
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise UserError(f"model.backbone {backbone!r}: choose one of {sorted(BACKBONES)}")
        default_filters, stride, self.pool, self.mean_features = BACKBONES[backbone]
        filters = filters or default_filters
        size, channels = image_size, in_channels
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv2d(channels, filters, 3, stride=stride, padding=1))
            setattr(self, f"norm{i}", ShiftBatchNorm(filters, batch_norm))
            size = (size - 1) // stride + 1
            size = size // 2 if self.pool else size
            channels = filters
        if size < 1:
            raise UserError(f"{backbone} needs larger images than {image_size}x{image_size}")
        self.feature_dim = filters if self.mean_features else filters * size * size
        self.head = nn.Linear(self.feature_dim, ways)
        # Finn et al.: Xavier conv weights, zero biases, standard-normal head weights.
        for i in range(1, 5):
            nn.init.xavier_uniform_(getattr(self, f"conv{i}").weight)
            nn.init.zeros_(getattr(self, f"conv{i}").bias)
        nn.init.normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def adaptation_layers(self) -> list[tuple[str, list[str]]]:
        convs = [(f"conv{i}", [f"conv{i}.weight", f"conv{i}.bias"]) for i in range(1, 5)]
        return [*convs, ("head", ["head.weight", "head.bias"])]

    def forward(self, x: Tensor, stage: str = "full") -> Tensor | dict[str, Tensor]:
        """`full`: images -> logits; `body`: images -> penultimate features; `head`: features -> logits;
        `layers`: images -> every layer's output by name (conv maps and logits, for analysis).

        Shapes: (B, C, H, W) -> (B, F) -> (B, N), or with a leading task axis T throughout.
        """
        if stage == "layers":
            maps: dict[str, Tensor] = {}
            features = self.features(x, maps)
            return {**maps, "head": self(features, "head")}
        if stage != "head":
            x = self.features(x)
            if stage == "body":
                return x
        return x @ self.head.weight.transpose(-1, -2) + self.head.bias.unsqueeze(-2)

    def features(self, x: Tensor, maps: dict[str, Tensor] | None = None) -> Tensor:
        """Penultimate features, (B, F) or (T, B, F); `maps` collects each conv block's output."""
        batched = x.ndim == 5
        tasks, b = (x.shape[0], x.shape[1]) if batched else (1, x.shape[0])
        h = x.transpose(0, 1).flatten(1, 2) if batched else x
        for i in range(1, 5):
            h = _conv(h, getattr(self, f"conv{i}"), tasks)
            h = getattr(self, f"norm{i}")(h, tasks)
            # max-pool before ReLU: the same function (ReLU is monotonic), on a 4x smaller tensor.
            h = F.relu(F.max_pool2d(h, 2) if self.pool else h)
            if maps is not None:
                m = h.unflatten(1, (tasks, -1)).transpose(0, 1)  # (T, B, C, H, W)
                maps[f"conv{i}"] = m if batched else m.squeeze(0)
        f = h.mean((2, 3)) if self.mean_features else h
        f = f.reshape(b, tasks, -1).transpose(0, 1)
        return f if batched else f.squeeze(0)

    @contextmanager
    def tracking_stats(self) -> Iterator[None]:
        """Update running batch-norm statistics during the forward passes inside this block."""
        norms = [m for m in self.modules() if isinstance(m, ShiftBatchNorm)]
        for m in norms:
            m.tracking = True
        try:
            yield
        finally:
            for m in norms:
                m.tracking = False
