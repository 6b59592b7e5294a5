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
tables = {str(f.parent.name): json.loads(f.read_text()) for f in files}

print("| analysis | steps | " + " | ".join(f"{m.upper()} per layer" for m in MEASURES) + " | return before → after |")
print("|---|---|" + "---|" * len(MEASURES) + "---|")
for name, r in tables.items():
    cells = [" / ".join(f"{row[m]:.3f}" for row in r["layers"].values()) for m in MEASURES]
    ret = f"{r['returns'][0]:.1f} → {r['returns'][-1]:.1f}" if "returns" in r else ""
    print(f"| {name} | {r.get('inner_steps', '')} | " + " | ".join(cells) + f" | {ret} |")

print()
for m in MEASURES:
    body = [row[m] for r in tables.values() for layer, row in r["layers"].items() if layer != args.head]
    head = [r["layers"][args.head][m] for r in tables.values()]
    lowest = sum(
        r["layers"][args.head][m] < min(row[m] for layer, row in r["layers"].items() if layer != args.head)
        for r in tables.values()
    )
    print(
        f"{m.upper()}: body {min(body):.3f}-{max(body):.3f}, head {min(head):.3f}-{max(head):.3f}; "
        f"head below every body layer in {lowest} of {len(tables)}"
    )
m = "relative_change"  # ||after - before|| / spread: blind to nothing, so the head's shift counts
body = [row[m] for r in tables.values() for layer, row in r["layers"].items() if layer != args.head]
head = [r["layers"][args.head][m] for r in tables.values()]
highest = sum(
    r["layers"][args.head][m] > max(row[m] for layer, row in r["layers"].items() if layer != args.head)
    for r in tables.values()
)
print(
    f"change: body {min(body):.3f}-{max(body):.3f}, head {min(head):.3f}-{max(head):.3f}; "
    f"head above every body layer in {highest} of {len(tables)}"
)
