"""The estimate of the full training (trainer/training/estimate.py): its arithmetic, the smoke run's timing it
reads, and how the deploy and the demo say it. Whether it comes within 25 % of a real run here is a
measurement: bench/estimate.py."""

import json

import pytest

from trainer.training.estimate import call_lengths, combine
from trainer.training.status import RunStatus

SMOKE_TIMING = {"setup_seconds": 6.0, "first_epoch": {"epoch": 1, "steps_seconds": 4.0, "other_seconds": 1.5},
                "last_epoch": {"epoch": 2, "steps_seconds": 0.3, "other_seconds": 0.25}, "end_seconds": 3.0}
MEASURED = dict(epochs=10, steps_per_epoch=12, val_steps_per_epoch=5, score_steps=8, seconds_per_step=0.1,
                seconds_per_eval_step=0.04, first_call_seconds=5.0)


def test_the_estimate_counts_the_setup_first_calls_validation_each_epochs_callbacks_and_the_end():
    est = combine(**MEASURED, smoke_timing=SMOKE_TIMING)
    epoch = 12 * 0.1 + 5 * 0.04 + 0.25  # training steps, validation steps, the callbacks of every epoch
    assert est["seconds_per_epoch"] == pytest.approx(epoch)
    assert est["parts"] == pytest.approx({
        "setup": 6.0,                                # the smoke run's start to its first epoch
        "first_calls": 5.0 + (1.5 - 0.25),           # the full steps' traces (more than the smoke run's: 4.0 - 0.3), the
                                                     # first epoch's first save and pictures
        "epochs": 10 * epoch,
        "end": 3.0 + 8 * 0.04,                       # the smoke run's end, and the full run's scoring steps
    }, abs=0.01)
    assert est["seconds"] == pytest.approx(6.0 + 6.25 + 10 * epoch + 3.32, abs=0.05)
    old = 10 * (12 * 0.1 + 5 * 0.04)  # what the estimate was: the steps alone
    assert est["seconds"] > 1.9 * old


@pytest.mark.parametrize("part, change, grows_by", [
    ("first_call_seconds", 2.0, 2.0),
    ("seconds_per_eval_step", 0.01, 10 * 5 * 0.01 + 8 * 0.01),  # every epoch's validation, and the scoring at the end
    ("val_steps_per_epoch", 1, 10 * 0.04),
    ("epochs", 1, 12 * 0.1 + 5 * 0.04 + 0.25),
])
def test_each_measured_input_counts(part, change, grows_by):
    before = combine(**MEASURED, smoke_timing=SMOKE_TIMING)["seconds"]
    after = combine(**{**MEASURED, part: MEASURED[part] + change}, smoke_timing=SMOKE_TIMING)["seconds"]
    assert after - before == pytest.approx(grows_by, abs=0.11)


@pytest.mark.parametrize("key, change, grows_by", [
    ("setup_seconds", 2.0, 2.0),
    ("end_seconds", 2.0, 2.0),
    ("last_epoch", {"epoch": 2, "steps_seconds": 0.3, "other_seconds": 0.75}, 10 * 0.5 - 0.5),  # every epoch's, less once
    ("first_epoch", {"epoch": 1, "steps_seconds": 4.0, "other_seconds": 3.5}, 2.0),  # once
])
def test_each_part_of_the_smoke_runs_timing_counts(key, change, grows_by):
    before = combine(**MEASURED, smoke_timing=SMOKE_TIMING)["seconds"]
    changed = {**SMOKE_TIMING, key: change if isinstance(change, dict) else SMOKE_TIMING[key] + change}
    assert combine(**MEASURED, smoke_timing=changed)["seconds"] - before == pytest.approx(grows_by, abs=0.11)


def test_the_first_calls_are_at_least_what_the_smoke_runs_first_epoch_took_beyond_its_last():
    """Timed after the smoke run, the full config's first calls miss what a new trainer pays for its first trace."""
    est = combine(**{**MEASURED, "first_call_seconds": 1.0}, smoke_timing=SMOKE_TIMING)
    assert est["parts"]["first_calls"] == pytest.approx((4.0 - 0.3) + (1.5 - 0.25))


def test_a_one_epoch_smoke_run_counts_its_epochs_callbacks_for_every_epoch():
    one = {**SMOKE_TIMING, "last_epoch": SMOKE_TIMING["first_epoch"]}
    est = combine(**MEASURED, smoke_timing=one)
    assert est["parts"]["first_calls"] == pytest.approx(5.0) and est["epoch_other_seconds"] == 1.5


def test_every_call_length_of_an_epoch_is_traced_once():
    assert call_lengths(12, 1) == [1]
    assert call_lengths(12, 4) == [4]
    assert call_lengths(13, 4) == [4, 1]  # the shorter last call is a trace of its own
    assert call_lengths(3, 8) == [3]  # K is clamped to the epoch's steps


def test_status_json_says_where_a_sessions_time_went(tmp_path):
    status = RunStatus(tmp_path, epochs=3)
    assert status.data["timing"] == {}
    status.training_started()
    for epoch, steps, other in ((0, 4.0, 1.5), (1, 0.3, 0.2), (2, 0.31, 0.21)):
        status.epoch_timed(epoch, steps, other)
    status.update(state="finished")
    timing = json.loads((tmp_path / "status.json").read_text())["timing"]
    assert timing["first_epoch"] == {"epoch": 1, "steps_seconds": 4.0, "other_seconds": 1.5}
    assert timing["last_epoch"] == {"epoch": 3, "steps_seconds": 0.31, "other_seconds": 0.21}
    assert 0 <= timing["setup_seconds"] <= timing["setup_seconds"] + timing["end_seconds"] < 5
    resumed = RunStatus(tmp_path, epochs=3)  # a new session: its own timing
    assert resumed.data["timing"] == {}


def test_a_run_that_did_not_finish_has_no_end_seconds(tmp_path):
    status = RunStatus(tmp_path, epochs=3)
    status.training_started()
    status.epoch_timed(0, 1.0, 0.1)
    status.update(state="failed")
    assert "end_seconds" not in json.loads((tmp_path / "status.json").read_text())["timing"]


ESTIMATE = {"seconds_per_step": 0.1262, "seconds_per_eval_step": 0.0469, "steps_per_epoch": 12, "val_steps_per_epoch": 5, "epochs": 10,
            "global_batch": 32, "replicas": 1, "devices": ["default"], "frames": 79, "train_clips": 379, "mixed_precision": False,
            "first_call_seconds": 2.18, "seconds_per_epoch": 1.86, "epoch_other_seconds": 0.114,
            "parts": {"setup": 5.2, "first_calls": 2.8, "epochs": 18.6, "end": 2.3}, "seconds": 28.9}


def test_the_deploy_says_the_estimate_with_its_parts_and_cost():
    from deploy.host.checks import describe_estimate

    measured, full, parts = describe_estimate(ESTIMATE, "configs/demo.yaml", 1.006)
    assert measured.startswith("measured on this host: 0.1262 s per training step (configs/demo.yaml: global batch 32")
    assert measured.endswith("0.0469 s per validation step")
    assert full == ("estimate of the full training: up to 10 epochs x 12 steps (and 5 validation steps) = about 29 s, "
                    "about $0.01 at $1.006/h (early stopping may end it sooner)")
    assert parts == ("  the trainer's start 5 s, first calls (tracing) 3 s, epochs 19 s (1.86 s each, checkpoints and logs included), "
                     "scores and pictures at the end 2 s")
    assert "set price_per_hour" in describe_estimate(ESTIMATE, "configs/demo.yaml", None)[1]


def test_the_demo_compares_the_estimate_with_the_trainers_time(tmp_path):
    from deploy.demo.__main__ import training_time

    smoke, status = tmp_path / "smoke-test.json", tmp_path / "status.json"
    smoke.write_text(json.dumps({"ok": True, "estimate": {**ESTIMATE, "seconds": 54.0}}))
    status.write_text(json.dumps({"state": "finished", "compute_seconds": 58.1}))
    assert training_time(smoke, status) == ("Training time: estimated 54 s, took 58 s (+8 %) (the smoke test's estimate; "
                                            "the trainer's time from its start to its end, status.json compute_seconds)")
    status.write_text(json.dumps({"state": "finished", "compute_seconds": 40.0}))
    assert "(-26 %)" in training_time(smoke, status)
    line = training_time(smoke, tmp_path / "missing.json")
    assert line.startswith("Training time: not compared (no compute_seconds in ") and "missing.json" in line
