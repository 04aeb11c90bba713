"""One connection, one lock and one bookkeeping command for the tasks of a `fab` invocation (deploy/host/session.py).

Real parts: `fab` against the suite's sshd on 127.0.0.1, whose own log counts the SSH connections
("Accepted publickey") and remote commands ("Starting session"); rsync opens its own connection.
"""

import json
import shutil
import signal
import subprocess
import sys
import time

from tests.support.helpers import wait_until


def sshd_counts(ssh_host, action):
    """(connections, remote commands) that sshd logged while `action()` ran, and its result."""
    before = len(ssh_host.log_text())
    result = action()
    time.sleep(0.5)  # sshd logs a session as it starts; let the last lines land
    new = ssh_host.log_text()[before:]
    return new.count("Accepted publickey"), new.count("Starting session"), result


def test_a_noop_redeploy_runs_one_bookkeeping_command_and_its_two_rsyncs(host_ready, ssh_host, tmp_path):
    from deploy.host.provision import MARKER, marker_for
    from deploy.inventory import load_inventory

    env = host_ready
    venv = tmp_path / "host venv"  # provisioned already: pip in it, and the marker of these requirements (no GPU here)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env.write(remote={**env.inventory["remote"], "venv": str(venv)})
    (venv / MARKER).write_text(marker_for(load_inventory(env.root / "inventory.yaml"), 0) + "\n")
    first = env.fab("sync-code")  # the host's .deploy.env names the new venv: written once
    assert first.returncode == 0, first.out

    conns, commands, proc = sshd_counts(ssh_host, lambda: env.fab("provision", "sync-code", "sync-data"))
    assert proc.returncode == 0, proc.out
    assert "up to date (requirements unchanged)" in proc.out and "already up to date" in proc.out
    assert "verified: the host holds the same files and bytes (60 files" in proc.out
    assert (conns, commands) == (3, 3), proc.out  # the tasks' connection with its one command, and one per rsync
    assert not (env.runs / ".lock").exists()

    (env.data / "new clip.npz").write_bytes((env.data / sorted(p.name for p in env.data.glob("*.npz"))[0]).read_bytes())
    conns, commands, proc = sshd_counts(ssh_host, lambda: env.fab("sync-data"))
    assert proc.returncode == 0 and "1 file(s) sent" in proc.out and "(61 files" in proc.out, proc.out
    # a changed upload: the host's data folder is marked unverified before it, and checked (and unmarked) after it
    assert (conns, commands) == (2, 4), proc.out


def test_the_tasks_of_one_invocation_hold_one_lock_and_a_training_one_starts_stops_the_next(standin_ready):
    env = standin_ready  # the process around the training only: the stand-in trainer (tests/support/standin_trainer.py)
    env.write(rsync_args=["--bwlimit=300"])
    shutil.rmtree(env.remote_root / "data dir")
    slow = env.popen("sync-code", "sync-data")
    try:
        wait_until(lambda: (env.remote_root / "data dir" / "crema-d").exists(), what="sync-data's upload")
        holder = json.loads((env.runs / ".lock" / "holder.json").read_text())
        assert holder["task"] == "sync-code sync-data"  # taken once, by the first task, for both
        refused = env.fab("provision")
        assert refused.returncode == 1 and "Another command is changing this host: `fab sync-code sync-data`" in refused.out, refused.out
    finally:
        slow.send_signal(signal.SIGINT)
        out = slow.communicate(timeout=60)[0]
    assert slow.returncode == 130 and not (env.runs / ".lock").exists(), out  # released on the way out, interrupted mid-task
    env.write(rsync_args=[])
    finished = env.fab("sync-data")  # the interrupted upload, finished (the trainer refuses a data dir holding one)
    assert finished.returncode == 0 and "verified: the host holds the same files and bytes" in finished.out, finished.out
    assert not list((env.remote_root / "data dir").rglob(".rsync-partial/*")), finished.out

    env.configure(epochs=200)
    proc = env.fab("train", "--run-name", "busy", "sync-code", timeout=200)
    try:
        assert proc.returncode == 1 and "Training started: run busy" in proc.out, proc.out
        assert "Training busy is running on the host" in proc.out and "fab sync-code --restart" in proc.out  # checked again after train
        assert not (env.runs / ".lock").exists()
    finally:
        assert env.fab("stop", "--wait", "5", timeout=120).returncode == 0
