"""Aggregating similarity per layer over tasks, and the charts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metarl.analysis.report import MEASURES, bar_chart, body_average, compare, line_chart, write_json


def capture(rng, tasks=3, n=200):
    return {
        "conv1": [rng.normal(size=(n // 10, 8, 4, 4)) for _ in range(tasks)],
        "layer2": [rng.normal(size=(n, 6)) for _ in range(tasks)],
        "head": [rng.normal(size=(n, 5)) for _ in range(tasks)],
    }


def test_identical_captures_are_fully_similar_and_changed_head_is_not():
    rng = np.random.default_rng(0)
    a = capture(rng)
    b = {k: [x.copy() for x in v] for k, v in a.items()}
    b["head"] = [rng.normal(size=x.shape) for x in a["head"]]  # independent of a's head
    table = compare(a, b)
    for layer in ("conv1", "layer2"):
        assert table[layer]["cca"] == pytest.approx(1.0, abs=1e-6)
        assert table[layer]["cka"] == pytest.approx(1.0, abs=1e-6)
        assert table[layer]["cca_std"] == pytest.approx(0.0, abs=1e-6)
    assert table["head"]["cca"] < 0.3 and table["head"]["cka"] < 0.2
    assert body_average(table) == pytest.approx(dict.fromkeys(MEASURES, 1.0), abs=1e-6)


def test_conv_layers_compared_per_position_or_by_spatial_mean():
    rng = np.random.default_rng(1)
    a = capture(rng, tasks=1)
    # a spatially varying, per-position-invariant change: CCA by position sees a linear map
    mix = rng.normal(size=(8, 8))
    b = {"conv1": [np.einsum("nchw,dc->ndhw", a["conv1"][0], mix)]}
    a = {"conv1": a["conv1"]}
    assert compare(a, b, "positions")["conv1"]["cca"] == pytest.approx(1.0, abs=1e-6)
    assert compare(a, b, "mean")["conv1"]["cca"] == pytest.approx(1.0, abs=1e-6)


def test_mismatched_examples_are_rejected():
    rng = np.random.default_rng(2)
    a = {"l": [rng.normal(size=(10, 3))]}
    b = {"l": [rng.normal(size=(9, 3))]}
    with pytest.raises(ValueError, match="same examples"):
        compare(a, b)


def test_charts_and_json(tmp_path):
    rng = np.random.default_rng(3)
    a = capture(rng)
    table = compare(a, a)
    png = bar_chart(table, tmp_path / "fig2.png", "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
    png = line_chart({0: table, 10: table}, tmp_path / "fig3.png", "test")
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = write_json({"layers": table, "x": np.float32(1.5)}, tmp_path / "a.json")
    assert json.loads(out.read_text())["x"] == 1.5
    # non-finite values become null, so the file is strict JSON (no NaN token) that any reader takes
    out = write_json({"body": {"cca": float("nan")}, "r": [np.float64("inf"), 2.0], 3: (np.int64(4),)}, out)
    assert "NaN" not in out.read_text() and "Infinity" not in out.read_text()
    assert json.loads(out.read_text()) == {"body": {"cca": None}, "r": [None, 2.0], "3": [4]}


def test_relative_change_sees_a_shift_that_cca_and_cka_ignore():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 4))
    table = compare({"head": [x]}, {"head": [x + 0.5]})["head"]
    assert table["cca"] == pytest.approx(1.0, abs=1e-9) and table["cka"] == pytest.approx(1.0, abs=1e-9)
    assert table["relative_change"] == pytest.approx(0.5 * np.sqrt(300 * 4) / np.linalg.norm(x - x.mean(0)))
    assert compare({"head": [x]}, {"head": [x]})["head"]["relative_change"] == 0.0


def test_a_layer_constant_on_some_tasks_is_left_out_there_not_the_whole_analysis(tmp_path):
    from metarl.cli import format_analysis

    rng = np.random.default_rng(5)
    a = capture(rng)
    b = {k: [x.copy() for x in v] for k, v in a.items()}
    a["layer2"][1] = np.zeros_like(a["layer2"][1])  # every ReLU unit dead on task 1's states, before adaptation
    a["head"] = [np.ones_like(x) for x in a["head"]]  # constant on every task
    table = compare(a, b)
    assert table["conv1"]["cca"] == pytest.approx(1.0, abs=1e-6) and "undefined_tasks" not in table["conv1"]
    assert table["layer2"]["undefined_tasks"] == 1  # the mean runs over tasks 0 and 2, where a == b
    assert table["layer2"]["cka"] == pytest.approx(1.0, abs=1e-6)
    assert table["head"]["undefined_tasks"] == 3
    assert np.isnan(table["head"]["cca"]) and np.isnan(table["head"]["relative_change_std"])
    assert body_average(table)["cka"] == pytest.approx(1.0, abs=1e-6)
    # every layer undefined: the body reads NaN rather than failing
    assert np.isnan(body_average({"layer2": table["head"], "head": table["head"]})["cca"])
    assert bar_chart(table, tmp_path / "f.png", "t").read_bytes()[:4] == b"\x89PNG"
    back = json.loads(write_json({"layers": table}, tmp_path / "a.json").read_text())["layers"]
    assert back["head"]["cca"] is None
    assert line_chart({0: back, 5: table}, tmp_path / "g.png", "t").read_bytes()[:4] == b"\x89PNG"
    text = format_analysis({"run": "r", "layers": back, "body": body_average(table)})
    head_line = next(line for line in text.splitlines() if line.strip().startswith("head"))
    assert "n/a" in head_line and "3 task(s) left out" in head_line
