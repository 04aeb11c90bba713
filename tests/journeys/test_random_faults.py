"""Faults at seeded random times into a watched, stored run (tests/support/random_faults.py): one seed here;
`bench/random_faults.py --seeds N` runs any number and prints the table (bench/README.md)."""

import os

import pytest

from tests.support.random_faults import run_scenario

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
SEED = int(os.environ.get("FACENET_FAULT_SEED", "7"))


def test_a_watched_stored_run_survives_faults_at_random_times_with_one_trainer_and_every_epoch_once(aws, smoke_standin_venv, tmp_path,
                                                                                                    webhook):
    """The real trainer; deploy-full's smoke tests, of which nothing is checked here, are the stand-in's."""
    report = run_scenario(SEED, tmp_path, aws, smoke_standin_venv, webhook, faults=3, epochs=24)
    print(report.row())
    (tmp_path / "watch.out").write_text(report.watch_text)
    (tmp_path / "faults.txt").write_text(report.row() + "\n" + "\n".join(map(str, report.faults)) + "\n" + "\n".join(report.problems()))
    assert len(report.faults) == 3 or report.pointer.get("final"), report  # every fault went in (or the run ended first)
    assert report.problems() == [], (report.problems(), report.faults, report.watch_tail)


def test_a_run_whose_host_is_lost_in_its_first_epoch_starts_again_elsewhere_under_its_name_and_split(aws, slow_standin_venv, tmp_path,
                                                                                                     webhook):
    """Host a terminated during the run's first epoch: storage holds the run's pointer at epoch 0 with no backup. The
    watch starts the run again from epoch 0 on b (`deploy-full --resume-from` takes a run without backup/), with the
    split it had, and it finishes. What is checked is the process around the training (where it ran, its split, which
    epochs were trained): its trainer is the stand-in, whose epochs take 10 s (tests/support/standin_fixtures.py)."""
    import json
    from pathlib import Path

    from tests.support.helpers import wait_until
    from tests.support.random_faults import Scenario

    scenario = Scenario(11, tmp_path, aws, slow_standin_venv, faults=0, epochs=3, webhook=webhook)
    try:
        deploy = scenario.env.fab("-H", "a", "deploy-full", "--run-name", scenario.run, timeout=600)
        assert deploy.returncode == 0, deploy.out
        split = json.loads((scenario.hosts["a"] / "runs" / scenario.run / "split.json").read_text())
        scenario.start_watch()
        # Its first pointer stored ({} before it: a host lost then leaves storage nothing to start the run from)
        pointer = wait_until(scenario.stored_epoch, 120, "the run's first pointer in storage")
        assert pointer.get("epoch", 0) == 0, pointer  # still in its first epoch
        scenario.inject("terminate")
        while scenario.watch_alive():
            import time

            time.sleep(1)
        out = "".join("".join(o) for o in scenario.watch_out)
        assert scenario.report.watch_codes == [0], out
        assert "-H b deploy-full --resume-from" in out and "recovered: run faults on b" in out, out
        run_b = scenario.hosts["b"] / "runs" / scenario.run
        clips = lambda split: {k: sorted(Path(p).name for p in split[k]) for k in ("train", "val", "test")}  # noqa: E731
        assert clips(json.loads((run_b / "split.json").read_text())) == clips(split)  # the same clips, so the same test actors
        history = [int(line.split(",", 1)[0]) for line in (run_b / "history.csv").read_text().splitlines()[1:]]
        assert history == list(range(3)), history
        assert [p["event"] for p in webhook.posts].count("failed") == 0, webhook.posts
    finally:
        scenario.close()
