"""A host's own folders (`hosts.<name>.remote`) apply to every task that acts on it, named with -H
or remembered, not only inside a cluster. Real sshd, tmux and rsync; the two inventory hosts are the
same machine, so where each task wrote and read shows which folders it used. The trainings only show where
the run's files went: the stand-in trainer's (tests/support/standin_trainer.py), its smoke test too."""

import shutil
from pathlib import Path

import pytest

from tests.support.helpers import TINY_CONFIG, read_status, wait_until, write_config

pytestmark = [pytest.mark.ssh, pytest.mark.slow]


def test_every_task_uses_the_named_hosts_own_folders(standin_env, tmp_path):
    from trainer.data.synth import write_corpus

    env = standin_env
    write_corpus(env.data, "crema-d", clips=60, seed=9)
    own = env.remote_root / "b's own"
    b = {**env.inventory["hosts"]["local"],
         "remote": {"project_dir": str(own / "code"), "data_dir": str(own / "data"), "runs_dir": str(own / "runs")}}
    config = write_config(tmp_path / "long.yaml", **{**TINY_CONFIG, "train": {**TINY_CONFIG["train"], "epochs": 400}})
    env.write(hosts={"b": b}, train_config=str(config))
    shared = env.inventory["remote"]
    runs = own / "runs"

    for task in ("provision", "sync-code", "sync-data"):
        done = env.fab("-H", "b", task)
        assert done.returncode == 0, done.out
    assert (own / "code" / "trainer" / "training" / "run.py").is_file()
    assert sorted(p.name for p in (own / "data" / "crema-d").glob("*.npz"))[:1]
    assert (runs / ".agent" / "heartbeat").is_file()  # every task's first command, in b's runs dir
    for key in ("project_dir", "data_dir", "runs_dir"):  # the global folders were never made
        assert not Path(shared[key]).exists(), key

    train = env.fab("-H", "b", "train", "--run-name", "in-b")
    assert train.returncode == 0, train.out
    wait_until(lambda: read_status(runs / "in-b").get("epoch", 0) >= 1, what="epoch 1 in b's runs dir")
    assert (runs / ".current").read_text().strip() == "in-b"
    monitor = env.fab("-H", "b", "monitor")
    assert monitor.returncode == 0 and "RUNNING" in monitor.out and "in-b" in monitor.out, monitor.out  # (no global runs dir)
    stop = env.fab("-H", "b", "stop", "--wait", "60")
    assert stop.returncode == 0, stop.out
    assert read_status(runs / "in-b")["state"] == "stopped"

    fetched = env.fab("-H", "b", "fetch-results", "--backup", "--dest", tmp_path / "results")
    assert fetched.returncode == 0, fetched.out
    local = tmp_path / "results" / "b" / "in-b"
    assert (local / "backup").is_dir() and (local / "status.json").is_file()

    # continue it on "another" host with b's folders: the run must not be on it, so move it away first
    shutil.rmtree(runs / "in-b")
    moved = env.fab("-H", "b", "deploy-full", "--resume-from", local)
    assert moved.returncode == 0, moved.out
    assert "upload-run" in moved.out
    wait_until(lambda: read_status(runs / "in-b").get("state") == "running" and read_status(runs / "in-b").get("epoch", 0) >= 2,
               what="the resumed run to train past its first epoch in b's runs dir")

    remembered = env.fab("monitor")  # no -H: deploy-full remembered b, and with it b's folders
    assert remembered.returncode == 0 and "RUNNING" in remembered.out and "in-b" in remembered.out, remembered.out
    assert env.fab("stop", "--wait", "60").returncode == 0
    assert read_status(runs / "in-b")["state"] == "stopped"
    for key in ("project_dir", "data_dir", "runs_dir"):
        assert not Path(shared[key]).exists(), key
