"""A host whose trainer is the stand-in (tests/support/standin_trainer.py): for the tests that check only the process
around a training (records, signals, exit codes, locks, agent, budget cap), never its numbers.

    def test_a_stop_is_exit_3(standin_ready):      # as host_ready, with the stand-in trainer
        standin_ready.configure(400)
        standin_ready.fab("train")

The stand-in's epochs take EPOCH_SECONDS each; tests/host/test_standin_contract.py holds it to the real trainer.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import standin_trainer
from tests.support.deploy_env import env_on, make_ready, run_wide

EPOCH_SECONDS = 1.0
SLOW_EPOCH_SECONDS = 10.0


@pytest.fixture(scope="session")
def standin_venv(tmp_path_factory, host_venv):
    """host_venv's twin whose `python -m trainer train` and `smoke` are the stand-in (every other command of it is the real one):
    a copy of it (as fresh_venv's: `bin/python` works from the copy), made once a run."""
    return run_wide(tmp_path_factory, "stand-in venv", lambda path: make_standin_venv(path, host_venv))


@pytest.fixture(scope="session")
def smoke_standin_venv(tmp_path_factory, host_venv):
    """host_venv whose smoke test is the stand-in's and whose training is the real one: for a journey that checks a real
    training and nothing of the smoke test that deploy-full runs before it (13 CPU-s of TensorFlow, 1.5 stood in)."""
    return run_wide(tmp_path_factory, "smoke stand-in venv", lambda path: make_standin_venv(path, host_venv, commands=("smoke",)))


@pytest.fixture(scope="session")
def slow_standin_venv(tmp_path_factory, host_venv):
    """standin_venv whose epochs take SLOW_EPOCH_SECONDS: for a test that must act while a run is in its first epoch."""
    return run_wide(tmp_path_factory, "slow stand-in venv", lambda path: make_standin_venv(path, host_venv, SLOW_EPOCH_SECONDS))


def make_standin_venv(path, host_venv, epoch_seconds=None, commands=standin_trainer.COMMANDS):
    venv = Path(shutil.copytree(host_venv, path, symlinks=True))
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    assert Path(site).is_relative_to(venv), site
    Path(site, "facenet-standin.pth").write_text(standin_trainer.pth_line(commands=commands))
    (venv / standin_trainer.SETTINGS).write_text(json.dumps({"epoch_seconds": epoch_seconds or EPOCH_SECONDS}))
    return venv


@pytest.fixture
def standin_env(tmp_path, ssh_host, standin_venv):
    """deploy_env with the stand-in trainer."""
    yield from env_on(tmp_path / "facenet deploy (stand-in)", ssh_host, standin_venv)  # beside deploy_env's in a test of both


@pytest.fixture
def standin_ready(standin_env, tmp_path):
    """host_ready with the stand-in trainer: code and 60 clips synced, `configure(epochs, **data)`."""
    return make_ready(standin_env, tmp_path)


def on_standin(env, venv):
    """`env` (a DeployEnv, e.g. fake_bin_host's) whose host trains with the stand-in: its inventory's venv is `venv`
    (standin_venv). Call before make_ready: sync-code tells the host its venv."""
    env.write(remote={**env.inventory["remote"], "venv": str(venv)})
    return env
