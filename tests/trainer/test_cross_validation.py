"""Cross-validation in the trainer: every actor tested once, and a stopped run resumes in its fold."""

import json
import signal
import time

import numpy as np
import pytest

from tests.support.helpers import ROOT, TINY_CONFIG, run_trainer, write_config
from tests.support.helpers import read_status as status
from tests.support.warm_runner import start_trainer


@pytest.mark.slow
def test_cross_validation_tests_every_actor_once_and_resumes_in_the_fold_it_was_stopped_in(tmp_path, synth_crema):
    cfg = write_config(tmp_path / "cv.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 6}})
    run = tmp_path / "runs" / "cv"
    proc = start_trainer(["cv", "--config", cfg, "--data", synth_crema, "--folds", "3", "--out", tmp_path / "runs", "--run-name", "cv"],
                         cwd=ROOT)
    deadline = time.monotonic() + 300
    while not (status(run).get("fold") == 2 and status(run).get("epoch", 0) >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.1)
    assert status(run)["state"] == "running"  # fold 1 is done, the CV run is not
    started = json.loads((run / "fold-1" / "status.json").read_text())["started_at"]
    assert status(run)["started_at"] == started  # the run's start, not fold 2's: it names the run in storage and `fab watch`
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3, proc.stdout.read()
    fold1 = (run / "fold-1" / "metrics.json").stat().st_mtime
    assert not (run / "fold-2" / "metrics.json").exists() and (run / "fold-2" / "backup").is_dir()
    assert json.loads((run / "cv.json").read_text())["folds_done"] == 1

    resumed = run_trainer("train", "--resume", run, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (run / "fold-1" / "metrics.json").stat().st_mtime == fold1  # not trained again
    assert "(resumed)" in (run / "fold-2" / "train.log").read_text()
    for k in (2, 3):
        epochs = [line.split(",")[0] for line in (run / f"fold-{k}" / "history.csv").read_text().splitlines()[1:]]
        assert epochs == [str(e) for e in range(6)], (k, epochs)

    cv = json.loads((run / "cv.json").read_text())
    plan = json.loads((run / "cv-plan.json").read_text())
    assert cv["folds_done"] == 3 and status(run)["state"] == "finished" and status(run)["started_at"] == started
    assert json.loads((run / "fold-3" / "status.json").read_text())["started_at"] != started  # a fold of its own
    tested = [a for k in (1, 2, 3) for a in json.loads((run / f"fold-{k}" / "split.json").read_text())["test_actors"]]
    manifest = json.loads((run / "fold-1" / "manifest.json").read_text())
    assert sorted(tested) == sorted({f["actor"] for f in manifest["files"] if f["status"] == "accepted"})  # each actor once
    assert [f["test_actors"] for f in cv["per_fold"]] == plan["test_actors"]
    folds = [json.loads((run / f"fold-{k}" / "metrics.json").read_text())["test"] for k in (1, 2, 3)]
    for key in ("uar", "accuracy", "macro_f1"):
        assert cv["mean"][key] == pytest.approx(np.mean([f[key] for f in folds]))
        assert cv["std"][key] == pytest.approx(np.std([f[key] for f in folds], ddof=1))
    assert np.array_equal(np.sum([f["confusion_matrix"] for f in folds], axis=0), cv["pooled"]["confusion_matrix"])
    assert cv["pooled"]["samples"] == sum(f["samples"] for f in folds)
    assert "Cross-validation: 3/3 folds" in resumed.stdout
