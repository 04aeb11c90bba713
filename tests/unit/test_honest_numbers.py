"""Honest numbers: the test split, intervals over actors, actor-grouped cross-validation.

The split, bootstrap and fold tests are fast (no TensorFlow); the CV run trains for real in a
subprocess, is stopped with SIGTERM in fold 2 and resumed.
"""

import subprocess
import sys
import time

import numpy as np
import pytest

from tests.support.helpers import ROOT
from tests.support.helpers import read_status as status
from tests.support.split_entries import CLASSES, entries
from trainer.data.split import make_split
from trainer.errors import DataError
from trainer.results.metrics import bootstrap_ci, classification_metrics, held_out_report
from trainer.training.cv import assign_folds


def actors_of(split, side):
    return {p.split("/")[-1].split("_")[0] for p in split[side]}


def test_the_test_split_is_actor_disjoint_stratified_and_reproducible():
    split = make_split(entries(24, per_class=2), "actor", 0.2, seed=3, classes=CLASSES, test_fraction=0.15)
    sides = [actors_of(split, s) for s in ("train", "val", "test")]
    assert all(not a & b for i, a in enumerate(sides) for b in sides[i + 1:])  # no actor in two of them
    assert sum(map(len, sides)) == 24 and set(split["test_actors"]) == {f"crema-d:{a}" for a in sides[2]}
    for side in ("train", "val", "test"):
        assert all(split["counts"][side][c] > 0 for c in CLASSES), (side, split["counts"][side])
    n = len(entries(24, per_class=2))
    assert 0.1 <= len(split["test"]) / n <= 0.25 and 0.1 <= len(split["val"]) / n <= 0.3
    assert split == make_split(entries(24, per_class=2), "actor", 0.2, seed=3, classes=CLASSES, test_fraction=0.15)
    other = make_split(entries(24, per_class=2), "actor", 0.2, seed=4, classes=CLASSES, test_fraction=0.15)
    assert other["test_actors"] != split["test_actors"]
    off = make_split(entries(24), "actor", 0.2, seed=3, classes=CLASSES, test_fraction=0)
    assert off["test"] == [] and off["test_actors"] == []


def test_a_test_split_needs_three_actors_and_says_how_to_turn_it_off():
    with pytest.raises(DataError, match="at least 3 actors.*split.test_fraction: 0"):
        make_split(entries(2), "actor", 0.2, seed=1, classes=CLASSES, test_fraction=0.15)


def simulated(actors, clips=30, k=6, seed=0):
    """Predictions of a classifier whose accuracy varies by actor (as it does for real)."""
    rng = np.random.default_rng(seed)
    skill = rng.uniform(0.3, 0.9, actors)
    y = rng.integers(0, k, (actors, clips))
    right = rng.random((actors, clips)) < skill[:, None]
    pred = np.where(right, y, (y + rng.integers(1, k, (actors, clips))) % k)
    return y.ravel(), pred.ravel(), np.repeat(np.arange(actors), clips)


def test_the_bootstrap_interval_holds_the_estimate_and_narrows_with_more_actors():
    widths = []
    for actors in (6, 24, 96):
        y, pred, who = simulated(actors)
        point = classification_metrics(y, pred, list("abcdef"))
        ci = bootstrap_ci(y, pred, who, 6, seed=1)
        for key in ("uar", "accuracy", "macro_f1"):
            assert ci[key][0] <= point[key] <= ci[key][1], (actors, key, point[key], ci[key])
        widths.append(ci["uar"][1] - ci["uar"][0])
    assert widths[0] > widths[1] > widths[2], widths
    # over actors, not clips: 24 actors of 30 clips are less certain than 720 independent clips would be
    y, pred, who = simulated(24)
    by_clip = bootstrap_ci(y, pred, np.arange(len(y)), 6, seed=1)
    assert bootstrap_ci(y, pred, who, 6, seed=1)["uar"][1] - bootstrap_ci(y, pred, who, 6, seed=1)["uar"][0] > \
        by_clip["uar"][1] - by_clip["uar"][0]


def test_per_corpus_figures_appear_when_both_corpora_are_tested():
    y, pred, who = simulated(8)
    corpora = np.where(who < 4, "crema-d", "ravdess")
    report = held_out_report(y, pred, who, corpora, list("abcdef"))
    assert set(report["per_corpus"]) == {"crema-d", "ravdess"} and report["actors"] == 8
    assert sum(p["samples"] for p in report["per_corpus"].values()) == report["samples"]
    assert "per_corpus" not in held_out_report(y, pred, who, np.full(len(y), "crema-d"), list("abcdef"))


def test_folds_partition_the_actors_and_each_holds_every_emotion():
    data = entries(23, per_class=2)
    folds = assign_folds(data, 5, seed=2)
    everyone = [a for fold in folds for a in fold]
    assert sorted(everyone) == sorted({e.actor for e in data}) and len(everyone) == len(set(everyone))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert folds == assign_folds(data, 5, seed=2) and folds != assign_folds(data, 5, seed=3)
    with pytest.raises(DataError, match="at least 30 actors"):
        assign_folds(data, 30, seed=2)


def test_the_deploy_side_draws_and_prints_results_without_numpy_tensorflow_or_matplotlib():
    """A laptop with only the `deploy` extra prints the fetched metrics, the CV table and the monitor."""
    code = ("import sys, fabfile, trainer.results.report, trainer.results.run_view; "
            "print(sorted(m for m in ('numpy', 'tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_cross_validation_status_counts_the_folds_still_to_come_in_its_eta(tmp_path):
    from trainer.training.status import RunStatus

    (tmp_path / "fold-2").mkdir()
    fold = RunStatus(tmp_path / "fold-2", epochs=10, mirror=(tmp_path / "status.json", {"fold": 2, "folds": 4}))
    fold._t0 = time.monotonic() - 40  # 4 epochs in 40 s: 10 s per epoch (from now: not counting the set-up's own writes)
    fold.epoch_done(3, {"val_uar": 0.5}, "val_uar", "max", initial_epoch=0)
    own, whole = status(tmp_path / "fold-2"), status(tmp_path)
    assert whole["fold"] == 2 and whole["folds"] == 4 and whole["epoch"] == 4
    assert own["seconds_per_epoch"] == pytest.approx(10, abs=0.1) and own["eta_seconds"] == pytest.approx(60, abs=1)
    assert whole["eta_seconds"] == pytest.approx(60 + 2 * 10 * 10, abs=2)  # this fold's 6 epochs, then folds 3 and 4
    fold.update(state="finished")
    assert status(tmp_path)["state"] == "running"  # fold 2 of 4 done: the run goes on
