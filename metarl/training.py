"""The training loop shared by RL and classification: logging, checkpoints, resume.

An experiment only says how to run one meta-iteration and what its state is; this module
owns everything a run directory promises (TensorBoard tags, metrics file, atomic
checkpoints with RNG states, snapshots, progress bar).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarl.errors import UserError
from metarl.runs import CHECKPOINT, RunDir, rng_state


class Experiment(Protocol):
    iterations: int
    # metric key -> TensorBoard tag, and progress-bar label -> metric key
    tensorboard_tags: dict[str, str]
    progress: dict[str, str]

    def iteration(self, it: int) -> dict[str, float]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: dict[str, Any]) -> None: ...


def resident_mb() -> float:
    """The process's resident memory now (Linux; nan elsewhere): a long run's memory is watched per iteration."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def finite(state: Any) -> bool:
    """Whether every floating-point tensor of a (nested) state is finite: a diverged run must not
    overwrite its last good checkpoint with NaN weights."""
    if isinstance(state, torch.Tensor):
        return not state.is_floating_point() or bool(torch.isfinite(state).all())
    if isinstance(state, dict):
        return all(finite(v) for v in state.values())
    if isinstance(state, list | tuple):
        return all(finite(v) for v in state)
    return True


def train(
    run: RunDir,
    exp: Experiment,
    rng: np.random.Generator,
    logging: dict[str, Any],
    state: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> list[dict[str, float]]:
    """Run `exp` until its last iteration, continuing from checkpoint `state` if given (whose model the
    caller has loaded into `exp` and whose RNG state into `rng`, so that a misfit is refused before any write)."""
    start = 0
    run.remove_stale_temp_files()
    if state is not None:
        start = state["iteration"]
    else:
        # The initial state: a run killed before its first periodic checkpoint resumes from here, and
        # (as a snapshot) analyses over training start from iteration 0.
        state0 = {"iteration": 0, "model": exp.state(), "rng": rng_state(rng)}
        run.save_checkpoint(state0, snapshot=logging["snapshot_every"] > 0)
    run.truncate_metrics(start)
    # on resume, drop TensorBoard's points from `start` on (also at 0: a run killed before its first checkpoint)
    writer = SummaryWriter(str(run.path / "tb"), purge_step=start if state is not None else None)
    rows = []
    bar = tqdm(
        range(start, exp.iterations),
        initial=start,
        total=exp.iterations,
        disable=not show_progress,
        dynamic_ncols=True,
        desc=run.path.name,
    )
    saved = start  # the checkpoint's iteration
    try:
        for it in bar:
            t0 = time.perf_counter()
            metrics = exp.iteration(it)
            metrics["iteration_s"] = time.perf_counter() - t0
            if not finite(exp.state()):
                raise UserError(
                    f"training diverged at iteration {it}: the weights are no longer finite; {run.path / CHECKPOINT} "
                    f"is left as it was (iteration {saved}), and resuming repeats this: change a step size or the seed"
                )
            metrics["rss_mb"] = resident_mb()
            for key, tag in exp.tensorboard_tags.items():
                if key in metrics and math.isfinite(metrics[key]):
                    writer.add_scalar(tag, metrics[key], it)
            run.append_metrics({"iteration": it, **metrics})
            rows.append(metrics)
            bar.set_postfix({label: f"{metrics[key]:.3g}" for label, key in exp.progress.items()})
            done = it + 1
            if done % logging["checkpoint_every"] == 0 or done == exp.iterations:
                writer.flush()
                snapshot = logging["snapshot_every"] > 0 and done % logging["snapshot_every"] == 0
                state = {"iteration": done, "model": exp.state(), "rng": rng_state(rng)}
                run.save_checkpoint(state, snapshot=snapshot)
                saved = done
    finally:
        writer.close()
    return rows
