"""The truth about a run on the host, from its processes: a closed tmux session does not end a run
whose trainer lives, and a hung trainer reads `stalled`. `fab` against the real local SSH host,
real tmux, real SIGSTOP/SIGCONT, the real host agent."""

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from tests.support.deploy_env import make_ready
from tests.support.helpers import read_status, wait_until
from tests.support.host_fakes import FAKE_CRONTAB, group_alive
from tests.support.standin_fixtures import on_standin

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def session_alive(env):
    return subprocess.run(["tmux", "has-session", "-t", "=" + env.inventory["tmux_session"]], capture_output=True).returncode == 0


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def flat(out):
    """The screen's text with the panel's borders and line breaks gone: its lines wrap where the terminal ends."""
    return " ".join(" ".join(line.strip().strip("│╭╮╰╯").split()) for line in out.splitlines())


def test_a_closed_tmux_session_with_the_trainer_alive_is_still_running_and_refuses_a_second_trainer(standin_ready):
    env = standin_ready  # the process around the training only: the stand-in trainer (tests/support/standin_trainer.py)
    env.configure(200)
    assert env.fab("train", "--run-name", "alive").returncode == 0
    wait_until(lambda: read_status(env.runs / "alive").get("epoch", 0) >= 1, what="epoch 1")
    trainer = read_status(env.runs / "alive")["pid"]
    launch = json.loads((env.runs / "alive" / "launch.json").read_text())
    os.kill(trainer, signal.SIGSTOP)  # a long epoch: the trainer acts on the hangup only once it runs again
    try:
        closed_session_with_a_live_trainer(env, trainer, launch)
    finally:
        if group_alive(launch["pgid"]):  # the test failed: leave nothing running
            os.killpg(launch["pgid"], signal.SIGKILL)


def closed_session_with_a_live_trainer(env, trainer, launch):
    subprocess.run(["tmux", "kill-session", "-t", "=" + env.inventory["tmux_session"]], check=True)
    assert not session_alive(env) and alive(trainer)

    monitor = env.fab("monitor")
    assert monitor.returncode == 0, monitor.out
    assert "RUNNING" in monitor.out and "VANISHED" not in monitor.out
    assert "is closed; the training's processes" in flat(monitor.out), monitor.out
    for task in (("train", "--resume"), ("deploy-full",), ("sync-code",)):
        refused = env.fab(*task)
        assert refused.returncode == 1, (task, refused.out)
        assert "Training alive is running on the host" in refused.out and f"pid {trainer} (" in refused.out, (task, refused.out)
        assert "python -m trainer train" in refused.out and "is gone" in refused.out, (task, refused.out)
    assert json.loads((env.runs / "alive" / "launch.json").read_text()) == launch  # no second launch
    assert not (env.runs / "alive" / "exit.json").exists()

    stop = env.fab("stop", "--wait", "60", timeout=180)  # by its process group; SIGCONT lets it act on the request
    assert stop.returncode == 0, stop.out
    wait_until(lambda: not group_alive(launch["pgid"]), timeout=10, what="no live process of the run")
    record = json.loads((env.runs / "alive" / "exit.json").read_text())
    assert record["exit_code"] == 3 and record["launch_id"] == launch["launch_id"], record
    assert record == json.loads((env.runs / "alive" / "exits" / f"{launch['launch_id']}.json").read_text())
    stopped = env.fab("monitor")
    assert stopped.returncode == 3 and "STOPPED" in stopped.out, stopped.out


@pytest.mark.xdist_group("ssh_login")  # autostop waits while any SSH login is open (test_host_agent opens one)
def test_a_hung_trainer_reads_stalled_and_autostop_counts_it_as_idle(fake_bin_host, standin_venv, tmp_path):
    env = make_ready(on_standin(fake_bin_host(crontab=FAKE_CRONTAB), standin_venv), tmp_path)  # the stand-in trainer
    fired = tmp_path / "powered off"
    env.configure(epochs=400)
    env.write(price_per_hour=2.0, autostop={"command": f"touch {shlex.quote(str(fired))}"},
              ec2={"poll_seconds": 0.5, "metadata_url": "http://127.0.0.1:9"})
    assert env.fab("train", "--run-name", "hung").returncode == 0
    wait_until(lambda: read_status(env.runs / "hung").get("epoch", 0) >= 2, 180, "epoch 2")
    env.write(stall_minutes=0.2)  # 12 s, several epochs here
    armed = env.fab("autostop", "--idle-minutes", "0.05")  # 3 s; also gives the host agent the stall threshold
    assert armed.returncode == 0 and "autostop: armed" in armed.out, armed.out
    assert json.loads((env.runs / ".agent" / "settings.json").read_text())["stall_seconds"] == 12
    time.sleep(5)
    assert not fired.exists()  # it waits while the training progresses

    trainer = read_status(env.runs / "hung")["pid"]
    os.kill(trainer, signal.SIGSTOP)  # hung: alive, and status.json is rewritten no more
    try:
        time.sleep(13)
        monitor = env.fab("monitor")
        screen = flat(monitor.out)
        assert monitor.returncode == 8, monitor.out
        assert "STALLED no progress for" in screen and "stalled after 0m12s" in screen, screen
        assert re.search(rf"its processes \([\d, ]*\b{trainer}\b[\d, ]*\) live but do not progress", screen), screen
        assert "fab stop" in screen
        assert "more to finish" not in screen and "ETA" not in screen  # no cost to finish a run that does not progress
        wait_until(fired.exists, 30, "autostop to fire for the stalled run")
        log = (env.runs / ".agent" / "agent.log").read_text()
        assert "run hung stalled at" in log and "autostop counts it as idle" in log, log
        assert alive(trainer)  # autostop ran its command; the run is still there to stop
    except BaseException:
        os.killpg(json.loads((env.runs / "hung" / "launch.json").read_text())["pgid"], signal.SIGKILL)
        raise
    os.kill(trainer, signal.SIGCONT)

    before = read_status(env.runs / "hung")["epoch"]
    wait_until(lambda: read_status(env.runs / "hung").get("epoch", 0) > before, 60, "the trainer to progress again")
    running = env.fab("monitor")
    assert running.returncode == 0 and "RUNNING" in running.out, running.out
    assert env.fab("stop", "--wait", "60").returncode == 0


def test_fab_train_resume_of_a_finished_run_is_refused_and_starts_nothing(finished_host):
    env = finished_host  # `fab train --run-name short` (2 epochs), ended (tests/support/fixtures_runs.py)
    launch = (env.runs / "short" / "launch.json").read_text()
    again = env.fab("train", "--resume")
    assert again.returncode == 1 and "Run short finished; there is nothing to resume" in again.out, again.out
    assert (env.runs / "short" / "launch.json").read_text() == launch and not session_alive(env)
