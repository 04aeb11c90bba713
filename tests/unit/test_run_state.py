"""remote_scripts/run_state.py on its own: liveness from the process group, one exit record per launch.
Real processes and real /proc; no training, no SSH (fast)."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.helpers import ROOT, wait_until

sys.path.insert(0, str(ROOT / "remote_scripts"))
import liveness  # noqa: E402
import run_state  # noqa: E402


@pytest.fixture
def group():
    """A real process group: a `sleep` leading its own session, and a child in its group."""
    proc = subprocess.Popen(["bash", "-c", "sleep 60 & wait"], start_new_session=True)
    time.sleep(0.2)
    yield proc
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def launch_of(proc, **changes):
    return {"pgid": proc.pid, "leader_start": liveness.proc_stat(proc.pid)[2], "boot_id": liveness.boot_id(), **changes}


def test_a_live_group_is_alive_and_a_reused_pid_is_not(group):
    launch = launch_of(group)
    alive = liveness.live_processes(launch)
    assert group.pid in alive and len(alive) == 2  # the leader and its `sleep`
    # the same number, another process: its start time differs from the one recorded at launch
    assert liveness.live_processes(launch_of(group, leader_start=launch["leader_start"] - 1)) == []
    # recorded under another boot (the host rebooted, or the run was copied from another host)
    assert liveness.live_processes(launch_of(group, boot_id="00000000-0000-0000-0000-000000000000")) == []
    assert liveness.live_processes({"pgid": 1}) == [] and liveness.live_processes({}) == []
    os.killpg(group.pid, 9)
    group.wait()  # the leader is gone; its `sleep`, killed by the same signal, dies when the kernel next runs it
    wait_until(lambda: liveness.live_processes(launch) == [], 10, "the killed group's other member to die")


def test_the_leader_gone_with_its_group_alive_is_still_alive(tmp_path):
    """The launcher killed alone (kill -9 of its pid): the trainer, in its group, still runs."""
    proc = subprocess.Popen(["bash", "-c", "sleep 60 & echo $!; wait"], start_new_session=True, stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    try:
        launch = launch_of(proc)
        os.kill(proc.pid, 9)
        proc.wait()
        assert liveness.live_processes(launch) == [child]
    finally:
        os.kill(child, 9)


def test_each_launch_has_its_own_exit_record_and_a_late_one_never_takes_over(tmp_path, group):
    run = tmp_path / "r1"
    first = run_state.record_launch(str(run), group.pid, "python -m trainer train")
    assert json.loads((run / "launch.json").read_text())["launch_id"] == first
    # a second launch while a process of the first lives is refused, and writes nothing
    with pytest.raises(run_state.RunAlive, match=f"pid {group.pid}"):
        run_state.record_launch(str(run), os.getpid(), "python -m trainer train --resume")
    assert json.loads((run / "launch.json").read_text())["launch_id"] == first
    info = run_state.collect(str(tmp_path), "no-such-session", quick=True)
    assert info["state"] == "starting" and info["processes"][0]["pid"] == group.pid and not info["session_alive"]

    os.killpg(group.pid, 9)
    group.wait()
    time.sleep(1.1)  # launch ids have a one-second clock
    second = run_state.record_launch(str(run), os.getpid(), "python -m trainer train --resume")
    assert second != first
    run_state.record_exit(str(run), 1, launch_id=second)
    assert json.loads((run / "exit.json").read_text())["launch_id"] == second
    # the first launch's launcher records its end late: its own record, never the current one's
    run_state.record_exit(str(run), 3, launch_id=first)
    assert json.loads((run / "exits" / f"{first}.json").read_text())["exit_code"] == 3
    assert json.loads((run / "exit.json").read_text()) == json.loads((run / "exits" / f"{second}.json").read_text())
    assert run_state.exit_record(str(run))["exit_code"] == 1


def test_a_run_launched_before_launch_ids_reads_as_before(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "launch.json").write_text(json.dumps({"pid": 999999, "pgid": 999999, "command": "python -m trainer train"}))
    (run / "exit.json").write_text(json.dumps({"exit_code": 0, "ended_at": "2026-01-01T00:00:00+00:00"}))
    (run / "status.json").write_text(json.dumps({"state": "finished"}))
    (tmp_path / ".current").write_text("old\n")
    info = run_state.collect(str(tmp_path), "no-such-session", quick=True)
    assert info["state"] == "finished" and info["exit"]["exit_code"] == 0 and info["processes"] == []


def test_a_live_run_whose_status_is_older_than_the_threshold_is_stalled(tmp_path, group):
    run = tmp_path / "slow"
    run_state.record_launch(str(run), group.pid, "python -m trainer train")
    (run / "status.json").write_text(json.dumps({"state": "running", "epoch": 3, "slowest_epoch_seconds": 400}))
    old = time.time() - 30
    for name in ("status.json", "launch.json"):
        os.utime(run / name, (old, old))
    info = run_state.collect(str(tmp_path), "no-such-session", quick=True, stall_seconds=20)
    assert info["state"] == "stalled" and run_state.EXIT_CODES["stalled"] == 8
    assert info["stall"]["threshold_seconds"] == 20 and 29 <= info["stall"]["seconds_since_update"] < 60
    assert run_state.stalled_since(str(run), 20) == pytest.approx(old + 20, abs=1)
    # the default threshold: max(15 minutes, 3 x the slowest epoch so far)
    info = run_state.collect(str(tmp_path), "no-such-session", quick=True)
    assert info["state"] == "running" and info["stall"]["threshold_seconds"] == 1200
    assert run_state.stalled_since(str(run)) is None
    os.killpg(group.pid, 9)  # no process lives: not stalled, vanished
    group.wait()
    assert run_state.collect(str(tmp_path), "no-such-session", quick=True)["state"] == "vanished"


def test_wait_start_answers_when_the_run_leaves_starting_and_no_later_than_its_bound(tmp_path):
    """`fab train`'s one query after a launch: a trainer that fails its checks 2 s in is reported failed, not started
    (a fixed 1 s wait called such a run started whenever the host was slow); one still starting gets the bound."""
    runs, script = tmp_path / "runs", ROOT / "remote_scripts" / "run_state.py"
    trainer = subprocess.Popen(["bash", "-c", "sleep 2"], start_new_session=True)
    try:
        run_state.record_launch(str(runs / "r1"), trainer.pid, "python -m trainer train (a stand-in)")
        (runs / ".current").write_text("r1\n")

        def query(*extra):
            started = time.monotonic()
            proc = subprocess.run([sys.executable, str(script), "--runs-dir", str(runs), "--session", "none", "--quick", *extra],
                                  capture_output=True, text=True, timeout=60)
            return json.loads(proc.stdout)["state"], time.monotonic() - started

        assert query()[0] == "starting"
        waiter = subprocess.Popen([sys.executable, str(script), "--runs-dir", str(runs), "--session", "none", "--quick",
                                   "--wait-start", "30"], stdout=subprocess.PIPE, text=True)
        trainer.wait()
        launch_id = json.loads((runs / "r1" / "launch.json").read_text())["launch_id"]
        run_state.record_exit(str(runs / "r1"), 2, launch_id=launch_id)  # what the launcher does when the trainer exits 2
        assert json.loads(waiter.communicate(timeout=30)[0])["state"] == "failed"
    finally:
        trainer.kill()

    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        run_state.record_launch(str(runs / "r2"), live.pid, "python -m trainer train (a stand-in)")
        state, took = query("--run", "r2", "--wait-start", "1.5")
        assert state == "starting" and 1.5 <= took < 10, (state, took)
    finally:
        live.kill()
        live.wait()


def test_wait_start_never_answers_with_the_previous_launchs_state(tmp_path):
    """`fab train --resume` of a failed run: the wait read the old launch's `failed` before the new launcher had
    recorded itself (0.22 s), said "ended at once", and a second `train --resume` made two trainers of one run."""
    runs, script = tmp_path / "runs", ROOT / "remote_scripts" / "run_state.py"
    old = subprocess.Popen(["sleep", "0.3"], start_new_session=True)
    previous = run_state.record_launch(str(runs / "r1"), old.pid, "python -m trainer train (a stand-in)")
    old.wait()
    run_state.record_exit(str(runs / "r1"), 2, launch_id=previous)
    (runs / ".current").write_text("r1\n")

    def wait(bound):
        return subprocess.Popen([sys.executable, str(script), "--runs-dir", str(runs), "--session", "none", "--quick", "--run", "r1",
                                 "--wait-start", str(bound), "--previous-launch", previous], stdout=subprocess.PIPE, text=True)

    nobody = wait(1.5)  # no new launcher ever records itself: the answer says so, with the old state beside it
    info = json.loads(nobody.communicate(timeout=30)[0])
    assert info["state"] == "failed" and info["launch_recorded"] is False, info

    waiter = wait(6)  # still `starting` when it answers: at its bound, with the new launch
    time.sleep(1.2)  # the new launcher is slow to record itself (launch ids have a one-second clock)
    assert waiter.poll() is None, "answered with the previous launch's state"
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        current = run_state.record_launch(str(runs / "r1"), live.pid, "python -m trainer train --resume (a stand-in)")
        info = json.loads(waiter.communicate(timeout=30)[0])
        assert info["launch"]["launch_id"] == current != previous and info["state"] == "starting", info
        assert "launch_recorded" not in info
    finally:
        live.kill()
        live.wait()


def test_recorded_only_answers_once_the_new_launch_recorded_itself_though_it_still_starts(tmp_path):
    """A resumed worker of a cluster stays `starting` until every worker joined: its launch answers once it recorded itself."""
    runs, script = tmp_path / "runs", ROOT / "remote_scripts" / "run_state.py"
    old = subprocess.Popen(["sleep", "0.3"], start_new_session=True)
    previous = run_state.record_launch(str(runs / "r1"), old.pid, "python -m trainer train (a stand-in)")
    old.wait()
    run_state.record_exit(str(runs / "r1"), 4, launch_id=previous)
    time.sleep(1.1)
    live = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        run_state.record_launch(str(runs / "r1"), live.pid, "python -m trainer train --resume (a stand-in)")
        started = time.monotonic()
        out = subprocess.run([sys.executable, str(script), "--runs-dir", str(runs), "--session", "none", "--quick", "--run", "r1",
                              "--wait-start", "20", "--previous-launch", previous, "--recorded-only"], capture_output=True, text=True)
        info = json.loads(out.stdout)
        assert info["state"] == "starting" and info["launch"]["launch_id"] != previous and time.monotonic() - started < 10, info
    finally:
        live.kill()
        live.wait()


def test_the_log_shown_leaves_out_tensorflows_cpp_lines_and_raw_keeps_them(tmp_path):
    noise = ["E0000 00:00:1764000000.000000 4242 onednn_util.cc:55] oneDNN supports DT_BOOL only on platforms with AVX-512.",
             "I0000 00:00:1733512345.678901   12345 cpu_feature_guard.cc:210] This TensorFlow binary is optimized to use ...",
             "2024-12-06 10:00:00.123456: I tensorflow/core/util/port.cc:153] oneDNN custom operations are on.",
             "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags."]
    own = ["Epoch 1/2: loss 1.2 (a line the trainer wrote)", "DataError: a line with file.cc:55] in it, but not at its start",
           "E0904 19:50:19.201102   74352 cuda_dnn.cc:535] Could not create cudnn handle: CUDNN_STATUS_INTERNAL_ERROR",
           "2026-12-06 23:50:00.123456: F tensorflow/core/kernels/cuda_solvers.cc:94] Check failed: illegal memory access"]
    noise.append("E0000 00:00:1733512345.6 12 cuda_fft.cc:477] Unable to register cuFFT factory: Attempting to register factory")
    log = tmp_path / "train.log"
    log.write_text("\n".join([own[0], *noise * 400, *own[1:], *noise]) + "\n")  # the run's own lines far apart, noise between
    assert run_state.quiet(noise + own) == own  # errors that explain a crash, and every fatal line, stay
    assert run_state.tail(str(log), 4) == own  # reads back past the noise, however much of it there is
    assert run_state.tail(str(log), 3, raw=True) == noise[-3:]


def test_a_resumed_run_is_starting_not_failed_until_its_new_trainer_rewrites_status(tmp_path):
    runs = tmp_path / "runs"
    run = runs / "r2"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "failed", "error": {"message": "an upload has not completed"}}))
    time.sleep(0.01)
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)  # the new launch's trainer, still importing TensorFlow
    try:
        run_state.record_launch(str(run), proc.pid, "sleep 30")
        assert run_state.collect(str(runs), "no-such-session", "r2", quick=True)["state"] == "starting"  # not the old `failed`
        time.sleep(0.01)
        (run / "status.json").write_text(json.dumps({"state": "running", "epoch": 0}))  # its own word
        assert run_state.collect(str(runs), "no-such-session", "r2", quick=True)["state"] == "running"
    finally:
        proc.kill()
        proc.wait()
    (run / "status.json").write_text(json.dumps({"state": "failed", "epoch": 3, "error": {"message": "the old error"}}))
    time.sleep(0.01)
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)  # launched again; it dies before it writes status.json
    launch_id = run_state.record_launch(str(run), proc.pid, "sleep 30")
    proc.kill()
    proc.wait()
    run_state.record_exit(str(run), 137, launch_id=launch_id, reason="killed by SIGKILL (exit 137)")
    info = run_state.collect(str(runs), "no-such-session", "r2", quick=True)
    assert info["state"] == "failed" and info["stale_status"] and "error" not in info["status"] and info["status"]["epoch"] == 3

    from deploy.host.training import failure_text

    assert failure_text(info) == "killed by SIGKILL (exit 137)"  # this launch's end, not the previous launch's error


def test_help_lists_the_subcommands_and_a_subcommand_without_its_arguments_says_its_usage():
    script = str(ROOT / "remote_scripts" / "run_state.py")
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    assert all(f"python3 run_state.py {command} " in helped.stdout for command in run_state.SUBCOMMANDS), helped.stdout
    for command in ("activity", "runs"):
        out = subprocess.run([sys.executable, script, command], capture_output=True, text=True)
        assert out.returncode == 2 and f"usage: python3 run_state.py {command} RUNS_DIR" in out.stderr, out.stderr
