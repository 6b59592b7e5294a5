"""Tables across runs and seeds: the numbers the README reports, from one command.

Each run is evaluated with the same options; runs are grouped by their config file's
method (everything in config.yaml but the seed), and each group reports mean +- std over
its seeds, plus the wall-clock time of training (sum of `iteration_s` in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from metarl.runs import RunDir

METHODS = {"full": "MAML", "head": "ANIL", "none": "no inner loop"}


def _group_key(config: dict[str, Any]) -> str:
    spec = config["adaptation"]["spec"]
    method = METHODS.get(spec, spec)
    if config["adaptation"]["first_order"] and spec == "full":
        method = "first-order MAML"
    if config["kind"] == "rl":
        return f"{config['env']['name']} {method}"
    task = config["task"]
    return f"{config['data']['dataset']} {task['ways']}w{task['shots']}s {method}"


def _mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def summarize(paths: list[str], evaluate_args: argparse.Namespace, kind_module) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        run = RunDir.open(path)
        config = run.config()
        state = run.load_checkpoint()
        result = kind_module(config["kind"]).evaluate_run(config, state, evaluate_args)
        result["run"] = str(run.path)
        result["seed"] = config["seed"]
        result["iteration"] = state["iteration"]
        result["train_seconds"] = sum(r.get("iteration_s", 0.0) for r in run.metrics())
        groups.setdefault(_group_key(config), []).append(result)
    return groups


def markdown(groups: dict[str, list[dict[str, Any]]]) -> str:
    rows = []
    for name, results in groups.items():
        first = results[0]
        seeds = ",".join(str(r["seed"]) for r in results)
        minutes = _mean_std([r["train_seconds"] / 60 for r in results])
        iters = ",".join(sorted({str(r["iteration"]) for r in results}))
        if "returns" in first:
            pre = _mean_std([r["returns"][0] for r in results])
            post = _mean_std([r["returns"][-1] for r in results])
            rows.append(f"| {name} | {first['adapt']} | {seeds} | {iters} | {pre} | {post} | {minutes} |")
        else:
            acc = _mean_std([100 * r["accuracy"] for r in results])
            rows.append(f"| {name} | {first['adapt']} | {seeds} | {iters} | {acc} | {minutes} |")
    if "returns" in next(iter(groups.values()))[0]:
        head = "| method | adapt at test | seeds | iterations | before adaptation | after adaptation | train minutes |"
        sep = "|---|---|---|---|---|---|---|"
    else:
        head = "| method | adapt at test | seeds | iterations | accuracy % | train minutes |"
        sep = "|---|---|---|---|---|---|"
    return "\n".join([head, sep, *rows])
