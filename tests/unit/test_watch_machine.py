"""`fab watch`'s decisions (deploy/recovery/machine.py) and its settings, without SSH: each state of the run
as run_state.py reports it, and what the watch makes of it. The end-to-end tests are in tests/journeys/test_watch.py."""

import json

import pytest
import yaml

from deploy.errors import InventoryError, LocalInputError
from deploy.inventory import load_inventory
from deploy.recovery import hosts, machine

RECOVERY = {"hosts": ["b", "c"], "unreachable_minutes": 5, "max_restarts": 2, "poll_seconds": 30, "launch": {"type": None, "spot": False},
            "give_up_minutes": 30, "max_restarts_on_kill": 1}


def seen(state, **info):
    return {"reachable": True, "error": None, "info": {"state": state, **info}}


def record(**fields):
    return {"host": "a", "restarts": 0, "seen": True, "unreachable_since": None, **fields}


@pytest.mark.parametrize("state, expected", [("starting", "following"), ("running", "following"), ("stalled", "stalled")])
def test_a_living_run_is_followed(state, expected):
    d = machine.decide(record(), seen(state), 1000, RECOVERY)
    assert (d.state, d.action) == (expected, "wait")


def test_finished_ends_0_and_stopped_ends_3_without_a_restart():
    d = machine.decide(record(), seen("finished"), 0, RECOVERY)
    assert (d.state, d.action, d.exit_code) == ("finished", "end", 0)
    d = machine.decide(record(), seen("stopped", exit={"exit_code": 3, "requested": {"by": "`fab stop`"}}), 0, RECOVERY)
    assert (d.action, d.exit_code) == ("end", 3) and "stopped on a by `fab stop`: not restarted" in d.reason


def test_an_end_is_decided_on_the_exit_record_not_before():
    """status.json says stopped (or failed) while the launcher still lives: the exit record, which says why, comes next."""
    for state in ("stopped", "failed", "finished"):
        d = machine.decide(record(), seen(state, exit=None, processes=[{"pid": 42, "command": "bash launch_training.sh"}]), 0, RECOVERY)
        assert (d.state, d.action) == ("ending", "wait"), state


def test_a_stop_nobody_asked_for_is_a_lost_run():
    """A shutdown SIGTERMs the trainer, which stops as on `fab stop`; its exit record has no `requested`."""
    d = machine.decide(record(), seen("stopped", exit={"exit_code": 3}), 0, RECOVERY)
    assert d.action == "recover" and "without a stop being asked for" in d.reason
    assert machine.decide(record(), seen("stopped", exit=None), 0, RECOVERY).action == "recover"  # the launcher was killed too


@pytest.mark.parametrize("code", [2, 1])
def test_a_run_that_fails_on_its_own_is_not_restarted_and_the_watch_exits_with_its_code(code):
    info = {"exit": {"exit_code": code}, "status": {"error": {"type": "DataError", "message": "no valid file"}} if code == 2 else {}}
    d = machine.decide(record(), seen("failed", **info), 0, RECOVERY)
    assert (d.state, d.action, d.exit_code) == ("failed", "end", code)
    assert "is not restarted" in d.reason
    assert ("no valid file" if code == 2 else f"exit code {code}") in d.reason


def test_a_trainer_killed_by_sigkill_is_restarted_in_place_once_then_taken_for_the_oom_killer():
    """One kill is no proof of a repeatable out-of-memory: restarted from its last epoch up to max_restarts_on_kill."""
    killed = seen("failed", exit={"exit_code": 137, "reason": "killed by SIGKILL", "launch_id": "L2"}, status={"epoch": 7})
    d = machine.decide(record(), killed, 0, RECOVERY)
    assert (d.state, d.action) == ("killed", "restart") and "killed by SIGKILL (exit 137) at epoch 7" in d.reason, d
    # its restart did not start (the host went away meanwhile): the same kill, tried again, not a second one
    d = machine.decide(record(kills=[{"epoch": 7, "launch_id": "L2", "tries": 1}]), killed, 0, RECOVERY)
    assert (d.state, d.action) == ("killed", "restart") and "its restart did not start (try 1 of 5)" in d.reason, d
    d = machine.decide(record(kills=[{"epoch": 7, "launch_id": "L2", "tries": 5}]), killed, 0, RECOVERY)
    assert (d.action, d.exit_code) == ("end", 137) and "could not be restarted in 5 tries" in d.reason, d
    d = machine.decide(record(kills=[{"epoch": 7, "launch_id": "L1"}]), killed, 0, RECOVERY)  # L1 was killed before: a second kill
    assert (d.state, d.action, d.exit_code) == ("failed", "end", 137) and "out-of-memory killer" in d.reason, d
    more = {**RECOVERY, "max_restarts_on_kill": 3}
    assert machine.decide(record(kills=[{"epoch": 3}]), killed, 0, more).action == "restart"
    d = machine.decide(record(kills=[{"epoch": 3}, {"epoch": 7}]), killed, 0, more)  # twice at one epoch: the same OOM
    assert (d.action, d.exit_code) == ("end", 137), d
    d = machine.decide(record(), killed, 0, {**RECOVERY, "max_restarts_on_kill": 0})
    assert (d.action, d.exit_code) == ("end", 137) and "restarts on kill are off" in d.reason, d


def test_preempted_vanished_and_a_deleted_run_are_recovered():
    notice = {"exit": {"exit_code": 3, "preempted": {"notice": {"action": "terminate", "time": "T"}}}}
    assert machine.decide(record(), seen("preempted", **notice), 0, RECOVERY).action == "recover"
    assert "spot interruption notice: terminate at T" in machine.decide(record(), seen("preempted", **notice), 0, RECOVERY).reason
    assert machine.decide(record(), seen("vanished"), 0, RECOVERY).action == "recover"
    assert machine.decide(record(), seen("none", error="no run directory /x"), 0, RECOVERY).action == "recover"
    assert machine.decide(record(seen=False), seen("none"), 0, RECOVERY).action == "wait"  # not started yet


ENDED_WITH_A_RECORD = [
    ("preempted", {"exit_code": 3, "preempted": {"notice": {"action": "terminate", "time": "T"}}}, ("lost", "recover")),
    ("stopped", {"exit_code": 3}, ("lost", "recover")),  # nobody asked for the stop
    ("failed", {"exit_code": 1}, ("failed", "end")),
    ("superseded", {"exit_code": 5}, ("superseded", "end")),
]


@pytest.mark.parametrize("state, exit_record, ended", ENDED_WITH_A_RECORD, ids=[c[0] for c in ENDED_WITH_A_RECORD])
@pytest.mark.parametrize("training", [True, False])
def test_a_run_is_neither_moved_nor_ended_while_run_state_says_it_is_training(state, exit_record, ended, training):
    """run_state.py's `training` (a process of the launch's group lives) is the answer, whatever the state says: the
    watch waits and says why; once no process lives, it moves or ends the run as before."""
    processes = [{"pid": 42, "command": "python -m trainer train"}] if training else []
    d = machine.decide(record(), seen(state, exit=exit_record, processes=processes, training=training), 0, RECOVERY)
    if training:
        assert (d.state, d.action) == ("ending", "wait") and "the run's processes (42) still live" in d.reason, d
    else:
        assert (d.state, d.action) == ended, d


def test_an_unreachable_host_is_waited_for_then_the_run_is_moved():
    down = {"reachable": False, "error": "NoValidConnectionsError: refused", "info": None}
    d = machine.decide(record(unreachable_since=1000), down, 1000 + 4 * 60, RECOVERY)
    assert (d.state, d.action) == ("unreachable", "wait")
    d = machine.decide(record(unreachable_since=1000), down, 1000 + 5 * 60, RECOVERY)
    assert d.action == "recover" and "unreachable for 5.0 min (NoValidConnectionsError: refused)" in d.reason


def test_an_unreachable_host_whose_stored_epochs_still_arrive_is_not_moved():
    """Split brain: sshd down 36 s, the run moved to b while a's trainer went on (two trainers, two `finished`).
    Storage receiving new epochs of the followed launch is proof of life: the watch waits."""
    from deploy.recovery.record import Record

    down = {"reachable": False, "error": "NoValidConnectionsError: refused", "info": None}
    rec = Record.__new__(Record)
    rec.data = record(launch_id="L1", unreachable_since=1000, stored_epoch=None)
    rec.note_stored({"epoch": 5, "state": "running", "launch_id": "L1"}, 1010)  # the baseline: no proof yet
    assert rec.data["stored_epoch"] == 5 and not rec.data.get("stored_progress_at")
    rec.note_stored({"epoch": 9, "state": "running", "launch_id": "L2"}, 1100)  # another launch's pointer: not ours
    assert rec.data["stored_epoch"] == 5 and not rec.data.get("stored_progress_at")
    rec.note_stored({"epoch": 6, "state": "running", "launch_id": "L1"}, 1250)
    assert rec.data["stored_progress_at"] == 1250
    d = machine.decide(rec.data, down, 1000 + 5 * 60 + 10, RECOVERY)  # past unreachable_minutes, but epoch 6 came 60 s ago
    assert (d.state, d.action) == ("unreachable", "wait") and "its run goes on: storage received epoch 6 60 s ago" in d.reason, d
    d = machine.decide(rec.data, down, 1250 + 5 * 60, RECOVERY)  # no new epoch for unreachable_minutes: lost
    assert d.action == "recover" and "no new epoch in storage for 5.0 min" in d.reason, d


def test_after_max_restarts_the_watch_gives_up_with_exit_10():
    d = machine.decide(record(restarts=2), seen("vanished"), 0, RECOVERY)
    assert (d.state, d.action, d.exit_code) == ("gave-up", "end", 10) and "recovery.max_restarts (2) reached" in d.reason


def test_the_lost_host_is_tried_last():
    inv = type("Inv", (), {"recovery": {**RECOVERY, "hosts": ["a", "b", "c"]}})
    assert hosts.candidates(inv, "b") == ["c", "a", "b"]
    assert hosts.candidates(inv, "z") == ["a", "b", "c", "z"]  # not listed: still a candidate once it answers (it holds the run)


def write(tmp_path, data):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_settings_are_checked_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    inv = load_inventory(write(tmp_path, {"hosts": {"a": {"address": "1.2.3.4"}}}))
    assert inv.notify == {"webhook": None} and inv.recovery["unreachable_minutes"] == 5 and inv.recovery["max_restarts"] == 3
    with pytest.raises(InventoryError, match="'notify.webhook' .* expects an http\\(s\\) URL"):
        load_inventory(write(tmp_path, {"notify": {"webhook": "hooks.slack.com/x"}}))
    with pytest.raises(InventoryError, match="'recovery.max_restarts' .* 0 or more"):
        load_inventory(write(tmp_path, {"recovery": {"max_restarts": -1}}))
    assert inv.recovery["give_up_minutes"] == 30 and inv.recovery["max_restarts_on_kill"] == 1
    with pytest.raises(InventoryError, match="'recovery.max_restarts_on_kill' .* 0 or more"):
        load_inventory(write(tmp_path, {"recovery": {"max_restarts_on_kill": -1}}))
    with pytest.raises(InventoryError, match="'recovery.give_up_minutes' .* a number above 0"):
        load_inventory(write(tmp_path, {"recovery": {"give_up_minutes": 0}}))
    with pytest.raises(InventoryError, match="'recovery.unreachable_minutes' .* a number above 0"):
        load_inventory(write(tmp_path, {"recovery": {"unreachable_minutes": 0}}))
    with pytest.raises(InventoryError, match="'recovery.launch.spot' .* true or false"):
        load_inventory(write(tmp_path, {"recovery": {"launch": {"type": "g5.xlarge", "spot": "yes"}}}))
    inv = load_inventory(write(tmp_path, {"hosts": {"a": {"address": "1.2.3.4"}}, "recovery": {"hosts": ["a", "gone"]}}))
    with pytest.raises(LocalInputError, match="'recovery.hosts' .* names gone, not under hosts"):
        hosts.check_hosts(inv)


def test_a_requested_stop_is_in_the_exit_record_and_a_signal_from_elsewhere_is_not(tmp_path):
    """run_state.stop (`fab stop`, the budget cap, a spot notice) leaves .stop-request.json for the exit record."""
    import signal
    import subprocess
    import sys

    from tests.support.helpers import ROOT

    sys.path.insert(0, str(ROOT / "remote_scripts"))
    import run_state

    def launch(name):
        proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
        run_state.record_launch(str(tmp_path / name), proc.pid, "sleep 60")
        return proc

    asked = launch("asked")
    code, lines = run_state.stop(str(tmp_path / "asked"), "no-such-session", 5)
    asked.wait()
    asked_record = run_state.exit_record(str(tmp_path / "asked"))
    assert code == 0 and asked_record["exit_code"] == 3 and asked_record["requested"]["by"] == "`fab stop`", (asked_record, lines)
    assert not (tmp_path / "asked" / run_state.STOP_REQUEST).exists()

    shutdown = launch("shutdown")
    shutdown.send_signal(signal.SIGTERM)  # as a host's shutdown does
    shutdown.wait()
    shutdown_record = run_state.record_exit(str(tmp_path / "shutdown"), 3)  # what launch_training.sh writes after a trainer's exit 3
    assert "requested" not in shutdown_record
    d = machine.decide(record(), {"reachable": True, "info": {"state": "stopped", "exit": shutdown_record}}, 0, RECOVERY)
    assert d.action == "recover"


@pytest.mark.parametrize("state, exit_record, expected", [
    ("failed", {"exit_code": 137, "reason": "killed by SIGKILL"}, ("failed", 137)),
    ("failed", {}, ("failed", 1)),
    ("stopped", {"exit_code": 3, "requested": {"by": "fab stop"}}, ("stopped", 3)),
    ("finished", {"exit_code": 0}, ("finished", 0)),
    ("stopped", {"exit_code": 3}, None),  # a stop nobody asked for: the run is moved
    ("running", None, None), ("preempted", {"exit_code": 3}, None), ("vanished", None, None),
])
def test_a_stored_pointer_that_says_the_run_ended_by_itself_ends_the_watch(state, exit_record, expected):
    pointer = {"state": state, "epoch": 4, "host": "a", "written_at": "2026-11-30T04:00:00+00:00", "summary": {"exit": exit_record}}
    d = machine.stored_end(pointer, "r1")
    assert (None if d is None else (d.state, d.exit_code)) == expected
    if d is not None:
        assert d.action == "end" and "storage says run r1" in d.reason
    assert machine.stored_end({**pointer, "summary": "oops"}, "r1") is None or state in ("failed", "finished")


@pytest.mark.parametrize("held, stored_epoch, in_place", [
    (5, None, True),   # no storage: only its own copy
    (5, 5, True), (6, 5, True),
    (5, 8, False),     # the run went on elsewhere since: its older copy would redo epochs 6-8
    (None, 8, False), (None, None, False),
])
def test_a_host_holding_an_older_copy_than_storage_does_not_continue_the_run_in_place(held, stored_epoch, in_place):
    assert machine.resume_in_place(held, stored_epoch) is in_place


def test_a_run_lost_before_its_first_epoch_can_start_again_elsewhere_without_a_backup(tmp_path):
    """A host crash during the first epoch: storage held config, split, manifest and normalisation but no backup, and
    `deploy-full --resume-from` refused ("has no backup/"). Before its first epoch there is none to have: the run starts
    again from epoch 0 under its name and split. After an epoch, a missing backup is still refused."""
    from deploy.host.sync import check_run_to_resume

    run = tmp_path / "r1"
    run.mkdir()
    clip = "/data/crema-d/1001_IWL_ANG_XX.npz"
    (run / "manifest.json").write_text(json.dumps({"dirs": ["/data/crema-d"], "files": [{"path": clip, "status": "accepted"}]}))
    (run / "split.json").write_text(json.dumps({"train": [clip], "val": [], "test": []}))
    for name in ("config.yaml", "normalization.npz"):
        (run / name).write_text("x: 1\n")
    (run / "status.json").write_text('{"state": "running", "epoch": 0}')
    assert check_run_to_resume(run) == run
    (run / "status.json").write_text('{"state": "running", "epoch": 2}')
    with pytest.raises(LocalInputError, match="has no backup/"):
        check_run_to_resume(run)
    (run / "status.json").unlink()
    (run / "history.csv").write_text("epoch,loss\n0,1.7\n")
    with pytest.raises(LocalInputError, match="has no backup/"):
        check_run_to_resume(run)


def test_a_recovery_records_the_epoch_the_run_continued_from_not_the_one_read_before(tmp_path, monkeypatch):
    """Storage moved on between the watch's read (epoch 13) and deploy-full's download (epoch 14): the recovery said
    "from epoch 13" where the new host resumed at 14. deploy-full's downloaded backup says which."""
    import os
    import time

    from deploy.recovery import stored

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    assert stored.resumed_epoch("r1") is None
    for host, epoch, age in (("a", 13, 60), ("b", 14, 0)):
        backup = tmp_path / "state" / "resume" / host / "r1" / "backup"
        backup.mkdir(parents=True)
        (backup / "training_metadata.json").write_text(json.dumps({"epoch": epoch, "batch": -1}))
        os.utime(backup / "training_metadata.json", (time.time() - age, time.time() - age))
    assert stored.resumed_epoch("r1") == 14  # the latest download


def test_a_host_back_by_itself_clears_the_placement_clock_and_a_new_watch_forgets_the_old_runs_kills(tmp_path, monkeypatch):
    """A 12-minute outage with no free host started the placement clock; the host came back and the clock stayed, so a
    real loss hours later gave up at once. And a new run of the same name inherited the old run's kills (taken for OOM)."""
    from deploy.recovery.record import Record

    monkeypatch.setenv("FACENET_STATE_DIR", str(tmp_path / "state"))
    with Record.held("r1", "a") as rec:
        rec.data.update(placing_since=1000.0, placing_tries=3)
        rec.note(machine.Decision("following", "wait", "running on a"), seen("running", launch={"launch_id": "L1"}), 2000)
        assert rec.data["placing_since"] is None and rec.data["placing_tries"] == 0
        rec.data.update(kills=[{"epoch": 17, "launch_id": "L0"}], placing_since=5.0, launch_id="L1", restarts=2,
                        recoveries=[{"n": 1}, {"n": 2}])
        rec.transition("finished", "finished on a")
    with Record.held("r1", "a") as rec:  # a new watch of a new run named r1
        assert "kills" not in rec.data and "placing_since" not in rec.data and "launch_id" not in rec.data, rec.data
        assert rec.data["restarts"] == 0 and rec.data["recoveries"] == [] and rec.data["earlier"][0]["restarts"] == 2
        assert machine.decide(rec.data, seen("vanished"), 0, RECOVERY).action == "recover"  # not "max_restarts reached"
        assert machine.decide(rec.data, seen("failed", exit={"exit_code": 137, "launch_id": "L5"}, status={"epoch": 2}), 0,
                              RECOVERY).action == "restart"


def test_launch_ids_sort_as_the_launches_began_within_one_second_too():
    from trainer.storage.layout import launch_order

    assert launch_order("20261206T120000Z-1000") > launch_order("20261206T120000Z-999")  # as strings, the other way
    assert launch_order("20261206T120001Z-5") > launch_order("20261206T120000Z-99999")
    assert launch_order(None) < launch_order("20261206T120000Z-1")
    from deploy.runs.ledger import stored_as  # `fab down`'s guard: an earlier launch's final save does not cover a later one

    run = {"run": "r1", "started_at": "t0", "launch_id": "20261206T120000Z-999"}
    assert stored_as({"final": True, "run_started_at": "t0", "launch_id": "20261206T120000Z-1000"}, run)
    assert not stored_as({"final": True, "run_started_at": "t0", "launch_id": "20261206T120000Z-998"}, run)


def test_the_watchs_finished_notification_says_what_the_host_agent_says_once_it_saw_the_end():
    from deploy.recovery.watch import poweroff_phrase

    text = "the host powers off at 03:42 UTC (autostop: run r1 finished, its end stored: 10 idle minutes, if still idle)"
    agent = {"poweroff": {"at": 0, "text": text}, "polled_at": "2026-12-07T03:32:05+00:00"}
    assert poweroff_phrase(agent, "2026-12-07T03:32:01+00:00") == text
    assert poweroff_phrase(agent, "2026-12-07T03:32:05+00:00") is None  # a round of the same second may predate the end
    assert poweroff_phrase({**agent, "polled_at": "2026-12-07T03:31:59+00:00"}, "2026-12-07T03:32:01+00:00") is None
    assert poweroff_phrase(None, "2026-12-07T03:32:01+00:00") is None and poweroff_phrase(agent, None) is None
