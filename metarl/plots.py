"""Training curves from runs' metrics files, as PNG (for the README and papers)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from metarl.errors import UserError  # noqa: E402
from metarl.runs import RunDir  # noqa: E402

CURVES = {
    "rl": [("pre_return", "pre-adaptation"), ("post_return", "post-adaptation")],
    "classification": [("pre_accuracy", "pre-adaptation"), ("post_accuracy", "post-adaptation")],
}


def smooth(values: list[float | None], window: int) -> list[float]:
    """Trailing moving average over `window` points; missing or non-finite values are skipped, so
    one bad iteration leaves a gap of at most `window` points instead of poisoning the curve after it."""
    out = []
    for i in range(len(values)):
        kept = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None and math.isfinite(v)]
        out.append(sum(kept) / len(kept) if kept else math.nan)
    return out


def plot_runs(
    runs: list[str],
    out: str | Path,
    window: int = 10,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One panel: pre- and post-adaptation curves of every run (moving average over `window`);
    `ylim` zooms in past the first iterations' much lower returns."""
    many = len(runs) > 4  # then the legend goes beside the panel, where it hides no curve
    fig, ax = plt.subplots(figsize=(10, 4.2) if many else (7, 4.2), dpi=120)
    opened = [RunDir.open(path) for path in runs]
    kinds = [run.config()["kind"] for run in opened]
    if len(set(kinds)) > 1:
        raise UserError("plot RL runs (returns) and classification runs (accuracy) separately: one y-axis each")
    ylabel = "query accuracy" if kinds[0] == "classification" else "average return"
    for n, (path, run, kind) in enumerate(zip(runs, opened, kinds, strict=True)):
        rows = run.metrics()
        if not rows:
            raise UserError(f"run {path!r} has no metrics yet")
        if not any(key in r for r in rows for key, _ in CURVES[kind]):
            raise UserError(f"run {path!r} has no {' or '.join(k for k, _ in CURVES[kind])} in its metrics to plot")
        for i, (key, label) in enumerate(CURVES[kind]):
            kept = [r for r in rows if key in r and type(r.get("iteration")) is int]
            if not kept:
                continue
            values = [r[key] if type(r[key]) in (int, float) else None for r in kept]
            xs, ys = [r["iteration"] for r in kept], smooth(values, window)
            style = {"color": f"C{n}", "linestyle": "--" if i == 0 else "-", "alpha": 0.6 if i == 0 else 1.0}
            ax.plot(xs, ys, label=f"{run.path.name}: {label}", **style)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if many else {}))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
