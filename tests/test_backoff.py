"""Tree back-off: consistent paths, backing off to the deepest confident level, "unknown", calibration."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from skulens.data.taxonomy import CategoryTree
from skulens.errors import SkulensError
from skulens.evaluation.backoff import (
    Backoff,
    TreeIndex,
    calibrate_thresholds,
    consistent_paths,
    coverage_curve,
    precision_threshold,
    reject_rate_threshold,
    tree_or_flat,
)
from tests.helpers import run_cli

# Leaves in class-index order: 0 Granny, 1 Golden, 2 Banana, 3 Carrot.
SHOP = CategoryTree(
    ["department", "kind", "variety"],
    [
        ("Fruit", "Apple", "Granny"),
        ("Fruit", "Apple", "Golden"),
        ("Fruit", "Banana", "Banana"),
        ("Veg", "Carrot", "Carrot"),
    ],
)


def test_paths_are_consistent_and_confidences_are_subtree_sums():
    probs = np.random.default_rng(0).dirichlet(np.full(4, 0.4), size=400)
    index = TreeIndex(SHOP)
    paths = consistent_paths(probs, index)
    for nodes, confs, p in zip(paths.nodes, paths.confidences, probs):
        chain = [index.node_paths[lv][n] for lv, n in enumerate(nodes)]
        assert all(chain[lv][:-1] == chain[lv - 1] for lv in range(1, 3)), chain  # child under its parent
        assert confs[0] >= confs[1] >= confs[2]
        leaves = [i for i, path in enumerate(SHOP.paths) if path[:3] == chain[2]]
        dept = [i for i, path in enumerate(SHOP.paths) if path[0] == chain[0][0]]
        assert confs[2] == pytest.approx(p[leaves].sum()) and confs[0] == pytest.approx(p[dept].sum())


def test_the_path_follows_the_likelier_department_not_the_single_likeliest_leaf():
    # Carrot is the likeliest leaf (0.40) but Fruit holds 0.60: the path stays inside Fruit.
    answer = Backoff(SHOP).answers(np.array([0.30, 0.25, 0.05, 0.40]))[0]
    assert answer.path == ["Fruit", "Apple", "Granny"] and not answer.unknown
    assert [round(lv.confidence, 2) for lv in answer.levels] == [0.60, 0.55, 0.30]


@pytest.mark.parametrize(
    "probs, path, confidence",
    [
        ([0.90, 0.05, 0.03, 0.02], ["Fruit", "Apple", "Granny"], 0.90),  # sure of the variety
        ([0.50, 0.47, 0.02, 0.01], ["Fruit", "Apple"], 0.97),  # "Apple, 97%" rather than a coin toss
        ([0.30, 0.20, 0.35, 0.15], ["Fruit"], 0.85),  # Apple 0.50 is below its 0.6 threshold
        ([0.30, 0.20, 0.10, 0.40], [], 0.60),  # not even the department: unknown
    ],
)
def test_backoff_answers_the_deepest_confident_level(probs, path, confidence):
    answer = Backoff(SHOP, [0.8, 0.6, 0.8]).answers(np.array(probs))[0]
    assert answer.path == path
    assert answer.unknown == (not path)
    assert answer.label == (path[-1] if path else "unknown")
    assert answer.confidence == pytest.approx(confidence)
    assert len(answer.levels) == 3  # every level's confidence is reported, whatever the answer


def test_a_level_whose_target_was_not_met_is_never_answered():
    answer = Backoff(SHOP, [0.5, 0.5, None]).answers(np.array([1.0, 0.0, 0.0, 0.0]))[0]
    assert answer.path == ["Fruit", "Apple"]


def test_flat_runs_back_off_to_unknown_only():
    backoff = Backoff(tree_or_flat(None, ["red", "green", "blue"]), [0.7])
    sure, unsure = backoff.answers(np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2]]))
    assert sure.path == ["red"] and not sure.unknown
    assert unsure.unknown and unsure.path == []


def test_thresholds_must_match_the_tree():
    with pytest.raises(SkulensError, match="2 threshold"):
        Backoff(SHOP, [0.5, 0.5])


def test_precision_threshold_known_answers():
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    right = np.array([True, True, False, True, False])
    # Precision of the top 1..5: 1, 1, 0.67, 0.75, 0.6; the widest cut meeting the target wins.
    assert precision_threshold(conf, right, 0.75) == 0.6
    assert precision_threshold(conf, right, 0.8) == 0.8
    assert precision_threshold(conf, np.zeros(5, bool), 0.5) is None
    # A tie cannot be split: 0.8 holds one right and one wrong answer, so 1.0 precision stops at 0.9.
    assert precision_threshold(np.array([0.9, 0.8, 0.8, 0.5]), np.array([True, True, False, True]), 1.0) == 0.9
    assert reject_rate_threshold(conf, 2) == 0.7  # 0.5 and 0.6 fall below it
    assert reject_rate_threshold(conf, 0) == 0.0 and reject_rate_threshold(conf, 5) > 0.9


# A two-level toy validation set with hand-worked answers. Leaves: a1, a2 (under A), b1, b2 (under B).
TOY_TREE = CategoryTree(["top", "leaf"], [("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")])
TOY_LABELS = np.array([0, 1, 0, 2, 0, 3, 2, 1])
TOY_PROBS = np.array(
    [
        [0.90, 0.05, 0.05, 0.00],  # leaf a1 0.90 right
        [0.05, 0.85, 0.10, 0.00],  # leaf a2 0.85 right
        [0.10, 0.80, 0.10, 0.00],  # leaf a2 0.80 wrong (is a1); top A right
        [0.00, 0.00, 0.70, 0.30],  # leaf b1 0.70 right
        [0.50, 0.40, 0.10, 0.00],  # leaf a1 0.50 right
        [0.30, 0.30, 0.20, 0.20],  # top A 0.60 wrong (is B)
        [0.10, 0.10, 0.45, 0.35],  # leaf b1 0.45 right
        [0.35, 0.30, 0.35, 0.00],  # leaf a1 0.35 wrong; top A 0.65 right
    ]
)


def test_calibration_on_a_toy_set_gives_the_hand_worked_thresholds():
    cal = calibrate_thresholds(TOY_PROBS, TOY_LABELS, TOY_TREE, target_precision=0.8)
    # Leaves sorted: .90 .85 .80x .70 .50 .45 .35x .30x -> precision 5/6 at 0.45, the widest cut >= 0.8.
    # Left to the top level: images 6 (A .60, wrong) and 8 (A .65, right) -> 0.65 keeps precision 1.
    assert cal.thresholds == pytest.approx([0.65, 0.45])
    assert [lv["answered"] for lv in cal.levels] == pytest.approx([1 / 8, 6 / 8])
    assert [lv["precision"] for lv in cal.levels] == pytest.approx([1.0, 5 / 6])
    assert cal.unknown_rate == pytest.approx(1 / 8) and cal.coverage == pytest.approx(7 / 8)
    assert cal.accuracy == pytest.approx(6 / 7)
    answers = Backoff(TOY_TREE, cal.thresholds).answers(TOY_PROBS)
    assert [a.label for a in answers] == ["a1", "a2", "a2", "b1", "a1", "unknown", "b1", "A"]


def test_unknown_threshold_from_a_reject_rate():
    cal = calibrate_thresholds(TOY_PROBS, TOY_LABELS, TOY_TREE, target_precision=0.8, unknown_reject_rate=0.25)
    # 2 of 8 images must be unknown: both images the leaf level left over fall below the top threshold.
    assert cal.unknown_rate == pytest.approx(0.25) and cal.unknown_method == "reject_rate"
    assert cal.thresholds[1] == pytest.approx(0.45)
    assert [a.unknown for a in Backoff(TOY_TREE, cal.thresholds).answers(TOY_PROBS)].count(True) == 2
    with pytest.raises(SkulensError, match="reject rate"):
        calibrate_thresholds(TOY_PROBS, TOY_LABELS, TOY_TREE, unknown_reject_rate=1.5)


def test_coverage_curve_known_points():
    curve = {round(p["threshold"], 2): p for p in coverage_curve(TOY_PROBS, TOY_LABELS, TOY_TREE)}
    assert curve[0.0]["coverage"] == 1.0 and curve[0.0]["accuracy"] == pytest.approx(5 / 8)
    # At 0.5: five leaves pass (one wrong), three back off to the top (one wrong).
    assert curve[0.5]["accuracy"] == pytest.approx(6 / 8) and curve[0.5]["finest_level_share"] == pytest.approx(5 / 8)
    assert curve[0.75]["unknown_rate"] == pytest.approx(2 / 8)


# --- with a trained run -------------------------------------------------------------------------


@pytest.mark.slow
def test_calibrate_cli_writes_thresholds_and_the_recognizer_uses_them(trained_run, tmp_path):
    from skulens.evaluation.calibration import THRESHOLDS_FILE
    from skulens.recognition.recognizer import Recognizer

    shared_run, data = trained_run
    run = tmp_path / "run"  # a copy: the fixture's run is shared with other tests
    shutil.copytree(shared_run, run)
    proc = run_cli("calibrate", run, data, "--json", "--target-precision", "0.9")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    saved = json.loads((run / THRESHOLDS_FILE).read_text())
    assert saved["level_names"] == ["class"] and saved["split"] == "val" and saved["n_images"] == 15
    assert record["levels"][0]["threshold"] == saved["levels"][0]["threshold"]
    photo = next((data / "test" / "red").iterdir())
    pred = Recognizer.load(run, engine="torch").predict(photo)
    assert pred.level_confidences[0]["confidence"] == pytest.approx(pred.confidence)
    assert pred.unknown == (pred.confidence < (saved["levels"][0]["threshold"] or np.inf))
    assert pred.answer_path == ([] if pred.unknown else [pred.label])

    # An impossible threshold makes every answer "unknown"; other weights make the file stale and ignored.
    saved["levels"][0]["threshold"] = 1.5
    (run / THRESHOLDS_FILE).write_text(json.dumps(saved))
    assert Recognizer.load(run, engine="torch").predict(photo).unknown
    saved["weights_sha256"] = "0" * 64
    (run / THRESHOLDS_FILE).write_text(json.dumps(saved))
    fresh = Recognizer.load(run, engine="torch")
    assert not fresh.calibrated and not fresh.predict(photo).unknown


def test_evaluation_reports_the_backoff_curve(trained_run, tmp_path):
    from skulens.data.datasets import load_dataset
    from skulens.evaluation.report import evaluate_run

    run, data = trained_run
    m = evaluate_run(run, load_dataset(data), "test", engine="torch", out_dir=tmp_path, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())["backoff"]
    assert (tmp_path / "backoff_curve.png").stat().st_size > 0
    assert saved["curve"][0]["threshold"] == 0.0 and saved["curve"][0]["coverage"] == 1.0
    assert saved["curve"][0]["accuracy"] == pytest.approx(m["top1"])  # a flat tree at threshold 0 is top-1
    assert "Back-off" in (tmp_path / "report.md").read_text()
