"""Safe on a real, paid GPU host: each test reproduces a defect found on a fresh machine or an
EC2-like host (issue "Safe on a real, paid GPU host"), against the real local SSH host."""

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.support.deploy_env import run_status as status
from tests.support.helpers import ROOT, fill_disk, mount_tmpfs, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


@pytest.fixture
def ready(standin_ready):
    """A host with code and 60 clips synced, with a long training configured. Its trainer is the stand-in
    (tests/support/standin_trainer.py): these tests check the process around a training, never its numbers."""
    standin_ready.configure(200)
    return standin_ready


def session_alive(env):
    return subprocess.run(["tmux", "has-session", "-t", "=" + env.inventory["tmux_session"]], capture_output=True).returncode == 0


# 5. names are paths -------------------------------------------------------------------------

def test_a_run_name_that_is_a_path_is_refused_before_anything_reaches_the_host(ready):
    proc = ready.fab("train", "--run-name", "exp/b")
    assert proc.returncode == 2 and "--run-name expects a name" in proc.out
    assert not (ready.runs / "exp").exists() and not session_alive(ready)


def test_a_hostile_current_run_cannot_make_fetch_results_write_outside_dest(ready):
    ready.runs.mkdir(parents=True, exist_ok=True)
    outside = ready.root / "precious.txt"
    outside.write_text("mine")
    (ready.runs / "evil").mkdir()
    for name in ("../../../precious.txt", "exp[/b]", ".."):
        (ready.runs / ".current").write_text(name + "\n")
        fetched = ready.fab("fetch-results", "--dest", ready.root / "results")
        assert fetched.returncode == 1 and "invalid run name" in fetched.out, fetched.out
        monitor = ready.fab("monitor")  # plain text, no markup crash
        assert monitor.returncode == 5 and "invalid run name" in monitor.out and "Traceback" not in monitor.out
    assert outside.read_text() == "mine" and not (ready.root / "results").exists()


# 6. a trainer that ignores SIGTERM ------------------------------------------------------------

def test_stop_ends_a_trainer_that_ignores_sigterm_and_leaves_nothing_running(ready, tmp_path):
    fake = tmp_path / "stubborn venv"
    (fake / "bin").mkdir(parents=True)
    status_file = ready.runs / "stubborn" / "status.json"  # past its start, as a trainer says it is: `fab train` need not wait
    (fake / "bin" / "python").write_text(f"#!/bin/bash\ntrap '' TERM HUP INT\necho 'ignoring signals'\n"
                                         f"echo '{{\"state\": \"running\", \"epoch\": 0}}' > {shlex.quote(str(status_file))}\n"
                                         "while true; do sleep 0.2; done\n")
    (fake / "bin" / "python").chmod(0o755)
    ready.write(remote={**ready.inventory["remote"], "venv": str(fake)})
    assert ready.fab("train", "--run-name", "stubborn").returncode == 0
    pgid = json.loads((ready.runs / "stubborn" / "launch.json").read_text())["pgid"]
    stop = ready.fab("stop", "--wait", "2", timeout=120)
    assert stop.returncode == 0, stop.out
    assert "stopping its process group" in stop.out
    alive = lambda: subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True).stdout  # noqa: E731
    wait_until(lambda: all(line.split()[1].startswith("Z") for line in alive().splitlines()), timeout=5,
               what="no live process of the training's group")  # zombies wait for their parent to reap them
    record = json.loads((ready.runs / "stubborn" / "exit.json").read_text())
    assert record["exit_code"] == 3 and "grace period" in record["reason"]
    assert ready.fab("monitor").returncode == 3 and not session_alive(ready)


# 9. one command at a time ----------------------------------------------------------------------

def test_a_second_command_is_refused_while_one_changes_the_host_and_while_a_training_runs(ready):
    ready.write(rsync_args=["--bwlimit=500"])
    (ready.remote_root / "data dir").exists() and shutil.rmtree(ready.remote_root / "data dir")
    slow = ready.popen("sync-data")
    try:
        wait_until(lambda: (ready.runs / ".lock" / "holder.json").exists(), what="the lock")
        refused = ready.fab("provision")
        assert refused.returncode == 1 and "Another command is changing this host: `fab sync-data`" in refused.out, refused.out
        assert "fab unlock" in refused.out
    finally:
        slow.send_signal(signal.SIGINT)
        slow.communicate(timeout=60)
    assert not (ready.runs / ".lock").exists()  # released on the way out, even when interrupted
    ready.write(rsync_args=[])
    assert ready.fab("sync-data").returncode == 0
    assert ready.fab("train", "--run-name", "busy").returncode == 0
    for task in ("sync-data", "sync-code", "provision", "smoke-test"):
        proc = ready.fab(task)
        assert proc.returncode == 1 and "Training busy is running on the host" in proc.out and f"fab {task} --restart" in proc.out
    restarted = ready.fab("sync-code", "--restart", timeout=200)
    assert restarted.returncode == 0 and "Stopping the running training first" in restarted.out
    assert json.loads((ready.runs / "busy" / "exit.json").read_text())["exit_code"] == 3


def test_unlock_removes_a_lock_left_by_a_task_that_died(ready):
    (ready.runs / ".lock").mkdir(parents=True)
    (ready.runs / ".lock" / "holder.json").write_text(json.dumps({"task": "deploy-full", "by": "me@laptop", "pid": 1, "since": "yesterday"}))
    assert "by me@laptop (pid 1) since yesterday" in ready.fab("sync-code").out
    unlocked = ready.fab("unlock")
    assert unlocked.returncode == 0 and "Removed the lock of `fab deploy-full` by me@laptop" in unlocked.out
    assert ready.fab("sync-code").returncode == 0

    # left by a `fab` of this machine that no longer runs (the host crashed under it): removed without a person
    import getpass
    import socket
    import subprocess

    from deploy.host.lock import machine_id

    gone = subprocess.Popen(["true"])
    gone.wait()
    (ready.runs / ".lock").mkdir(parents=True)
    holder = {"task": "train", "by": f"{getpass.getuser()}@{socket.gethostname()}", "pid": gone.pid, "since": "a minute ago",
              "machine": "another machine of the same name"}
    (ready.runs / ".lock" / "holder.json").write_text(json.dumps(holder))
    refused = ready.fab("sync-code")  # its pid means nothing here: not taken
    assert refused.returncode == 1 and "Another command is changing this host" in refused.out, refused.out
    (ready.runs / ".lock" / "holder.json").write_text(json.dumps({**holder, "machine": machine_id()}))
    again = ready.fab("sync-code")
    assert again.returncode == 0, again.out
    assert f"The host's lock was left by `fab train` by {getpass.getuser()}@{socket.gethostname()} (pid {gone.pid})" in again.out
    assert "which no longer runs on this machine: removing it" in again.out


# 11. killed by the OOM killer --------------------------------------------------------------------

def test_a_trainer_killed_with_sigkill_is_explained(ready):
    assert ready.fab("train", "--run-name", "oom").returncode == 0
    wait_until(lambda: status(ready, "oom").get("state") == "running", what="training")
    os.kill(status(ready, "oom")["pid"], signal.SIGKILL)  # what the OOM killer does
    wait_until(lambda: (ready.runs / "oom" / "exit.json").exists(), what="the exit record")
    proc = ready.fab("monitor")
    assert proc.returncode == 1 and "exit code 137" in proc.out
    assert "killed by SIGKILL (exit 137), usually the kernel's out-of-memory killer" in proc.out
    assert "lower train.batch_size" in proc.out and "exited with an error (above)" not in proc.out


# 8. a full disk -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(ready, tmp_path):
    mount = mount_tmpfs(tmp_path / "small disk", "24m")
    ready.write(remote={**ready.inventory["remote"], "runs_dir": str(mount / "runs")})
    yield mount
    ready.cleanup()
    time.sleep(0.5)
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_fails_the_run_with_that_reason_not_as_vanished(ready, small_disk):
    runs = small_disk / "runs"
    assert ready.fab("train", "--run-name", "big").returncode == 0
    wait_until(lambda: (runs / "big" / "status.json").exists() and json.loads((runs / "big" / "status.json").read_text())["epoch"] >= 1,
               what="epoch 1")
    fill_disk(small_disk / "filler")
    wait_until(lambda: (runs / "big" / "exit.json").exists(), timeout=180, what="the exit record")
    proc = ready.fab("monitor")
    assert proc.returncode == 1, proc.out
    assert "FAILED" in proc.out and "is full" in proc.out and "VANISHED" not in proc.out
    assert "LOW: a full disk fails the run" in proc.out and "Free space there first" in proc.out


# 10, 12. GPU host with a broken nvidia-smi, apt's lock, a venv without pip --------------------------

BROKEN_NVIDIA_SMI = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2
exit 9
"""
FAKE_APT = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/apt-calls.txt"
"""


@pytest.fixture
def broken_gpu_env(fake_bin_host):
    return fake_bin_host(nvidia_smi=BROKEN_NVIDIA_SMI, apt_get=FAKE_APT)


def test_a_broken_nvidia_smi_fails_unless_cpu_training_is_intended(broken_gpu_env):
    env = broken_gpu_env
    proc = env.fab("provision")
    assert proc.returncode == 1 and "nvidia-smi is installed but fails" in proc.out and "couldn't communicate" in proc.out
    assert "allow_cpu_training: true" in proc.out and "Installing" not in proc.out
    env.write(allow_cpu_training=True)
    proc = env.fab("provision")
    assert proc.returncode == 0, proc.out
    assert "warning: nvidia-smi fails" in proc.out and "[yellow]" not in proc.out


def test_missing_apt_packages_wait_for_apts_lock(broken_gpu_env):
    env = broken_gpu_env
    env.write(allow_cpu_training=True, apt_packages=["tmux", "facenet-no-such-package"])
    assert env.fab("provision").returncode == 0
    calls = (env.fake_bin / "apt-calls.txt").read_text()
    assert "-o DPkg::Lock::Timeout=600 update" in calls and "-o DPkg::Lock::Timeout=600 install -y -qq facenet-no-such-package" in calls


def test_a_venv_without_pip_is_repaired(deploy_env, tmp_path):
    venv = tmp_path / "pipless venv"
    subprocess.run([shutil.which("python3") or "python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    deploy_env.write(default_host="local", remote={**deploy_env.inventory["remote"], "venv": str(venv)},
                     pip={"extra_args": ["--no-index"], "cpu": ["pip"]})
    proc = deploy_env.fab("provision")
    assert "has no pip: repairing it" in proc.out, proc.out
    assert subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True).returncode == 0
    assert proc.returncode == 1 and "TensorFlow does not import" in proc.out  # the next problem, named: no TensorFlow in it


# 12. small ones ----------------------------------------------------------------------------------

def test_a_dangling_symlink_in_local_data_is_a_clear_error(deploy_env):
    from trainer.data.synth import write_corpus

    write_corpus(deploy_env.data, "crema-d", clips=12, seed=1)
    (deploy_env.data / "1099_IWL_ANG_XX.npz").symlink_to(deploy_env.root / "gone.npz")
    proc = deploy_env.fab("-H", "local", "sync-data")
    assert proc.returncode == 2 and "1099_IWL_ANG_XX.npz (a link to" in proc.out and "does not exist" in proc.out
    assert "Traceback" not in proc.out and not (deploy_env.remote_root / "data dir").exists()


def test_deploy_full_refuses_an_existing_run_name_before_the_smoke_test(ready):
    (ready.runs / "taken").mkdir(parents=True)
    (ready.runs / "taken" / "config.yaml").write_text("seed: 1\n")
    proc = ready.fab("deploy-full", "--run-name", "taken")
    assert proc.returncode == 2 and "Run taken already exists on the host" in proc.out and "[1/6]" not in proc.out


def test_tensorboard_refuses_a_port_that_another_process_holds(ready):
    port = ready.inventory["tensorboard"]["remote_port"]
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        proc = ready.fab("tensorboard-tunnel")
    assert proc.returncode == 1 and f"Port {port} on the host's 127.0.0.1 is in use by another process" in proc.out
    assert "TensorBoard started" not in proc.out


# 7. a dropped connection ---------------------------------------------------------------------------

class FreezableProxy:
    """A TCP relay on 127.0.0.1 in front of the SSH host; `freeze()` drops every byte from then on
    without closing anything: what a dead network or a stopped host looks like to the laptop."""

    def __init__(self, target_port):
        self.target_port, self.frozen = target_port, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
                if not self.frozen:
                    dst.sendall(data)
        except OSError:
            pass

    def freeze(self):
        self.frozen = True

    def close(self):
        self.server.close()


def test_a_dropped_connection_ends_monitor_follow_with_exit_6_instead_of_hanging(ready, ssh_host):
    assert ready.fab("train", "--run-name", "far").returncode == 0
    proxy = FreezableProxy(ssh_host.port)
    try:
        ready.write(hosts={"local": {**ssh_host.host_entry(), "port": proxy.port}},
                    ssh={"keepalive_interval": 1, "keepalive_count_max": 3})
        follow = ready.popen("monitor", "--follow")
        wait_until(lambda: status(ready, "far").get("epoch", 0) >= 1, what="epoch 1")
        time.sleep(2)
        proxy.freeze()
        t0 = time.monotonic()
        out, _ = follow.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        proxy.close()
    assert follow.returncode == 6, out
    assert "Lost the connection to local: no answer to SSH keepalives for 3 s" in out and "Traceback" not in out
    assert took < 30
    ready.write(hosts={"local": ssh_host.host_entry()})
    assert ready.fab("stop", "--wait", "30").returncode == 0


# 12. a launch fenced on its host (the run moved to another host) --------------------------------------

def test_a_fenced_launch_stops_without_a_result_and_its_old_copy_is_not_resumed(ready):
    """Exactly one trainer per run: `fab watch` fences the launch a run moved away from (RUN/fenced.json) once its
    host answers. Its trainer stops at its next epoch end (exit 5), the monitor says superseded (exit 11), and a
    `fab train --resume` there, which would make a second trainer of the run from an older copy, is refused."""
    import sys

    assert ready.fab("train", "--run-name", "moved").returncode == 0
    wait_until(lambda: status(ready, "moved").get("epoch", 0) >= 1, what="the first epoch")
    launch_id = json.loads((ready.runs / "moved" / "launch.json").read_text())["launch_id"]
    fence = subprocess.run([sys.executable, "remote_scripts/run_state.py", "fence", str(ready.runs / "moved"), launch_id,
                            "run moved moved to b (recovery 1)"], cwd=ROOT, capture_output=True, text=True)
    assert fence.returncode == 0, fence.stderr
    wait_until(lambda: (ready.runs / "moved" / "exit.json").exists(), what="the fenced trainer's exit")
    assert json.loads((ready.runs / "moved" / "exit.json").read_text())["exit_code"] == 5
    assert not (ready.runs / "moved" / "metrics.json").exists()
    monitor = ready.fab("monitor")
    assert monitor.returncode == 11 and "superseded" in monitor.out and "Nothing to do here" in monitor.out, monitor.out
    resumed = ready.fab("train", "--resume")
    assert resumed.returncode == 1 and "Run moved on this host was superseded" in resumed.out, resumed.out
    assert "run moved moved to b (recovery 1)" in resumed.out, resumed.out
