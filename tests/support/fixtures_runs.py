"""Runs that several tests read: trained once a session, each a real trainer process.

    trained_run    a finished tiny run (2 epochs over synth_crema), trained with two logical CPUs
                   visible and `train.distribute` left at auto
    stopped_run    a tiny run of 30 epochs stopped on request (SIGTERM, exit 3) after epoch 3 or a
                   little later, over its own copy of the data
    finished_host  a DeployEnv (the session's sshd and host venv) with code and 60 clips synced whose
                   run `short` (2 tiny epochs, started with `fab train`) has ended

All are read-only: copy a run to change it (copy_trained_run(run, tmp_path)); a test that changes
a host uses its own (conftest's host_ready).

A test that uses one is of kind `tf` (tests/support/kinds.py), whatever else it does.
"""

import json
import shutil
import signal
import time

import pytest

from tests.support.helpers import ROOT, run_trainer
from tests.support.warm_runner import start_trainer

TINY_ARGS = ["--set", "model.units=8", "--set", "model.head_units=8", "--set", "train.batch_size=16",
             "--set", "data.max_frames=40", "--set", "train.workers=1"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synth_crema):
    runs = tmp_path_factory.mktemp("trained")
    proc = run_trainer("train", "--data", synth_crema, "--out", runs, "--run-name", "r1", "--epochs", "2", *TINY_ARGS,
                       timeout=600, env={"FACENET_LOGICAL_CPUS": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return runs / "r1"


@pytest.fixture(scope="session")
def stopped_run(tmp_path_factory, synth_crema):
    root = tmp_path_factory.mktemp("stopped")
    data = root / "data" / "crema-d"
    shutil.copytree(synth_crema, data)
    proc = start_training(data, root / "runs", "base", 30)
    try:
        wait_for_epoch(root / "runs" / "base", 3, proc, timeout=600)  # it returns at epoch 3: a busy machine only waits longer
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # failed on the way: leave nothing running
            proc.kill()
    assert proc.returncode == 3, out
    return root / "runs" / "base"


@pytest.fixture(scope="session")
def finished_host(tmp_path_factory, ssh_host, host_venv):
    from tests.support.deploy_env import DeployEnv, make_ready
    from tests.support.helpers import wait_until

    root = tmp_path_factory.mktemp("finished host") / "facenet deploy"
    root.mkdir()
    env = DeployEnv(root, ssh_host, host_venv)
    try:
        make_ready(env, root.parent)  # 2 epochs
        assert env.fab("train", "--run-name", "short").returncode == 0
        wait_until(lambda: (env.runs / "short" / "exit.json").exists(), 600, "the run to end")  # returns at its end: only a busy machine waits long
        yield env
    finally:
        env.cleanup()


def status(run_dir):
    return json.loads((run_dir / "status.json").read_text())


def start_training(synth, runs, name, epochs, *extra):
    """A tiny training in the background, drawing no pictures (no test of these runs looks at one; trained_run's are)."""
    return start_trainer(["train", "--data", synth, "--out", runs, "--run-name", name, "--epochs", epochs, "--set", "train.patience=100",
                          "--set", "train.lr_patience=100", "--set", "train.pictures=false", *TINY_ARGS, *extra], cwd=ROOT)


def wait_for_epoch(run_dir, epoch, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "status.json").exists() and status(run_dir)["epoch"] >= epoch:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    raise AssertionError(f"epoch {epoch} not reached in {timeout} s")


def copy_trained_run(run, where, name=None):
    """A copy of `run` in folder `where` (as `name`, default the run's own): a test's own, to change."""
    return shutil.copytree(run, where / (name or run.name))
