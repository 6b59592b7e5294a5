#!/usr/bin/env python
"""Per-task breakdown of an RL evaluation: mean return before and after each inner step, by task group.

Reads `metarl evaluate RUN --json` from stdin. Tasks with a few distinct values (HalfCheetah
directions) are grouped by value; continuous ones (goal velocities) fall into equal-count bins;
vector tasks (2D-Navigation goals) are grouped by their distance from the origin.

Usage: .venv/bin/metarl evaluate RUN --tasks 40 --json | .venv/bin/python scripts/by_task.py [BINS]
"""

import json
import sys

import numpy as np

bins = int(sys.argv[1]) if len(sys.argv) > 1 else 4
result = json.load(sys.stdin)
per_task = result["per_task"]
key = next(iter(per_task[0]["task"]))


def task_value(field: float | list) -> float:
    """Scalars as they are (a direction's sign matters), vectors by their length (goal distance)."""
    return float(np.linalg.norm(field)) if isinstance(field, list) else float(field)


values = np.array([task_value(t["task"][key]) for t in per_task])
returns = np.array([t["returns"] for t in per_task])  # (tasks, steps + 1)
if len(set(values.tolist())) <= bins:
    groups = [(f"{key} = {v:g}", values == v) for v in sorted(set(values.tolist()))]
else:
    edges = np.quantile(values, np.linspace(0, 1, bins + 1))
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
    groups = [(f"{key} in [{edges[b]:.2f}, {edges[b + 1]:.2f}]", index == b) for b in range(bins)]
steps = returns.shape[1]
print(f"{result['run']} (adapt={result['adapt']}): mean return before adaptation and after each step")
print(f"{'group':<28} {'tasks':>5}  " + "  ".join(f"{'step ' + str(k):>8}" for k in range(steps)) + f"  {'worst':>8}")
for name, mask in groups:
    row = returns[mask]
    print(f"{name:<28} {mask.sum():>5}  " + "  ".join(f"{x:8.1f}" for x in row.mean(0)) + f"  {row[:, -1].min():8.1f}")
