"""Run directories: resolved config, TensorBoard events, metrics file and checkpoints.

Layout of a run directory:
    config.yaml          the exact, complete config the run used
    metrics.jsonl        one JSON object per iteration, for scripts
    tb/                  TensorBoard events
    checkpoint.pt        the latest state (written atomically: temp file, then rename)
    snapshots/iter_N.pt  kept copies at `logging.snapshot_every`, for analysis over training

A checkpoint holds model, optimiser, iteration and every RNG state, so a run killed at
any moment resumes from its last checkpoint and continues as if never stopped.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.config import dump, merge, read_yaml
from metarl.errors import UserError

CHECKPOINT = "checkpoint.pt"


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temp file in `path`'s directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "numpy_generator": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy_global": np.random.get_state(),
    }


def restore_rng_state(state: dict[str, Any], rng: np.random.Generator) -> None:
    """Without every generator's state a run cannot continue exactly, so a damaged one is refused."""
    if not isinstance(state, dict):
        raise UserError("the checkpoint holds no RNG state, so it cannot resume exactly")
    try:
        rng.bit_generator.state = state["numpy_generator"]
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy_global"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        detail = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise UserError(f"the checkpoint's RNG state is missing or damaged ({detail}); it cannot resume") from None


def seed_everything(seed: int) -> np.random.Generator:
    """One seed fixes tasks, sampling noise and initialisation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


class RunDir:
    """A run's files; creating one for a new run refuses to overwrite another run."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any]) -> RunDir:
        run = cls(path)
        files = (CHECKPOINT, "config.yaml", "metrics.jsonl", "snapshots", "tb")
        held = [name for name in files if (run.path / name).exists()]
        if held:
            raise UserError(
                f"run directory {str(run.path)!r} already holds a run's files ({', '.join(held)}); "
                "use --resume or another --out"
            )
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(config)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if run.path.is_file():
            raise UserError(f"{str(run.path)!r} is a file; give its run directory")
        if not run.path.is_dir():
            raise UserError(f"run directory {str(run.path)!r} does not exist")
        if not (run.path / "config.yaml").is_file():
            raise UserError(f"{str(run.path)!r} is not a run directory (no config.yaml)")
        return run

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_bytes(self.path / "config.yaml", lambda f: f.write(dump(config).encode()))

    def remove_stale_temp_files(self) -> None:
        """Temp files of a write cut short by a kill; the file they were to replace is intact."""
        for tmp in [*self.path.glob(".*.tmp"), *self.path.glob("snapshots/.*.tmp")]:
            tmp.unlink(missing_ok=True)

    def config(self) -> dict[str, Any]:
        from metarl.config import DEFAULTS, _import_kind

        raw = read_yaml(self.path / "config.yaml")
        kind = raw.get("kind", "rl")
        _import_kind(kind)
        return merge(DEFAULTS[kind], raw)

    def save_checkpoint(self, state: dict[str, Any], snapshot: bool = False) -> None:
        # The snapshot first: a kill between the two writes then redoes this iteration on
        # resume and rewrites the snapshot, instead of leaving a permanent gap in the trend.
        if snapshot:
            atomic_write_bytes(self.snapshot_path(state["iteration"]), lambda f: torch.save(state, f))
        atomic_write_bytes(self.path / CHECKPOINT, lambda f: torch.save(state, f))

    def has_records(self) -> bool:
        """Whether training got past its first checkpoint here (a resume must not start over)."""
        metrics = self.path / "metrics.jsonl"
        later = set(self.snapshots()) - {self.snapshot_path(0)}
        return (metrics.is_file() and metrics.stat().st_size > 0) or bool(later)

    def snapshot_path(self, iteration: int) -> Path:
        return self.path / "snapshots" / f"iter_{iteration:06d}.pt"

    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_file()

    def load_checkpoint(self, path: str | Path | None = None) -> dict[str, Any]:
        if path is None:
            path = self.path / CHECKPOINT
            if not path.is_file():
                raise UserError(f"{str(self.path)!r} has no checkpoint ({CHECKPOINT}); train it first")
        path = Path(path)
        if not path.exists() and (self.path / path).exists():
            path = self.path / path  # a snapshot named relative to the run, e.g. snapshots/iter_000300.pt
        if path.is_dir():
            raise UserError(f"checkpoint {str(path)!r} is a directory; give a .pt file in it")
        if not path.is_file():
            raise UserError(f"checkpoint {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(f"checkpoint {str(path)!r} is corrupt or unreadable ({msg})") from None
        well_formed = (
            isinstance(state, dict)
            and type(state.get("iteration")) is int
            and state["iteration"] >= 0
            and isinstance(state.get("model"), dict)
        )
        if not well_formed:
            raise UserError(f"checkpoint {str(path)!r} is corrupt or not a metarl checkpoint")
        return state

    def snapshots(self) -> list[Path]:
        return sorted((self.path / "snapshots").glob("iter_*.pt"))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def truncate_metrics(self, iteration: int) -> None:
        """Drop rows logged after the checkpoint being resumed (they will be redone)."""
        if (self.path / "metrics.jsonl").exists():
            keep = [
                json.dumps(r) for r in self.metrics() if type(r.get("iteration")) is int and r["iteration"] < iteration
            ]
            atomic_write_bytes(self.path / "metrics.jsonl", lambda f: f.write("".join(x + "\n" for x in keep).encode()))

    def metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl; a line that is not a JSON object (cut short by a kill, or
        damaged) is skipped rather than stopping a plot or a resume."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        if not path.is_file():
            raise UserError(f"{str(path)!r} is not a file")
        rows = []
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows


def checkpoint_part(model: dict[str, Any], name: str) -> dict[str, Any]:
    """One part of a checkpoint's model state; absent when the checkpoint is another kind of run's."""
    part = model.get(name)
    if not isinstance(part, dict):
        raise UserError(f"the checkpoint holds no {name!r} state; is it another kind of run's checkpoint?")
    return part


def load_weights(target: Any, state: dict[str, Any]) -> None:
    """`target.load_state_dict(state)`, where a mismatch means config.yaml no longer describes
    the network the checkpoint holds (an edited config): a one-line error, not torch's traceback."""
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if not ln.startswith("Error(s) in loading")), type(e).__name__)
        raise UserError(
            f"the checkpoint does not fit the {type(target).__name__} that config.yaml describes "
            f"({detail.rstrip('.')}); was config.yaml edited after training?"
        ) from None
