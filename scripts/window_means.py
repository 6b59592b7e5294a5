#!/usr/bin/env python
"""Training curves as numbers: the mean of a metrics.jsonl column over windows of iterations.

The README quotes these (e.g. post-adaptation training return over iterations 250-299) to
compare runs at the same point of training; windows are [start, start + width).

Usage: .venv/bin/python scripts/window_means.py RUN... [--key post_return] [--width 50]
"""

import argparse
import json
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("runs", nargs="+", type=Path)
parser.add_argument("--key", default="post_return")
parser.add_argument("--width", type=int, default=50)
args = parser.parse_args()

rows = {}
for run in args.runs:
    by_iteration = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if isinstance(record.get(args.key), int | float):  # null: a non-finite value that was logged
            by_iteration[record["iteration"]] = record[args.key]  # a resumed iteration counts once
    rows[run.name] = by_iteration
if not any(rows.values()):
    raise SystemExit("window_means.py: no metrics rows in any of these runs")
last = max(max(r) for r in rows.values() if r)
starts = range(0, last + 1, args.width)
print(f"{args.key}, mean over iterations [start, start + {args.width}); '-' where a run has none")
print(f"{'run':<28}" + "".join(f"{s:>8}" for s in starts))
for name, by_iteration in rows.items():
    cells = []
    for s in starts:
        values = [v for i, v in by_iteration.items() if s <= i < s + args.width]
        cells.append(f"{sum(values) / len(values):8.1f}" if values else f"{'-':>8}")
    print(f"{name:<28}" + "".join(cells))
