"""`fab train --folds`: a cross-validation on the host that monitor and fetch-results follow."""

import re

import pytest

from tests.support.helpers import read_status as status


@pytest.mark.ssh
@pytest.mark.slow
def test_fab_train_folds_runs_a_cross_validation_that_monitor_and_fetch_results_follow(host_ready, tmp_path):
    from tests.support.helpers import wait_until

    host_ready.configure(epochs=10, pictures=True)
    started = host_ready.fab("train", "--folds", "2", "--run-name", "cv")
    assert started.returncode == 0, started.out
    run = host_ready.runs / "cv"
    wait_until(lambda: status(run).get("fold") and status(run).get("epoch", 0) >= 1, 180, "a fold's first epoch")
    monitor = host_ready.fab("monitor")
    assert re.search(r"fold [12]/2, epoch \d+/10", monitor.out), monitor.out
    wait_until(lambda: (run / "exit.json").is_file(), 300, "the cross-validation to end")
    done = host_ready.fab("monitor")
    assert done.returncode == 0 and "FINISHED" in done.out, done.out
    assert re.search(r"folds\s+2/2 folds done\s+test UAR \d\.\d{3} ± \d\.\d{3}", done.out), done.out
    fetched = host_ready.fab("fetch-results", "--dest", tmp_path / "results")
    assert fetched.returncode == 0 and "cross-validation: 2/2 folds" in fetched.out and "mean ± sd" in fetched.out, fetched.out
    assert "Pictures: fold-1/confusion_matrix.png" in fetched.out, fetched.out
    assert (tmp_path / "results" / "local" / "cv" / "fold-2" / "learning_curves.png").is_file()
    moved = host_ready.fab("deploy-full", "--resume-from", tmp_path / "results" / "local" / "cv")
    assert moved.returncode == 2 and "a cross-validation run cannot move to another host yet" in moved.out, moved.out
    refused = host_ready.fab("train", "--folds", "1")
    assert refused.returncode == 2 and "--folds expects a number of folds, 2 or more" in refused.out, refused.out
