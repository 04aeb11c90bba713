"""Watching and controlling a run through `fab`, against the real local SSH host of the deploy tests:
monitor in every state, logs, stop, fetch-results, and the TensorBoard tunnel."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.support.deploy_env import run_status
from tests.support.helpers import wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def test_monitor_running_then_stop_then_stopped_and_fetch_leaves_backup_behind(host_ready):
    env = host_ready
    env.configure(200)
    assert env.fab("monitor").returncode == 5  # no run yet: says so, non-zero
    assert env.fab("train", "--run-name", "long-run").returncode == 0
    wait_until(lambda: run_status(env, "long-run").get("epoch", 0) >= 1, what="epoch 1")
    t0 = time.monotonic()
    running = env.fab("monitor")
    took = time.monotonic() - t0
    assert running.returncode == 0, running.out
    assert "RUNNING" in running.out and "/200" in running.out and "s/epoch" in running.out and "ETA" in running.out
    assert "val_uar" in running.out and "disk free" in running.out and "GPU        none" in running.out
    assert took < 10  # generous for CI; bench/deploy_latency.py measures the real figure

    stop = env.fab("stop", "--wait", "60")
    assert stop.returncode == 0 and "Stopped run long-run after epoch " in stop.out and "`fab train --resume`" in stop.out, stop.out
    stopped = env.fab("monitor")
    assert stopped.returncode == 3 and "STOPPED" in stopped.out and "fab train --resume" in stopped.out
    assert run_status(env, "long-run")["state"] == "stopped"
    assert (env.runs / "long-run" / "backup").is_dir()
    second = env.fab("stop")
    assert second.returncode == 0 and "No training is running" in second.out

    fetched = env.fab("fetch-results", "--dest", env.root / "my results")
    assert fetched.returncode == 0, fetched.out
    local = env.root / "my results" / "local" / "long-run"
    assert (local / "status.json").is_file() and (local / "train.log").is_file() and (local / "config.yaml").is_file()
    assert (local / "split.json").is_file() and list((local / "logs").rglob("*tfevents*"))
    assert not (local / "backup").exists() and "No metrics.json yet: the run is stopped" in fetched.out

    logs = env.fab("logs", "--lines", "5")
    assert logs.returncode == 0 and "trainer exited with code 3" in logs.out


def test_monitor_finished_and_fetch_results_prints_the_metrics(finished_host, tmp_path):
    env = finished_host  # `fab train --run-name short`, ended (tests/support/fixtures_runs.py)
    done = env.fab("monitor")
    assert done.returncode == 0 and "FINISHED" in done.out and "exit code 0" in done.out and "UAR" in done.out
    fetched = env.fab("fetch-results", "--dest", tmp_path / "results")
    assert fetched.returncode == 0, fetched.out
    assert "UAR" in fetched.out and "Confusion matrix" in fetched.out and "recall" in fetched.out
    local = tmp_path / "results" / "local" / "short"
    assert {"best.keras", "metrics.json", "history.csv", "config.yaml", "split.json"} <= {p.name for p in local.iterdir()}
    # the same essentials for someone logged into the host (the "host" is this machine)
    on_host = subprocess.run(["bash", env.remote_root / "project dir" / "remote_scripts" / "monitor_training.sh"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160"})
    assert on_host.returncode == 0, on_host.stderr
    assert "monitor: finished" in on_host.stdout and "short" in on_host.stdout and "FINISHED  exit code 0" in on_host.stdout
    assert "val_uar" in on_host.stdout and "none (no nvidia-smi)" in on_host.stdout and "disk free" in on_host.stdout
    assert "trainer exited with code 0" in on_host.stdout and "fab fetch-results" in on_host.stdout


def test_monitor_failed_shows_the_error_and_the_resume_command(standin_ready):
    env = standin_ready  # the process around the training only: the stand-in trainer (tests/support/standin_trainer.py)
    env.configure(2, feature_key="no_such_key")
    launch = env.fab("train", "--run-name", "broken")
    assert launch.returncode == 1 and "Training broken ended at once: " in launch.out, launch.out
    cause = launch.out.split("Training broken ended at once: ", 1)[1].splitlines()[0]  # the cause leads, in one line
    assert "no key 'no_such_key'" in cause, launch.out
    failed = env.fab("monitor")
    assert failed.returncode == 1, failed.out
    assert "FAILED" in failed.out and "exit code 2" in failed.out and "DataError" in failed.out
    assert "no key 'no_such_key'" in failed.out and "fab train --resume" in failed.out


def test_monitor_vanished_when_the_session_dies_without_an_exit_record(standin_ready):
    env = standin_ready  # the process around the training only: the stand-in trainer (tests/support/standin_trainer.py)
    env.configure(200)
    assert env.fab("train", "--run-name", "doomed").returncode == 0
    wait_until(lambda: run_status(env, "doomed").get("epoch", 0) >= 1, what="epoch 1")
    launcher = json.loads((env.runs / "doomed" / "launch.json").read_text())["pid"]
    os.killpg(launcher, signal.SIGKILL)  # what a reboot or `kill -9` does: nobody writes anything
    wait_until(lambda: subprocess.run(["tmux", "has-session", "-t", "=" + env.inventory["tmux_session"]]).returncode != 0,
               what="the tmux session to end")
    from tests.support.host_fakes import group_alive

    wait_until(lambda: not group_alive(launcher), what="the killed processes to be gone")  # a run lives while one does
    gone = env.fab("monitor")
    assert gone.returncode == 4, gone.out
    assert "VANISHED" in gone.out and "no exit record" in gone.out and "fab train --resume" in gone.out
    assert not (env.runs / "doomed" / "exit.json").exists()
    resumed = env.fab("train", "--resume")
    assert resumed.returncode == 0 and "Training resumed: run doomed" in resumed.out
    assert env.fab("stop", "--wait", "60").returncode == 0


def non_loopback_addresses():
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if ":" not in a and not a.startswith("127.")]


def listening_addresses(port):
    """Local addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.append(addr)
    return found


def test_tensorboard_tunnel_serves_tensorboard_on_localhost_only(host_ready):
    env = host_ready
    remote_port, local_port = env.inventory["tensorboard"]["remote_port"], env.inventory["tensorboard"]["local_port"]
    proc = env.popen("tensorboard-tunnel")
    try:
        def page():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{local_port}/", timeout=2).read().decode()
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                return None

        wait_until(page, timeout=120, what="TensorBoard through the tunnel")
        assert "tensorboard" in page().lower()
        # TensorBoard on the host listens on its loopback only (7F000001 as /proc writes 127.0.0.1)
        assert listening_addresses(remote_port) == ["0100007F"]
        for address in non_loopback_addresses():
            with pytest.raises(OSError), socket.create_connection((address, remote_port), timeout=2):
                pass
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and f"http://localhost:{local_port}/" in out and "Tunnel closed" in out
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{local_port}/", timeout=2)

    again = env.popen("tensorboard-tunnel")  # at once: the closed tunnel's TIME_WAIT leftovers do not block the port
    try:
        wait_until(lambda: "Ctrl-C closes it" in (again.stdout.readline() or "") or again.poll() is not None, what="the second tunnel")
        assert again.poll() is None
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)

    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", local_port))
        busy.listen()
        taken = env.fab("tensorboard-tunnel")
    assert taken.returncode == 2 and f"Local port {local_port} is already in use" in taken.out and "--local-port" in taken.out
