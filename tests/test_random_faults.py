"""Faults at seeded random times into a watched, stored run (tests/random_faults.py): one seed here;
`bench/random_faults.py --seeds N` runs any number and prints the table (bench/README.md)."""

import os

import pytest

from tests.random_faults import run_scenario

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
SEED = int(os.environ.get("FACENET_FAULT_SEED", "7"))


def test_a_watched_stored_run_survives_faults_at_random_times_with_one_trainer_and_every_epoch_once(aws, host_venv, tmp_path, webhook):
    report = run_scenario(SEED, tmp_path, aws, host_venv, webhook, faults=3, epochs=24)
    print(report.row())
    (tmp_path / "watch.out").write_text(report.watch_text)
    (tmp_path / "faults.txt").write_text(report.row() + "\n" + "\n".join(map(str, report.faults)) + "\n" + "\n".join(report.problems()))
    assert len(report.faults) == 3 or report.pointer.get("final"), report  # every fault went in (or the run ended first)
    assert report.problems() == [], (report.problems(), report.faults, report.watch_tail)
