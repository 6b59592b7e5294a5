"""The command line: train/evaluate/resume end to end, and bad input as one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from metarl.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "env.horizon=10",
    "training.meta_batch_size=3",
    "training.trajectories_per_task=2",
    "policy.hidden_sizes=[8]",
    "evaluation.trajectories_per_task=2",
]


def train(tmp_path, name="run", iterations=3, extra=(), config="configs/rl/navigation2d_anil.yaml"):
    out = tmp_path / name
    args = ["train", str(ROOT / config), "--out", str(out), "--quiet", "--set", f"training.iterations={iterations}"]
    for s in [*TINY, *extra]:
        args += ["--set", s]
    assert main(args) == 0
    return out


def policy_state(run):
    return torch.load(run / "checkpoint.pt", weights_only=False)["model"]["policy"]


def test_train_writes_a_complete_run_directory(tmp_path):
    run = train(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["training"]["iterations"] == 3 and config["adaptation"]["spec"] == "head"
    assert config["training"]["cg_iters"] == 10  # defaults are written out too
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for key in ("pre_return", "post_return", "kl", "surrogate_loss", "line_search_steps", "transitions_per_s"):
        assert all(key in r for r in rows)
    assert all(r["kl"] <= 0.01 for r in rows)
    assert all(10 < r["rss_mb"] < 1e5 for r in rows)  # resident memory, watched per iteration
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "return/pre_adaptation",
        "return/post_adaptation",
        "train/kl",
        "train/surrogate_loss",
        "train/line_search_steps",
        "perf/transitions_per_s",
        "perf/iteration_s",
        "perf/rss_mb",
    } <= tags
    assert len(events.Scalars("return/post_adaptation")) == 3


def test_same_seed_same_run_and_seed_changes_it(tmp_path):
    a, b = train(tmp_path, "a"), train(tmp_path, "b")
    c = train(tmp_path, "c", extra=["seed=1"])
    sa, sb, sc = policy_state(a), policy_state(b), policy_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("config", ["configs/rl/navigation2d_maml.yaml", "configs/rl/navigation2d_anil.yaml"])
def test_evaluate_json_and_adaptation_modes(tmp_path, capsys, config):
    run = train(tmp_path, iterations=1, config=config)
    capsys.readouterr()
    for adapt in ("full", "head", "none", "freeze:1"):
        assert main(["evaluate", str(run), "--json", "--tasks", "4", "--inner-steps", "2", "--adapt", adapt]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["adapt"] == adapt and result["tasks"] == 4
        assert len(result["returns"]) == 3 and len(result["ci95"]) == 3
        assert all(c >= 0 for c in result["ci95"])
        per_task = result["per_task"]
        assert len(per_task) == 4 and all(set(t["task"]) == {"goal"} and len(t["returns"]) == 3 for t in per_task)
        for k in range(3):  # the headline figure is the mean of the per-task figures
            assert result["returns"][k] == pytest.approx(sum(t["returns"][k] for t in per_task) / 4)
        if adapt == "none":
            assert len(set(result["returns"])) == 3  # fresh trajectories each step, same policy
    assert main(["evaluate", str(run), "--tasks", "4"]) == 0
    assert "inner steps" in capsys.readouterr().out


def test_evaluate_is_deterministic(tmp_path, capsys):
    run = train(tmp_path, iterations=1)
    capsys.readouterr()
    outs = []
    for _ in range(2):
        main(["evaluate", str(run), "--json", "--tasks", "3"])
        outs.append(json.loads(capsys.readouterr().out)["returns"])
    assert outs[0] == outs[1]


def test_resume_continues_exactly(tmp_path):
    full = train(tmp_path, "full", iterations=4)
    part = train(tmp_path, "part", iterations=4)
    # pretend the run stopped after iteration 2: rewind to a copy of its checkpoint at 2
    part2 = train(tmp_path, "part2", iterations=2)
    # ... and is then trained longer than first planned: the run's config.yaml records it
    assert main(["train", "--resume", str(part2), "--quiet", "--set", "training.iterations=4"]) == 0
    assert yaml.safe_load((part2 / "config.yaml").read_text())["training"]["iterations"] == 4
    sf, sp, s2 = policy_state(full), policy_state(part), policy_state(part2)
    assert all(torch.equal(sf[k], s2[k]) and torch.equal(sf[k], sp[k]) for k in sf)
    rows = [json.loads(x) for x in (part2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]


def test_resume_may_change_the_mujoco_thread_count(tmp_path):
    """A run started beside another on one core continues on two once it is alone, and trains the same bits."""
    hc = dict(config="configs/rl/halfcheetah_dir_anil.yaml", extra=["env.settings.nthread=1"])
    full = train(tmp_path, "full", iterations=3, **hc)
    part = train(tmp_path, "part", iterations=2, **hc)
    resume = ["train", "--resume", str(part), "--quiet", "--set", "training.iterations=3"]
    assert main([*resume, "--set", "env.settings.nthread=2"]) == 0
    assert yaml.safe_load((part / "config.yaml").read_text())["env"]["settings"]["nthread"] == 2
    sf, sp = policy_state(full), policy_state(part)
    assert all(torch.equal(sf[k], sp[k]) for k in sf)


def test_resume_from_iteration_0_replaces_the_tensorboard_points(tmp_path):
    """Killed before its first periodic checkpoint, a run resumes from its initial state at 0; TensorBoard must
    then show each iteration once, as metrics.jsonl does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(tmp_path, iterations=2, extra=["logging.checkpoint_every=100", "logging.snapshot_every=100"])
    shutil.copy(run / "snapshots" / "iter_000000.pt", run / "checkpoint.pt")  # as if killed during iteration 1
    assert main(["train", "--resume", str(run), "--quiet", "--set", "training.iterations=3"]) == 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("return/pre_adaptation")] == [0, 1, 2]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]


def test_resume_refuses_changes_to_the_experiment(tmp_path, capsys):
    run = train(tmp_path, "run", iterations=1)
    capsys.readouterr()
    before = (run / "config.yaml").read_text()
    one_line_error(capsys, ["train", "--resume", str(run), "--set", "adaptation.inner_lr=0.5"], "can change only")
    one_line_error(capsys, ["train", "--resume", str(run), "--set", "training.iterations=x"], "training.iterations")
    one_line_error(capsys, ["train", "--resume", str(run), "--data-root", str(tmp_path)], "classification runs")
    one_line_error(capsys, ["train", "--resume", str(run), "--set", "training.iterations=0"], ">= 1")
    assert (run / "config.yaml").read_text() == before
    longer = train(tmp_path, "longer", iterations=2)
    capsys.readouterr()
    one_line_error(capsys, ["train", "--resume", str(longer), "--set", "training.iterations=1"], "at iteration 2")
    one_line_error(capsys, ["evaluate", str(run), "--adapt", ""], "empty")  # not the run's own spec
    one_line_error(capsys, ["evaluate", str(run), "--adapt", "head.bias,head.bias"], "twice")
    with pytest.raises(SystemExit) as e:  # a bad count on the command line is a usage error
        main(["evaluate", str(run), "--tasks", "0"])
    assert e.value.code == 2 and "--tasks: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # test seeds take the range of config seeds
        main(["evaluate", str(run), "--seed", str(2**32)])
    assert e.value.code == 2 and "--seed: must be >= 0 and < 2**32" in capsys.readouterr().err


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "metarl.cli", *args], cwd=ROOT, env=env, **kw)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    iterations = 30
    reference = train(tmp_path, "reference", iterations=iterations)
    out = tmp_path / "killed"
    sets = [x for s in [*TINY, f"training.iterations={iterations}"] for x in ("--set", s)]
    proc = _cli(
        "train",
        str(ROOT / "configs/rl/navigation2d_anil.yaml"),
        "--out",
        str(out),
        "--quiet",
        *sets,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        rows = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
        if len(rows) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(out / "checkpoint.pt", weights_only=False)["iteration"]
    assert 1 <= done < iterations, "the run should have been killed mid-way"
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    ref, got = policy_state(reference), policy_state(out)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == list(range(iterations))
    assert not list(out.glob(".*.tmp"))


def one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("metarl: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_config_errors_are_one_line_exit_2(tmp_path, capsys):
    cfg = str(ROOT / "configs/rl/navigation2d_anil.yaml")
    out = str(tmp_path / "x")
    one_line_error(capsys, ["train", str(tmp_path / "missing.yaml")], "does not exist")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "training.iteratons=3"], "iteratons")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "training.iterations=abc"], "training.iterations")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "training.max_kl=[1]"], "training.max_kl")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "policy.adapt_log_std=3"], "adapt_log_std")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "training.outer=adam"], "training.outer")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "adaptation.spec=freeze:x"], "freeze")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "env.name=nowhere"], "nowhere")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "env.settings={wind: 3}"], "wind")
    # counts, sizes and seeds out of range fail before anything is written, not deep inside the run
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "training.iterations=0"], "iterations", ">= 1")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "logging.checkpoint_every=0"], "checkpoint_every")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "policy.hidden_sizes=[-3]"], "hidden_sizes")
    one_line_error(capsys, ["train", cfg, "--out", out, "--seed", "-1"], "'seed'", ">= 0")
    one_line_error(capsys, ["train", cfg, "--out", out, "--seed", str(2**70)], "'seed'", "2**32")
    one_line_error(capsys, ["train", cfg, "--out", out, "--set", "kind=[1]"], "'kind'")
    assert not Path(out).exists()
    assert (
        main(
            ["train", cfg, "--out", out, "--quiet", *sum([["--set", x] for x in TINY], [])]
            + ["--set", "training.iterations=1", "--set", "training.max_kl=1e-3"]
        )
        == 0
    )
    assert yaml.safe_load((Path(out) / "config.yaml").read_text())["training"]["max_kl"] == 0.001
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    one_line_error(capsys, ["train", str(bad)], "not valid YAML", "line 2, column 1")
    bad.write_text("- just\n- a list\n")
    one_line_error(capsys, ["train", str(bad)], "mapping")
    bad.write_bytes(b"training: \xff\xfe\n")
    one_line_error(capsys, ["train", str(bad)], "not valid YAML")
    bad.write_text("")
    one_line_error(capsys, ["train", str(bad)], "is empty")
    bad.write_text("training:\n  iterations: 1\n  iterations: 2\n")
    one_line_error(capsys, ["train", str(bad)], "'iterations' appears twice", "line 3")
    one_line_error(capsys, ["train", str(tmp_path)], "is a directory")
    # real-valued settings: finite, in range, and a step-size list holds numbers (checked before anything is written)
    fresh = str(tmp_path / "fresh")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "training.max_kl=-1"], "'training.max_kl'", "> 0")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "training.gamma=.nan"], "finite")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "training.gae_lambda=1.5"], "in [0, 1]")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "adaptation.inner_lr=[0.1, -1]"], ">= 0")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "evaluation.inner_lr=[]"], "non-empty list")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "evaluation.inner_lr=[abc]"], "list of numbers")
    one_line_error(capsys, ["train", cfg, "--out", fresh, "--set", "evaluation.inner_lr=-1"], ">= 0")  # an int too
    goal = ["train", cfg, "--out", fresh, "--set", "env.settings.goal_range=abc"]
    one_line_error(capsys, goal, "'env.settings.goal_range'", "float")
    # values of the right type that the engine cannot take: refused when it is built, before any write
    one_line_error(capsys, [*goal[:-1], "env.settings.goal_range=-1"], "goal_range", "positive finite")
    hc_vel = str(ROOT / "configs/rl/halfcheetah_vel_anil.yaml")
    for setting, needle in [
        ("env.settings.velocity_range=[0, .nan]", "two finite numbers"),
        ("env.settings.nthread=-3", "nthread"),
        ("env.settings.nthread='2'", "nthread"),
    ]:
        one_line_error(capsys, ["train", hc_vel, "--out", fresh, "--set", setting], needle)
    assert not Path(fresh).exists()
    listed = ["--set", "adaptation.inner_lr=[0.1, 0.05]", "--set", "adaptation.inner_steps=2"]
    assert (
        main(
            ["train", cfg, "--out", str(tmp_path / "lrs"), "--quiet", *listed, *sum([["--set", x] for x in TINY], [])]
            + ["--set", "training.iterations=1"]
        )
        == 0
    )


def test_run_directory_errors_are_one_line_exit_2(tmp_path, capsys):
    one_line_error(capsys, ["evaluate", str(tmp_path / "nope")], "does not exist")
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "nope")], "does not exist")
    run = train(tmp_path, iterations=1)
    capsys.readouterr()
    ckpt = run / "checkpoint.pt"
    # config.yaml edited after training: the network it describes no longer fits the checkpoint
    config_text = (run / "config.yaml").read_text()
    config = yaml.safe_load(config_text)
    config["policy"]["hidden_sizes"] = [16]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    one_line_error(capsys, ["evaluate", str(run)], "does not fit the GaussianMLPPolicy")
    one_line_error(capsys, ["train", "--resume", str(run), "--set", "training.iterations=2"], "does not fit")
    (run / "config.yaml").write_text(config_text)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    one_line_error(capsys, ["evaluate", str(run)], "corrupt")
    one_line_error(capsys, ["train", "--resume", str(run)], "corrupt")
    ckpt.write_bytes(b"not a checkpoint at all")
    one_line_error(capsys, ["evaluate", str(run)], "corrupt")
    one_line_error(capsys, ["evaluate", str(run), "--checkpoint", str(tmp_path / "nope.pt")], "does not exist")
    ckpt.unlink()
    one_line_error(capsys, ["evaluate", str(run)], "no checkpoint")
    # records without a checkpoint: resuming would start over and drop them, so it is refused
    before = (run / "metrics.jsonl").read_text()
    one_line_error(capsys, ["train", "--resume", str(run)], "no checkpoint.pt")
    assert (run / "metrics.jsonl").read_text() == before
    # a checkpoint of the wrong shape, a file or a directory in the wrong place
    torch.save({"iteration": "x", "model": 5}, ckpt)
    one_line_error(capsys, ["evaluate", str(run)], "not a metarl checkpoint")
    one_line_error(capsys, ["train", "--resume", str(run / "config.yaml")], "is a file")
    one_line_error(capsys, ["evaluate", str(run), "--checkpoint", str(run / "tb")], "is a directory")
    one_line_error(capsys, ["evaluate", str(run), "--data-root", str(tmp_path)], "RL runs read no data")
    # an emptied config.yaml must not resume as the default experiment
    (run / "config.yaml").write_text("")
    one_line_error(capsys, ["evaluate", str(run)], "is empty")
    # an --out that is a file: the operating system's error, in one line (exit 1)
    clash = tmp_path / "a_file"
    clash.write_text("x")
    assert main(["train", str(ROOT / "configs/rl/navigation2d_anil.yaml"), "--out", str(clash), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("metarl: error:") and "\n" not in err and "a_file" in err
    # an existing run is never overwritten by a new one
    one_line_error(capsys, ["train", str(ROOT / "configs/rl/navigation2d_anil.yaml"), "--out", str(run)], "already")


def test_damaged_or_foreign_run_files_are_refused_and_lose_nothing(tmp_path, capsys):
    run = train(tmp_path, iterations=1)
    capsys.readouterr()
    ckpt, cfg = run / "checkpoint.pt", str(ROOT / "configs/rl/navigation2d_anil.yaml")
    good = torch.load(ckpt, weights_only=False)
    # a new run into a folder that holds another run's records must not truncate them
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(run / "metrics.jsonl", lone / "metrics.jsonl")
    one_line_error(capsys, ["train", cfg, "--out", str(lone)], "already holds", "metrics.jsonl")
    assert (lone / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert not (lone / "config.yaml").exists()
    (tmp_path / "events_only" / "tb").mkdir(parents=True)  # another run's TensorBoard events alone count too
    one_line_error(capsys, ["train", cfg, "--out", str(tmp_path / "events_only")], "already holds", "(tb)")
    # another kind of run's checkpoint (no policy in it)
    torch.save({**good, "model": {"model": {}, "optimizer": {}, "sampler": {}}}, ckpt)
    longer = ["--set", "training.iterations=2"]
    for argv in (["evaluate", str(run)], ["summarize", str(run)], ["analyze", str(run), "--tasks", "2"]):
        one_line_error(capsys, argv, "no 'policy' state", "another kind of run")
    one_line_error(capsys, ["train", "--resume", str(run), *longer], "no 'policy' state")
    # a damaged RNG state is refused before config.yaml records the longer run
    config_text = (run / "config.yaml").read_text()
    torch.save({**good, "rng": {"torch": good["rng"]["torch"]}}, ckpt)
    one_line_error(capsys, ["train", "--resume", str(run), *longer], "RNG state is missing or damaged")
    assert (run / "config.yaml").read_text() == config_text
    # NaN weights (a diverged run's checkpoint): refused before any write
    nan = {**good, "model": {**good["model"], "policy": {k: v.clone() for k, v in good["model"]["policy"].items()}}}
    next(iter(nan["model"]["policy"].values())).fill_(float("nan"))
    torch.save(nan, ckpt)
    saved, rows = ckpt.read_bytes(), (run / "metrics.jsonl").read_text()
    one_line_error(capsys, ["train", "--resume", str(run), *longer], "non-finite weights", "snapshots/iter_N.pt")
    assert ckpt.read_bytes() == saved and (run / "metrics.jsonl").read_text() == rows
    assert (run / "config.yaml").read_text() == config_text
    torch.save(good, ckpt)
    # a finished run resumes to nothing, and says so
    rows = (run / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(run)]) == 0
    assert "already at iteration 1 of 1; nothing to train" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_text() == rows
    one_line_error(capsys, ["evaluate", str(run), "--checkpoint", "snapshots"], "is a directory")
    for argv in (["analyze", str(run)], ["summarize", str(run)]):
        one_line_error(capsys, [*argv, "--data-root", str(tmp_path)], "RL runs read no data")
    one_line_error(capsys, ["analyze", str(run), "--adapt", "nil", "--tasks", "2"], "classification read-out")
    # a damaged earlier over-training analysis is refused, and kept
    (run / "analysis").mkdir()
    (run / "analysis" / "over_training.json").write_text(json.dumps({"over_training": {"0": "junk"}}))
    one_line_error(capsys, ["analyze", str(run), "--checkpoints", "--tasks", "2"], "over_training.json", "damaged")
    assert "junk" in (run / "analysis" / "over_training.json").read_text()
    # a metrics row damaged by hand does not stop summarize; a run with no returns has nothing to plot
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": 1, "iteration_s": None}) + "\n")
    assert main(["summarize", str(run), "--tasks", "2"]) == 0
    capsys.readouterr()
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 0, "kl": 0.1}) + "\n")
    one_line_error(capsys, ["plot", str(run), "--out", str(tmp_path / "p.png")], "no pre_return or post_return")
    assert not (tmp_path / "p.png").exists()
    # a section that is not a mapping stays an error under an override of one of its keys
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2]\n")
    one_line_error(capsys, ["train", str(bad), "--set", "training.iterations=1"], "'training' must be a mapping")


def test_training_stops_when_the_weights_diverge_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from metarl.rl import RLExperiment
    from metarl.training import finite

    assert finite({"a": [torch.ones(2), None, (torch.zeros(1, dtype=torch.uint8),)]})
    assert not finite({"a": [torch.ones(2), {"b": torch.tensor([1.0, float("inf")])}]})
    real = RLExperiment.iteration

    def diverges_at_three(self, it):
        metrics = real(self, it)
        if it == 3:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(RLExperiment, "iteration", diverges_at_three)
    out = tmp_path / "run"
    args = ["train", str(ROOT / "configs/rl/navigation2d_anil.yaml"), "--out", str(out), "--quiet"]
    args += sum([["--set", x] for x in [*TINY, "training.iterations=6", "logging.checkpoint_every=2"]], [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("metarl: error: training diverged at iteration 3") and "(iteration 2)" in err[-1]
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["iteration"] == 2 and finite(state["model"])
    assert [json.loads(x)["iteration"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, capsys, monkeypatch):
    """The initial state is saved before the first iteration, so even `checkpoint_every` beyond the kill resumes."""
    from metarl.rl import RLExperiment

    real = RLExperiment.iteration

    def killed_at_two(self, it):
        if it == 2:
            raise KeyboardInterrupt
        return real(self, it)

    monkeypatch.setattr(RLExperiment, "iteration", killed_at_two)
    extra = ["logging.checkpoint_every=100", "logging.snapshot_every=0"]
    out = tmp_path / "run"
    args = ["train", str(ROOT / "configs/rl/navigation2d_anil.yaml"), "--out", str(out), "--quiet"]
    args += sum([["--set", x] for x in [*TINY, *extra, "training.iterations=4"]], [])
    assert main(args) == 130
    assert torch.load(out / "checkpoint.pt", weights_only=False)["iteration"] == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(RLExperiment, "iteration", real)
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    # a damaged metrics file (random bytes, a line that is no object) is skipped, not a traceback
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b"\xff\xfe\x00garbage\n5\n")
    assert main(["plot", str(out), "--out", str(tmp_path / "c.png")]) == 0
    assert main(["train", "--resume", str(out), "--quiet", "--set", "training.iterations=5"]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4]
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    del state["rng"]
    torch.save(state, out / "checkpoint.pt")
    capsys.readouterr()
    one_line_error(capsys, ["train", "--resume", str(out), "--set", "training.iterations=6"], "holds no RNG state")
    one_line_error(capsys, ["plot", str(out), "--out", str(tmp_path / "d.png"), "--ylim", "nan", "1"], "--ylim")


def test_bench_meta_step_json(capsys, monkeypatch):
    from metarl import bench

    monkeypatch.setitem(
        bench.RL_PRESETS,
        "navigation2d",
        {
            "env": {"name": "navigation2d", "horizon": 10},
            "training": {"meta_batch_size": 2, "trajectories_per_task": 2},
            "policy": {"hidden_sizes": [8]},
        },
    )
    assert main(["bench", "meta-step", "--env", "navigation2d", "--repeats", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["seconds_per_iteration"]) == {"maml", "anil"}
    assert r["maml_over_anil"] == pytest.approx(r["seconds_per_iteration"]["maml"] / r["seconds_per_iteration"]["anil"])
    assert set(r["split"]["maml"]) >= {"sampling_s", "inner_update_s", "outer_update_s"}
    one_line_error(capsys, ["bench", "sampler", "--task", "omniglot-5w1s"], "give one")
    one_line_error(capsys, ["bench", "meta-step", "--env", "navigation2d", "--task", "omniglot-5w1s"], "give one")
    one_line_error(capsys, ["bench", "sampler", "--threads", "2"], "--threads", "meta-step")
    one_line_error(capsys, ["bench", "meta-step", "--env", "navigation2d", "--tasks", "2"], "size the sampler")


def test_bench_sampler_small_reports_the_three_rates_and_ratios(capsys):
    assert main(["bench", "sampler", "--tasks", "2", "--per-task", "3", "--repeats", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    rates = ("sampler_transitions_per_s", "physics_transitions_per_s", "gymnasium_transitions_per_s")
    assert all(r[k] > 0 for k in rates) and r["simulations"] == 6
    a, b, c = (r[k] for k in rates)
    assert r["sampler_over_physics"] == pytest.approx(a / b) and r["sampler_over_gymnasium"] == pytest.approx(a / c)


def test_plot_writes_png(tmp_path):
    run = train(tmp_path, iterations=2)
    out = tmp_path / "curves.png"
    assert main(["plot", str(run), "--out", str(out), "--window", "1"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    zoomed = tmp_path / "zoomed.png"
    assert main(["plot", str(run), "--out", str(zoomed), "--ylim", "-60", "0"]) == 0
    assert zoomed.read_bytes() != out.read_bytes()
    assert main(["plot", str(run), "--out", str(tmp_path / "curves")]) == 2  # matplotlib would add .png unasked


def test_plot_survives_missing_values_and_refuses_mixed_kinds(tmp_path, capsys):
    from metarl.plots import smooth

    assert smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    nan = float("nan")
    assert smooth([1.0, nan, 1.0, 1.0, None, 1.0], 2) == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # no NaN spreads
    run = train(tmp_path, iterations=3)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows[1]["post_return"] = None  # as a NaN is written to JSON
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    cls = tmp_path / "cls"
    cls.mkdir()
    import classification.config  # noqa: F401  (registers the classification schema)
    from metarl.config import DEFAULTS

    (cls / "config.yaml").write_text(yaml.safe_dump(DEFAULTS["classification"]))
    capsys.readouterr()
    one_line_error(capsys, ["plot", str(run), str(cls), "--out", str(tmp_path / "m.png")], "separately")


def test_analyze_rl_run_single_pair_and_checkpoints(tmp_path, capsys):
    a = train(
        tmp_path, "a", iterations=2, extra=["logging.snapshot_every=1"], config="configs/rl/navigation2d_maml.yaml"
    )
    b = train(tmp_path, "b", iterations=1, extra=["seed=3"], config="configs/rl/navigation2d_maml.yaml")
    capsys.readouterr()
    assert main(["analyze", str(a), "--tasks", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["layers"]) == ["layer1", "head"]
    assert all(0.0 <= row["cca"] <= 1.0 + 1e-9 and 0.0 <= row["cka"] <= 1.0 + 1e-9 for row in r["layers"].values())
    assert Path(r["png"]).read_bytes()[:4] == b"\x89PNG" and Path(r["json"]).exists()
    assert r["inner_steps"] == 1 and len(r["returns"]) == 2
    one = r
    assert main(["analyze", str(a), "--tasks", "2", "--adapt", "head", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["layers"]["layer1"]["cca"] == pytest.approx(1.0) and r["layers"]["layer1"]["relative_change"] == 0.0
    assert main(["analyze", str(a), str(b), "--tasks", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["body"]) == {"cca", "cca_all", "svcca", "pwcca", "cka"} and r["body"]["cka"] < 1.0
    # a pair compares outputs before adaptation, so it skips the inner steps; those outputs are unchanged by that
    from metarl import rl
    from metarl.runs import RunDir

    run = RunDir.open(a)
    config, state = run.config(), run.load_checkpoint()
    probe = rl.analysis_probe(config, state, 2, 0)
    (pre, post), (pre_only, none) = rl.capture(config, state, probe), rl.capture(config, state, probe, adapt=False)
    assert none is None and post and pre.keys() == pre_only.keys()
    assert all((x == y).all() for k in pre for x, y in zip(pre[k], pre_only[k], strict=True))
    assert main(["analyze", str(a), "--checkpoints", "--tasks", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert sorted(int(k) for k in r["over_training"]) == [0, 1, 2] and r["reused"] == 0
    # a snapshot may be named relative to its run
    assert main(["evaluate", str(a), "--checkpoint", "snapshots/iter_000001.pt", "--tasks", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["iteration"] == 1
    # Training on or losing snapshot files keeps the trend: rows with the same settings are reused.
    for snap in sorted((a / "snapshots").glob("iter_*.pt"))[1:]:
        snap.unlink()
    assert main(["analyze", str(a), "--checkpoints", "--tasks", "2", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] == 3 and again["over_training"] == r["over_training"]
    assert main(["analyze", str(a), "--checkpoints", "--tasks", "2", "--seed", "5", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["reused"] == 0 and sorted(int(k) for k in other["over_training"]) == [0, 2]
    # another network's rows (other layers) with the same settings: refused at the first snapshot analysed afresh
    foreign = json.loads(Path(other["json"]).read_text())
    foreign["over_training"] = {"2": {f"other_{k}": v for k, v in foreign["over_training"]["2"].items()}}
    Path(other["json"]).write_text(json.dumps(foreign))
    assert main(["analyze", str(a), "--checkpoints", "--tasks", "2", "--seed", "5"]) == 2
    assert "holds other layers than this run's" in capsys.readouterr().err
    assert json.loads(Path(other["json"]).read_text()) == foreign  # kept as it was
    Path(r["json"]).write_text("{ truncated")
    assert main(["analyze", str(a), "--checkpoints", "--tasks", "2"]) == 2
    assert "is not an over-training analysis" in capsys.readouterr().err
    # Finn et al.'s test-time fine-tuning: each step samples with the policy adapted so far, as evaluate does,
    # so the analysed policies are the ones whose returns evaluate reports for the same tasks
    assert main(["analyze", str(a), "--tasks", "2", "--inner-steps", "2", "--seed", "7", "--json"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert two["inner_steps"] == 2 and len(two["returns"]) == 3
    assert main(["evaluate", str(a), "--tasks", "2", "--inner-steps", "2", "--seed", "7", "--json"]) == 0
    assert two["returns"] == pytest.approx(json.loads(capsys.readouterr().out)["returns"], rel=1e-6)
    assert two["layers"]["head"]["relative_change"] != one["layers"]["head"]["relative_change"]
    assert main(["analyze", str(a), "--inner-steps", "0"]) == 2
    assert "--inner-steps takes a count >= 1" in capsys.readouterr().err


def test_summarize_groups_seeds(tmp_path, capsys):
    runs = [train(tmp_path, f"s{s}", iterations=1, extra=[f"seed={s}"]) for s in (0, 1)]
    capsys.readouterr()
    assert main(["summarize", *map(str, runs), "--tasks", "3", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert list(groups) == ["navigation2d ANIL | head"]
    assert [r["seed"] for r in groups["navigation2d ANIL | head"]] == [0, 1]
    assert main(["summarize", *map(str, runs), "--tasks", "3"]) == 0
    table = capsys.readouterr().out
    assert "| navigation2d ANIL | head | 0,1 | 1 |" in table and "±" in table
    posts = ", ".join(f"{r['returns'][-1]:.1f}" for r in groups["navigation2d ANIL | head"])
    assert f"| {posts} |" in table  # each seed's own after-adaptation return


def test_summarize_keeps_different_experiments_apart(tmp_path, capsys):
    """Seeds of one config average together; a run of the same method with another setting is not a seed."""
    runs = [train(tmp_path, f"s{s}", iterations=1, extra=[f"seed={s}"]) for s in (0, 1)]
    other = train(tmp_path, "lr", iterations=1, extra=["adaptation.inner_lr=0.5"])
    longer = train(tmp_path, "s2", iterations=2, extra=["seed=2"])  # a longer budget is still a seed
    (longer / "metrics.jsonl").unlink()  # and one without training records reports no time
    capsys.readouterr()
    assert main(["summarize", *map(str, [*runs, other, longer]), "--tasks", "3", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert list(groups) == ["navigation2d ANIL (s0) | head", "navigation2d ANIL (lr) | head"]
    assert [r["seed"] for r in groups["navigation2d ANIL (s0) | head"]] == [0, 1, 2]
    assert groups["navigation2d ANIL (s0) | head"][2]["train_seconds"] is None
    assert main(["summarize", str(other), str(longer), "--tasks", "3"]) == 0
    assert "| navigation2d ANIL (s2) | head | 2 | 2 |" in capsys.readouterr().out  # time: '-'
    one_line_error(capsys, ["summarize", str(other), str(tmp_path / "lr" / "."), "--tasks", "3"], "given twice")


def test_summarize_mixed_kinds_gives_one_table_each():
    from metarl.summary import markdown

    common = {"seed": 0, "iteration": 5, "train_seconds": 60.0}
    rl = {**common, "returns": [-10.0, 20.0], "ci95": [1.0, 2.0]}
    cls = {**common, "accuracy": 0.9, "ci95": 0.01}
    groups = {"navigation2d MAML | full": [rl], "omniglot 5w1s MAML | full": [cls]}
    rl_table, cls_table = markdown(groups).split("\n\n")
    assert "after adaptation" in rl_table.splitlines()[0]
    assert "| navigation2d MAML | full | 0 | 5 | -10.0 | 20.0 |" in rl_table
    assert "accuracy %" in cls_table.splitlines()[0] and "| omniglot 5w1s MAML | full | 0 | 5 | 90.0 |" in cls_table
    for table in (rl_table, cls_table):  # every row has its header's number of cells
        widths = {line.count("|") for line in table.splitlines()}
        assert len(widths) == 1, table


def test_summarize_several_specs_side_by_side(tmp_path, capsys):
    run = train(tmp_path, "s0", iterations=1)
    capsys.readouterr()
    assert main(["summarize", str(run), "--tasks", "3", "--adapt", "head", "--adapt", "none", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert list(groups) == ["navigation2d ANIL | head", "navigation2d ANIL | none"]
    head, none = groups["navigation2d ANIL | head"][0], groups["navigation2d ANIL | none"][0]
    assert head["returns"][0] == none["returns"][0]  # same tasks, same pre-adaptation policy
    # nothing adapts: the second batch differs from the first only by sampling noise
    assert abs(none["returns"][1] - none["returns"][0]) <= sum(none["ci95"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "rl").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_rl_config_loads_and_builds_its_engine_and_policy(path):
    from metarl.config import load_config
    from metarl.rl import build_engine, build_policy

    config = load_config(path)
    engine = build_engine(config, nthread=1) if config["env"]["name"] != "navigation2d" else build_engine(config)
    policy = build_policy(config, engine)
    assert engine.horizon == config["env"]["horizon"]
    assert sum(p.numel() for p in policy.parameters()) > 0
