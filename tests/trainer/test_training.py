"""The training command end to end, as the deploy runs it: real processes, real signals."""

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.support.fixtures_runs import TINY_ARGS as TINY
from tests.support.fixtures_runs import copy_trained_run, start_training, status, wait_for_epoch
from tests.support.helpers import ROOT, run_trainer
from tests.support.warm_runner import start_trainer

pytestmark = pytest.mark.slow


def test_train_writes_a_complete_run_that_reloads(tmp_path, trained_run):
    run = copy_trained_run(trained_run, tmp_path)  # `train --data SYNTH --epochs 2` (tests/support/fixtures_runs.py); evaluate adds files
    for name in ("config.yaml", "split.json", "normalization.npz", "manifest.json", "best.keras", "history.csv",
                 "train.log", "environment.json", "status.json", "metrics.json"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()
    assert list((run / "logs").rglob("*tfevents*"))
    st = status(run)
    assert st["state"] == "finished" and st["epoch"] == 2 and st["pid"] > 0 and st["eta_seconds"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"validation", "test", "headline", "best_epoch", "training_seconds", "split_samples", "compute"} <= set(metrics)
    assert metrics["headline"] == "test"  # held-out actors, scored once; validation chose the epoch
    split = json.loads((run / "split.json").read_text())
    for side, name in (("val", "validation"), ("test", "test")):
        m = metrics[name]
        assert {"accuracy", "uar", "macro_f1", "per_class", "confusion_matrix"} <= set(m)
        assert sum(map(sum, m["confusion_matrix"])) == metrics["split_samples"][side] == m["samples"] == len(split[side])
    test = metrics["test"]
    assert test["actors"] == len(split["test_actors"]) and not set(split["test_actors"]) & set(split["train_actors"] + split["val_actors"])
    for key in ("uar", "accuracy", "macro_f1"):
        low, high = test["ci95"][key]
        assert 0 <= low <= test[key] <= high <= 1, (key, test[key], test["ci95"][key])
    # pictures: valid PNGs in the run dir, and image summaries in TensorBoard's event files
    import matplotlib.image
    import tensorflow as tf

    for name in ("confusion_matrix.png", "recall.png", "learning_curves.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert matplotlib.image.imread(run / name).shape[2] in (3, 4), name
    tags = {v.tag for f in (run / "logs" / "images").glob("*tfevents*") for e in tf.compat.v1.train.summary_iterator(str(f))
            for v in e.summary.value}
    assert {"validation/confusion_matrix_at_best_epoch", "validation/recall_per_class_at_best_epoch",
            "test/confusion_matrix_at_end", "test/recall_per_class_at_end",
            "validation/confusion_matrix_at_end"} <= tags, tags
    assert "learning_rate" in (run / "history.csv").read_text().splitlines()[0]
    env = json.loads((run / "environment.json").read_text())
    assert env["tensorflow"] and env["gpus"] == []
    log = (run / "train.log").read_text()
    assert "Epoch 2/2" in log and "\r" not in log  # one line per epoch, no progress bar
    # evaluate on the validation split, with the run's own normalisation
    proc = run_trainer("evaluate", "--run", run)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "eval-val.json").read_text())["uar"] == pytest.approx(metrics["validation"]["uar"])
    # and on other held-out data (new actors, another corpus)
    from trainer.data.synth import write_corpus

    write_corpus(tmp_path / "ravdess", "ravdess", clips=40, seed=5)
    proc = run_trainer("evaluate", "--run", run, "--data", tmp_path / "ravdess")
    assert proc.returncode == 0, proc.stderr
    extra = json.loads((run / "eval-ravdess.json").read_text())
    assert 0 < extra["samples"] <= 40 and extra["data"] == [str(tmp_path / "ravdess")]


def test_sigterm_stops_cleanly_with_backup_and_state_stopped(stopped_run):
    # 30 epochs, SIGTERM after epoch 3: exit code 3 (tests/support/fixtures_runs.py)
    st = status(stopped_run)
    assert st["state"] == "stopped" and 3 <= st["epoch"] < 30
    assert (stopped_run / "backup").is_dir() and "--resume" in st["error"]["message"]


def zero_model_weights(weights_file):
    """Every layer weight in a Keras .weights.h5 set to 0: a model that predicts one class."""
    import h5py

    with h5py.File(weights_file, "r+") as f:
        def zero(name, obj):
            if isinstance(obj, h5py.Dataset) and name.startswith("layers"):
                obj[...] = 0
        f.visititems(zero)


def test_resume_keeps_the_best_model_and_survives_a_backup_torn_by_a_kill(tmp_path, synth_crema):
    """A resumed run must not overwrite best.keras with a worse epoch (the selection state is
    restored), and a backup cut short by SIGKILL during its save falls back to the previous one."""
    import hashlib

    run = tmp_path / "r5"
    # every actor for training and validation: the model must learn above chance in 3 epochs
    proc = start_training(synth_crema, tmp_path, "r5", 30, "--set", "split.test_fraction=0")
    wait_for_epoch(run, 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3
    before = status(run)
    best_bytes = hashlib.sha256((run / "best.keras").read_bytes()).hexdigest()
    saved = json.loads((run / "backup" / "callbacks.json").read_text())
    assert saved["epoch"] == before["epoch"] and saved["checkpoint_best"] == pytest.approx(before["best"]["value"])
    assert before["best"]["value"] > 0.2  # above chance (1/6), which is what a zeroed model scores
    zero_model_weights(run / "backup" / "latest.weights.h5.bkp")
    with open(run / "backup" / "latest.weights.h5", "r+b") as f:  # SIGKILL in the middle of the save
        f.truncate(100)

    proc = run_trainer("train", "--resume", run, "--epochs", str(before["epoch"] + 1))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = status(run)
    assert after["state"] == "finished" and after["best"] == before["best"]
    assert hashlib.sha256((run / "best.keras").read_bytes()).hexdigest() == best_bytes
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == before["best"]["epoch"]
    assert metrics["headline"] == "validation" and metrics["test"] is None
    assert metrics["validation"]["uar"] == pytest.approx(before["best"]["value"], abs=0.02)
    assert not list(run.glob(".*.tmp*"))


def test_validate_and_smoke_write_a_json_result_for_the_deploy_side_and_smoke_without_data_is_refused(tmp_path, synth_crema):
    result = tmp_path / "validate.json"
    proc = run_trainer("validate", "--data", synth_crema, "--result", result)
    assert proc.returncode == 0
    got = json.loads(result.read_text())
    assert got["ok"] is True and got["exit_code"] == 0 and got["accepted"] == got["files"] == 240
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_trainer("validate", "--data", empty, "--result", result)
    got = json.loads(result.read_text())
    assert proc.returncode == 2 and got["ok"] is False and got["exit_code"] == 2 and "No .npz files" in got["message"]
    proc = run_trainer("smoke", "--synthetic", "--out", tmp_path / "runs", "--result", tmp_path / "smoke.json",
                       "--estimate-config", ROOT / "configs" / "demo.yaml")
    got = json.loads((tmp_path / "smoke.json").read_text())
    assert proc.returncode == 0 and got["ok"] is True and "Smoke test passed" in got["message"], proc.stdout + proc.stderr
    assert "Smoke test passed" in proc.stdout, proc.stdout
    run = (tmp_path / "runs").joinpath(got["run_dir"].split("/")[-1])
    assert run.joinpath("best.keras").is_file()
    # the estimate of the demo's training: the smoke run's own timing, scaled with the demo config's steps timed here
    est, timing = got["estimate"], json.loads((run / "status.json").read_text())["timing"]
    assert est["epochs"] == 10 and est["global_batch"] == 32 and est["steps_per_epoch"] * 32 >= est["train_clips"] > 0
    assert est["parts"]["setup"] == pytest.approx(timing["setup_seconds"], abs=0.01)
    assert est["parts"]["end"] >= timing["end_seconds"] > 0
    assert est["parts"]["first_calls"] >= timing["first_epoch"]["other_seconds"] - timing["last_epoch"]["other_seconds"]
    assert est["seconds_per_epoch"] == pytest.approx(est["steps_per_epoch"] * est["seconds_per_step"] + est["val_steps_per_epoch"]
                                                     * est["seconds_per_eval_step"] + timing["last_epoch"]["other_seconds"], abs=0.02)
    assert est["seconds"] == pytest.approx(sum(est["parts"].values()), abs=0.1)
    proc = run_trainer("smoke", "--out", tmp_path / "runs")  # neither --data nor --synthetic
    assert proc.returncode == 2 and "--data" in proc.stderr, proc.stderr


def test_mirrored_training_over_two_devices_records_replicas_and_resumes(tmp_path, synth_crema):
    """tf.distribute's MirroredStrategy on two logical CPU devices: the code path of a multi-GPU host.
    train.batch_size is per replica; a stopped run resumes under the same strategy."""
    env = {"FACENET_LOGICAL_CPUS": "2"}
    run = tmp_path / "m1"
    proc = start_trainer(["train", "--data", synth_crema, "--out", tmp_path, "--run-name", "m1", "--epochs", "30",
                          "--set", "train.distribute=mirrored", "--set", "train.patience=100", *TINY], cwd=ROOT, env={**os.environ, **env})
    wait_for_epoch(run, 2, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    expected = {"strategy": "MirroredStrategy", "replicas": 2, "batch_size_per_replica": 16, "global_batch_size": 32}
    assert expected.items() <= status(run)["distribution"].items()
    assert expected.items() <= json.loads((run / "environment.json").read_text())["distribution"].items()
    assert "MirroredStrategy with 2 replica(s), global batch 32" in out and "cuDNN" not in out
    done = status(run)["epoch"]
    proc = run_trainer("train", "--resume", run, "--epochs", str(done + 1), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status(run)["state"] == "finished" and status(run)["epoch"] == done + 1
    assert json.loads((run / "metrics.json").read_text())["test"]["uar"] > 0


def test_auto_uses_one_device_where_there_are_no_gpus(trained_run):
    # trained with FACENET_LOGICAL_CPUS=2 and train.distribute left at auto: two devices, no GPU
    assert status(trained_run)["distribution"]["replicas"] == 1


FIRST_STEP = """
import json, sys
import numpy as np
from trainer.training import distribute
distribute.configure_devices()
import keras
from trainer.config import DEFAULTS
from trainer.training.model import build_model, compile_model

keras.utils.set_random_seed(7)
strategy = distribute.choose_strategy(sys.argv[1])
with strategy.scope():  # no dropout: its random masks differ by device
    model = compile_model(build_model({**DEFAULTS["model"], "units": 8, "head_units": 8, "dropout": 0.0}, 6), DEFAULTS["train"], 6)
rng = np.random.default_rng(0)
x = rng.normal(size=(32, 20, 512)).astype("float32")
x[::3, 15:] = 0  # padded clips, as the generator makes them
y = rng.integers(0, 6, 32)
loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": loss, "weights": [float(np.abs(w).sum()) for w in model.get_weights()]}))
"""


def test_two_mirrored_replicas_take_the_same_first_step_as_one_device_on_the_same_global_batch():
    """Same results semantics: the loss of the first step (before the update) and the weights after it
    match between one device and MirroredStrategy over two logical CPUs splitting the same 32 clips."""
    runs = {}
    for mode, cpus in (("off", "0"), ("mirrored", "2")):
        out = subprocess.run([sys.executable, "-c", FIRST_STEP, mode], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "FACENET_LOGICAL_CPUS": cpus})
        assert out.returncode == 0, out.stderr[-3000:]
        runs[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["off"]["replicas"] == 1 and runs["mirrored"]["replicas"] == 2
    assert runs["mirrored"]["loss"] == pytest.approx(runs["off"]["loss"], rel=1e-5)
    assert runs["mirrored"]["weights"] == pytest.approx(runs["off"]["weights"], rel=1e-5)  # gradients averaged, not summed


MIXED_STATIC = """
from trainer.training import distribute
distribute.configure_devices()
import keras
from trainer.config import DEFAULTS
from trainer.training.model import build_model, compile_model, cudnn_problems

keras.mixed_precision.set_global_policy("mixed_float16")
strategy = distribute.choose_strategy("mirrored")
with strategy.scope():
    model = compile_model(build_model(DEFAULTS["model"], 6), DEFAULTS["train"], 6)
assert strategy.num_replicas_in_sync == 2
assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer), type(model.optimizer)
assert cudnn_problems(model) == [], cudnn_problems(model)
print("ok")
"""


def test_mixed_precision_and_the_cudnn_kernel_stay_eligible_under_distribution(tmp_path, synth_crema):
    """Static: under MirroredStrategy with mixed_float16 the optimizer scales the loss and every LSTM keeps
    the fused-kernel conditions. Then a real mirrored mixed-precision run trains through our loop."""
    out = subprocess.run([sys.executable, "-c", MIXED_STATIC], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "FACENET_LOGICAL_CPUS": "2"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
    proc = run_trainer("train", "--data", synth_crema, "--out", tmp_path, "--run-name", "mp", "--epochs", "2", *TINY,
                       "--set", "train.distribute=mirrored", "--set", "train.mixed_precision=on", env={"FACENET_LOGICAL_CPUS": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "precision mixed_float16; MirroredStrategy with 2 replica(s)" in proc.stdout
    losses = [float(row.split(",")[3]) for row in (tmp_path / "mp" / "history.csv").read_text().splitlines()[1:]]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses), losses
