"""Few-shot classification experiments: MAML, first-order MAML and ANIL training; evaluation
with any adaptation spec or the NIL read-out.

The inner loop is `metarl.adaptation.inner_update`, the same one the RL learner uses; the
algorithms differ only in the `AdaptationSpec` (full = MAML, head = ANIL) and `first_order`.
A meta-batch of T tasks is one stacked tensor and the adapted parameters carry a leading task
axis, so every inner step and the outer loss are a few batched ops (see classification.models).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call

from classification.data import (
    ClassImages,
    Task,
    TaskSampler,
    load_miniimagenet,
    load_omniglot,
    split_omniglot,
)
from classification.models import Conv4
from metarl.adaptation import AdaptationSpec, Params, evaluation_step_sizes, inner_update, meta_parameters, step_sizes
from metarl.config import evaluation_options
from metarl.errors import UserError
from metarl.runs import checkpoint_part, load_weights


def load_splits(
    config: dict[str, Any], data_root: str | None = None, which: tuple[str, ...] = ("train", "test")
) -> dict[str, ClassImages]:
    """The 'train' and 'test' class sets of the configured dataset (missing data: UserError).

    `which` names the sets needed: evaluation and analysis read only 'test', which spares MiniImageNet's
    training file (0.8 GB unpickled); Omniglot's split is made from the whole set either way."""
    d = config["data"]
    root = data_root or d["root"]
    if d["dataset"] == "omniglot":
        return split_omniglot(load_omniglot(root), d["protocol"], d["split_seed"])
    return {split: load_miniimagenet(root, split) for split in which}


def evaluation_sampler(config: dict[str, Any], test: ClassImages, seed: int, queries: int | None = None) -> TaskSampler:
    """Test-split tasks as `evaluate` draws them (`queries` per class: the config's test_queries, else shots).
    Training builds one too, so that task settings the test split cannot hold fail before a run, not after it."""
    t = config["task"]
    if queries is None:
        queries = t["shots"] if t["test_queries"] is None else t["test_queries"]
    try:
        return TaskSampler(test, t["ways"], t["shots"], queries, rotates(config), seed=seed)
    except ValueError as e:
        raise UserError(f"task settings do not fit the test data: {e}") from None


def rotates(config: dict[str, Any]) -> bool:
    """Whether tasks get a random 90-degree rotation per class (Finn's Omniglot augmentation)."""
    d = config["data"]
    if d["rotate"] is not None:
        return d["rotate"]
    return d["dataset"] == "omniglot" and d["protocol"] == "cbfinn"


def regime(config: dict[str, Any]) -> str:
    return config["training"].get("regime", "meta")


def build_model(config: dict[str, Any], data: ClassImages, outputs: int | None = None) -> Conv4:
    """conv4 with an N-way head (`outputs` classes instead for the multiclass baseline)."""
    m = config["model"]
    _, _, channels, height, width = data.images.shape
    if height != width:
        raise UserError(f"conv4 expects square images, the data has {height}x{width}")
    ways = outputs or config["task"]["ways"]
    return Conv4(ways, channels, height, m["backbone"], m["filters"], m["batch_norm"])


def support_loss(logits: Tensor, labels: Tensor, reduction: str, shots: int) -> Tensor:
    """Per-task inner loss (T,): mean cross-entropy, or Finn's sum over N*K examples / K."""
    ce = F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none").view(labels.shape)
    return ce.mean(-1) if reduction == "mean" else ce.sum(-1) / shots


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-task accuracy (T,)."""
    return (logits.argmax(-1) == labels).double().mean(-1)


class Adapted(NamedTuple):
    """The inner loop's result: per-task parameters, and the support and query inputs in the form
    `stage` takes (images, or the body's features on the ANIL fast path)."""

    params: Params
    support: Tensor
    query: Tensor
    stage: str


@dataclass
class FewShotLearner:
    """One model and one inner-loop setting: adapt on each task's support set, predict its queries.

    `head_only` (adaptation within the head, i.e. ANIL) enables the fast path: the body runs
    once on the support set and once on the query set, the inner steps see only the cached
    features, and the outer gradient still reaches the body through them.
    """

    model: Conv4
    spec: AdaptationSpec
    lrs: list[float]
    first_order: bool
    reduction: str
    shots: int

    def __post_init__(self) -> None:
        self.adapted = self.spec.resolve(self.model)
        head = set(self.model.adaptation_layers()[-1][1])
        self.body_adapted = [name for name in self.adapted if name not in head]
        self.head_only = bool(self.adapted) and not self.body_adapted

    def run(self, params: Params, x: Tensor, stage: str = "full") -> Tensor:
        return functional_call(self.model, params, (x,), {"stage": stage})

    def adapt(self, params: Params, task: Task, fast: bool = True) -> Adapted:
        """Each task's adapted parameters (leading task axis) after the inner loop on its support set.

        Batch-norm running statistics (model.batch_norm=running) are updated from the query pass
        when the body runs here (ANIL fast path), otherwise in `query_logits`.
        """
        tasks = task.support_x.shape[0]
        if fast and self.head_only:
            support = self.run(params, task.support_x, "body")
            with self.model.tracking_stats():
                query = self.run(params, task.query_x, "body")
            stage = "head"
        else:
            support, query, stage = task.support_x, task.query_x, "full"

        def loss(p: Params) -> Tensor:
            return support_loss(self.run(p, support, stage), task.support_y, self.reduction, self.shots).sum()

        adapted = inner_update(params, loss, self.adapted, self.lrs, self.first_order, task_dim=tasks)
        return Adapted(adapted, support, query, stage)

    def query_logits(
        self, params: Params, task: Task, fast: bool = True, with_pre: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Post-adaptation query logits (T, N*Q, N), and if asked the support logits before
        adaptation (no grad; Finn's "pre-update" accuracy, cheap: the support set is small and
        ANIL has its features cached)."""
        a = self.adapt(params, task, fast)
        with self.model.tracking_stats() if a.stage == "full" else nullcontext():
            logits = self.run(a.params, a.query, a.stage)
        pre = None
        if with_pre:
            with torch.no_grad():
                pre = self.run(params, a.support, a.stage)
        return logits, pre


def nil_logits(features_s: Tensor, labels_s: Tensor, features_q: Tensor, ways: int) -> Tensor:
    """NIL read-out: softmax over the cosine similarities of each query to every support example,
    weighting the one-hot support labels (Matching Networks with a fixed encoder). (T, Q, N)."""
    sim = F.normalize(features_q, dim=-1) @ F.normalize(features_s, dim=-1).transpose(-1, -2)
    return sim.softmax(-1) @ F.one_hot(labels_s, ways).to(sim.dtype)


class ClassificationExperiment:
    """One meta-iteration = draw a meta-batch of tasks, adapt on support, Adam step on query loss.

    Metrics: `loss` (the outer loss: query cross-entropy after adaptation), `post_accuracy` (query
    set, after adaptation), `pre_accuracy` (support set before adaptation, as in Finn's logs: about
    1/N, since labels are assigned to classes at random per task; a sanity check, nearly free).
    """

    tensorboard_tags = {
        "pre_accuracy": "accuracy/pre_adaptation",
        "post_accuracy": "accuracy/post_adaptation",
        "loss": "train/loss",
        "iteration_s": "perf/iteration_s",
        "rss_mb": "perf/rss_mb",
    }
    progress = {"pre": "pre_accuracy", "post": "post_accuracy"}

    def __init__(
        self, config: dict[str, Any], rng: np.random.Generator, splits: dict[str, ClassImages] | None = None
    ) -> None:
        torch.set_num_threads(config["training"]["torch_threads"])
        self.config = config
        t, a = config["task"], config["adaptation"]
        splits = splits or load_splits(config)
        train = splits["train"]
        evaluation_sampler(config, splits["test"], seed=0)
        try:
            self.sampler = TaskSampler(
                train, t["ways"], t["shots"], t["queries"], rotates(config), seed=int(rng.integers(2**62))
            )
        except ValueError as e:
            raise UserError(f"task settings do not fit the training data: {e}") from None
        self.regime = regime(config)
        self.model = build_model(config, train, len(train) if self.regime == "multiclass" else None)
        self.model.train()
        if self.regime != "meta":  # no inner loop: the one accuracy is the training batch's
            self.progress = {"acc": "post_accuracy"}
        if self.regime == "multiclass":
            # Finn's standard-normal head suits 5-20 outputs adapted in an inner loop; over 1,100 classes
            # its logits start at std ~8 and Adam takes ~1,000 steps to shrink them. A plain classifier
            # gets nn.Linear's own initialisation.
            self.model.head.reset_parameters()
        self.learner = FewShotLearner(
            self.model,
            AdaptationSpec(a["spec"]),
            step_sizes(a["inner_lr"], a["inner_steps"]),
            a["first_order"],
            a["loss_reduction"],
            t["shots"],
        )
        body_adapted = self.learner.body_adapted
        if config["model"]["batch_norm"] == "running" and a["inner_steps"] > 0 and body_adapted:
            # one set of averages cannot serve both: adapting the body rescales its activations between
            # the support passes and the query pass (30-400x on Omniglot), so evaluation's support passes
            # would be normalised with the query pass's statistics
            raise UserError(
                f"model.batch_norm=running needs an inner loop that leaves the body alone; spec {a['spec']!r} "
                f"adapts {body_adapted[0]} and more: use model.batch_norm=batch (Finn et al.'s setting) or spec head"
            )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config["training"]["outer_lr"])
        self.iterations = config["training"]["iterations"]
        self.meta_batch_size = config["training"]["meta_batch_size"]

    def iteration(self, it: int) -> dict[str, float]:
        if self.regime == "multiclass":
            t = self.config["task"]
            x, y = self.sampler.sample_labelled(self.meta_batch_size * t["ways"] * (t["shots"] + self.sampler.queries))
            with self.model.tracking_stats():  # model.batch_norm=running: the averages evaluation uses
                logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            metrics = {"post_accuracy": accuracy(logits.detach(), y).item()}
        elif self.regime == "nil":
            task = self.sampler.sample_batch(self.meta_batch_size)
            # per-task batch statistics, support and query apart, as the NIL evaluation runs
            support = self.model(task.support_x, "body")
            with self.model.tracking_stats():  # from the query pass, as the meta regimes
                query = self.model(task.query_x, "body")
            probs = nil_logits(support, task.support_y, query, self.config["task"]["ways"])
            loss = F.nll_loss(probs.clamp_min(1e-12).log().flatten(0, 1), task.query_y.flatten())
            metrics = {"post_accuracy": accuracy(probs.detach(), task.query_y).mean().item()}
        else:
            task = self.sampler.sample_batch(self.meta_batch_size)
            logits, pre = self.learner.query_logits(meta_parameters(self.model), task, with_pre=True)
            loss = F.cross_entropy(logits.flatten(0, 1), task.query_y.flatten())
            metrics = {
                "pre_accuracy": accuracy(pre, task.support_y).mean().item(),
                "post_accuracy": accuracy(logits.detach(), task.query_y).mean().item(),
            }
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), **metrics}

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        for name, target in (("model", self.model), ("optimizer", self.optimizer), ("sampler", self.sampler)):
            load_weights(target, checkpoint_part(state, name))


def make_experiment(config: dict[str, Any], rng: np.random.Generator) -> ClassificationExperiment:
    return ClassificationExperiment(config, rng)


def trained_model(config: dict[str, Any], model_state: dict[str, Any], test: ClassImages) -> Conv4:
    """The trained model in eval mode, with an N-way head for test tasks. A multiclass-trained
    model's head (one output per training class) has no use there: it keeps a fresh one, unused
    by the NIL read-out and the layer captures of the body."""
    model = build_model(config, test)
    if regime(config) == "multiclass":
        model_state = {k: v for k, v in model_state.items() if not k.startswith("head.")}
        model_state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    load_weights(model, model_state)
    model.eval()
    return model


def evaluation_learner(
    config: dict[str, Any], model: Conv4, spec: str, inner_steps: int
) -> tuple[FewShotLearner, Params]:
    """The test-time inner loop (`inner_steps` first-order steps on the parameters of `spec`) and the
    detached meta-parameters it starts from: what evaluation, layer captures and the inference bench share."""
    lrs = evaluation_step_sizes(config, inner_steps)
    a = config["adaptation"]
    learner = FewShotLearner(model, AdaptationSpec(spec), lrs, True, a["loss_reduction"], config["task"]["shots"])
    return learner, {k: v.detach() for k, v in meta_parameters(model).items()}


EVAL_DRAW = 32
"""Test tasks are drawn in blocks of this many, whatever `training.meta_batch_size` says, so that runs
differing only in it (an ablation, or two configs with their own batch sizes) are read out on the same
test tasks for a seed. 32 is the Omniglot 5-way meta-batch, whose earlier readings this keeps."""


def evaluate(
    config: dict[str, Any],
    model_state: dict[str, Any],
    adapt: str,
    inner_steps: int,
    tasks: int,
    seed: int,
    data_root: str | None = None,
    splits: dict[str, ClassImages] | None = None,
) -> dict[str, Any]:
    """Mean query accuracy over `tasks` test-split tasks drawn with `seed`, 95% interval 1.96*sd/sqrt(n).

    `adapt` is an adaptation spec (full, head, none, freeze:K, parameter names) for `inner_steps`
    first-order steps, or `nil` (no inner loop, no head: the cosine read-out on body features).
    """
    torch.set_num_threads(config["training"]["torch_threads"])
    t = config["task"]
    test = (splits or load_splits(config, data_root, ("test",)))["test"]
    sampler = evaluation_sampler(config, test, seed)
    queries = sampler.queries
    if regime(config) == "multiclass" and adapt != "nil":
        raise UserError(f"a multiclass-trained model has no {t['ways']}-way head: evaluate it with --adapt nil")
    model = trained_model(config, model_state, test)
    learner, params = (None, None) if adapt == "nil" else evaluation_learner(config, model, adapt, inner_steps)
    per_task = []
    chunk = max(config["training"]["meta_batch_size"], 1)
    for start in range(0, tasks, EVAL_DRAW):
        drawn = sampler.draw(min(EVAL_DRAW, tasks - start))
        for first in range(0, len(drawn[0]), chunk):  # images of a meta-batch-sized piece at a time (memory)
            task = sampler.materialise(tuple(None if f is None else f[first : first + chunk] for f in drawn))
            with torch.no_grad():
                if learner is None:
                    s, q = model(task.support_x, "body"), model(task.query_x, "body")
                    logits = nil_logits(s, task.support_y, q, t["ways"])
                else:
                    logits, _ = learner.query_logits(params, task)
            per_task.append(accuracy(logits, task.query_y))
    acc = torch.cat(per_task)
    ci = 1.96 * acc.std().item() / math.sqrt(tasks) if tasks > 1 else 0.0
    return {
        "adapt": adapt,
        "tasks": tasks,
        "accuracy": acc.mean().item(),
        "ci95": ci,
        "inner_steps": 0 if adapt == "nil" else inner_steps,
        "inner_lrs": [] if learner is None else learner.lrs,
        "seed": seed,
        "ways": t["ways"],
        "shots": t["shots"],
        "queries": queries,
    }


def evaluate_run(config: dict[str, Any], state: dict[str, Any], args: Any) -> dict[str, Any]:
    """`metarl evaluate` for classification runs: CLI options override the evaluation section."""
    adapt, inner_steps, tasks, seed = evaluation_options(config, args)
    if args.adapt is None and (regime(config) != "meta" or config["adaptation"]["spec"] == "none"):
        adapt = "nil"  # no head that an inner loop could use: the paper reads these out with NIL
    data_root = getattr(args, "data_root", None)
    return evaluate(config, checkpoint_part(state["model"], "model"), adapt, inner_steps, tasks, seed, data_root)


ANALYSIS_QUERIES = 19  # per class (at most what the data holds): datapoints for CCA on small late conv maps


def analysis_probe(config: dict[str, Any], state: dict[str, Any], tasks: int, seed: int) -> Task:
    """Test-split tasks with `ANALYSIS_QUERIES` query images per class, the same for every model."""
    test = load_splits(config, config["data"]["root"], ("test",))["test"]
    queries = min(ANALYSIS_QUERIES, test.images.shape[1] - config["task"]["shots"])
    return evaluation_sampler(config, test, seed, queries).sample_batch(tasks)


def capture(config: dict[str, Any], state: dict[str, Any], probe: Task, spec: str | None = None, adapt: bool = True):
    """Each layer's output on the probe's queries before and after the test-time inner loop (post None if not adapt)."""
    torch.set_num_threads(config["training"]["torch_threads"])
    test = load_splits(config, config["data"]["root"], ("test",))["test"]
    model = trained_model(config, checkpoint_part(state["model"], "model"), test)
    spec = config["adaptation"]["spec"] if spec is None else spec
    learner, params = evaluation_learner(config, model, spec, config["evaluation"]["inner_steps"])
    as_lists = lambda d: {k: list(v.double().numpy()) for k, v in d.items()}  # noqa: E731
    with torch.no_grad():
        pre = as_lists(learner.run(params, probe.query_x, "layers"))
    if not adapt:
        return pre, None
    adapted = learner.adapt(params, probe, fast=False).params
    with torch.no_grad():
        return pre, as_lists(learner.run({k: v.detach() for k, v in adapted.items()}, probe.query_x, "layers"))
