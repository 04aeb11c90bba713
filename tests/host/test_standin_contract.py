"""The stand-in trainer (tests/support/standin_trainer.py) held to the real one: the same scenario on two local SSH hosts, one
with each, and what the process around a training reads of it compared. A test may use the stand-in (standin_ready)
only for what this compares: which files a run holds, status.json's keys and states, the exit records, history.csv's
columns and rows, metrics.json's keys, the smoke result's keys and its estimate's values from the config and data
(FROM_CONFIG_AND_DATA); never the other numbers in them (times, scores), which the stand-in makes up.

The scenario: `fab train` a run of EPOCHS epochs, `fab stop` it in its first epoch (exit 3, stopped after that epoch),
`fab train --resume` it to its end (exit 0, finished); a run whose config no clip fits (exit 2, failed); a run
fenced while it trains (`run_state.py fence`, as `fab watch` does: exit 5 at its next epoch end, superseded); and
`fab smoke-test` (its JSON result, which deploy-full reads, and its run's files).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.deploy_env import make_ready, run_status
from tests.support.helpers import ROOT, wait_until

pytestmark = [pytest.mark.ssh, pytest.mark.slow, pytest.mark.tf]
# enough that the stop lands before the last epoch on a loaded machine: the stand-in's epochs take a second each, the
# real one's tiny epochs about as long, and `fab stop` starts a Python and logs in first (with 3, under load the
# stand-in had trained all 3 before the stop came, and its resume had nothing left to train)
EPOCHS = 10

# Made by TensorFlow or from the real model's scores only; the stand-in leaves them out (a test that reads them
# uses the real trainer):
ONLY_REAL = {
    "confusion_matrix.png", "recall.png", "learning_curves.png",  # pictures of the real scores (matplotlib, 19 % of a tiny run)
}
# The smoke result's estimate values that come from the training config and the data, not from timing TensorFlow: the
# stand-in's equal the real one's (a journey on smoke_standin_venv reads "up to N epochs x M steps" from them)
FROM_CONFIG_AND_DATA = ("epochs", "steps_per_epoch", "val_steps_per_epoch", "global_batch", "train_clips", "replicas", "mixed_precision")
# The same name in both, different content: best.keras (a Keras model; the stand-in's is a placeholder text),
# backup/latest.weights.h5 (the weights; a placeholder), logs/ (TensorBoard's event files; the stand-in's is empty:
# compared by name at the top only), every number in history.csv, status.json, metrics.json and environment.json.


def watch_states(env, run, until, seen, timeout=180):
    """Adds to `seen` the states status.json shows (each change once), polled until `until(status)` holds. "starting"
    is left out: the stand-in's set-up (no TensorFlow to load) can end before a poll sees it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_status(env, run)
        if status.get("state") not in (None, "starting") and (not seen or seen[-1] != status["state"]):
            seen.append(status["state"])
        if until(status):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"timed out: status.json of {run} went through {seen}, now {run_status(env, run)}")


def names(folder):
    return {p.name for p in folder.iterdir()}


def exit_records(env, run):
    """[(exit code, reason)] of the run's launches, oldest first."""
    records = [json.loads(p.read_text()) for p in (env.runs / run / "exits").glob("*.json")]
    return [(r["exit_code"], r.get("reason")) for r in sorted(records, key=lambda r: r["ended_at"])]


def exit_code_of_last_launch(env, run):
    try:
        return json.loads((env.runs / run / "exit.json").read_text())["exit_code"]
    except (OSError, ValueError, KeyError):
        return None


def scenario(env):
    """What the process around a training sees of the scenario (module docstring) on `env`'s host."""
    seen = {}
    env.configure(EPOCHS)
    started = env.fab("train", "--run-name", "contract")
    assert started.returncode == 0, started.out
    states = []
    watch_states(env, "contract", lambda s: s.get("state") == "running", states)  # its first epoch is being trained
    stop = env.fab("stop", "--wait", "120", timeout=200)
    assert stop.returncode == 0, stop.out
    wait_until(lambda: exit_code_of_last_launch(env, "contract") is not None, 60, "the stopped launch's exit record")
    watch_states(env, "contract", lambda s: s.get("state") == "stopped", states)
    run = env.runs / "contract"
    stopped = run_status(env, "contract")
    seen["stopped"] = {"monitor": env.fab("monitor").returncode, "files": names(run), "backup": names(run / "backup"),
                       "status keys": set(stopped), "epoch": stopped["epoch"], "error": stopped["error"]["type"],
                       "history rows": len((run / "history.csv").read_text().splitlines()) - 1}

    resumed = env.fab("train", "--resume")
    assert resumed.returncode == 0, resumed.out
    watch_states(env, "contract", lambda s: s.get("state") == "finished", states)
    wait_until(lambda: len(exit_records(env, "contract")) == 2, 60, "the resumed launch's exit record")
    finished = run_status(env, "contract")
    history = (run / "history.csv").read_text().splitlines()
    seen["finished"] = {"monitor": env.fab("monitor").returncode, "files": names(run), "status keys": set(finished),
                        "epoch": finished["epoch"], "exits": exit_records(env, "contract"), "history header": history[0],
                        "history epochs": [row.split(",")[0] for row in history[1:]],
                        "metrics keys": set(json.loads((run / "metrics.json").read_text())),
                        "environment keys": set(json.loads((run / "environment.json").read_text()))}
    seen["states"] = states

    env.configure(2, feature_key="no_such_key")  # a valid config that none of the host's clips fits
    bad = env.fab("train", "--run-name", "bad")
    wait_until(lambda: exit_code_of_last_launch(env, "bad") is not None, 120, "the bad run's exit record")
    failed = run_status(env, "bad")
    seen["bad"] = {"fab": bad.returncode, "files": names(env.runs / "bad"), "exits": [code for code, _ in exit_records(env, "bad")],
                   "state": failed.get("state"), "error": (failed.get("error") or {}).get("type")}

    env.configure(200)  # long: fenced in its first epochs
    assert env.fab("train", "--run-name", "fenced").returncode == 0
    watch_states(env, "fenced", lambda s: s.get("state") == "running", [])
    launch_id = json.loads((env.runs / "fenced" / "launch.json").read_text())["launch_id"]
    fence = subprocess.run([sys.executable, "remote_scripts/run_state.py", "fence", str(env.runs / "fenced"), launch_id, "moved to b"],
                           cwd=ROOT, capture_output=True, text=True)
    assert fence.returncode == 0, fence.stderr
    wait_until(lambda: exit_code_of_last_launch(env, "fenced") is not None, 120, "the fenced launch's exit record")
    fenced = run_status(env, "fenced")
    seen["fenced"] = {"monitor": env.fab("monitor").returncode, "exits": [code for code, _ in exit_records(env, "fenced")],
                      "state": fenced.get("state"), "error": (fenced.get("error") or {}).get("type"),
                      "metrics.json": (env.runs / "fenced" / "metrics.json").exists()}

    smoke = env.fab("smoke-test")
    result = json.loads((env.runs / ".results" / "smoke-test.json").read_text())  # deploy.host.checks reads it
    estimate = result.get("estimate") or {}
    seen["smoke"] = {"fab": smoke.returncode, "ok": result.get("ok"), "exit_code": result.get("exit_code"), "keys": set(result),
                     "estimate keys": set(estimate), "parts": set(estimate.get("parts") or {}),
                     "estimate said": "estimate of the full training: up to" in smoke.out,
                     "from the config and data": {k: estimate.get(k) for k in FROM_CONFIG_AND_DATA},
                     "files": names(Path(result["run_dir"])), "log": (Path(result["run_dir"]) / "train.log").read_text()}
    return seen


def test_the_stand_in_trainer_leaves_the_files_and_records_of_the_real_one(host_ready, standin_env, tmp_path):
    real = scenario(host_ready)
    standin_ready = make_ready(standin_env, tmp_path)
    real_log = (host_ready.runs / "contract" / "train.log").read_text()
    assert "stand-in trainer" not in real_log and "Pictures: none drawn (train.pictures is false)" in real_log  # TINY_CONFIG
    stand_in = scenario(standin_ready)
    log = (standin_ready.runs / "contract" / "train.log").read_text()
    assert "stand-in trainer (tests/support/standin_trainer.py): no TensorFlow" in log
    assert "Pictures: none drawn (the stand-in trainer draws none" in log and "train.pictures is false" not in log

    # the real run itself, as the scenario says
    assert real["stopped"]["monitor"] == 3 and real["stopped"]["error"] == "Stopped", real
    assert 1 <= real["stopped"]["epoch"] < EPOCHS and real["stopped"]["history rows"] == real["stopped"]["epoch"], real
    assert real["finished"]["monitor"] == 0 and real["finished"]["epoch"] == EPOCHS, real
    assert [code for code, _ in real["finished"]["exits"]] == [3, 0], real
    assert real["states"] == ["running", "stopped", "running", "finished"], real
    assert real["bad"]["exits"] == [2] and real["bad"]["state"] == "failed", real
    assert real["fenced"]["exits"] == [5] and real["fenced"]["monitor"] == 11 and not real["fenced"]["metrics.json"], real

    # the stand-in's, held to it (stopped before its last epoch, as the real one was)
    assert 1 <= stand_in["stopped"]["epoch"] < EPOCHS, stand_in["stopped"]
    for part in ("stopped", "finished"):
        for key in ("monitor", "status keys"):
            assert stand_in[part][key] == real[part][key], (part, key)
        assert stand_in[part]["files"] == real[part]["files"] - ONLY_REAL, part
    for seen in (real, stand_in):  # RunBackup's three files, and from the second backup on the previous one's as .bkp
        backed_up = {"callbacks.json", "latest.weights.h5", "training_metadata.json"}
        expected = backed_up | ({f"{name}.bkp" for name in backed_up} if seen["stopped"]["epoch"] >= 2 else set())
        assert seen["stopped"]["backup"] == expected, seen["stopped"]
    assert stand_in["stopped"]["error"] == "Stopped" and stand_in["stopped"]["history rows"] == stand_in["stopped"]["epoch"]
    assert stand_in["states"] == real["states"]
    # exit records: the same codes and reasons (a reason names no number of the training)
    assert stand_in["finished"]["exits"] == real["finished"]["exits"]
    assert stand_in["finished"]["history header"] == real["finished"]["history header"]
    assert stand_in["finished"]["history epochs"] == real["finished"]["history epochs"] == [str(e) for e in range(EPOCHS)]
    for key in ("epoch", "metrics keys", "environment keys"):
        assert stand_in["finished"][key] == real["finished"][key], key
    assert stand_in["bad"] == real["bad"]
    assert stand_in["fenced"] == real["fenced"]
    # the smoke test: the same result keys and estimate keys (deploy-full prints the estimate from them), the same files
    # but the pictures (the real smoke config draws them); its numbers are made up
    assert real["smoke"]["fab"] == 0 and real["smoke"]["ok"] and real["smoke"]["estimate said"], real["smoke"]
    assert "stand-in trainer" not in real["smoke"]["log"] and "stand-in trainer (tests/support/standin_trainer.py)" in stand_in["smoke"]["log"]
    for key in ("fab", "ok", "exit_code", "keys", "estimate keys", "parts", "estimate said", "from the config and data"):
        assert stand_in["smoke"][key] == real["smoke"][key], key
    assert stand_in["smoke"]["files"] == real["smoke"]["files"] - ONLY_REAL, (stand_in["smoke"]["files"], real["smoke"]["files"])
    # where the two differ: the epoch a `fab stop` lands after (it depends on the epochs' lengths), and every number
