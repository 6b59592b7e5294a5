"""Tables across runs and seeds: the numbers the README reports, from one command.

Each run is evaluated with the same options, once per `--adapt` spec given (so one table
can set head-only against full adaptation, or a freezing ladder, side by side). Runs are
grouped by method and test-time spec (runs of one method whose configs differ beyond seed and
budget form separate groups, named after their first run); each group reports mean +- std over its seeds, the
mean of the seeds' own 95% intervals over test tasks, and the wall-clock time of training
(sum of `iteration_s` in metrics.jsonl).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from typing import Any

from metarl.config import refuse_data_root
from metarl.errors import UserError
from metarl.runs import RunDir

METHODS = {"full": "MAML", "head": "ANIL", "none": "no inner loop"}


def _group_key(config: dict[str, Any]) -> str:
    spec = config["adaptation"]["spec"]
    method = METHODS.get(spec, spec)
    if config["adaptation"]["first_order"] and spec == "full":
        method = "first-order MAML"
    regime = config["training"].get("regime", "meta")
    if regime != "meta" or (config["kind"] == "classification" and spec == "none"):
        method = {"meta": "multitask", "multiclass": "multiclass", "nil": "NIL training"}[regime]
    if config["kind"] == "rl":
        return f"{config['env']['name']} {method}"
    task = config["task"]
    return f"{config['data']['dataset']} {task['ways']}w{task['shots']}s {method}"


# settings that do not change what a run learns: left out when telling seeds of one experiment from
# different experiments (runs resumed for longer, or with other thread counts, are still seeds of one)
_NOT_THE_EXPERIMENT = [
    ("seed",),
    ("logging",),
    ("evaluation",),
    ("training", "iterations"),
    ("training", "torch_threads"),
    ("env", "settings", "nthread"),
    ("data", "root"),
]


def _experiment(config: dict[str, Any]) -> str:
    """The config without seed, budget and machine settings, as canonical JSON."""
    c = copy.deepcopy(config)
    for path in _NOT_THE_EXPERIMENT:
        d = c
        for key in path[:-1]:
            d = d.get(key, {})
        if isinstance(d, dict):
            d.pop(path[-1], None)
    return json.dumps(c, sort_keys=True, default=str)


def _mean_std(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def summarize(paths: list[str], evaluate_args: argparse.Namespace, kind_module) -> dict[str, Any]:
    """Groups keyed by 'method | test-time spec', each a list of per-run evaluation results."""
    groups: dict[str, list[dict[str, Any]]] = {}
    adapts = evaluate_args.adapt if isinstance(evaluate_args.adapt, list) else [evaluate_args.adapt]
    runs = [RunDir.open(path) for path in paths]
    seen = [str(run.path.resolve()) for run in runs]
    if len(set(seen)) < len(seen):
        twice = next(path for path, r in zip(paths, seen, strict=True) if seen.count(r) > 1)
        raise UserError(f"run {twice!r} is given twice; each run counts once, as one seed")
    # runs of one method whose configs differ beyond seed and budget are different experiments, not seeds
    configs = [run.config() for run in runs]
    keys = [(_group_key(c), _experiment(c)) for c in configs]
    first: dict[str, dict[str, str]] = {}  # method -> experiment -> name of its first run
    for run, (method, experiment) in zip(runs, keys, strict=True):
        first.setdefault(method, {}).setdefault(experiment, run.path.name)
    for config in configs:
        refuse_data_root(config, getattr(evaluate_args, "data_root", None))
    for run, config, (method, experiment) in zip(runs, configs, keys, strict=True):
        state = run.load_checkpoint()
        rows = run.metrics()
        seconds = [r.get("iteration_s") for r in rows]  # a damaged row's value counts as none
        train_seconds = sum(x for x in seconds if type(x) in (int, float) and math.isfinite(x)) if rows else None
        label = f"{method} ({first[method][experiment]})" if len(first[method]) > 1 else method
        for adapt in adapts:
            args = argparse.Namespace(**{**vars(evaluate_args), "adapt": adapt})
            result = kind_module(config["kind"]).evaluate_run(config, state, args)
            result.update(run=str(run.path), seed=config["seed"], iteration=state["iteration"])
            result["train_seconds"] = train_seconds
            groups.setdefault(f"{label} | {result['adapt']}", []).append(result)
    return groups


def markdown(groups: dict[str, list[dict[str, Any]]]) -> str:
    """One table for RL runs (returns) and one for classification runs (accuracy), as present."""
    rl = {k: v for k, v in groups.items() if "returns" in v[0]}
    cls = {k: v for k, v in groups.items() if "returns" not in v[0]}
    return "\n\n".join(_table(g, returns) for g, returns in ((rl, True), (cls, False)) if g)


def _table(groups: dict[str, list[dict[str, Any]]], returns: bool) -> str:
    rows = []
    for name, results in groups.items():
        method, adapt = name.split(" | ")
        seeds = ",".join(str(r["seed"]) for r in results)
        timed = [r["train_seconds"] / 60 for r in results if r["train_seconds"] is not None]
        minutes = _mean_std(timed) if timed else "-"  # no metrics.jsonl: no training time to report
        iters = ",".join(sorted({str(r["iteration"]) for r in results}))
        if returns:
            per_seed = [r["returns"][-1] for r in results]
            ci = statistics.mean(r["ci95"][-1] for r in results)
            cells = [_mean_std([r["returns"][0] for r in results]), _mean_std(per_seed)]
        else:
            ci = 100 * statistics.mean(r["ci95"] for r in results)
            per_seed = [100 * r["accuracy"] for r in results]
            cells = [_mean_std(per_seed)]
        each = ", ".join(f"{x:.1f}" for x in per_seed)
        rows.append("| " + " | ".join([method, adapt, seeds, iters, *cells, each, f"{ci:.1f}", minutes]) + " |")
    score = ["before adaptation", "after adaptation"] if returns else ["accuracy %"]
    cols = ["method", "adapt at test", "seeds", "iterations", *score, "per seed", "95% CI (per seed)", "train minutes"]
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *rows])
