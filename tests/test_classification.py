"""Tests for few-shot classification: conv4 models, the inner loop (MAML, ANIL fast path, freezing,
vectorisation over tasks), the NIL read-out, and `metarl train` / `metarl evaluate` end to end on
small generated data in Omniglot's npz and MiniImageNet's pickle formats.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from classification import bench
from classification.data import ClassImages, Task, TaskSampler
from classification.experiment import ClassificationExperiment, FewShotLearner, nil_logits, support_loss
from classification.models import Conv4
from metarl.adaptation import AdaptationSpec, meta_parameters
from metarl.bench import format_result
from metarl.cli import main
from metarl.config import DEFAULTS, merge

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "classification"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Preprocessing caches go to tmp, and torch's thread count is restored after each test."""
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_model(ways: int = 3, backbone: str = "conv4-omniglot", dtype=torch.float64) -> Conv4:
    torch.manual_seed(0)
    size, channels = (12, 1) if backbone == "conv4-omniglot" else (24, 3)
    return Conv4(ways, channels, size, backbone, filters=4).to(dtype)


def tiny_tasks(tasks: int = 3, ways: int = 3, shots: int = 2, queries: int = 2, channels: int = 1, size: int = 12):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (ways + 2, shots + queries, channels, size, size), generator=g, dtype=torch.uint8)
    task = TaskSampler(images, ways, shots, queries, seed=2).sample_batch(tasks)
    return Task(task.support_x.double(), task.support_y, task.query_x.double(), task.query_y)


def learner(model: Conv4, spec: str, lrs=(0.3, 0.2), first_order=False, reduction="mean", shots=2) -> FewShotLearner:
    return FewShotLearner(model, AdaptationSpec(spec), list(lrs), first_order, reduction, shots)


def outer(lrn: FewShotLearner, task: Task, fast: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Query loss after adaptation and its gradient w.r.t. every meta-parameter."""
    params = meta_parameters(lrn.model)
    logits, _ = lrn.query_logits(params, task, fast=fast)
    loss = F.cross_entropy(logits.flatten(0, 1), task.query_y.flatten())
    return loss, list(torch.autograd.grad(loss, list(params.values())))


# ------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    "backbone, channels, size, features", [("conv4-omniglot", 1, 28, 64), ("conv4-miniimagenet", 3, 84, 800)]
)
def test_conv4_shapes(backbone, channels, size, features):
    model = Conv4(5, channels, size, backbone)
    assert model.feature_dim == features
    x = torch.rand(6, channels, size, size)
    assert model(x).shape == (6, 5) and model(x, "body").shape == (6, features)
    xt = torch.rand(2, 6, channels, size, size)
    assert model(xt).shape == (2, 6, 5) and model(model(xt, "body"), "head").shape == (2, 6, 5)
    assert [name for name, _ in model.adaptation_layers()] == ["conv1", "conv2", "conv3", "conv4", "head"]
    grouped = {n for _, names in model.adaptation_layers() for n in names}
    assert {n for n, _ in model.named_parameters()} - grouped == {f"norm{i}.bias" for i in range(1, 5)}


def test_batched_forward_equals_per_task_forward():
    """Tasks side by side on the channel axis (grouped convs, per-task batch norm) = one task at a time."""
    model = tiny_model()
    params = {k: v.detach() + 0.1 * torch.randn(3, *v.shape, dtype=v.dtype) for k, v in model.named_parameters()}
    x = torch.rand(3, 4, 1, 12, 12, dtype=torch.float64)
    batched = torch.func.functional_call(model, params, (x,))
    for t in range(3):
        single = torch.func.functional_call(model, {k: v[t] for k, v in params.items()}, (x[t],))
        torch.testing.assert_close(batched[t], single)


# -------------------------------------------------------------------------------------- inner loop


@pytest.mark.parametrize(
    "spec, frozen", [("freeze:2", ["conv1", "conv2"]), ("head", ["conv1", "conv2", "conv3", "conv4"])]
)
def test_frozen_layers_stay_bit_identical(spec, frozen):
    model, task = tiny_model(), tiny_tasks()
    params = meta_parameters(model)
    adapted = learner(model, spec).adapt(params, task).params
    for name, value in adapted.items():
        if name.split(".")[0] in frozen or name.startswith("norm"):
            assert value is params[name] or torch.equal(value, params[name]), name
        else:
            assert value.shape[0] == 3 and not torch.equal(value[0], params[name]), name


def test_anil_fast_path_matches_plain_path():
    model, task = tiny_model(), tiny_tasks()
    fast_loss, fast_grads = outer(learner(model, "head"), task, fast=True)
    plain_loss, plain_grads = outer(learner(model, "head"), task, fast=False)
    torch.testing.assert_close(fast_loss, plain_loss)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b)
    assert fast_grads[0].abs().sum() > 0  # the outer gradient reaches the body (conv1.weight)


@pytest.mark.parametrize("first_order", [False, True])
def test_vectorised_maml_equals_loop_over_tasks(first_order):
    model, task = tiny_model(), tiny_tasks()
    lrn = learner(model, "full", first_order=first_order)
    loss, grads = outer(lrn, task)
    losses, loop_grads = [], []
    for t in range(3):
        one = Task(*(field[t : t + 1] for field in task))
        loss_t, grads_t = outer(lrn, one)
        losses.append(loss_t)
        loop_grads.append(grads_t)
    torch.testing.assert_close(loss, torch.stack(losses).mean())
    for i, g in enumerate(grads):
        torch.testing.assert_close(g, sum(gt[i] for gt in loop_grads) / 3)


def test_sum_over_k_with_lr_a_equals_mean_with_lr_n_times_a():
    ways, shots, a = 3, 2, 0.05
    model, task = tiny_model(ways), tiny_tasks(ways=ways, shots=shots)
    summed = outer(learner(model, "full", [a, a], reduction="sum_over_k", shots=shots), task)
    mean = outer(learner(model, "full", [ways * a, ways * a], reduction="mean", shots=shots), task)
    torch.testing.assert_close(summed[0], mean[0])
    for x, y in zip(summed[1], mean[1], strict=True):
        torch.testing.assert_close(x, y)
    logits, labels = torch.randn(2, 6, ways), torch.randint(0, ways, (2, 6))
    torch.testing.assert_close(
        support_loss(logits, labels, "sum_over_k", shots), ways * support_loss(logits, labels, "mean", shots)
    )


def test_nil_readout_by_hand():
    # Two support examples (labels 0, 1) at 0 and 90 degrees; one query at 0 degrees.
    support = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    query = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    probs = nil_logits(support, torch.tensor([[0, 1]]), query, ways=2)
    # cosine similarities: query 1 -> (1, 0); query 2 -> (1/sqrt2, 1/sqrt2)
    e = math.exp(1.0)
    torch.testing.assert_close(probs[0, 0], torch.tensor([e / (e + 1), 1 / (e + 1)]))
    torch.testing.assert_close(probs[0, 1], torch.tensor([0.5, 0.5]))
    # 2-shot: the probability of a class sums the softmax weights of its support examples
    support2 = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]])
    probs2 = nil_logits(support2, torch.tensor([[0, 0, 1]]), query[:, :1], ways=2)
    c = 1 / math.sqrt(1.01)
    w = torch.tensor([e, math.exp(c), 1.0])
    torch.testing.assert_close(probs2[0, 0], torch.stack([w[:2].sum(), w[2]]) / w.sum())


def test_running_batch_norm_tracks_and_is_used_in_eval():
    model = Conv4(3, 1, 28, "conv4-omniglot", filters=4, batch_norm="running")
    x = torch.rand(2, 5, 1, 28, 28)
    with model.tracking_stats():
        model(x)
    assert not torch.equal(model.norm1.running_mean, torch.zeros(4))
    model.eval()
    one, both = model(x[0, :1]), model(x[0])  # running statistics: no dependence on the rest of the batch
    torch.testing.assert_close(one[0], both[0])


# --------------------------------------------------------------------------------- end to end (CLI)


def make_omniglot(root: Path) -> Path:
    """Omniglot npz files with every character (the cbfinn split needs 1623) but 2 tiny drawings each."""
    rng = np.random.default_rng(0)
    folder = root / "omniglot"
    folder.mkdir(parents=True)
    for name, n in (("images_background", 964), ("images_evaluation", 659)):
        images = rng.random((n, 2, 8, 8)) < 0.7
        labels = np.repeat(np.arange(n)[:, None], 2, axis=1)
        np.savez(folder / f"{name}.npz", images=images, labels=labels)
    return root


def make_miniimagenet(root: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "miniimagenet"
    folder.mkdir(parents=True)
    for split in ("train", "validation", "test"):
        data = rng.integers(0, 256, (4 * 3, 84, 84, 3), dtype=np.uint8)
        classes = {f"n{split}{c}": list(range(3 * c, 3 * c + 3)) for c in range(4)}
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": classes}, f)
    return root


SMALL = [
    "task.ways=3",
    "training.iterations=2",
    "training.meta_batch_size=2",
    "model.filters=4",
    "adaptation.inner_steps=1",
    "evaluation.tasks=4",
    "evaluation.inner_steps=2",
    "logging.checkpoint_every=1",
]


def train(config: str, out: Path, root: Path, *extra: str) -> int:
    sets = [x for item in [*SMALL, *extra] for x in ("--set", item)]
    return main(["train", str(CONFIGS / config), "--out", str(out), "--data-root", str(root), "--quiet", *sets])


def evaluate_json(run: Path, capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("regime", ["anil", "multiclass", "multitask", "niltrain"])
def test_every_regime_updates_running_batch_norm_statistics(tmp_path, regime):
    """With model.batch_norm=running, evaluation normalises with the averages training kept:
    every training regime must update them, or they stay at mean 0, variance 1. (MAML refuses running
    statistics: test_running_batch_norm_refuses_an_inner_loop_that_adapts_the_body.)"""
    root = make_omniglot(tmp_path / "data")
    assert train(f"omniglot_5w1s_{regime}.yaml", tmp_path / "run", root, "model.batch_norm=running") == 0
    model = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]["model"]
    for layer in range(1, 5):
        assert model[f"norm{layer}.running_mean"].abs().max() > 0
        assert not torch.allclose(model[f"norm{layer}.running_var"], torch.ones(1))


def test_running_batch_norm_refuses_an_inner_loop_that_adapts_the_body(tmp_path, capsys):
    root = make_omniglot(tmp_path / "data")
    assert train("omniglot_5w1s_maml.yaml", tmp_path / "a", root, "model.batch_norm=running") == 2
    err = capsys.readouterr().err
    assert "model.batch_norm=running" in err and "conv1.weight" in err and not (tmp_path / "a").exists()
    running = "model.batch_norm=running"
    assert train("omniglot_5w1s_anil.yaml", tmp_path / "b", root, running, "adaptation.spec=freeze:3") == 2
    assert train("omniglot_5w1s_maml.yaml", tmp_path / "c", root, running, "adaptation.spec=head") == 0


def test_task_settings_the_test_split_cannot_hold_fail_before_training(tmp_path, capsys):
    root = make_omniglot(tmp_path / "data")
    assert train("omniglot_5w1s_anil.yaml", tmp_path / "a", root, "task.test_queries=500") == 2
    assert "do not fit the test data" in capsys.readouterr().err and not (tmp_path / "a").exists()


@pytest.mark.parametrize("config", ["omniglot_5w1s_maml.yaml", "omniglot_20w1s_anil.yaml"])
def test_train_and_evaluate_omniglot(tmp_path, capsys, config):
    root = make_omniglot(tmp_path / "data")
    assert train(config, tmp_path / "run", root) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert {"loss", "pre_accuracy", "post_accuracy", "iteration_s"} <= set(rows[0])
    for adapt in ("full", "head", "nil", "freeze:4"):
        result = evaluate_json(tmp_path / "run", capsys, "--adapt", adapt, "--seed", "3")
        assert result["adapt"] == adapt and result["tasks"] == 4
        assert 0 <= result["accuracy"] <= 1 and result["ci95"] >= 0


def test_evaluation_tasks_do_not_depend_on_the_meta_batch_size(tmp_path, capsys):
    """Runs that differ only in their meta-batch size are read out on the same test tasks for a seed:
    only the compute chunks follow the meta-batch size."""
    root = make_omniglot(tmp_path / "data")
    assert train("omniglot_5w1s_maml.yaml", tmp_path / "a", root) == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    config = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    config["training"]["meta_batch_size"] = 3
    (tmp_path / "b" / "config.yaml").write_text(yaml.safe_dump(config))
    for adapt in ("full", "nil"):
        a, b = (evaluate_json(tmp_path / r, capsys, "--adapt", adapt, "--tasks", "70") for r in "ab")
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9) and a["ci95"] == pytest.approx(b["ci95"])


def test_train_and_evaluate_miniimagenet(tmp_path, capsys):
    root = make_miniimagenet(tmp_path / "data")
    for algo in ("maml", "anil"):
        run = tmp_path / algo
        norm = "model.batch_norm=" + ("running" if algo == "anil" else "batch")  # MAML refuses running averages
        assert train(f"miniimagenet_5w1s_{algo}.yaml", run, root, "task.queries=1", norm) == 0
        for adapt in (None, "nil"):
            result = evaluate_json(run, capsys, *(["--adapt", adapt] if adapt else []), "--tasks", "3")
            assert result["adapt"] == (adapt or {"maml": "full", "anil": "head"}[algo])
            assert result["tasks"] == 3 and 0 <= result["accuracy"] <= 1
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "anil"), "--tasks", "2"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_resume_finds_moved_data_with_data_root(tmp_path, capsys):
    root = make_omniglot(tmp_path / "data")
    run = tmp_path / "run"
    assert train("omniglot_5w1s_maml.yaml", run, root) == 0
    moved = root.rename(tmp_path / "elsewhere")
    config_before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet", "--set", "training.iterations=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metarl: error:") and "\n" not in err
    assert main(["train", "--resume", str(run), "--quiet", "--data-root", str(moved)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]  # already complete: nothing more to do
    assert (
        main(["train", "--resume", str(run), "--quiet", "--data-root", str(moved), "--set", "training.iterations=3"])
        == 0
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    # the run's config keeps its own data root; only training.iterations changed
    assert (run / "config.yaml").read_text() == config_before.replace("iterations: 2", "iterations: 3")


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    root = make_omniglot(tmp_path / "data")
    extra = ("training.iterations=4", "logging.checkpoint_every=2")
    assert train("omniglot_5w1s_maml.yaml", tmp_path / "whole", root, *extra) == 0

    original = ClassificationExperiment.iteration

    def interrupted(self, it):
        if it == 2:
            raise KeyboardInterrupt
        return original(self, it)

    monkeypatch.setattr(ClassificationExperiment, "iteration", interrupted)
    assert train("omniglot_5w1s_maml.yaml", tmp_path / "cut", root, *extra) == 130
    monkeypatch.setattr(ClassificationExperiment, "iteration", original)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert whole["iteration"] == cut["iteration"] == 4
    for name, value in whole["model"]["model"].items():
        assert torch.equal(value, cut["model"]["model"][name]), name


def test_missing_data_is_a_one_line_error(tmp_path, capsys):
    assert train("omniglot_5w1s_anil.yaml", tmp_path / "run", tmp_path / "nowhere") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metarl: error: Omniglot images_background not found")
    assert train("miniimagenet_5w1s_anil.yaml", tmp_path / "run2", tmp_path / "nowhere") == 2
    assert "MiniImageNet train split not found" in capsys.readouterr().err


def test_bad_config_is_exit_2(tmp_path, capsys):
    assert train("omniglot_5w1s_anil.yaml", tmp_path / "a", tmp_path, "model.colour=red") == 2
    assert "unknown config key 'model.colour'" in capsys.readouterr().err
    assert train("omniglot_5w1s_anil.yaml", tmp_path / "b", tmp_path, "model.batch_norm=layer") == 2
    assert "model.batch_norm" in capsys.readouterr().err
    assert train("omniglot_5w1s_anil.yaml", tmp_path / "c", tmp_path, "task.ways=1") == 2
    assert "'task.ways' must be >= 2" in capsys.readouterr().err


def test_configs_hold_the_reference_hyperparameters():
    from metarl.config import load_config

    for path in sorted(CONFIGS.glob("*.yaml")):
        c = load_config(path)
        dataset, setting, algo = path.stem.split("_")
        ways = int(setting.split("w")[0])
        spec, regime = {
            "maml": ("full", "meta"),
            "anil": ("head", "meta"),
            "multitask": ("none", "meta"),
            "multiclass": ("none", "multiclass"),
            "niltrain": ("none", "nil"),
        }[algo]
        assert c["adaptation"]["spec"] == spec and c["training"]["regime"] == regime
        assert c["training"]["outer_lr"] == 1e-3
        assert c["evaluation"] == merge(DEFAULTS["classification"], {})["evaluation"]  # 600 tasks, 10 steps
        finn_lr = {"omniglot": 0.4 if ways == 5 else 0.1, "miniimagenet": 0.01}[dataset]
        assert math.isclose(c["adaptation"]["inner_lr"], ways * finn_lr)  # mean-reduced = N x Finn's
        assert c["training"]["meta_batch_size"] == {"omniglot": 32 if ways == 5 else 16, "miniimagenet": 4}[dataset]


def test_bench_meta_step_runs():
    r = bench.meta_step("omniglot-5w1s", repeats=1, threads=1)
    assert set(r["seconds_per_iteration"]) == {"maml", "fomaml", "anil"}
    assert r["threads"] == 1 and r["maml_over_anil"] > 0 and r["settings"]["ways"] == 5
    inference = r["inference_seconds_per_batch"]
    assert set(inference) == {"maml", "anil"} and min(inference.values()) > 0
    assert r["maml_over_anil_inference"] == pytest.approx(inference["maml"] / inference["anil"])
    assert "inference" in format_result(r)


def test_synthetic_class_images_shape():
    data = bench.synthetic_data("miniimagenet-5w5s")
    assert isinstance(data, ClassImages) and data.images.shape[1:] == (20, 3, 84, 84)


def test_analyze_classification_run(tmp_path, capsys):
    """Figure 2 machinery on a tiny generated Omniglot run: layers conv1..conv4 and head."""
    root = make_omniglot(tmp_path / "data")
    assert train("omniglot_5w1s_maml.yaml", tmp_path / "run", root) == 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "run"), "--tasks", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert list(r["layers"]) == ["conv1", "conv2", "conv3", "conv4", "head"]
    assert all(0 <= row["cka"] <= 1 + 1e-9 for row in r["layers"].values())
    assert main(["analyze", str(tmp_path / "run"), "--tasks", "2", "--adapt", "head", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["layers"]["conv3"]["relative_change"] == 0.0 and r["layers"]["head"]["relative_change"] > 0
    assert main(["analyze", str(tmp_path / "run"), "--tasks", "2", "--inner-steps", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["inner_steps"] == 2 and r["layers"]["conv1"]["relative_change"] > 0
    # a model against itself (Table 3's pair comparison): every body layer reads 1
    assert main(["analyze", str(tmp_path / "run"), str(tmp_path / "run"), "--tasks", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["body"]["cka"] == pytest.approx(1.0) and r["body"]["cca"] == pytest.approx(1.0, abs=1e-6)


def test_sample_labelled_returns_true_classes():
    images = torch.arange(6 * 3, dtype=torch.uint8).view(6, 3, 1, 1, 1).expand(6, 3, 1, 2, 2).contiguous()
    x, y = TaskSampler(images, 2, 1, seed=0).sample_labelled(50)
    assert x.shape == (50, 1, 2, 2) and y.shape == (50,)
    # image value 3*class + index identifies the drawn class
    assert torch.equal(torch.div((x[:, 0, 0, 0] * 255).round().long(), 3, rounding_mode="floor"), y)
    assert len(set(y.tolist())) > 2


@pytest.mark.parametrize("regime", ["multiclass", "multitask", "niltrain"])
def test_training_regime_baselines_train_and_read_out_with_nil(tmp_path, capsys, regime):
    root = make_omniglot(tmp_path / "data")
    assert train(f"omniglot_5w1s_{regime}.yaml", tmp_path / "run", root, "logging.snapshot_every=2") == 0
    result = evaluate_json(tmp_path / "run", capsys)
    assert result["adapt"] == "nil" and result["inner_steps"] == 0 and 0 <= result["accuracy"] <= 1
    before = torch.load(tmp_path / "run" / "snapshots" / "iter_000000.pt", weights_only=False)["model"]["model"]
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]["model"]
    assert not torch.equal(before["conv1.weight"], after["conv1.weight"])  # the body learns
    if regime == "multiclass":
        assert after["head.weight"].shape[0] == 1100  # one output per cbfinn training character
        w = before["head.weight"]  # nn.Linear's init (bound 1/sqrt(fan_in)), not Finn's N(0, 1)
        assert w.abs().max() <= w.shape[1] ** -0.5
        assert main(["evaluate", str(tmp_path / "run"), "--adapt", "head"]) == 2
        assert "--adapt nil" in capsys.readouterr().err
        # the body's layers can still be analysed: the unused 1100-way head is swapped for an N-way one
        assert main(["analyze", str(tmp_path / "run"), "--tasks", "2", "--data-root", str(root)]) == 0
    if regime == "niltrain":
        assert torch.equal(before["head.weight"], after["head.weight"])  # no head in the loss
