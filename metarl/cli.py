"""The `metarl` command: train, evaluate, bench, analyze, data.

Every user-fixable problem surfaces as a `UserError`, printed here as one line with exit
code 2; an operating-system error (a path that clashes, no permission, a full disk) is one line
with exit code 1; a traceback means a bug in metarl.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metarl.config import refuse_data_root
from metarl.errors import UserError


def _kind_module(kind: str):
    """The module that runs experiments of this config kind."""
    if kind == "classification":
        import classification.experiment as mod
    else:
        import metarl.rl as mod
    return mod


# What `train --resume DIR --set ...` may change: how long to train, how often to save and how many MuJoCo
# threads step the batch (each simulation is stepped alone, so the count does not change a bit), not the experiment.
RESUME_SETTABLE = ("training.iterations", "logging.checkpoint_every", "logging.snapshot_every", "env.settings.nthread")


def _at_least(low: int, seed: bool = False) -> Callable[[str], int]:
    """argparse type: an integer >= low (a seed also < 2**32, as config seeds), so a bad count is a usage
    error rather than a traceback later."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (seed and value >= 2**32):
            raise argparse.ArgumentTypeError(f"must be >= {low}{' and < 2**32' if seed else ''}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


COUNT, STEPS, SEED = _at_least(1), _at_least(0), _at_least(0, seed=True)


def cmd_train(args: argparse.Namespace) -> int:
    from metarl.config import DEFAULTS, deep_update, dump, load_config, merge, parse_overrides
    from metarl.runs import CHECKPOINT, RunDir, restore_rng_state, seed_everything
    from metarl.training import finite, train

    if args.resume:
        if args.config or args.seed is not None:
            raise UserError("--resume takes only the run directory; its config.yaml is reused as written")
        for item in args.set:
            if item.split("=", 1)[0] not in RESUME_SETTABLE:
                raise UserError(f"--resume can change only {', '.join(RESUME_SETTABLE)}; got --set {item!r}")
        run = RunDir.open(args.resume)
        config = run.config()
        if args.set:  # train longer / log differently; the run's config.yaml records the change
            config = merge(DEFAULTS[config["kind"]], deep_update(config, parse_overrides(args.set)))
        refuse_data_root(config, args.data_root)
    else:
        if not args.config:
            raise UserError("train needs a CONFIG file (e.g. configs/rl/navigation2d_anil.yaml) or --resume DIR")
        overrides = list(args.set) + ([f"data.root={args.data_root}"] if args.data_root else [])
        config = load_config(args.config, overrides, args.seed)
        stem = Path(args.config).stem
        run = RunDir(args.out or f"runs/{stem}-s{config['seed']}-{time.strftime('%Y%m%d-%H%M%S')}")
    rng = seed_everything(config["seed"])
    # Building the experiment validates everything (env, spec, data) before anything is written.
    # On resume, --data-root says where the data lies on this machine; config.yaml keeps the run's own.
    where = deep_update(config, {"data": {"root": args.data_root}}) if args.resume and args.data_root else config
    exp = _kind_module(config["kind"]).make_experiment(where, rng)
    state = run.load_checkpoint() if args.resume and run.has_checkpoint() else None
    if args.resume and state is None and run.has_records():
        raise UserError(f"{str(run.path)!r} has training records but no {CHECKPOINT}; restore it or train elsewhere")
    if state is not None:  # before anything is written: a checkpoint the run cannot continue from is refused
        restore_rng_state(state.get("rng"), rng)  # refuses a missing or damaged RNG state
        if not finite(state["model"]):
            raise UserError(
                f"the checkpoint of {str(run.path)!r} holds non-finite weights (a diverged run); "
                "copy an earlier snapshots/iter_N.pt over it to go back"
            )
        if state["iteration"] > config["training"]["iterations"]:
            at = state["iteration"]
            raise UserError(f"{str(run.path)!r} is at iteration {at}; training.iterations cannot be less")
        exp.load_state(state["model"])  # refuses a checkpoint that no longer fits config.yaml
    if not args.resume:
        run = RunDir.create(run.path, config)
    elif args.set:
        run.write_config(config)
    print(f"run directory: {run.path}", file=sys.stderr)
    if state is not None and state["iteration"] == config["training"]["iterations"]:
        print(f"already at iteration {state['iteration']} of {state['iteration']}; nothing to train", file=sys.stderr)
        print(str(run.path))
        return 0
    if not args.resume:
        print(dump(config), file=sys.stderr, end="")
    train(run, exp, rng, config["logging"], state=state, show_progress=not args.quiet)
    print(str(run.path))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metarl.runs import RunDir

    run = RunDir.open(args.run)
    config = run.config()
    refuse_data_root(config, args.data_root)
    state = run.load_checkpoint(args.checkpoint)
    result = _kind_module(config["kind"]).evaluate_run(config, state, args)
    result["run"] = str(run.path)
    result["iteration"] = state["iteration"]
    if args.json:
        print(json.dumps(result))
    else:
        print(format_result(result))
    return 0


def format_result(result: dict[str, Any]) -> str:
    head = f"{result['run']}  iteration {result['iteration']}  adapt={result['adapt']}  tasks={result['tasks']}"
    if "returns" in result:
        rows = [f"{'inner steps':>11}  {'return':>10}  {'95% CI':>8}"]
        for k, (r, c) in enumerate(zip(result["returns"], result["ci95"], strict=True)):
            rows.append(f"{k:>11}  {r:>10.2f}  {c:>8.2f}")
        return "\n".join([head, *rows])
    return f"{head}\naccuracy {100 * result['accuracy']:.2f}% +- {100 * result['ci95']:.2f}% (95% CI)"


def cmd_bench(args: argparse.Namespace) -> int:
    from metarl import bench

    result = bench.run(args)
    print(json.dumps(result) if args.json else bench.format_result(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metarl", description="Meta-RL and few-shot learning: MAML, ANIL, NIL.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train from a YAML config, or resume a run")
    t.add_argument("config", nargs="?", help="YAML config, e.g. configs/rl/navigation2d_anil.yaml")
    t.add_argument("--out", help="run directory (default runs/<config>-s<seed>-<time>)")
    t.add_argument("--seed", type=int, help="override the config's seed")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    t.add_argument("--data-root", help="classification data root (else data.root, $METARL_DATA, ./data)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run on held-out tasks")
    e.add_argument("run", help="run directory")
    e.add_argument("--adapt", help="full | head | none | freeze:K | nil (classification) | param names")
    e.add_argument("--inner-steps", type=STEPS, help="inner steps at test time")
    e.add_argument("--tasks", type=COUNT, help="number of test tasks")
    e.add_argument("--seed", type=SEED, help="seed of the test tasks")
    e.add_argument("--checkpoint", help="a snapshot file instead of the latest checkpoint")
    e.add_argument("--data-root", help="classification data root (else the run's data.root, $METARL_DATA)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="benchmarks: meta-step (MAML vs ANIL), sampler (vs physics limit)")
    b.add_argument("what", choices=["meta-step", "sampler"])
    b.add_argument("--env", help="navigation2d | halfcheetah-dir | halfcheetah-vel")
    b.add_argument("--task", help="omniglot-20w1s | omniglot-5w1s | miniimagenet-5w5s | ...")
    b.add_argument("--repeats", type=COUNT, default=5, help="timed repetitions per method (median reported)")
    b.add_argument("--threads", type=COUNT, help="meta-step: torch threads for updates (default 1; sampling uses 1)")
    b.add_argument("--tasks", type=COUNT, help="sampler: tasks in the meta-batch (default 40, the reference)")
    b.add_argument("--per-task", type=COUNT, help="sampler: trajectories per task (default 20, the reference)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    a = sub.add_parser("analyze", help="CCA/CKA of each layer before vs after adaptation, or between two models")
    a.add_argument("runs", nargs="+", metavar="RUN", help="one run (before vs after adaptation) or two (A vs B)")
    a.add_argument("--tasks", type=COUNT, default=8, help="tasks to average over")
    a.add_argument("--seed", type=SEED, default=2000, help="seed of the analysis tasks")
    a.add_argument("--adapt", help="adaptation spec for the inner loop (default: the run's own)")
    a.add_argument("--checkpoints", action="store_true", help="repeat over the run's saved snapshots")
    a.add_argument("--inner-steps", type=int, help="test-time inner steps (default: evaluation.inner_steps)")
    a.add_argument("--conv", choices=["positions", "mean"], default="positions", help="conv maps as datapoints")
    a.add_argument("--data-root", help="classification data root")
    a.add_argument("--out", help="directory for the JSON and PNG (default RUN/analysis)")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=cmd_analyze)

    sm = sub.add_parser("summarize", help="evaluate many runs; markdown table of mean +- std over seeds")
    sm.add_argument("runs", nargs="+", metavar="RUN")
    sm.add_argument(
        "--adapt", action="append", help="as for evaluate; repeat for several (default: each run's own spec)"
    )
    sm.add_argument("--inner-steps", type=STEPS)
    sm.add_argument("--tasks", type=COUNT)
    sm.add_argument("--seed", type=SEED)
    sm.add_argument("--data-root")
    sm.add_argument("--json", action="store_true", help="print every run's result as JSON")
    sm.set_defaults(func=cmd_summarize)

    pl = sub.add_parser("plot", help="PNG of pre/post-adaptation training curves of one or more runs")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.add_argument("--out", required=True, help="PNG file to write")
    pl.add_argument("--window", type=COUNT, default=10, help="moving-average window (iterations)")
    pl.add_argument("--title")
    pl.add_argument("--ylim", type=float, nargs=2, metavar=("LOW", "HIGH"), help="y-axis range")
    pl.set_defaults(func=cmd_plot)

    d = sub.add_parser("data", help="fetch data sets (needs network)")
    d.add_argument("action", choices=["download"])
    d.add_argument("dataset", choices=["omniglot"])
    d.add_argument("--data-root", help="where data sets live (else $METARL_DATA, ./data)")
    d.set_defaults(func=cmd_data)
    return p


def cmd_analyze(args: argparse.Namespace) -> int:
    from metarl.analysis import report
    from metarl.runs import RunDir

    if len(args.runs) > 2 or (args.checkpoints and len(args.runs) > 1):
        raise UserError("analyze takes one run (optionally --checkpoints) or two runs to compare")
    runs = [RunDir.open(r) for r in args.runs]
    configs = [r.config() for r in runs]
    if args.data_root:
        for c in configs:
            refuse_data_root(c, args.data_root)
            c["data"]["root"] = args.data_root
    classification = configs[0]["kind"] == "classification"
    if args.inner_steps is not None:
        if args.inner_steps < 1:
            raise UserError("--inner-steps takes a count >= 1: the analysis compares before and after adaptation")
        for c in configs:
            c["evaluation"]["inner_steps"] = args.inner_steps
    mod = _kind_module(configs[0]["kind"])
    out = Path(args.out) if args.out else runs[0].path / "analysis"
    state = runs[0].load_checkpoint()
    probe = mod.analysis_probe(configs[0], state, args.tasks, args.seed)
    name = runs[0].path.name
    steps = {"inner_steps": configs[0]["evaluation"]["inner_steps"]}
    if len(runs) == 2:
        if configs[1]["kind"] != configs[0]["kind"]:
            raise UserError("the two runs must be of the same kind (both RL or both classification)")
        pre_a, _ = mod.capture(configs[0], state, probe, args.adapt, adapt=False)
        pre_b, _ = mod.capture(configs[1], runs[1].load_checkpoint(), probe, args.adapt, adapt=False)
        table = report.compare(pre_a, pre_b, args.conv)
        result = {"runs": args.runs, "layers": table, "body": report.body_average(table), "tasks": args.tasks}
        result["json"] = str(report.write_json(result, out / f"vs_{runs[1].path.name}.json"))
    elif args.checkpoints:
        settings = {"run": args.runs[0], "tasks": args.tasks, "seed": args.seed, "adapt": args.adapt, "conv": args.conv}
        settings.update(steps)
        tables = _earlier_over_training(out / "over_training.json", settings)
        reused = len(tables)
        for snap in [*runs[0].snapshots(), None]:
            s = runs[0].load_checkpoint(snap)
            if s["iteration"] not in tables:
                table = report.compare(*mod.capture(configs[0], s, probe, args.adapt), args.conv)
                if tables and _table_shape(table) != _table_shape(next(iter(tables.values()))):
                    raise UserError(f"{out / 'over_training.json'} holds other layers than this run's; move it away")
                tables[s["iteration"]] = table
        tables = dict(sorted(tables.items()))
        result = {**settings, "over_training": tables, "reused": reused}
        result["png"] = str(report.line_chart(tables, out / "over_training.png", f"{name}: before vs after adaptation"))
        result["json"] = str(report.write_json(result, out / "over_training.json"))
    else:
        table = report.compare(*mod.capture(configs[0], state, probe, args.adapt), args.conv)
        result = {"run": args.runs[0], "iteration": state["iteration"], "layers": table, "tasks": args.tasks, **steps}
        if not classification:  # mean return of the probe's episodes before and after each step: did it adapt?
            result["returns"] = probe["returns"]
        title = f"{name} (iteration {state['iteration']}): before vs after {steps['inner_steps']} inner step(s)"
        result["png"] = str(report.bar_chart(table, out / "adaptation_similarity.png", title))
        result["json"] = str(report.write_json(result, out / "adaptation_similarity.json"))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_analysis(result))
    return 0


def _earlier_over_training(path: Path, settings: dict[str, Any]) -> dict[int, Any]:
    """Rows of an earlier `--checkpoints` analysis made with the same settings, by iteration.

    Training on and re-analysing then costs only the new snapshots, and the trend keeps the
    iterations whose snapshot files have since been pruned or lost.
    """
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        rows = {int(it): row for it, row in old["over_training"].items()}
    except (ValueError, KeyError, AttributeError, TypeError):
        rows = None
    shapes = {_table_shape(row) for row in rows.values()} if rows is not None else {None}
    if None in shapes or len(shapes) > 1:
        raise UserError(f"{path} is not an over-training analysis (or is damaged); move it away to start afresh")
    return rows if all(old.get(k) == v for k, v in settings.items()) else {}


def _table_shape(table: Any) -> tuple[str, ...] | None:
    """The layer names of one similarity table; None if it is not one (a damaged file's row).
    Measures may differ between rows: an earlier version's rows lack the newer ones."""
    if not isinstance(table, dict) or not table:
        return None
    for measures in table.values():
        if not isinstance(measures, dict) or "cca" not in measures:
            return None
        if not all(x is None or type(x) in (int, float) for x in measures.values()):  # None: NaN in JSON
            return None
    return tuple(table)


def format_analysis(result: dict[str, Any]) -> str:
    from metarl.analysis.report import CCA_THRESHOLD, LABELS, SVCCA_KEEP

    lines = []
    tables = result.get("over_training") or {result.get("iteration", "final"): result["layers"]}
    for it, table in tables.items():
        lines.append(
            f"iteration {it}" if "over_training" in result else " vs ".join(result.get("runs", [result.get("run")]))
        )
        lines.append(f"  {'layer':<10} " + " ".join(f"{v:>6}" for v in LABELS.values()) + f" {'change':>7}")
        for layer, row in table.items():
            cells = [_cell(row.get(m), 6) for m in LABELS] + [_cell(row.get("relative_change"), 7)]
            line = f"  {layer:<10} " + " ".join(cells)
            if row.get("undefined_tasks"):
                line += f"  ({row['undefined_tasks']} task(s) left out: the layer's output is constant there)"
            lines.append(line)
    if "returns" in result:
        returns = ", ".join(f"{r:.1f}" for r in result["returns"])
        lines.append(f"  mean return before adaptation and after each step: {returns}")
    if "body" in result:
        lines.append("  body average: " + "  ".join(f"{LABELS[m]} {_cell(v, 0)}" for m, v in result["body"].items()))
    lines.append(
        f"  CCA: mean of the leading correlations making up {CCA_THRESHOLD:.0%} of their sum"
        f" (SVCCA reference); CCAall: all; SVCCA: that CCA of the directions holding {SVCCA_KEEP:.0%} of the variance"
    )
    if result.get("reused"):
        lines.append(f"  {result['reused']} snapshot(s) taken from the earlier over_training.json (same settings)")
    lines += [f"wrote {result[k]}" for k in ("png", "json") if k in result]
    return "\n".join(lines)


def _cell(value: float | None, width: int) -> str:
    """A similarity for the text table: `n/a` where it is undefined (NaN, or null read back from JSON)."""
    return f"{value:{width}.3f}" if value is not None and math.isfinite(value) else f"{'n/a':>{width}}"


def cmd_summarize(args: argparse.Namespace) -> int:
    from metarl.summary import markdown, summarize

    groups = summarize(args.runs, args, _kind_module)
    print(json.dumps(groups) if args.json else markdown(groups))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from metarl.plots import plot_runs

    if Path(args.out).suffix.lower() != ".png":
        raise UserError(f"--out {args.out!r}: name the PNG file to write, e.g. curves.png")
    if args.ylim and not (math.isfinite(args.ylim[0]) and math.isfinite(args.ylim[1]) and args.ylim[0] < args.ylim[1]):
        raise UserError(f"--ylim {args.ylim[0]} {args.ylim[1]}: give two finite numbers, LOW < HIGH")
    print(plot_runs(args.runs, args.out, args.window, args.title, args.ylim))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import logging

    from classification.download import download_omniglot

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # each file's SHA-256, to pin it

    for path in download_omniglot(args.data_root):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"metarl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metarl: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a path that clashes with a file or directory, no permission, disk full
        print(f"metarl: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
