"""The whole path against a host like a fresh EC2 instance: a non-root user with passwordless
sudo and an empty home, the default `~/` remote paths, reached with `-H user@ip -i key`.

deploy-full (the venv created from the system python3 in that home), monitor, a kill, train
--resume, stop, fetch-results. When the suite runs as root it creates the user; otherwise
these tests skip with a one-line reason.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.support.deploy_env import DeployEnv
from tests.support.helpers import TINY_CONFIG, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow]
USER = "facenet-ubuntu"

# The inventory's `python`: the system python3 that creates the venv, as on Ubuntu. The venv then
# sees this checkout's packages through a .pth file, so that TensorFlow is not downloaded again.
VENV_PYTHON = """#!/bin/sh
/usr/bin/python3 "$@" || exit $?
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  site="$("$3/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "{site_packages}" > "$site/facenet-deploy-shared.pth"
fi
"""


def as_user(*cmd):
    return subprocess.run(["runuser", "-u", USER, "--", *cmd], capture_output=True, text=True)


@pytest.fixture(scope="module")
def ec2_host():
    if os.geteuid() != 0:
        pytest.skip("the EC2-like host needs root to create its user (run the suite as root)")
    for tool in ("useradd", "runuser", "sudo"):
        if not shutil.which(tool):
            pytest.skip(f"the EC2-like host needs {tool} (make test installs sudo when run as root)")
    site_packages = sysconfig.get_paths()["purelib"]
    subprocess.run(["userdel", "-r", USER], capture_output=True)  # an empty home, every time
    empty_skel = tempfile.mkdtemp()
    subprocess.run(["useradd", "--create-home", "--skel", empty_skel, "--shell", "/bin/bash", USER], check=True)
    subprocess.run(["usermod", "-p", "*", USER], check=True)  # no password, yet not "locked": sshd without PAM refuses locked ones
    Path(f"/etc/sudoers.d/{USER}").write_text(f"{USER} ALL=(ALL) NOPASSWD:ALL\n")
    os.chmod(f"/etc/sudoers.d/{USER}", 0o440)
    try:
        if as_user("test", "-r", os.path.join(site_packages, "tensorflow", "__init__.py")).returncode != 0:
            pytest.skip(f"{USER} cannot read this checkout's packages in {site_packages} (a folder on the way is private)")
        assert as_user("sudo", "-n", "true").returncode == 0
        from deploy.demo.localhost import LocalSSHHost

        shared = Path(tempfile.mkdtemp(prefix="facenet-ec2-"))  # readable by the user: sshd reads authorized_keys as it
        shared.chmod(0o755)
        python = shared / "python3"
        python.write_text(VENV_PYTHON.replace("{site_packages}", site_packages))
        python.chmod(0o755)
        config = shared / "tiny training.yaml"
        config.write_text(yaml.safe_dump({**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 200}}))
        config.chmod(0o644)
        host = LocalSSHHost(shared / "sshd", user=USER).start()
        host.python, host.train_config = python, config
        yield host
        host.stop()
    finally:
        as_user("tmux", "kill-server")
        subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
        subprocess.run(["userdel", "-r", USER], capture_output=True)
        os.remove(f"/etc/sudoers.d/{USER}")


def test_the_whole_path_on_an_ec2_like_host(ec2_host, tmp_path):
    from trainer.data.synth import write_corpus

    home = Path(f"/home/{USER}")
    assert sorted(p.name for p in home.iterdir()) == []  # empty, as on a fresh instance
    root = tmp_path / "laptop"
    root.mkdir()
    env = DeployEnv(root, ec2_host, venv=None)
    env.inventory.update(hosts={}, remote={}, python=str(ec2_host.python), train_config=str(ec2_host.train_config),
                         tmux_session="facenet-training", tensorboard={"session": "facenet-tensorboard"})
    env.write()
    write_corpus(env.data, "crema-d", clips=60, seed=4)
    runs = home / "facenet-runs"
    login = [f"{USER}@127.0.0.1:{ec2_host.port}", "-i", str(ec2_host.key_file)]

    deploy = env.fab("-H", login[0], *login[1:], "deploy-full", "--run-name", "ec2", timeout=900)
    assert deploy.returncode == 0, deploy.out
    assert deploy.out.startswith(f"host: {USER}@127.0.0.1:{ec2_host.port}, key {ec2_host.key_file}")
    assert "Creating venv ~/facenet-venv" in deploy.out and "Smoke test passed" in deploy.out
    for folder in ("facenet-deploy", "facenet-venv", "facenet-data", "facenet-runs"):
        assert (home / folder).is_dir() and (home / folder).stat().st_uid != 0, folder  # the user's, in its home

    wait_until(lambda: (runs / "ec2" / "status.json").exists() and json.loads((runs / "ec2" / "status.json").read_text())["epoch"] >= 1,
               timeout=180, what="epoch 1")
    running = env.fab("monitor")  # no flags: the remembered host, with its key
    assert running.returncode == 0 and "RUNNING" in running.out, running.out

    launch = json.loads((runs / "ec2" / "launch.json").read_text())
    os.killpg(launch["pgid"], signal.SIGKILL)  # a crash: nobody writes anything
    wait_until(lambda: as_user("tmux", "has-session", "-t", "=facenet-training").returncode != 0, what="the session to end")
    assert env.fab("monitor").returncode == 4
    resumed = env.fab("train", "--resume")
    assert resumed.returncode == 0 and "Training resumed: run ec2" in resumed.out, resumed.out
    wait_until(lambda: json.loads((runs / "ec2" / "status.json").read_text()).get("resumed_at"), what="the resumed run")
    stop = env.fab("stop", "--wait", "60", timeout=200)
    assert stop.returncode == 0, stop.out
    stopped = env.fab("monitor")
    assert stopped.returncode == 3, stop.out + stopped.out

    fetched = env.fab("fetch-results", "--dest", root / "results")
    assert fetched.returncode == 0, fetched.out
    local = root / "results" / f"{USER}@127.0.0.1_{ec2_host.port}" / "ec2"
    assert (local / "status.json").is_file() and (local / "best.keras").is_file() and not (local / "backup").exists()

    # autostop as that user: the default poweroff goes through `sudo -n`, so arming checks it works (armed for 30 idle
    # minutes, disarmed below: DeployEnv's harmless command set aside for this check only)
    env.write(autostop={"command": "sudo -n /sbin/poweroff"})
    armed = env.fab("autostop", "--idle-minutes", "30")
    assert armed.returncode == 0, armed.out
    assert ("autostop: armed: the host runs `sudo -n /sbin/poweroff` after 30 idle minutes (10 once its run's end is stored or "
            "fetched)") in armed.out, armed.out
    assert re.search(r"autostop\s+powers off at \d\d:\d\d if still idle", env.fab("monitor").out)
    sudoers = Path(f"/etc/sudoers.d/{USER}")
    sudoers.rename(tmp_path / "sudoers")
    try:
        refused = env.fab("autostop", "--idle-minutes", "30")
    finally:
        shutil.copy(tmp_path / "sudoers", sudoers)
        sudoers.chmod(0o440)
    assert refused.returncode == 1 and f"`sudo -n` asks for a password for {USER}" in refused.out, refused.out
    cancelled = env.fab("autostop", "--cancel")
    assert cancelled.returncode == 0 and "autostop: off" in cancelled.out, cancelled.out
