#!/usr/bin/env python
"""Which layer changes most in the inner loop, over many `metarl analyze` results.

Reads adaptation_similarity.json files (one policy or model each) and prints one row per file
(CCA and CKA per layer, the return before and after adaptation where recorded), then, per
measure, the range over all files of the body layers and of the head, and in how many files
the head is below every body layer (for the relative change, which grows with change: above).
The README's RL similarity summary comes from this.

Usage: .venv/bin/python scripts/layer_ranges.py DIR_OR_JSON... [--head head]
"""

import argparse
import json
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("results", nargs="+", type=Path, help="analysis folders or their adaptation_similarity.json")
parser.add_argument("--head", default="head", help="the layer that is not body")
args = parser.parse_args()

MEASURES = ("cca", "cka")
files = [p / "adaptation_similarity.json" if p.is_dir() else p for p in args.results]
# named by folder, or by the run's folder for `metarl analyze RUN`'s default RUN/analysis (full path if still ambiguous)
names = [f.parent.parent.name if f.parent.name == "analysis" else f.parent.name for f in files]
names = [n if names.count(n) == 1 else str(f.parent) for n, f in zip(names, files, strict=True)]
if len(set(names)) < len(names):
    raise SystemExit("layer_ranges.py: a result is given twice")
tables = {n: json.loads(f.read_text()) for n, f in zip(names, files, strict=True)}


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # null: a layer constant on every task (metarl analyze)


def defined(values: list) -> list[float]:
    return [v for v in values if v is not None]


print("| analysis | steps | " + " | ".join(f"{m.upper()} per layer" for m in MEASURES) + " | return before → after |")
print("|---|---|" + "---|" * len(MEASURES) + "---|")
for name, r in tables.items():
    cells = [" / ".join(fmt(row[m]) for row in r["layers"].values()) for m in MEASURES]
    ret = f"{r['returns'][0]:.1f} → {r['returns'][-1]:.1f}" if "returns" in r else ""
    print(f"| {name} | {r.get('inner_steps', '')} | " + " | ".join(cells) + f" | {ret} |")

print()


def summary(m: str, label: str, below: bool) -> None:
    """Ranges of body and head, and in how many results the head is below (above) every body layer."""
    body = defined([row[m] for r in tables.values() for layer, row in r["layers"].items() if layer != args.head])
    head = defined([r["layers"][args.head][m] for r in tables.values()])
    count = 0
    for r in tables.values():
        h = r["layers"][args.head][m]
        b = defined([row[m] for layer, row in r["layers"].items() if layer != args.head])
        if h is not None and b:
            count += h < min(b) if below else h > max(b)
    print(
        f"{label}: body {min(body):.3f}-{max(body):.3f}, head {min(head):.3f}-{max(head):.3f}; "
        f"head {'below' if below else 'above'} every body layer in {count} of {len(tables)}"
    )


for m in MEASURES:
    summary(m, m.upper(), below=True)
summary("relative_change", "change", below=False)  # ||after - before|| / spread: sees shifts, so the head's counts
