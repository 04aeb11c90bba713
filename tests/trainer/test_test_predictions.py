"""A finished run keeps its test predictions (test_predictions.json), the very ones metrics.json's test scores come
from: `python -m trainer compare` pairs two runs on them."""

import json
from pathlib import PurePath

import numpy as np
import pytest

from trainer.results.compare import compare_runs
from trainer.results.metrics import classification_metrics

pytestmark = pytest.mark.slow


def test_a_finished_run_keeps_the_test_predictions_its_test_scores_come_from(trained_run, tmp_path):
    # `train --data SYNTH --epochs 2` (tests/support/fixtures_runs.py), read only
    predictions = json.loads((trained_run / "test_predictions.json").read_text())
    test = json.loads((trained_run / "metrics.json").read_text())["test"]
    split = json.loads((trained_run / "split.json").read_text())
    clips, classes = predictions["clips"], predictions["classes"]
    assert classes == test["classes"]
    assert sorted(c["clip"] for c in clips) == sorted(PurePath(p).name for p in split["test"])  # each test clip once
    assert {c["actor"] for c in clips} == set(split["test_actors"]) and {c["corpus"] for c in clips} == {"crema-d"}
    index = {name: i for i, name in enumerate(classes)}
    recomputed = classification_metrics([index[c["true"]] for c in clips], [index[c["predicted"]] for c in clips], classes)
    assert recomputed["confusion_matrix"] == test["confusion_matrix"]
    for key in ("uar", "accuracy", "macro_f1"):
        assert recomputed[key] == pytest.approx(test[key]), key
    same = compare_runs(trained_run, trained_run)  # a run against itself: no difference in any resample
    assert same["difference"]["uar"] == 0 and same["ci95"]["uar"] == [0, 0] and same["verdict"].startswith("no difference shown")
    assert np.isclose(same["a"]["uar"], test["uar"])



def test_compare_finds_a_trained_model_better_than_one_that_learnt_nothing(tmp_path):
    """A planted difference, from real trainings on the same data and seed (so the same test clips): A trained one
    epoch at a learning rate that leaves its weights where they started, B eight epochs at 0.01. `python -m trainer
    compare A B` says B is better, its paired interval of B - A in test UAR above 0, and draws the recall picture.
    (Two runs that differ by chance alone, whose interval holds 0: tests/unit/test_compare.py, on crafted predictions.)"""
    from tests.support.fixtures_runs import TINY_ARGS
    from tests.support.helpers import run_trainer
    from trainer.data.synth import write_corpus

    data = tmp_path / "crema-d"
    write_corpus(data, "crema-d", clips=600, seed=3)  # 95 test clips of 13 actors
    for run, args in (("a", ["--epochs", "1", "--set", "train.learning_rate=1e-9"]), ("b", ["--epochs", "8", "--set", "train.learning_rate=0.01"])):
        proc = run_trainer("train", "--data", data, "--out", tmp_path / "runs", "--run-name", run, *TINY_ARGS,
                           "--set", "train.pictures=false", *args, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    result = tmp_path / "compare.json"
    proc = run_trainer("compare", tmp_path / "runs" / "a", tmp_path / "runs" / "b", "--out", tmp_path / "out", "--result", result)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(result.read_text())
    low, high = got["ci95"]["uar"]
    assert 0 < low <= got["difference"]["uar"] <= high, (got["difference"], got["ci95"])
    assert got["message"].startswith("B is better"), got["message"]
    assert (tmp_path / "out" / "compare-a-vs-b.png").stat().st_size > 0
