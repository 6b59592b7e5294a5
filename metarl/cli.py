"""The `metarl` command: train, evaluate, bench, analyze, data.

Every user-fixable problem surfaces as a `UserError`, printed here as one line with exit
code 2; a traceback means a bug in metarl.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from metarl.errors import UserError


def _kind_module(kind: str):
    """The module that runs experiments of this config kind."""
    if kind == "classification":
        import classification.experiment as mod
    else:
        import metarl.rl as mod
    return mod


def cmd_train(args: argparse.Namespace) -> int:
    from metarl.config import dump, load_config
    from metarl.runs import RunDir, seed_everything
    from metarl.training import train

    if args.resume:
        if args.config or args.set or args.seed is not None:
            raise UserError("--resume takes only the run directory; its config.yaml is reused as written")
        run = RunDir.open(args.resume)
        config = run.config()
    else:
        if not args.config:
            raise UserError("train needs a CONFIG file (e.g. configs/rl/navigation2d_anil.yaml) or --resume DIR")
        overrides = list(args.set) + ([f"data.root={args.data_root}"] if args.data_root else [])
        config = load_config(args.config, overrides, args.seed)
        stem = Path(args.config).stem
        run = RunDir(args.out or f"runs/{stem}-s{config['seed']}-{time.strftime('%Y%m%d-%H%M%S')}")
    rng = seed_everything(config["seed"])
    # Building the experiment validates everything (env, spec, data) before anything is written.
    exp = _kind_module(config["kind"]).make_experiment(config, rng)
    state = run.load_checkpoint() if args.resume and run.has_checkpoint() else None
    if not args.resume:
        run = RunDir.create(run.path, config)
    print(f"run directory: {run.path}", file=sys.stderr)
    if not args.resume:
        print(dump(config), file=sys.stderr, end="")
    train(run, exp, rng, config["logging"], state=state, show_progress=not args.quiet)
    print(str(run.path))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from metarl.runs import RunDir

    run = RunDir.open(args.run)
    config = run.config()
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
    e.add_argument("--inner-steps", type=int, help="inner steps at test time")
    e.add_argument("--tasks", type=int, help="number of test tasks")
    e.add_argument("--seed", type=int, help="seed of the test tasks")
    e.add_argument("--checkpoint", help="a snapshot file instead of the latest checkpoint")
    e.add_argument("--data-root", help="classification data root (else the run's data.root, $METARL_DATA)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="benchmarks: meta-step (MAML vs ANIL), sampler (vs physics limit)")
    b.add_argument("what", choices=["meta-step", "sampler"])
    b.add_argument("--env", help="navigation2d | halfcheetah-dir | halfcheetah-vel")
    b.add_argument("--task", help="omniglot-20w1s | omniglot-5w1s | miniimagenet-5w5s | ...")
    b.add_argument("--repeats", type=int, default=5, help="timed repetitions per method (median reported)")
    b.add_argument("--threads", type=int, default=1, help="torch threads for the updates (sampling uses 1)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)
    pl = sub.add_parser("plot", help="PNG of pre/post-adaptation training curves of one or more runs")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.add_argument("--out", required=True, help="PNG file to write")
    pl.add_argument("--window", type=int, default=10, help="moving-average window (iterations)")
    pl.add_argument("--title")
    pl.set_defaults(func=cmd_plot)

    d = sub.add_parser("data", help="fetch data sets (needs network)")
    d.add_argument("action", choices=["download"])
    d.add_argument("dataset", choices=["omniglot"])
    d.add_argument("--data-root", help="where data sets live (else $METARL_DATA, ./data)")
    d.set_defaults(func=cmd_data)
    return p


def cmd_plot(args: argparse.Namespace) -> int:
    from metarl.plots import plot_runs

    print(plot_runs(args.runs, args.out, args.window, args.title))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from classification.download import download_omniglot

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


if __name__ == "__main__":
    sys.exit(main())
