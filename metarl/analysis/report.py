"""Per-layer similarity of representations, aggregated over tasks, with charts.

A capture is a dict layer name -> list (one entry per task) of activations, either
(examples, features) or conv maps (examples, C, H, W). The same examples must appear
in both captures being compared (the same query set or states, in the same order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from metarl.analysis.similarity import conv_to_datapoints, is_constant, linear_cka, mean_cca, pwcca, svcca

Capture = dict[str, list[np.ndarray]]
# "cca" is the summary of the SVCCA authors' reference code, which the paper's figures come from:
# the mean of the leading correlations making up 98% of their sum. "cca_all" is the plain mean,
# which every near-zero correlation of a signal-free direction pulls down. SVCCA (Raghu et al.
# 2017) first drops the low-variance directions of each side (keeping 99% of the variance), whose
# correlations are mostly noise. PWCCA (Morcos et al. 2018) instead weighs each correlation by how
# much of the representation its direction carries. Our "svcca" summarises the kept directions'
# correlations with the same 98% rule as "cca" (the plain mean of Raghu et al. 2017 reads a little lower).
CCA_THRESHOLD = 0.98
SVCCA_KEEP = 0.99
MEASURES = {
    "cca": lambda x, y: mean_cca(x, y, threshold=CCA_THRESHOLD),
    "cca_all": mean_cca,
    "svcca": lambda x, y: svcca(x, y, keep=SVCCA_KEEP, threshold=CCA_THRESHOLD),
    "pwcca": pwcca,
    "cka": linear_cka,
}
LABELS = {"cca": "CCA", "cca_all": "CCAall", "svcca": "SVCCA", "pwcca": "PWCCA", "cka": "CKA"}


def relative_change(x: np.ndarray, y: np.ndarray) -> float:
    """||y - x|| / ||x - mean(x)||: how far adaptation moved a layer's outputs, in units of their spread.

    CCA and CKA are blind to translations and (CCA) to invertible linear maps, so a head
    whose outputs shift as a whole (a policy steering elsewhere) still scores 1; this
    measure sees that shift.
    """
    return float(np.linalg.norm(y - x) / max(np.linalg.norm(x - x.mean(0)), 1e-12))


def compare(a: Capture, b: Capture, conv_mode: str = "positions") -> dict[str, dict[str, float]]:
    """Mean (and std over tasks) CCA, CKA and relative change between two captures, layer by layer.

    A layer whose output is the same for every example of a task (every unit of a ReLU layer dead
    on those states) has no defined similarity there: that task is left out of the layer's means
    and counted in `undefined_tasks` (absent when 0), and a layer undefined on every task reads NaN (null in JSON),
    so one dead layer does not void the analysis of the others.
    """
    table: dict[str, dict[str, float]] = {}
    measures = {**MEASURES, "relative_change": relative_change}
    for layer in a:
        per_task: dict[str, list[float]] = {m: [] for m in measures}
        undefined = 0
        for x, y in zip(a[layer], b[layer], strict=True):
            x, y = conv_to_datapoints(x, conv_mode), conv_to_datapoints(y, conv_mode)
            if is_constant(x) or is_constant(y):
                undefined += 1
                continue
            for name, fn in measures.items():
                per_task[name].append(fn(x, y))
        row: dict[str, float] = {}
        for name, values in per_task.items():
            row[name] = float(np.mean(values)) if values else math.nan
            row[f"{name}_std"] = float(np.std(values)) if values else math.nan
        if undefined:
            row["undefined_tasks"] = undefined
        table[layer] = row
    return table


def body_average(table: dict[str, dict[str, float]], head: str = "head") -> dict[str, float]:
    """Average over every layer but the head (the paper's Table 3 convention), skipping undefined layers."""
    body = [row for layer, row in table.items() if layer != head]
    out = {}
    for m in MEASURES:
        values = [row[m] for row in body if math.isfinite(row[m])]
        out[m] = float(np.mean(values)) if values else math.nan
    return out


def bar_chart(table: dict[str, dict[str, float]], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(table)
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(layers) + 2), 3.6), dpi=120)
    width = 0.8 / len(MEASURES)
    for i, m in enumerate(MEASURES):
        ax.bar(
            x + (i - (len(MEASURES) - 1) / 2) * width,
            [table[layer][m] for layer in layers],
            width,
            label=LABELS[m],
            yerr=[table[layer][f"{m}_std"] for layer in layers],
            capsize=2,
        )
    ax.set_xticks(x, layers)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("similarity before vs after adaptation")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def line_chart(tables: dict[int, dict[str, dict[str, float]]], out: Path, title: str, measure: str = "cca") -> Path:
    """Similarity before vs after adaptation of each layer, over training checkpoints (Figure 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = sorted(tables)
    layers = list(tables[iterations[0]])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for layer in layers:
        ax.plot(iterations, [tables[i][layer][measure] for i in iterations], marker="o", label=layer)
    ax.set_xlabel("training iteration of the checkpoint")
    ax.set_ylabel(f"{measure.upper()} before vs after adaptation")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def write_json(obj: Any, out: Path) -> Path:
    """Atomically: `analyze --checkpoints` reads its earlier output back, so a kill must not truncate it."""
    from metarl.runs import atomic_write_bytes

    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False)
    atomic_write_bytes(out, lambda f: f.write(text.encode()))
    return out


def _jsonable(x: Any) -> Any:
    """numpy scalars as Python numbers, NaN and infinities as null: strict JSON that any reader takes
    (json.dumps would write NaN, which jq and JavaScript refuse)."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
