"""Config schema of few-shot classification runs (kind: classification).

Section names match the RL schema where they mean the same thing (adaptation, training,
evaluation, logging), so `metarl evaluate --adapt ...` and the analysis tools read both alike.
Importing this module registers the schema with `metarl.config`.
"""

from __future__ import annotations

from typing import Any

from metarl.config import register_defaults

CLASSIFICATION_DEFAULTS: dict[str, Any] = {
    "kind": "classification",
    "seed": 0,
    "data": {
        "dataset": "omniglot",
        # null: classification.data.resolve_data_root ($METARL_DATA, else ./data); the folder that
        # holds omniglot/ or miniimagenet/, e.g. /work/shared/data.
        "root": None,
        "protocol": "cbfinn",  # Omniglot split: cbfinn (1100/100/423, Finn) or vinyals (by alphabet)
        "split_seed": 1,  # shuffles the characters for the cbfinn split
        # Random 0/90/180/270 rotation per class per task; null = the protocol's own choice
        # (cbfinn: per task; vinyals: rotations are extra classes instead).
        "rotate": None,
    },
    "task": {
        "ways": 5,
        "shots": 1,
        "queries": None,  # query images per class at training time; null = shots (Finn's Omniglot)
        "test_queries": None,  # at evaluation; null = shots (Finn's test tasks, also MiniImageNet)
    },
    "model": {
        "backbone": "conv4-omniglot",  # or conv4-miniimagenet
        "filters": None,  # null = the backbone's reference width (64 Omniglot, 32 MiniImageNet)
        "batch_norm": "batch",  # batch statistics at train and test (transductive), or running
    },
    "adaptation": {
        "spec": "full",  # full (MAML), head (ANIL), none, freeze:K
        "inner_lr": 2.0,
        "inner_steps": 1,
        "first_order": False,
        # mean: cross-entropy averaged over the N*K support examples. sum_over_k: Finn's loss,
        # summed over N*K and divided by K = N x the mean, so lr a there equals lr N*a with mean.
        "loss_reduction": "mean",
    },
    "training": {
        # meta: MAML / ANIL / no inner loop as adaptation.spec says (spec none = the paper's
        # "multitask" baseline). multiclass: supervised over all training classes at once, as many
        # images per iteration as a meta-batch holds. nil: no head, the NIL cosine read-out is the
        # training loss too. The last two are evaluated with the NIL read-out (the paper's Table 5).
        "regime": "meta",
        "iterations": 60000,
        "meta_batch_size": 32,
        "outer_lr": 1e-3,
        "torch_threads": 1,
    },
    "evaluation": {"tasks": 600, "inner_steps": 10, "inner_lr": None, "seed": 1000},
    "logging": {"checkpoint_every": 100, "snapshot_every": 10000},
}

OPTIONAL: dict[str, tuple[type, ...]] = {
    "data.root": (str, type(None)),
    "data.rotate": (bool, type(None)),
    "task.queries": (int, type(None)),
    "task.test_queries": (int, type(None)),
    "model.filters": (int, type(None)),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.dataset": ("omniglot", "miniimagenet"),
    "data.protocol": ("cbfinn", "vinyals"),
    "model.backbone": ("conv4-omniglot", "conv4-miniimagenet"),
    "model.batch_norm": ("batch", "running"),
    "adaptation.loss_reduction": ("mean", "sum_over_k"),
    "training.regime": ("meta", "multiclass", "nil"),
}

register_defaults("classification", CLASSIFICATION_DEFAULTS, OPTIONAL, CHOICES)
