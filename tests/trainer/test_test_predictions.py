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
