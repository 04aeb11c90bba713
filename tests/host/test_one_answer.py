"""One answer to "is it training?": `fab instances`, `fab down`, `fab monitor` and the watch all ask the host's run
state (remote_scripts/run_state.py), which decides by the launch's process group, and the watch's decision follows it.
A closed tmux session whose trainer lives on is training for each of them.

Real parts: `fab` as a user types it; boto3 against moto's standalone server (the launched host, test_ec2_down's
fixture); a real sshd on 127.0.0.1; real tmux; the run recorded by the host's own record writer around a live process
in its own process group, standing in for the trainer.
"""

import json
import subprocess
import sys

import pytest

from tests.support.aws import instances_in
from tests.support.helpers import ROOT

pytestmark = [pytest.mark.ssh]


def test_a_closed_tmux_session_with_its_trainer_alive_is_training_for_instances_down_monitor_and_the_watch(launched_host,  # noqa: F811
                                                                                                          monkeypatch):
    env, _ = launched_host
    session = env.inventory["tmux_session"]
    run = env.runs / "alive"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train: {epochs: 5}\n")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "sleep 600"], check=True)
    trainer = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a process group of its own, as the launcher makes
    try:
        script = ROOT / "remote_scripts" / "run_state.py"
        subprocess.run([sys.executable, str(script), "record-launch", str(run), str(trainer.pid), "python -m trainer train"],
                       capture_output=True, text=True, check=True)
        (run / "status.json").write_text(json.dumps({"state": "running", "epoch": 1, "epochs": 5,
                                                     "started_at": "2026-12-06T10:00:00+00:00"}))
        subprocess.run(["tmux", "kill-session", "-t", "=" + session], check=True)
        assert subprocess.run(["tmux", "has-session", "-t", "=" + session], capture_output=True).returncode != 0
        assert trainer.poll() is None
        answers_training(env, monkeypatch)
    finally:
        trainer.kill()
        trainer.wait()


def answers_training(env, monkeypatch):
    env.env["COLUMNS"] = "250"  # the table's note column whole
    listed = env.fab("instances", "--idle-minutes", "0.01")  # 0.6 s: any host that is not training is flagged
    assert listed.returncode == 0, listed.out
    assert "IDLE" not in listed.out and "training" in listed.out and "alive (running)" in listed.out, listed.out

    refused = env.fab("down", "gpu1")
    assert refused.returncode == 1 and "run alive on gpu1 is running now" in refused.out, refused.out
    assert instances_in()[0]["State"]["Name"] == "running"

    monitor = env.fab("-H", "gpu1", "monitor")
    assert monitor.returncode == 0 and "RUNNING" in monitor.out, monitor.out

    from fabric import Config

    from deploy.host.connection import connect_host
    from deploy.inventory import load_inventory
    from deploy.recovery import hosts, machine, watch

    monkeypatch.setenv("FACENET_INVENTORY", env.env["FACENET_INVENTORY"])
    monkeypatch.setenv("FACENET_STATE_DIR", env.env["FACENET_STATE_DIR"])
    inv = load_inventory()
    target = connect_host(Config(), inv.for_host("gpu1"), "gpu1")
    try:
        seen = watch.look(target, inv.for_host("gpu1"), "alive")
    finally:
        target.conn.close()
    assert seen["reachable"] and seen["info"]["state"] == "running" and seen["info"]["training"], seen
    decision = machine.decide({"host": "gpu1", "restarts": 0, "seen": True}, seen, 0, inv.recovery)
    assert (decision.state, decision.action) == ("following", "wait"), decision
    free, why, _ = hosts.is_free(Config(), inv, "gpu1", "other")
    assert not free and why == "busy: training alive is running there", why
