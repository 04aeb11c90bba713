"""The tests' warm trainer (tests/support/warm_server.py: TensorFlow and Keras loaded once, a forked child per
`python -m trainer`) answers as a new trainer process does: the same exit code and messages, the same files of a
run, in the request's folder and environment; a request whose library settings differ gets a new process."""

import json
import os
import re
import subprocess
import sys

from tests.support import warm_runner
from tests.support.fixtures_runs import TINY_ARGS
from tests.support.helpers import ROOT


def new_process(args, env):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def run_files(run):
    """The run's files, numbers in their names as N (TensorBoard's event files name their time and pid)."""
    return sorted(re.sub(r"\d+", "N", str(p.relative_to(run))) for p in run.rglob("*") if p.is_file())


def test_the_warm_trainer_trains_and_refuses_as_a_new_process(tmp_path, synth_crema):
    env = {**os.environ, "COLUMNS": "91"}
    for args in (["validate", "--data", tmp_path / "nowhere"], ["train", "--data", synth_crema, "--set", "model.nope=1"]):
        warm, new = warm_runner.run_trainer(args, cwd=ROOT, env=env), new_process(args, env)
        assert (warm.returncode, warm.stdout, warm.stderr) == (new.returncode, new.stdout, new.stderr)
        assert warm.returncode == 2 and ("nowhere" in warm.stderr or "model.nope" in warm.stderr), warm.stderr

    train = ["train", "--data", synth_crema, "--epochs", "2", *TINY_ARGS, "--set", "train.pictures=false"]
    warm = warm_runner.run_trainer([*train, "--out", tmp_path / "warm", "--run-name", "r"], cwd=ROOT, env=env)
    new = new_process([*train, "--out", tmp_path / "new", "--run-name", "r"], env)
    assert warm.returncode == new.returncode == 0, warm.stdout[-2000:] + warm.stderr[-2000:]
    a, b = tmp_path / "warm" / "r", tmp_path / "new" / "r"
    assert run_files(a) == run_files(b)
    history = [(a / "history.csv").read_text().splitlines(), (b / "history.csv").read_text().splitlines()]
    assert history[0][0] == history[1][0] and [line.split(",")[0] for line in history[0][1:]] == ["0", "1"]
    status = [json.loads((run / "status.json").read_text()) for run in (a, b)]
    assert status[0]["state"] == status[1]["state"] == "finished" and status[0].keys() == status[1].keys()


def test_a_request_that_sets_tensorflow_otherwise_gets_a_new_process():
    onednn = "0" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") != "0" else "1"  # read as TensorFlow loads
    assert warm_runner._take("trainer", {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}) is None
    server = warm_runner._take("trainer", {**os.environ, "TF_CONFIG": "{}"})  # read when a strategy is made: served warm
    assert server is not None
    warm_runner._give(server)

