"""`fab -H <cluster>`: two real sshd on 127.0.0.1 as two hosts (own remote dirs, own worker ports),
one training over both, watched, broken by a SIGKILL and resumed. It is also the trainer's test of a killed worker
(the chief records PeerLost and the cluster resumes from the chief's backup, every epoch once, the workers' weights
equal): tests/trainer/test_multi_worker.py does not train that case a second time."""

import json
import os
import signal
import subprocess
import time

import pytest

from deploy.demo.localhost import LocalSSHHost, free_port
from tests.support.deploy_env import DeployEnv
from tests.support.helpers import TINY_CONFIG, wait_until, write_config
from trainer.data.synth import write_corpus

pytestmark = pytest.mark.slow


def read(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@pytest.fixture
def pair(tmp_path, ssh_host, smoke_standin_venv):
    """An inventory with hosts gpu1 (the session's sshd) and gpu2 (a second sshd), cluster `pair`. The trainer is the
    real one; the smoke tests (checked only to have run on each host) are the stand-in's (tests/support/standin_fixtures.py)."""
    host_venv = smoke_standin_venv
    tmux_dir = tmp_path / "tmux2"  # another machine, another tmux server: the same session name must not clash
    tmux_dir.mkdir()
    second = LocalSSHHost(tmp_path / "sshd2", env={"TMUX_TMPDIR": tmux_dir}).start()
    root = tmp_path / "cluster deploy"
    root.mkdir()
    env = DeployEnv(root, ssh_host, host_venv)
    write_corpus(env.data, "crema-d", clips=60, seed=9)
    hosts = {}
    for name, server in (("gpu1", ssh_host), ("gpu2", second)):
        base = root / f"{name} root"
        hosts[name] = {**server.host_entry(), "worker_address": "127.0.0.1", "worker_port": free_port(),
                       "remote": {"project_dir": str(base / "project"), "venv": str(host_venv), "data_dir": str(base / "data"),
                                  "runs_dir": str(base / "runs")}}
    env.write(hosts=hosts, clusters={"pair": {"hosts": ["gpu1", "gpu2"]}})
    env.runs_of = {name: root / f"{name} root" / "runs" for name in hosts}
    env.configure = lambda epochs: env.write(train_config=str(write_config(
        root / f"train {epochs}.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": epochs, "patience": 100}})))
    env.configure(3)
    yield env
    for tmux_env in ({}, {"TMUX_TMPDIR": str(tmux_dir)}):
        subprocess.run(["tmux", "kill-session", "-t", f"={env.inventory['tmux_session']}"], capture_output=True, env={**os.environ, **tmux_env})
    for runs in env.runs_of.values():
        agent = read(runs / ".agent" / "state.json")
        if agent:
            try:
                os.kill(agent["pid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
    second.stop()


def test_a_cluster_deploys_trains_as_one_is_watched_and_resumes_after_a_killed_worker(pair):
    several = pair.fab("-H", "gpu1,gpu2", "deploy-full")
    assert several.returncode == 2 and "clusters:" in several.out, several.out
    one_host_only = pair.fab("-H", "pair", "sync-code")
    assert one_host_only.returncode == 2 and "acts on one host" in one_host_only.out, one_host_only.out

    pair.configure(30)  # enough that the stop below lands before the end (it took 8 epochs on a busy machine)
    deploy = pair.fab("-H", "pair", "deploy-full", "--run-name", "long", timeout=600)
    assert deploy.returncode == 0, deploy.out
    for name in ("gpu1", "gpu2"):
        for step in ("provision", "sync-code", "sync-data", "preflight", "smoke-test"):
            assert any(line.startswith(name) and "✓" in line and step in line for line in deploy.out.splitlines()), (name, step, deploy.out)
    chief, worker = pair.runs_of["gpu1"] / "long", pair.runs_of["gpu2"] / "long"
    # a new run by name on the remembered cluster (`fab train`'s own path) is refused while this one trains
    second = pair.fab("train", "--run-name", "second")
    assert second.returncode == 1 and "--restart" in second.out, second.out
    assert not [runs for runs in pair.runs_of.values() if (runs / "second").exists()]
    wait_until(lambda: (read(chief / "status.json") or {}).get("epoch", 0) >= 3, 180, "epoch 3")
    os.kill(read(worker / "status.json")["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: read(chief / "exit.json"), 120, "the chief to stop")
    assert time.monotonic() - killed < 60  # the collective fails at once; collective_timeout bounds a frozen peer
    assert read(chief / "exit.json")["exit_code"] == 4
    lost = read(chief / "status.json")
    assert lost["state"] == "failed" and lost["error"]["type"] == "PeerLost" and "lost contact with worker 1" in lost["error"]["message"], lost
    assert (chief / "backup").is_dir() and not (worker / "backup").exists()  # the resume below gives worker 1 the chief's
    monitor = pair.fab("monitor")
    assert monitor.returncode == 1, monitor.out
    assert "cluster FAILED: worker 1 failed first" in monitor.out and "killed by signal 9" in monitor.out, monitor.out

    resumed = pair.fab("train", "--resume")
    assert resumed.returncode == 0, resumed.out
    wait_until(lambda: (read(chief / "status.json") or {}).get("epoch", 0) >= 6, 180, "epoch 6")
    stopped = pair.fab("stop")  # every worker, gracefully: both finish the same epoch and record `stopped`
    assert stopped.returncode == 0, stopped.out
    assert read(chief / "exit.json")["exit_code"] == 3 == read(worker / "exit.json")["exit_code"]
    assert read(chief / "status.json")["epoch"] == read(worker / "status.json")["epoch"]
    assert pair.fab("monitor").returncode == 3
    resumed = pair.fab("train", "--resume")
    assert resumed.returncode == 0, resumed.out
    wait_until(lambda: read(chief / "exit.json") and read(chief / "exit.json")["exit_code"] == 0, 300, "the resumed run to finish")
    epochs = [int(line.split(",")[0]) for line in (chief / "history.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(30))
    wait_until(lambda: read(worker / "exit.json") and read(worker / "exit.json")["exit_code"] == 0, 60, "worker 1 to finish")
    assert read(chief / "status.json")["weights_sha256"] == read(worker / "status.json")["weights_sha256"]
    assert (chief / "best.keras").is_file() and (chief / "metrics.json").is_file() and (chief / "logs").is_dir()
    assert not [n for n in ("best.keras", "metrics.json", "logs", "history.csv", "backup") if (worker / n).exists()]
    assert read(chief / "status.json")["distribution"]["workers"] == read(worker / "status.json")["distribution"]["workers"]
    monitor = pair.fab("monitor")  # the cluster is remembered
    assert monitor.returncode == 0, monitor.out
    assert "0 (chief)" in monitor.out and "gpu2" in monitor.out and "cluster FINISHED (2 of 2 workers finished)" in monitor.out
